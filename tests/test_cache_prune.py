"""The blob files of replaced runs leave the cache store (SPEC §3 "Persistence").

A component re-run while its output is worked on wrote a new blob each time and none ever
went: a 10 MB output re-run five times left 58 MB, a 2 GB DataFrame filled the disk. Files no
record names go once the replacing record is written; those some record names (this kernel's,
another process's, two components with one value) stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from engine_support import Notebook, kernels_on_one_cache, value
from support import Kernel, kernel_env

from linkkernel.namespaces import dump
from linkkernel.staleness import RunRecord
from linkkernel.store import CacheStore, freeze, notebook_key, write_blob

MB = 1 << 20


def record(name: str, run_id: str, namespace: dict[str, str]) -> RunRecord:
    return RunRecord(name, run_id, "hash", {}, "ok", 0.0, 0.0, namespace=namespace)


def blob_files(folder: Path) -> dict[str, int]:
    """Digest -> size of each blob file under a notebook's store `folder` (a kernel may be
    removing some meanwhile)."""
    found = {}
    for path in folder.glob("blobs/*/*"):
        if not path.name.endswith(".part"):
            with contextlib.suppress(FileNotFoundError):
                found[path.name] = path.stat().st_size
    return found


def waited(check, timeout: float = 10):
    """`check()` once it is true (a kernel writes and removes in the background), else its last value."""
    deadline = time.monotonic() + timeout
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def quiet(folder: Path, timeout: float = 10) -> None:
    """Wait until the files under a notebook's store `folder` stay as they are for half a second."""
    deadline = time.monotonic() + timeout
    before = None
    while time.monotonic() < deadline:
        now = blob_files(folder), {p.name: p.read_text() for p in folder.glob("records/*.json")}
        if now == before:
            return
        before = now
        time.sleep(0.5)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "linkkernel.cli", *args]
    return subprocess.run(command, cwd=cwd, env=kernel_env(), capture_output=True, text=True, timeout=60)


def named(folder: Path) -> set[str]:
    """The digests the record files under `folder` name."""
    return {d for p in folder.glob("records/*.json") for d in json.loads(p.read_text())["namespace"].values()}


# ---------------------------------------------------------------- one store, no kernel


def put(store: CacheStore, name: str, run_id: str, values: dict) -> dict[str, str]:
    """Record a run of `name` making `values`; its namespace (name -> digest)."""
    blobs = {n: freeze(dump(n, v)) for n, v in values.items()}
    store.put(record(name, run_id, {n: b.digest for n, b in blobs.items()}), {b.digest: b for b in blobs.values()}, {})
    return {n: b.digest for n, b in blobs.items()}


def test_a_replaced_run_s_blob_goes_and_a_shared_or_current_one_stays(tmp_path):
    url, nb = f"file://{tmp_path}", str(tmp_path / "nb.ipynb")
    folder = tmp_path / notebook_key(nb)
    store = CacheStore(url, nb)
    first = put(store, "a", "r1", {"x": [1] * 1000, "same": "kept by every run"})
    shared = put(store, "b", "r1", {"x": [1] * 1000})  # b's value equals a's first: one file
    assert shared["x"] == first["x"]
    second = put(store, "a", "r2", {"x": [2] * 1000, "same": "kept by every run"})
    third = put(store, "a", "r3", {"x": [3] * 1000, "same": "kept by every run"})
    store.flush()
    assert set(blob_files(folder)) == {first["x"], third["x"], third["same"]}
    assert second["x"] not in blob_files(folder)
    again = CacheStore(url, nb)
    assert again.load(shared["x"], {})[0] == [1] * 1000 and again.load(third["x"], {})[0] == [3] * 1000


def test_a_blob_another_process_wrote_for_a_record_not_written_yet_is_left_alone(tmp_path):
    """Another process wrote a blob equal to a value of `a`'s old run and is about to write
    the record naming it: `a`'s re-run here leaves it, for the grace period; the next
    removal after it takes it, as no record named it in the meantime."""
    url, nb = f"file://{tmp_path}", str(tmp_path / "nb.ipynb")
    folder = tmp_path / notebook_key(nb)
    store = CacheStore(url, nb)
    old = put(store, "a", "r1", {"x": [1] * 1000})
    store.flush()
    path = next(folder.glob(f"blobs/*/{old['x']}"))
    again = path.with_suffix(".other")  # written again elsewhere, moved into place: its record comes next
    with open(again, "wb") as f:
        write_blob(f, freeze(dump("x", [1] * 1000)))
    again.replace(path)
    put(store, "a", "r2", {"x": [2] * 1000})
    store.flush()
    assert path.exists(), "a blob another process wrote moments ago was removed"
    past = time.time() - 120
    os.utime(path, (past, past))
    put(store, "c", "r1", {"z": 3})
    store.flush()
    assert not path.exists()


def test_a_blob_a_record_of_another_process_names_stays(tmp_path):
    """`b`'s record, written by another process, names the value `a`'s old run made: it
    stays when `a` runs again here, though no run this store holds names it."""
    url, nb = f"file://{tmp_path}", str(tmp_path / "nb.ipynb")
    store, other = CacheStore(url, nb), CacheStore(url, nb)
    old = put(store, "a", "r1", {"x": [1] * 1000})
    store.flush()
    put(other, "b", "r1", {"x": [1] * 1000})
    other.flush()
    for path in (tmp_path / notebook_key(nb)).glob("blobs/*/*"):  # named a while ago
        os.utime(path, (time.time() - 120,) * 2)
    put(store, "a", "r2", {"x": [2] * 1000})
    store.flush()
    assert "b" not in store.records
    assert CacheStore(url, nb).load(old["x"], {})[0] == [1] * 1000


def test_a_run_taken_from_another_process_lets_the_replaced_run_s_blob_go(tmp_path):
    """`a` re-run by another process that never saw this store's run: this store takes that
    run in (`refresh`), and the blob only its own old run named goes."""
    url, nb = f"file://{tmp_path}", str(tmp_path / "nb.ipynb")
    folder = tmp_path / notebook_key(nb)
    other = CacheStore(url, nb)
    store = CacheStore(url, nb)
    old = put(store, "a", "r1", {"x": [1] * 1000})
    store.flush()
    new = put(other, "a", "r2", {"x": [2] * 1000})
    other.flush()
    assert set(blob_files(folder)) == {old["x"], new["x"]}
    assert store.refresh() and store.records["a"].run_id == "r2"
    store.flush()
    assert set(blob_files(folder)) == {new["x"]}
    assert store.load(new["x"], {})[0] == [2] * 1000


def test_opening_a_store_removes_files_no_record_names_but_not_fresh_ones(tmp_path):
    """Files a process ended before it could remove (or an older linkkernel left) go when
    the store is opened next, once a minute old; one written moments ago may be another
    process's run on its way; `.part` files and foreign names are not blobs."""
    url, nb = f"file://{tmp_path}", str(tmp_path / "nb.ipynb")
    folder = tmp_path / notebook_key(nb)
    store = CacheStore(url, nb)
    current = put(store, "a", "r1", {"x": [1] * 1000})
    store.flush()

    def left(value, age: float) -> Path:
        blob = freeze(dump("x", value))
        path = folder / "blobs" / blob.digest[:2] / blob.digest
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as f:
            write_blob(f, blob)
        os.utime(path, (time.time() - age,) * 2)
        return path

    old, young = left([2] * 1000, 120), left([3] * 1000, 0)
    foreign = old.parent / "notes.txt"
    foreign.write_text("not ours")
    os.utime(foreign, (time.time() - 120,) * 2)
    os.utime(next(folder.glob(f"blobs/*/{current['x']}")), (time.time() - 120,) * 2)
    CacheStore(url, nb).flush()
    assert not old.exists() and young.exists() and foreign.exists()
    assert set(blob_files(folder)) == {current["x"], young.name, foreign.name}


def test_an_object_store_removes_a_replaced_run_s_blob_in_one_request(tmp_path, monkeypatch, caplog):
    """On `s3://` too: the files no record names go, in one batched delete; a value a
    teammate's record names stays."""
    import logging
    import re

    from s3fs import S3FileSystem

    from remote_support import S3_ENV, MotoServer

    server = MotoServer()
    S3FileSystem.clear_instance_cache()  # fsspec keeps one per arguments, not per endpoint variable
    try:
        server.make_bucket("cache")
        for name, val in {**S3_ENV, "AWS_ENDPOINT_URL": server.endpoint}.items():
            monkeypatch.setenv(name, val)
        nb = str(tmp_path / "nb.ipynb")
        store = CacheStore("s3://cache/team", nb)
        first = put(store, "a", "r1", {"x": np.arange(10_000), "y": np.ones(10_000)})
        other = CacheStore("s3://cache/team", nb)  # a teammate: only its record names `b`'s value
        shared = put(other, "b", "r1", {"x": np.arange(10_000)})
        other.flush()
        store.flush()
        caplog.set_level(logging.INFO, logger="werkzeug")  # the server's log of each request
        second = put(store, "a", "r2", {"x": np.arange(10_001), "y": np.zeros(10_000)})
        store.flush()
        blobs = {key.rsplit("/", 1)[1] for key in store.fs.find(f"{store.root}/blobs")}
        assert blobs == {shared["x"], *second.values()}
        deletes = [r.getMessage() for r in caplog.records if re.search(r'"POST /cache/?\?delete', r.getMessage())]
        assert len(deletes) == 1, [r.getMessage() for r in caplog.records]
        again = CacheStore("s3://cache/team", nb)
        assert again.load(shared["x"], {})[0][-1] == 9_999 and first["y"] not in blobs
    finally:
        server.stop()
        S3FileSystem.clear_instance_cache()


# ---------------------------------------------------------------- kernels


cache, kernels = kernels_on_one_cache("prune")  # kernels A and B on one local cache store


def opened(kernel: Kernel, path: Path, build) -> Notebook:
    nb = build(Notebook(kernel, path))
    nb.use()
    nb.runs()
    return nb


def test_a_component_run_again_and_again_keeps_one_run_s_blobs(kernels, cache, tmp_path):
    """`%link run a --force` five times on a 2 MB output: the store holds one of them."""
    nb = opened(kernels[0], tmp_path / "nb.ipynb", lambda nb: nb.add("a", "import numpy as np\nx = np.random.random(262_144)"))
    folder = cache / notebook_key(str(nb.path))
    for _ in range(5):
        forced = nb.kernel.execute("%link run a --force")
        assert forced.status == "ok", forced.traceback_text
    assert nb.runs() == ["a"] * 5
    assert waited(lambda: sum(blob_files(folder).values()) < 3 * MB and set(blob_files(folder)) == named(folder)), (
        f"{sum(blob_files(folder).values()) / MB:.0f} MB of blobs")


def test_a_value_two_components_share_stays_when_one_runs_again(kernels, cache, tmp_path):
    """`a` and `b` make an equal `x` (one file); `a` edited and run again: its old `y` goes,
    `b`'s `x` stays, and a restarted kernel finds `b` fresh with it."""
    def build(nb: Notebook) -> Notebook:
        return nb.add("a", "x = list(range(50_000))\ny = 'a' * 9999").add("b", "x = list(range(50_000))")

    nb = opened(kernels[0], tmp_path / "nb.ipynb", build)
    folder = cache / notebook_key(str(nb.path))
    assert nb.run("a").status == "ok" and nb.run("b").status == "ok"
    assert nb.runs() == ["a", "b"]
    shared = waited(lambda: (folder / "records" / "b.json").exists() and named(folder))
    nb.add("a", "x = list(range(60_000))\ny = 'b' * 9999").save()
    assert nb.run("a").status == "ok" and nb.runs() == ["a"]
    assert waited(lambda: set(blob_files(folder)) == named(folder)), (blob_files(folder), named(folder))
    assert len(shared - named(folder)) == 1, "a's old y goes; b's x, a's old one too, stays"
    nb.restart()
    ran = nb.kernel.execute("%link run b")
    assert ran.status == "ok" and nb.runs() == [], ran.traceback_text
    assert value(nb.kernel, "len(x)") == 50_000


def pipeline(nb: Notebook) -> Notebook:
    nb.add("load", "import random\nraw = [random.random() for _ in range(3)]")
    nb.add("clean", "cleaned = sorted(raw)", "load")
    nb.add("train", "model = sum(cleaned)\nsize = len(cleaned)", "clean")
    return nb


def test_a_restarted_kernel_finds_every_fresh_component_after_re_runs(kernels, cache, tmp_path):
    """Parents and children run again in every order: what is fresh after a restart is
    still all there (a child's record names its parents' values too)."""
    nb = opened(kernels[0], tmp_path / "nb.ipynb", pipeline)
    k = nb.kernel
    folder = cache / notebook_key(str(nb.path))
    assert nb.run("train").status == "ok"
    for command in ["%link run load --force", "%link run train", "%link run train --force", "%link run clean --force"]:
        assert k.execute(command).status == "ok"
    assert nb.run("train").status == "ok"
    nb.runs()
    raw = value(k, "raw")
    assert waited(lambda: set(blob_files(folder)) == named(folder)), (blob_files(folder), named(folder))
    nb.restart()
    assert nb.run("train").status == "ok" and nb.runs() == ["train"]
    assert value(k, "raw") == raw and value(k, "model") == sum(sorted(raw))


def test_two_kernels_re_running_in_turn_never_see_a_wrong_value(kernels, cache, tmp_path):
    """A and B on one store force `load` in turn, each then running `train` from the
    store's runs, now and then after a restart (its values read from the store): each sees
    the values of one run of `load` all through its pipeline, never an error; at worst a
    component runs again. The store then holds what the records name, once a minute passed
    and a kernel opened it again."""
    path = tmp_path / "nb.ipynb"
    a, b = (opened(k, path, pipeline) for k in kernels)
    b.counter = a.counter
    folder = cache / notebook_key(str(path))
    for turn in range(6):
        me = (a, b)[turn % 2]
        assert me.kernel.execute("%link run load --force").status == "ok"
        ran = me.run("train")
        assert ran.status == "ok" and ran.stderr == "", ran.traceback_text
        raw = value(me.kernel, "raw")
        assert value(me.kernel, "cleaned") == sorted(raw) and value(me.kernel, "model") == sum(sorted(raw))
        other = (a, b)[1 - turn % 2]
        if turn % 3 == 2:
            other.restart()
        seen = other.run("train")
        assert seen.status == "ok", seen.traceback_text
        theirs = value(other.kernel, "raw")
        assert value(other.kernel, "model") == sum(sorted(theirs)) and value(other.kernel, "size") == 3
    a.runs()
    quiet(folder)  # both kernels' writes landed
    # Files one kernel wrote or touched lately are not the other's to remove; those no process
    # was left to remove go when the store is opened next, a minute on.
    for path in folder.glob("blobs/*/*"):
        os.utime(path, (time.time() - 120,) * 2)
    a.restart()
    assert waited(lambda: set(blob_files(folder)) == named(folder)), (blob_files(folder), named(folder))


def test_a_cache_import_replacing_runs_lets_their_blobs_go(kernels, cache, tmp_path):
    """`linkkernel cache import` of older runs over newer ones (a minute on): the newer runs'
    files go; the kernel takes the imported runs in and runs only the cell's component."""
    nb = opened(kernels[0], tmp_path / "nb.ipynb", pipeline)
    k, folder = nb.kernel, cache / notebook_key(str(tmp_path / "nb.ipynb"))
    assert nb.run("clean").status == "ok"
    first = value(k, "raw")
    waited(lambda: (folder / "records" / "clean.json").exists())
    store = ["--cache", f"file://{cache}"]
    exported = cli("cache", "export", str(nb.path), "-o", str(tmp_path / "first.tar.gz"), *store, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert k.execute("%link run load --force").status == "ok" and nb.run("clean").status == "ok"
    assert value(k, "raw") != first
    quiet(folder)
    newer = named(folder)
    assert set(blob_files(folder)) == newer
    for path in folder.glob("blobs/*/*"):  # written a minute ago
        os.utime(path, (time.time() - 120,) * 2)
    imported = cli("cache", "import", str(tmp_path / "first.tar.gz"), "--notebook", str(nb.path), *store, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert set(blob_files(folder)) == named(folder) and named(folder) != newer
    nb.runs()
    assert nb.run("clean").status == "ok" and nb.runs() == ["clean"]
    assert value(k, "raw") == first
