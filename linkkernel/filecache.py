"""What was read from a small file read again and again, kept while the file stays the same.

A kernel reads the worker registry and a key file before every remote run, and nearly
always finds them as they were: reading and checking them again cost a trivial run ~0.1 ms
of CPU. A file counts as unchanged while its stat identity does (device, inode, size,
mtime, ctime, mode, owner): a file replaced, rewritten in place or chmod-ed is read and
checked again at the next call, exactly as when nothing was kept.
"""

from __future__ import annotations

import os
import stat
from typing import Any

# File times come from a clock that ticks every few milliseconds: a file written twice within
# one tick keeps its times. What was read within this long of the file's last change is not
# kept, so a write just after the read always shows as a changed identity.
SETTLED_NS = 50_000_000


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


class FileCache:
    """Values made from files, by path, each valid while its file's identity stays the same."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[tuple[int, ...], Any]] = {}

    def get(self, path: str) -> Any | None:
        """The value kept for `path` if its file is still the one it was made from."""
        kept = self._kept.get(path)
        if kept is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return kept[1] if _identity(st) == kept[0] else None

    def put(self, path: str, st: os.stat_result, read_at_ns: int, value: Any) -> None:
        """Keep `value`, made from the file at `path` whose fstat was `st`, read from
        `read_at_ns` (time.time_ns() before it was opened) on. Only a regular file whose last
        change is settled by then is kept: a pipe gives other bytes at each read."""
        if stat.S_ISREG(st.st_mode) and max(st.st_mtime_ns, st.st_ctime_ns) < read_at_ns - SETTLED_NS:
            self._kept[path] = (_identity(st), value)
        else:
            self._kept.pop(path, None)
