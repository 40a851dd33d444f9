"""The local mirror of blobs read from S3 (moto's real server on loopback): read once from the
store, then mapped like a local store's files; never trusted unverified, never a failure."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import uuid

import numpy as np
import pytest

from linkkernel.namespaces import dump
from linkkernel.remote.mirror import Mirror, default_root
from linkkernel.remote.storage import Store, StorageError, file_map_of
from remote_support import S3_ENV, MotoServer, flip_last_byte_in_place, owned


KEY = b"m" * 32


@pytest.fixture(scope="module")
def moto():
    yield from MotoServer.serving("mirror")


@pytest.fixture
def s3(moto, monkeypatch, tmp_path):
    """A fresh Store on its own prefix, mirrored into this test's directory."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    url = f"s3://mirror/{uuid.uuid4().hex[:8]}"
    options = {"endpoint_url": moto.endpoint, "skip_instance_cache": True}
    root = tmp_path / "mirror"

    def store(mirror: Mirror | None = None) -> Store:
        return Store(url, KEY, options, mirror if mirror is not None else Mirror(str(root)))

    store.root = root
    return store


def _value(n: int = 100_000, start: float = 0.0):
    return np.arange(n, dtype=np.float64) + start


def _mirror_files(root) -> list:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _remove_from_s3(store: Store, digest: str) -> None:
    store.fs.rm(store._path(digest))


def test_default_mirror_is_per_url_under_the_user_cache_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a, b = default_root("s3://bucket/a"), default_root("s3://bucket/b")
    assert a.startswith(str(tmp_path / "linkkernel" / "remote-blobs")) and a != b
    assert Store(str(tmp_path / "local"), KEY).mirror is None


def test_put_writes_no_mirror_copy_and_a_read_does(s3) -> None:
    store = s3()
    blob = dump("x", _value())
    store.put(blob)
    assert _mirror_files(s3.root) == []
    got = store.get(blob.digest, mapped=True)
    (path,) = _mirror_files(s3.root)
    assert path.name == blob.digest and path.stat().st_mode & 0o777 == 0o444
    assert os.stat(s3.root).st_mode & 0o777 == 0o700
    assert file_map_of(got) is not None and np.array_equal(owned(got), _value())


def test_second_read_maps_the_mirror_file_without_the_store(s3) -> None:
    first = s3()
    blob = dump("x", _value())
    first.put(blob)
    first.get(blob.digest)
    _remove_from_s3(first, blob.digest)  # any download from now on would fail
    fresh = s3()
    got = fresh.get(blob.digest)
    assert file_map_of(got) is not None and np.array_equal(owned(got), _value())
    value = owned(got)
    value[:] = -1  # copy-on-write: the mirror file keeps its content
    # A process told the file's identity (as the worker tells each task) maps it unhashed.
    handed_on = s3()
    handed_on.remember(first.verified([blob.digest]))
    again = handed_on.get(blob.digest)
    assert np.array_equal(owned(again), _value()) and handed_on.newly_verified == {}
    assert fresh.newly_verified.keys() == {blob.digest}  # the fresh one had to hash it, once


@pytest.mark.parametrize("reader", ["same store (identity remembered)", "fresh store"])
def test_tampered_mirror_file_is_dropped_and_read_from_the_store_again(s3, reader) -> None:
    store = s3()
    blob = dump("x", _value())
    store.put(blob)
    store.get(blob.digest)
    (path,) = _mirror_files(s3.root)
    flip_last_byte_in_place(path)
    reader_store = store if reader.startswith("same") else s3()
    got = reader_store.get(blob.digest)
    assert file_map_of(got) is not None and np.array_equal(owned(got), _value())
    _remove_from_s3(store, blob.digest)  # the mirror file was written anew, and good
    assert np.array_equal(owned(s3().get(blob.digest)), _value())


def test_tampered_mirror_file_is_dropped_even_when_the_store_cannot_replace_it(s3) -> None:
    store = s3()
    blob = dump("x", _value(1000))
    store.put(blob)
    store.get(blob.digest)
    (path,) = _mirror_files(s3.root)
    flip_last_byte_in_place(path)
    _remove_from_s3(store, blob.digest)
    with pytest.raises(StorageError, match="has no blob"):
        store.get(blob.digest)
    assert _mirror_files(s3.root) == []


def test_mirror_file_forged_without_the_key_is_not_trusted(s3) -> None:
    store = s3()
    blob = dump("x", "genuine")
    store.put(blob)
    forged_root = s3.root.parent / "forged"
    Store(str(forged_root), b"attacker-key-0000").put(dump("x", "genuine"))  # same digest, wrong MAC
    (forged,) = [p for p in forged_root.rglob("*") if p.is_file()]
    target = s3.root / "blobs" / blob.digest[:2] / blob.digest
    target.parent.mkdir(parents=True)
    os.link(forged, target)
    assert owned(s3().get(blob.digest)) == "genuine"
    _remove_from_s3(store, blob.digest)  # the forged file was replaced by a good one
    assert owned(s3().get(blob.digest)) == "genuine"


def test_tampered_s3_object_is_still_refused_and_not_mirrored(s3) -> None:
    store = s3()
    blob = dump("x", _value(1000))
    store.put(blob)
    path = store._path(blob.digest)
    data = bytearray(store.fs.cat_file(path))
    data[-1] ^= 1
    store.fs.pipe_file(path, bytes(data))
    with pytest.raises(StorageError, match="failed verification"):
        s3().get(blob.digest)
    assert _mirror_files(s3.root) == []


def test_unpadded_lkb1_object_is_read_and_mirrored_padded(s3) -> None:
    """An LKB1 object downloaded into the mirror cannot be mapped there: it is read again
    into memory, verified, and mirrored in the current (padded) layout."""
    store = s3()
    blob = dump("x", _value(1000))
    header = json.dumps({"digest": blob.digest, "stream": len(blob.stream), "buffers": [b.nbytes for b in blob.buffers]}).encode()
    mac = hmac.new(KEY, b"LKB1" + header, hashlib.sha256).hexdigest().encode()
    packed = b"LKB1" + mac + len(header).to_bytes(4, "little") + header + blob.stream + b"".join(bytes(b) for b in blob.buffers)
    store.fs.pipe_file(store._path(blob.digest), packed)
    got = store.get(blob.digest)
    assert np.array_equal(owned(got), _value(1000)) and file_map_of(got) is not None
    (mirrored,) = _mirror_files(s3.root)
    assert mirrored.name == blob.digest and mirrored.read_bytes()[:4] == b"LKB2"


def test_unwritable_mirror_falls_back_to_the_store_with_one_warning(s3, tmp_path, caplog) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    mirror = Mirror(str(not_a_dir / "mirror"))  # fails for root too, unlike a chmod
    store = s3(mirror)
    blobs = [dump("x", _value(1000, start)) for start in (0, 1)]
    with caplog.at_level(logging.WARNING, logger="linkkernel.remote.mirror"):
        for blob in blobs:
            store.put(blob)
            got = store.get(blob.digest, mapped=True)
            assert file_map_of(got) is None and got.digest == blob.digest
    assert np.array_equal(owned(store.get(blobs[1].digest)), _value(1000, 1))
    warnings = [r.getMessage() for r in caplog.records if r.name == "linkkernel.remote.mirror"]
    assert len(warnings) == 1 and warnings[0].startswith(f"cannot write the blob mirror {not_a_dir}")


def test_bound_evicts_the_oldest_files_and_skips_bigger_blobs(s3) -> None:
    store = s3()
    blobs = [dump("x", _value(10_000, start)) for start in range(3)]
    for blob in blobs:
        store.put(blob)
    store.get(blobs[0].digest)
    (first,) = _mirror_files(s3.root)
    size = first.stat().st_size
    store.mirror.limit = size * 2 + size // 2  # room for two
    os.utime(first, ns=(10**18, 10**18))  # the oldest, whatever the clock's granularity
    store.get(blobs[1].digest)
    second = next(p for p in _mirror_files(s3.root) if p.name == blobs[1].digest)
    os.utime(second, ns=(15 * 10**17, 15 * 10**17))
    store.get(blobs[2].digest)
    assert {p.name for p in _mirror_files(s3.root)} == {blobs[1].digest, blobs[2].digest}
    big = dump("x", _value(40_000))
    store.put(big)
    got = store.get(big.digest)
    assert file_map_of(got) is None and np.array_equal(owned(got), _value(40_000))
    assert {p.name for p in _mirror_files(s3.root)} == {blobs[1].digest, blobs[2].digest}
