"""Third QA round of the git tools: notebooks as JupyterLab, VS Code and Colab write them,
and git workflows beyond `git merge`, with real git."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from git_support import Repo, code, notebook, pipeline_cells, source, validate


@pytest.fixture
def repo(tmp_path):
    repo = Repo(tmp_path)
    done = repo.linkkernel("git", "install")
    assert done.returncode == 0, done.stderr
    return repo


def commit_text(repo: Repo, text: str | bytes, message: str, name: str = "nb.ipynb") -> None:
    """Commit a notebook byte for byte as some other tool saved it."""
    (repo.path / name).write_bytes(text.encode() if isinstance(text, str) else text)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", message)


def merge_saved(repo: Repo, ours: dict, theirs: dict, saved) -> subprocess.CompletedProcess:
    """Repo.merge_branch for notebooks another tool saved: each side committed as `saved` writes it."""
    repo.git("checkout", "-q", "-b", "theirs")
    commit_text(repo, saved(theirs), "theirs")
    repo.git("checkout", "-q", "main")
    commit_text(repo, saved(ours), "ours")
    return repo.git("merge", "theirs", "-m", "merge", check=False)


# ---- Google Colab -----------------------------------------------------------------------------


def colab_cell(lines: list[str], cell_id: str, *tags_: str, run: int = 0) -> dict:
    """A code cell as Colab saves it: its id, run record and output id in the metadata."""
    metadata = {
        "id": cell_id, "colab": {"base_uri": "https://localhost:8080/", "height": 35 + run},
        "outputId": f"{cell_id}-out-{run}",
        "executionInfo": {"status": "ok", "timestamp": 1700000000000 + run, "user_tz": -60, "elapsed": 10 + run,
                          "user": {"displayName": "Ada", "userId": "0123"}},
    }
    if tags_:
        metadata["tags"] = list(tags_)
    return {"cell_type": "code", "source": lines, "metadata": metadata, "execution_count": run or None, "outputs": []}


def colab_notebook(*cells: dict) -> dict:
    return {"nbformat": 4, "nbformat_minor": 0,
            "metadata": {"colab": {"provenance": []}, "kernelspec": {"name": "python3", "display_name": "Python 3"},
                         "language_info": {"name": "python"}},
            "cells": list(cells)}


def colab_text(nb: dict) -> str:
    """Colab's layout: two-space indent, keys in its own order, no final newline."""
    return json.dumps(nb, indent=2)


def rerun_in_colab(nb: dict, run: int) -> dict:
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        cell_id = cell["metadata"]["id"]
        cell["metadata"] = colab_cell([], cell_id, *cell["metadata"].get("tags", []), run=run)["metadata"]
        cell["execution_count"] = run
    return nb


def test_two_people_re_running_a_colab_notebook_is_no_conflict_and_no_diff(repo):
    """Colab rewrites executionInfo, outputId and colab.height in every cell it runs: a merge
    of two re-run branches stopped on each cell, and a delete against a re-run was a conflict."""
    base = colab_notebook(
        colab_cell(["data = [1, 2]\n", "print(data)"], "c1", "component:load"),
        colab_cell(["total = sum(data)\n", "print(total)"], "c2", "component:train", "parent:load"),
        colab_cell(["scratch = 1"], "c3"),
    )
    commit_text(repo, colab_text(base), "base")
    repo.git("checkout", "-q", "-b", "theirs")
    theirs = rerun_in_colab(base, 5)
    theirs["cells"][1]["source"] = ["total = sum(data) * 2\n", "print(total)"]
    commit_text(repo, colab_text(theirs), "theirs re-ran it and doubled the total")
    repo.git("checkout", "-q", "main")
    ours = rerun_in_colab(base, 9)
    ours["cells"][0]["source"] = ["data = [1, 2, 3]\n", "print(data)"]
    del ours["cells"][2]
    commit_text(repo, colab_text(ours), "ours re-ran it, more data, scratch cell gone")

    shown = repo.git("show", "HEAD").stdout + repo.git("diff", "HEAD~1").stdout
    assert "executionInfo" not in shown and "outputId" not in shown and "'colab'" not in shown
    assert "## cell 1 modified (component load)\n@@ -1,2 +1,2 @@\n-data = [1, 2]\n+data = [1, 2, 3]\n" in shown

    done = repo.git("merge", "theirs", "-m", "merge", check=False)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    result = repo.read()
    validate(result)
    assert [source(c) for c in result["cells"]] == [
        "data = [1, 2, 3]\nprint(data)", "total = sum(data) * 2\nprint(total)",
    ]
    assert [c["metadata"]["id"] for c in result["cells"]] == ["c1", "c2"]


# ---- git's own views through the textconv -----------------------------------------------------


def test_a_cell_inserted_at_the_top_is_one_added_cell_in_log_p_and_blame(repo):
    """The textconv numbered its cell headers, so inserting one cell changed every header:
    `git log -p` showed each cell removed and re-added and `git blame` gave every header to it."""
    base = notebook(*pipeline_cells())
    repo.commit(base, "base")
    nb = copy.deepcopy(base)
    nb["cells"].insert(0, code("import os\n", id="imports"))
    repo.commit(nb, "imports first")
    shown = repo.git("log", "-p", "-1").stdout
    changed = [line for line in shown.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert changed == ["+## code cell id=imports", "+import os", "+"]
    blamed = [line for line in repo.git("blame", "-s", "nb.ipynb").stdout.splitlines() if not line.startswith("^")]
    assert len(blamed) == 3 and "import os" in blamed[1]
    assert "## code cell id=c1 [component:load]" in repo.git("show", "HEAD:nb.ipynb", "--textconv").stdout


# ---- widget state saved in the notebook -------------------------------------------------------

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def widget_output(model_id: str) -> dict:
    return {"output_type": "display_data", "metadata": {}, "data": {
        "application/vnd.jupyter.widget-view+json": {"model_id": model_id, "version_major": 2, "version_minor": 0},
        "text/plain": "  0%|          | 0/10 [00:00<?, ?it/s]"}}


def widget_state(*model_ids: str, colab: bool = False) -> dict:
    """As JupyterLab saves it (models under "state"), or as Colab does (models by id directly)."""
    models = {model_id: {"model_name": "FloatProgressModel", "model_module": "@jupyter-widgets/controls",
                         "model_module_version": "2.0.0", "state": {"value": 10, "max": 10}} for model_id in model_ids}
    return {WIDGET_STATE: models if colab else {"version_major": 2, "version_minor": 0, "state": models}}


@pytest.mark.parametrize("colab", [False, True])
def test_widgets_in_outputs_taken_from_each_side_keep_their_saved_state(repo, colab):
    """The notebook's saved widget state is kept from ours only, while each cell's outputs come
    from the side that ran it: theirs' progress bars showed 'model not found' after the merge."""
    cells = [code(f"for i in tqdm(range(10)): step_{n}(i)\n", f"component:step{n}", id=f"s{n}",
                  outputs=[widget_output(f"base{n}")], count=n + 1) for n in range(2)]
    base = notebook(*cells)
    base["metadata"]["widgets"] = widget_state("base0", "base1", colab=colab)
    repo.commit(base, "base")
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    for side, n, name in ((ours, 0, "ours"), (theirs, 1, "theirs")):
        side["cells"][n]["source"] = f"for i in tqdm(range(10)): step_{n}(i, fast=True)\n"
        side["cells"][n]["outputs"] = [widget_output(f"{name}{n}")]
        side["metadata"]["widgets"] = widget_state(f"{name}{n}", f"base{1 - n}", colab=colab)
    done = repo.merge_branch(ours, theirs)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    result = repo.read()
    validate(result)
    shown = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for c in result["cells"] for o in c["outputs"]]
    assert shown == ["ours0", "theirs1"]
    saved, theirs_saved = (nb["metadata"]["widgets"][WIDGET_STATE] for nb in (result, theirs))
    if not colab:
        saved, theirs_saved = saved["state"], theirs_saved["state"]
    assert set(shown) <= set(saved)
    assert saved["theirs1"] == theirs_saved["theirs1"]


def test_sections_folded_differently_in_colab_are_no_conflict(repo):
    """Colab keeps its own notebook metadata (provenance, folded sections, table of contents):
    two people folding different sections stopped the merge with nothing to resolve in the file."""
    base = colab_notebook(colab_cell(["data = 1"], "c1", "component:load"), colab_cell(["x = 2"], "c2"))
    commit_text(repo, colab_text(base), "base")
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["metadata"]["colab"].update(collapsed_sections=["c1"], provenance=[{"file_id": "1abc"}])
    ours["cells"][1]["source"] = ["x = 3"]
    theirs["metadata"]["colab"].update(collapsed_sections=["c2"], toc_visible=True)
    theirs["cells"][0]["source"] = ["data = 2"]
    repo.git("checkout", "-q", "-b", "theirs")
    commit_text(repo, colab_text(theirs), "theirs")
    assert repo.git("diff", "HEAD~1").stdout == "--- a/nb.ipynb\n+++ b/nb.ipynb\n## cell 1 modified (component load)\n@@ -1 +1 @@\n-data = 1\n+data = 2\n"
    repo.git("checkout", "-q", "main")
    commit_text(repo, colab_text(ours), "ours")
    done = repo.git("merge", "theirs", "-m", "merge", check=False)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    result = repo.read()
    validate(result)
    assert [source(c) for c in result["cells"]] == ["data = 2", "x = 3"]


# ---- installing next to other notebook tools --------------------------------------------------


def test_install_says_when_nbstripout_in_git_info_attributes_still_wins_the_diff(tmp_path):
    """`nbstripout --install` writes '*.ipynb diff=ipynb' into .git/info/attributes, which git
    reads after .gitattributes: install said the drivers were registered while git diff kept
    showing nbstripout's view, and nothing said why."""
    repo = Repo(tmp_path)
    info = repo.path / ".git" / "info" / "attributes"
    info.write_text("*.ipynb filter=nbstripout\n*.zpln filter=nbstripout\n*.ipynb diff=ipynb\n")
    repo.git("config", "diff.ipynb.textconv", "cat")
    repo.commit(notebook(*pipeline_cells()), "base", name="analysis.ipynb")
    done = repo.linkkernel("git", "install")
    assert done.returncode == 0
    assert done.stderr == (
        f"linkkernel git install: git still uses diff=ipynb for notebooks: {info} sets it, and git reads "
        "that file after .gitattributes; remove that line there to use linkkernel's\n"
    )
    info.write_text("*.ipynb filter=nbstripout\n")
    done = repo.linkkernel("git", "install")
    assert (done.returncode, done.stderr) == (0, "")
    nb = repo.read("analysis.ipynb")
    nb["cells"][1]["source"] = "data = [7]\n"
    repo.write(nb, "analysis.ipynb")
    assert "## cell 2 modified (component load)\n" in repo.git("diff").stdout


# ---- the merged file keeps the layout it had ---------------------------------------------------


@pytest.mark.parametrize("layout", ["colab", "windows", "cells-unsorted"])
def test_a_merge_changes_only_the_lines_that_changed_in_the_file_as_its_tool_saves_it(repo, layout):
    """The driver wrote every merge in nbformat's layout: a Colab notebook (two spaces, its own
    key order, no final newline) or one saved with a BOM and CRLF had every line rewritten by
    each merge commit, and again by the next save. The BOM alone goes: JupyterLab cannot open a
    notebook that starts with one (test_notebook_bom)."""
    base = colab_notebook(colab_cell(["data = 1"], "c1", "component:load"), colab_cell(["x = 2"], "c2"))
    if layout == "cells-unsorted":  # a sorted top level and first cell, Colab's key order in the other cells
        base = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Title"]}, *base["cells"]],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 0}

    def saved(nb: dict) -> bytes:
        if layout == "colab":
            return colab_text(nb).encode()
        if layout == "cells-unsorted":
            return json.dumps(nb, indent=1).encode() + b"\n"
        return b"\xef\xbb\xbf" + json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False).replace("\n", "\r\n").encode() + b"\r\n"

    commit_text(repo, saved(base), "base")
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][-1]["source"] = ["x = 3"]
    theirs["cells"][-2]["source"] = ["data = 2"]
    theirs["cells"].append(colab_cell(["y = x"], "c3", "component:use", "parent:load"))
    done = merge_saved(repo, ours, theirs, saved)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    merged = copy.deepcopy(ours)
    merged["cells"][-2]["source"] = ["data = 2"]
    merged["cells"].append(theirs["cells"][-1])
    assert (repo.path / "nb.ipynb").read_bytes() == saved(merged).removeprefix(b"\xef\xbb\xbf")


def test_a_colab_cell_moved_and_edited_on_one_side_and_edited_on_the_other_is_one_cell(repo):
    """Colab saves nbformat 4.0 with each cell's id in its metadata; matching ignored it, so a
    cell moved and edited on one side was 'deleted' against the other side's edit, and duplicated."""
    base = colab_notebook(
        colab_cell(["import pandas as pd"], "imports"),
        colab_cell(["df = pd.read_csv('a.csv')\n", "df = df.dropna()\n", "df.head()"], "load"),
        colab_cell(["df.describe()"], "describe"),
    )
    commit_text(repo, colab_text(base), "base")
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    moved = ours["cells"].pop(1)
    moved["source"] = ["df = pd.read_csv('b.csv', sep=';')\n", "df = df.dropna()\n", "df.head()"]
    ours["cells"].append(moved)
    theirs["cells"][1]["source"] = ["df = pd.read_csv('a.csv')\n", "df = df.dropna()\n", "df.tail()"]
    done = merge_saved(repo, ours, theirs, colab_text)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    result = repo.read()
    validate(result)
    assert [(c["metadata"]["id"], source(c)) for c in result["cells"]] == [
        ("imports", "import pandas as pd"), ("describe", "df.describe()"),
        ("load", "df = pd.read_csv('b.csv', sep=';')\ndf = df.dropna()\ndf.tail()"),
    ]


def test_cells_sharing_an_id_as_pasted_cells_do_are_matched_by_content(repo):
    """Frontends that keep a cell's id on copy and paste save notebooks with one id on several
    cells (nbformat repairs them on load). Matching took the first cell with the id: a cell pasted
    above was merged with the original, the original's edit ended in a conflict with an unrelated
    cell, and its other edit was lost."""
    base = notebook(code("a = 1\nb = 2\n", id="pasted"), code("c = 3\nd = 4\n", id="pasted"), code("e = 5\n", id="e"))
    repo.commit(base, "base")
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][1]["source"] = "c = 3\nd = 40\n"
    theirs["cells"][0]["source"] = "a = 10\nb = 2\n"
    theirs["cells"].insert(0, code("import numpy as np\n", id="pasted"))
    done = repo.merge_branch(ours, theirs)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    result = repo.read()
    validate(result)
    assert [source(c) for c in result["cells"]] == ["import numpy as np\n", "a = 10\nb = 2\n", "c = 3\nd = 40\n", "e = 5\n"]


def test_a_global_install_says_when_the_repository_it_runs_in_keeps_nbdime(tmp_path):
    """A repository's committed .gitattributes wins over the global attributes file: installing
    globally in a repository that committed nbdime's drivers changed nothing there, silently."""
    repo = Repo(tmp_path)
    (repo.path / ".gitattributes").write_text("*.ipynb diff=jupyternotebook merge=jupyternotebook\n")
    repo.commit(notebook(*pipeline_cells()), "base")
    done = repo.linkkernel("git", "install", "--global")
    assert done.returncode == 0
    attributes = repo.path / ".gitattributes"
    assert done.stderr == "".join(
        f"linkkernel git install: git still uses {setting} for notebooks: {attributes} sets it, and git reads "
        "that file after your global one; remove that line there to use linkkernel's\n"
        for setting in ("merge=jupyternotebook", "diff=jupyternotebook")
    )
