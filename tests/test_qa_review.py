"""QA review of the Run All change: defects found reading it, each shown by a real kernel and
worker where it is observable (SPEC §4, §5).

Each test drives a real Link Python kernel the way JupyterLab does; kernels are shared per module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_support import value
from remote_support import WorkerProcess, make_key
from support import REPO

LINK_CACHE_IN_HOME = True  # conftest's `link` keeps its cache store in the module's home


@pytest.fixture(scope="module")
def bare_worker(home: Path):
    """A real worker, registered as `bare`, on a machine without pandas and matplotlib (a
    package of each name on its path refuses to import, as a missing one does)."""
    from linkkernel.remote import registry

    folder = home / "bare"
    for package in ("pandas", "matplotlib"):
        (folder / "shadow" / package).mkdir(parents=True)
        (folder / "shadow" / package / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{package}'\")\n")
    key_file = make_key(folder / "key")
    worker = WorkerProcess(
        str(folder / "store"), key_file, folder, env={"PYTHONPATH": f"{folder / 'shadow'}:{REPO}"}
    )
    registry.add("bare", worker.address, str(folder / "store"), str(key_file))
    try:
        yield worker
    finally:
        registry.remove("bare")
        worker.stop()


def test_a_remote_component_runs_where_the_kernels_pandas_and_matplotlib_are_missing(nb, bare_worker):
    """The kernel's pandas options and rcParams are taken to a task as far as it can set them
    (remote/settings.py): a worker without pandas or matplotlib still runs a component that
    uses neither, instead of failing it on an import of the kernel's settings."""
    setting = "import pandas as pd, matplotlib\npd.set_option('display.max_rows', 4)\nmatplotlib.rcParams['figure.dpi'] = 50"
    try:
        assert nb.kernel.execute(setting).status == "ok"
        nb.add("plain", "x = 1 + 1", remote="bare", counted=False).use()
        result = nb.run("plain")
        assert result.status == "ok", result.traceback_text
        assert value(nb.kernel, "x") == 2
    finally:
        nb.kernel.execute("pd.reset_option('display.max_rows')\nmatplotlib.rcParamsDefault['figure.dpi'] and "
                          "matplotlib.rcParams.update({'figure.dpi': matplotlib.rcParamsDefault['figure.dpi']})")
