"""QA regressions of the `linkkernel` command on bad input: one line, exit 1, nothing lost.

The command runs in this process through `linkkernel.cli.main` (its real entry point), so
the many small cases stay fast; each asserts the exact line a user reads on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from linkkernel.cli import main

NOTEBOOK = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {},
    "cells": [
        {"cell_type": "code", "id": "c1", "metadata": {"tags": ["component:load"]}, "source": "x = 1",
         "outputs": [], "execution_count": None},
        {"cell_type": "code", "id": "c2", "metadata": {"tags": ["component:train", "parent:load"]},
         "source": "y = x + 1", "outputs": [], "execution_count": None},
    ],
}


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    (tmp_path / "folder").mkdir()
    return tmp_path


def refused(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """Run `linkkernel ARGV`, expecting exit 1 and exactly one line on stderr; returns it."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert status == 1, out + err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


def test_output_over_an_input_is_refused_and_the_input_survives(here: Path, capsys):
    before = (here / "nb.ipynb").read_bytes()
    assert refused(capsys, "export", "nb.ipynb", "-o", "./nb.ipynb") == (
        "linkkernel export: ./nb.ipynb: not written: it is the input nb.ipynb, which it would replace; "
        "choose another output"
    )
    assert refused(capsys, "cache", "export", "nb.ipynb", "-o", "nb.ipynb") == (
        "linkkernel cache: nb.ipynb: not written: it is the input nb.ipynb, which it would replace; "
        "choose another output"
    )
    assert refused(capsys, "diff", "nb.ipynb", "nb.ipynb", "--html", "nb.ipynb").endswith(
        "nb.ipynb: not written: it is the input nb.ipynb, which it would replace; choose another output"
    )
    assert (here / "nb.ipynb").read_bytes() == before

    assert main(["export", "nb.ipynb", "-o", "p.json"]) == 0
    document = (here / "p.json").read_bytes()
    assert refused(capsys, "import", "p.json", "-o", "p.json") == (
        "linkkernel import: p.json: not written: it is the input p.json, which it would replace; "
        "choose another output"
    )
    assert (here / "p.json").read_bytes() == document
    # appending to a notebook in place loses nothing, so it stays allowed
    assert main(["import", "p.json", "--into", "nb.ipynb", "--rename", "-o", "nb.ipynb"]) == 0
    assert len(json.loads((here / "nb.ipynb").read_text())["cells"]) == 4


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "nb.ipynb", "-o", "{out}"],
        ["cache", "export", "nb.ipynb", "-o", "{out}"],
        ["diff", "nb.ipynb", "nb.ipynb", "--html", "{out}"],
        ["merge", "nb.ipynb", "nb.ipynb", "nb.ipynb", "-o", "{out}"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_unwritable_outputs_are_one_line(here: Path, capsys, argv):
    def run(out: str) -> str:
        return refused(capsys, *[a.replace("{out}", out) for a in argv])

    command = f"linkkernel {argv[0]}"
    assert run("") == f"{command}: '': cannot write: no file name; give a file name"
    assert run("folder") == f"{command}: folder: cannot write: it is a directory; give a file name"
    assert run("missing/out.x") == f"{command}: missing/out.x: cannot write: No such file or directory"
    # a folder named with its slash that does not exist yet became a file of that name
    assert run("results/") == f"{command}: results/: cannot write: it names a folder; give a file name"
    assert sorted(p.name for p in here.iterdir()) == ["folder", "nb.ipynb"], "no temporary file is left behind"


def test_install_into_a_prefix_that_cannot_be_one_is_one_line(here: Path, capsys):
    assert refused(capsys, "install", "--prefix", "nb.ipynb") == (
        f"linkkernel install: cannot install kernelspec 'link-python': Not a directory ({here / 'nb.ipynb' / 'share'})"
    )


def test_install_with_an_empty_name_is_refused_not_named_after_a_temp_folder(here: Path, capsys):
    assert refused(capsys, "install", "--prefix", "prefix", "--name", "") == (
        "linkkernel install: cannot install a kernelspec with an empty --name"
    )
    assert not (here / "prefix").exists()


def test_a_cell_with_null_metadata_is_read_like_one_with_none(here: Path, capsys):
    nb = json.loads((here / "nb.ipynb").read_text())
    nb["cells"].append({"cell_type": "markdown", "id": "m1", "metadata": None, "source": "notes"})
    (here / "nulls.ipynb").write_text(json.dumps(nb))
    assert main(["diff", "nb.ipynb", "nulls.ipynb", "--no-color"]) == 0
    assert "cell 3 added (markdown)" in capsys.readouterr().out


def test_a_notebook_that_is_a_json_list_is_named_as_such_by_every_command(here: Path, capsys):
    (here / "list.ipynb").write_text("[1, 2]")
    line = "list.ipynb: not a notebook (a JSON list, not an object)"
    assert refused(capsys, "export", "list.ipynb", "-o", "p.json") == f"linkkernel export: {line}"
    assert refused(capsys, "cache", "export", "list.ipynb", "-o", "c.tar.gz") == f"linkkernel cache: {line}"
    assert refused(capsys, "diff", "nb.ipynb", "list.ipynb") == f"linkkernel diff: {line}"
    assert main(["export", "nb.ipynb", "-o", "p.json"]) == 0
    assert refused(capsys, "import", "p.json", "--into", "list.ipynb", "-o", "out.ipynb") == f"linkkernel import: {line}"


def test_no_command_lists_the_commands(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "args" not in err
    assert err.startswith("usage: linkkernel [-h] [--version] COMMAND")
    assert "  export      write a notebook's pipeline as a JSON document" in err


def test_rewriting_a_file_in_place_keeps_its_permissions(here: Path):
    assert main(["export", "nb.ipynb", "-o", "p.json"]) == 0
    (here / "nb.ipynb").chmod(0o600)
    assert main(["import", "p.json", "--into", "nb.ipynb", "--rename", "-o", "nb.ipynb"]) == 0
    assert (here / "nb.ipynb").stat().st_mode & 0o777 == 0o600
