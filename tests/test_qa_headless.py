"""QA: `linkkernel run`, nbclient and papermill see Link Python notebooks as JupyterLab does.

Real `linkkernel run` / `papermill` / `python -m linkkernel` subprocesses starting real kernels.
Nothing here waits for a duration: every assertion is on a finished process's output files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from support import kernel_env
from test_headless import by_id, linkkernel, outputs_text, summary, write

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def notebook(*cells: tuple[str, list[str]], **metadata: dict) -> nbformat.NotebookNode:
    """Code cells given as (source, tags), ids c0, c1, ...; `metadata` adds keys to a cell's
    metadata by id."""
    nb = new_notebook(metadata={"kernelspec": {"name": "link-python", "display_name": "Link Python", "language": "python"}})
    for index, (source, tags) in enumerate(cells):
        cell_meta = {"tags": tags, **metadata.get(f"c{index}", {})}
        nb.cells.append(new_code_cell(source, id=f"c{index}", metadata=cell_meta))
    return nb


def papermill(source: Path, out: Path, *params: str, **env: str) -> subprocess.CompletedProcess:
    """The papermill command, its kernel started from its environment as papermill does."""
    return subprocess.run(
        [sys.executable, "-m", "papermill", str(source), str(out), *params, "--cwd", str(source.parent)],
        capture_output=True, text=True, env=kernel_env(**env), timeout=180,
    )


def request_metadata(cell) -> dict:
    """What a cell printed as its execute_request's metadata (its one stdout line, as JSON)."""
    return json.loads("".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"))


SHOW_REQUEST = "import json\nprint(json.dumps(get_ipython().kernel.get_parent()['metadata']))"


# ---- 1. each execute_request carries the cell's metadata and id ------------------------------


def test_run_sends_each_cells_metadata_and_id_as_jupyterlab_does(tmp_path: Path) -> None:
    source = write(tmp_path / "meta.ipynb", notebook(
        (SHOW_REQUEST, ["keep"]),
        (SHOW_REQUEST, ["component:load"]),
        c0={"custom": {"a": 1}},
    ))
    result = linkkernel("run", str(source), "-o", str(tmp_path / "out.ipynb"))
    assert result.returncode == 0, result.stderr
    cells = by_id(nbformat.read(str(tmp_path / "out.ipynb"), as_version=4))
    plain, component = request_metadata(cells["c0"]), request_metadata(cells["c1"])
    assert (plain["cellId"], plain["tags"], plain["custom"]) == ("c0", ["keep"], {"a": 1})
    assert (component["cellId"], component["tags"]) == ("c1", ["component:load"])


# ---- 2. nbclient/papermill without a known notebook: one hint -------------------------------


PIPE_CELLS = (
    ("values = [1, 2]", ["component:load"]),
    ("total = sum(values)", ["component:total", "parent:load"]),
    ("print(total)", []),
)


def test_papermill_without_a_notebook_path_hints_once_how_to_give_it(tmp_path: Path) -> None:
    source = write(tmp_path / "pipe.ipynb", notebook(*PIPE_CELLS))
    result = papermill(source, tmp_path / "out.ipynb")
    assert result.returncode == 0, result.stderr
    hints = [line for line in result.stderr.splitlines() if "LINKKERNEL_NOTEBOOK" in line]
    assert len(hints) == 1, result.stderr
    assert "no notebook file" in hints[0] and "%link notebook PATH" in hints[0]
    # The hint is for the terminal: the executed notebook's outputs are the cells' own.
    cells = by_id(nbformat.read(str(tmp_path / "out.ipynb"), as_version=4))
    assert outputs_text(cells["c2"]) == "3\n"
    assert "LINKKERNEL_NOTEBOOK" not in (tmp_path / "out.ipynb").read_text()

    # Given the path, either way the hint names, nothing is hinted.
    given = papermill(source, tmp_path / "given.ipynb", LINKKERNEL_NOTEBOOK=str(source))
    assert given.returncode == 0, given.stderr
    assert "LINKKERNEL_NOTEBOOK" not in given.stderr
    magic = write(tmp_path / "magic.ipynb", notebook(("%link notebook magic.ipynb", []), *PIPE_CELLS))
    first_cell = papermill(magic, tmp_path / "magic.out.ipynb")
    assert first_cell.returncode == 0, first_cell.stderr
    assert "LINKKERNEL_NOTEBOOK" not in first_cell.stderr


# ---- 3. papermill parameters reach the components ---------------------------------------------


PARAMETERISED = notebook(
    ("alpha = 1\nbeta = 'b'", ["parameters", "component:params"]),
    ("result = alpha * 10\nprint('result', result, beta)", ["component:model", "parent:params"]),
    ("print('notebook sees', alpha, result)", []),
)


def test_papermill_parameters_override_the_parameters_component(tmp_path: Path) -> None:
    source = write(tmp_path / "params.ipynb", PARAMETERISED)
    result = papermill(source, tmp_path / "out.ipynb", "-p", "alpha", "5", LINKKERNEL_NOTEBOOK=str(source))
    assert result.returncode == 0, result.stderr
    out = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    by_source = {cell.source: cell for cell in out.cells}
    assert outputs_text(by_source[PARAMETERISED.cells[1].source]) == "result 50 b\n"
    assert outputs_text(by_source[PARAMETERISED.cells[2].source]) == "notebook sees 5 50\n"
    # Another value runs the pipeline again; the defaults again in a new kernel.
    again = papermill(source, tmp_path / "again.ipynb", "-p", "alpha", "2", LINKKERNEL_NOTEBOOK=str(source))
    assert again.returncode == 0, again.stderr
    assert "result 20 b" in (tmp_path / "again.ipynb").read_text()
    plain = linkkernel("run", str(source), "-o", str(tmp_path / "plain.ipynb"))
    assert plain.returncode == 0, plain.stderr
    assert outputs_text(by_id(nbformat.read(str(tmp_path / "plain.ipynb"), as_version=4))["c1"]) == "result 10 b\n"


def test_papermill_parameters_a_plain_cell_cannot_pass_on_are_named(tmp_path: Path) -> None:
    # The parameters cell is a plain cell: components never see plain cells' names, and say so.
    source = write(tmp_path / "plainparams.ipynb", notebook(
        ("alpha = 1", ["parameters"]),
        ("result = 2", ["component:model"]),
    ))
    result = papermill(source, tmp_path / "out.ipynb", "-p", "alpha", "5", "-p", "gamma", "3",
                       LINKKERNEL_NOTEBOOK=str(source))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "papermill parameters" in line]
    assert len(lines) == 1, result.stderr
    assert "alpha, gamma" in lines[0] and "component" in lines[0]


# ---- 4. widgets -----------------------------------------------------------------------------


WIDGETS = notebook(
    ("import ipywidgets as w\nslider = w.IntSlider(value=7)\nslider", []),
    ("import ipywidgets as w\nfrom IPython.display import display\ndisplay(w.IntSlider(value=3))", ["component:view"]),
)


def test_run_keeps_widget_state_and_cached_widget_views_fall_back_to_text(tmp_path: Path) -> None:
    source = write(tmp_path / "widgets.ipynb", WIDGETS)
    first = linkkernel("run", str(source), "-o", str(tmp_path / "first.ipynb"))
    assert first.returncode == 0, first.stderr
    out = nbformat.read(str(tmp_path / "first.ipynb"), as_version=4)
    state = out.metadata["widgets"][WIDGET_STATE]["state"]
    for cell_id, value in (("c0", 7), ("c1", 3)):
        (view,) = [o.data[WIDGET_VIEW] for o in by_id(out)[cell_id].outputs if WIDGET_VIEW in o.get("data", {})]
        assert state[view["model_id"]]["state"]["value"] == value
    nbformat.validate(out)

    second = linkkernel("run", str(source), "-o", str(tmp_path / "second.ipynb"))
    assert second.returncode == 0, second.stderr
    assert summary(second.stdout) == {"view": ("cached", "local")}
    out = nbformat.read(str(tmp_path / "second.ipynb"), as_version=4)
    # The cached view's widget is not in this kernel: its cell shows the widget's text.
    assert [dict(o.data) for o in by_id(out)["c1"].outputs] == [{"text/plain": "IntSlider(value=3)"}]
    models = out.metadata["widgets"][WIDGET_STATE]["state"]
    (view,) = [o.data[WIDGET_VIEW] for o in by_id(out)["c0"].outputs if WIDGET_VIEW in o.get("data", {})]
    assert models[view["model_id"]]["state"]["value"] == 7


# ---- 5. cached outputs are valid nbformat -----------------------------------------------------


def test_cached_outputs_are_written_as_nbformat_outputs(tmp_path: Path) -> None:
    source = write(tmp_path / "calc.ipynb", notebook(
        ("import sys\nprint('out')\nprint('err', file=sys.stderr)\nx = 41\nx + 1", ["component:sanitised"]),
    ))
    first = linkkernel("run", str(source), "-o", str(tmp_path / "first.ipynb"))
    assert first.returncode == 0, first.stderr
    # A record as another tool or version may have kept it: extra keys, a count of its own run.
    (record,) = Path(kernel_env()["XDG_CACHE_HOME"]).glob("linkkernel/**/records/sanitised.json")
    kept = json.loads(record.read_text())
    for output in kept["outputs"]:
        output["transient"] = {"display_id": "d1"}
        if output["output_type"] == "execute_result":
            output["execution_count"] = 9
    record.write_text(json.dumps(kept))

    second = linkkernel("run", str(source), "-o", str(tmp_path / "second.ipynb"))
    assert second.returncode == 0, second.stderr
    assert summary(second.stdout) == {"sanitised": ("cached", "local")}
    out = nbformat.read(str(tmp_path / "second.ipynb"), as_version=4)
    nbformat.validate(out)
    cell = out.cells[0]
    assert cell.execution_count is None, "a cached cell was not executed in this run"
    assert [o.output_type for o in cell.outputs] == ["stream", "stream", "execute_result"]
    assert all("transient" not in o for o in cell.outputs)
    assert cell.outputs[2].execution_count == cell.execution_count
    assert outputs_text(cell) == "out\nerr\n42"


# ---- 6. python -m linkkernel ------------------------------------------------------------------


def test_python_m_linkkernel_runs_cli_commands_and_still_launches_kernels(tmp_path: Path) -> None:
    version = subprocess.run([sys.executable, "-m", "linkkernel", "--version"],
                             capture_output=True, text=True, env=kernel_env(), timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("linkkernel "), version.stderr
    source = write(tmp_path / "pipe.ipynb", notebook(("print('ran')", ["component:a"])))
    run = subprocess.run([sys.executable, "-m", "linkkernel", "run", str(source), "-o", str(tmp_path / "out.ipynb")],
                         capture_output=True, text=True, env=kernel_env(), timeout=180)
    assert run.returncode == 0, run.stderr
    assert summary(run.stdout) == {"a": ("ran", "local")}
    unknown = subprocess.run([sys.executable, "-m", "linkkernel", "nope"],
                             capture_output=True, text=True, env=kernel_env(), timeout=60)
    assert unknown.returncode == 2 and unknown.stderr.startswith("linkkernel: unknown command 'nope'")
    bare = subprocess.run([sys.executable, "-m", "linkkernel"], capture_output=True, text=True, env=kernel_env(), timeout=60)
    assert bare.returncode == 2 and bare.stderr.startswith("usage: linkkernel"), "the command's usage, not a kernel waiting"
    # The run above started its kernel by the kernelspec's `python -m linkkernel -f FILE`.
