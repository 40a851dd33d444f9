"""The artifact store: content-addressed, verified before unpickling, one-line failures,
against a local directory, moto's S3 server and a real SeaweedFS that checks credentials."""

from __future__ import annotations

import hashlib
import hmac
import json
import mmap
import os

import numpy as np
import pytest

from linkkernel.namespaces import dump
from linkkernel.remote.storage import Store, StorageError, file_map_of, parse_options
from remote_support import MotoServer, WeedServer, closed_port, flip_last_byte_in_place, owned

KEY = b"s" * 32


def _array_blob(n: int = 1000):
    return dump("x", np.arange(n, dtype=np.float64))


def test_local_round_trip_keeps_buffers_out_of_band_and_writable(tmp_path) -> None:
    store = Store(str(tmp_path / "store"), KEY)
    blob = _array_blob()
    assert store.put(blob)
    got = Store(str(tmp_path / "store"), KEY).get(blob.digest)
    value = owned(got)
    assert np.array_equal(value, np.arange(1000.0))
    value[0] = 42  # rebuilt on the blob's own memory, which the reader owns
    assert got.digest == blob.digest and len(got.buffers) == 1


def test_unchanged_value_is_uploaded_once_even_by_another_process_view(tmp_path) -> None:
    url = str(tmp_path / "store")
    first, second = Store(url, KEY), Store(url, KEY)
    blob = _array_blob()
    assert first.put(blob) and not first.put(blob)
    assert not second.put(dump("x", np.arange(1000, dtype=np.float64)))
    assert (first.bytes_uploaded, second.bytes_uploaded) == (blob.size, 0)


def test_writes_leave_no_temporary_files(tmp_path) -> None:
    store = Store(str(tmp_path / "store"), KEY)
    store.put(_array_blob())
    names = [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert len(names) == 1 and not names[0].endswith(".tmp")


@pytest.mark.parametrize("where", ["content", "header", "mac", "truncated"])
def test_tampered_blob_is_refused_before_unpickling(tmp_path, where) -> None:
    store = Store(str(tmp_path / "store"), KEY)
    blob = _array_blob()
    store.put(blob)
    (path,) = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    data = bytearray(path.read_bytes())
    if where == "content":
        data[-1] ^= 1
    elif where == "header":
        data = data.replace(b'"stream"', b'"strean"')
    elif where == "mac":
        data[10] ^= 1
    else:
        data = data[:-8]
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="failed verification"):
        Store(str(tmp_path / "store"), KEY).get(blob.digest)


def test_planted_pickle_with_recomputed_checksum_is_refused(tmp_path) -> None:
    """Whoever can write to the store cannot forge a blob without the key."""
    store = Store(str(tmp_path / "store"), KEY)
    evil = dump("x", "harmless")
    store.put(evil)
    attacker = Store(str(tmp_path / "store"), b"attacker-key-0000")
    (path,) = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    path.unlink()
    attacker.put(evil)
    with pytest.raises(StorageError, match="failed verification"):
        Store(str(tmp_path / "store"), KEY).get(evil.digest)


def test_missing_blob_is_one_line(tmp_path) -> None:
    with pytest.raises(StorageError, match="has no blob"):
        Store(str(tmp_path / "store"), KEY).get("ab" * 32)


def test_storage_options_parse_json_values() -> None:
    assert parse_options(["endpoint_url=http://h:1", "anon=false", "n=3"]) == {
        "endpoint_url": "http://h:1", "anon": False, "n": 3,
    }


@pytest.fixture(scope="module")
def moto():
    yield from MotoServer.serving("linkkernel")


def test_s3_round_trip_and_dedup_through_moto(moto, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    options = {"endpoint_url": moto.endpoint, "skip_instance_cache": True}
    store = Store("s3://linkkernel/run1", KEY, options)
    store.check()
    blob = _array_blob(10_000)
    assert store.put(blob) and not store.put(blob)
    fresh = Store("s3://linkkernel/run1", KEY, options)
    assert not fresh.put(blob)
    assert np.array_equal(owned(fresh.get(blob.digest)), np.arange(10_000.0))


def test_unreachable_s3_is_one_line_within_seconds(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    store = Store("s3://linkkernel/x", KEY, {"endpoint_url": f"http://127.0.0.1:{closed_port()}", "skip_instance_cache": True})
    with pytest.raises(StorageError) as info:
        store.put(dump("x", 1))
    message = str(info.value)
    assert message.startswith("storage s3://linkkernel/x is unreachable") and "\n" not in message


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    server = WeedServer(tmp_path_factory.mktemp("weed"))
    yield server
    server.stop()


def test_real_s3_accepts_right_credentials_and_refuses_wrong_ones(weed, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", weed.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", weed.SECRET_KEY)
    url = f"s3://{weed.bucket}/blobs-test"
    options = {"endpoint_url": weed.endpoint, "skip_instance_cache": True}
    store = Store(url, KEY, options)
    store.check()
    blob = _array_blob()
    assert store.put(blob)
    assert np.array_equal(owned(store.get(blob.digest)), np.arange(1000.0))
    unread = _array_blob(2000)  # a blob read before is served from this user's local mirror
    assert store.put(unread)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    wrong = Store(url, KEY, options)
    for attempt in (wrong.check, lambda: wrong.get(unread.digest), lambda: wrong.put(dump("y", 2))):
        with pytest.raises(StorageError) as info:
            attempt()
        message = str(info.value)
        assert message.startswith(f"storage {url} refused the credentials") and "\n" not in message



def test_a_failed_write_leaves_nothing_behind(tmp_path) -> None:
    class NotABuffer:
        """Fails when written, halfway through the blob, as an interrupted upload would."""

        nbytes = 10

    store = Store(str(tmp_path / "store"), KEY)
    blob = _array_blob()
    broken = type(blob)(blob.stream, (*blob.buffers, NotABuffer()), blob.digest)
    with pytest.raises(StorageError):
        store.put(broken)
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []
    assert store.put(blob)


def _blob_file(root):
    (path,) = [p for p in root.rglob("*") if p.is_file()]
    return path


def test_local_blob_is_read_only_on_disk_and_mapped_copy_on_write(tmp_path) -> None:
    store = Store(str(tmp_path / "store"), KEY)
    blob = dump("x", np.arange(100_000, dtype=np.float64))
    store.put(blob)
    path = _blob_file(tmp_path / "store")
    assert path.stat().st_mode & 0o777 == 0o444
    got = Store(str(tmp_path / "store"), KEY).get(blob.digest)
    assert file_map_of(got) is not None
    value = owned(got)
    assert value.ctypes.data % mmap.PAGESIZE == 0  # buffers start on a page
    value[:] = -1  # private: the file keeps its content
    again = owned(Store(str(tmp_path / "store"), KEY).get(blob.digest))
    assert np.array_equal(again, np.arange(100_000.0))


@pytest.mark.parametrize("verified_by", ["reader", "writer"])
def test_file_tampered_after_it_was_verified_is_refused(tmp_path, verified_by) -> None:
    """A remembered verification holds only while the file is provably the one verified."""
    store = Store(str(tmp_path / "store"), KEY)
    blob = _array_blob()
    store.put(blob)
    if verified_by == "reader":
        store = Store(str(tmp_path / "store"), KEY)
        store.get(blob.digest)
    path = _blob_file(tmp_path / "store")
    flip_last_byte_in_place(path)
    with pytest.raises(StorageError, match="failed verification"):
        store.get(blob.digest)


def test_writable_blob_file_is_copied_and_verified_on_every_read(tmp_path) -> None:
    store = Store(str(tmp_path / "store"), KEY)
    blob = _array_blob()
    store.put(blob)
    path = _blob_file(tmp_path / "store")
    path.chmod(0o664)
    got = store.get(blob.digest)
    assert file_map_of(got) is None and np.array_equal(owned(got), np.arange(1000.0))
    with open(path, "r+b") as f:  # no metadata change a reader could rely on
        f.seek(-1, os.SEEK_END)
        f.write(b"\xff")
    with pytest.raises(StorageError, match="failed verification"):
        store.get(blob.digest)


def test_unpadded_lkb1_blob_is_still_read(tmp_path) -> None:
    blob = _array_blob()
    header = json.dumps({"digest": blob.digest, "stream": len(blob.stream), "buffers": [b.nbytes for b in blob.buffers]}).encode()
    mac = hmac.new(KEY, b"LKB1" + header, hashlib.sha256).hexdigest().encode()
    path = tmp_path / "store" / "blobs" / blob.digest[:2] / blob.digest
    path.parent.mkdir(parents=True)
    path.write_bytes(b"LKB1" + mac + len(header).to_bytes(4, "little") + header + blob.stream + b"".join(bytes(b) for b in blob.buffers))
    assert np.array_equal(owned(Store(str(tmp_path / "store"), KEY).get(blob.digest)), np.arange(1000.0))
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    with pytest.raises(StorageError, match="failed verification"):
        Store(str(tmp_path / "store"), KEY).get(blob.digest)


def test_remembered_verifications_must_look_like_file_identities(tmp_path) -> None:
    store = Store(str(tmp_path / "store"), KEY)
    store.remember({"a" * 64: [1, 2, 3, 4, 5], "b" * 64: "forged", "c" * 64: [1, 2], "d" * 64: [1, 2, 3, 4, "5"]})
    assert store.verified(["a" * 64, "b" * 64, "c" * 64, "d" * 64]) == {"a" * 64: [1, 2, 3, 4, 5]}


def test_frozen_buffers_are_written_from_their_memfd_and_read_back_intact(tmp_path) -> None:
    """A frozen value (as the engine holds a parent's output) is copied with sendfile."""
    from linkkernel import cow
    from linkkernel.store import freeze

    values = np.random.default_rng(1).random(cow.MIN_SIZE // 8 * 3 + 5)
    blob = freeze(dump("x", {"values": values, "small": np.arange(3)}))
    assert isinstance(blob.buffers[0].obj, cow.FrozenMap)
    assert Store(str(tmp_path / "store"), KEY).put(blob)
    got = Store(str(tmp_path / "store"), KEY).get(blob.digest)
    assert file_map_of(got) is not None
    value = owned(got)
    assert np.array_equal(value["values"], values) and np.array_equal(value["small"], np.arange(3))


def test_large_buffers_hashed_in_pieces_cross_s3_and_a_changed_piece_is_refused(moto, monkeypatch, tmp_path) -> None:
    """Buffers over namespaces.PIECE are digested piece by piece on all cores; a reader that
    downloads them must reach the same digest, and a byte changed in any piece must show."""
    from linkkernel.namespaces import PIECE
    from linkkernel.remote.mirror import Mirror

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    options = {"endpoint_url": moto.endpoint, "skip_instance_cache": True}
    values = np.random.default_rng(2).random((PIECE * 2 + 4096) // 8)
    blob = dump("x", values)
    assert dump("y", values.copy()).digest == blob.digest  # content, not object, names it
    writer = Store("s3://linkkernel/pieces", KEY, options, mirror=Mirror(str(tmp_path / "m1")))
    assert writer.put(blob)
    reader = Store("s3://linkkernel/pieces", KEY, options, mirror=Mirror(str(tmp_path / "m2")))
    assert np.array_equal(owned(reader.get(blob.digest)), values)
    path = writer._path(blob.digest)
    data = bytearray(writer.fs.cat_file(path))
    data[len(data) - PIECE - 100] ^= 1  # inside the middle piece
    writer.fs.pipe_file(path, bytes(data))
    fresh = Store("s3://linkkernel/pieces", KEY, options, mirror=Mirror(str(tmp_path / "m3")))
    with pytest.raises(StorageError, match="failed verification"):
        fresh.get(blob.digest)


def _mapped_file(address: int) -> str:
    for line in open("/proc/self/maps"):
        fields = line.split(None, 5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high:
            return fields[5].strip() if len(fields) > 5 else "anonymous"
    return "unmapped"


def test_a_blob_mapped_from_its_file_is_frozen_as_it_is_and_shared_from_there(tmp_path) -> None:
    """A remote output as the engine keeps it: no copy for the cache, values mapped privately
    from the verified file, and a put into another store sends it from that file."""
    from linkkernel import cow
    from linkkernel.store import freeze

    values = np.random.default_rng(2).random(cow.MIN_SIZE // 8 * 3 + 5)
    Store(str(tmp_path / "a"), KEY).put(dump("x", {"values": values, "small": np.arange(3)}))
    path = _blob_file(tmp_path / "a")
    got = Store(str(tmp_path / "a"), KEY).get(path.name, mapped=True)
    frozen = freeze(got)
    assert frozen.buffers[0].obj is file_map_of(got)  # not copied
    assert frozen.buffers[1].obj is not file_map_of(got)  # small: copied, as any small buffer
    first, second = cow.Loaded(frozen, {}), cow.Loaded(frozen, {})
    assert _mapped_file(first.value["values"].ctypes.data) == str(path)
    first.value["values"][:] = -1  # private to that value
    assert np.array_equal(second.value["values"], values) and second.unchanged("x", first.value) is None
    assert first.mapped and first.unchanged("x", first.value) is None and second.unchanged("x", second.value) is not None
    assert Store(str(tmp_path / "b"), KEY).put(frozen)
    copied = owned(Store(str(tmp_path / "b"), KEY).get(path.name))
    assert np.array_equal(copied["values"], values) and np.array_equal(copied["small"], np.arange(3))


def test_remote_outputs_with_only_small_buffers_keep_no_file_open(tmp_path) -> None:
    """Each blob file a frozen value keeps mapped holds a descriptor: a component returning
    thousands of small arrays must not run the kernel out of them (often 1024 allowed)."""
    import os

    from linkkernel.store import freeze

    store = Store(str(tmp_path / "store"), KEY)
    blobs = [dump(f"a{i}", np.arange(i, i + 4)) for i in range(50)]
    for blob in blobs:
        store.put(blob)
    before = len(os.listdir("/proc/self/fd"))
    frozen = [freeze(Store(str(tmp_path / "store"), KEY).get(b.digest, mapped=True)) for b in blobs]
    assert len(os.listdir("/proc/self/fd")) - before < 5
    assert [int(owned(f)[0]) for f in frozen] == list(range(50))
