"""The JupyterLab experience, proven in a real browser (SPEC §1-§4).

One JupyterLab server and one Chromium page for the whole module (a start costs seconds on
two cores). The notebook is built the way a user builds it: a Link Python notebook from the
launcher, code typed into cells, `component:`/`parent:` tags added with JupyterLab's own cell
tag editor, saved; then cells are run and the assertions read what the page shows.

The server and browser come from browser_support. A screenshot of every test's end state is
kept under test-artifacts/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from browser_support import TOKEN, LabPage, browser, lab  # noqa: F401 - module fixtures

NOTEBOOK = "Untitled.ipynb"

# (source, tags) typed into the notebook, in order.
PARENT = ("x = 21\nprint('parent ran')", ["component:parent"])
CHILD = ("y = x * 2\nprint('child says', y)", ["component:child", "parent:parent"])
BROKEN = ("def explode(v):\n    return v / 0\n\nexplode(y)", ["component:broken", "parent:child"])
GRAPH = ("%link graph", [])
CELLS = [PARENT, CHILD, BROKEN, GRAPH]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def notebook(lab, browser):
    """The pipeline notebook, typed and tagged through the UI, saved; yields a page helper."""
    lab_page = LabPage(browser.new_page(viewport={"width": 1400, "height": 1000}))
    try:
        _build_notebook(lab_page, lab["url"], lab["root"] / NOTEBOOK)
    except BaseException:
        lab_page.screenshot("jupyterlab-setup-failed")
        raise
    yield lab_page
    lab_page.page.close()


def _build_notebook(lab_page: LabPage, url: str, saved: Path) -> None:
    page = lab_page.page
    page.goto(f"{url}/lab?reset&token={TOKEN}")
    page.locator(".jp-LauncherCard", has_text="Link Python").first.click()
    lab_page.wait_for_cells(1)
    page.locator(".jp-SideBar .lm-TabBar-tab[data-id='jp-property-inspector']").click()
    page.locator("#jp-property-inspector .jp-Collapser-title", has_text="Common Tools").click()
    for index, (source, tags) in enumerate(CELLS):
        if index:
            lab_page.panel.locator(".jp-NotebookPanel-toolbar [data-command='notebook:insert-cell-below']").click()
            lab_page.wait_for_cells(index + 1)
        lab_page.cell(index).locator(".cm-content").click()
        page.keyboard.insert_text(source)
        # The inspector follows the active cell after a re-render: wait until it shows this one.
        first_line = source.splitlines()[0]
        page.locator("#jp-property-inspector .jp-ActiveCellTool-CellContent", has_text=first_line).wait_for()
        for tag in tags:
            lab_page.add_tag(tag)
    page.keyboard.press("Control+s")
    wanted = [tags for _, tags in CELLS]
    deadline = time.monotonic() + 30
    while _saved_tags(saved) != wanted:
        assert time.monotonic() < deadline, f"saved tags {_saved_tags(saved)} != {wanted}"
        time.sleep(0.2)


def _saved_tags(path: Path) -> list[list[str]] | None:
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    return [cell["metadata"].get("tags", []) for cell in cells]


def test_running_the_child_shows_only_its_output(notebook: LabPage) -> None:
    notebook.run(1)
    notebook.screenshot("jupyterlab-child")
    assert "child says 42" in notebook.output_text(1)
    assert notebook.output_text(0) == ""
    assert "parent ran" not in notebook.page.locator(".jp-OutputArea").all_inner_texts().__str__()


def test_failing_component_shows_a_trimmed_traceback(notebook: LabPage) -> None:
    notebook.run(2)
    notebook.screenshot("jupyterlab-error")
    text = notebook.output_text(2)
    assert "ZeroDivisionError" in text
    assert "explode" in text and "return v / 0" in text
    for noise in ("ipykernel", "linkkernel", "/tmp/ipykernel_", "site-packages", "IPython"):
        assert noise not in text, f"{noise!r} in the traceback:\n{text}"


def test_link_graph_renders_a_picture(notebook: LabPage) -> None:
    notebook.run(3)
    notebook.screenshot("jupyterlab-graph")
    picture = notebook.cell(3).locator(".jp-OutputArea-output img, .jp-OutputArea-output svg")
    assert picture.count() >= 1, notebook.output_text(3)
    box = picture.first.bounding_box()
    assert box is not None and box["width"] > 20 and box["height"] > 20
