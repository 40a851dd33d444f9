"""Which files of a folder changed since last asked, from Linux's inotify.

The cache store takes in records another process wrote (`linkkernel cache import` in a
terminal) before each cell; looking at every record file for that made each cell of a deep
pipeline cost more the deeper it was. Where inotify is missing or refuses (another system,
the per-user limit of instances reached), `changed` says it cannot tell and the caller
looks at every file, as before.
"""

from __future__ import annotations

import ctypes
import os
import struct
import weakref

# modify, attrib, close_write, moved_from, moved_to, create, delete: a file's content,
# date or presence; delete_self, move_self: the folder itself gone or moved.
_IN_CHANGED = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200
_IN_GONE = 0x400 | 0x800
_IN_Q_OVERFLOW, _IN_IGNORED = 0x4000, 0x8000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name, NUL-padded

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
        if _init1 is None:
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
