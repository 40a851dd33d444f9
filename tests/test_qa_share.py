"""QA round of sharing and headless runs (SPEC §6, §8): `export`/`import`, `cache export/import`
and `run` against hostile documents, archives and output paths.

Cases that are refused before any kernel starts run `linkkernel.cli.main` in this process (its
real entry point); what goes to stdout is checked on a real process, whose stdout is a pipe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from linkkernel.cli import main
from support import kernel_env
from test_qa_cli import NOTEBOOK, refused


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    return tmp_path


def linkkernel(here: Path, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """The command in a real process whose stdout is a pipe, as in `linkkernel ... | jq`."""
    return subprocess.run([sys.executable, "-m", "linkkernel.cli", *argv], cwd=here, env=kernel_env(),
                          capture_output=True, timeout=180)


# ---------------------------------------------------------------- import: cell metadata


def document_with_metadata(here: Path, metadata: dict) -> None:
    assert main(["export", "nb.ipynb", "-o", "p.json"]) == 0
    doc = json.loads((here / "p.json").read_text())
    doc["components"][0]["metadata"] = metadata
    (here / "p.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "metadata, why",
    [
        ({"tags": ["slow", ""]}, "'' does not match '^[^,]+$'"),
        ({"tags": ["slow,fast"]}, "'slow,fast' does not match '^[^,]+$'"),
        ({"tags": ["slow", "slow"]}, "['component:load', 'slow', 'slow'] has non-unique elements"),
        ({"collapsed": "yes"}, "'yes' is not of type 'boolean'"),
    ],
    ids=["empty-tag", "comma-tag", "duplicate-tags", "collapsed-text"],
)
def test_import_of_metadata_a_notebook_cannot_hold_is_one_line(here: Path, capsys, metadata, why):
    # the schema lets them through; nbformat refused them with a traceback when making the cell
    document_with_metadata(here, metadata)
    capsys.readouterr()
    assert refused(capsys, "import", "p.json", "-o", "out.ipynb") == (
        f"linkkernel import: p.json: component 1 ('load'): its metadata is not valid notebook cell metadata: {why}"
    )
    assert not (here / "out.ipynb").exists()


def test_exporting_a_notebook_without_cell_ids_twice_writes_the_same_document(here: Path):
    # nbformat < 4.5 has no ids; the ones nbformat made up were random, so every export of the
    # same notebook differed (a pipeline.json kept in git changed at each export)
    old = json.loads(json.dumps(NOTEBOOK))
    old["nbformat_minor"] = 4
    for cell in old["cells"]:
        del cell["id"]
    (here / "old.ipynb").write_text(json.dumps(old))
    assert main(["export", "old.ipynb", "-o", "a.json"]) == 0
    assert main(["export", "old.ipynb", "-o", "b.json"]) == 0
    assert (here / "a.json").read_bytes() == (here / "b.json").read_bytes()
    assert [sorted(c) for c in json.loads((here / "a.json").read_text())["components"]] == [
        ["code", "metadata", "name", "parents", "remote"]] * 2


def test_export_keeps_the_ids_the_notebook_has_even_when_one_repeats(here: Path):
    # nbformat replaces a repeated id with a random one: the document must say what the file says
    nb = json.loads(json.dumps(NOTEBOOK))
    nb["cells"][1]["id"] = "c1"
    (here / "dup.ipynb").write_text(json.dumps(nb))
    assert main(["export", "dup.ipynb", "-o", "p.json"]) == 0
    assert [c["cell_id"] for c in json.loads((here / "p.json").read_text())["components"]] == ["c1", "c1"]
    assert main(["import", "p.json", "-o", "out.ipynb"]) == 0
    ids = [cell["id"] for cell in json.loads((here / "out.ipynb").read_text())["cells"]]
    assert ids[0] == "c1" and ids[1] != "c1", "import still gives the second cell an id of its own"


# ---------------------------------------------------------------- cache archives nested too deeply

DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON nested deeper than json parses (3.13 parses 5000 deep)


def archive(*entries: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unsigned(components: dict, files: dict[str, bytes]) -> bytes:
    """An unsigned archive whose manifest lists `files` with their true sizes and checksums."""
    manifest = {
        "format": "linkkernel-cache", "version": 1, "python": "3.11.7", "packages": {},
        "components": components,
        "files": {path: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for path, data in files.items()},
    }
    return archive(("manifest.json", json.dumps(manifest).encode()), *files.items())


DIGEST = "ab" * 32
RECORD = {"code_hash": "cd" * 32, "run_id": "r1", "parents": {}, "blobs": []}


@pytest.mark.parametrize(
    "build, extra, message",
    [
        (lambda: archive(("manifest.json", DEEP)), [], "corrupt archive: manifest.json is not valid JSON"),
        (lambda: unsigned({"load": RECORD}, {"records/load.json": DEEP}), ["--trust"],
         "corrupt archive: 'records/load.json' is not a run record"),
        (lambda: unsigned({}, {f"blobs/{DIGEST}": len(DEEP).to_bytes(8, "little") + DEEP}), ["--trust"],
         f"corrupt archive: 'blobs/{DIGEST}' is not a linkkernel blob"),
    ],
    ids=["manifest", "record", "blob-header"],
)
def test_cache_import_of_json_nested_too_deeply_is_one_line(here: Path, capsys, build, extra, message):
    # the manifest is parsed before its signature is checked: no --trust needed to reach it
    (here / "deep.tar.gz").write_bytes(build())
    assert refused(capsys, "cache", "import", "deep.tar.gz", "--notebook", "nb.ipynb",
                   "--cache", str(here / "store"), *extra) == f"linkkernel cache: deep.tar.gz: {message}"
    assert sorted(p.name for p in here.iterdir()) == ["deep.tar.gz", "nb.ipynb"], "nothing written"


# ---------------------------------------------------------------- run: where the result goes


def test_run_refuses_an_output_that_is_its_notebook_before_running(here: Path, capsys):
    # every other command refuses -o over its input; here the notebook was replaced by the run
    before = (here / "nb.ipynb").read_bytes()
    (here / "link.ipynb").symlink_to(here / "nb.ipynb")
    for output in ("nb.ipynb", str(here / "nb.ipynb"), "link.ipynb"):
        assert refused(capsys, "run", "nb.ipynb", "-o", output) == (
            f"linkkernel run: {output}: not written: it is the input nb.ipynb, which it would replace; "
            "choose another output"
        )
    assert (here / "nb.ipynb").read_bytes() == before
    assert sorted(p.name for p in here.iterdir()) == ["link.ipynb", "nb.ipynb"]


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs sysfs, where no one may create a file")
def test_run_refuses_an_output_folder_it_cannot_write_before_running(here: Path, capsys):
    # the folder exists, so only a write shows the problem: it came after the whole pipeline ran
    line = refused(capsys, "run", "nb.ipynb", "-o", "/sys/out.ipynb")
    assert line.startswith("linkkernel run: /sys/out.ipynb: cannot write: "), line
    assert sorted(p.name for p in here.iterdir()) == ["nb.ipynb"]


# ---------------------------------------------------------------- -o /dev/stdout


@pytest.mark.parametrize("stdout", ["/dev/stdout", "-"])
def test_export_and_import_to_stdout_print_only_the_document(here: Path, stdout: str):
    exported = linkkernel(here, "export", "nb.ipynb", "-o", stdout)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["format"] == "linkkernel-pipeline"
    assert exported.stderr == b"exported 2 components (load, train) to /dev/stdout\n"
    (here / "p.json").write_bytes(exported.stdout)
    imported = linkkernel(here, "import", "p.json", "-o", stdout)
    assert imported.returncode == 0, imported.stderr
    assert ["".join(cell["source"]) for cell in json.loads(imported.stdout)["cells"]] == ["x = 1", "y = x + 1"]
    assert imported.stderr == b"wrote /dev/stdout: 2 components added (load, train)\n"


@pytest.mark.parametrize("stdout", ["/dev/stdout", "-"])
def test_cache_export_to_stdout_prints_only_the_archive(here: Path, stdout: str):
    done = linkkernel(here, "cache", "export", "nb.ipynb", "-o", stdout, "--cache", str(here / "store"))
    assert done.returncode == 0, done.stderr
    with tarfile.open(fileobj=io.BytesIO(done.stdout), mode="r:gz") as tar:
        assert tar.getnames()[:2] == ["manifest.json", "manifest.sig"]
    assert done.stderr.startswith(b"exported 0 components to /dev/stdout\n")


@pytest.mark.parametrize("stdout", ["/dev/stdout", "-"])
def test_run_to_stdout_prints_only_the_executed_notebook(here: Path, stdout: str):
    done = linkkernel(here, "run", "nb.ipynb", "-o", stdout)
    assert done.returncode == 0, done.stderr
    executed = json.loads(done.stdout)
    assert [cell["execution_count"] for cell in executed["cells"]] == [1, 2]
    assert b"executed notebook written to /dev/stdout\n" in done.stderr


# ---------------------------------------------------------------- run: the executed notebook


def test_run_records_the_kernel_that_ran_a_notebook_without_kernel_metadata(here: Path):
    # nbclient's execute() writes language_info; run drives cells itself and wrote neither it
    # nor a kernelspec: the executed notebook reopened in Jupyter asking which kernel to use
    bare = json.loads(json.dumps(NOTEBOOK))
    (here / "bare.ipynb").write_text(json.dumps(bare))
    done = linkkernel(here, "run", "bare.ipynb")
    assert done.returncode == 0, done.stderr
    metadata = json.loads((here / "bare.out.ipynb").read_text())["metadata"]
    assert metadata["kernelspec"] == {"name": "link-python", "display_name": "Link Python", "language": "python"}
    assert metadata["language_info"]["name"] == "python"
    assert json.loads((here / "bare.ipynb").read_text()) == bare, "the notebook run is left as it was"


# ---------------------------------------------------------------- uninstall


def test_uninstall_of_a_kernelspec_that_cannot_be_removed_is_one_line(here: Path, capsys, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(here / "prefix" / "share" / "jupyter"))
    assert main(["install", "--prefix", "prefix", "--name", "qa-locked"]) == 0
    folder = here / "prefix" / "share" / "jupyter" / "kernels" / "qa-locked"
    # root removes files whatever the folder's mode; an immutable folder stops root too
    locked = (["chattr", "+i", str(folder)], ["chattr", "-i", str(folder)]) if os.geteuid() == 0 else None
    if locked is None:
        folder.chmod(0o555)
    elif subprocess.run(locked[0], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: nothing here stops a removal")
    try:
        capsys.readouterr()
        assert refused(capsys, "uninstall", "--name", "qa-locked") == (
            f"linkkernel uninstall: cannot remove kernelspec 'qa-locked' from {folder}: "
            f"{'Operation not permitted' if locked else 'Permission denied'}"
        )
    finally:
        subprocess.run(locked[1]) if locked else folder.chmod(0o755)
    assert (folder / "kernel.json").exists()


# ---------------------------------------------------------------- the cache of a notebook behind a symlink


def test_cli_uses_the_results_a_kernel_stored_for_a_notebook_reached_through_a_symlink(here: Path):
    # jupyter_server names the notebook by the path the user browsed (JPY_SESSION_NAME, not
    # resolved) and the kernel keys its cache by it; cache export and run resolved symlinks,
    # looked under another key, found 'never ran' and ran everything again
    from linkkernel.namespaces import dump
    from linkkernel.staleness import RunRecord, code_hash
    from linkkernel.store import CacheStore, default_cache_url

    (here / "real").mkdir()
    (here / "link").symlink_to(here / "real")
    (here / "real" / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    store = CacheStore(default_cache_url(), str(here / "link" / "nb.ipynb"))  # as the kernel opens it
    parents: dict[str, str] = {}
    for cell, variable, value in zip(NOTEBOOK["cells"], ("x", "y"), (1, 2)):
        name = cell["metadata"]["tags"][0].removeprefix("component:")
        blob = dump(variable, value)
        store.put(RunRecord(name, f"run-{name}", code_hash(cell["source"]), dict(parents), "ok", 0.0, 1.0,
                            namespace={variable: blob.digest}), {blob.digest: blob}, {})
        parents = {name: f"run-{name}"}
    store.flush()

    exported = linkkernel(here, "cache", "export", "link/nb.ipynb", "-o", "c.tar.gz")
    assert (exported.returncode, exported.stdout) == (0, b"exported 2 components to c.tar.gz: load, train\n"), exported.stderr
    ran = linkkernel(here, "run", "link/nb.ipynb")
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == b"linkkernel run: [1/2] load cached\nlinkkernel run: [2/2] train cached\n"
