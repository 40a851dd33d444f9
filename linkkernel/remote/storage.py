"""The artifact store a kernel and a worker share: a local directory or `s3://` (fsspec).

Blobs are stored by content digest, so a value already in the store (an unchanged input,
a result the worker already sent) is never uploaded again. Each file carries an HMAC, keyed
with the secret kept outside the store, over its digest and layout; a reader checks it and
re-hashes the content before anything is unpickled, because whoever can write to the store
could otherwise recompute a plain checksum next to a tampered pickle.

File layout (LKB2): MAGIC, mac (64 hex bytes), header length (4 bytes), JSON header {digest,
stream, buffers: [sizes]}, then the pickle stream and each out-of-band buffer, unchanged,
each starting on a page boundary (zero padding), so a local reader can map them in place.

A local blob file is created read-only (mode 0444) by its writer and never opened for
writing again. A reader maps it copy-on-write instead of copying it, and hashes it once:
once verified, a file that still has no write permission, belongs to this user and has the
same inode, size and change times cannot have changed — only this user (who can read the
key anyway) or root could make it writable again, and doing so moves its ctime. Any other
file (write bits, another owner, an object store) is read into memory the reader owns and
verified on every read. LKB1 files (no padding) are still read, by copy.

Blobs read from an object store are kept in a local mirror (linkkernel.remote.mirror) as
such files, written and read by the same code as a local store's, so reading one again
maps it as a local store would.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import mmap
import os
import re
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from linkkernel import cow, s3io
from linkkernel.errors import LinkError
from linkkernel.namespaces import DIGEST, Blob, _digest
from linkkernel.partfiles import abandon_upload, remove_abandoned, remove_if_abandoned, temp_name
from linkkernel.remote.mirror import Mirror, default_root

MAGIC = b"LKB2"
_LEGACY_MAGIC = b"LKB1"  # same header, parts packed without padding
_MAC_LEN = 64
_PREFIX = 4 + _MAC_LEN + 4
_ALIGN = mmap.PAGESIZE
# Verified local files remembered per store (digest -> file identity); bounded, oldest dropped.
_VERIFIED_MAX = 4096
# What `_holds` reads first of a stored blob to check its header: the prefix and a header of
# up to a few hundred buffers.
_HEAD_READ = 16384
log = logging.getLogger(__name__)
# A temporary blob file's name, as `_write_local` makes it (partfiles.temp_name): its digest first.
_TEMP_BLOB = re.compile(r"[0-9a-f]{2,}\.lk[0-9a-f]{12}-\d+-\d+\.[0-9a-f]+\.tmp")
# Errors s3fs/botocore/aiohttp raise that mean "not allowed", as whole words: a message that
# names an endpoint such as http://127.0.0.1:41403 holds "403" too.
_REFUSED = re.compile(r"\b(InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|403)\b")


class StorageError(LinkError):
    """The store cannot be reached, refuses our credentials, or holds a tampered blob."""


class MissingBlob(StorageError):
    """A blob is not in the store: deleted while in use, or the kernel and the worker were
    given different stores; the caller knows which side wrote it and says so."""


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


def refuse_unshareable(url: str) -> None:
    """A kernel and a worker meet in the store; `memory://` lives inside one process, so a
    kernel's inputs would never reach the worker there. An empty URL (`--storage "$STORE"`
    with STORE unset) would be whatever directory the process started in."""
    if not url.strip():
        raise StorageError("storage is empty: give a directory or s3://bucket/prefix shared by the kernel and the worker")
    if url.startswith("memory:"):
        raise StorageError(f"storage {url}: memory:// exists inside one process only; a kernel and a worker cannot share it (use a directory or s3://)")


def describe_failure(url: str, exc: BaseException) -> str:
    """One line saying why the store at `url` failed, without a traceback into fsspec."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "Credentials" in type(exc).__name__:
        return f"storage {url} has no credentials: {text} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
    if isinstance(exc, PermissionError) and ("://" not in url or url.startswith("file://")):  # a read-only directory
        return f"storage {url} lacks permission for this user: {text}"
    if isinstance(exc, PermissionError) or _REFUSED.search(text):
        return f"storage {url} refused the credentials: {text}"
    if isinstance(exc, FileNotFoundError):
        return f"storage {url} is missing {text}"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # reached, but full
        from linkkernel.store import plain_reason

        return f"storage {url} cannot be written: {plain_reason(exc)}"
    return f"storage {url} is unreachable: {type(exc).__name__}: {text}"


def _frame_mac(key: bytes, header: bytes, magic: bytes = MAGIC) -> bytes:
    return hmac.new(key, magic + header, hashlib.sha256).hexdigest().encode()


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _offsets(magic: bytes, header_len: int, sizes: list[int]) -> list[int]:
    """Where each part (stream, then buffers) starts in the file, and where the file ends."""
    offsets = []
    at = _PREFIX + header_len
    for size in sizes:
        at = _aligned(at) if magic == MAGIC else at
        offsets.append(at)
        at += size
    return [*offsets, at]


def _blob_path(root: str, digest: str) -> str:
    return f"{root}/blobs/{digest[:2]}/{digest}"


def _identity(st: os.stat_result) -> list[int]:
    """What changes whenever a file's content can have changed (ctime cannot be set back)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _immutable(st: os.stat_result) -> bool:
    """A regular file of ours that nobody (but us or root, who hold the key) can write."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o222


class FileMap(cow.FrozenMap):
    """A private, writable, copy-on-write map of a verified local blob file; a blob's
    buffers are views into it, so reading costs no copy and writing copies only the pages
    written (linkkernel.cow tells which from the page tables). The file itself never
    changes, so the blob counts as frozen (linkkernel.store.freeze) and each value built
    from it maps its buffers privately from `fd` again."""


class Store:
    """Content-addressed, HMAC-verified blobs under one fsspec URL."""

    def __init__(self, url: str, key: bytes, options: dict[str, Any] | None = None, mirror: Mirror | None = None) -> None:
        import fsspec

        self.url = url
        self._key = key
        options = dict(options or {})
        self._s3 = url.startswith(("s3://", "s3a://"))
        if self._s3:
            # A store that does not answer must become an error within seconds, not after
            # botocore's and s3fs's retries with back-off (~10 s to a closed port).
            config = {"connect_timeout": 3, "retries": {"max_attempts": 2}, **s3io.no_download_checksum()}
            given = options.get("config_kwargs", {})
            if not isinstance(given, dict):
                raise StorageError(f"storage {url}: option config_kwargs must be a JSON object, e.g. config_kwargs='{{\"read_timeout\": 30}}'")
            options["config_kwargs"] = {**config, **given}
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except Exception as exc:  # noqa: BLE001 - fsspec backends fail in their own ways when opened
            raise StorageError(f"storage {url} cannot be opened: {exc}") from None
        if hasattr(self.fs, "retries"):
            self.fs.retries = min(self.fs.retries, 2)
        self._root = root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        # Blobs read from an object store are kept as local files (see linkkernel.remote.mirror).
        self.mirror = None if self.local else mirror if mirror is not None else Mirror(default_root(url))
        self._known: set[str] = set()
        self._verified: OrderedDict[str, list[int]] = OrderedDict()
        self.newly_verified: dict[str, list[int]] = {}
        self.bytes_uploaded = 0
        # Told the name of each temporary blob file before it is made: a task process tells
        # its worker, which removes just those if the process dies (`remove_abandoned`).
        self.announce: Callable[[str], None] | None = None

    def _path(self, digest: str) -> str:
        return _blob_path(self._root, digest)

    def check(self) -> None:
        """Make sure the store answers (and accepts our credentials); StorageError if not."""
        try:
            if self.local:
                self.fs.makedirs(f"{self._root}/blobs", exist_ok=True)
                self.remove_abandoned()
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
            if self._holds(path, blob.digest):
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

    def _holds(self, path: str, digest: str) -> bool:
        """Whether the store has the blob, signed with our key; only its header is read.

        A file there signed with another key (the key was changed, the store kept) or with
        a damaged header is written again: left alone, it would fail the verification of
        every task that needs it, for good.
        """
        try:
            head = self.fs.cat_file(path, start=0, end=_HEAD_READ)
        except FileNotFoundError:
            return False
        if len(head) < _PREFIX:
            return False
        end = _PREFIX + int.from_bytes(head[_PREFIX - 4 : _PREFIX], "little")
        if end > len(head):  # a value of many buffers
            head = self.fs.cat_file(path, start=0, end=end)
        try:
            self._sizes(digest, head[:_PREFIX], head[_PREFIX:end])
        except StorageError:
            return False
        return True

    def blob_folders(self) -> list[str]:
        """The folders blobs are kept in (named by their digests' first two digits), for a
        sweep that goes one folder at a time; none for an object store."""
        try:
            return sorted(os.listdir(f"{self._root}/blobs")) if self.local else []
        except OSError:
            return []

    def remove_unused(self, folder: str, unused_for: float) -> tuple[int, int]:
        """Remove the blob files of `folder` nobody has read or written for `unused_for`
        seconds: (files, bytes) removed. Reading maps or reads a file, which moves its
        access time (on the usual relatime mounts at least once a day), so a blob any task
        still uses stays. A kernel finding one of its inputs gone stores it again."""
        removed, freed = 0, 0
        cutoff = time.time() - unused_for
        try:
            entries = list(os.scandir(f"{self._root}/blobs/{folder}"))
        except OSError:
            return 0, 0
        for entry in entries:
            if not DIGEST.fullmatch(entry.name):  # a file being written, or not ours
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if not (stat.S_ISREG(st.st_mode) and max(st.st_atime, st.st_mtime) < cutoff):
                    continue
                os.unlink(entry.path)
            except OSError:  # gone meanwhile, or not ours to remove
                continue
            removed, freed = removed + 1, freed + st.st_size
            self._known.discard(entry.name)
            self._verified.pop(entry.name, None)
        return removed, freed

    def remove_abandoned(self, names: Iterable[str] | None = None) -> None:
        """Remove the blob files that writers killed midway (a task process cancelled or
        crashed, a kernel killed while uploading) left in a local store; nothing else can.
        `names`: only these temporary files (those a dead task process said it was writing,
        see `announce`), not a sweep of every blob folder, which in a large store pauses the
        worker after each task killed."""
        if not self.local:
            return
        if names is None:
            remove_abandoned(self._root, ["blobs/*/*.tmp"])
            return
        remove_if_abandoned(f"{self._root}/blobs/{name[:2]}/{name}" for name in names if _TEMP_BLOB.fullmatch(name))

    def forget_uploads(self) -> None:
        """Stop taking blobs for stored because this process stored or saw them: after a task
        found one missing (the store was emptied meanwhile), the next put checks the store."""
        self._known.clear()

    def _layout(self, blob: Blob) -> tuple[bytes, list[memoryview], list[int]]:
        """A blob file's header, its parts and where each starts (then where the file ends)."""
        header = json.dumps(
            {"digest": blob.digest, "stream": len(blob.stream), "buffers": [b.nbytes for b in blob.buffers]}
        ).encode()
        parts = [memoryview(blob.stream), *blob.buffers]
        return header, parts, _offsets(MAGIC, len(header), [p.nbytes for p in parts])

    def _write(self, path: str, blob: Blob) -> None:
        header, parts, offsets = self._layout(blob)
        if self.local:
            self._write_local(path, blob.digest, header, parts, offsets)
            return
        if self._s3 and offsets[-1] <= s3io.ONE_PUT:
            # One PUT of a body written once: fsspec's file would copy each byte three times
            # more and send a multipart upload (see linkkernel.s3io).
            s3io.put_whole(self.fs, path, lambda body: self._write_frames(body, header, parts, offsets), offsets[-1])
            return
        # An object store makes an upload visible only once it completes, and closing the
        # file completes it: a write interrupted midway must be thrown away, not closed, or
        # a truncated blob would stand at its address and fail every task needing it.
        f = self.fs.open(path, "wb")
        try:
            self._write_frames(f, header, parts, offsets)
        except BaseException:
            abandon_upload(f)
            raise
        f.close()

    def _write_frames(self, f, header: bytes, parts: list[memoryview], offsets: list[int], fd: int | None = None) -> None:
        """The blob file: magic, header MAC, header, then each part at its page-aligned offset.
        With `fd` (a local file), parts held in a memfd or a blob file are copied inside the OS kernel."""
        f.write(MAGIC + _frame_mac(self._key, header) + len(header).to_bytes(4, "little") + header)
        at = _PREFIX + len(header)
        for part, offset in zip(parts, offsets):
            f.write(bytes(offset - at))
            if fd is None or not _send_from_file(f, fd, part):
                f.write(part)
            at = offset + part.nbytes

    def _write_local(self, path: str, digest: str, header: bytes, parts: list[memoryview], offsets: list[int]) -> None:
        """Write a blob file into place; we wrote what we hashed, so the file is verified as
        it stands (after the rename, which moves its ctime), for as long as it stays unwritable."""
        written = self._write_aside(path, lambda f, fd: self._write_frames(f, header, parts, offsets, fd))
        self._remember(digest, written)

    def _write_aside(self, path: str, write: Callable[[Any, int], None], check: Callable[[str], None] | None = None) -> os.stat_result:
        """Write a file aside (`write(file, fd)`), read-only from birth (nobody else ever
        holds it open for writing), let `check` see it whole, then rename it into place, so
        readers never see half a blob; named after the writer, so that once it is killed
        midway the file can be removed (`remove_abandoned`). The file's stat once in place."""
        os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        target = temp_name(path, "tmp")
        if self.announce is not None:
            self.announce(target.rsplit("/", 1)[1])
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        try:
            with open(fd, "wb", closefd=False) as f:
                write(f, fd)
            if check is not None:
                check(target)
            os.replace(target, path)
            return os.fstat(fd)
        except BaseException:  # an interrupted write leaves no half-written file behind
            if os.path.exists(target):
                os.unlink(target)
            raise
        finally:
            os.close(fd)

    def _remember(self, digest: str, st: os.stat_result) -> None:
        if _immutable(st):
            self.remember({digest: _identity(st)})
            self.newly_verified[digest] = _identity(st)

    def remember(self, verified: dict[str, list[int]]) -> None:
        """Local files known to be verified (digest -> identity), e.g. by an earlier task or,
        in a signed message, by the peer that wrote them; malformed entries are ignored."""
        for digest, identity in verified.items() if isinstance(verified, dict) else ():
            if not (isinstance(identity, list) and len(identity) == 5 and all(type(n) is int for n in identity)):
                continue
            self._verified[digest] = identity
            self._verified.move_to_end(digest)
        while len(self._verified) > _VERIFIED_MAX:
            self._verified.popitem(last=False)

    def verified(self, digests) -> dict[str, list[int]]:
        """The remembered identities of those of `digests` that were verified here."""
        return {d: self._verified[d] for d in digests if d in self._verified}

    def get(self, digest: str, mapped: bool = False) -> Blob:
        """The verified blob stored under `digest`; StorageError when missing or tampered.

        A local read-only blob file comes back mapped (FileMap). Otherwise, with `mapped`,
        large buffers are read into memfds (linkkernel.cow), so a task can map them
        copy-on-write and tell from the page tables whether it mutated them.
        """
        try:
            blob = self._get_local(self._path(digest), digest) if self.local else self._get_mirrored(digest)
            if blob is None and self._s3 and self.mirror is not None:
                blob = self._download_mirrored(digest)
            if blob is None:
                with self._open_read(self._path(digest)) as f:
                    blob = self._read_verified(f, digest, mapped and cow.SUPPORTED)
                blob = self._mirror(blob)
        except StorageError:
            raise
        except FileNotFoundError:
            raise MissingBlob(f"storage {self.url} has no blob {digest[:12]}…") from None
        except Exception as exc:  # fsspec backends raise their own exception types
            raise StorageError(describe_failure(self.url, exc)) from None
        self._known.add(digest)
        return blob

    def _open_read(self, path: str):
        """The blob file at `path`, to read once from start to end: from an S3 store one GET
        streamed into the reader's buffers (`s3io.WholeRead`), else fsspec's file."""
        return s3io.WholeRead(self.fs, path) if self._s3 else self.fs.open(path, "rb")

    def _tampered(self, digest: str) -> StorageError:
        return StorageError(f"blob {digest[:12]}… in {self.url} failed verification (tampered or corrupt); not loaded")

    def _sizes(self, digest: str, head: bytes, header: bytes) -> list[int]:
        """The part sizes (stream, then buffers) a blob file's header gives, once its magic,
        MAC and digest check out; both readers trust nothing in a file before this."""
        magic = head[:4]
        if magic not in (MAGIC, _LEGACY_MAGIC) or not hmac.compare_digest(
            head[4 : 4 + _MAC_LEN], _frame_mac(self._key, header, magic)
        ):
            raise self._tampered(digest)
        try:
            layout = json.loads(header)
            sizes = [int(layout["stream"]), *(int(n) for n in layout["buffers"])]
        except (ValueError, KeyError, TypeError):
            raise self._tampered(digest) from None
        if layout.get("digest") != digest:
            raise self._tampered(digest)
        return sizes

    def _get_mirrored(self, digest: str) -> Blob | None:
        """The blob from its mirror file, as from a local store; None when it must be read
        from the object store (not mirrored, not usable, or failed verification)."""
        if self.mirror is None:
            return None
        path = _blob_path(self.mirror.root, digest)
        try:
            return self._get_local(path, digest)
        except StorageError:
            # Our own copy went bad (disk, or someone with our rights): the object store
            # holds the blob; only a tampered blob there is an error.
            log.warning("mirror file %s failed verification; reading it from %s again", path, self.url)
            self.mirror.discard(path)
        except (OSError, ValueError):  # not mirrored (FileNotFoundError) or not readable
            pass
        return None

    def _download_mirrored(self, digest: str) -> Blob | None:
        """Download a blob from S3 straight into its mirror file, verified there before it
        is renamed into place, and return it mapped from that file: reading it into memory
        first and then copying it into the file (`_mirror`) costs ~0.15 s more per 100 MB
        here. None when it is not to be mirrored (no room, mirror not writable, an LKB1
        file): the caller reads it again into memory."""
        verified: list[Blob] = []

        def verify(target: str) -> None:  # a tampered blob raises, and its file is removed
            blob = self._get_local(target, digest)
            if blob is None:  # an LKB1 file, not mapped in place
                raise _NotInPlace(target)
            verified.append(blob)

        with s3io.WholeRead(self.fs, self._path(digest)) as f:
            try:
                if not self.mirror.make_room(f.size):
                    return None
                written = self._write_aside(_blob_path(self.mirror.root, digest), lambda out, _: f.copy_to(out), verify)
            except _NotInPlace:
                return None
            except (OSError, ValueError) as exc:  # permissions, disk full, a path that is a file
                self.mirror.failed(exc)
                return None
        self._remember(digest, written)  # its identity once renamed; the map stays valid
        return verified[0]

    def _mirror(self, blob: Blob) -> Blob:
        """Keep a blob just read from the object store as a mirror file, and return it
        mapped from there; the blob as it is when it cannot be mirrored."""
        if self.mirror is None:
            return blob
        header, parts, offsets = self._layout(blob)
        try:
            if not self.mirror.make_room(offsets[-1]):
                return blob
            path = _blob_path(self.mirror.root, blob.digest)
            self._write_local(path, blob.digest, header, parts, offsets)
        except (OSError, ValueError) as exc:  # permissions, disk full, a path that is a file
            self.mirror.failed(exc)
            return blob
        # Verified as written; another process may have evicted or replaced it meanwhile.
        return self._get_mirrored(blob.digest) or blob

    def _get_local(self, path: str, digest: str) -> Blob | None:
        """The blob mapped in place from its file; None when the file must be read by copy
        (writable, someone else's, or an LKB1 file)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            view = None
            if _immutable(st) and st.st_size >= _PREFIX:
                view = FileMap(fd, st.st_size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        if view is None:
            os.close(fd)
            return None
        view.fd = fd
        head = view[:_PREFIX]
        if head[:4] == _LEGACY_MAGIC:
            return None
        header = view[_PREFIX : _PREFIX + int.from_bytes(head[-4:], "little")]
        sizes = self._sizes(digest, head, header)
        offsets = _offsets(MAGIC, len(header), sizes)
        if offsets[-1] != st.st_size:
            raise self._tampered(digest)
        memory = memoryview(view)
        parts = [memory[o : o + n] for o, n in zip(offsets, sizes)]
        if self._verified.get(digest) != _identity(st):
            if not hmac.compare_digest(_digest(parts[0], parts[1:]), digest):
                raise self._tampered(digest)
            self._remember(digest, st)
        return Blob(bytes(parts[0]), tuple(parts[1:]), digest)

    def _read_verified(self, f, digest: str, mapped: bool) -> Blob:
        """Read a blob into memory it owns, then check it against namespaces' digest."""
        tampered = self._tampered(digest)
        head = _read_exact(f, _PREFIX)
        if len(head) < _PREFIX:
            raise tampered
        header = _read_exact(f, int.from_bytes(head[-4:], "little"))
        sizes = self._sizes(digest, head, header)
        offsets = _offsets(head[:4], len(header), sizes)
        at = _PREFIX + len(header)
        parts: list[memoryview] = []
        complete = True
        for i, (size, offset) in enumerate(zip(sizes, offsets)):
            complete = complete and len(_read_exact(f, offset - at)) == offset - at
            part = _memfd_view(size) if mapped and i and size >= cow.MIN_SIZE else memoryview(bytearray(size))
            got = 0
            while got < size:
                n = f.readinto(part[got : got + _CHUNK])
                if not n:
                    break
                got += n
            complete = complete and got == size
            at = offset + got
            parts.append(part)
        if not complete or f.read(1) or not hmac.compare_digest(_digest(parts[0], parts[1:]), digest):
            raise tampered
        return Blob(bytes(parts[0]), tuple(parts[1:]), digest)


_CHUNK = 8 << 20


class _NotInPlace(Exception):
    """A downloaded blob file that cannot be mapped in place (`Store._download_mirrored`)."""


def _send_from_file(f, fd: int, part: memoryview) -> bool:
    """Write a buffer held in a file that never changes (a frozen value's memfd, a blob file)
    with sendfile: writing it from its mapping would first fault in every page of the
    mapping, ~50 ms per 100 MB here. False when `part` is not such a buffer."""
    owner = cow.frozen_owner(part)
    source = getattr(owner, "fd", None)
    offset = owner.offset_of(part) if owner is not None and source is not None else None
    if offset is None:
        return False
    f.flush()
    sent = 0
    while sent < part.nbytes:
        n = os.sendfile(fd, source, offset + sent, part.nbytes - sent)
        if not n:
            raise OSError(f"file ended after {sent} of {part.nbytes} bytes")
        sent += n
    return True


def _read_exact(f, n: int) -> bytes:
    data = f.read(n) if n else b""
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


def file_map_of(blob: Blob) -> FileMap | None:
    """The one file map all of a blob's buffers live in, when it was mapped in place."""
    owners = {id(b.obj): b.obj for b in blob.buffers}
    owner = next(iter(owners.values()), None)
    return owner if len(owners) == 1 and isinstance(owner, FileMap) else None
