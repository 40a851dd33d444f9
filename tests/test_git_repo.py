"""The drivers inside real git: install, merge real branches, diff, log -p, show, linkkernel log."""

from __future__ import annotations

import copy
import json

import pytest

from git_support import Repo, code, notebook, pipeline_cells, source, stream, tags, validate


def base_notebook():
    return notebook(*pipeline_cells())


@pytest.fixture
def repo(tmp_path):
    repo = Repo(tmp_path)
    done = repo.linkkernel("git", "install")
    assert done.returncode == 0, done.stderr
    repo.commit(base_notebook(), "base: load, clean, train")
    return repo


def test_install_registers_drivers_and_textconv_and_uninstall_removes_them(repo):
    config = repo.git("config", "--get-regexp", r"^(merge|diff)\.linkkernel\.").stdout
    assert "merge.linkkernel.driver" in config and "%O %A %B %L %P" in config
    assert "diff.linkkernel.command" in config and "diff.linkkernel.textconv" in config
    assert (repo.path / ".gitattributes").read_text() == "*.ipynb merge=linkkernel diff=linkkernel\n"
    assert repo.git("check-attr", "merge", "diff", "--", "nb.ipynb").stdout.count("linkkernel") == 2

    done = repo.linkkernel("git", "uninstall")
    assert done.returncode == 0, done.stderr
    assert repo.git("config", "--get-regexp", "linkkernel", check=False).stdout == ""
    assert (repo.path / ".gitattributes").read_text() == ""


def test_global_install_uses_the_global_config_and_attributes_file(repo):
    done = repo.linkkernel("git", "install", "--global")
    assert done.returncode == 0, done.stderr
    assert "%O %A %B %L %P" in repo.git("config", "--global", "merge.linkkernel.driver").stdout
    assert (repo.home / ".config" / "git" / "attributes").read_text() == "*.ipynb merge=linkkernel diff=linkkernel\n"


def test_a_clean_merge_of_real_branches_is_a_valid_notebook_with_both_sides(repo):
    ours, theirs = base_notebook(), base_notebook()
    ours["cells"].insert(1, code("extra = 0\n", "component:extra", id="e1"))
    ours["cells"][4]["metadata"]["tags"].append("parent:extra")
    theirs["cells"][1]["source"] = "data = [1, 2, 3, 4]\n"
    theirs["cells"][3]["metadata"]["tags"].append("parent:load")
    done = repo.merge_branch(ours, theirs)
    assert done.returncode == 0, done.stdout + done.stderr
    result = repo.read()
    validate(result)
    assert [source(c) for c in result["cells"]][1:3] == ["extra = 0\n", "data = [1, 2, 3, 4]\n"]
    assert tags(result["cells"][4]) == ["component:train", "parent:clean", "parent:extra", "parent:load"]
    assert repo.git("status", "--porcelain").stdout == ""


def test_a_conflicted_merge_is_reported_by_git_with_markers_inside_the_cell(repo):
    ours, theirs = base_notebook(), base_notebook()
    ours["cells"][3]["source"] = "model = max(clean)\nprint(model)\n"
    theirs["cells"][3]["source"] = "model = min(clean)\nprint(model)\n"
    done = repo.merge_branch(ours, theirs)
    assert done.returncode == 1
    assert "CONFLICT (content): Merge conflict in nb.ipynb" in done.stdout
    assert "linkkernel merge: nb.ipynb: conflict in cell 4: both sides edited the same lines" in done.stderr
    result = repo.read()
    validate(result)
    assert source(result["cells"][3]) == (
        "<<<<<<< ours\nmodel = max(clean)\n=======\nmodel = min(clean)\n>>>>>>> theirs\nprint(model)\n"
    )
    assert repo.git("status", "--porcelain").stdout.startswith("UU nb.ipynb")


def test_the_conflict_marker_size_attribute_reaches_the_driver(repo):
    (repo.path / ".gitattributes").write_text("*.ipynb merge=linkkernel diff=linkkernel conflict-marker-size=12\n")
    repo.git("commit", "-qam", "longer markers")
    ours, theirs = base_notebook(), base_notebook()
    ours["cells"][1]["source"] = "data = [0]\n"
    theirs["cells"][1]["source"] = "data = [9]\n"
    assert repo.merge_branch(ours, theirs).returncode == 1
    assert source(repo.read()["cells"][1]) == "<" * 12 + " ours\ndata = [0]\n" + "=" * 12 + "\ndata = [9]\n" + ">" * 12 + " theirs\n"


def test_similar_cells_inserted_on_both_branches_conflict_instead_of_silently_keeping_ours(repo):
    ours, theirs = base_notebook(), base_notebook()
    ours["cells"].append(code("plot(model)\nsave('a.png')\n", "component:plot", "parent:train", id="po"))
    theirs["cells"].append(code("plot(model)\nsave('b.png')\n", "component:plot", "parent:train", id="pt"))
    done = repo.merge_branch(ours, theirs)
    assert done.returncode == 1
    result = repo.read()
    validate(result)
    assert len(result["cells"]) == 5
    assert "save('a.png')" in source(result["cells"][4]) and "save('b.png')" in source(result["cells"][4])


def test_deleting_a_parent_against_a_new_child_is_a_conflict_not_a_dangling_edge(repo):
    ours, theirs = base_notebook(), base_notebook()
    ours["cells"].append(code("plot = clean\n", "component:plot", "parent:clean", id="p1"))
    del theirs["cells"][2]
    theirs["cells"][2]["metadata"]["tags"] = ["component:train", "parent:load"]
    done = repo.merge_branch(ours, theirs)
    assert done.returncode == 1
    assert "parent 'clean' of 'plot' is not declared in the merged notebook" in done.stderr
    validate(repo.read())


def test_without_the_driver_in_git_config_linkkernel_warns_in_one_line(repo):
    repo.git("config", "--remove-section", "merge.linkkernel")
    (repo.path / "other.ipynb").write_text(json.dumps(base_notebook()))
    done = repo.linkkernel("diff", "nb.ipynb", "other.ipynb")
    assert done.returncode == 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "names the 'linkkernel' git driver but git config lacks it" in lines[0]
    assert "linkkernel git install" in lines[0]
    repo.linkkernel("git", "install")
    assert repo.linkkernel("diff", "nb.ipynb", "other.ipynb").stderr == ""


def test_git_diff_log_p_and_show_are_notebook_aware(repo):
    nb = base_notebook()
    nb["cells"][3]["source"] = "model = sum(clean) / 2\nprint(model)\n"
    nb["cells"][3]["outputs"] = [stream("6\n")]
    nb["cells"][3]["metadata"]["tags"].append("remote:gpu1")
    repo.write(nb)
    diff = repo.git("diff").stdout
    assert "## cell 4 modified (component train)" in diff
    assert "-model = sum(clean)" in diff and "+model = sum(clean) / 2" in diff
    assert "~ remote of train: (local) -> gpu1" in diff
    assert '"outputs"' not in diff and "12" not in diff

    repo.git("commit", "-qam", "train on the gpu")
    for command in (("log", "-p", "-1"), ("show", "HEAD")):
        shown = repo.git(*command).stdout
        assert "train on the gpu" in shown
        assert "-## code cell id=c3 [component:train parent:clean]" in shown
        assert "+## code cell id=c3 [component:train parent:clean remote:gpu1]" in shown
        assert "+model = sum(clean) / 2" in shown and '"source"' not in shown


def test_linkkernel_log_shows_each_commit_with_its_code_and_pipeline_changes(repo):
    nb = base_notebook()
    nb["cells"].append(code("report = model\n", "component:report", "parent:train", id="r1"))
    repo.commit(nb, "add a report")
    nb = copy.deepcopy(nb)
    nb["cells"][4]["metadata"]["tags"] = ["component:summary", "parent:train"]
    repo.commit(nb, "rename report to summary")
    repo.git("mv", "nb.ipynb", "renamed.ipynb")
    repo.git("commit", "-qm", "move the notebook")

    done = repo.linkkernel("log", "renamed.ipynb")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\x1b[" not in out
    commits = out.split("commit ")[1:]
    assert [c.splitlines()[4].strip() for c in commits] == [
        "move the notebook", "rename report to summary", "add a report", "base: load, clean, train",
    ]
    assert "Author: Ada <ada@example.org>" in commits[0]
    assert "(no code or pipeline change)" in commits[0]
    assert "~ component report renamed to summary" in commits[1]
    assert "+ component report (parents: train)" in commits[2] and "+report = model" in commits[2]
    assert "+ edge load -> clean" in commits[3]

    limited = repo.linkkernel("log", "renamed.ipynb", "-n", "1").stdout
    assert limited.count("\ncommit ") + limited.startswith("commit ") == 1


def test_bad_input_is_one_line(repo):
    (repo.path / "bad.ipynb").write_text("{not json")
    done = repo.linkkernel("diff", "nb.ipynb", "bad.ipynb")
    assert done.returncode == 1
    assert done.stderr.startswith("linkkernel diff: bad.ipynb is not a notebook: invalid JSON")
    assert len(done.stderr.splitlines()) == 1
    shown = repo.linkkernel("git", "textconv", "bad.ipynb")  # git refuses to show a commit if textconv fails
    assert shown.returncode == 0 and shown.stdout == "{not json"
    done = repo.linkkernel("merge", "nb.ipynb", "nb.ipynb", "nb.ipynb")
    assert done.returncode == 1 and done.stderr == "linkkernel merge: say where the merged notebook goes with -o OUT\n"
    done = repo.linkkernel("log", "missing.ipynb")
    assert done.returncode == 1 and "no commits touch missing.ipynb" in done.stderr


def test_the_same_notebook_added_on_both_branches_merges_without_a_base(repo):
    first = notebook(code("a = 1\n", "component:a", id="a1"), code("print(a)\n", id="p1"))
    second = notebook(code("a = 1\n", "component:a", id="a2"), code("b = a\n", "component:b", "parent:a", id="b2"))
    repo.git("checkout", "-q", "-b", "theirs")
    repo.commit(second, "theirs adds new.ipynb", name="new.ipynb")
    repo.git("checkout", "-q", "main")
    repo.commit(first, "ours adds new.ipynb", name="new.ipynb")
    done = repo.git("merge", "theirs", "-m", "merge", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = repo.read("new.ipynb")
    validate(result)
    assert [source(c) for c in result["cells"]] == ["a = 1\n", "print(a)\n", "b = a\n"]
