"""The JupyterLab experience, proven in a real browser (SPEC §1-§4).

One JupyterLab server and one Chromium page for the whole module (a start costs seconds on
two cores). The notebook is built the way a user builds it: a Link Python notebook from the
launcher, code typed into cells, `component:`/`parent:` tags added with JupyterLab's own cell
tag editor, saved; then cells are run and the assertions read what the page shows.

Chromium is Debian's (/usr/bin/chromium), driven by the `playwright` package; nothing is
downloaded. Without chromium the test skips, except in CI (CI=true), where it fails.
A screenshot of every test's end state is kept under test-artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from support import REPO, kernel_env, stop_process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
TOKEN = "linkkernel-browser-test"
NOTEBOOK = "Untitled.ipynb"

# (source, tags) typed into the notebook, in order.
PARENT = ("x = 21\nprint('parent ran')", ["component:parent"])
CHILD = ("y = x * 2\nprint('child says', y)", ["component:child", "parent:parent"])
BROKEN = ("def explode(v):\n    return v / 0\n\nexplode(y)", ["component:broken", "parent:child"])
GRAPH = ("%link graph", [])
CELLS = [PARENT, CHILD, BROKEN, GRAPH]

pytestmark = pytest.mark.timeout(300)


def _require_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    message = f"{CHROMIUM} is missing (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_settings(settings: Path) -> None:
    """User settings: no news poll (no network, no toast over the cells), no rename prompt on save."""
    for plugin, values in {
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "docmanager-extension/plugin": {"renameUntitledFileOnSave": False},
    }.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def lab(link_kernelspec: str, tmp_path_factory: pytest.TempPathFactory):
    """A JupyterLab server on a free loopback port, serving an empty temporary root."""
    _require_chromium()
    base = tmp_path_factory.mktemp("lab")
    root, settings = base / "root", base / "settings"
    root.mkdir()
    _write_settings(settings)
    port = _free_port()
    env = kernel_env(
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
    )
    argv = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = open(base / "jupyterlab.log", "w")
    server = subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(f"JupyterLab did not start:\n{(base / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.3)
    yield {"url": url, "root": root}
    stop_process(server, 20)
    log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


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


class LabPage:
    """The open notebook in JupyterLab, by the DOM JupyterLab 4 renders."""

    def __init__(self, page) -> None:
        self.page = page
        self.panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")

    def cell(self, index: int):
        return self.panel.locator(".jp-Notebook .jp-Cell").nth(index)

    def wait_for_cells(self, count: int) -> None:
        self.panel.locator(".jp-Notebook .jp-Cell").nth(count - 1).locator(".cm-content").wait_for()

    def add_tag(self, tag: str) -> None:
        """Type a tag into the property inspector's cell tag editor, as a user does.

        The editor is re-created on every re-render of the inspector and a fresh one blurs a
        focus it did not start; a re-render between the click and the typing (the inspector
        catching up with the active cell on a loaded machine) swallows the typing. Like a
        user, click and type again; the editor never adds a tag twice.
        """
        field = self.page.locator("#jp-property-inspector input.jp-CellTags-Add")
        applied = self.page.locator(
            "#jp-property-inspector .jp-CellTags-Applied", has_text=re.compile(rf"^\s*{re.escape(tag)}\s*$")
        ).first
        for _ in range(3):
            field.click()
            if not field.evaluate("e => document.activeElement === e"):
                continue  # typing now would go to the notebook's command-mode shortcuts
            self.page.keyboard.type(tag)
            self.page.keyboard.press("Enter")
            try:
                applied.wait_for(timeout=5000)
                return
            except PlaywrightTimeout:
                pass
        raise AssertionError(f"the cell tag editor did not apply {tag!r}")

    def run(self, index: int, timeout: float = 60) -> None:
        """Run one cell (Ctrl+Enter) and wait until its prompt shows an execution count."""
        cell = self.cell(index)
        before = cell.locator(".jp-InputPrompt").inner_text()
        cell.locator(".cm-content").click()
        self.page.keyboard.press("Control+Enter")
        deadline = time.monotonic() + timeout
        while True:
            prompt = cell.locator(".jp-InputPrompt").inner_text()
            if re.search(r"\[\d+\]", prompt) and prompt != before:
                return
            assert time.monotonic() < deadline, f"cell {index} still shows {prompt!r}"
            time.sleep(0.1)

    def output_text(self, index: int) -> str:
        outputs = self.cell(index).locator(".jp-OutputArea-output")
        return "\n".join(outputs.all_inner_texts())

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


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
