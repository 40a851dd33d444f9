"""QA regressions of the git commands on bad input, in a real repository with real git."""

from __future__ import annotations

import json

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

