"""QA: values kept in memory only, and concurrency inside one kernel and between kernels."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from support import Kernel

from linkkernel.namespaces import dump
from linkkernel.sources import Sources
from linkkernel.staleness import RunRecord
from linkkernel.store import CacheStore, freeze


def test_two_kernels_writing_the_same_blob_at_once_both_succeed(tmp_path):
    """Two stores on one cache folder (two kernels on the same notebook) keep the same large
    value at the same moment: neither write fails and the blob reads back whole. With one
    shared temporary name, one store truncated the other's file and its move then failed."""
    blob = freeze(dump("big", np.ones(6_000_000)))  # 48 MB: both writes overlap
    record = RunRecord("a", "r1", "h", {}, "ok", 0.0, 0.0, namespace={"big": blob.digest})
    url, notebook = f"file://{tmp_path}", str(tmp_path / "nb.ipynb")
    stores = [CacheStore(url, notebook) for _ in range(2)]
    for store in stores:
        store.put(record, {blob.digest: blob}, {})
    assert [store.write_failures() for store in stores] == [[], []]
    reader = CacheStore(url, notebook)
    value, _ = reader.load(blob.digest, {})
    assert value.shape == (6_000_000,) and float(value.sum()) == 6_000_000.0
    assert not list(tmp_path.rglob("*.part"))


@pytest.fixture(scope="module")
def qa_kernel(link_kernelspec: str):
    kernel = Kernel()
    yield kernel
    kernel.shutdown()


def test_a_subshell_learning_cells_while_the_main_shell_reads_the_pipeline():
    """JupyterLab 4.6 sends some requests to subshells (JEP 91), which run in threads of their
    own: each cell they run is learnt as a declaration while the main shell may be reading
    every declaration to build a pipeline. The reader must never see the table half-changed
    (a "dictionary changed size during iteration" error in the user's cell). A real subshell
    rarely lands in that window, so the two threads here call the two sides directly, with
    thread switches forced as often as the interpreter allows."""
    sources = Sources(None)
    for i in range(2000):
        sources.learn(f"x = {i}", {}, f"cell-{i}")

    def learning(round: int) -> None:
        for i in range(1000):
            sources.learn("y = 1", {"tags": ["component:side"]} if i % 2 else {}, f"side-{round}-{i}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for round in range(5):
            learner = threading.Thread(target=learning, args=(round,))
            learner.start()
            try:
                while learner.is_alive():
                    sources.declared()
            finally:
                learner.join()
    finally:
        sys.setswitchinterval(interval)
        sys.setswitchinterval(interval)
