"""`%link status`, `%link graph` and `%link run` on pipelines a user is in the middle of
getting wrong, through a real kernel."""

from __future__ import annotations

import pytest

from engine_support import Notebook, value


@pytest.fixture
def nb(kernel, tmp_path):
    return Notebook(kernel, tmp_path / "pipeline.ipynb")


def table(stdout: str) -> dict[str, list[str]]:
    """The status table's rows as name -> states (a duplicate name has one row per cell)."""
    rows: dict[str, list[str]] = {}
    for line in stdout.splitlines()[1:]:
        if not line.startswith("error: "):
            rows.setdefault(line.split()[0], []).append(line.split()[2])
    return rows


def errors(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("error: ")]


def test_status_and_graph_show_the_valid_part_of_a_pipeline_and_one_line_per_problem(nb):
    nb.add("load", "x = 1").add("train", "y = x + 1", "load")
    nb.add("orphan", "z = 1", "missing").add("orphan_child", "w = z", "orphan")
    nb.add("loop_a", "a = 1", "loop_b").add("loop_b", "b = 1", "loop_a")
    nb.add("twice", "t = 1").add("twice_again", "t = 2")
    nb.cells["twice_again"]["metadata"] = {"tags": ["component:twice"]}
    nb.use()
    assert nb.run("train").status == "ok"  # the valid part still runs

    status = nb.kernel.execute("%link status")
    assert status.status == "ok", status.traceback_text
    assert status.stderr == ""
    assert table(status.stdout) == {
        "load": ["fresh"], "train": ["fresh"], "orphan": ["error"], "orphan_child": ["error"],
        "loop_a": ["error"], "loop_b": ["error"], "twice": ["error", "error"],
    }
    looked_in = f"the cells executed in this kernel and the saved notebook {nb.path}"
    shown = errors(status.stdout)
    assert shown[:2] == [
        "error: duplicate component name 'twice': cell 7 (id id-twice) and cell 8 (id id-twice_again)",
        f"error: component 'orphan' (cell 3 (id id-orphan)) has parent 'missing', which is not declared in {looked_in}",
    ]
    assert shown[2] in ("error: cycle in pipeline: loop_a -> loop_b -> loop_a",
                        "error: cycle in pipeline: loop_b -> loop_a -> loop_b")
    assert len(shown) == 3

    graph = nb.kernel.execute("%link graph")
    assert graph.status == "ok", graph.traceback_text
    assert graph.displays[0]["data"]["text/plain"] == "load [fresh]\ntrain [fresh] <- load"
    assert errors(graph.stdout) == shown


def test_status_of_a_pipeline_that_is_only_a_cycle_is_its_rows_and_the_cycle(nb):
    nb.add("a", "pass", "b").add("b", "pass", "a").use()
    status = nb.kernel.execute("%link status")
    assert status.status == "ok", status.traceback_text
    assert table(status.stdout) == {"a": ["error"], "b": ["error"]}
    assert errors(status.stdout) == ["error: cycle in pipeline: a -> b -> a"]


REFUSED = ("LinkError: %link run cannot be used inside component cell {name!r}: a component's outputs must come "
           "from its own code; make the components it needs its parents (tag parent:NAME)")


def test_link_run_inside_a_component_cell_is_refused_and_files_nothing_as_its_outputs(nb):
    nb.add("load", "x = 1").add("other", "o = 5")
    nb.add("calls", "c = x\n%link run other\nafter = 1", "load")
    nb.add("child", "d = c", "calls")
    nb.use()
    result = nb.run("calls")
    assert result.status == "error"
    assert result.traceback_text.strip() == REFUSED.format(name="calls")
    assert nb.runs() == ["load", "calls"]  # 'other' did not run
    assert value(nb.kernel, "[n for n in ('o', 'c', 'after') if n in dir()]") == []
    assert table(nb.kernel.execute("%link status").stdout) == {
        "load": ["fresh"], "other": ["never"], "calls": ["failed"], "child": ["never"],
    }
    # the same when the component runs silently as a parent
    refused = nb.run("child")
    assert refused.status == "error"
    assert "in parent component 'calls'" in refused.traceback_text
    assert REFUSED.format(name="calls") in refused.traceback_text
    # from a plain cell it is what it always was
    assert nb.kernel.execute("%link run other").stdout == "ran: other\n"
    assert value(nb.kernel, "o") == 5
