"""Copy-on-write inputs: a child sees its parents' large buffers without copying them.

A frozen large buffer lives in a memfd (one copy, made when the parent's run is recorded).
Each child maps it MAP_PRIVATE: reading costs nothing, the first write to a page copies just
that page, and the cached value is never touched. Whether a child mutated an input is read
from /proc/self/pagemap (a written private page stops being a file page) instead of hashing
gigabytes. Where any of this is unavailable the callers fall back to copies and digests.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pickle
from typing import Any

from linkkernel.namespaces import Blob, loads, pickled, referenced

MIN_SIZE = 1 << 20  # smaller buffers are cheaper to copy than to map
PAGE = mmap.PAGESIZE
# pagemap high byte: bit 63 present, 62 swapped, 61 file-page/shared; written private page = anon
_DIRTY = bytes(1 if (b & 0xC0) and not (b & 0x20) else 0 for b in range(256))
SUPPORTED = hasattr(os, "memfd_create") and os.path.exists("/proc/self/pagemap")
# Values that cannot change: one still the very object loaded pickles to the blob it came from.
IMMUTABLE = (type(None), bool, int, float, complex, str, bytes)


class FrozenMap(mmap.mmap):
    """A map of a file whose content never changes: a memfd holding one frozen buffer, or a
    verified read-only blob file (linkkernel.remote.storage.FileMap). `fd` lets children map
    a buffer of it privately."""

    fd: int

    def __del__(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)
            self.fd = None

    def offset_of(self, buffer: memoryview) -> int | None:
        """Where `buffer`, a view of this map, starts in the file; None when not known."""
        if buffer.nbytes == len(self):
            return 0
        start, base = address(buffer), address(self)
        return None if start is None or base is None else start - base


def allow_many_maps() -> None:
    """Raise this process's soft limit of open files to its hard limit, as `ulimit -n` would.

    Each large frozen buffer keeps its file open (a memfd, a verified blob file) for as long as
    a value, a child or the cache holds it: at the usual soft limit of 1024, a pipeline of a
    thousand large arrays would fail to freeze its next one. The hard limit (commonly 524288)
    is what the system allows this user anyway."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or soft == resource.RLIM_INFINITY:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a hard limit of "unlimited" is above what Linux allows
        pass


def freeze_buffer(buffer: memoryview) -> memoryview:
    """An immutable private copy of `buffer`: in a memfd when large (so children can map it);
    in memory when small, or when this process has no file left to open (children copy it)."""
    if not SUPPORTED or buffer.nbytes < MIN_SIZE:
        return memoryview(bytes(buffer))
    try:
        fd = os.memfd_create("linkkernel-blob", os.MFD_CLOEXEC)
    except OSError as exc:
        if not _out_of_files(exc):
            raise
        return memoryview(bytes(buffer))
    try:
        os.ftruncate(fd, buffer.nbytes)
        with open(fd, "wb", closefd=False, buffering=0) as f:
            f.write(buffer.cast("B"))
        frozen = FrozenMap(fd, buffer.nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)  # a map keeps a duplicate fd
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError) and _out_of_files(exc):
            return memoryview(bytes(buffer))
        raise
    frozen.fd = fd
    return memoryview(frozen)


def _out_of_files(exc: OSError) -> bool:
    return exc.errno in (errno.EMFILE, errno.ENFILE)


def frozen_owner(buffer: memoryview) -> FrozenMap | None:
    """The frozen map `buffer` is a view of, also through views of views (the read-only view
    a reference to another name's value takes, see namespaces); None when it is none."""
    owner = buffer.obj
    while isinstance(owner, memoryview):
        owner = owner.obj
    return owner if isinstance(owner, FrozenMap) else None


def _private_map(buffer: memoryview) -> mmap.mmap | None:
    owner = frozen_owner(buffer)
    if owner is None or getattr(owner, "fd", None) is None:
        return None
    offset = owner.offset_of(buffer)
    if offset is None or offset % mmap.ALLOCATIONGRANULARITY:
        return None
    try:
        return mmap.mmap(owner.fd, buffer.nbytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
    except OSError as exc:  # a map keeps a duplicate of the file open
        if not _out_of_files(exc):
            raise
        return None  # the caller copies


class Loaded:
    """A value loaded from a blob, with the private maps its large buffers live in."""

    def __init__(self, blob: Blob, namespace: dict[str, Any]) -> None:
        """`namespace` is where the value will live (see namespaces.loads)."""
        self.blob = blob
        self.maps: list[mmap.mmap | None] = [_private_map(b) for b in blob.buffers]
        buffers = [bytearray(b) if m is None else memoryview(m) for b, m in zip(blob.buffers, self.maps)]
        self.value: Any = loads(blob.stream, buffers, namespace)

    @property
    def mapped(self) -> bool:
        return any(m is not None for m in self.maps)

    def unchanged(self, name: str, value: Any) -> Blob | None:
        """The blob `value` (of `name`) was loaded from, only when it is provably unchanged:
        same pickle stream, same mapped memory, no page written. None means "not proven":
        the caller then compares digests. A number or a string the run kept needs no proof:
        a component of a deep pipeline keeps hundreds, each pickled again by every run."""
        if value is not self.value:
            return None
        if type(value) in IMMUTABLE:
            return self.blob
        if not self.mapped:
            return None
        found = same_pickle(name, value, self.blob)
        if found is None:
            return None
        for (view, shared), mapped, original in zip(found, self.maps, self.blob.buffers):
            if shared:
                continue
            if mapped is None:
                if view != original:
                    return None
                continue
            if view.nbytes != len(mapped) or address(view) != address(mapped) or written(mapped):
                return None
        return self.blob


def same_pickle(name: str, value: Any, blob: Blob) -> list[tuple[memoryview, bool]] | None:
    """The out-of-band buffers of `value` (of `name`) when it pickles to `blob`'s stream with
    as many buffers (the first step of proving it unchanged), each with whether it is another
    name's (namespaces.referenced: then the stream names its content by digest, and it needs
    no proof); None when it does not, or cannot."""
    raw: list[pickle.PickleBuffer] = []
    try:
        stream = pickled(value, raw.append, name)
    except Exception:  # noqa: BLE001 - not provable; the digest path reports real failures
        return None
    if stream != blob.stream or len(raw) != len(blob.buffers):
        return None
    return [(b.raw(), referenced(b)) for b in raw]


def address(buffer) -> int | None:
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    except (TypeError, ValueError):
        return None


def written(mapped: mmap.mmap) -> bool:
    """Whether any page of a private map has been written (and so copied)."""
    start = address(mapped)
    if start is None:
        return True
    pages = (len(mapped) + PAGE - 1) // PAGE
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            f.seek(start // PAGE * 8)
            data = f.read(pages * 8)
    except OSError:
        return True
    return len(data) != pages * 8 or b"\x01" in data[7::8].translate(_DIRTY)
