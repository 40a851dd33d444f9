"""Temporary files named after the process writing them, and uploads thrown away whole.

A file is written aside and renamed into place, so readers see it whole or not at all; but a
writer killed midway (`kill -9`, the out-of-memory killer, a worker cancelling its task)
leaves the aside file behind, for good. Its name says which process wrote it (boot, pid and
the process's start time, so a pid used again is told apart), so whoever opens the folder
next can tell a dead writer's leftovers from a live writer's file and remove only those.

An object store needs neither: an upload becomes visible only once it completes, so it is
written in place, and one interrupted midway is discarded rather than completed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time
import uuid
from collections.abc import Iterable

# A file another boot wrote (this machine before a restart, or another one sharing the folder
# over NFS) cannot be asked about: it is taken for abandoned once this old.
FOREIGN_AGE = 24 * 3600
_TAGGED = re.compile(r"\.lk(?P<boot>[0-9a-f]{12})-(?P<pid>\d+)-(?P<start>\d+)\.[0-9a-f]+\.(?:part|tmp)$")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")[:12]
    except OSError:  # not Linux: every writer counts as this boot's, asked by pid alone
        return "0" * 12


_BOOT = _boot_id()


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot); None when it is gone (or a
    zombie, which writes nothing more). 0 where /proc does not say, when it exists."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    return None if fields[0] in ("Z", "X") else int(fields[19])


_tags: dict[int, str] = {}


def writer_tag() -> str:
    """This process, as a temporary file's name carries it (a forked child has its own)."""
    pid = os.getpid()
    if pid not in _tags:
        _tags[pid] = f"lk{_BOOT}-{pid}-{_start_time(pid) or 0}"
    return _tags[pid]


# Bytes a temporary name adds to the file's own (tag, unique part, suffix), with room to spare.
_TAIL_ROOM = 80
NAME_MAX = 255


def _name_kept(name: str) -> str:
    """The start of a file name that a temporary name keeps: all of it unless the tag would
    take the whole name past NAME_MAX (a notebook named near the limit was 'File name too
    long' to write), cut at a character so that the name stays text."""
    while len(os.fsencode(name)) > NAME_MAX - _TAIL_ROOM:
        name = name[:-1]
    return name


def temp_name(path: str, suffix: str = "part") -> str:
    """A name to write `path` aside under: this process's tag, then a part no other writer
    (another thread, another kernel on the same store) uses."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{_name_kept(name)}.{writer_tag()}.{uuid.uuid4().hex[:16]}.{suffix}")


def temp_pattern(name: str, suffix: str = "part") -> str:
    """The glob (in its folder) of the temporary names `temp_name` gives file `name`."""
    return f"{glob.escape(_name_kept(name))}.*.{suffix}"


def abandoned(path: str) -> bool:
    """Whether `path` is a temporary file whose writer is dead. Names without a tag (written
    by an older linkkernel, or not ours) are never judged."""
    match = _TAGGED.search(path)
    if match is None:
        return False
    if match["boot"] != _BOOT:
        try:
            return time.time() - os.stat(path).st_mtime > FOREIGN_AGE
        except OSError:
            return False
    return _start_time(int(match["pid"])) != int(match["start"])


def remove_abandoned(folder: str, patterns: Iterable[str]) -> list[str]:
    """Remove the temporary files in `folder` matching the glob `patterns` (relative to it)
    whose writers are dead; the paths removed. Never raises OSError: a folder that cannot be
    listed or written keeps them."""
    return remove_if_abandoned(path for pattern in patterns for path in glob.glob(os.path.join(glob.escape(folder), pattern)))


def remove_if_abandoned(paths: Iterable[str]) -> list[str]:
    """Remove those of `paths` that are temporary files whose writers are dead (a path that
    is gone is skipped); the paths removed. Nothing is listed: for a caller that knows which
    files a dead writer may have left, where a sweep of a large folder would take long."""
    removed = []
    for path in paths:
        if abandoned(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def abandon_upload(f) -> None:
    """Throw away an object-store upload that failed midway (s3fs aborts its multipart
    upload). Closing it instead, as leaving a `with` block does, would complete it: a
    truncated object would stand at its address."""
    from fsspec.spec import AbstractBufferedFile

    if isinstance(f, AbstractBufferedFile):
        f.discard()
        f.closed = True  # nothing is flushed, now or when the file is collected
    else:
        f.close()
