"""The cache store and copy-on-write inputs, without a kernel."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from linkkernel import s3io
from linkkernel.errors import LinkError

from linkkernel.cow import Loaded
from linkkernel.namespaces import dump
from linkkernel.staleness import RunRecord
from linkkernel.store import CacheStore, freeze, notebook_key


def record(name, run_id, namespace):
    return RunRecord(name, run_id, "hash", {}, "ok", 0.0, 0.0, namespace=namespace)


def test_records_and_blobs_survive_a_new_store_and_corruption_is_refused(tmp_path):
    url = f"file://{tmp_path}"
    store = CacheStore(url, str(tmp_path / "nb.ipynb"))
    big = np.arange(300_000, dtype=np.float64)  # 2.4 MB: a memfd-backed buffer
    blobs = {n: freeze(dump(n, v)) for n, v in {"big": big, "small": {"k": [1, 2]}}.items()}
    store.put(record("a", "r1", {n: b.digest for n, b in blobs.items()}), {b.digest: b for b in blobs.values()}, {})
    big[0] = -5.0  # a later mutation of the live object never reaches the cache
    store.flush()
    again = CacheStore(url, str(tmp_path / "nb.ipynb"))
    assert again.get("a").run_id == "r1"
    value, _ = again.load(blobs["big"].digest, {})
    assert value[0] == 0.0 and value[-1] == 299_999.0
    assert again.load(blobs["small"].digest, {})[0] == {"k": [1, 2]}
    # a tampered blob file is not loaded
    path = next((tmp_path / notebook_key(str(tmp_path / "nb.ipynb")) / "blobs").glob(f"*/{blobs['small'].digest}"))
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    third = CacheStore(url, str(tmp_path / "nb.ipynb"))
    with pytest.raises(LinkError, match="is corrupt"):
        third.load(blobs["small"].digest, {})
    path.unlink()
    with pytest.raises(LinkError, match="cannot read cached value"):
        CacheStore(url, str(tmp_path / "nb.ipynb")).load(blobs["small"].digest, {})


def test_replaced_runs_release_their_values_from_memory():
    store = CacheStore(None, None)
    old, new = freeze(dump("x", [1])), freeze(dump("x", [2]))
    store.put(record("a", "r1", {"x": old.digest}), {old.digest: old}, {})
    store.put(record("a", "r2", {"x": new.digest}), {new.digest: new}, {})
    assert list(store.blobs) == [new.digest]
    assert store.location.startswith("memory only")


def test_copy_on_write_inputs_detect_writes_without_touching_the_frozen_value():
    frozen = freeze(dump("arr", np.zeros(1_000_000)))
    first = Loaded(frozen, {})
    assert first.mapped
    assert first.value.flags.writeable
    assert float(first.value.sum()) == 0.0  # reading is not writing
    assert first.unchanged("arr", first.value) is not None
    first.value[123_456] = 1.0
    assert first.unchanged("arr", first.value) is None
    second = Loaded(frozen, {})
    assert float(second.value[123_456]) == 0.0
    assert second.unchanged("arr", np.zeros(1_000_000)) is None  # another object is never "unchanged"


class Holder:
    def __init__(self, arr):
        self.arr = arr


def test_a_value_holding_another_names_array_is_proven_unchanged_without_hashing():
    """`data` holds the array `arr` holds: loaded together they share it, and an untouched
    `data` is proven unchanged from the page tables as `arr` is, not hashed on every run."""
    from linkkernel.namespaces import loading_together, pickling_names

    arr = np.zeros(1_000_000)
    parent = {"arr": arr, "data": Holder(arr)}
    with pickling_names(parent):
        blobs = {n: freeze(dump(n, v)) for n, v in parent.items()}
    loaded = {}
    with loading_together({n: b.digest for n, b in blobs.items()}, lambda n: loaded.setdefault(n, Loaded(blobs[n], {})).value) as value_of:
        child = {n: value_of(n) for n in blobs}
    assert child["data"].arr is child["arr"]
    with pickling_names(child, lambda n: loaded[n].unchanged(n, child[n])) as names:
        assert names.proven == {"arr", "data"}
    child["arr"][7] = 1.0
    with pickling_names(child, lambda n: loaded[n].unchanged(n, child[n])) as names:
        assert names.proven == set()
        assert {n: names.blobs[n].digest != blobs[n].digest for n in blobs} == {"arr": True, "data": True}


def test_a_new_value_holding_an_unchanged_input_array_keeps_it_in_the_same_frozen_memory():
    """A child binding `data = Holder(arr)` over a large input `arr` it did not touch stores
    `data` with `arr`'s frozen memory as it is, not with a copy of it."""
    from linkkernel.cow import frozen_owner
    from linkkernel.namespaces import pickling_names

    parent = {"arr": np.zeros(1_000_000)}
    with pickling_names(parent):
        frozen = freeze(dump("arr", parent["arr"]))
    loaded = Loaded(frozen, {})
    child = {"arr": loaded.value}
    child["data"] = Holder(child["arr"])
    with pickling_names(child, lambda n: loaded.unchanged(n, child[n]) if n == "arr" else None) as names:
        data = freeze(dump("data", child["data"]))
    assert names.proven == {"arr"}
    assert frozen_owner(data.buffers[0]) is frozen_owner(frozen.buffers[0]) is not None
    assert Loaded(data, {}).value.arr[5] == 0.0 and Loaded(data, {}).value.arr.flags.writeable


@pytest.mark.parametrize("header", [b"[]", b'{"stream": "x", "buffers": []}', b'{"buffers": []}'])
def test_a_blob_file_not_in_the_blob_format_is_one_line_not_a_crash(tmp_path, header):
    url = f"file://{tmp_path}"
    blob = freeze(dump("x", [1, 2]))
    store = CacheStore(url, str(tmp_path / "nb.ipynb"))
    store.put(record("a", "r1", {"x": blob.digest}), {blob.digest: blob}, {})
    store.flush()
    path = next((tmp_path / notebook_key(str(tmp_path / "nb.ipynb")) / "blobs").glob(f"*/{blob.digest}"))
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(LinkError, match=f"cannot read cached value {blob.digest[:16]} .*: not a linkkernel blob"):
        CacheStore(url, str(tmp_path / "nb.ipynb")).load(blob.digest, {})


def test_freezing_with_no_file_descriptor_left_copies_instead_of_failing():
    """Past the limit of open files, a large buffer is frozen as a copy in memory, and its
    value still loads; nothing fails."""
    import subprocess
    import sys

    script = (
        "import resource, numpy as np\n"
        "from linkkernel.store import freeze\n"
        "from linkkernel.namespaces import dump\n"
        "from linkkernel.cow import Loaded\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "frozen = [freeze(dump('a', np.full(200_000, float(i)))) for i in range(100)]\n"
        "print(sum(float(Loaded(b, {}).value[0]) for b in frozen))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    assert (done.returncode, done.stdout) == (0, "4950.0\n"), done.stderr


def test_a_folder_watch_names_the_files_changed_since_it_was_last_asked(tmp_path):
    """What lets the store look only at the record files that changed before each cell; when
    it cannot tell (first asked, the folder gone), every file is looked at."""
    from linkkernel.watch import FolderWatch

    folder = tmp_path / "records"
    watch = FolderWatch(str(folder))
    assert watch.changed() is None  # no folder yet
    folder.mkdir()
    (folder / "old.json").write_text("{}")
    assert watch.changed() is None  # watching starts
    assert watch.changed() == set()
    (folder / "a.json.part").write_text("{}")
    os.replace(folder / "a.json.part", folder / "a.json")  # how the store writes
    (folder / "old.json").write_text('{"x": 1}')  # written in place
    assert {"a.json", "old.json"} <= watch.changed()
    assert watch.changed() == set()
    os.utime(folder / "a.json", (1, 1))
    assert watch.changed() == {"a.json"}
    shutil.rmtree(folder)  # `%link cache clear`
    assert watch.changed() is None
    assert watch.changed() is None  # no folder to watch


def test_the_folder_watch_is_not_trusted_where_other_machines_write():
    # inotify never hears of another NFS/SMB/FUSE client's writes: there the store looks at
    # every record file before each cell, as it did without a watch
    from linkkernel.watch import filesystem_type

    mountinfo = "\n".join([
        "22 1 252:0 / / rw,relatime - ext4 /dev/vda rw",
        "36 22 0:50 / /home/team rw,noatime - nfs4 server:/export/home rw,vers=4.2",
        "37 36 0:51 / /home/team/my\\040cache rw - fuse.sshfs user@host:/c rw",
        "38 22 0:52 / /scratch rw - nfs server:/scratch rw",
        "39 22 0:53 / /scratch rw - tmpfs tmpfs rw",
        "not a mountinfo line",
    ])
    assert filesystem_type("/work/nb/records", mountinfo) == "ext4"
    assert filesystem_type("/home/team/.cache/linkkernel/nb/records", mountinfo) == "nfs4"
    assert filesystem_type("/home/team/my cache/records", mountinfo) == "fuse.sshfs"
    assert filesystem_type("/home/teammate", mountinfo) == "ext4"  # a prefix of the name is not a folder above
    assert filesystem_type("/scratch/records", mountinfo) == "tmpfs"  # mounted over the nfs one
    assert filesystem_type("/work", "") is None


def test_an_object_store_is_written_in_place_and_an_interrupted_upload_leaves_nothing(tmp_path, monkeypatch, caplog):
    """An S3 object appears only once its upload completes, so a cache store there writes
    each file in place: a file written aside and then moved (copied, deleted) was left
    behind as a `.part` object by a kernel killed between the two. And an upload interrupted
    midway is thrown away: completed, it would stand truncated at the blob's address."""
    import logging
    import re

    from remote_support import S3_ENV, MotoServer

    server = MotoServer()
    try:
        server.make_bucket("cache")
        for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": server.endpoint}.items():
            monkeypatch.setenv(name, value)
        caplog.set_level(logging.INFO, logger="werkzeug")  # the server's log of each request
        store = CacheStore("s3://cache/team", str(tmp_path / "nb.ipynb"))
        blob = freeze(dump("big", np.arange(300_000, dtype=np.float64)))
        store.put(record("a", "r1", {"big": blob.digest}), {blob.digest: blob}, {})
        store.flush()
        requests = [re.search(r'"(\w+) /cache/([^ ?]*)', r.getMessage()) for r in caplog.records]
        written = sorted(m[2] for m in requests if m and m[1] in ("PUT", "POST", "DELETE"))
        root = store.root.split("/", 1)[1]
        assert written == [f"{root}/blobs/{blob.digest[:2]}/{blob.digest}", f"{root}/records/a.json"]
        assert CacheStore("s3://cache/team", str(tmp_path / "nb.ipynb")).load(blob.digest, {})[0][-1] == 299_999.0

        path = f"{store.root}/blobs/ab/interrupted"

        def interrupted(f):
            f.write(bytes(6 << 20))  # past s3fs's first part: a multipart upload is under way
            raise KeyboardInterrupt

        # Up to s3io.ONE_PUT a file goes up with one PUT of a body made first; larger, as
        # fsspec's multipart upload (`size` says how large it is about to be).
        for size in (0, s3io.ONE_PUT + 1):
            with pytest.raises(KeyboardInterrupt):
                store._write_aside(path, interrupted, size)
            assert not store.fs.exists(path)
            assert not [key for key in store.fs.find("cache") if key.endswith(".part")]
    finally:
        server.stop()
