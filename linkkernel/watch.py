"""Which files of a folder changed since last asked, from Linux's inotify.

The cache store takes in records another process wrote (`linkkernel cache import` in a
terminal) before each cell; looking at every record file for that made each cell of a deep
pipeline cost more the deeper it was. Where inotify is missing or refuses (another system,
the per-user limit of instances reached), or cannot see every change (a network or FUSE
filesystem, where another machine's writes never reach this kernel's inotify), `changed`
says it cannot tell and the caller looks at every file, as before.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
import weakref

# modify, attrib, close_write, moved_from, moved_to, create, delete: a file's content,
# date or presence; delete_self, move_self: the folder itself gone or moved.
_IN_CHANGED = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200
_IN_GONE = 0x400 | 0x800
_IN_Q_OVERFLOW, _IN_IGNORED = 0x4000, 0x8000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name, NUL-padded

# Filesystems whose files other machines write: inotify hears only this machine's writes.
_SHARED_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "lustre", "gpfs", "afs", "glusterfs", "beegfs", "virtiofs"}
)

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _init1, _add_watch = _libc.inotify_init1, _libc.inotify_add_watch
except (OSError, AttributeError):  # not Linux
    _init1 = _add_watch = None


class FolderWatch:
    """The names of the files in `folder` created, written, renamed, touched or removed."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._fd: int | None = None
        self._close: weakref.finalize | None = None
        self._blind = False  # on a filesystem inotify cannot see every change of

    def changed(self) -> set[str] | None:
        """The names changed since the last call; None when it cannot tell: on the first
        call (watching starts then), when the folder is missing, was removed or moved, or
        more changed than the kernel kept. Any file may have changed then."""
        if self._fd is None:
            self._start()
            return None
        names: set[str] = set()
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return names
            except OSError:
                self.stop()
                return None
            offset = 0
            while offset < len(data):
                _, mask, _, size = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                offset = start + size
                if mask & (_IN_Q_OVERFLOW | _IN_IGNORED | _IN_GONE):
                    self.stop()
                    return None
                names.add(os.fsdecode(data[start:offset].split(b"\0", 1)[0]))

    def _start(self) -> None:
        if _init1 is None or self._blind:
            return
        if not _seen_whole(self.folder):
            self._blind = True
            return
        fd = _init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return
        if _add_watch(fd, os.fsencode(self.folder), _IN_CHANGED | _IN_GONE) < 0:  # no folder (yet)
            os.close(fd)
            return
        self._fd = fd
        self._close = weakref.finalize(self, os.close, fd)

    def stop(self) -> None:
        if self._close is not None:
            self._close()
        self._fd = self._close = None


def _seen_whole(folder: str) -> bool:
    """Whether inotify hears every change to `folder`: not on a network or FUSE filesystem."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            kind = filesystem_type(os.path.realpath(folder), f.read())
    except OSError:
        return False
    return kind is not None and kind not in _SHARED_FILESYSTEMS and not kind.startswith("fuse")


def filesystem_type(path: str, mountinfo: str) -> str | None:
    """The type of the filesystem holding the absolute, resolved `path`, as /proc's
    `mountinfo` text lists mounts (the one with the longest mount point above it, the last
    mounted there); None when no line holds it."""
    found, longest = None, -1
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            kind = fields[fields.index("-", 6) + 1]
        except (IndexError, ValueError):
            continue
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= longest:  # a later mount over the same point hides the earlier
            found, longest = kind, len(point)
    return found
