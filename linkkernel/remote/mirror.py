"""Where and how much of an object store (`s3://`) is kept as local blob files.

Re-running a remote component reads the same blobs again: the worker its inputs, the kernel
its outputs. Downloading and hashing 100 MB on every read costs ~0.5 s; kept as local blob
files in the store's own layout, they are mapped and trusted under the same rules as a local
store's files (read-only from birth, hashed once per file identity; linkkernel.remote.storage
does the reading and writing). The object store stays the source of truth: a mirror file
that fails verification is dropped and read from the store again.

The mirror is per user (the user cache dir, directories 0700), per store URL, bounded (the
oldest files go first) and best effort: when it cannot be written, reads go to the store.
"""

from __future__ import annotations

import hashlib
import logging
import os

from linkkernel.partfiles import abandoned

# Bound on a mirror directory's size in bytes; a blob bigger than this is not mirrored.
LIMIT = 8 << 30
log = logging.getLogger(__name__)


def default_root(url: str) -> str:
    """One directory per store URL under the user cache dir ($XDG_CACHE_HOME/linkkernel)."""
    import platformdirs

    name = hashlib.sha256(url.encode()).hexdigest()[:16]
    return os.path.join(platformdirs.user_cache_dir("linkkernel"), "remote-blobs", name)


class Mirror:
    """One mirror directory: its bound, its eviction, and whether writing it still works."""

    def __init__(self, root: str, limit: int = LIMIT) -> None:
        self.root = root
        self.limit = limit
        self.writable = True

    def make_room(self, size: int) -> bool:
        """Remove what writers killed midway left, then the oldest files until `size` more
        bytes fit under the bound; False when this blob is not to be mirrored (bigger than
        the bound, or writing failed before).
        Raises OSError when the directory cannot be made."""
        if not self.writable or size > self.limit:
            return False
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        files = []
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(folder, name)
                if abandoned(path):  # half a blob, its writer killed midway
                    self.discard(path)
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:  # evicted or renamed meanwhile by another process
                    continue
                files.append((st.st_mtime_ns, path, st.st_size))
        total = sum(n for _, _, n in files)
        for _, path, n in sorted(files):
            if total + size <= self.limit:
                break
            self.discard(path)
            total -= n
        return True

    def discard(self, path: str) -> None:
        """Remove a mirror file if we can (a process that has it mapped keeps its pages);
        when we cannot, writing the mirror fails too and says so."""
        try:
            os.unlink(path)
        except OSError:
            pass

    def failed(self, exc: BaseException) -> None:
        """Writing failed (permissions, disk full): say so once, then stop trying."""
        if self.writable:
            log.warning("cannot write the blob mirror %s (%s); reading from the store instead", self.root, exc)
        self.writable = False
