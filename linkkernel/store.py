"""The persistent cache of component runs (SPEC §3 "Persistence").

Records are JSON, values are blobs named by their content digest, so a name a child inherits
unchanged is stored once, and a remote run can ship the very blobs the cache holds. The
store lives on any fsspec URL: by default the platform's user cache directory, one folder per
notebook path. Writes happen on a background thread after the reply; values are pickled and
copied synchronously first, so a later mutation of a live object cannot leak into the cache.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import errno
import glob
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from graphlib import CycleError, TopologicalSorter
from typing import Any

from linkkernel import s3io
from linkkernel.cow import IMMUTABLE, MIN_SIZE, Loaded, freeze_buffer, frozen_owner
from linkkernel.errors import LinkError
from linkkernel.heldfolder import HeldFolder
from linkkernel.namespaces import DIGEST, Blob, _digest, type_name
from linkkernel.partfiles import abandon_upload, remove_abandoned, temp_name
from linkkernel.staleness import FRESH, Change, RunRecord, code_hash, inherited, state, states
from linkkernel.watch import FolderWatch
from linkkernel.writes import BackgroundWrites

MEMORY_PREFIX = "memory:"
# How the line saying results are not written starts (see `write_trouble`); `linkkernel run`
# shows it in the terminal too.
WRITE_TROUBLE = "linkkernel: cannot write the component cache"
# The largest pickle of a number or string kept loaded (`load`): a long text or a large
# bytes value would be held twice, as its blob and as the object.
_SMALL = 1 << 12
# How long a blob file that another process wrote or touched is left alone, although no record
# names it: that process writes the record naming it next (`_write`), moments later.
_GRACE = 60.0
log = logging.getLogger(__name__)


class LostValue(LinkError):
    """A cached value the storage no longer gives back as it was written (deleted, damaged,
    unreachable): the components that made it run again."""

    def __init__(self, digest: str, message: str) -> None:
        super().__init__(message)
        self.digest = digest


def default_cache_url() -> str:
    """LINKKERNEL_CACHE, else the user cache dir ($XDG_CACHE_HOME/linkkernel on Linux)."""
    env = os.environ.get("LINKKERNEL_CACHE")
    if env:
        return env
    import platformdirs

    return platformdirs.user_cache_dir("linkkernel")


def notebook_key(notebook_path: str) -> str:
    """A folder name per notebook file: readable stem plus a hash of its real path, so the
    same file reached through a link (a home folder linked to a data disk: JupyterLab by one
    path, a terminal's `linkkernel run` by the other) is one cache, not two."""
    path = os.path.realpath(notebook_path)
    stem = os.path.splitext(os.path.basename(path))[0]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:40]
    # the name's bytes: one that is not UTF-8 (a Latin-1 archive's) has no UTF-8 encoding
    return f"{safe}-{hashlib.sha256(os.fsencode(path)).hexdigest()[:16]}"


def freeze(blob: Blob) -> Blob:
    """A blob whose buffers are private immutable copies, no longer views of live objects.

    Large buffers go to memfds so that children can map them copy-on-write (linkkernel.cow).
    A large buffer already in a file that never changes (a memfd, or the verified blob file
    a remote output was mapped from) is not copied again: children map it from there. Small
    ones are copied like any other, so that a blob file stays open (one descriptor each)
    only while it holds a large buffer.
    """
    return Blob(
        blob.stream,
        tuple(b if frozen_owner(b) is not None and b.nbytes >= MIN_SIZE else freeze_buffer(b) for b in blob.buffers),
        blob.digest,
    )


def write_blob(f, blob: Blob) -> None:
    """Header, stream, then each buffer as it is (no joined copy of gigabytes)."""
    header = json.dumps({"stream": len(blob.stream), "buffers": [b.nbytes for b in blob.buffers]}).encode()
    f.write(len(header).to_bytes(8, "little"))
    f.write(header)
    f.write(blob.stream)
    for buffer in blob.buffers:
        f.write(buffer.cast("B") if buffer.format != "B" else buffer)


def decode_blob(data: bytes, digest: str) -> Blob | None:
    """The blob in `data`, or None when it is not the content `digest` names.

    Raises ValueError when `data` is not in the blob format at all (a damaged cache file, a
    hostile archive entry), whatever part of it is wrong.
    """
    view = memoryview(data)
    size = int.from_bytes(view[:8], "little")
    try:
        header = json.loads(bytes(view[8 : 8 + size]))
        offset = 8 + size
        stream = bytes(view[offset : offset + header["stream"]])
        offset += header["stream"]
        buffers = []
        for length in header["buffers"]:
            buffers.append(view[offset : offset + length])
            offset += length
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"not a linkkernel blob ({type(exc).__name__}: {exc})") from exc
    if _digest(stream, buffers) != digest:
        return None
    return Blob(stream, tuple(buffers), digest)


def plain_reason(exc: BaseException) -> str:
    """Why a write failed, in words (no errno, no path of a temporary file)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is used up"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def deep_copy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """A deep copy of `value` that is of its type; TypeError when the copy came back as
    something else (a weak proxy copies as a copy of the object it points to), which the
    callers treat as a value that cannot be copied: a child gets what its parent made."""
    copied = copy.deepcopy(value, memo)
    if type(copied) is not type(value):
        raise TypeError(f"a copy of a {type_name(value)} came back as a {type_name(copied)}")
    return copied


def _memory_only(record: RunRecord) -> tuple[str, ...]:
    """The digests of a record's values kept in memory only, which die with the process."""
    return tuple(d for d in record.namespace.values() if d.startswith(MEMORY_PREFIX))


def _parents_first(read: list[tuple[str, Any, RunRecord]]) -> list[tuple[str, Any, RunRecord]]:
    """The records `read` (path, stamp, record), each after those of its parents among them;
    as read when their parents make a cycle (no pipeline's do: a foreign file)."""
    by_name: dict[str, list[tuple[str, Any, RunRecord]]] = {}
    for item in read:
        by_name.setdefault(item[2].name, []).append(item)
    sorter = TopologicalSorter({name: [p for p in items[0][2].parents if p in by_name] for name, items in by_name.items()})
    try:
        return [item for name in sorter.static_order() for item in by_name[name]]
    except CycleError:
        return read


def _write_local(aside: str, path: str, write: Callable[[Any], object]) -> os.stat_result:
    """`write` into the local file `aside`, its folder made when missing, then moved to
    `path`: fsspec's local files made every folder again and rewrote the path, for the two
    files each component run writes. The file as written, stat'ed before the move: after
    it, the path may already be another process's file."""
    try:
        f = open(aside, "wb")  # noqa: SIM115 - closed below, whichever way it was opened
    except FileNotFoundError:
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        f = open(aside, "wb")  # noqa: SIM115
    with f:
        write(f)
    written = os.stat(aside)
    os.replace(aside, path)
    return written


def _record_size(record: RunRecord) -> int:
    """About the bytes of `record`'s file, from above, without writing it out: its outputs'
    text (what a component printing megabytes makes big), plus room for each name and parent.
    Serialised on the spot, before every write, a chain of 400 components took 0.1 s more to
    run: a child's record names all of its ancestors' values."""
    return 4096 + 160 * len(record.namespace) + 96 * len(record.parents) + _text_size(record.outputs)


def _text_size(value: Any) -> int:
    """The bytes the strings in nbformat outputs take as JSON, from above: an escape (a
    newline, a quote) is two bytes, a character outside ASCII six (`\\uXXXX`)."""
    if isinstance(value, str):
        return (2 if value.isascii() else 6) * len(value)
    if isinstance(value, dict):
        return sum(_text_size(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    return 16


def _stamp_of(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells a record file from the one read or written before: its inode (every
    writer moves a new file into place), not only its time and size, which another
    process's record written in the same clock tick (milliseconds) shares with ours."""
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class CacheStore:
    """Run records and blobs of one notebook, in memory and (when a notebook is known) on fsspec."""

    def __init__(self, url: str | None, notebook_path: str | None) -> None:
        self.records: dict[str, RunRecord] = {}
        self.blobs: dict[str, Blob] = {}
        self.lost: set[str] = set()  # values the storage failed to give back (see `lose`)
        self.memory_values: dict[str, Any] = {}
        # Small values that cannot change (numbers, short strings) as loaded once, by digest:
        # a child gets the very object, as good as a copy, without unpickling it for each
        # child (a deep pipeline's names accumulate: each run loaded every one of them
        # again). Gone with the last record naming it, or when lost.
        self._immutable: dict[str, Loaded] = {}
        # Memory-only values that cannot be copied either (a generator, a lock, a widget, a
        # connection): children get the object itself (see `private`).
        self.shared: set[str] = set()
        # How many names of current records hold each digest: a value goes from memory when
        # the last record naming it is replaced, without looking through every record.
        self._refs: Counter[str] = Counter()
        # What each current run's values came from (staleness.inherited's memo), by run id.
        self._made: dict[str, dict[str, Change]] = {}
        # The memory-only digests of each current run, by run id (see `available`).
        self._in_memory: dict[str, tuple[str, ...]] = {}
        # The components known fresh in `_fresh_graph` (see `unfresh`): each with all its
        # ancestors, so a run, an import or a loss drops a component with its descendants.
        self._fresh_graph = None
        self._fresh: set[str] = set()
        self._lock = threading.Lock()
        # One refresh at a time: `%link status` in a subshell refreshes while the main shell's
        # cell does, and the folder's watch hands each change to one caller only.
        self._refreshing = threading.Lock()
        self._jobs = BackgroundWrites()  # what the writer thread does, and how the writes went
        # Digests of the values of runs replaced here (`_release`), for the writer once the
        # blobs and records written before are (`put`, `_load_records`).
        self._released: list[str] = []
        # Digests of replaced runs' values whose blob files may have no record naming them any
        # more: looked at by `_remove_unnamed`, kept until removed or named here again. The writer's.
        self._unnamed: set[str] = set()
        # The blob files this store wrote or touched (`_write`), by digest: the mtime it left
        # (None: an upload to an object store, which has none to set). The writer's.
        self._mine: dict[str, int | None] = {}
        # What each record file in the store names, with its stamp when read (`_named_on_disk`),
        # also noted as records are loaded or written, so the writer does not read them again.
        self._on_disk: dict[str, tuple[Any, frozenset[str]]] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="linkkernel-cache")
        # (inode, mtime, size) of each record file when last read or written here (a remote
        # store's: its listing's details): one that changed since was written by someone else
        # (`linkkernel cache import`), see `refresh`; None: the file was not there.
        self._stamps: dict[str, tuple[int, int, int] | str | None] = {}
        self.root: str | None = None
        self.notebook_path = notebook_path  # the path `root` is keyed by (see `follow`)
        self.fs = None
        self._local = False
        self._s3 = False  # files written whole with one request (linkkernel.s3io)
        self._watch: FolderWatch | None = None  # the records folder of a local store (see `refresh`)
        self._held = HeldFolder()  # the local folder, wherever another kernel moved it (see `_folder_now`)
        # Why `url` cannot be used (unknown protocol, its package missing). A kernel keeps
        # running with results in memory, as without a notebook; a command refuses (`usable`).
        self.unusable: str | None = None
        if url and notebook_path:
            import fsspec

            try:
                self._local = fsspec.utils.get_protocol(url) in ("file", "local")
                self.fs, base = fsspec.core.url_to_fs(url, **({"auto_mkdir": True} if self._local else {}))
                self._s3 = s3io.is_s3(self.fs)
            except (ValueError, ImportError) as exc:
                self.unusable = f"cache store {url!r} cannot be used: {exc}"
                return
            self.root = f"{base.rstrip('/')}/{notebook_key(notebook_path)}"
            if self._local:
                self._watch = FolderWatch(f"{self.root}/records")
            try:
                self._load_records()
            except Exception as exc:  # s3fs lets botocore's own errors through (no credentials...), not only OSError
                self.fs = self.root = None
                self.unusable = f"cache store {url!r} cannot be used: {exc}"
                return
            if self._local:  # what writers killed midway left (an object store keeps no half upload)
                self._folder_now()  # held from the start: another kernel may move it before this one follows
                self._jobs.add(self._writer.submit(remove_abandoned, self.root, ["records/*.part", "blobs/*/*.part"]))
                self._jobs.add(self._writer.submit(self._sweep))

    @property
    def location(self) -> str:
        if self.unusable:
            return f"memory only ({self.unusable})"
        return self.root or "memory only (no saved notebook known)"

    def usable(self) -> CacheStore:
        """This store, or a LinkError saying why its URL cannot be used."""
        if self.unusable:
            raise LinkError(self.unusable)
        return self

    def follow(self, notebook_path: str) -> None:
        """The notebook was renamed or moved (JupyterLab tells the kernel nothing; the kernel
        follows the file, see sources.NotebookFile): a local cache folder is renamed to the
        new path's key, so that the kernel JupyterLab starts for the new name finds its
        components fresh; before, it found none and ran every one again. What this kernel
        holds stays as it is. The folder stays where it was when the new path's is taken (a
        cache of another notebook once there) or cannot be renamed; an object store's too:
        renaming there is a copy of every blob."""
        if self.root is None or not self._local or notebook_path == self.notebook_path:
            return
        new_root = f"{self.root.rsplit('/', 1)[0]}/{notebook_key(notebook_path)}"
        self.flush()  # no write of ours lands in the old folder once it is moved
        with self._refreshing:
            # Where a second kernel on the notebook may have moved it, following a rename
            # this kernel missed (renamed twice while it was idle).
            now = self._folder_now() or self.root
            try:
                if now != new_root:
                    os.rename(now, new_root)
            except FileNotFoundError:  # nothing written yet: the next write makes the new folder
                pass
            except OSError:  # tried once per move: each try waits for the writes under way
                self.notebook_path = notebook_path
                return
            self._moved(new_root)
            self.notebook_path = notebook_path

    def moved_away(self) -> bool:
        """Whether the local folder is not where this store writes: a second kernel on the
        notebook moved it, following a rename (`follow`), or it is not made yet."""
        return self._local and self.root is not None and not os.path.isdir(self.root)

    def _moved(self, new_root: str) -> None:
        """Take the folder to be at `new_root` from now on (the lock `_refreshing` held)."""
        self._stamps = {new_root + path[len(self.root):]: stamp for path, stamp in self._stamps.items()}
        self._on_disk = {new_root + path[len(self.root):]: named for path, named in self._on_disk.items()}
        self.root = new_root
        if self._watch is not None:
            self._watch.stop()
        self._watch = FolderWatch(f"{self.root}/records")

    def _folder_now(self) -> str | None:
        """Where the local folder is now, found by the descriptor held on it, not by its name
        (linkkernel.heldfolder); None when it was not moved. The lock `_refreshing` held (or
        no other thread yet)."""
        return self._held.moved_to(self.root)

    def _load_records(self, changed_only: bool = False, paths: Iterable[str] | None = None) -> bool:
        """Read the record files (`paths`, all when None); `changed_only`: those whose
        stamp is not the one they had when last read or written here. Whether a record
        read replaced the run kept here.

        A run another process recorded replaces the one kept here only when it can serve
        this process (`_serves`); they are taken in parents first, so that a parent's new
        run read with its child's is there when the child's is looked at."""
        if paths is None:
            try:
                listed = self._record_files()
            except FileNotFoundError:  # no records folder (any more: a cache cleared)
                listed = {}
            except OSError:
                return False
            if changed_only:  # a look at every file: those not there now were removed
                listed.update({path: None for path in list(self._stamps) if path not in listed})  # the writer thread adds stamps
        else:
            listed = {path: self._stamp(path) for path in paths}
        read, gone = [], []
        for path, stamp in listed.items():
            if changed_only and stamp == self._stamps.get(path):
                continue
            try:
                with self.fs.open(path, "rb") as f:
                    read.append((path, stamp, RunRecord.from_json(json.load(f))))
                if stamp is not None:
                    self._on_disk[path] = (stamp, frozenset(read[-1][2].namespace.values()))
            except FileNotFoundError:
                self._stamps[path] = None
                gone.append(path)
            except (OSError, ValueError, TypeError):
                self._stamps[path] = stamp  # a torn or foreign record only means that component runs again
        if not (read or gone):  # the common case: before each cell, nothing changed
            return False
        taken = self._drop_unheld(os.path.basename(path).removesuffix(".json") for path in gone)
        for path, stamp, record in _parents_first(read):
            with self._lock:
                kept = self.records.get(record.name)
                if kept is None or (kept.run_id != record.run_id and self._serves(record)):
                    self._keep(record)
                    taken = True
            self._stamps[path] = stamp  # once looked at: a read interrupted is read again
        with self._lock:
            released, self._released = self._released, []
        if released:  # of the runs that another process's runs replaced here
            self._jobs.add(self._writer.submit(self._remove_unnamed, released))
        return taken

    def _drop_unheld(self, names: Iterable[str]) -> bool:
        """Forget the runs of `names`, whose record files another process removed (`%link
        cache clear` in a second kernel), unless every value of the run is held here: the
        kernel called them fresh, then failed to load their values and said so in a line
        about a lost value. Whether one was forgotten."""
        dropped = False
        with self._lock:
            for name in names:
                old = self.records.get(name)
                if old is None or all(d in self.blobs or d in self.memory_values for d in old.namespace.values()):
                    continue
                del self.records[name]
                self._not_fresh(name)
                self._release(old)
                dropped = True
        return dropped

    def _serves(self, record: RunRecord) -> bool:
        """Whether another process's run can stand in for the one kept here: its values kept
        in memory only are held here (never, for another process's), and its parents' runs
        are those kept here. One that cannot is stale here: taking it made this process run
        the component again although its own run was fresh, and the other process then the
        same in turn (two kernels on a notebook with a lock among its values ran every
        component again at each other's every run)."""
        if any(d not in self.memory_values for d in _memory_only(record)):
            return False
        return all(getattr(self.records.get(parent), "run_id", None) == run for parent, run in record.parents.items())

    def _record_files(self) -> dict[str, Any]:
        """The record files in the store, each with its stamp (see `_stamp`). A local folder
        is listed with os.scandir: fsspec's glob asks for each file's details, which before
        every cell (`refresh`) cost a pipeline of 400 components 6 ms. A remote one is
        listed afresh, with each object's details as the listing gives them (its ETag, its
        time): one request, which tells the records another process wrote since."""
        folder = f"{self.root}/records"
        if not self._local:
            self.fs.invalidate_cache(folder)
            entries = self.fs.ls(folder, detail=True)
            return {e["name"]: json.dumps(e, sort_keys=True, default=str) for e in entries if e["name"].endswith(".json")}
        with os.scandir(folder) as entries:
            return {entry.path: self._stamp(entry.path) for entry in entries if entry.name.endswith(".json")}

    def _stamp(self, path: str) -> tuple[int, int, int] | None:
        """Which local record file is at `path` (see `_stamp_of`); None for other stores,
        whose stamps come from their listing (`_record_files`)."""
        if not self._local:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return _stamp_of(stat)

    def refresh(self, remote: bool = False) -> bool:
        """Take in the records another process wrote since they were read: `linkkernel cache
        import` or a second kernel on the notebook, `linkkernel run`, a teammate on the team
        cache. Without this the kernel ran their components again and overwrote them.
        Whether a record read replaced the run kept here.

        A local store is looked at before every cell: only the files the folder's watch saw
        change, when it can tell, each a stat, and a read when another process wrote it (ours
        have their stamps). A remote store only when `remote`: listing it costs a request,
        more than a cell of a Run All, so it is listed when a component would otherwise run
        again (`unfresh`) or the user asks for the states (`%link status`).

        Not while a write of ours is under way: until it has landed (and its stamp with it),
        the file holds an older run than the one kept here, which must not replace it."""
        if self.root is None or not (self._local or remote):
            return False
        with self._refreshing:
            if self._local and not self._held.held():  # made by another process since (see `_folder_now`)
                self._folder_now()
            if self._jobs.under_way():
                return False
            paths = None
            if self._local:
                changed = None if self._watch is None else self._watch.changed()
                folder = f"{self.root}/records"
                paths = None if changed is None else [f"{folder}/{name}" for name in sorted(changed) if name.endswith(".json")]
            try:
                return self._load_records(changed_only=True, paths=paths)
            except Exception:  # noqa: BLE001 - s3fs lets botocore's own errors through; unlisted, the kernel runs what it would
                if self._local:  # a local folder's errors are OSErrors, handled where met: anything else is a bug
                    raise
                return False
            except BaseException:  # interrupted: the changes the watch handed over are not all read
                if self._watch is not None:
                    self._watch.stop()  # so the next refresh looks at every file
                raise

    def get(self, name: str) -> RunRecord | None:
        return self.records.get(name)

    def inherited(self, parents: Iterable[str]) -> dict[str, str]:
        """The namespace a component with `parents` starts from (staleness.inherited), each
        run's lineage worked out once while it is current, not once per descendant."""
        return inherited(parents, self.get, self._made)

    def kept_copies(self, memory: dict[str, Any]) -> dict[str, Any]:
        """What `put` keeps of a run's values that cannot be serialised (digest -> value):
        copies made apart, because copying runs the values' own code, which may be slow and
        interrupted; nothing is kept until all are made."""
        return {digest: self._kept_copy(digest, value) for digest, value in memory.items()}

    def put(self, record: RunRecord, blobs: dict[str, Blob], kept: dict[str, Any]) -> bool:
        """Keep a record now; write it and its blobs (already frozen) in the background.
        `kept`: its values that cannot be serialised, as `kept_copies` made them. False when
        it is kept in memory only, its disk known to be too full (`write_trouble` says why)."""
        if self.unusable and not self.records:  # said once, in the cell whose result is not kept
            print(f"linkkernel: {self.unusable}; component results are kept in memory only", file=sys.stderr)
        with self._lock:
            self.blobs.update(blobs)
            self.memory_values.update(kept)
            self._keep(record)
            self._forget([*blobs, *kept])  # a value the record does not name after all
        if self.fs is not None:
            if self._local and not self._jobs.outage() and not self.fs.exists(self.root):
                # Made here, not in the background, so a folder that cannot be written is
                # said in the cell whose results it loses (write_trouble).
                try:
                    self.fs.makedirs(self.root, exist_ok=True)
                except OSError as exc:
                    self._jobs.refused(exc)
                with self._refreshing:
                    self._folder_now()  # held as soon as it is there
            if self._local and not (self._room_for(record, blobs.values()) or self._make_room(record, blobs.values())):
                self._jobs.refused(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
                return False  # written again by the next run that makes them
            self._jobs.prune()
            # Values lost before this put are made again by it; one lost while the write is
            # under way (a child could not rebuild it) stays lost when the write lands.
            relost = {d for d in blobs if d in self.lost}
            with self._lock:
                released, self._released = self._released, []
            self._jobs.add(self._writer.submit(self._write, record, list(blobs.values()), relost, released), write=True)
        return True

    def _make_room(self, record: RunRecord, blobs: Iterable[Blob]) -> bool:
        """Whether removing the run `record` replaces makes room for it, once removed: its
        record file first, then the files of its values no record names (`_remove_unnamed`).
        Removed only after the new run is written, they counted as taken: a value over half
        the free space, kept once, was never kept again, and its old run stayed for good."""
        with self._lock:
            released = list(self._released)
        if not released:
            return False
        self.flush()  # no write of ours under way meanwhile
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self.root}/records/{record.name}.json")
        self._writer.submit(self._remove_unnamed, released).result()
        return self._room_for(record, blobs)

    def _room_for(self, record: RunRecord, blobs: Iterable[Blob]) -> bool:
        """Whether the local disk has room for `record` and `blobs`, asked first so that a
        disk too full is said in the cell whose results it cannot keep (`write_trouble`), and
        not filled to the last byte by a write that fails anyway. The record counts too (it
        holds the run's outputs: a component printing megabytes), and each file takes whole
        blocks: counted by the blobs' bytes alone, a run passed whose files then did not fit,
        said in the next component's cell, whose own results were written."""
        try:
            disk = os.statvfs(self.root)
        except OSError:
            return True  # the write says what is wrong
        block = disk.f_frsize or 4096
        sizes = [blob.size for blob in blobs if not os.path.exists(self._blob_path(blob.digest))]
        sizes.append(_record_size(record))
        return sum((size // block + 1) * block for size in sizes) <= disk.f_bavail * block

    def _kept_copy(self, digest: str, value: Any) -> Any:
        """A copy of a value that cannot be serialised, so that the notebook's own object
        changing later does not change what children start from (as a blob cannot); the
        object itself when it cannot be copied either (marked `shared`)."""
        try:
            return deep_copy(value)
        except Exception:  # noqa: BLE001 - deepcopy runs the value's own code; any refusal means "share it"
            self.shared.add(digest)
            return value

    def write_trouble(self) -> str | None:
        """Why results are not being written to the store, the first time it is known in an
        outage (None otherwise): a cache folder that cannot be made, a disk full, a bucket
        refusing writes. The kernel says it once, in a cell; else the user finds out only
        when a restart runs every component again. Once a write lands again the outage is
        over, and the next one is said too: a disk freed, then full again, lost results
        without a word.

        The rule, said once per outage, is `BackgroundWrites.trouble`'s."""
        failure = self._jobs.trouble()
        if failure is None:
            return None
        return (
            f"{WRITE_TROUBLE} at {self.root}: {plain_reason(failure)}; "
            "results are kept in memory only, so after a restart their components run again"
        )

    def unwritten(self, failures: list[BaseException], refused: bool) -> str | None:
        """Why results a caller put (`cache import`) are not written, in words, said by the
        caller for `write_trouble`: `failures` of their writes, `refused` when a put found
        no room. None when they were written."""
        problem = failures[0] if failures else OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if refused else None
        if problem is None:
            return None
        self._jobs.told()
        return plain_reason(problem)

    def _keep(self, record: RunRecord) -> None:
        """Make `record` its component's current run (the lock held). The values only the run
        it replaces named go from memory (a re-run parent's old gigabytes), and their files
        from the store once no record names them (`_remove_unnamed`)."""
        old = self.records.get(record.name)
        self._not_fresh(record.name)
        self.records[record.name] = record
        self._refs.update(record.namespace.values())
        if old is not None:
            self._release(old)
        self._in_memory[record.run_id] = _memory_only(record)

    def _release(self, old: RunRecord) -> None:
        """Let go of a run no longer its component's current one (the lock held): what the
        kernel remembers of it, and the values no current run names."""
        self._made.pop(old.run_id, None)
        self._in_memory.pop(old.run_id, None)
        self._refs.subtract(old.namespace.values())
        if self.fs is not None:
            self._released.extend(d for d in old.namespace.values() if self._refs[d] <= 0 and not d.startswith(MEMORY_PREFIX))
        self._forget(old.namespace.values())

    def _not_fresh(self, name: str) -> None:
        """Drop `name` and its descendants from the components known fresh (the lock held): its
        record changed. A component not known fresh has no descendant known fresh."""
        todo = [name]
        while todo:
            current = todo.pop()
            if current in self._fresh:
                self._fresh.discard(current)
                todo.extend(self._fresh_graph.succ[current])

    def _forget(self, digests: Iterable[str]) -> None:
        """Drop from memory those of `digests` that no current record names."""
        for digest in digests:
            if self._refs[digest] <= 0:
                del self._refs[digest]
                self.blobs.pop(digest, None)
                self._immutable.pop(digest, None)
                self.memory_values.pop(digest, None)
                self.shared.discard(digest)

    def _write(self, record: RunRecord, blobs: list[Blob], relost: set[str], released: list[str]) -> None:
        """Write a run's blobs, then its record, then remove the files of the values of the
        runs replaced (`released`) that no record names any more (`_remove_unnamed`). A local
        blob file already there is touched, last, just before the record naming it is
        written: another process removing files leaves those touched moments ago alone."""
        self._unnamed.update(released)  # written before this write: removed later should it fail
        there = []
        for blob in blobs:
            path = self._blob_path(blob.digest)
            if blob.digest in relost or not (os.path.exists(path) if self._local else self.fs.exists(path)):
                self._write_blob(blob)
            elif self._local:
                there.append(blob)
        for blob in there:
            if not self._touch(blob.digest):  # removed since it was looked at
                self._write_blob(blob)
        self.lost.difference_update(relost)
        data = json.dumps(record.to_json()).encode()
        path = f"{self.root}/records/{record.name}.json"
        written = self._write_aside(path, lambda f: f.write(data))
        # A remote store's stamps come from its listing (`_record_files`): "" is none of them,
        # so the record is looked at once in the next, and its removal seen.
        self._stamps[path] = "" if written is None else _stamp_of(written)
        if written is not None:
            self._on_disk[path] = (_stamp_of(written), frozenset(record.namespace.values()))
        self._remove_unnamed()

    def _write_blob(self, blob: Blob) -> None:
        written = self._write_aside(self._blob_path(blob.digest), lambda f: write_blob(f, blob), blob.size)
        self._mine[blob.digest] = None if written is None else written.st_mtime_ns

    def _touch(self, digest: str) -> bool:
        """Set a local blob file's mtime to now (see `_remove_unnamed`); False when it is gone.
        One another process wrote or touched moments ago stays its, not this store's to
        remove at once. Another user's file is there but cannot be touched."""
        path = self._blob_path(digest)
        try:
            settled = self._settled(digest)
            os.utime(path)
            if settled:
                self._mine[digest] = os.stat(path).st_mtime_ns
            else:
                self._mine.pop(digest, None)
        except FileNotFoundError:
            return False
        except PermissionError:
            pass
        return True

    def _remove_unnamed(self, released: Iterable[str] = ()) -> None:
        """Remove the blob files of replaced runs' values (`released`, and those left for
        later in `_unnamed`) that no record names: neither a current run here nor any record
        file in the store (other processes' runs). Without this every run's values stayed on
        disk for good: a component re-run while its 2 GB output was worked on filled the
        disk. Values are content-addressed, so one file serves every run, of any component,
        whose value is equal.

        Several processes share a store (a second kernel, `linkkernel run`, `cache import`, a
        teammate on `s3://`), and a removal must at worst make a component run again (its value
        lost, `lose`), never give a wrong value (a blob is checked against its digest when
        read) or an error. A process writes (or, locally, touches: `_write`) the blob files
        of a run before the record naming them, so the records are read after the replacing
        record is written, and a file another process wrote or touched in the last `_GRACE`
        seconds is left for the next time: its record may be on its way. The files this store
        wrote and no one touched since go at once. An object store's files cannot be touched:
        one a process found there already may go before the record it writes after uploading
        its run's new files; that component then runs again."""
        self._unnamed.update(released)
        if not self._unnamed:
            return
        try:
            named = self._named_on_disk()
            with self._lock:  # one a current run here names comes back when that run is replaced
                self._unnamed = {d for d in self._unnamed if self._refs[d] <= 0}
                candidates = self._unnamed - named
            settled = [d for d in candidates if self._settled(d)]
            with self._lock:  # named by a run kept since (its write, after this one, writes it again)
                doomed = [d for d in settled if self._refs[d] <= 0]
            if self._local:
                for digest in doomed:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._blob_path(digest))
            elif doomed:
                self.fs.rm([self._blob_path(d) for d in doomed])
        except Exception as exc:  # noqa: BLE001 - s3fs lets botocore's own errors through; nothing is lost by keeping files
            log.info("linkkernel: could not remove unused files of the component cache at %s: %s", self.root, exc)
            return
        self._unnamed.difference_update(doomed)
        for digest in doomed:
            self._mine.pop(digest, None)

    def _sweep(self) -> None:
        """Remove the blob files of a local store that no record names (`_remove_unnamed`),
        when it is opened: those of runs replaced when no process was left to remove them
        (one that ended within `_GRACE` of replacing another's run, an older linkkernel)."""
        stored = (os.path.basename(path) for path in glob.glob(f"{glob.escape(self.root)}/blobs/*/*"))
        try:
            named = self._named_on_disk()
        except OSError as exc:  # a record file that cannot be read may name any: none removed
            log.info("linkkernel: could not remove unused files of the component cache at %s: %s", self.root, exc)
            return
        self._remove_unnamed({name for name in stored if DIGEST.fullmatch(name)} - named)  # any other file is not ours

    def _named_on_disk(self) -> set[str]:
        """The digests the record files in the store name, each file read again only when its
        stamp changed (`_record_files`). A file no process can read as a record (a foreign
        one) names nothing anyone can load."""
        try:
            listed = {path: stamp for path, stamp in self._record_files().items() if stamp is not None}
        except FileNotFoundError:  # no records folder (a cache cleared)
            listed = {}
        changed = {path for path, stamp in listed.items() if self._on_disk.get(path, (None,))[0] != stamp}
        read = self.fs.cat(sorted(changed), on_error="return") if changed else {}
        on_disk = {path: self._on_disk[path] for path in listed if path not in changed}
        for path in changed:
            data = read.get(path, OSError(f"{path} was not read"))
            if isinstance(data, FileNotFoundError):  # removed since listed
                continue
            if isinstance(data, BaseException):  # unknown, it may name any: nothing removed this time
                raise data
            try:
                names = frozenset(RunRecord.from_json(json.loads(data)).namespace.values())
            except (ValueError, TypeError):
                names = frozenset()
            on_disk[path] = (listed[path], names)
        self._on_disk = on_disk
        return set().union(*(names for _, names in on_disk.values()))

    def _settled(self, digest: str) -> bool:
        """Whether no other process wrote or touched the blob file of `digest` in the last
        `_GRACE` seconds (see `_remove_unnamed`); True when it is gone already."""
        path = self._blob_path(digest)
        mine = self._mine.get(digest, 0)
        try:
            if self._local:
                mtime_ns = os.stat(path).st_mtime_ns
                return mtime_ns == mine or time.time() - mtime_ns / 1e9 > _GRACE
            if mine is None:  # uploaded here
                return True
            self.fs.invalidate_cache(path)
            modified = self.fs.modified(path)
        except FileNotFoundError:
            return True
        if modified.tzinfo is None:  # some filesystems give UTC without saying so
            modified = modified.replace(tzinfo=datetime.timezone.utc)
        return time.time() - modified.timestamp() > _GRACE

    def _write_aside(self, path: str, write: Callable[[Any], object], size: int = 0) -> os.stat_result | None:
        """Write so that readers see a whole file or none. Locally: under a name no other
        writer uses, then moved into place. Two kernels on the same store (two notebooks of
        one user, a notebook open twice) running the same component write the same blob at
        once: with one shared temporary name, one truncated the file the other was writing
        and the other's move then failed, losing its results to a warning. The name says who
        writes it, so a file a killed writer left is removed when the store is opened next.
        An object store shows an upload only once it completes: written in place, without
        a copy to move it, and nothing left behind by a writer killed midway."""
        if self._local:
            aside = temp_name(path)
            try:
                return _write_local(aside, path, write)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(aside)
                raise
        if self._s3 and size <= s3io.ONE_PUT:  # `size`: about how much `write` writes
            s3io.put_whole(self.fs, path, write)
            return None
        f = self.fs.open(path, "wb")
        try:
            write(f)
        except BaseException:
            abandon_upload(f)
            raise
        f.close()
        return None

    def _blob_path(self, digest: str) -> str:
        return f"{self.root}/blobs/{digest[:2]}/{digest}"

    def flush(self) -> None:
        """Wait for background writes (kernel shutdown, `%link cache clear`)."""
        for exc in self.write_failures():  # the run itself succeeded; only its persistence is lost
            log.warning("linkkernel: could not write the component cache at %s: %s", self.root, exc)

    def write_failures(self) -> list[BaseException]:
        """Wait for background writes; the errors of those that failed, for a caller
        (`cache import`) whose only result is what was written."""
        return self._jobs.wait()

    def has_value(self, digest: str) -> bool:
        """Whether a value can be loaded, without asking the storage (an S3 HEAD per name per
        cell would cost more than the run): blobs we wrote are taken to be there, until
        reading one failed (`lose`)."""
        if digest in self.blobs or digest in self.memory_values:
            return True
        return self.fs is not None and not digest.startswith(MEMORY_PREFIX) and digest not in self.lost

    def available(self, record: RunRecord) -> bool:
        """Whether every value of a record can still be loaded (memory-only ones die with the
        process). With a storage behind it, only those in memory and the lost ones need a
        look: asked for every component before each cell, a look at every name of a deep
        pipeline's records cost more than the cell."""
        digests = record.namespace.values()
        if self.fs is None:
            return all(self.has_value(d) for d in digests)
        if self.lost and not all(self.has_value(d) for d in self.lost.intersection(digests)):
            return False
        memory_only = self._in_memory.get(record.run_id)
        return all(d in self.memory_values for d in (_memory_only(record) if memory_only is None else memory_only))

    def states(self, graph, remote: bool = False) -> dict[str, str]:
        """Each component of a validated pipeline graph (linkkernel.graph) against the runs
        kept here, by the staleness rule: what the kernel runs and the cache exports.
        `remote`: a remote store's records are listed first (`refresh`), for the user asking."""
        from linkkernel.graph import run_order

        self.refresh(remote)
        order = run_order(graph)
        components = {n: graph.nodes[n]["component"] for n in order}
        records = {n: self.get(n) for n in order}
        return states(
            order,
            {n: c.parents for n, c in components.items()},
            {n: code_hash(c.source) for n, c in components.items()},
            records,
            {n: r is not None and self.available(r) for n, r in records.items()},
        )

    def unfresh(self, graph, targets: Iterable[str], anyway: Iterable[str] = ()) -> set[str]:
        """Those of `targets` and their ancestors in a validated pipeline `graph` that are not
        fresh by `states`. Walked up from the targets, stopping at components known fresh:
        in a Run All each cell's ancestors are, and asking `states` for the whole ancestry
        before each cell made the cost per cell grow with the depth. What is known fresh stays
        so until its record or an ancestor's changes (`_keep`: a run, an import read by
        `refresh`), a value is lost, the cache is cleared, or the graph is another (the
        declarations changed): each of those drops it.

        A remote store is listed (`refresh`) when one of them would run, but for those that
        run `anyway` (an executed cell's own component): a teammate on the team cache may
        have made it since the kernel read the records."""
        self.refresh()
        stale = self._unfresh(graph, targets)
        if stale.difference(anyway) and not self._local and self.refresh(remote=True):
            stale = self._unfresh(graph, targets)
        return stale

    def _unfresh(self, graph, targets: Iterable[str]) -> set[str]:
        from linkkernel.graph import with_ancestors

        with self._lock:
            if graph is not self._fresh_graph:
                self._fresh_graph, self._fresh = graph, set()
            fresh = self._fresh
            region = with_ancestors(graph, targets, done=fresh)  # a component known fresh has its ancestors so
            for name in region:
                component = graph.nodes[name]["component"]
                record = self.records.get(name)
                now = state(
                    record, list(component.parents), code_hash(component.source), self.records.get,
                    fresh.__contains__, lambda: self.available(record),
                )
                if now == FRESH:
                    fresh.add(name)
            return {name for name in region if name not in fresh}

    def blob(self, digest: str) -> Blob:
        """The blob named `digest`; LostValue when the storage lost it or it does not match."""
        blob = self.blobs.get(digest)
        if blob is None:
            if self.fs is None or digest.startswith(MEMORY_PREFIX):
                raise LostValue(digest, f"cached value {digest[:16]} is no longer available")
            try:
                with self.fs.open(self._blob_path(digest), "rb") as f:
                    blob = decode_blob(f.read(), digest)
            except (OSError, ValueError) as exc:
                raise LostValue(digest, f"cannot read cached value {digest[:16]} from {self.root}: {exc}") from exc
            if blob is None:
                raise LostValue(digest, f"cached value {digest[:16]} in {self.root} is corrupt; run '%link cache clear' and run again")
            blob = freeze(blob)
            self.blobs[digest] = blob
        return blob

    def lose(self, digest: str) -> None:
        """Take a value the storage failed to give back for gone: the components whose runs
        hold it are stale (`available`), and the next run that makes it writes it again.
        A blob read whole that its own code cannot unpickle goes from memory too."""
        with self._lock:
            self.lost.add(digest)
            self.blobs.pop(digest, None)
            self._immutable.pop(digest, None)
            self._fresh = set()  # whichever records hold it are stale now

    def load(self, digest: str, namespace: dict[str, Any]) -> tuple[Any, Loaded | None]:
        """A private copy of the value named by `digest`, to live in `namespace`, and how it was loaded.

        Large buffers are mapped copy-on-write rather than copied; a memory-only value is the
        kept one itself, which `private` copies once the namespace it is for is complete.
        """
        if digest in self.memory_values:
            return self.memory_values[digest], None
        loaded = self._immutable.get(digest)
        if loaded is None:
            loaded = Loaded(self.blob(digest), namespace)
            if type(loaded.value) in IMMUTABLE and len(loaded.blob.stream) <= _SMALL and not loaded.blob.buffers:
                self._immutable[digest] = loaded
        return loaded.value, loaded

    def immutables(self, digests: dict[str, str]) -> dict[str, Loaded]:
        """Of `digests` (name -> digest), the numbers and strings `load` loaded before, as loaded."""
        loaded = self._immutable
        return {name: found for name, digest in digests.items() if (found := loaded.get(digest)) is not None}

    def private(self, kept: dict[str, tuple[str, Any]]) -> dict[str, Any]:
        """Copies, for one run, of the memory-only values it loaded (name -> (digest, value)),
        so that a child mutating one never changes its parent's cached value (SPEC §3), as
        a blob's copy cannot. Copied together, so names holding one object still do. Made
        once the run's namespace holds its other inputs: a class the notebook defined copies
        itself with the globals of where it is loaded. A value that cannot be copied is
        left out and its digest joins `shared` (the runner warns)."""
        memo: dict[int, Any] = {}
        copies = {}
        for name, (digest, value) in kept.items():
            if digest in self.shared:
                continue
            try:
                copies[name] = deep_copy(value, memo)
            except Exception:  # noqa: BLE001 - deepcopy runs the value's own code; any refusal means "share it"
                self.shared.add(digest)
        return copies

    def clear(self) -> None:
        """Forget every stored run, in the storage first: a LinkError when it refuses (a
        read-only folder), with the runs kept here as they were."""
        self.flush()
        if self.fs is not None and self.fs.exists(self.root):
            try:
                self.fs.rm(self.root, recursive=True)
            except OSError as exc:
                raise LinkError(f"cannot clear the component cache at {self.root}: {plain_reason(exc)}") from None
        with self._lock:
            self.records.clear()
            self.blobs.clear()
            self._immutable.clear()
            self.memory_values.clear()
            self.shared.clear()
            self._refs.clear()
            self._made.clear()
            self._in_memory.clear()
            self._released.clear()
            self._unnamed.clear()
            self._mine.clear()
            self._fresh = set()
