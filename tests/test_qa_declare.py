"""QA of SPEC §2 (where the kernel learns declarations) and §3 (staleness, persistence),
driven as a user who edits notebooks a lot: cells copied, retagged, edited and re-run in
JupyterLab (metadata + cellId) and VS Code (its own cell URIs), saved or not.

Each test points the shared kernel at a notebook of its own (`Notebook.use`), which also
resets what the kernel remembers of executed cells.
"""

from __future__ import annotations

import os
import time

import pytest

from engine_support import Notebook
from support import Kernel, component_meta
from test_qa_kernel import one_line


def test_a_copied_component_cell_retagged_before_saving_leaves_the_original_alone(link, home):
    # JupyterLab gives a pasted copy a new id; the saved notebook does not hold it yet. Its
    # code is the original's, but it is a new cell: the original keeps its name
    nb = Notebook(link, home / "copied.ipynb")
    nb.add("load", "data = [1]", counted=False).add("train", "print(data)", "load", counted=False).use()
    copy = link.execute("data = [2]\n", metadata=component_meta("load_copy"), cell_id="id-pasted")
    assert copy.status == "ok", copy.traceback_text
    copy = link.execute("data = [1]", metadata=component_meta("load_copy"), cell_id="id-pasted")
    assert copy.status == "ok", copy.traceback_text
    train = nb.run("train")
    assert (train.status, train.stdout) == ("ok", "[1]\n"), train.traceback_text
    status = link.execute("%link status").stdout
    assert [line.split()[0] for line in status.splitlines()[1:]] == ["load", "train", "load_copy"], status


VSCODE = "vscode-notebook-cell:/home/me/flow.ipynb#W{}sZmlsZQ%3D%3D"


@pytest.mark.parametrize("first_run_edited", [False, True], ids=["run-edit-run", "edited-first"])
def test_a_vscode_cell_edited_and_run_again_is_still_its_saved_cell(link, home, first_run_edited):
    # VS Code sends its own cell URIs, not the nbformat ids: the saved cell is found by its
    # code, then remembered, so editing it is no second cell declaring the same name
    nb = Notebook(link, home / f"vscode-{first_run_edited}.ipynb")
    nb.add("source", "v = 1", counted=False).add("sink", "print(v)", "source", counted=False).use()
    if not first_run_edited:
        assert link.execute("v = 1", metadata=component_meta("source"), cell_id=VSCODE.format(0)).status == "ok"
    edited = link.execute("v = 2", metadata=component_meta("source"), cell_id=VSCODE.format(0))
    assert edited.status == "ok", edited.traceback_text
    sink = link.execute("print(v)", metadata=component_meta("sink", "source"), cell_id=VSCODE.format(1))
    assert (sink.status, sink.stdout) == ("ok", "2\n"), sink.traceback_text
    # untagged in VS Code, the cell is plain: the saved notebook's older word on it is not used
    assert link.execute("v = 3", metadata={}, cell_id=VSCODE.format(0)).status == "ok"
    gone = link.execute("print(v)", metadata=component_meta("sink", "source"), cell_id=VSCODE.format(1))
    assert "has parent 'source', which is not declared" in one_line(gone)


def test_a_cell_retagged_wrongly_is_the_newest_word_on_it(link, home):
    # the cell that was 'prep' is run with a broken parent tag: a child of 'prep' must not
    # quietly run the declaration and code the cell had before
    nb = Notebook(link, home / "retagged.ipynb")
    nb.add("prep", "p = 1").add("use_prep", "print(p)", "prep").use()
    assert nb.run("use_prep").stdout == "1\n"
    assert nb.runs() == ["prep", "use_prep"]
    broken = link.execute("p = 2", metadata={"tags": ["component:prep", "parent: raw"]}, cell_id="id-prep")
    message = one_line(broken)
    assert message.startswith("DeclarationError: cell 1 (id id-prep): malformed tag 'parent: raw'"), message
    child = nb.run("use_prep")
    assert one_line(child) == message
    assert nb.runs() == []
    fixed = link.execute("p = 2", metadata=component_meta("prep"), cell_id="id-prep")
    assert fixed.status == "ok", fixed.traceback_text
    assert nb.run("use_prep").stdout == "2\n"


def test_linkkernel_notebook_is_the_notebook_whatever_its_name(link_kernelspec, home):
    # SPEC §2: the notebook "set with the LINKKERNEL_NOTEBOOK environment variable": a
    # notebook saved as flow.json was ignored, and the error then said to set the variable
    path = home / "flow.json"
    kernel = Kernel(cwd=str(home), LINKKERNEL_NOTEBOOK=str(path))
    try:
        Notebook(kernel, path).add("raw", "r = 7", counted=False).save()
        child = kernel.execute("print(r)", metadata=component_meta("cooked", "raw"), cell_id="id-cooked")
        assert (child.status, child.stdout) == ("ok", "7\n"), child.traceback_text
        assert kernel.execute("%link notebook").stdout.startswith(f"notebook: {path}\n")
    finally:
        kernel.shutdown()


def test_a_component_cell_turned_into_markdown_declares_nothing_once_saved(link, home):
    # turning a cell into markdown is how notebooks "comment out" a cell; JupyterLab keeps
    # its id and metadata and reports no deletion, so only the saved notebook tells
    nb = Notebook(link, home / "disabled.ipynb")
    nb.add("train", "model = 'v1'").add("report", "print(model)", "train").use()
    assert nb.run("train").status == "ok"
    assert nb.run("report").stdout == "v1\n"
    assert nb.runs() == ["train", "report"]
    old = nb.cells.pop("train")
    nb.cells = {"old": dict(old, cell_type="markdown"), "train": dict(old, id="id-train2", source="model = 'v2'"),
                "report": nb.cells["report"]}
    nb.save()
    report = nb.run("report")
    assert (report.status, report.stdout) == ("ok", "v2\n"), report.traceback_text
    status = link.execute("%link status").stdout
    assert [line.split()[0] for line in status.splitlines()[1:]] == ["train", "report"], status


@pytest.mark.parametrize("frontend", ["jupyterlab", "vscode"])
def test_a_cell_gone_from_a_newer_save_is_gone(link, home, frontend):
    # the saved notebook is replaced by a version without the executed cell: a `git checkout`
    # or a revert in JupyterLab (no deletedCells), or a cell deleted in VS Code (which never
    # reports deletions); the newer save is the newest word, as for any other cell
    nb = Notebook(link, home / f"replaced-{frontend}.ipynb")
    nb.add("params", "rate = 1", counted=False).add("fit", "print(rate)", "params", counted=False).use()
    cell_id = "id-params" if frontend == "jupyterlab" else VSCODE.format(7)
    ran = link.execute("rate = 1", metadata=component_meta("params"), cell_id=cell_id)
    assert ran.status == "ok", ran.traceback_text
    nb.cells = {"params": dict(nb.cells["params"], id="id-params-2", source="rate = 2"), "fit": nb.cells["fit"]}
    nb.save()
    fit = nb.run("fit")
    assert (fit.status, fit.stdout) == ("ok", "2\n"), fit.traceback_text


def test_a_saved_notebook_dated_in_the_future_does_not_outrank_cells_run_since(link, home):
    # a file server whose clock runs ahead (or a notebook unpacked with future dates): the
    # cell the user edits and runs now is newer than what the file says, whatever its date
    nb = Notebook(link, home / "future.ipynb")
    nb.add("seed", "s = 1", counted=False).add("grow", "print(s * 10)", "seed", counted=False).use()
    ahead = time.time() + 3600
    os.utime(nb.path, (ahead, ahead))
    edited = link.execute("s = 2", metadata=component_meta("seed"), cell_id="id-seed")
    assert edited.status == "ok", edited.traceback_text
    grow = nb.run("grow")
    assert (grow.status, grow.stdout) == ("ok", "20\n"), grow.traceback_text


@pytest.mark.parametrize(
    ("tag", "meant"),
    [("component=train", "component:train"), ("component train", "component:train"),
     ("Parent = load", "parent:load"), ("remote=gpu1", "remote:gpu1")],
)
def test_a_declaration_tag_written_without_its_colon_is_refused_not_ignored(link, tag, meant):
    # without the colon the tag was no declaration at all: the cell ran as a plain cell,
    # looking fine while nothing was cached or published as a component
    tags = [tag] if tag.startswith("component") else ["component:train", tag]
    try:
        assert one_line(link.execute("x = 1", metadata={"tags": tags}, cell_id="qa-colon")) == (
            f"DeclarationError: cell id qa-colon: malformed tag {tag!r}: write {meant!r}"
        )
    finally:
        link.execute("pass", metadata={}, cell_id="qa-colon")
    assert link.execute("x = 1", metadata={"tags": ["remote data", "parent", "component"]}, cell_id="qa-colon").status == "ok"


def test_a_notebook_saved_without_ids_then_with_them_keeps_its_cells_apart(link, home):
    # a notebook from before nbformat 4.5 has no cell ids: JupyterLab makes some up and
    # writes them at the first save; from then on they are the cells' own ids
    nb = Notebook(link, home / "old-format.ipynb")
    nb.add("base", "b = 1", counted=False).add("top", "print(b)", "base", counted=False)
    cells = {name: {key: v for key, v in cell.items() if key != "id"} for name, cell in nb.cells.items()}
    nb.cells = cells
    nb.use()
    lab = {"base": "f3a1c2d4-0001", "top": "f3a1c2d4-0002"}
    run = link.execute("b = 1", metadata=component_meta("base"), cell_id=lab["base"])
    assert run.status == "ok", run.traceback_text
    nb.cells = {name: dict(cell, id=lab[name]) for name, cell in cells.items()}
    nb.save()
    top = link.execute("print(b)", metadata=component_meta("top", "base"), cell_id=lab["top"])
    assert (top.status, top.stdout) == ("ok", "1\n"), top.traceback_text
    # the user removes the tags of the first cell and runs it: it is a plain cell now
    assert link.execute("b = 1", metadata={}, cell_id=lab["base"]).status == "ok"
    top = link.execute("print(b)", metadata=component_meta("top", "base"), cell_id=lab["top"])
    assert "has parent 'base', which is not declared" in one_line(top)
