"""The artifact store a kernel and a worker share: a local directory or `s3://` (fsspec).

Blobs are stored by content digest, so a value already in the store (an unchanged input,
a result the worker already sent) is never uploaded again. Each file carries an HMAC, keyed
with the secret kept outside the store, over its digest and layout; a reader checks it and
re-hashes the content before anything is unpickled, because whoever can write to the store
could otherwise recompute a plain checksum next to a tampered pickle.

File layout: MAGIC, mac (64 hex bytes), header length (4 bytes), JSON header {digest, stream,
buffers: [sizes]}, the pickle stream, then each out-of-band buffer, unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mmap
import os
import pickle
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from linkkernel import cow
from linkkernel.errors import LinkError
from linkkernel.namespaces import Blob

MAGIC = b"LKB1"
_MAC_LEN = 64
# Errors s3fs/botocore/aiohttp raise that mean "cannot talk to the store" or "not allowed".
_REFUSED_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "403")


class StorageError(LinkError):
    """The store cannot be reached, refuses our credentials, or holds a tampered blob."""


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """`k=v` storage options; values are read as JSON when they parse (`anon=false`)."""
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LinkError(f"storage option {pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def describe_failure(url: str, exc: BaseException) -> str:
    """One line saying why the store at `url` failed, without a traceback into fsspec."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "Credentials" in type(exc).__name__:
        return f"storage {url} has no credentials: {text} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
    if isinstance(exc, PermissionError) or any(code in text for code in _REFUSED_CODES):
        return f"storage {url} refused the credentials: {text}"
    if isinstance(exc, FileNotFoundError):
        return f"storage {url} is missing {text}"
    return f"storage {url} is unreachable: {type(exc).__name__}: {text}"


def _frame_mac(key: bytes, header: bytes) -> bytes:
    return hmac.new(key, MAGIC + header, hashlib.sha256).hexdigest().encode()


class Store:
    """Content-addressed, HMAC-verified blobs under one fsspec URL."""

    def __init__(self, url: str, key: bytes, options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.url = url
        self._key = key
        options = dict(options or {})
        if url.startswith(("s3://", "s3a://")):
            # A store that does not answer must become an error within seconds, not after
            # botocore's and s3fs's retries with back-off (~10 s to a closed port).
            config = {"connect_timeout": 3, "retries": {"max_attempts": 2}}
            options["config_kwargs"] = {**config, **options.get("config_kwargs", {})}
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise StorageError(f"storage {url} cannot be opened: {exc}") from None
        if hasattr(self.fs, "retries"):
            self.fs.retries = min(self.fs.retries, 2)
        self._root = root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self._known: set[str] = set()
        self.bytes_uploaded = 0

    def _path(self, digest: str) -> str:
        return f"{self._root}/blobs/{digest[:2]}/{digest}"

    def check(self) -> None:
        """Make sure the store answers (and accepts our credentials); StorageError if not."""
        try:
            if self.local:
                self.fs.makedirs(f"{self._root}/blobs", exist_ok=True)
            else:
                # The prefix may not exist yet; its bucket (first component) must.
                self.fs.ls(self._root.split("/", 1)[0], refresh=True)
        except Exception as exc:  # fsspec backends raise their own exception types
            raise StorageError(describe_failure(self.url, exc)) from None

    def put(self, blob: Blob) -> bool:
        """Store a blob unless the store has it already; True when bytes were uploaded."""
        if blob.digest in self._known:
            return False
        path = self._path(blob.digest)
        try:
            if self.fs.exists(path):
                self._known.add(blob.digest)
                return False
            self._write(path, blob)
        except StorageError:
            raise
        except Exception as exc:  # fsspec backends raise their own exception types
            raise StorageError(describe_failure(self.url, exc)) from None
        self._known.add(blob.digest)
        self.bytes_uploaded += blob.size
        return True

    def _write(self, path: str, blob: Blob) -> None:
        header = json.dumps(
            {"digest": blob.digest, "stream": len(blob.stream), "buffers": [b.nbytes for b in blob.buffers]}
        ).encode()
        # Readers must never see half a blob: a local file is written aside and renamed into
        # place; an object store makes an upload visible only once it completes.
        target = f"{path}.{uuid.uuid4().hex}.tmp" if self.local else path
        if self.local:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        try:
            with self.fs.open(target, "wb") as f:
                f.write(MAGIC)
                f.write(_frame_mac(self._key, header))
                f.write(len(header).to_bytes(4, "little"))
                f.write(header)
                f.write(blob.stream)
                for buffer in blob.buffers:
                    f.write(buffer)
            if self.local:
                self.fs.mv(target, path)
        except BaseException:  # an interrupted upload leaves no half-written file behind
            if self.local and self.fs.exists(target):
                self.fs.rm(target)
            raise

    def get(self, digest: str, mapped: bool = False) -> Blob:
        """The verified blob stored under `digest`; StorageError when missing or tampered.

        With `mapped`, large buffers are read into memfds (linkkernel.cow), so a task can map
        them copy-on-write and tell from the page tables whether it mutated them.
        """
        try:
            with self.fs.open(self._path(digest), "rb") as f:
                blob = self._read_verified(f, digest, mapped and cow.SUPPORTED)
        except StorageError:
            raise
        except FileNotFoundError:
            raise StorageError(f"storage {self.url} has no blob {digest[:12]}… (deleted while in use?)") from None
        except Exception as exc:  # fsspec backends raise their own exception types
            raise StorageError(describe_failure(self.url, exc)) from None
        self._known.add(digest)
        return blob

    def _read_verified(self, f, digest: str, mapped: bool) -> Blob:
        """Read a blob into memory it owns, hashing each chunk while the next one is read
        (hashlib releases the GIL), with namespaces' digest: stream, then each buffer
        preceded by its length."""
        tampered = StorageError(f"blob {digest[:12]}… in {self.url} failed verification (tampered or corrupt); not loaded")
        head = _read_exact(f, 4 + _MAC_LEN + 4)
        if len(head) < 4 + _MAC_LEN + 4 or head[:4] != MAGIC:
            raise tampered
        header = _read_exact(f, int.from_bytes(head[-4:], "little"))
        if not hmac.compare_digest(head[4 : 4 + _MAC_LEN], _frame_mac(self._key, header)):
            raise tampered
        layout = json.loads(header)
        sizes = [layout["stream"], *layout["buffers"]]
        if layout["digest"] != digest:
            raise tampered
        sha = hashlib.sha256()
        parts: list[memoryview] = []
        complete = True
        with ThreadPoolExecutor(max_workers=1) as pool:
            jobs = []
            for i, size in enumerate(sizes):
                if i:
                    jobs.append(pool.submit(sha.update, size.to_bytes(8, "little")))
                part = _memfd_view(size) if mapped and i and size >= cow.MIN_SIZE else memoryview(bytearray(size))
                got = 0
                while got < size:
                    n = f.readinto(part[got : got + _CHUNK])
                    if not n:
                        break
                    jobs.append(pool.submit(sha.update, part[got : got + n]))
                    got += n
                complete = complete and got == size
                parts.append(part)
            for job in jobs:
                job.result()
        if not complete or f.read(1) or not hmac.compare_digest(sha.hexdigest(), digest):
            raise tampered
        return Blob(bytes(parts[0]), tuple(parts[1:]), digest)


_CHUNK = 8 << 20


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    return data if len(data) == n else b""


def _memfd_view(size: int) -> memoryview:
    """A writable view of a new memfd, as cow.freeze_buffer makes them, filled by the reader."""
    fd = os.memfd_create("linkkernel-blob", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        frozen = cow.FrozenMap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    frozen.fd = fd
    return memoryview(frozen)


def load_owned(blob: Blob) -> Any:
    """Unpickle a blob read from the store without copying its buffers again.

    A blob from `Store.get` owns its writable memory, so arrays can be rebuilt directly on
    it (namespaces.load copies, which a blob shared with a cache must do).
    """
    return pickle.loads(blob.stream, buffers=blob.buffers)
