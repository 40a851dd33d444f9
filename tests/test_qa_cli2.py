"""QA round 2: the non-remote `linkkernel` commands against hostile inputs and odd output paths.

Most cases run `linkkernel.cli.main` in this process (its real entry point) to stay fast; the
git ones run the command as git users do, in a real repository.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from git_support import Repo, code, notebook
from linkkernel.cli import main
from support import kernel_env
from test_qa_cli import NOTEBOOK, refused

DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot nest that deep


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    return tmp_path



def with_cell(**changes) -> dict:
    nb = json.loads(json.dumps(NOTEBOOK))
    nb["cells"][0].update(changes)
    return nb


# ---------------------------------------------------------------- where outputs go


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "nb.ipynb", "-o", "{out}"],
        ["cache", "export", "nb.ipynb", "-o", "{out}"],
        ["merge", "nb.ipynb", "nb.ipynb", "nb.ipynb", "-o", "{out}"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_an_output_that_is_a_fifo_is_written_into_not_replaced(here: Path, argv):
    # the same path as `-o /dev/stdout` or `-o /dev/null`, which a rename would replace with a file
    fifo = here / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert main([a.replace("{out}", str(fifo)) for a in argv]) == 0
        assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a regular file"
        assert os.read(reader, 1 << 16), "nothing was written into the FIFO"
    finally:
        os.close(reader)
    assert sorted(p.name for p in here.iterdir()) == ["fifo", "nb.ipynb"], "no temporary file is left behind"


def test_an_output_that_is_a_symlink_writes_its_target_and_keeps_the_link(here: Path):
    (here / "shared").mkdir()
    (here / "shared" / "p.json").write_text("old")
    (here / "p.json").symlink_to(here / "shared" / "p.json")
    assert main(["export", "nb.ipynb", "-o", "p.json"]) == 0
    assert (here / "p.json").is_symlink()
    assert json.loads((here / "shared" / "p.json").read_text())["format"] == "linkkernel-pipeline"


# ---------------------------------------------------------------- JSON no parser can nest


@pytest.mark.parametrize(
    "argv, line",
    [
        (["export", "deep.ipynb", "-o", "p.json"], "linkkernel export: deep.ipynb: not a readable notebook (JSON nested too deeply)"),
        (["cache", "export", "deep.ipynb", "-o", "c.tar.gz"], "linkkernel cache: deep.ipynb: not a readable notebook (JSON nested too deeply)"),
        (["diff", "nb.ipynb", "deep.ipynb"], "linkkernel diff: deep.ipynb is not a notebook: JSON nested too deeply"),
        (["merge", "nb.ipynb", "nb.ipynb", "deep.ipynb", "-o", "m.ipynb"], "linkkernel merge: deep.ipynb is not a notebook: JSON nested too deeply"),
        (["import", "deep.ipynb", "-o", "out.ipynb"], "linkkernel import: deep.ipynb: not valid JSON: nested too deeply"),
        (["run", "deep.ipynb"], "linkkernel run: {here}/deep.ipynb: not a readable notebook (JSON nested too deeply)"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "",
)
def test_json_nested_too_deeply_is_one_line(here: Path, capsys, argv, line):
    (here / "deep.ipynb").write_text(DEEP)
    assert refused(capsys, *argv) == line.format(here=here)
    assert sorted(p.name for p in here.iterdir()) == ["deep.ipynb", "nb.ipynb"]


# ---------------------------------------------------------------- export / import


@pytest.mark.parametrize(
    "nb, line",
    [
        (with_cell(source=5), "cell 1: its source is neither text nor a list of lines"),
        ({**NOTEBOOK, "cells": {}}, "not a notebook (no 'cells' list)"),
        ({**NOTEBOOK, "cells": [{"cell_type": "heading", "metadata": {}, "source": "x", "level": 1}]},
         "cell 1 is not a code, markdown or raw cell"),
        ({**NOTEBOOK, "metadata": []}, "not a notebook (its metadata is not an object)"),
    ],
    ids=["source-number", "cells-object", "heading-cell", "metadata-list"],
)
def test_export_and_import_refuse_what_every_other_command_refuses(here: Path, capsys, nb, line):
    (here / "odd.ipynb").write_text(json.dumps(nb))
    assert refused(capsys, "export", "odd.ipynb", "-o", "p.json") == f"linkkernel export: odd.ipynb: {line}"
    assert main(["export", "nb.ipynb", "-o", "p.json"]) == 0
    capsys.readouterr()
    assert refused(capsys, "import", "p.json", "--into", "odd.ipynb", "-o", "out.ipynb") == f"linkkernel import: odd.ipynb: {line}"
    assert not (here / "out.ipynb").exists()


@pytest.mark.parametrize(
    "changes, line",
    [
        ({"outputs": "oops"}, "cell 1: its outputs are not a list of objects"),
        ({"outputs": [5]}, "cell 1: its outputs are not a list of objects"),
        ({"id": 5}, "cell 1: its id is not text"),
    ],
    ids=["outputs-text", "outputs-number", "id-number"],
)
def test_cells_with_malformed_outputs_or_ids_are_one_line_everywhere(here: Path, capsys, changes, line):
    (here / "odd.ipynb").write_text(json.dumps(with_cell(**changes)))
    assert refused(capsys, "diff", "nb.ipynb", "odd.ipynb", "--outputs") == f"linkkernel diff: odd.ipynb: {line}"
    assert refused(capsys, "export", "odd.ipynb", "-o", "p.json") == f"linkkernel export: odd.ipynb: {line}"
    assert refused(capsys, "merge", "nb.ipynb", "odd.ipynb", "nb.ipynb", "-o", "m.ipynb") == f"linkkernel merge: odd.ipynb: {line}"
    assert sorted(p.name for p in here.iterdir()) == ["nb.ipynb", "odd.ipynb"]


def test_diff_of_outputs_whose_text_holds_a_number_shows_it(here: Path, capsys):
    stream = {"output_type": "stream", "name": "stdout", "text": ["a\n", 5]}
    (here / "odd.ipynb").write_text(json.dumps(with_cell(outputs=[stream])))
    assert main(["diff", "nb.ipynb", "odd.ipynb", "--outputs", "--no-color"]) == 0
    assert "  +a\n  +5" in capsys.readouterr().out


def test_export_of_duplicate_cell_ids_prints_no_nbformat_warning(here: Path):
    nb = json.loads(json.dumps(NOTEBOOK))
    nb["cells"][1]["id"] = "c1"
    (here / "dup.ipynb").write_text(json.dumps(nb))
    # a real process: pytest would catch the warning this is about
    done = subprocess.run([sys.executable, "-m", "linkkernel.cli", "export", "dup.ipynb", "-o", "p.json"],
                          cwd=here, env=kernel_env(), capture_output=True, text=True)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "exported 2 components (load, train) to p.json\n")


def test_import_refuses_a_declaration_repeated_in_component_metadata(here: Path, capsys):
    assert main(["export", "nb.ipynb", "-o", "p.json"]) == 0
    doc = json.loads((here / "p.json").read_text())
    doc["components"][0]["metadata"] = {"tags": ["slow", "component:other"]}
    (here / "p.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert refused(capsys, "import", "p.json", "-o", "out.ipynb") == (
        "linkkernel import: p.json: component 1 ('load'): metadata tag 'component:other' repeats a declaration; "
        "declare it with name, parents and remote"
    )
    assert not (here / "out.ipynb").exists()


def test_a_plain_tag_that_names_a_declaration_kind_survives_export_and_import(here: Path):
    nb = with_cell(metadata={"tags": ["component:load", "parent", "remote"]})
    (here / "tagged.ipynb").write_text(json.dumps(nb))
    assert main(["export", "tagged.ipynb", "-o", "p.json"]) == 0
    assert json.loads((here / "p.json").read_text())["components"][0]["metadata"] == {"tags": ["parent", "remote"]}


# ---------------------------------------------------------------- git


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path)


def test_log_of_a_name_with_glob_characters_shows_only_that_file(repo):
    repo.commit(notebook(code("x = 1\n", "component:load", id="c1")), "add the bracketed one", name="nb[1].ipynb")
    repo.commit(notebook(code("x = 1\n", "component:load", id="c1")), "add nb1", name="nb1.ipynb")
    repo.commit(notebook(code("x = 2\n", "component:load", id="c1")), "edit nb1", name="nb1.ipynb")
    done = repo.linkkernel("log", "nb[1].ipynb")
    assert (done.returncode, done.stderr) == (0, "")
    assert [line.strip() for line in done.stdout.splitlines() if line.startswith("    ")] == ["add the bracketed one"]


def test_a_gitattributes_file_that_is_not_utf8_is_kept_byte_for_byte(repo):
    original = b"# caf\xe9 (latin-1)\r\n*.txt text\r\n"
    (repo.path / ".gitattributes").write_bytes(original)
    repo.commit(notebook(code("x = 1\n", "component:load", id="c1")), "first")
    for argv in (["log", "nb.ipynb"], ["merge", "nb.ipynb", "nb.ipynb", "nb.ipynb", "-o", "m.ipynb"]):
        done = repo.linkkernel(*argv)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
    done = repo.linkkernel("git", "install")
    assert (done.returncode, done.stderr) == (0, "")
    assert (repo.path / ".gitattributes").read_bytes() == original + b"*.ipynb merge=linkkernel diff=linkkernel\r\n"
    done = repo.linkkernel("git", "uninstall")
    assert (done.returncode, done.stderr) == (0, "")
    assert (repo.path / ".gitattributes").read_bytes() == original


# ---------------------------------------------------------------- run


def run_command(here: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linkkernel.cli", "run", *argv], cwd=here, env=kernel_env(),
                          capture_output=True, text=True, timeout=180)


def test_run_refuses_duplicate_cell_ids_before_a_kernel_starts(here: Path):
    # the kernel matches cells by id in the saved file, so it would run the wrong cell
    nb = json.loads(json.dumps(NOTEBOOK))
    nb["cells"][1]["id"] = "c1"
    (here / "dup.ipynb").write_text(json.dumps(nb))
    done = run_command(here, "dup.ipynb")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"linkkernel run: {here / 'dup.ipynb'}: cell 2 has the id 'c1' of cell 1; cell ids must be unique "
        "(saving the notebook in Jupyter repairs them)\n"
    )
    assert not (here / "dup.out.ipynb").exists()


def test_run_refuses_an_output_it_could_not_write_before_running_anything(here: Path):
    done = run_command(here, "nb.ipynb", "-o", "missing/out.ipynb")
    assert (done.returncode, done.stdout) == (1, ""), "the pipeline ran although its result had nowhere to go"
    assert done.stderr == "linkkernel run: missing/out.ipynb: cannot write: No such file or directory\n"


# ---------------------------------------------------------------- cache stores that cannot be used


@pytest.fixture(scope="module")
def archive(tmp_path_factory, link_kernelspec) -> Path:
    """nb.ipynb run once headless, its results exported: a real, signed archive."""
    home = tmp_path_factory.mktemp("archive")
    (home / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    for argv in (["run", "nb.ipynb"], ["cache", "export", "nb.ipynb", "-o", "cache.tar.gz"]):
        done = subprocess.run([sys.executable, "-m", "linkkernel.cli", *argv], cwd=home, env=kernel_env(),
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
    return home / "cache.tar.gz"


def test_cache_import_into_a_store_it_cannot_write_fails_instead_of_claiming_success(here: Path, archive: Path):
    # the store URL names a file, so no folder can be made under it
    done = subprocess.run([sys.executable, "-m", "linkkernel.cli", "cache", "import", str(archive),
                           "--notebook", "nb.ipynb", "--cache", str(here / "nb.ipynb")],
                          cwd=here, env=kernel_env(), capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, ""), done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"linkkernel cache: {archive}: import failed: cannot write to the cache store {here / 'nb.ipynb'}/")
    assert "Not a directory" in done.stderr


def test_an_s3_cache_store_without_credentials_is_one_line(here: Path):
    env = {k: v for k, v in kernel_env().items() if not k.startswith("AWS_")}
    # no credentials anywhere, and no instance-metadata lookup: botocore fails before any network
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(here / "none"), AWS_CONFIG_FILE=str(here / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([sys.executable, "-m", "linkkernel.cli", "cache", "export", "nb.ipynb", "-o", "c.tar.gz",
                           "--cache", "s3://bucket/cache"], cwd=here, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "linkkernel cache: cache store 's3://bucket/cache' cannot be used: Unable to locate credentials\n"
    )


# ---------------------------------------------------------------- merge of notebook metadata


def with_notebook_metadata(**metadata) -> dict:
    nb = json.loads(json.dumps(NOTEBOOK))
    nb["metadata"].update(metadata)
    return nb


def test_merge_reports_notebook_metadata_both_sides_changed_instead_of_dropping_theirs(here: Path, capsys):
    spec = {"name": "link-python", "display_name": "Link Python", "language": "python"}
    (here / "base.ipynb").write_text(json.dumps(with_notebook_metadata(kernelspec=spec)))
    (here / "ours.ipynb").write_text(json.dumps(with_notebook_metadata(kernelspec={**spec, "display_name": "Ours"})))
    (here / "theirs.ipynb").write_text(json.dumps(with_notebook_metadata(kernelspec={**spec, "display_name": "Theirs"})))
    assert refused(capsys, "merge", "base.ipynb", "ours.ipynb", "theirs.ipynb", "-o", "m.ipynb") == (
        "linkkernel merge: ours.ipynb: conflict in the notebook metadata: 'kernelspec' changed by both sides (ours kept)"
    )
    assert json.loads((here / "m.ipynb").read_text())["metadata"]["kernelspec"]["display_name"] == "Ours"


def test_merge_takes_language_info_the_kernels_recorded_without_a_conflict(here: Path, capsys):
    info = {"name": "python", "version": "3.11.7"}
    (here / "base.ipynb").write_text(json.dumps(with_notebook_metadata(language_info=info)))
    (here / "ours.ipynb").write_text(json.dumps(with_notebook_metadata(language_info={**info, "version": "3.12.1"})))
    (here / "theirs.ipynb").write_text(json.dumps(with_notebook_metadata(language_info={**info, "version": "3.13.0"})))
    assert main(["merge", "base.ipynb", "ours.ipynb", "theirs.ipynb", "-o", "m.ipynb"]) == 0
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- kernelspec install


@pytest.mark.parametrize("name", [".", ".."])
def test_install_refuses_a_name_that_is_a_folder_of_the_prefix_and_deletes_nothing(here: Path, capsys, name):
    # jupyter_client empties the destination first: kernels/. is every kernelspec, kernels/.. all of share/jupyter
    assert main(["install", "--prefix", "prefix", "--name", "keepme"]) == 0
    (here / "prefix" / "share" / "jupyter" / "labextensions").mkdir()
    capsys.readouterr()
    assert refused(capsys, "install", "--prefix", "prefix", "--name", name) == (
        f"linkkernel install: cannot install a kernelspec named {name!r}: it names a folder, not a kernelspec"
    )
    assert (here / "prefix" / "share" / "jupyter" / "kernels" / "keepme" / "kernel.json").exists()
    assert (here / "prefix" / "share" / "jupyter" / "labextensions").is_dir()


def test_install_reports_the_name_jupyter_lists_the_kernelspec_under(here: Path, capsys):
    assert main(["install", "--prefix", "prefix", "--name", "Link-GPU"]) == 0
    assert capsys.readouterr().out == (
        f"Installed kernelspec link-gpu (Link Python) in {here / 'prefix' / 'share' / 'jupyter' / 'kernels' / 'link-gpu'}\n"
    )


def test_log_shows_a_commit_message_holding_the_separator_characters(repo):
    message = "evil \x1f field \x1e record"
    repo.write(notebook(code("x = 1\n", "component:load", id="c1")))
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", message)
    done = repo.linkkernel("log", "nb.ipynb")
    assert (done.returncode, done.stderr) == (0, "")
    assert "    evil " in done.stdout and " record\n" in done.stdout
    assert "+ component load" in done.stdout


def test_merge_of_a_huge_repetitive_cell_edited_at_both_ends_does_not_hang(here: Path):
    # 100000 lines of three kinds: a pairwise line matcher over the whole cell is quadratic here
    body = "".join(f"row{i % 3} = {i % 3}\n" for i in range(100_000))
    for name, source in (("base", body), ("ours", "x = 0\n" + body), ("theirs", body + "y = 0\n")):
        (here / f"{name}.ipynb").write_text(json.dumps(with_cell(source=source)))
    done = subprocess.run([sys.executable, "-m", "linkkernel.cli", "merge", "base.ipynb", "ours.ipynb", "theirs.ipynb",
                           "-o", "m.ipynb"], cwd=here, env=kernel_env(), capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    assert "".join(json.loads((here / "m.ipynb").read_text())["cells"][0]["source"]) == "x = 0\n" + body + "y = 0\n"


# ---------------------------------------------------------------- text that is not Unicode

SURROGATE_LINE = "cell 1: holds '\\ud800', a lone surrogate escape that is not valid Unicode"


@pytest.mark.parametrize(
    "argv, line",
    [
        (["export", "odd.ipynb", "-o", "p.json"], f"linkkernel export: odd.ipynb: {SURROGATE_LINE}"),
        (["cache", "export", "odd.ipynb", "-o", "c.tar.gz"], f"linkkernel cache: odd.ipynb: {SURROGATE_LINE}"),
        (["diff", "nb.ipynb", "odd.ipynb"], f"linkkernel diff: odd.ipynb: {SURROGATE_LINE}"),
        (["merge", "nb.ipynb", "odd.ipynb", "nb.ipynb", "-o", "m.ipynb"], f"linkkernel merge: odd.ipynb: {SURROGATE_LINE}"),
        (["run", "odd.ipynb"], f"linkkernel run: {{here}}/odd.ipynb: {SURROGATE_LINE}"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "",
)
def test_a_lone_surrogate_escape_is_one_line(here: Path, capsys, argv, line):
    # "\ud800" is valid JSON but no text: it cannot be printed or written as UTF-8
    (here / "odd.ipynb").write_text(json.dumps(with_cell(source='x = "\ud800"\n')))
    assert refused(capsys, *argv) == line.format(here=here)
    assert sorted(p.name for p in here.iterdir()) == ["nb.ipynb", "odd.ipynb"]


def test_a_pipeline_document_with_a_lone_surrogate_is_one_line(here: Path, capsys):
    assert main(["export", "nb.ipynb", "-o", "p.json"]) == 0
    doc = json.loads((here / "p.json").read_text())
    doc["components"][0]["code"] = "x = '\ud800'"
    (here / "p.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert refused(capsys, "import", "p.json", "-o", "out.ipynb") == (
        "linkkernel import: p.json: not valid JSON text: it holds '\\ud800', a lone surrogate escape that is not valid Unicode"
    )
    assert not (here / "out.ipynb").exists()


def test_git_diff_goes_on_past_a_file_that_is_not_a_notebook(repo):
    # git stops the whole diff ('external diff died') at a driver that fails
    assert repo.linkkernel("git", "install").returncode == 0
    repo.write(notebook(code("x = 1\n", "component:load", id="c1")), "a.ipynb")
    repo.write(notebook(code("x = 1\n", "component:load", id="c1")), "b.ipynb")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "first")
    (repo.path / "a.ipynb").write_text("<<<<<<< HEAD\n{}\n=======\n")
    repo.write(notebook(code("x = 2\n", "component:load", id="c1")), "b.ipynb")
    done = repo.git("diff", check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert "not compared as notebooks: a.ipynb is not a notebook: invalid JSON" in done.stdout
    assert "+<<<<<<< HEAD\n" in done.stdout
    assert "+x = 2\n" in done.stdout, "the notebook after the broken one is still shown"


def test_uninstall_takes_the_name_install_was_given(here: Path, capsys, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(here / "prefix" / "share" / "jupyter"))
    assert main(["install", "--prefix", "prefix", "--name", "Link-GPU"]) == 0
    assert main(["uninstall", "--name", "Link-GPU"]) == 0
    assert not (here / "prefix" / "share" / "jupyter" / "kernels" / "link-gpu").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-5"])
def test_run_timeout_must_be_a_positive_number_of_seconds(here: Path, capsys, value):
    with pytest.raises(SystemExit) as exited:
        main(["run", "nb.ipynb", f"--timeout={value}"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        f"linkkernel run: argument --timeout: {value!r} is not a positive number of seconds "
        "(see 'linkkernel run --help')\n"
    )


def test_run_of_a_notebook_missing_its_cell_ids_prints_no_nbformat_warning(here: Path):
    nb = json.loads(json.dumps(NOTEBOOK))
    for cell in nb["cells"]:
        del cell["id"]
    (here / "noids.ipynb").write_text(json.dumps(nb))
    done = run_command(here, "noids.ipynb")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "linkkernel run: [1/2] load ran\nlinkkernel run: [2/2] train ran\n"


@pytest.mark.parametrize(
    "change",
    [{"namespace": [1]}, {"namespace": {"x": 5}}, {"outputs": "text"}, {"parents": ["load"]}, {"run_id": None}],
    ids=["namespace-list", "digest-number", "outputs-text", "parents-list", "run-id-null"],
)
def test_a_malformed_record_in_the_cache_store_means_run_again(here: Path, archive: Path, change):
    # a torn or hand-edited record in the store: the component is simply not fresh
    cache = here / "store"
    subprocess.run([sys.executable, "-m", "linkkernel.cli", "cache", "import", str(archive), "--notebook", "nb.ipynb",
                    "--cache", str(cache)], cwd=here, env=kernel_env(), check=True, capture_output=True)
    [record] = cache.glob("*/records/load.json")
    record.write_text(json.dumps({**json.loads(record.read_text()), **change}))
    done = subprocess.run([sys.executable, "-m", "linkkernel.cli", "cache", "export", "nb.ipynb", "-o", "c.tar.gz",
                           "--cache", str(cache)], cwd=here, env=kernel_env(), capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "exported 0 components to c.tar.gz\nnot exported: load (never ran); train (stale)\n"
