"""QA: values kept in memory only, and concurrency inside one kernel and between kernels."""

from __future__ import annotations

import numpy as np

from linkkernel.namespaces import dump
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
