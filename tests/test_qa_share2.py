"""QA round of sharing and headless runs against what changed in the engine (SPEC §6, §8):
values kept in memory only, kept outputs (figures, a silent run's last value, errors a cell
showed), notebooks not named .ipynb. Real kernels, the real CLI in real processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from support import Kernel, kernel_env


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linkkernel.cli", *args], cwd=cwd, env=kernel_env(**env),
                          capture_output=True, text=True, timeout=180)


def notebook(*cells: tuple[str, list[str]]) -> nbformat.NotebookNode:
    nb = new_notebook(metadata={"kernelspec": {"name": "link-python", "display_name": "Link Python", "language": "python"}})
    nb.cells = [new_code_cell(source, id=f"c{i}", metadata={"tags": tags}) for i, (source, tags) in enumerate(cells)]
    return nb


def run_cell(kernel: Kernel, cell) -> None:
    result = kernel.execute(cell.source, metadata=dict(cell.metadata), cell_id=cell.id)
    assert result.status == "ok", result.traceback_text


# ---------------------------------------------------------------- values kept in memory only

MEMORY = notebook(
    ("import threading\nlock = threading.Lock()\nx = 1", ["component:load"]),
    ("y = x + 1\ndel lock", ["component:mid", "parent:load"]),
    ("z = y + 1", ["component:top", "parent:mid"]),
    ("w = 5", ["component:solo"]),
)


@pytest.fixture(scope="module")
def memory_archive(tmp_path_factory, link_kernelspec) -> Path:
    """User A runs a pipeline whose root holds a lock (kept in memory only) and exports the cache."""
    home = tmp_path_factory.mktemp("memory-producer")
    nbformat.write(MEMORY, str(home / "nb.ipynb"))
    kernel = Kernel(cwd=str(home), XDG_CACHE_HOME=str(home / "cache"), LINKKERNEL_NOTEBOOK=str(home / "nb.ipynb"))
    try:
        for cell in MEMORY.cells:
            run_cell(kernel, cell)
        exported = kernel.execute("%link cache export cache.tar.gz")
        assert exported.stdout == (
            "exported 3 components to cache.tar.gz: mid, top, solo\n"
            "not exported: load (values kept in memory only: lock)\n"
        )
    finally:
        kernel.shutdown()
    return home / "cache.tar.gz"


IMPORTED_WITHOUT_MEMORY_ONLY = [
    "stale, not imported: mid (its parent 'load' is not in the archive: values kept in memory only: lock); "
    "top (a parent is stale)",
    "not in the archive, so they run here: load (values kept in memory only: lock)",
]


def test_import_says_why_the_children_of_a_memory_only_parent_run_again(tmp_path: Path, memory_archive: Path):
    """The importing user learned only 'a parent is stale' for `mid`, and nothing about `load`:
    the archive did not say what its exporter had been told, that `load` holds a lock."""
    nbformat.write(MEMORY, str(tmp_path / "nb.ipynb"))
    shutil.copy(memory_archive, tmp_path)
    imported = cli("cache", "import", "cache.tar.gz", "--notebook", "nb.ipynb", cwd=tmp_path,
                   XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert imported.returncode == 0, imported.stderr
    lines = imported.stdout.splitlines()
    assert lines[0].startswith("imported 1 component from cache.tar.gz into ") and lines[0].endswith(": solo")
    assert lines[1:] == IMPORTED_WITHOUT_MEMORY_ONLY


def test_the_kernel_imports_the_same_and_runs_the_memory_only_line_again(tmp_path: Path, memory_archive: Path):
    nbformat.write(MEMORY, str(tmp_path / "nb.ipynb"))
    shutil.copy(memory_archive, tmp_path)
    kernel = Kernel(cwd=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"), LINKKERNEL_NOTEBOOK=str(tmp_path / "nb.ipynb"))
    try:
        imported = kernel.execute("%link cache import cache.tar.gz")
        assert imported.status == "ok", imported.traceback_text
        assert imported.stdout.splitlines()[1:] == IMPORTED_WITHOUT_MEMORY_ONLY
        top = MEMORY.cells[2]
        result = kernel.execute(top.source + "\nprint(z)", metadata=dict(top.metadata), cell_id=top.id)
        assert result.status == "ok", result.traceback_text
        assert result.stdout == "3\n"
    finally:
        kernel.shutdown()


# ---------------------------------------------------------------- linkkernel run and its cache


def summary(stdout: str) -> dict[str, str]:
    """The summary table as component -> state."""
    rows = [line.split("  ") for line in stdout.splitlines()[1:] if "  " in line]
    return {row[0].strip(): [c.strip() for c in row[1:] if c.strip()][0] for row in rows}


def test_run_reruns_components_whose_cached_values_are_lost(tmp_path: Path, link_kernelspec):
    """A blob deleted from the cache (disk cleanup, a half-synced cache folder) made the next
    `linkkernel run` fail with 'could not read the component cache: LostValue: ...', where a
    cell in JupyterLab runs the components that made it again (SPEC §3: a lost value makes its
    component stale)."""
    nb = notebook(("x = [1, 2]", ["component:load"]), ("y = x + [3]", ["component:top", "parent:load"]),
                  ("print(x, y)", []))
    nbformat.write(nb, str(tmp_path / "nb.ipynb"))
    cache = str(tmp_path / "cache")
    first = cli("run", "nb.ipynb", cwd=tmp_path, XDG_CACHE_HOME=cache)
    assert first.returncode == 0, first.stderr
    blobs = list((tmp_path / "cache").rglob("blobs/*/*"))
    assert blobs
    for blob in blobs:
        blob.unlink()
    again = cli("run", "nb.ipynb", cwd=tmp_path, XDG_CACHE_HOME=cache)
    assert again.returncode == 0, again.stderr
    assert summary(again.stdout) == {"load": "ran", "top": "ran"}
    assert "; running the components that made it again" in again.stderr
    out = nbformat.read(str(tmp_path / "nb.out.ipynb"), as_version=4)
    assert out.cells[2].outputs[0]["text"] == "[1, 2] [1, 2, 3]\n"


def test_a_cached_component_outputs_names_at_its_place_in_the_run(tmp_path: Path, link_kernelspec):
    """A second `linkkernel run` published every cached component's values before the first
    cell ran, so a plain setup cell above `load` setting the same name won, and the cell after
    it printed 'after 0' where the first run (and Run All in JupyterLab) printed 'after 1'."""
    nb = notebook(("x = 0\nprint('setup', x)", []), ("x = 1", ["component:load"]), ("print('after', x)", []))
    nbformat.write(nb, str(tmp_path / "nb.ipynb"))
    shown = []
    for out in ("first.ipynb", "cached.ipynb"):
        run = cli("run", "nb.ipynb", "-o", out, cwd=tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
        assert run.returncode == 0, run.stderr
        shown.append([c.outputs for c in nbformat.read(str(tmp_path / out), as_version=4).cells])
    assert shown[0][2] == [{"name": "stdout", "output_type": "stream", "text": "after 1\n"}]
    assert shown[1] == shown[0]


def test_a_cells_printed_lines_are_one_output_as_jupyterlab_keeps_them(tmp_path: Path, link_kernelspec):
    """nbclient keeps each stream message as an output, and where ipykernel cuts a stream
    into messages varies: the notebook written differed from run to run."""
    nb = notebook(("print('a', flush=True)\nprint('b')", []), ("print('x', flush=True)\nprint('y')", ["component:load"]))
    nbformat.write(nb, str(tmp_path / "nb.ipynb"))
    run = cli("run", "nb.ipynb", cwd=tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert run.returncode == 0, run.stderr
    out = nbformat.read(str(tmp_path / "nb.out.ipynb"), as_version=4)
    assert [c.outputs for c in out.cells] == [
        [{"name": "stdout", "output_type": "stream", "text": "a\nb\n"}],
        [{"name": "stdout", "output_type": "stream", "text": "x\ny\n"}],
    ]


# ---------------------------------------------------------------- a notebook not named .ipynb


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="files held open are named in /proc/self/fd on Linux only")
def test_a_notebook_not_named_ipynb_is_followed_when_renamed(tmp_path: Path):
    """LINKKERNEL_NOTEBOOK (and `linkkernel run`) take any file name, but only a name ending in
    .ipynb was followed through a rename: pipe.json renamed was read at its old path, where
    nothing is, and its components were reported missing."""
    from linkkernel.sources import Sources

    nbformat.write(notebook(("x = 1", ["component:parent"])), str(tmp_path / "pipe.json"))
    sources = Sources(str(tmp_path / "pipe.json"))
    assert sources.notebook_path == str(tmp_path / "pipe.json")
    (tmp_path / "sub").mkdir()
    (tmp_path / "pipe.json").rename(tmp_path / "sub" / "moved.json")
    assert sources.notebook_path == str(tmp_path / "sub" / "moved.json")
    assert [c.name for c in sources.declared().components] == ["parent"]
    (tmp_path / "sub" / "moved.json").rename(tmp_path / "sub" / "moved.json~")  # an editor's backup
    nbformat.write(notebook(("x = 2", ["component:saved_anew"])), str(tmp_path / "sub" / "moved.json"))
    assert [c.name for c in sources.declared().components] == ["saved_anew"]


def test_a_running_kernel_takes_in_what_the_cli_imported(tmp_path: Path, memory_archive: Path):
    """`linkkernel cache import` in a terminal while the notebook's kernel runs: the kernel
    kept the records it read at start, said the imported components had never run, and would
    have run them again, overwriting what was imported."""
    nbformat.write(MEMORY, str(tmp_path / "nb.ipynb"))
    shutil.copy(memory_archive, tmp_path)
    kernel = Kernel(cwd=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"), LINKKERNEL_NOTEBOOK=str(tmp_path / "nb.ipynb"))
    try:
        assert kernel.execute("%link status").stdout.splitlines()[4].split()[:3] == ["solo", "-", "never"]
        imported = cli("cache", "import", "cache.tar.gz", "--notebook", "nb.ipynb", cwd=tmp_path,
                       XDG_CACHE_HOME=str(tmp_path / "cache"))
        assert imported.returncode == 0, imported.stderr
        assert kernel.execute("%link status").stdout.splitlines()[4].split()[:3] == ["solo", "-", "fresh"]
        shown = kernel.execute("print(w)", metadata={"tags": ["component:report", "parent:solo"]}, cell_id="c-report")
        assert shown.status == "ok", shown.traceback_text
        assert shown.stdout == "5\n"
    finally:
        kernel.shutdown()
