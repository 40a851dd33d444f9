"""QA regressions of the git commands on bad input, in a real repository with real git."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from git_support import Repo, code, notebook


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path)


def test_an_attributes_file_that_cannot_be_read_is_one_line_and_leaves_git_config_alone(repo):
    (repo.path / ".gitattributes").mkdir()
    for action in ("install", "uninstall"):
        done = repo.linkkernel("git", action)
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == f"linkkernel git: {repo.path / '.gitattributes'}: cannot read: Is a directory\n"
    assert repo.git("config", "--get-regexp", "linkkernel", check=False).stdout == ""


def test_textconv_of_a_file_that_is_not_there_is_one_line(repo):
    done = repo.linkkernel("git", "textconv", "gone.ipynb")
    assert (done.returncode, done.stderr) == (1, "linkkernel git: cannot read gone.ipynb: No such file or directory\n")


def test_log_outside_a_repository_says_so_once(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = Repo(tmp_path)
    done = repo.linkkernel("log", str(outside / "nb.ipynb"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"linkkernel log: git log failed for {outside / 'nb.ipynb'}: fatal: not a git repository")


def test_log_goes_on_past_a_commit_whose_file_is_not_a_notebook(repo):
    repo.commit(notebook(code("x = 1\n", "component:load", id="c1")), "first")
    (repo.path / "nb.ipynb").write_text(json.dumps([1, 2]))
    repo.git("commit", "-qam", "broken by a text merge")
    repo.commit(notebook(code("x = 2\n", "component:load", id="c1")), "mended")
    done = repo.linkkernel("log", "nb.ipynb")
    assert (done.returncode, done.stderr) == (0, "")
    assert [line.strip() for line in done.stdout.splitlines() if line.startswith("    ")] == [
        "mended", "broken by a text merge", "first",
    ]
    assert "(not compared: nb.ipynb at " in done.stdout
    assert "not a notebook (a JSON list, not an object))" in done.stdout
    assert done.stdout.count("+ component load") == 1, "the first commit is still shown in full"


@pytest.mark.parametrize("command", ["diff", "log"])
def test_diff_and_log_on_a_terminal_colour_unless_no_color_is_set(repo, command):
    repo.commit(notebook(code("x = 1\n", "component:load", id="c1")), "first")
    repo.write(notebook(code("x = 2\n", "component:load", id="c1")), "b.ipynb")
    argv = ["diff", "nb.ipynb", "b.ipynb"] if command == "diff" else ["log", "nb.ipynb"]

    def on_a_terminal(**env: str) -> bytes:
        leader, follower = os.openpty()
        try:
            subprocess.run([sys.executable, "-m", "linkkernel.cli", *argv], cwd=repo.path, env={**repo.env, **env},
                           stdout=follower, stderr=subprocess.DEVNULL, timeout=60, check=True)
            return os.read(leader, 1 << 16)
        finally:
            os.close(leader)
            os.close(follower)

    assert b"\x1b[" in on_a_terminal()
    assert b"\x1b[" not in on_a_terminal(NO_COLOR="1")
