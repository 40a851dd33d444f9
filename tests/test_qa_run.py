"""QA of running components (SPEC §3, §4) by a user coming from stock ipykernel.

Each test drives a real Link Python kernel the way JupyterLab does and, where stock ipykernel
is the reference, the same cell in a stock `python3` kernel. Kernels are shared per module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_support import Notebook
from support import Kernel, component_meta, start_stock_kernel


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qa-run")


@pytest.fixture(scope="module")
def link(link_kernelspec: str, home: Path):
    k = Kernel(cwd=str(home))
    yield k
    k.shutdown()


@pytest.fixture(scope="module")
def stock(link_kernelspec: str, tmp_path_factory: pytest.TempPathFactory):
    k = start_stock_kernel(tmp_path_factory.mktemp("stock"))
    yield k
    k.shutdown()


@pytest.fixture
def nb(link: Kernel, home: Path, request: pytest.FixtureRequest):
    """A saved notebook of this test's own, made the kernel's notebook for the test."""
    notebook = Notebook(link, home / f"{request.node.name[:60]}.ipynb")
    yield notebook
    assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"


LINES = 100_000
MANY_LINES = f"for k in range({LINES}):\n    print('line', k)\nprinted = True"


def test_a_component_printing_a_hundred_thousand_lines_runs_as_fast_as_a_cell(nb, stock):
    # Every write was appended to one growing string: quadratic, minutes for what stock
    # ipykernel prints in a second, live and as a silent parent alike
    expected = stock.execute(MANY_LINES, timeout=30).stdout
    nb.add("chatty", MANY_LINES, counted=False).add("quiet", "print(printed)", "chatty", counted=False).use()
    as_parent = nb.run("quiet", timeout=30)
    assert (as_parent.status, as_parent.stdout) == ("ok", "True\n"), as_parent.traceback_text
    live = nb.run("chatty", timeout=30)
    assert (live.status, live.stdout) == ("ok", expected)
    assert nb.kernel.execute("%link outputs chatty", timeout=30).stdout == expected
