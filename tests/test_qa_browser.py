"""What a JupyterLab user sees of Link Python, in a real browser (SPEC §1-§4).

One JupyterLab server and one Chromium for the module (browser_support). Each test writes
its notebook as a user's saved file, opens it from the server as a user does, and reads
what the page shows and what JupyterLab saves.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from browser_support import TOKEN, LabPage, browser, lab, open_pages, write_notebook  # noqa: F401 - module fixtures

pytestmark = pytest.mark.timeout(300)

CHILD = ("y = x * 2\nprint('child says', y)", ["component:child", "parent:parent"])


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


@pytest.fixture
def opened(lab, browser):
    """Opens saved notebooks in pages of their own; closes them after the test."""
    yield from open_pages(LabPage, browser, lab["url"])


def test_a_child_run_shows_progress_then_leaves_only_its_output_in_the_saved_notebook(lab, opened) -> None:
    """The parent runs silently under a progress line that goes away; what JupyterLab saves
    afterwards is the child's own output, nothing left of the progress line."""
    path = lab["root"] / "progress.ipynb"
    parent_tags = ["component:parent"]
    write_notebook(
        path, [("import time\ntime.sleep(1.5)\nx = 21\nprint('parent ran')", parent_tags), CHILD, ("%link run child --force", [])]
    )
    notebook = opened("progress.ipynb")
    notebook.start(1)
    notebook.wait_for_output(1, "linkkernel: running parent 'parent' (1 of 1")
    notebook.wait_until_done(1)
    notebook.screenshot("qa-browser-progress")
    assert notebook.output_text(1) == "child says 42\n"
    assert notebook.output_text(0) == ""
    notebook.start(2)  # the same line, for components run from a plain cell
    notebook.wait_for_output(2, "linkkernel: running parent 'parent' (1 of 2")
    notebook.wait_for_output(2, "ran: parent, child")
    notebook.wait_until_done(2)
    notebook.page.keyboard.press("Control+s")
    parent, child, run = saved_cells(path, 2)
    assert parent["outputs"] == [] and parent["metadata"] == {"tags": parent_tags}
    assert child["metadata"] == {"tags": CHILD[1]}
    assert child["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "child says 42\n"}], child["outputs"]
    assert run["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "ran: parent, child\n"}], run["outputs"]


def test_the_kernel_follows_its_notebook_renamed_and_moved_in_jupyterlab(lab, opened) -> None:
    """Renamed, the notebook keeps its pipeline; a new notebook under the old name (the next
    Untitled.ipynb) is not read as this one; nor after a move into a folder."""
    root: Path = lab["root"]
    write_notebook(root / "first.ipynb", [("x = 21", ["component:parent"]), CHILD, ("%link notebook", [])])
    notebook = opened("first.ipynb")
    page = notebook.page
    page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
    page.locator(".lm-Menu-itemLabel", has_text="Rename Notebook").click()
    page.locator(".jp-Dialog input").fill("renamed.ipynb")
    page.keyboard.press("Enter")
    page.locator(".lm-TabBar-tabLabel", has_text="renamed.ipynb").first.wait_for()
    # Another notebook saved where this one was, declaring a component of the same name.
    write_notebook(root / "first.ipynb", [("x = 1000", ["component:parent"])])
    notebook.run(1)
    assert notebook.output_text(1) == "child says 42\n"
    notebook.run(2)
    assert str(root / "renamed.ipynb") in notebook.output_text(2)
    # Moved into a folder (the file browser's drag and drop): the same request to the server.
    (root / "sub").mkdir()
    request = urllib.request.Request(
        f"{lab['url']}/api/contents/renamed.ipynb?token={TOKEN}",
        data=json.dumps({"path": "sub/renamed.ipynb"}).encode(),
        method="PATCH",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=30).close()
    notebook.run(2)
    assert str(root / "sub" / "renamed.ipynb") in notebook.output_text(2)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="files held open are named in /proc/self/fd on Linux only")
def test_the_saved_notebook_is_followed_when_renamed_and_found_again_when_replaced(tmp_path: Path) -> None:
    """Without JupyterLab, what the rename test relies on: a rename is followed; a file
    written anew (git checkout) is read at its path; a path through a link keeps its spelling."""
    from linkkernel.sources import Sources

    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    write_notebook(real / "nb.ipynb", [("x = 1", ["component:parent"])])
    sources = Sources(str(tmp_path / "link" / "nb.ipynb"))
    assert sources.notebook_path == str(tmp_path / "link" / "nb.ipynb")
    (real / "sub").mkdir()
    (real / "nb.ipynb").rename(real / "sub" / "moved.ipynb")
    write_notebook(real / "nb.ipynb", [("x = 1000", ["component:other"])])  # the next Untitled.ipynb
    assert sources.notebook_path == str(real / "sub" / "moved.ipynb")
    assert [c.name for c in sources.declared().components] == ["parent"]
    (real / "sub" / "moved.ipynb").unlink()
    write_notebook(real / "sub" / "moved.ipynb", [("x = 2", ["component:checked_out"])])
    assert [c.name for c in sources.declared().components] == ["checked_out"]


def test_interrupting_a_silent_parent_then_restarting_reuses_the_cache(lab, opened) -> None:
    """The interrupt button stops a parent running silently with one line and nothing kept;
    after a restart the child finds its parent fresh in the cache and does not run it."""
    root: Path = lab["root"]
    parent = (
        "import os, time\nwith open('parent-runs.txt', 'a') as log:\n    log.write('ran\\n')\ndel log\n"
        "while not os.path.exists('go'):\n    time.sleep(0.05)\nx = 21"
    )
    write_notebook(root / "interrupt.ipynb", [(parent, ["component:parent"]), CHILD])
    notebook = opened("interrupt.ipynb")
    page = notebook.page
    notebook.start(1)
    notebook.wait_for_output(1, "running parent 'parent'")
    page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']").click()
    notebook.wait_for_output(1, "KeyboardInterrupt: interrupted while running parent components; nothing half-run was kept")
    notebook.wait_until_done(1)
    (root / "go").touch()
    notebook.run(1)
    assert notebook.output_text(1) == "child says 42\n"
    page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:restart-kernel']").click()
    page.locator(".jp-Dialog-button.jp-mod-accept").click()
    notebook.wait_for_kernel()
    notebook.run(1)
    notebook.screenshot("qa-browser-after-restart")
    assert notebook.output_text(1) == "child says 42\n"
    assert notebook.output_text(0) == ""
    assert (root / "parent-runs.txt").read_text() == "ran\nran\n"  # interrupted, then once: not after the restart


def test_widgets_input_stored_outputs_and_errors_look_as_in_stock_jupyter(lab, opened) -> None:
    """A slider shown by a component talks to the kernel; input() asks in the stdin box;
    `%link outputs` shows a silent parent's HTML, image and print; `%link graph` draws;
    an error renders as the python3 kernel's does in the same browser."""
    root: Path = lab["root"]
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    shown = (
        "import base64\nfrom IPython.display import HTML, Image, display\n"
        "display(HTML('<b class=\"shown-html\">bold parent</b>'))\n"
        f"display(Image(base64.b64decode('{pixel}'), width=40))\nprint('parent printed')\nx = 21"
    )
    asking = "name = input('your name: ')\nprint('hello', name)"
    failing = "def explode(v):\n    return v / 0\n\nexplode(1)"
    write_notebook(root / "rich.ipynb", [
        (shown, ["component:parent"]),
        ("import ipywidgets as widgets\nslider = widgets.IntSlider(value=x)\ndisplay(slider)", ["component:wid", "parent:parent"]),
        ("slider.value", []),
        ("%link outputs parent", []),
        ("%link graph", []),
        (asking, ["component:ask"]),
        (failing, ["component:broken"]),
    ])
    write_notebook(root / "stock.ipynb", [(asking, []), (failing, [])], kernel="python3")
    notebook = opened("rich.ipynb")
    assert notebook.page.locator(".jp-StatusBar-TextItem", has_text="| Idle").inner_text() == "Link Python | Idle"
    notebook.run(1)
    handle = notebook.cell(1).locator(".jupyter-widgets .noUi-handle")
    assert handle.get_attribute("aria-valuenow") == "21.0"
    handle.focus()
    notebook.page.keyboard.press("ArrowRight")
    notebook.run(2)
    assert notebook.output_text(2) == "22"  # the slider's comm reached the kernel
    notebook.run(3)
    stored = notebook.cell(3)
    assert stored.locator(".jp-RenderedHTML b.shown-html").inner_text() == "bold parent"
    assert stored.locator(".jp-RenderedImage img").get_attribute("width") == "40"
    assert "parent printed" in notebook.output_text(3)
    notebook.run(4)
    graph = notebook.cell(4).locator(".jp-OutputArea-output[data-mime-type='image/svg+xml'] svg, .jp-OutputArea-output img")
    assert graph.count() == 1 and graph.first.bounding_box()["width"] > 20
    stock = opened("stock.ipynb")
    for page, (ask, broken) in ((notebook, (5, 6)), (stock, (0, 1))):
        page.start(ask)
        box = page.cell(ask).locator("input.jp-Stdin-input")
        box.fill("Ada")
        box.press("Enter")
        page.wait_for_output(ask, "hello Ada")
        page.run(broken)
    notebook.screenshot("qa-browser-rich")

    def shown(page: LabPage, index: int) -> list[str]:
        # JupyterLab keeps an answered stdin box in the page for a while, hidden
        return page.cell(index).locator(".jp-OutputArea-output:visible").all_inner_texts()

    assert shown(notebook, 5) == shown(stock, 0) == ["your name:  Ada\n", "hello Ada\n"]

    def error_lines(page: LabPage, index: int) -> list[tuple[str, str]]:
        """Each coloured piece of the error and its colour, cell labels aside."""
        spans = page.cell(index).locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] pre span")
        pieces = spans.evaluate_all("els => els.map(e => [e.className, e.textContent])")
        return [(cls, text) for cls, text in pieces if text not in ("Cell", "In[2]", "Component", "broken")]

    assert error_lines(notebook, 6) == error_lines(stock, 1)


def test_the_launcher_shows_link_python_with_its_logo(lab, browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{lab['url']}/lab?reset&token={TOKEN}")
        cards = page.locator(".jp-LauncherCard", has_text="Link Python")
        cards.first.wait_for()
        assert cards.count() == 2  # a notebook and a console
        logos = cards.locator("img").all()
        assert len(logos) == 2, "without a logo JupyterLab shows the name's first letter"
        for logo in logos:
            assert logo.get_attribute("alt") == "Link Python"
            assert logo.evaluate("img => img.complete && img.naturalWidth") > 0, logo.get_attribute("src")
    finally:
        page.close()


def run_all(notebook: LabPage, wait: bool = True, timeout: float = 60) -> None:
    """Run > Run All Cells from the menu bar; `wait`: until the last cell shows a new count."""
    last = notebook.panel.locator(".jp-Notebook .jp-Cell").last.locator(".jp-InputPrompt")
    before = last.inner_text()
    notebook.page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    notebook.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while not (re.search(r"\[\d+\]", last.inner_text()) and last.inner_text() != before):
        assert time.monotonic() < deadline, f"the last cell still shows {last.inner_text()!r}"
        time.sleep(0.1)


def test_run_all_of_the_saved_notebook_keeps_the_declarations_also_across_a_save(lab, opened) -> None:
    """JupyterLab sends every cell's metadata with `trusted: true`, which it never saves: Run All
    of the notebook as saved still answers the declarations it answered before the first cell
    (no merge of every declaration again per cell). A save in the middle of it (outputs and
    counts: a newer file) is read once; the cells after it answer what was read then."""
    path = lab["root"] / "runall.ipynb"
    first = (
        "_sources = get_ipython().kernel.runner.sources\n_answer = _sources.declared()\n"
        "print('components', len(_answer.components))"
    )
    wait_for_save = (
        "import os, time\nprint('waiting for the save')\nwhile not os.path.exists('saved-mid-run'):\n"
        "    time.sleep(0.05)\n_answer = _sources.declared()"
    )
    chain = [("x0 = 1", ["component:c0"])]
    chain += [(f"x{i} = x{i - 1} + 1", [f"component:c{i}", f"parent:c{i - 1}"]) for i in range(1, 10)]
    chain[-1] = ("x9 = x8 + 1\nprint('x9 is', x9)", chain[-1][1])
    last = ("print('x9 is still', x9, '; same declarations:', _sources.declared() is _answer)", [])
    write_notebook(path, [(first, []), *chain[:5], (wait_for_save, []), *chain[5:], last])
    notebook = opened("runall.ipynb")
    run_all(notebook, wait=False)
    notebook.wait_for_output(6, "waiting for the save")
    notebook.page.keyboard.press("Escape")
    notebook.page.keyboard.press("Control+s")
    saved_cells(path, 5)
    (lab["root"] / "saved-mid-run").touch()
    assert_ran_with_the_same_declarations(notebook)
    run_all(notebook)  # each cell now stands as executed, after the save
    assert_ran_with_the_same_declarations(notebook)


def assert_ran_with_the_same_declarations(notebook: LabPage) -> None:
    notebook.wait_until_done(12)
    assert notebook.output_text(0) == "components 10\n"
    assert all(notebook.output_text(i) == "" for i in (1, 2, 3, 4, 5, 7, 8, 9, 10))
    assert notebook.output_text(11) == "x9 is 10\n"
    assert notebook.output_text(12) == "x9 is still 10 ; same declarations: True\n"
