"""Shared fixtures: a Link Python kernelspec installed into a private prefix for the session."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine_support import Notebook
from support import REPO, Kernel, kernel_env, start_stock_kernel


@pytest.fixture(scope="session", autouse=True)
def link_kernelspec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Install the kernelspec with `linkkernel install --prefix` and make Jupyter find it.

    Every test then launches kernels by name, exactly as JupyterLab does.
    """
    home = tmp_path_factory.mktemp("home")
    # Registry, keys and caches of the tests never touch the user's own directories.
    os.environ["JUPYTER_CONFIG_DIR"] = str(home / "config")
    os.environ["JUPYTER_DATA_DIR"] = str(home / "data")
    os.environ["XDG_CACHE_HOME"] = str(home / "cache")
    # IPython's history database too: kernels of runs side by side shared ~/.ipython's, and
    # IPython moving a database it found corrupt failed a running kernel's history writes.
    os.environ["IPYTHONDIR"] = str(home / "ipython")
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run(
        [sys.executable, "-m", "linkkernel.cli", "install", "--prefix", str(prefix)],
        check=True,
        env=kernel_env(),
        capture_output=True,
    )
    data_dir = str(prefix / "share" / "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [data_dir, os.environ.get("JUPYTER_PATH")]))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return data_dir


@pytest.fixture(scope="module")
def kernel(link_kernelspec: str):
    """One Link Python kernel shared by a test module (a start costs ~0.6 s)."""
    k = Kernel()
    yield k
    k.shutdown()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A test module's own working folder (its kernels start there)."""
    return tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))


@pytest.fixture(scope="module")
def link(link_kernelspec: str, home: Path, request: pytest.FixtureRequest):
    """A Link Python kernel started in the module's `home`; with its cache store there too
    where the module sets `LINK_CACHE_IN_HOME = True`."""
    cache = {"LINKKERNEL_CACHE": f"file://{home / 'cache'}"} if getattr(request.module, "LINK_CACHE_IN_HOME", False) else {}
    k = Kernel(cwd=str(home), **cache)
    yield k
    k.shutdown()


@pytest.fixture(scope="module")
def stock(link_kernelspec: str, tmp_path_factory: pytest.TempPathFactory):
    """A stock ipykernel (the `python3` kernelspec), the reference for parity tests."""
    k = start_stock_kernel(tmp_path_factory.mktemp("stock"))
    yield k
    k.shutdown()


@pytest.fixture
def nb(link: Kernel, home: Path, request: pytest.FixtureRequest):
    """A saved notebook of this test's own, made the kernel's notebook for the test."""
    name = re.sub(r"\W", "_", request.node.name)
    notebook = Notebook(link, home / f"{name}.ipynb")
    yield notebook
    assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"
