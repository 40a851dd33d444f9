"""Where a local folder is now, found by a descriptor held on it, not by its name.

The cache store's folder is named after the notebook's path; a second kernel on the notebook
renames it when it follows the notebook renamed (`CacheStore.follow`), and the folder at the
new name's path may be another notebook's. Linux names the files a process holds open, so
the held descriptor tells where the folder went (`name_of`; the saved notebook is followed
the same way, see sources.NotebookFile).
"""

from __future__ import annotations

import contextlib
import os
import weakref

# Where Linux names the files a process holds open.
_OPEN_FDS = "/proc/self/fd"
NAMES_OPEN_FILES = os.path.isdir(_OPEN_FDS)


def name_of(fd: int) -> str:
    """The path of the file open as `fd` now, wherever it was renamed to (" (deleted)" at its
    end once removed); OSError where the system does not name open files."""
    return os.readlink(f"{_OPEN_FDS}/{fd}")


def _is(path: str, stat: os.stat_result) -> bool:
    """Whether `path` is the file `stat` describes."""
    try:
        return os.path.samestat(os.stat(path), stat)
    except OSError:
        return False


class HeldFolder:
    """A descriptor on one local folder, closed with this object, which says where the
    folder was moved to."""

    def __init__(self) -> None:
        self._held: tuple[int, weakref.finalize] | None = None

    def held(self) -> bool:
        """Whether a folder is held (one not made yet is not)."""
        return self._held is not None

    def moved_to(self, path: str) -> str | None:
        """Where the folder held at `path` is now. Only a move to another name beside it
        counts (not one into the trash); None when it was not moved, or where the system
        does not name open files. Held anew when the folder was made again or is held for
        the first time. One caller at a time."""
        if self._held is not None:
            fd, close = self._held
            held = os.fstat(fd)
            if _is(path, held):
                return None
            with contextlib.suppress(OSError):
                now = name_of(fd)
                if os.path.dirname(now) == os.path.realpath(os.path.dirname(path)) and _is(now, held):
                    return now
            close()  # removed (a cache cleared), or made again since
            self._held = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # not made yet
            return None
        self._held = (fd, weakref.finalize(self, os.close, fd))
        return None
