"""What was read from a file read again and again, kept while the file stays the same.

A kernel reads the worker registry and a key file before every remote run, and the saved
notebook before every component cell, and nearly always finds them as they were: reading and
checking the first two again cost a trivial run ~0.1 ms of CPU. A file counts as unchanged
while its stat identity does (device, inode, size, mtime, ctime, mode, owner): a file
replaced, rewritten in place or chmod-ed is read and checked again at the next call, exactly
as when nothing was kept.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from typing import Any

# File times come from a clock that ticks every few milliseconds: a file written twice within
# one tick keeps its times. What was read within this long of the file's last change is not
# kept, so a write just after the read always shows as a changed identity (git's "racily
# clean" entries). Some file systems keep whole seconds only (ext2/ext3, HFS+, many NFS
# servers), FAT's mtime even seconds: a time of a whole second is taken to tick that slowly.
SETTLED_NS = 50_000_000
_COARSE_NS = 2_000_000_000 + SETTLED_NS


def settled(st: os.stat_result, read_at_ns: int) -> bool:
    """Whether the file `st` describes last changed safely before `read_at_ns` (time.time_ns()
    taken before it was opened): only then does the same stat later mean the same content.
    One changed within a tick of its times before it was read can change again and keep
    them all (size too, when a save only renames something); it is read again next time."""
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    return changed < read_at_ns - (SETTLED_NS if changed % 1_000_000_000 else _COARSE_NS)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


class FileCache:
    """Values made from files, by path, each valid while its file's identity stays the same."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[tuple[int, ...], Any]] = {}

    def read(self, path: str, reader: Callable[[str], tuple[Any, os.stat_result | None]]) -> Any:
        """The value made from the file at `path`: the one kept, if the file is still the one
        it was made from, else `reader(path)`'s, kept. `reader` gives the value and the fstat
        of the file it read (None: no file, nothing to keep). Only a regular file whose last
        change had settled before it was opened is kept: a pipe gives other bytes each time."""
        kept = self._kept.get(path)
        if kept is not None:
            try:
                if _identity(os.stat(path)) == kept[0]:
                    return kept[1]
            except OSError:
                pass
        read_at = time.time_ns()
        value, st = reader(path)
        if st is not None and stat.S_ISREG(st.st_mode) and settled(st, read_at):
            self._kept[path] = (_identity(st), value)
        else:
            self._kept.pop(path, None)
        return value
