"""Second QA round of the git tools, as a team used to nbdime would use them: real git, real files."""

from __future__ import annotations

import copy

import pytest

from git_support import Repo, code, notebook, pipeline_cells, source, tags, validate


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


def test_a_merge_with_an_invalid_notebook_on_one_side_names_the_notebook_and_side_and_keeps_ours(repo):
    """git hands the driver temp files (.merge_file_XXXXXX): the error must name nb.ipynb and which version."""
    repo.git("checkout", "-q", "-b", "theirs")
    (repo.path / "nb.ipynb").write_text('{"cells": [ broken')
    repo.git("commit", "-qam", "theirs breaks it")
    repo.git("checkout", "-q", "main")
    ours = notebook(*pipeline_cells())
    ours["cells"][1]["source"] = "data = [0]\n"
    repo.commit(ours, "ours")
    done = repo.git("merge", "theirs", "-m", "merge", check=False)
    assert done.returncode == 1
    assert "CONFLICT (content): Merge conflict in nb.ipynb" in done.stdout
    assert done.stderr == (
        "linkkernel merge: nb.ipynb (theirs) is not a notebook: invalid JSON (Expecting value: line 1 column 13 (char 12))\n"
    )
    assert repo.read() == ours  # nothing lost: the working file is ours, git keeps all three versions
    assert repo.git("status", "--porcelain").stdout.startswith("UU nb.ipynb")


def merge(repo, base, ours, theirs):
    """Commit `base` on main, `theirs` on a branch and `ours` on main; returns `git merge theirs`."""
    repo.commit(base, "new base")
    return repo.merge_branch(ours, theirs)


def sides(base):
    return base, copy.deepcopy(base), copy.deepcopy(base)


def test_a_dangling_parent_already_there_does_not_turn_two_edge_additions_into_a_failed_merge(repo):
    """The cycle check met the old dangling parent, found no cycle, and the merge gave up: theirs' edge was lost."""
    base, ours, theirs = sides(notebook(
        code("a = 1\n", "component:a", id="a"), code("b = 1\n", "component:b", id="b"),
        code("w = 1\n", "component:wip", "parent:not_written_yet", id="w"),
    ))
    ours["cells"][1]["metadata"]["tags"].append("parent:a")
    theirs["cells"].append(code("c = a\n", "component:c", "parent:a", id="c"))
    done = merge(repo, base, ours, theirs)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    result = repo.read()
    validate(result)
    assert [(c["id"], tags(c)) for c in result["cells"]] == [
        ("a", ["component:a"]), ("b", ["component:b", "parent:a"]),
        ("w", ["component:wip", "parent:not_written_yet"]), ("c", ["component:c", "parent:a"]),
    ]


@pytest.mark.parametrize("problem", [
    [code("a = 1\n", "Component:a", id="a")],  # malformed tag
    [code("a = 1\n", "component:a", id="a"), code("a = 2\n", "component:a", id="a2")],  # duplicate name
])
def test_a_declaration_problem_already_on_both_sides_is_not_a_merge_conflict(repo, problem):
    """Like a dangling parent already there: the merge did not make it, and no side touched that cell."""
    base, ours, theirs = sides(notebook(*problem, code("b = 1\n", id="b"), code("c = 1\n", id="c")))
    ours["cells"][-2]["source"] = "b = 2\n"
    theirs["cells"][-1]["source"] = "c = 2\n"
    done = merge(repo, base, ours, theirs)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    result = repo.read()
    validate(result)
    assert result["cells"][:len(problem)] == base["cells"][:len(problem)]
    assert [source(c) for c in result["cells"][-2:]] == ["b = 2\n", "c = 2\n"]


def attached(text, **images):
    cell = {"cell_type": "markdown", "metadata": {}, "source": text, "id": "m1"}
    cell["attachments"] = {name: {"image/png": data} for name, data in images.items()}
    return cell


@pytest.mark.parametrize("cell_type", ["markdown", "raw"])
def test_images_attached_on_both_sides_are_all_kept(repo, cell_type):
    """Ours' attachments won silently and theirs' image was lost; a raw cell lost them all."""
    base, ours, theirs = sides(notebook(attached("Plot:\n![p](attachment:p.png)\n", **{"p.png": "UA=="}) | {"cell_type": cell_type}))
    ours["cells"][0]["attachments"]["a.png"] = {"image/png": "QQ=="}
    ours["cells"][0]["source"] = "Plot:\n![p](attachment:p.png)\n![a](attachment:a.png)\n"
    theirs["cells"][0]["attachments"]["b.png"] = {"image/png": "Qg=="}
    theirs["cells"][0]["source"] = "Plots:\n![p](attachment:p.png)\n"
    done = merge(repo, base, ours, theirs)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    result = repo.read()
    validate(result)
    assert source(result["cells"][0]) == "Plots:\n![p](attachment:p.png)\n![a](attachment:a.png)\n"
    assert result["cells"][0]["attachments"] == {
        "p.png": {"image/png": "UA=="}, "a.png": {"image/png": "QQ=="}, "b.png": {"image/png": "Qg=="},
    }


def test_the_same_attachment_replaced_differently_on_both_sides_is_a_conflict_in_the_cell(repo):
    base, ours, theirs = sides(notebook(attached("![p](attachment:p.png)\n", **{"p.png": "UA=="})))
    ours["cells"][0]["attachments"]["p.png"] = {"image/png": "QQ=="}
    theirs["cells"][0]["attachments"]["p.png"] = {"image/png": "Qg=="}
    done = merge(repo, base, ours, theirs)
    assert done.returncode == 1
    assert "conflict in cell 1: attachment 'p.png' changed by both sides" in done.stderr
    result = repo.read()
    validate(result)
    assert "<<<<<<< ours\n" in source(result["cells"][0])
    assert source(result["cells"][0]).endswith("![p](attachment:p.png)\n")
    assert result["cells"][0]["attachments"] == {"p.png": {"image/png": "QQ=="}}


def test_cell_ids_theirs_gave_an_older_notebook_are_kept_not_replaced(repo):
    """Theirs saved the notebook in a JupyterLab that adds ids (4.5), ours still has none (4.4):
    the merge invented 'merged-N' ids instead, so the next merge and diff could not match by id."""
    base = notebook(code("a = 1\n", "component:a"), code("b = a\n", "component:b", "parent:a"))
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    theirs["nbformat_minor"] = 5
    for cell, cell_id in zip(theirs["cells"], ["4f1e2a", "9c0d3b"]):
        cell["id"] = cell_id
    theirs["cells"].append(code("c = b\n", "component:c", "parent:b", id="77aa01"))
    ours["cells"][0]["source"] = "a = 2\n"
    done = merge(repo, base, ours, theirs)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    result = repo.read()
    validate(result)
    assert result["nbformat_minor"] == 5
    assert [(c["id"], source(c)) for c in result["cells"]] == [("4f1e2a", "a = 2\n"), ("9c0d3b", "b = a\n"), ("77aa01", "c = b\n")]


def test_git_diff_shows_an_image_attached_replaced_or_removed(repo):
    """A markdown cell whose pasted image changed showed no change at all."""
    nb = notebook(attached("![p](attachment:p.png)\n", **{"p.png": "UA==", "old.png": "Tw=="}))
    repo.commit(nb, "with images")
    nb["cells"][0]["attachments"] = {"p.png": {"image/png": "QQ=="}, "new.png": {"image/png": "Tg=="}}
    repo.write(nb)
    done = repo.git("diff", check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[-4:] == [
        "## cell 1 modified (markdown)",
        "   attachment 'new.png' added",
        "   attachment 'old.png' removed",
        "   attachment 'p.png' changed",
    ]


def test_linkkernel_log_names_a_non_ascii_notebook_as_it_is_called(repo):
    """git quotes such paths in --raw output ("sub/\\303\\244.ipynb"), and log showed them that way."""
    (repo.path / "sub").mkdir()
    repo.commit(notebook(code("x = 'ü'\n", "component:exercise", id="u1")), "add", name="sub/Übung ä.ipynb")
    repo.git("mv", "sub/Übung ä.ipynb", "sub/Übung ö.ipynb")
    repo.git("commit", "-qm", "rename")
    done = repo.linkkernel("log", "sub/Übung ö.ipynb")
    assert (done.returncode, done.stderr) == (0, "")
    assert "--- a/sub/Übung ä.ipynb\n+++ b/sub/Übung ä.ipynb\n" in done.stdout
    assert "\\303" not in done.stdout


def test_install_again_after_nbdime_config_git_makes_linkkernel_the_driver_again(repo):
    """nbdime's config-git appends its own '*.ipynb' lines; install saw its line present and
    said 'registered' while git went on using nbdime's drivers, the later lines."""
    attributes = repo.path / ".gitattributes"
    nbdime_lines = "\n*.ipynb\tdiff=jupyternotebook\n\n*.ipynb\tmerge=jupyternotebook\n"  # what `nbdime config-git --enable` appends
    attributes.write_text(attributes.read_text() + nbdime_lines + "docs/*.ipynb -diff\n")
    done = repo.linkkernel("git", "install")
    assert done.returncode == 0, done.stderr
    assert repo.git("check-attr", "merge", "diff", "--", "nb.ipynb").stdout == "nb.ipynb: merge: linkkernel\nnb.ipynb: diff: linkkernel\n"
    assert repo.git("check-attr", "diff", "--", "docs/x.ipynb").stdout == "docs/x.ipynb: diff: unset\n"
    assert attributes.read_text().endswith("*.ipynb\tmerge=jupyternotebook\n*.ipynb merge=linkkernel diff=linkkernel\ndocs/*.ipynb -diff\n")
    assert attributes.read_text().count("linkkernel") == 2
    repo.linkkernel("git", "install")
    assert attributes.read_text().count("linkkernel") == 2


@pytest.mark.parametrize("given", [".", "sub"])
def test_log_of_a_directory_says_it_wants_a_notebook(repo, given):
    """'linkkernel log .' said 'not a git repository', about the folder above the repository."""
    (repo.path / "sub").mkdir()
    repo.commit(notebook(code("x = 1\n", id="x")), "nested", name="sub/inner.ipynb")
    done = repo.linkkernel("log", given)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"linkkernel log: {given} is a directory; give the notebook whose history you want\n"


def test_log_shows_the_commit_that_created_the_notebook_whatever_log_show_root_says(repo):
    """With log.showRoot=false git --follow skips the root commit: the notebook's first version vanished."""
    nb = repo.read()
    nb["cells"][1]["source"] = "data = [3]\n"
    repo.commit(nb, "second")
    repo.git("config", "log.showRoot", "false")
    done = repo.linkkernel("log", "nb.ipynb")
    assert (done.returncode, done.stderr) == (0, "")
    assert [line.strip() for line in done.stdout.splitlines() if line.startswith("    ")] == ["second", "base"]
    assert "+ component load\n" in done.stdout


def test_a_line_appended_to_a_cell_does_not_conflict_with_an_edit_just_above(repo):
    """Jupyter saves a cell's last line without a newline, so appending a line changed the old
    last line too and conflicted with any edit next to it; git merges the same text cleanly."""
    base, ours, theirs = sides(notebook(code(["a = 1\n", "b = 2\n", "c = 3"], id="x")))
    ours["cells"][0]["source"] = ["a = 1\n", "b = 2\n", "c = 3\n", "d = 4"]
    theirs["cells"][0]["source"] = ["a = 1\n", "b = 20\n", "c = 3"]
    done = merge(repo, base, ours, theirs)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    result = repo.read()
    validate(result)
    assert result["cells"][0]["source"] == ["a = 1\n", "b = 20\n", "c = 3\n", "d = 4"]


@pytest.mark.parametrize(("ours", "theirs", "merged"), [
    ("a = 1\nb = 2\n", "a = 0\nb = 2", "a = 0\nb = 2\n"),  # a final newline added on one side is kept
    ("a = 1\nb = 3", "a = 1\nb = 4", "a = 1\n<<<<<<< ours\nb = 3\n=======\nb = 4\n>>>>>>> theirs"),
])
def test_final_newlines_merge_like_any_other_change(ours, theirs, merged):
    from linkkernel.git.textmerge import merge_text

    assert merge_text("a = 1\nb = 2", ours, theirs)[0] == merged


def test_git_diff_of_a_line_appended_to_a_cell_shows_only_that_line(repo):
    """The old last line (saved without a newline by Jupyter) was shown removed and added again."""
    nb = notebook(code(["a = 1\n", "b = 2"], id="x"), code(["x = 1"], id="y"))
    repo.commit(nb, "two cells")
    nb["cells"][0]["source"] = ["a = 1\n", "b = 2\n", "c = 3"]
    nb["cells"][1]["source"] = ["x = 1\n"]
    repo.write(nb)
    done = repo.git("diff", check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[2:] == [
        "## cell 1 modified (code)", "@@ -1,2 +1,3 @@", " a = 1", " b = 2", "+c = 3",
        "## cell 2 modified (code)", "\\ newline at the end of the cell added",
    ]


def test_rebase_and_cherry_pick_go_through_the_driver_too(repo):
    base = repo.read()
    repo.git("checkout", "-q", "-b", "feature")
    feature = copy.deepcopy(base)
    feature["cells"][1]["source"] = "data = [7]\n"
    repo.commit(feature, "feature: more data")
    feature["cells"].append(code("report = model\n", "component:report", "parent:train", id="r1"))
    repo.commit(feature, "feature: report")
    repo.git("checkout", "-q", "main")
    main = copy.deepcopy(base)
    main["cells"][3]["source"] = "model = max(clean)\nprint(model)\n"
    repo.commit(main, "main: max")

    repo.git("checkout", "-q", "feature")
    repo.git("rebase", "-q", "main")
    result = repo.read()
    validate(result)
    assert [source(c) for c in result["cells"][1:]] == [
        "data = [7]\n", "clean = [x * 2 for x in data]\n", "model = max(clean)\nprint(model)\n", "report = model\n",
    ]

    repo.git("checkout", "-q", "main")
    main["cells"][1]["source"] = "data = [8]\n"
    repo.commit(main, "main: other data")
    done = repo.git("cherry-pick", "feature~1", check=False)
    assert done.returncode == 1 and "conflict in cell 2: both sides edited the same lines" in done.stderr
    result = repo.read()
    validate(result)
    assert source(result["cells"][1]) == "<<<<<<< ours\ndata = [8]\n=======\ndata = [7]\n>>>>>>> theirs\n"


@pytest.mark.parametrize("args", [("--cached",), ("--ours",), ("--theirs",)])
def test_git_diff_during_a_conflicted_merge_does_not_kill_git(repo, args):
    """For an unmerged path git calls the diff driver with the path alone; refusing it made git
    stop with 'external diff died' exactly when the user is resolving the conflict."""
    base = repo.read()
    base["cells"][0]["source"] = "# Pipeline, reviewed\n"
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][1]["source"] = "data = [8]\n"
    theirs["cells"][1]["source"] = "data = [7]\n"
    assert merge(repo, base, ours, theirs).returncode == 1
    done = repo.git("diff", *args, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("* Unmerged path nb.ipynb\n")
    if args != ("--cached",):  # against one side, the working file with its markers
        assert "## cell 2 modified (component load)" in done.stdout and "+<<<<<<< ours" in done.stdout
    done = repo.linkkernel("diff", "nb.ipynb")  # a user's one argument is still a mistake
    assert (done.returncode, done.stderr) == (1, "linkkernel diff: expected A.ipynb B.ipynb, got 1 files\n")


def test_diff_outputs_of_a_hand_edited_output_is_not_a_traceback(repo):
    """An output whose 'data' is not an object (a hand edit, a broken tool) crashed --outputs."""
    nb = repo.read()
    nb["cells"][3]["outputs"] = [{"output_type": "display_data", "data": "12", "metadata": {}}]
    repo.write(nb, "other.ipynb")
    done = repo.linkkernel("diff", "--outputs", "nb.ipynb", "other.ipynb")
    assert (done.returncode, done.stderr) == (0, "")
    assert "## cell 4 modified (component train)\n   outputs changed\n  @@ -1 +1 @@\n  -12\n  +<display_data>\n" in done.stdout


def test_git_diff_shows_the_notebook_switched_to_another_kernel_but_not_what_kernels_record(repo):
    """Switching a notebook off Link Python turns its pipeline off: a reviewer must see it.
    The Python version and VS Code's interpreter hash, recorded as the notebook runs, are noise."""
    nb = repo.read()
    nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.12.1"}
    nb["metadata"]["vscode"] = {"interpreter": {"hash": "ab12"}}
    nb["metadata"]["title"] = "Churn"
    repo.write(nb)
    done = repo.git("diff")
    assert "## notebook\n   kernel link-python -> python3\n   metadata 'title' changed\n" in done.stdout
    assert "language_info" not in done.stdout and "vscode" not in done.stdout


def test_vscode_metadata_written_on_both_sides_is_no_merge_conflict(repo):
    base = repo.read()
    base["metadata"]["vscode"] = {"interpreter": {"hash": "base"}}
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["metadata"]["vscode"] = {"interpreter": {"hash": "ours"}}
    theirs["metadata"]["vscode"] = {"interpreter": {"hash": "theirs"}}
    theirs["cells"][1]["source"] = "data = [7]\n"
    done = merge(repo, base, ours, theirs)
    assert done.returncode == 0, done.stdout + done.stderr
    merged = repo.read()
    validate(merged)
    assert merged["cells"][1]["source"] == "data = [7]\n"
