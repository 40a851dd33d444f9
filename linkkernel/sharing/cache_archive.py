"""Component results as a signed `.tar.gz`, and back into a cache store (SPEC §6).

`linkkernel cache export NB -o cache.tar.gz` / `%link cache export PATH` pack every fresh
component's run record (its code hash, parent runs and stored outputs) and value blobs, plus a
manifest: format version, per-component code hash and parent run ids, Python and key package
versions, sha256 and size of every file. The manifest is signed with the user's key
(`linkkernel.keys`). `cache import` puts the runs whose code matches the importing notebook
into its store, so they are fresh and do not run; the others are listed as stale.

An archive is hostile until proven otherwise. It is read as a stream and no entry name ever
becomes a filesystem path: entries go through checks (no absolute path, `..`, link, device;
listed in the signed manifest; exact size and sha256) into memory, and only once the whole
archive is verified do records and blobs enter the store through its own API. Sizes come from
the manifest and are bounded before anything is decompressed, which stops decompression bombs.
Blobs are checked against their content digest too, and nothing is ever unpickled here.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import re
import sys
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import IO, Any

from linkkernel import __version__
from linkkernel.declarations import NAME_PATTERN, NOTEBOOK_ENCODING
from linkkernel.errors import LinkError
from linkkernel.sharing.commandline import output_path, parse_magic_args

FORMAT = "linkkernel-cache"
VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 16 * 2**20
DEFAULT_MAX_SIZE = 16 * 2**30
PROGRESS_FROM_BYTES = 16 * 2**20
ENTRY_OVERHEAD = 16 * 1024  # tar header, pax header, padding and read-ahead allowed per entry
KEY_PACKAGES = ("cloudpickle", "numpy", "pandas", "pyarrow", "polars", "scipy", "scikit-learn", "torch")
HEX64 = r"[0-9a-f]{64}"
NAME_KEY = NAME_PATTERN.pattern.removesuffix(r"\Z") + "$"
TRUST_HINT = "import it only if you trust where it came from, with --trust"

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["format", "version", "python", "packages", "components", "files"],
    "properties": {
        "python": {"type": "string"},
        "packages": {"type": "object", "additionalProperties": {"type": "string"}},
        "key_id": {"type": "string"},
        "components": {
            "type": "object",
            "propertyNames": {"pattern": NAME_KEY},
            "additionalProperties": {
                "type": "object",
                "required": ["code_hash", "run_id", "parents", "blobs"],
                "properties": {
                    "code_hash": {"type": "string", "pattern": f"^{HEX64}$"},
                    "run_id": {"type": "string"},
                    "parents": {"type": "object", "additionalProperties": {"type": "string"}},
                    "blobs": {"type": "array", "items": {"type": "string", "pattern": f"^{HEX64}$"}},
                },
            },
        },
        "skipped": {  # shown to the importer: one line of printable text each
            "type": "object",
            "propertyNames": {"pattern": NAME_KEY},
            "additionalProperties": {"type": "string", "maxLength": 1000, "pattern": "^[^\\x00-\\x1f\\x7f]*$"},
        },
        "files": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["sha256", "size"],
                "properties": {
                    "sha256": {"type": "string", "pattern": f"^{HEX64}$"},
                    "size": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
}


class ArchiveError(LinkError):
    """An archive is refused: hostile, corrupt, foreign or not for this notebook."""


class Progress:
    """Bytes moved; the CLI shows a tqdm bar for large archives, the kernel shows nothing."""

    def start(self, total: int, what: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...


class TqdmProgress(Progress):
    def __init__(self) -> None:
        self.bar = None

    def start(self, total: int, what: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=what, file=sys.stderr,
                        disable=total < PROGRESS_FROM_BYTES, leave=False)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- what is exportable


def component_states(graph, store) -> dict[str, str]:
    """Each component's state against `store`, by the engine's own staleness rule, with the
    runs others wrote into a remote store since it was opened."""
    return store.states(graph, remote=True)


def _memory_only(record) -> list[str]:
    from linkkernel.store import MEMORY_PREFIX

    return sorted(n for n, d in record.namespace.items() if d.startswith(MEMORY_PREFIX))


def package_versions() -> dict[str, str]:
    """Versions of the packages whose pickles matter, among those installed."""
    found = {"linkkernel": __version__}
    for name in KEY_PACKAGES:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


# ---------------------------------------------------------------- export


@dataclass
class ExportResult:
    exported: list[str]
    skipped: dict[str, str]
    size: int


def _tar_member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info


class _HashingWriter:
    """A file-like sink that keeps only the sha256 and the size of what is written."""

    def __init__(self) -> None:
        self.sha256, self.size = hashlib.sha256(), 0

    def write(self, data) -> None:
        self.sha256.update(data)
        self.size += memoryview(data).nbytes


def _encoded(blob) -> bytes:
    """The store's own blob encoding: archived blobs are byte for byte what the store keeps."""
    from linkkernel.store import write_blob

    buffer = io.BytesIO()
    write_blob(buffer, blob)
    return buffer.getvalue()


def export_archive(graph, store, out: IO[bytes], key: bytes, progress: Progress | None = None) -> ExportResult:
    """Write the fresh components' runs of `graph` from `store` to `out` as a signed archive."""
    from linkkernel.graph import run_order
    from linkkernel.keys import fingerprint, sign
    from linkkernel.staleness import FRESH
    from linkkernel.store import write_blob

    progress = progress or Progress()
    store.flush()
    state = component_states(graph, store)
    exported, skipped = [], {}
    for name in run_order(graph):
        record = store.get(name)
        if state[name] == FRESH and not _memory_only(record):
            exported.append(name)
        elif record is None:
            skipped[name] = "never ran"
        elif _memory_only(record):
            skipped[name] = f"values kept in memory only: {', '.join(_memory_only(record))}"
        else:
            skipped[name] = state[name]

    records: dict[str, bytes] = {}
    digests: dict[str, None] = {}
    components: dict[str, Any] = {}
    for name in exported:
        record = store.get(name)
        records[f"records/{name}.json"] = json.dumps(record.to_json(), sort_keys=True).encode()
        blobs = list(dict.fromkeys(record.namespace.values()))
        digests.update(dict.fromkeys(blobs))
        components[name] = {"code_hash": record.code_hash, "run_id": record.run_id,
                            "parents": dict(record.parents), "blobs": blobs}
    files = {path: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for path, data in records.items()}
    for digest in digests:  # hashed as it is encoded, so only one blob's bytes exist at a time
        hashing = _HashingWriter()
        write_blob(hashing, store.blob(digest))
        files[f"blobs/{digest}"] = {"sha256": hashing.sha256.hexdigest(), "size": hashing.size}
    now = int(time.time())
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "generator": f"linkkernel {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "python": platform.python_version(),
        "packages": package_versions(),
        "key_id": fingerprint(key),
        "components": components,
        "skipped": skipped,
        "files": files,
    }
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    signature = (sign(key, manifest_bytes) + "\n").encode()
    total = sum(f["size"] for f in files.values())
    progress.start(total, "cache export")
    try:
        # Level 1: as small as level 9 on arrays of numbers and about 200 times faster (level 9: 1 MB/s).
        with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as tar:
            for name, data in ((MANIFEST, manifest_bytes), (SIGNATURE, signature), *records.items()):
                tar.addfile(_tar_member(name, len(data), now), io.BytesIO(data))
            for digest in digests:
                data = _encoded(store.blob(digest))
                tar.addfile(_tar_member(f"blobs/{digest}", len(data), now), io.BytesIO(data))
                progress.advance(len(data))
    finally:
        progress.close()
    return ExportResult(exported, skipped, total)


# ---------------------------------------------------------------- reading an archive


@dataclass
class VerifiedArchive:
    """An archive whose every byte matched its signed manifest; nothing in it was unpickled."""

    manifest: dict[str, Any]
    signed_by_user: bool
    records: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, Any] = field(default_factory=dict)


def _entry_problem(member: tarfile.TarInfo) -> str | None:
    """Why an entry can never be part of an archive we extract, before looking at the manifest."""
    name = member.name
    if name.startswith("/") or re.match(r"[A-Za-z]:[\\/]", name):
        return "has an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "points outside the archive ('..')"
    if member.issym():
        return "is a symbolic link"
    if member.islnk():
        return "is a hard link"
    if member.ischr() or member.isblk():
        return "is a device"
    if member.isfifo():
        return "is a FIFO"
    if member.isdir():
        return "is a directory"
    if not member.isfile():
        return "is not a regular file"
    return None


def _read_exact(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    data = f.read(member.size) if f is not None else b""
    if len(data) != member.size:
        raise EOFError("entry cut short")
    return data


@cache
def _manifest_validator() -> Callable[[Any], Any]:
    """fastjsonschema (which nbformat requires): it imports in milliseconds, where jsonschema
    can take a second, and `cache import` needs nothing else from either."""
    import fastjsonschema

    return fastjsonschema.compile(MANIFEST_SCHEMA)


def _check_manifest(data: bytes, where: str, max_size: int) -> dict[str, Any]:
    import fastjsonschema

    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # nested too deeply: RecursionError
        raise ArchiveError(f"{where}: corrupt archive: {MANIFEST} is not valid JSON") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{where}: not a linkkernel cache archive ({MANIFEST} has no format {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ArchiveError(
            f"{where}: unsupported cache archive version {manifest.get('version')!r} "
            f"(this linkkernel reads version {VERSION})"
        )
    try:
        _manifest_validator()(manifest)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise ArchiveError(f"{where}: corrupt archive: {MANIFEST}: {exc.message}") from exc
    for path in manifest["files"]:
        if not (re.fullmatch(rf"blobs/{HEX64}", path) or
                (path.startswith("records/") and path.endswith(".json") and path[8:-5] in manifest["components"])):
            raise ArchiveError(f"{where}: refused: manifest lists {path!r}, which is not part of a linkkernel cache")
    total = sum(f["size"] for f in manifest["files"].values())
    if total > max_size:
        raise ArchiveError(
            f"{where}: refused: it would unpack to {total} bytes, over the limit of {max_size} bytes (--max-size)"
        )
    return manifest


class _Bounded:
    """The decompressed stream, cut off once it grows past what the manifest accounts for.

    tarfile reads extended headers (pax, GNU long names) whole into memory before we see the
    entry they belong to; bounding the stream itself is what stops a decompression bomb there.
    """

    def __init__(self, raw: IO[bytes], limit: int, where: str) -> None:
        self.raw, self.limit, self.where, self.consumed = raw, limit, where, 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.limit - self.consumed + 1
        data = self.raw.read(min(size, self.limit - self.consumed + 1))
        self.consumed += len(data)
        if self.consumed > self.limit:
            raise ArchiveError(
                f"{self.where}: refused: it unpacks to more than {self.limit} bytes, more than its "
                "manifest accounts for (a decompression bomb?)"
            )
        return data


def read_archive(
    source: IO[bytes], where: str, key: bytes | None, trust: bool = False,
    max_size: int = DEFAULT_MAX_SIZE, progress: Progress | None = None,
) -> VerifiedArchive:
    """Stream and verify an archive. Raises ArchiveError (one line) at the first problem."""
    import gzip

    progress = progress or Progress()
    stream = _Bounded(gzip.GzipFile(fileobj=source, mode="rb"), MAX_MANIFEST_BYTES + ENTRY_OVERHEAD * 4, where)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return _read_members(tar, stream, where, key, trust, max_size, progress)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{where}: truncated or corrupt archive; nothing imported") from exc
    finally:
        progress.close()


def _read_members(tar, stream: _Bounded, where: str, key: bytes | None, trust: bool, max_size: int, progress: Progress) -> VerifiedArchive:
    from linkkernel.keys import verify

    members = iter(tar)
    first = next(members, None)
    if first is None or first.name != MANIFEST or not first.isfile():
        raise ArchiveError(f"{where}: not a linkkernel cache archive (it does not start with {MANIFEST})")
    if first.size > MAX_MANIFEST_BYTES:
        raise ArchiveError(f"{where}: refused: {MANIFEST} is {first.size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
    manifest_bytes = _read_exact(tar, first)
    manifest = _check_manifest(manifest_bytes, where, max_size)
    files = manifest["files"]
    stream.limit = stream.consumed + sum(f["size"] for f in files.values()) + ENTRY_OVERHEAD * (len(files) + 2)

    member = next(members, None)
    signed_by_user = False
    if member is not None and member.name == SIGNATURE and member.isfile() and member.size <= 1024:
        signed_by_user = key is not None and verify(key, manifest_bytes, _read_exact(tar, member).decode("ascii", "replace"))
        if not signed_by_user and not trust:
            raise ArchiveError(
                f"{where}: refused: its signature does not match your linkkernel key (signed with "
                f"another key, or changed since); {TRUST_HINT}"
            )
        member = next(members, None)
    elif not trust:
        raise ArchiveError(f"{where}: refused: the archive is not signed; {TRUST_HINT}")

    progress.start(sum(f["size"] for f in files.values()), "cache import")
    content: dict[str, bytes] = {}
    while member is not None:
        name = member.name
        problem = _entry_problem(member)
        if problem:
            raise ArchiveError(f"{where}: refused: entry {name!r} {problem}")
        if name not in files:
            raise ArchiveError(f"{where}: refused: entry {name!r} is not listed in the manifest")
        if name in content:
            raise ArchiveError(f"{where}: refused: entry {name!r} appears twice")
        if member.size != files[name]["size"]:
            raise ArchiveError(
                f"{where}: refused: entry {name!r} is {member.size} bytes, the manifest says {files[name]['size']}"
            )
        data = _read_exact(tar, member)
        if hashlib.sha256(data).hexdigest() != files[name]["sha256"]:
            raise ArchiveError(f"{where}: refused: entry {name!r} does not match its checksum in the manifest")
        content[name] = data
        progress.advance(len(data))
        member = next(members, None)
    missing = sorted(set(files) - set(content))
    if missing:
        raise ArchiveError(f"{where}: truncated or incomplete archive: {missing[0]!r} is listed but missing")
    return _decode(manifest, content, signed_by_user, where)


def _decode(manifest: dict[str, Any], content: dict[str, bytes], signed_by_user: bool, where: str) -> VerifiedArchive:
    """Records from JSON and blobs checked against their digests; values stay pickled."""
    from linkkernel.staleness import RunRecord
    from linkkernel.store import decode_blob

    archive = VerifiedArchive(manifest, signed_by_user)
    for path, data in content.items():
        if path.startswith("blobs/"):
            digest = path.removeprefix("blobs/")
            try:
                blob = decode_blob(data, digest)
            except (ValueError, RecursionError) as exc:  # a header nested too deeply: RecursionError
                raise ArchiveError(f"{where}: corrupt archive: {path!r} is not a linkkernel blob") from exc
            if blob is None:
                raise ArchiveError(f"{where}: corrupt archive: {path!r} does not hold the value its digest names")
            archive.blobs[digest] = blob
    for name, entry in manifest["components"].items():
        path = f"records/{name}.json"
        if path not in content:
            raise ArchiveError(f"{where}: corrupt archive: component {name!r} has no {path!r}")
        try:
            record = RunRecord.from_json(json.loads(content[path]))
        except (ValueError, TypeError, RecursionError) as exc:
            raise ArchiveError(f"{where}: corrupt archive: {path!r} is not a run record") from exc
        same = (record.name, record.code_hash, record.run_id, record.parents) == (
            name, entry["code_hash"], entry["run_id"], entry["parents"])
        if not same or not record.ok:
            raise ArchiveError(f"{where}: corrupt archive: {path!r} disagrees with the manifest")
        absent = sorted(d for d in record.namespace.values() if d not in archive.blobs)
        if absent:
            raise ArchiveError(f"{where}: corrupt archive: {path!r} needs blob {absent[0]} that the archive lacks")
        archive.records[name] = record
    return archive


# ---------------------------------------------------------------- import into a store


@dataclass
class ImportResult:
    imported: list[str]
    stale: dict[str, str]
    notes: list[str]
    # Components of the notebook the exporter left out, with the exporter's reason: they run here.
    left_out: dict[str, str] = field(default_factory=dict)
    # Why the imported runs could not be written to the store (a kernel keeps them in memory).
    unwritten: str | None = None


def _environment_notes(manifest: dict[str, Any]) -> list[str]:
    """Differences that may stop values from loading here: Python minor version, key packages."""
    notes = []
    here = platform.python_version()
    if manifest["python"].split(".")[:2] != here.split(".")[:2]:
        notes.append(f"made with Python {manifest['python']} (this is {here}); values may not load")
    ours = package_versions()
    for name, version in sorted(manifest["packages"].items()):
        if name in ours and name != "linkkernel" and ours[name] != version:
            notes.append(f"made with {name} {version} (this has {ours[name]})")
    return notes


def install_archive(archive: VerifiedArchive, graph, store, where: str = "the archive", in_kernel: bool = False) -> ImportResult:
    """Put the archive's runs that are fresh for `graph` into `store`; list the others as stale.

    A run is fresh when its code hash and parents match the notebook and its parents are
    fresh too (after the import), by the engine's staleness rule.
    """
    from linkkernel.graph import run_order
    from linkkernel.staleness import FRESH, code_hash, states

    order = run_order(graph)
    comps = {n: graph.nodes[n]["component"] for n in order}
    records = {n: archive.records.get(n) or store.get(n) for n in order}
    available = {n: n in archive.records or (r is not None and store.available(r)) for n, r in records.items()}
    state = states(order, {n: c.parents for n, c in comps.items()},
                   {n: code_hash(c.source) for n, c in comps.items()}, records, available)
    # Why the exporter left a component out (kept in memory only, never ran): the importer's
    # children of it run again, and the importer should learn why from the archive itself.
    skipped = archive.manifest.get("skipped", {})
    imported, stale = [], {}
    for name in order:
        if name not in archive.records:
            continue
        record = archive.records[name]
        if state[name] == FRESH:
            imported.append(name)
        elif record.code_hash != code_hash(comps[name].source):
            stale[name] = "code differs from the notebook"
        elif list(record.parents) != list(comps[name].parents):
            stale[name] = "its parents differ from the notebook's"
        else:
            stale[name] = _stale_parent(record, state, archive, skipped)
    for name in sorted(set(archive.records) - set(comps)):
        stale[name] = "not declared in the notebook"
    left_out = {n: skipped[n] for n in order if n in skipped and n not in archive.records and state[n] != FRESH}
    refused = False
    for name in imported:
        record = archive.records[name]
        refused |= not store.put(record, {d: archive.blobs[d] for d in record.namespace.values()}, {})
    unwritten = store.unwritten(store.write_failures(), refused)
    if unwritten and not in_kernel:  # nothing outlives this process
        raise ArchiveError(f"{where}: import failed: cannot write to the cache store {store.location} ({unwritten})")
    return ImportResult(imported, stale, _environment_notes(archive.manifest), left_out, unwritten)


def _stale_parent(record, state: dict[str, str], archive: VerifiedArchive, skipped: dict[str, str]) -> str:
    """Why a run whose code and parents match is stale: a parent is. One the archive holds is
    listed as stale itself; one it lacks is named, with the exporter's reason when known."""
    from linkkernel.staleness import FRESH

    parent = next((p for p in record.parents if state.get(p) != FRESH), None)
    if parent is None or parent in archive.records:
        return "a parent is stale"
    if parent in skipped:
        return f"its parent {parent!r} is not in the archive: {skipped[parent]}"
    return f"its parent {parent!r} is not in the archive, nor fresh here"


# ---------------------------------------------------------------- commands


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500M, 20G)")
    return int(match[1]) * 1024 ** " KMGT".index(match[2].upper() or " ")


def configure_cache(parser: argparse.ArgumentParser, in_kernel: bool = False) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION",
                                    parser_class=type(parser))
    export = actions.add_parser("export", help="write the fresh components' results to a .tar.gz")
    if in_kernel:
        export.add_argument("output", metavar="PATH", type=output_path, help="archive to write")
    else:
        export.add_argument("notebook", metavar="NB.ipynb", help="notebook whose cache to export")
        export.add_argument("-o", "--output", required=True, metavar="cache.tar.gz", type=output_path, help="archive to write (- for stdout)")
    importer = actions.add_parser("import", help="load an archive's results into the cache store")
    importer.add_argument("archive", metavar="PATH" if in_kernel else "FILE", help="archive to import")
    if not in_kernel:
        importer.add_argument("--notebook", required=True, metavar="NB.ipynb", help="notebook the results are for")
    importer.add_argument("--trust", action="store_true",
                          help="accept an archive that is unsigned or signed with another key")
    importer.add_argument("--max-size", type=_parse_size, default=DEFAULT_MAX_SIZE, metavar="SIZE",
                          help="refuse archives that unpack to more than this (default 16G)")
    if not in_kernel:
        for sub in (export, importer):
            sub.add_argument("--cache", metavar="URL", help="cache store URL (default: the user cache directory)")
    if in_kernel:
        actions.add_parser("clear", help="forget every stored run of this notebook")
    parser.set_defaults(func=run_cache)


def _notebook_graph(path: str):
    """The notebook's pipeline, read as plain JSON: importing nbformat costs a second here
    (it loads jsonschema) and components need nothing it adds."""
    from linkkernel.declarations import notebook_components, notebook_problem
    from linkkernel.graph import build_graph

    try:
        nb = json.loads(Path(path).read_bytes().decode(NOTEBOOK_ENCODING))
    except FileNotFoundError as exc:
        raise LinkError(f"{path}: no such notebook") from exc
    except OSError as exc:
        raise LinkError(f"{path}: cannot read: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise LinkError(f"{path}: not a readable notebook (not valid JSON)") from exc
    except RecursionError:
        raise LinkError(f"{path}: not a readable notebook (JSON nested too deeply)") from None
    problem = notebook_problem(nb)
    if problem:
        raise LinkError(f"{path}: {problem}")
    try:
        return build_graph(notebook_components(nb), "the notebook")
    except LinkError as exc:
        raise LinkError(f"{path}: {exc}") from exc


def _cli_store(args: argparse.Namespace):
    from linkkernel.store import CacheStore, default_cache_url

    # Keyed by the path as given, not resolved: the kernel keys it by the path jupyter_server
    # names (JPY_SESSION_NAME), which keeps the symlinks the user browsed through.
    return CacheStore(args.cache or default_cache_url(), os.path.abspath(args.notebook)).usable()


def do_export(graph, store, output: str, progress: Progress, notebook: str | None) -> str:
    """Write the archive atomically (never over `notebook`) and return the line that reports it."""
    from linkkernel.keys import user_key
    from linkkernel.sharing.commandline import atomic_output

    key = user_key()
    with atomic_output(output, (notebook,)) as out:
        result = export_archive(graph, store, out, key, progress)
    line = f"exported {len(result.exported)} component{'s' * (len(result.exported) != 1)} to {output}"
    line += f": {', '.join(result.exported)}" if result.exported else ""
    if result.skipped:
        line += "\nnot exported: " + "; ".join(f"{n} ({why})" for n, why in result.skipped.items())
    return line


def do_import(path: str, graph, store, trust: bool, max_size: int, progress: Progress, in_kernel: bool = False) -> str:
    """Verify the archive completely, then install it; returns the lines that report it.
    `in_kernel`: the store is a running kernel's, which keeps what it cannot write in memory."""
    from linkkernel.keys import existing_user_key

    key = existing_user_key()
    try:
        source = open(path, "rb")
    except FileNotFoundError as exc:
        raise ArchiveError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read: {exc.strerror}") from exc
    with source:
        archive = read_archive(source, path, key, trust, max_size, progress)
    result = install_archive(archive, graph, store, path, in_kernel)
    lines = [f"imported {len(result.imported)} component{'s' * (len(result.imported) != 1)} "
             f"from {path} into {store.location}" + (f": {', '.join(result.imported)}" if result.imported else "")]
    if result.unwritten:
        lines[0] = (f"imported {len(result.imported)} component{'s' * (len(result.imported) != 1)} from {path}, "
                    f"kept in memory only: cannot write the cache store {store.location} ({result.unwritten}); "
                    f"after a restart they run again: {', '.join(result.imported)}")
    if result.stale:
        lines.append("stale, not imported: " + "; ".join(f"{n} ({why})" for n, why in result.stale.items()))
    if result.left_out:
        lines.append("not in the archive, so they run here: "
                     + "; ".join(f"{n} ({why})" for n, why in result.left_out.items()))
    lines += [f"note: {note}" for note in result.notes]
    if not archive.signed_by_user:
        lines.append("note: imported with --trust (the archive is not signed with your key)")
    return "\n".join(lines)


def run_cache(args: argparse.Namespace) -> int:
    """`linkkernel cache export|import`."""
    graph = _notebook_graph(args.notebook)
    store = _cli_store(args)
    if args.action == "export":
        from linkkernel.sharing.commandline import report_stream

        report = report_stream(args.output)
        print(do_export(graph, store, args.output, TqdmProgress(), args.notebook), file=report)
    else:
        print(do_import(args.archive, graph, store, args.trust, args.max_size, TqdmProgress()))
    return 0


def cache_magic(kernel, argv: list[str]) -> None:
    """`%link cache export PATH | import PATH [--trust] | clear` in the kernel's own store."""
    args = parse_magic_args("%link cache", lambda p: configure_cache(p, in_kernel=True), argv)
    if args is None:
        return
    if args.action == "clear":
        from linkkernel.pipeline_magics import cache as clear

        clear(kernel, ["clear"])
        return
    runner = kernel.runner
    if args.action == "export":
        print(do_export(runner.graph(), runner.store, args.output, Progress(), runner.sources.notebook_path))
    else:
        print(do_import(args.archive, runner.graph(), runner.store, args.trust, args.max_size, Progress(), in_kernel=True))
