"""What a JupyterLab user sees of Link Python, in a real browser (SPEC §1-§4).

One JupyterLab server and one Chromium for the module (browser_support). Each test writes
its notebook as a user's saved file, opens it from the server as a user does, and reads
what the page shows and what JupyterLab saves.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from browser_support import TOKEN, LabPage, browser, lab  # noqa: F401 - module fixtures

pytestmark = pytest.mark.timeout(300)

CHILD = ("y = x * 2\nprint('child says', y)", ["component:child", "parent:parent"])


def write_notebook(path: Path, cells: list[tuple[str, list[str]]], kernel: str = "link-python") -> None:
    """A saved notebook of code cells, each (source, tags), for `kernel`."""
    notebook = nbformat.v4.new_notebook()
    names = {"link-python": "Link Python", "python3": "Python 3 (ipykernel)"}
    notebook.metadata["kernelspec"] = {"name": kernel, "display_name": names[kernel], "language": "python"}
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        notebook.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def saved_cells(path: Path, executed: int) -> list[dict]:
    """The cells of `path` once JupyterLab has saved it with cell `executed` run."""
    deadline = time.monotonic() + 30
    while True:
        try:
            cells = nbformat.reads(path.read_text(), as_version=4).cells
            if cells[executed].execution_count is not None:
                return cells
        except (OSError, ValueError, IndexError):
            pass
        assert time.monotonic() < deadline, f"{path} was not saved with cell {executed} run"
        time.sleep(0.2)


def start_run(notebook: LabPage, index: int) -> None:
    """Run a cell without waiting for it, as a user presses Ctrl+Enter."""
    notebook.cell(index).locator(".cm-content").click()
    notebook.page.keyboard.press("Control+Enter")


def wait_for_output(notebook: LabPage, index: int, text: str | re.Pattern, timeout: float = 60) -> None:
    notebook.cell(index).locator(".jp-OutputArea-output", has_text=text).first.wait_for(timeout=timeout * 1000)


def wait_until_done(notebook: LabPage, index: int, timeout: float = 60) -> None:
    """Until the cell's prompt shows a count instead of `[*]`."""
    prompt = notebook.cell(index).locator(".jp-InputPrompt")
    deadline = time.monotonic() + timeout
    while not re.search(r"\[\d+\]", prompt.inner_text()):
        assert time.monotonic() < deadline, f"cell {index} still shows {prompt.inner_text()!r}"
        time.sleep(0.1)


@pytest.fixture
def opened(lab, browser):
    """Opens saved notebooks in pages of their own; closes them after the test."""
    pages: list[LabPage] = []

    def open_notebook(path: str) -> LabPage:
        pages.append(LabPage.open(browser, lab["url"], path))
        return pages[-1]

    yield open_notebook
    for lab_page in pages:
        lab_page.page.close()


def test_a_child_run_shows_progress_then_leaves_only_its_output_in_the_saved_notebook(lab, opened) -> None:
    """The parent runs silently under a progress line that goes away; what JupyterLab saves
    afterwards is the child's own output, nothing left of the progress line."""
    path = lab["root"] / "progress.ipynb"
    parent_tags = ["component:parent"]
    write_notebook(path, [("import time\ntime.sleep(1.5)\nx = 21\nprint('parent ran')", parent_tags), CHILD])
    notebook = opened("progress.ipynb")
    start_run(notebook, 1)
    wait_for_output(notebook, 1, "linkkernel: running parent 'parent' (1 of 1")
    wait_until_done(notebook, 1)
    notebook.screenshot("qa-browser-progress")
    assert notebook.output_text(1) == "child says 42\n"
    assert notebook.output_text(0) == ""
    notebook.page.keyboard.press("Control+s")
    parent, child = saved_cells(path, 1)
    assert parent["outputs"] == [] and parent["metadata"] == {"tags": parent_tags}
    assert child["metadata"] == {"tags": CHILD[1]}
    assert child["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "child says 42\n"}], child["outputs"]
