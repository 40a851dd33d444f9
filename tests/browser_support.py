"""A JupyterLab or Notebook 7 server and headless Chromium for the browser tests, and the open notebook.

Chromium is Debian's (/usr/bin/chromium), driven by the `playwright` package; nothing is
downloaded. Without chromium a browser test skips, except in CI (CI=true), where it fails.
A test module imports the `lab` (or `notebook7`) and `browser` fixtures to get its own server
and browser, started once for the module (a start costs seconds on two cores). Both frontends
render a notebook with the same JupyterLab widgets: `LabPage` reads it in JupyterLab,
`Notebook7Page` in Notebook 7 where the page around it differs.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import nbformat
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


def require_chromium() -> None:
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


def _serve(app: str, base: Path) -> Iterator[dict]:
    """`python -m APP` (jupyterlab, notebook) on a free loopback port, serving an empty
    temporary root, until the generator is closed; yields its url and root."""
    require_chromium()
    root, settings = base / "root", base / "settings"
    root.mkdir()
    _write_settings(settings)
    port = _free_port()
    env = kernel_env(
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
    )
    # Notebook 7 runs JupyterLab's server extension too: its news_url applies to both.
    argv = [
        sys.executable, "-m", app, "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log_path = base / f"{app}.log"
    log = open(log_path, "w")
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
                pytest.fail(f"{app} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
    try:
        yield {"url": url, "root": root}
    finally:
        stop_process(server, 20)
        log.close()


@pytest.fixture(scope="module")
def lab(link_kernelspec: str, tmp_path_factory: pytest.TempPathFactory):
    """A JupyterLab server on a free loopback port, serving an empty temporary root."""
    yield from _serve("jupyterlab", tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="module")
def notebook7(link_kernelspec: str, tmp_path_factory: pytest.TempPathFactory):
    """A Jupyter Notebook 7 server (`jupyter notebook`) on a free loopback port, serving an
    empty temporary root."""
    yield from _serve("notebook", tmp_path_factory.mktemp("notebook7"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    require_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


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


def open_pages(page_class: type[LabPage], browser, url: str) -> Iterator[Callable[[str], LabPage]]:
    """For a test's fixture: opens saved notebooks in pages of their own, closed when the test ends."""
    pages: list[LabPage] = []

    def open_notebook(path: str) -> LabPage:
        pages.append(page_class.open(browser, url, path))
        return pages[-1]

    yield open_notebook
    for lab_page in pages:
        lab_page.page.close()


class LabPage:
    """The open notebook in JupyterLab, by the DOM JupyterLab 4 renders."""

    NOTEBOOK_URL = "{url}/lab/tree/{path}?reset&token={token}"

    def __init__(self, page) -> None:
        self.page = page
        self.panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")

    def cell(self, index: int):
        return self.panel.locator(".jp-Notebook .jp-Cell").nth(index)

    @classmethod
    def open(cls, browser, url: str, path: str) -> Self:
        """A saved notebook opened in a new page, as from the file browser, once its kernel is idle."""
        lab_page = cls(browser.new_page(viewport={"width": 1400, "height": 1000}))
        lab_page.page.goto(cls.NOTEBOOK_URL.format(url=url, path=path, token=TOKEN))
        lab_page.wait_for_cells(1)
        lab_page.wait_for_kernel()
        return lab_page

    def wait_for_kernel(self, timeout: float = 60) -> None:
        """Until the status bar shows the notebook's kernel idle (started, restarted)."""
        status = self.page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$"))
        status.wait_for(timeout=timeout * 1000)

    def wait_for_cells(self, count: int) -> None:
        self.panel.locator(".jp-Notebook .jp-Cell").nth(count - 1).locator(".cm-content").wait_for()

    def add_tag(self, tag: str) -> None:
        """Type a tag into the cell tag editor of the notebook tools (JupyterLab's property
        inspector, Notebook 7's right sidebar), as a user does.

        The editor is re-created on every re-render of the inspector and a fresh one blurs a
        focus it did not start; a re-render between the click and the typing (the inspector
        catching up with the active cell on a loaded machine) swallows the typing. Like a
        user, click and type again; the editor never adds a tag twice.
        """
        field = self.page.locator("#notebook-tools input.jp-CellTags-Add")
        applied = self.page.locator(
            "#notebook-tools .jp-CellTags-Applied", has_text=re.compile(rf"^\s*{re.escape(tag)}\s*$")
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

    def start(self, index: int) -> None:
        """Run a cell without waiting for it, as a user presses Ctrl+Enter."""
        self.cell(index).locator(".cm-content").click()
        self.page.keyboard.press("Control+Enter")

    def run(self, index: int, timeout: float = 60) -> None:
        """Run one cell (Ctrl+Enter) and wait until its prompt shows an execution count."""
        cell = self.cell(index)
        before = cell.locator(".jp-InputPrompt").inner_text()
        self.start(index)
        deadline = time.monotonic() + timeout
        while True:
            prompt = cell.locator(".jp-InputPrompt").inner_text()
            if re.search(r"\[\d+\]", prompt) and prompt != before:
                return
            assert time.monotonic() < deadline, f"cell {index} still shows {prompt!r}"
            time.sleep(0.1)

    def wait_for_output(self, index: int, text: str | re.Pattern, timeout: float = 60) -> None:
        self.cell(index).locator(".jp-OutputArea-output", has_text=text).first.wait_for(timeout=timeout * 1000)

    def wait_until_done(self, index: int, timeout: float = 60) -> None:
        """Until the cell's prompt shows a count instead of `[*]`."""
        prompt = self.cell(index).locator(".jp-InputPrompt")
        deadline = time.monotonic() + timeout
        while not re.search(r"\[\d+\]", prompt.inner_text()):
            assert time.monotonic() < deadline, f"cell {index} still shows {prompt.inner_text()!r}"
            time.sleep(0.1)

    def output_text(self, index: int) -> str:
        outputs = self.cell(index).locator(".jp-OutputArea-output")
        return "\n".join(outputs.all_inner_texts())

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


class Notebook7Page(LabPage):
    """The open notebook in Jupyter Notebook 7: one notebook per page, no status bar, the
    kernel's name, logo and state in the toolbar and top bar."""

    NOTEBOOK_URL = "{url}/notebooks/{path}?token={token}"

    def wait_for_kernel(self, timeout: float = 60) -> None:
        """Until the notebook has its kernel (the top bar's logo is set once the session is
        ready) and the menu bar's kernel state has gone from Connecting/Starting to idle or busy
        (it shows nothing then)."""
        self.page.locator(".jp-NotebookKernelLogo img[src]").wait_for(timeout=timeout * 1000)
        settled = ".jp-NotebookKernelStatus.jp-NotebookKernelStatus-fade:not(.jp-NotebookKernelStatus-info)"
        self.page.locator(settled).wait_for(state="attached", timeout=timeout * 1000)

    def show_cell_tags(self) -> None:
        """View > Right Sidebar > Show Notebook Tools, its Common Tools (the cell tag editor) open."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text="View").click()
        self.page.locator(".lm-Menu-itemLabel", has_text="Right Sidebar").hover()
        self.page.locator(".lm-Menu-itemLabel", has_text="Show Notebook Tools").click()
        self.page.locator("#notebook-tools .jp-Collapser-title", has_text="Common Tools").click()
        self.page.locator("#notebook-tools input.jp-CellTags-Add").wait_for()
