"""Shared set-up of the engine benchmarks: kernelspecs in a temp prefix, notebooks on disk."""

from __future__ import annotations

import atexit
import compileall
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from engine_support import Notebook  # noqa: E402
from support import Kernel, kernel_env  # noqa: E402


def setup(stock: bool = False) -> Path:
    """Install Link Python (and stock ipykernel as `python3` when asked) into a temp prefix.

    linkkernel's bytecode is compiled first, as pip compiles an installed wheel's and Python
    an editable checkout's on first import; where PYTHONDONTWRITEBYTECODE is set (this
    machine's shell sets it) every Link Python kernel would compile the package again at
    start-up (60 ms here), while stock's packages have the bytecode pip wrote."""
    compileall.compile_dir(REPO / "linkkernel", quiet=1)
    home = Path(tempfile.mkdtemp(prefix="linkbench-"))
    atexit.register(shutil.rmtree, home, True)  # caches of GBs; dirty pages would skew the next run
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("XDG_CACHE_HOME", "cache")):
        os.environ[var] = str(home / sub)
    prefix = home / "prefix"
    env = kernel_env()
    subprocess.run([sys.executable, "-m", "linkkernel.cli", "install", "--prefix", str(prefix)], check=True, env=env, capture_output=True)
    if stock:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "python3"],
                       check=True, capture_output=True)
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return home


def timed(run) -> float:
    started = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - started
    assert result.status == "ok", result.traceback_text
    return elapsed


def peak_rss_mb(kernel: Kernel) -> float:
    out = kernel.execute("import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)").stdout
    return int(out) / 1024


__all__ = ["Kernel", "Notebook", "setup", "timed", "peak_rss_mb"]
