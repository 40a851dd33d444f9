"""A notebook saved with a UTF-8 byte order mark (editors on Windows add one) is read by every
command and by the kernel alike, and whatever is written back is a notebook Jupyter opens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from git_support import Repo, code, notebook
from support import Kernel, kernel_env

BOM = b"\xef\xbb\xbf"
PIPELINE = notebook(
    code("x = 1\n", "component:load", id="c1"),
    code("y = x + 1\nprint('y is', y)\n", "component:train", "parent:load", id="c2"),
)


def write_with_bom(path: Path, nb: dict) -> Path:
    path.write_bytes(BOM + json.dumps(nb, indent=1).encode("utf-8"))
    return path


def linkkernel(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linkkernel.cli", *args], cwd=cwd, env=kernel_env(),
                          capture_output=True, text=True, timeout=180)


def opens_in_jupyter(path: Path) -> nbformat.NotebookNode:
    """nbformat.read is what jupyter_server uses to open a notebook; it refuses a BOM."""
    return nbformat.read(str(path), as_version=4)


def check_export(here: Path) -> None:
    assert linkkernel(here, "export", "nb.ipynb", "-o", "p.json").returncode == 0
    assert [c["name"] for c in json.loads((here / "p.json").read_text())["components"]] == ["load", "train"]


def check_import_in_place(here: Path) -> None:
    (here / "p.json").write_text(json.dumps({
        "format": "linkkernel-pipeline", "version": 1, "requires": [], "edges": [],
        "components": [{"name": "report", "parents": [], "code": "print('report')\n"}],
    }))
    done = linkkernel(here, "import", "p.json", "--into", "nb.ipynb", "-o", "nb.ipynb")
    assert done.returncode == 0, done.stderr
    written = here / "nb.ipynb"
    assert not written.read_bytes().startswith(BOM)
    assert len(opens_in_jupyter(written).cells) == 3


def check_run(here: Path) -> None:
    done = linkkernel(here, "run", "nb.ipynb", "-o", "out.ipynb")
    assert done.returncode == 0, done.stderr
    assert opens_in_jupyter(here / "out.ipynb").cells[1].outputs[0]["text"] == "y is 2\n"


def check_cache_export(here: Path) -> None:
    done = linkkernel(here, "cache", "export", "nb.ipynb", "-o", "c.tar.gz")
    assert done.returncode == 0, done.stderr
    assert "load (never ran); train (never ran)" in done.stdout


def check_diff(here: Path) -> None:
    (here / "plain.ipynb").write_text(json.dumps(PIPELINE, indent=1))
    done = linkkernel(here, "diff", "plain.ipynb", "nb.ipynb", "--no-color")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def check_merge(here: Path) -> None:
    theirs = json.loads(json.dumps(PIPELINE))
    theirs["cells"].append(code("print(y)\n", "component:show", "parent:train", id="c3"))
    (here / "theirs.ipynb").write_text(json.dumps(theirs, indent=1))
    done = linkkernel(here, "merge", "nb.ipynb", "nb.ipynb", "theirs.ipynb", "-o", "merged.ipynb")
    assert done.returncode == 0, done.stderr
    assert not (here / "merged.ipynb").read_bytes().startswith(BOM)
    assert [c.id for c in opens_in_jupyter(here / "merged.ipynb").cells] == ["c1", "c2", "c3"]


def check_log(here: Path) -> None:
    repo = Repo(here / "git")
    write_with_bom(repo.path / "nb.ipynb", PIPELINE)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "pipeline")
    done = repo.linkkernel("log", "nb.ipynb")
    assert done.returncode == 0, done.stderr
    assert "+ edge load -> train" in done.stdout


@pytest.mark.parametrize(
    "check",
    [check_export, check_import_in_place, check_run, check_cache_export, check_diff, check_merge, check_log],
    ids=lambda check: check.__name__.removeprefix("check_"),
)
def test_every_command_reads_a_notebook_that_starts_with_a_bom(tmp_path: Path, check) -> None:
    write_with_bom(tmp_path / "nb.ipynb", PIPELINE)
    check(tmp_path)


def test_the_kernel_reads_declarations_from_a_saved_notebook_with_a_bom(tmp_path: Path) -> None:
    path = write_with_bom(tmp_path / "nb.ipynb", PIPELINE)
    kernel = Kernel()
    try:
        assert kernel.execute(f"%link notebook {path}").status == "ok"
        status = kernel.execute("%link status")
        assert status.status == "ok", status.traceback_text
        assert [line.split()[:2] for line in status.stdout.splitlines()[1:]] == [["load", "-"], ["train", "load"]]
        # a request without cellId (nbclient) is matched to the saved cell by its source
        ran = kernel.execute("y = x + 1\nprint('y is', y)\n")
        assert ran.stdout == "y is 2\n", ran.stdout + ran.traceback_text
    finally:
        kernel.shutdown()
