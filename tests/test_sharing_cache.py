"""Cache archives (SPEC §6): one kernel's results used by another without re-running, and a
corpus of hostile and broken archives that must be refused in one line with nothing written."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat
import pytest
from nbformat import v4

from support import Kernel, kernel_env

from linkkernel import keys
from linkkernel.sharing import cache_archive


def write_notebook(path: Path, clean_code: str = "rows = [r * 2 for r in rows]") -> None:
    """load -> clean -> train; every run appends its name to runs.txt in the kernel's working
    directory, so tests count runs (a relative path: both users' notebooks hold the same code)."""
    nb = v4.new_notebook()
    nb.cells = [
        v4.new_code_cell("open('runs.txt', 'a').write('load\\n')\nrows = list(range(5))",
                         metadata={"tags": ["component:load"]}, id="c-load"),
        v4.new_code_cell(f"open('runs.txt', 'a').write('clean\\n')\n{clean_code}",
                         metadata={"tags": ["component:clean", "parent:load"]}, id="c-clean"),
        v4.new_code_cell("open('runs.txt', 'a').write('train\\n')\nmodel = sum(rows)",
                         metadata={"tags": ["component:train", "parent:clean"]}, id="c-train"),
    ]
    nbformat.write(nb, path)


def run_cells(kernel: Kernel, path: Path) -> None:
    for cell in nbformat.read(path, as_version=4).cells:
        result = kernel.execute(cell.source, metadata=dict(cell.metadata), cell_id=cell.id)
        assert result.status == "ok", result.traceback_text


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linkkernel.cli", *args], cwd=cwd,
                          env=kernel_env(**env), capture_output=True, text=True, timeout=60)


REPORT = {"tags": ["component:report", "parent:train"]}


@pytest.fixture(scope="module")
def producer(tmp_path_factory, link_kernelspec):
    """User A runs the pipeline once and exports the cache from the kernel."""
    home = tmp_path_factory.mktemp("producer")
    runs = home / "runs.txt"
    write_notebook(home / "nb.ipynb")
    kernel = Kernel(cwd=str(home), XDG_CACHE_HOME=str(home / "cache"), LINKKERNEL_NOTEBOOK=str(home / "nb.ipynb"))
    try:
        run_cells(kernel, home / "nb.ipynb")
        exported = kernel.execute("%link cache export cache.tar.gz")
        assert exported.status == "ok", exported.traceback_text
        assert exported.stdout == "exported 3 components to cache.tar.gz: load, clean, train\n"
    finally:
        kernel.shutdown()
    assert runs.read_text() == "load\nclean\ntrain\n"
    return home


def consumer_dir(tmp_path: Path, producer: Path, **notebook) -> tuple[Path, Path]:
    """User B: the same notebook elsewhere, their own runs file and cache directory."""
    runs = tmp_path / "runs.txt"
    write_notebook(tmp_path / "nb.ipynb", **notebook)
    shutil.copy(producer / "cache.tar.gz", tmp_path / "cache.tar.gz")
    return tmp_path / "nb.ipynb", runs


def test_cli_import_then_another_kernel_runs_nothing_it_imported(tmp_path: Path, producer: Path):
    nb, runs = consumer_dir(tmp_path, producer)
    imported = cli("cache", "import", "cache.tar.gz", "--notebook", "nb.ipynb", cwd=tmp_path,
                   XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("imported 3 components from cache.tar.gz into ")
    assert imported.stdout.endswith(": load, clean, train\n")

    kernel = Kernel(cwd=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"), LINKKERNEL_NOTEBOOK=str(nb))
    try:
        status = kernel.execute("%link status").stdout
        assert [line.split()[:3] for line in status.splitlines()[1:]] == [
            ["load", "-", "fresh"], ["clean", "load", "fresh"], ["train", "clean", "fresh"]]
        report = kernel.execute("print(model, rows)", metadata=REPORT, cell_id="c-report")
        assert report.status == "ok", report.traceback_text
        assert report.stdout == "20 [0, 2, 4, 6, 8]\n"
    finally:
        kernel.shutdown()
    assert not runs.exists(), "no imported ancestor ran again"


def test_magic_import_needs_trust_for_another_users_key(tmp_path: Path, producer: Path):
    nb, runs = consumer_dir(tmp_path, producer)
    cache = tmp_path / "cache"
    kernel = Kernel(cwd=str(tmp_path), XDG_CACHE_HOME=str(cache), LINKKERNEL_NOTEBOOK=str(nb),
                    JUPYTER_DATA_DIR=str(tmp_path / "other-user-data"))
    try:
        refused = kernel.execute("%link cache import cache.tar.gz")
        assert refused.status == "error"
        assert refused.traceback_text == (
            "ArchiveError: cache.tar.gz: refused: its signature does not match your linkkernel key "
            "(signed with another key, or changed since); import it only if you trust where it came from, with --trust"
        )
        assert not (cache / "linkkernel").exists()
        assert not (tmp_path / "other-user-data").exists(), "checking a signature creates no key"

        trusted = kernel.execute("%link cache import cache.tar.gz --trust")
        assert trusted.status == "ok", trusted.traceback_text
        lines = trusted.stdout.splitlines()
        assert lines[0].startswith("imported 3 components from cache.tar.gz into ")
        assert lines[-1] == "note: imported with --trust (the archive is not signed with your key)"
        report = kernel.execute("print(model)", metadata=REPORT, cell_id="c-report")
        assert report.stdout == "20\n"
        assert not runs.exists()

        cleared = kernel.execute("%link cache clear")
        assert cleared.status == "ok" and cleared.stdout.startswith("cleared the component cache")
        rerun = kernel.execute("print(model)", metadata=REPORT, cell_id="c-report")
        assert rerun.stdout == "20\n"
        assert runs.read_text() == "load\nclean\ntrain\n"
    finally:
        kernel.shutdown()


def test_components_whose_code_differs_are_listed_stale(tmp_path: Path, producer: Path):
    consumer_dir(tmp_path, producer, clean_code="rows = [r * 3 for r in rows]")
    imported = cli("cache", "import", "cache.tar.gz", "--notebook", "nb.ipynb", cwd=tmp_path,
                   XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert imported.returncode == 0, imported.stderr
    lines = imported.stdout.splitlines()
    assert lines[0].endswith(": load") and lines[0].startswith("imported 1 component from cache.tar.gz")
    assert lines[1] == "stale, not imported: clean (code differs from the notebook); train (a parent is stale)"
    records = sorted(p.name for p in (tmp_path / "cache").rglob("records/*.json"))
    assert records == ["load.json"]


def test_cli_export_writes_a_signed_manifest(producer: Path, tmp_path: Path):
    exported = cli("cache", "export", str(producer / "nb.ipynb"), "-o", "out.tar.gz", cwd=tmp_path,
                   XDG_CACHE_HOME=str(producer / "cache"))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == "exported 3 components to out.tar.gz: load, clean, train\n"
    assert exported.stderr == "", "no progress bar for a small archive"
    with tarfile.open(tmp_path / "out.tar.gz") as tar:
        names = tar.getnames()
        manifest_bytes = tar.extractfile("manifest.json").read()
        signature = tar.extractfile("manifest.sig").read().decode()
        contents = {n: tar.extractfile(n).read() for n in names[2:]}
    assert names[:2] == ["manifest.json", "manifest.sig"]
    assert keys.verify(keys.user_key(), manifest_bytes, signature)
    manifest = json.loads(manifest_bytes)
    assert manifest["format"] == "linkkernel-cache" and manifest["version"] == 1
    assert manifest["python"] == ".".join(map(str, sys.version_info[:3]))
    assert "cloudpickle" in manifest["packages"]
    assert manifest["components"]["clean"]["parents"] == {"load": manifest["components"]["load"]["run_id"]}
    assert set(manifest["files"]) == set(contents)
    for name, data in contents.items():
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    record = json.loads(contents["records/train.json"])
    assert record["code_hash"] == manifest["components"]["train"]["code_hash"]


def test_key_file_is_private_and_reused():
    path = keys.user_key_path()
    key = keys.user_key()
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.user_key() == key and len(key) == keys.KEY_BYTES


# ---------------------------------------------------------------- hostile and broken archives


def members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def pack(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info = copy.copy(info)
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **attrs) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def resigned(entries, edit, key: bytes | None = None):
    """Change the manifest and sign it again (with the user's key unless told otherwise)."""
    manifest = json.loads(entries[0][1])
    edit(manifest)
    data = json.dumps(manifest).encode()
    signature = keys.sign(key or keys.user_key(), data).encode()
    return [(entries[0][0], data), (entries[1][0], signature), *entries[2:]]


def first_blob(entries) -> int:
    return next(i for i, (info, _) in enumerate(entries) if info.name.startswith("blobs/"))


def after_signature(entries, *extra):
    return entries[:2] + list(extra) + entries[2:]


def flip_byte(entries):
    i = first_blob(entries)
    info, data = entries[i]
    return entries[:i] + [(info, data[:-1] + bytes([data[-1] ^ 1]))] + entries[i + 1:]


def oversized(entries):
    i = first_blob(entries)
    return entries[:i] + [(entries[i][0], bytes(50 * 2**20))] + entries[i + 1:]


def pax_bomb(entries):
    info = copy.copy(entries[0][0])
    info.pax_headers = {"comment": "x" * (20 * 2**20)}
    return [(info, entries[0][1])] + entries[1:]


def missing_blob(entries):
    i = first_blob(entries)
    return entries[:i] + entries[i + 1:]


def set_record(entries, name: str, data: bytes):
    i = next(i for i, (info, _) in enumerate(entries) if info.name == name)
    entries = entries[:i] + [(entries[i][0], data)] + entries[i + 1:]

    def edit(manifest):
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    return resigned(entries, edit)


TRUST_HINT = "import it only if you trust where it came from, with --trust"
LIMIT = cache_archive.MAX_MANIFEST_BYTES + 4 * cache_archive.ENTRY_OVERHEAD

# case -> (build archive bytes from the good entries, extra CLI args, expected message after "FILE: ")
HOSTILE = {
    "absolute path": (lambda e: pack(after_signature(e, entry("/tmp/evil", b"x"))), [],
                      "refused: entry '/tmp/evil' has an absolute path"),
    "dot-dot": (lambda e: pack(after_signature(e, entry("blobs/../../evil", b"x"))), [],
                "refused: entry 'blobs/../../evil' points outside the archive ('..')"),
    "symlink": (lambda e: pack(after_signature(e, entry("records/load.json", kind=tarfile.SYMTYPE, linkname="/etc/passwd"))), [],
                "refused: entry 'records/load.json' is a symbolic link"),
    "symlink even with --trust": (lambda e: pack([e[0]] + [entry("records/x.json", kind=tarfile.SYMTYPE, linkname="/etc")] + e[2:]),
                                  ["--trust"], "refused: entry 'records/x.json' is a symbolic link"),
    "hard link": (lambda e: pack(after_signature(e, entry("records/load.json", kind=tarfile.LNKTYPE, linkname="manifest.json"))), [],
                  "refused: entry 'records/load.json' is a hard link"),
    "device": (lambda e: pack(after_signature(e, entry("blobs/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3))), [],
               "refused: entry 'blobs/null' is a device"),
    "fifo": (lambda e: pack(after_signature(e, entry("blobs/pipe", kind=tarfile.FIFOTYPE))), [],
             "refused: entry 'blobs/pipe' is a FIFO"),
    "not in manifest": (lambda e: pack(after_signature(e, entry("blobs/" + "a" * 64, b"x"))), [],
                        f"refused: entry 'blobs/{'a' * 64}' is not listed in the manifest"),
    "checksum mismatch": (lambda e: pack(flip_byte(e)), [],
                          "refused: entry '{blob}' does not match its checksum in the manifest"),
    "bigger than declared": (lambda e: pack(oversized(e)), [],
                             "refused: entry '{blob}' is 52428800 bytes, the manifest says {blob_size}"),
    "pax header bomb": (lambda e: pack(pax_bomb(e)), [],
                        f"refused: it unpacks to more than {LIMIT} bytes, more than its manifest accounts for (a decompression bomb?)"),
    "over --max-size": (lambda e: pack(e), ["--max-size", "100"],
                        "refused: it would unpack to {total} bytes, over the limit of 100 bytes (--max-size)"),
    "truncated": (lambda e: pack(e)[: len(pack(e)) // 2], [], "truncated or corrupt archive; nothing imported"),
    "not gzip": (lambda e: b"PK\x03\x04 not a tarball", [], "truncated or corrupt archive; nothing imported"),
    "missing entry": (lambda e: pack(missing_blob(e)), [], "truncated or incomplete archive: '{blob}' is listed but missing"),
    "unsigned": (lambda e: pack([e[0]] + e[2:]), [], f"refused: the archive is not signed; {TRUST_HINT}"),
    "foreign key": (lambda e: pack(resigned(e, lambda m: None, key=secrets.token_bytes(32))), [],
                    "refused: its signature does not match your linkkernel key (signed with another key, "
                    f"or changed since); {TRUST_HINT}"),
    "manifest edited after signing": (lambda e: pack([(e[0][0], e[0][1].replace(b'"size": ', b'"size":  '))] + e[1:]), [],
                                      "refused: its signature does not match your linkkernel key (signed with another key, "
                                      f"or changed since); {TRUST_HINT}"),
    "newer version": (lambda e: pack(resigned(e, lambda m: m.update(version=2))), [],
                      "unsupported cache archive version 2 (this linkkernel reads version 1)"),
    "manifest names a path outside": (
        lambda e: pack(resigned(e, lambda m: m["files"].update({"../evil": {"sha256": "0" * 64, "size": 1}}))), [],
        "refused: manifest lists '../evil', which is not part of a linkkernel cache"),
    "not a manifest first": (lambda e: pack(e[2:]), [], "not a linkkernel cache archive (it does not start with manifest.json)"),
    "manifest not json": (lambda e: pack([(e[0][0], b"{oops")] + e[1:]), ["--trust"],
                          "corrupt archive: manifest.json is not valid JSON"),
    "record not a record": (lambda e: pack(set_record(e, "records/load.json", b'{"name": "load"}')), [],
                            "corrupt archive: 'records/load.json' is not a run record"),
    "record with a malformed namespace": (
        lambda e: pack(set_record(e, "records/load.json", json.dumps(
            {**json.loads(e[2][1]), "namespace": ["rows"]}).encode())), ["--trust"],
        "corrupt archive: 'records/load.json' is not a run record"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_and_broken_archives_are_refused(case: str, producer: Path, tmp_path: Path):
    build, extra, message = HOSTILE[case]
    good = members(producer / "cache.tar.gz")
    blob_index = first_blob(good)
    manifest = json.loads(good[0][1])
    message = message.format(
        blob=good[blob_index][0].name,
        blob_size=len(good[blob_index][1]),
        total=sum(f["size"] for f in manifest["files"].values()),
    )
    write_notebook(tmp_path / "nb.ipynb")
    (tmp_path / "bad.tar.gz").write_bytes(build(good))
    result = cli("cache", "import", "bad.tar.gz", "--notebook", "nb.ipynb", *extra, cwd=tmp_path,
                 XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"linkkernel cache: bad.tar.gz: {message}\n"
    assert not (tmp_path / "cache").exists(), "nothing written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz", "nb.ipynb"]


def test_the_unmodified_archive_passes_the_same_path(producer: Path, tmp_path: Path):
    """The corpus's control: repacking the good entries unchanged imports fine."""
    write_notebook(tmp_path / "nb.ipynb")
    (tmp_path / "ok.tar.gz").write_bytes(pack(members(producer / "cache.tar.gz")))
    result = cli("cache", "import", "ok.tar.gz", "--notebook", "nb.ipynb", cwd=tmp_path,
                 XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(": load, clean, train\n")


def big_component_store(folder: Path):
    """A store filled through its own API (no kernel): one component holding 20 MiB."""
    from linkkernel.namespaces import dump
    from linkkernel.staleness import RunRecord, code_hash
    from linkkernel.store import CacheStore

    code = "big = os.urandom(20 * 2**20)"
    nb = v4.new_notebook()
    nb.cells = [v4.new_code_cell(code, metadata={"tags": ["component:big"]})]
    nbformat.write(nb, folder / "nb.ipynb")
    blob = dump("big", os.urandom(20 * 2**20))
    store = CacheStore(str(folder / "cache" / "linkkernel"), str((folder / "nb.ipynb").resolve()))
    store.put(RunRecord("big", "run-1", code_hash(code), {}, "ok", 0.0, 1.0, namespace={"big": blob.digest}),
              {blob.digest: blob}, {})
    store.flush()
    return blob


def test_large_archives_show_a_progress_bar_in_the_cli(tmp_path: Path):
    from linkkernel.store import CacheStore

    blob = big_component_store(tmp_path)
    exported = cli("cache", "export", "nb.ipynb", "-o", "big.tar.gz", cwd=tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == "exported 1 component to big.tar.gz: big\n"
    assert "cache export:" in exported.stderr

    imported = cli("cache", "import", "big.tar.gz", "--notebook", "nb.ipynb", cwd=tmp_path,
                   XDG_CACHE_HOME=str(tmp_path / "cache2"))
    assert imported.returncode == 0, imported.stderr
    assert "cache import:" in imported.stderr
    assert imported.stdout.startswith("imported 1 component from big.tar.gz")
    copy_store = CacheStore(str(tmp_path / "cache2" / "linkkernel"), str((tmp_path / "nb.ipynb").resolve()))
    assert copy_store.blob(blob.digest).digest == blob.digest


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_export_onto_a_full_disk_says_so_in_one_line_and_leaves_nothing(tmp_path: Path):
    big_component_store(tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        (small / "big.tar.gz").write_bytes(b"the archive exported yesterday")
        exported = cli("cache", "export", "nb.ipynb", "-o", "small/big.tar.gz", cwd=tmp_path,
                       XDG_CACHE_HOME=str(tmp_path / "cache"))
        assert exported.returncode == 1
        assert exported.stderr.splitlines()[-1].split("\r")[-1].strip() == (
            "linkkernel cache: small/big.tar.gz: cannot write: No space left on device")
        assert "Traceback" not in exported.stderr
        assert sorted(p.name for p in small.iterdir()) == ["big.tar.gz"]
        assert (small / "big.tar.gz").read_bytes() == b"the archive exported yesterday"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_export_to_stdout_streams_the_archive(tmp_path: Path):
    blob = big_component_store(tmp_path)
    exported = subprocess.run([sys.executable, "-m", "linkkernel.cli", "cache", "export", "nb.ipynb", "-o", "-"],
                              cwd=tmp_path, env=kernel_env(XDG_CACHE_HOME=str(tmp_path / "cache")),
                              capture_output=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr.decode().endswith("exported 1 component to /dev/stdout: big\n")
    with tarfile.open(fileobj=io.BytesIO(exported.stdout), mode="r:gz") as tar:
        assert f"blobs/{blob.digest}" in tar.getnames()
