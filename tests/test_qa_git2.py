"""Second QA round of the git tools, as a team used to nbdime would use them: real git, real files."""

from __future__ import annotations

import copy

import pytest

from git_support import Repo, code, notebook, pipeline_cells, source


@pytest.fixture
def repo(tmp_path):
    repo = Repo(tmp_path)
    done = repo.linkkernel("git", "install")
    assert done.returncode == 0, done.stderr
    repo.commit(notebook(*pipeline_cells()), "base")
    return repo


def test_git_diff_of_a_renamed_and_edited_notebook_goes_through_the_driver(repo):
    """git passes 9 arguments for a rename; refusing them made git stop the whole diff."""
    repo.git("mv", "nb.ipynb", "renamed.ipynb")
    nb = repo.read("renamed.ipynb")
    nb["cells"][1]["source"] = "data = [5]\n"
    repo.write(nb, "renamed.ipynb")
    repo.git("add", "-A")
    done = repo.git("diff", "--cached", "-M", check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert "--- a/nb.ipynb\n+++ b/renamed.ipynb\n## cell 2 modified (component load)\n" in done.stdout
    assert "+data = [5]" in done.stdout
