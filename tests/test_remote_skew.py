"""SPEC §5, issue #5: a worker whose Python minor version differs from the kernel's refuses a
task in one clear line, before unpickling anything, instead of crashing inside pickle; `ping`
shows the worker's Python.

The worker really runs under another CPython: LINKKERNEL_TEST_OTHER_PYTHON names that
interpreter (with linkkernel and its test extras installed); .ci/run sets it to each extra
Python's venv, and a value that is not another minor version fails the tests, never skips them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import cloudpickle
import pytest

from linkkernel.remote import registry
from remote_support import WorkerProcess, cli, make_key
from support import kernel_env

OTHER_PYTHON = os.environ.get("LINKKERNEL_TEST_OTHER_PYTHON", "")
ALIAS = "other-python"

pytestmark = pytest.mark.skipif(
    not OTHER_PYTHON, reason="LINKKERNEL_TEST_OTHER_PYTHON (another CPython minor version with linkkernel) is not set"
)


@pytest.fixture(scope="module")
def other_versions() -> dict[str, str]:
    """The other interpreter's Python and cloudpickle versions, as its worker reports them."""
    done = subprocess.run(
        [OTHER_PYTHON, "-c", "import json; from linkkernel.remote.worker import versions; print(json.dumps(versions()))"],
        capture_output=True, text=True, env=kernel_env(), timeout=30,
    )
    assert done.returncode == 0, f"LINKKERNEL_TEST_OTHER_PYTHON={OTHER_PYTHON} cannot import linkkernel: {done.stderr}"
    found = json.loads(done.stdout)
    assert found["python"].rsplit(".", 1)[0] != "{}.{}".format(*sys.version_info[:2]), (
        f"LINKKERNEL_TEST_OTHER_PYTHON={OTHER_PYTHON} is Python {found['python']}, the tests' own minor version"
    )
    return found


@pytest.fixture(scope="module")
def other_worker(tmp_path_factory, other_versions):
    """A real `linkkernel worker` under the other Python, registered as ALIAS."""
    tmp = tmp_path_factory.mktemp("skew")
    key_file = make_key(tmp / "key")
    worker = WorkerProcess(str(tmp / "store"), key_file, tmp, python=OTHER_PYTHON)
    registry.add(ALIAS, worker.address, str(tmp / "store"), str(key_file))
    yield worker
    registry.remove(ALIAS)
    worker.stop()


def test_ping_shows_the_workers_python(other_worker, other_versions, link):
    line = cli("workers", "ping", ALIAS).stdout.strip()
    assert f"{ALIAS} ({other_worker.address}): round trip " in line and f"; Python {other_versions['python']}; " in line, line
    shown = link.execute(f"%link workers ping {ALIAS}").stdout
    assert f"; Python {other_versions['python']}; " in shown, shown


def test_a_task_for_a_worker_of_another_python_is_refused_in_one_line(other_worker, other_versions, nb):
    # the child's input is a real pickle made by this Python: refused before it is unpickled
    nb.add("make", "import numpy as np\ndata = {'values': np.arange(10.0), 'square': lambda v: v * v}", counted=False)
    nb.add("away", "total = float(data['square'](data['values']).sum())", "make", remote=ALIAS, counted=False).use()
    result = nb.run("away")
    assert result.status == "error"
    assert result.traceback_text.strip() == (
        f"RemoteError: worker {ALIAS!r} at {other_worker.address} refused the task: version mismatch: "
        f"worker has Python {other_versions['python']} / cloudpickle {other_versions['cloudpickle']}, "
        f"kernel has Python {platform.python_version()} / cloudpickle {cloudpickle.__version__}; "
        "pickled values only cross between the same Python minor version and cloudpickle version"
    )
    assert other_worker.alive() and "Traceback" not in other_worker.log(), other_worker.log()
    assert cli("workers", "ping", ALIAS).returncode == 0  # still serving
