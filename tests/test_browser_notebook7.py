"""Link Python in Jupyter Notebook 7, proven in a real browser (SPEC §1-§4).

Notebook 7 renders cells with JupyterLab's widgets but is its own application (one notebook
per tab, tags in the right sidebar, no status bar), and SPEC §2 promises it sends cell metadata
with every execute_request as JupyterLab does. One `jupyter notebook` server and one Chromium
for the module (browser_support); each test writes its notebook as a user's saved file, opens
it as a user does, and reads what the page shows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_support import TOKEN, Notebook7Page, browser, notebook7, open_pages, write_notebook  # noqa: F401 - module fixtures

pytestmark = pytest.mark.timeout(120)

TRAIN = ("y = x * 2\nprint('train says', y)", ["component:train", "parent:load"])
NOISE = ("linkkernel", "ipykernel", "/tmp/ipykernel_", "site-packages", "IPython")


@pytest.fixture
def opened(notebook7, browser):
    """Opens saved notebooks in Notebook 7 tabs of their own; closes them after the test."""
    yield from open_pages(Notebook7Page, browser, notebook7["url"])


def test_running_train_runs_load_silently_under_a_progress_line_it_replaces(notebook7, opened) -> None:
    """Only `train` is run: `load` runs first under a progress line (kept visible until the
    test lets `load` finish), which gives way to train's own output; the load cell is untouched."""
    root: Path = notebook7["root"]
    load = "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\nx = 21\nprint('load ran')"
    write_notebook(root / "progress.ipynb", [(load, ["component:load"]), TRAIN])
    notebook = opened("progress.ipynb")
    notebook.start(1)
    notebook.wait_for_output(1, "linkkernel: running parent 'load' (1 of 1")
    (root / "go").touch()
    notebook.wait_until_done(1)
    notebook.screenshot("notebook7-progress")
    assert notebook.output_text(1) == "train says 42\n"
    assert notebook.output_text(0) == ""
    assert notebook.cell(0).locator(".jp-InputPrompt").inner_text().strip() == "[ ]:"
    assert not any("load ran" in shown for shown in notebook.panel.locator(".jp-OutputArea").all_inner_texts())


def test_an_error_in_load_is_a_red_traceback_naming_it(notebook7, opened) -> None:
    root: Path = notebook7["root"]
    load = "def read():\n    raise ValueError('no data')\n\nx = read()"
    write_notebook(root / "error.ipynb", [(load, ["component:load"]), TRAIN])
    notebook = opened("error.ipynb")
    notebook.run(1)
    notebook.screenshot("notebook7-error")
    error = notebook.cell(1).locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert error.count() == 1 == notebook.cell(1).locator(".jp-OutputArea-output").count()
    text = error.inner_text()
    assert "parent component 'load'" in text
    assert "Component load, line 2, in read()" in text and "raise ValueError('no data')" in text
    assert text.rstrip().endswith("ValueError: no data")
    assert "train says" not in text
    for noise in NOISE:
        assert noise not in text, f"{noise!r} in the traceback:\n{text}"
    red = error.locator("span.ansi-red-fg").all_inner_texts()
    assert "ValueError" in red, red
    assert notebook.output_text(0) == ""


def test_tags_added_in_the_right_sidebar_count_without_saving(notebook7, opened) -> None:
    """The kernel learns the new declaration from the metadata Notebook 7 sends with the
    execute_request: the file on disk still has the cell untagged."""
    root: Path = notebook7["root"]
    write_notebook(root / "tags.ipynb", [("x = 21", ["component:load"]), ("print('evaluate sees', x * 2)", [])])
    saved = (root / "tags.ipynb").read_text()
    notebook = opened("tags.ipynb")
    notebook.show_cell_tags()
    notebook.cell(1).locator(".cm-content").click()
    notebook.page.locator("#notebook-tools .jp-ActiveCellTool-CellContent", has_text="evaluate sees").wait_for()
    for tag in ("component:evaluate", "parent:load"):
        notebook.add_tag(tag)
    notebook.run(1)
    notebook.screenshot("notebook7-tags")
    assert notebook.output_text(1) == "evaluate sees 42\n"  # as a plain cell: NameError, x was never run
    assert notebook.output_text(0) == ""
    assert (root / "tags.ipynb").read_text() == saved


def test_the_kernel_is_shown_as_link_python(notebook7, browser) -> None:
    """File browser's New menu, the new notebook's toolbar and logo, and its kernel picker."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{notebook7['url']}/tree?token={TOKEN}")
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^New$")).click()
        entry = page.locator(".lm-Menu-item[data-command='notebook:create-new']", has_text="Link Python")
        with page.context.expect_page() as opened_tab:
            entry.click()
        notebook = Notebook7Page(opened_tab.value)
        notebook.wait_for_cells(1)
        notebook.wait_for_kernel()
        tab = notebook.page
        assert tab.locator(".jp-Toolbar-kernelName").inner_text().strip() == "Link Python"
        logo = tab.locator(".jp-NotebookKernelLogo img")
        assert logo.get_attribute("title") == "Link Python"
        assert logo.evaluate("img => img.complete && img.naturalWidth") > 0, logo.get_attribute("src")
        notebook.cell(0).locator(".cm-content").click()
        tab.keyboard.insert_text("print(type(get_ipython().kernel).__name__)")
        notebook.run(0)
        assert notebook.output_text(0) == "LinkKernel\n"  # the kernel behind the name
        name = tab.locator("#jp-title h1").inner_text()
        tab.locator(".jp-Toolbar-kernelName").click()
        picker = tab.locator(".jp-Dialog select")
        assert "Link Python" in picker.locator("optgroup[label^='Start'] option").all_inner_texts()
        running = picker.locator(f"option[title*='Path: {name}.ipynb']").get_attribute("title")
        assert "Kernel Name: Link Python" in running, running
        tab.locator(".jp-Dialog-button.jp-mod-reject").click()
        notebook.screenshot("notebook7-kernel")
    finally:
        for open_page in page.context.pages:
            open_page.close()
