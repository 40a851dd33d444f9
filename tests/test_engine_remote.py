"""How the engine keeps a remote component's results on the kernel side (SPEC §3, §5)."""

from __future__ import annotations

import pytest

from engine_support import Notebook, value
from linkkernel.remote import registry
from remote_support import WorkerProcess, make_key
from support import Kernel

# Which mapping of this process holds the notebook value's array data.
BACKING = """
import numpy as np
address = big.__array_interface__['data'][0]
for line in open('/proc/self/maps'):
    low, high = (int(x, 16) for x in line.split()[0].split('-'))
    if low <= address < high:
        print(line.split(None, 5)[5].strip() if len(line.split()) > 5 else 'anonymous')
"""


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine-worker")
    key_file = make_key(tmp / "key")
    w = WorkerProcess(str(tmp / "store"), key_file, tmp)
    registry.add("engine-remote", w.address, str(tmp / "store"), str(key_file))
    yield w
    w.stop()


@pytest.fixture(scope="module")
def kernel(link_kernelspec, worker):
    k = Kernel()
    yield k
    k.shutdown()


def test_a_remote_output_is_one_copy_shared_copy_on_write_with_the_cache(kernel, tmp_path):
    nb = Notebook(kernel, tmp_path / "remote.ipynb")
    nb.add("far", "import numpy as np\nbig = np.arange(2_000_000, dtype=np.int64)", remote="engine-remote")
    nb.add("near", "seen = int(big[5])", "far")
    nb.use()
    assert nb.run("far").status == "ok"
    backing = kernel.execute(BACKING)
    assert backing.status == "ok", backing.traceback_text
    # the notebook's array lives in the cached blob's memfd, mapped privately, not in a second copy
    assert backing.stdout.startswith("/memfd:linkkernel-blob"), backing.stdout
    # and it is still the user's own: writing it leaves the cached value alone
    assert kernel.execute("big[5] = -1").status == "ok"
    assert nb.run("near").status == "ok"
    assert value(kernel, "(int(big[5]), seen)") == (-1, 5)
