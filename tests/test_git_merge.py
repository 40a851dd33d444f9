"""The merge, as data: the case corpus (every nbdime failure of issue 7) and properties."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from git_support import code, markdown, notebook, source, stream, tags, validate
from linkkernel.git.match import match_cells
from linkkernel.git.merge import merge_notebooks


def merged(base, ours, theirs, marker_size=7):
    inputs = copy.deepcopy((base, ours, theirs))
    result = merge_notebooks(base, ours, theirs, marker_size)
    assert (base, ours, theirs) == inputs, "the merge mutated its inputs"
    validate(result.notebook)
    assert all(c.kind != "internal" for c in result.conflicts) or base.get("broken"), result.conflicts
    return result


def by_component(nb):
    found = {}
    for cell in nb["cells"]:
        for tag in tags(cell):
            if tag.startswith("component:"):
                found.setdefault(tag.split(":", 1)[1], []).append(cell)
    return found


def pipeline(with_ids=True):
    ids = iter(["c1", "c2", "c3", "c4", "c5"]) if with_ids else iter([None] * 5)
    return notebook(
        markdown("# Pipeline\n", id=next(ids)),
        code("import math\ndata = [1, 2, 3]\n", "component:load", id=next(ids)),
        code("clean = [x * 2 for x in data]\n", "component:clean", "parent:load", id=next(ids)),
        code("model = sum(clean)\nprint(model)\n", "component:train", "parent:clean", id=next(ids),
             outputs=[stream("12\n")], count=3),
        code("print('done')\n", id=next(ids)),
    )


# ---- nbdime failures (issue 7) -----------------------------------------------------------


def test_conflicting_tag_edits_are_marked_in_the_cell_and_keep_a_real_version():
    """nbdime keeps base tags and hides both edits in metadata, which can dangle an edge."""
    base = pipeline()
    base["cells"].insert(2, code("other = 1\n", "component:other", id="o1"))
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][4]["metadata"]["tags"] = ["component:train", "parent:other"]
    del theirs["cells"][2]
    theirs["cells"][3]["metadata"]["tags"] = ["component:train", "parent:load"]
    result = merged(base, ours, theirs)
    kinds = {c.kind for c in result.conflicts}
    assert "declaration" in kinds
    train = by_component(result.notebook)["train"][0]
    text = source(train)
    assert "<<<<<<< ours\n# component:train parent:other\n=======\n# component:train parent:load\n>>>>>>> theirs\n" in text
    assert text.endswith("model = sum(clean)\nprint(model)\n")
    assert "nbdime-conflicts" not in train["metadata"]
    # The metadata holds ours' declaration, never base's 'parent:clean' that neither side kept.
    assert tags(train) == ["component:train", "parent:other"]


def test_compatible_parent_additions_merge_as_a_set():
    base = pipeline()
    base["cells"][1:1] = [code("a = 1\n", "component:a", id="a"), code("b = 2\n", "component:b", id="b")]
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][5]["metadata"]["tags"].append("parent:a")
    theirs["cells"][5]["metadata"]["tags"].append("parent:b")
    result = merged(base, ours, theirs)
    assert result.clean, result.conflicts
    assert tags(by_component(result.notebook)["train"][0]) == ["component:train", "parent:clean", "parent:a", "parent:b"]


def test_removing_a_parent_on_one_side_removes_it():
    base = pipeline()
    base["cells"][3]["metadata"]["tags"].append("parent:load")
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][3]["metadata"]["tags"].remove("parent:load")
    theirs["cells"][3]["source"] = "model = sum(clean) + 1\n"
    result = merged(base, ours, theirs)
    assert result.clean
    train = by_component(result.notebook)["train"][0]
    assert tags(train) == ["component:train", "parent:clean"]
    assert source(train) == "model = sum(clean) + 1\n"

    theirs["cells"].insert(1, code("extra = 1\n", "component:extra", id="e1"))
    theirs["cells"][4]["metadata"]["tags"].append("parent:extra")  # both sides now change train's parents
    result = merged(base, ours, theirs)
    assert result.clean
    assert tags(by_component(result.notebook)["train"][0]) == ["component:train", "parent:clean", "parent:extra"]
    result = merged(base, theirs, ours)  # and the same with the sides swapped
    assert result.clean
    assert tags(by_component(result.notebook)["train"][0]) == ["component:train", "parent:clean", "parent:extra"]


@pytest.mark.parametrize("with_ids", [True, False])
def test_both_sides_inserting_a_similar_cell_at_the_same_place_is_one_conflicted_cell(with_ids):
    base = pipeline(with_ids)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"].insert(3, code("report = clean[:2]\nprint(report)\n", "component:report", "parent:clean",
                                 **({"id": "new-ours"} if with_ids else {})))
    theirs["cells"].insert(3, code("report = clean[:3]\nprint(report)\n", "component:report", "parent:clean",
                                   **({"id": "new-theirs"} if with_ids else {})))
    result = merged(base, ours, theirs)
    assert [c.kind for c in result.conflicts] == ["insert"]
    reports = by_component(result.notebook)["report"]
    assert len(reports) == 1
    assert source(reports[0]) == (
        "<<<<<<< ours\nreport = clean[:2]\n=======\nreport = clean[:3]\n>>>>>>> theirs\nprint(report)\n"
    )
    assert result.notebook["cells"][3] is reports[0]


def test_different_cells_inserted_at_the_same_place_are_both_kept_ours_first():
    base = pipeline()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][2:2] = [code("check_data(data)\n", id="o1"), markdown("Data checked.\n", id="o2")]
    theirs["cells"].insert(2, code("plot_histogram(data, bins=20)\n", id="t1"))
    theirs["cells"].insert(0, markdown("Draft\n", id="t0"))
    result = merged(base, ours, theirs)
    assert result.clean, result.conflicts
    assert [c["id"] for c in result.notebook["cells"]] == ["t0", "c1", "c2", "o1", "o2", "t1", "c3", "c4", "c5"]


def test_both_sides_inserting_the_same_cell_keeps_one_copy():
    base = pipeline()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"].append(code("x = 1\n", id="x1"))
    theirs["cells"].append(code("x = 1\n", id="x2"))
    result = merged(base, ours, theirs)
    assert result.clean
    assert [source(c) for c in result.notebook["cells"]].count("x = 1\n") == 1


@pytest.mark.parametrize("with_ids", [True, False])
def test_moved_on_one_side_and_edited_on_the_other_stays_one_component(with_ids):
    base = pipeline(with_ids)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"].append(ours["cells"].pop(3))  # move train to the end
    theirs["cells"][3]["source"] = "model = sum(clean) / len(clean)\nprint(model)\n"
    result = merged(base, ours, theirs)
    assert result.clean, result.conflicts
    trains = by_component(result.notebook)["train"]
    assert len(trains) == 1
    assert source(trains[0]) == "model = sum(clean) / len(clean)\nprint(model)\n"
    assert result.notebook["cells"][-1] is trains[0]
    # The source came from theirs, so its outputs do too.
    assert trains[0]["outputs"] == [stream("12\n")]


def test_child_added_on_one_side_of_a_component_deleted_on_the_other_is_a_conflict():
    """nbdime merges this cleanly into a dangling edge."""
    base = pipeline()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"].append(code("plot = clean\n", "component:plot", "parent:clean", id="p1"))
    del theirs["cells"][2]
    theirs["cells"][2]["metadata"]["tags"] = ["component:train", "parent:load"]
    result = merged(base, ours, theirs)
    assert [c.kind for c in result.conflicts] == ["pipeline"]
    plot = by_component(result.notebook)["plot"][0]
    assert "parent 'clean' of 'plot' is not declared in the merged notebook" in source(plot)
    assert "<<<<<<< ours\n" in source(plot) and ">>>>>>> theirs\n" in source(plot)
    assert source(plot).endswith("plot = clean\n")


def test_a_dangling_parent_already_on_one_side_is_not_a_merge_conflict():
    base = pipeline()
    base["cells"][4]["metadata"]["tags"] = ["component:wip", "parent:not_written_yet"]
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][1]["source"] = "data = [4]\n"
    assert merged(base, ours, theirs).clean


def test_a_new_child_of_a_component_renamed_on_the_other_side_follows_the_rename():
    base = pipeline()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][2]["metadata"]["tags"] = ["component:tidy", "parent:load"]
    ours["cells"][3]["metadata"]["tags"] = ["component:train", "parent:tidy"]
    theirs["cells"].append(code("plot = clean\n", "component:plot", "parent:clean", "parent:load", id="p1"))
    result = merged(base, ours, theirs)
    assert result.clean, result.conflicts
    assert tags(by_component(result.notebook)["plot"][0]) == ["component:plot", "parent:tidy", "parent:load"]


def test_a_merge_that_makes_a_cycle_is_a_conflict():
    base = notebook(code("a = 1\n", "component:a", id="a"), code("b = 2\n", "component:b", id="b"))
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][1]["metadata"]["tags"].append("parent:a")
    theirs["cells"][0]["metadata"]["tags"].append("parent:b")
    result = merged(base, ours, theirs)
    assert {c.kind for c in result.conflicts} == {"pipeline"}
    assert all("cycle in pipeline" in c.message for c in result.conflicts)
    assert "<<<<<<< ours" in source(result.notebook["cells"][0]) + source(result.notebook["cells"][1])


# ---- the rest of the rules ---------------------------------------------------------------


def test_rename_against_a_different_rename_conflicts_but_rename_against_an_edit_merges():
    base = pipeline()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][4]["metadata"]["tags"] = ["component:report"]
    theirs["cells"][4]["metadata"]["tags"] = ["component:summary"]
    result = merged(base, ours, theirs)
    assert [c.message for c in result.conflicts] == ["component named 'report' by ours and 'summary' by theirs"]

    theirs = copy.deepcopy(base)
    theirs["cells"][4]["source"] = "print('finished')\n"
    result = merged(base, ours, theirs)
    assert result.clean
    assert tags(result.notebook["cells"][4]) == ["component:report"]
    assert source(result.notebook["cells"][4]) == "print('finished')\n"


def test_link_metadata_declarations_merge_as_sets_too():
    base = notebook(
        code("a = 1\n", id="a") | {"metadata": {"link": {"name": "a"}}},
        code("b = 1\n", id="b") | {"metadata": {"link": {"name": "b"}}},
        code("c = a\n", id="c") | {"metadata": {"link": {"name": "c", "parents": ["a"]}}},
    )
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][2]["metadata"]["link"]["parents"].append("b")
    theirs["cells"][2]["metadata"]["link"]["remote"] = "gpu1"
    result = merged(base, ours, theirs)
    assert result.clean
    assert result.notebook["cells"][2]["metadata"]["link"] == {"name": "c", "parents": ["a", "b"], "remote": "gpu1"}


def test_deleted_on_one_side_and_edited_on_the_other_keeps_the_edit_inside_markers():
    base = pipeline()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    del ours["cells"][4]
    theirs["cells"][4]["source"] = "print('all done')\n"
    result = merged(base, ours, theirs)
    assert [c.kind for c in result.conflicts] == ["delete"]
    assert source(result.notebook["cells"][4]).endswith("<<<<<<< ours\n=======\nprint('all done')\n>>>>>>> theirs\n")

    theirs = copy.deepcopy(base)
    theirs["cells"][4]["outputs"] = [stream("done\n")]  # outputs are not an edit
    assert len(merged(base, ours, theirs).notebook["cells"]) == 4


def test_edits_to_different_lines_merge_and_the_same_lines_conflict_with_the_requested_marker_size():
    base = notebook(code("a = 1\nb = 2\nc = 3\nd = 4\n", id="x"))
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][0]["source"] = "a = 10\nb = 2\nc = 3\nd = 4\n"
    theirs["cells"][0]["source"] = "a = 1\nb = 2\nc = 3\nd = 40\n"
    result = merged(base, ours, theirs)
    assert result.clean and source(result.notebook["cells"][0]) == "a = 10\nb = 2\nc = 3\nd = 40\n"
    assert result.notebook["cells"][0]["outputs"] == [] and result.notebook["cells"][0]["execution_count"] is None

    theirs["cells"][0]["source"] = "a = 100\nb = 2\nc = 3\nd = 4\n"
    result = merged(base, ours, theirs, marker_size=10)
    assert [c.kind for c in result.conflicts] == ["source"]
    assert source(result.notebook["cells"][0]) == (
        "<<<<<<<<<< ours\na = 10\n==========\na = 100\n>>>>>>>>>> theirs\nb = 2\nc = 3\nd = 4\n"
    )


def test_outputs_and_execution_counts_never_conflict():
    base = pipeline()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][3]["outputs"], ours["cells"][3]["execution_count"] = [stream("13\n")], 7
    theirs["cells"][3]["outputs"], theirs["cells"][3]["execution_count"] = [stream("14\n")], 9
    result = merged(base, ours, theirs)
    assert result.clean
    assert result.notebook["cells"][3]["execution_count"] in (7, 9)


def test_notebooks_without_ids_merge_by_content():
    base = pipeline(with_ids=False)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours["cells"][1]["source"] = "import math\ndata = [1, 2, 3, 4]\n"
    theirs["cells"][4]["source"] = "print('finished')\n"
    theirs["cells"].insert(1, markdown("Loading the data.\n"))
    result = merged(base, ours, theirs)
    assert result.clean
    assert [source(c) for c in result.notebook["cells"]] == [
        "# Pipeline\n", "Loading the data.\n", "import math\ndata = [1, 2, 3, 4]\n",
        "clean = [x * 2 for x in data]\n", "model = sum(clean)\nprint(model)\n", "print('finished')\n",
    ]
    assert all("id" not in c for c in result.notebook["cells"])


def test_an_internal_error_gives_a_conflict_result_not_a_crash():
    base = pipeline()
    base["cells"][3]["metadata"] = ["not", "a", "mapping"]  # nothing the merge expects
    base["broken"] = True
    ours, theirs = pipeline(), pipeline()
    ours["cells"][3]["source"] = "model = 0\n"
    theirs["cells"][3]["metadata"]["tags"].append("parent:load")
    result = merged(base, ours, theirs)
    assert [c.kind for c in result.conflicts] == ["internal"]
    assert result.notebook["cells"][1:] == ours["cells"]
    assert "linkkernel could not merge this notebook (AttributeError" in source(result.notebook["cells"][0])


def test_matching_is_near_linear_without_ids():
    cells = [code(f"x{i} = {i}\nprint(x{i})\n") for i in range(3000)]
    edited = copy.deepcopy(cells)
    for i in range(0, 3000, 7):
        edited[i]["source"] = f"x{i} = {i} + 1\nprint(x{i})\n"
    edited.insert(100, edited.pop(2000))
    pairs = match_cells(cells, edited)
    assert len(pairs) == 3000
    assert pairs[2000] == 100 and pairs[0] == 0 and pairs[2999] == 2999


# ---- properties --------------------------------------------------------------------------

N_CELLS = 12


def base_notebook(with_ids: bool):
    cells = []
    for i in range(N_CELLS):
        parents = [f"parent:c{i - 1}"] if i % 3 and i else []
        cell = code(f"v{i} = {i}\nw{i} = v{i} * 2\nprint(w{i})\n", f"component:c{i}", *parents,
                    **({"id": f"id{i}"} if with_ids else {}))
        cells.append(cell)
    return notebook(*cells)


EDIT = st.sampled_from(["source", "delete", "insert_after", "tag", "move_to_end", "outputs"])


def apply(nb, edits, side):
    nb = copy.deepcopy(nb)
    cells = nb["cells"]
    index = {c["metadata"]["tags"][0]: c for c in cells}
    for target, kind in edits:
        cell = index[f"component:c{target}"]
        if kind == "source":
            cell["source"] = source(cell).replace(f"v{target} * 2", f"v{target} * 3  # {side}")
        elif kind == "delete":
            cells.remove(cell)
        elif kind == "insert_after":
            new = code(f"print('{side} after {target}')\n", **({"id": f"{side}{target}"} if "id" in cell else {}))
            cells.insert(cells.index(cell) + 1, new)
        elif kind == "tag":
            cell["metadata"]["tags"].append(f"{side}-reviewed")
        elif kind == "move_to_end":
            cells.remove(cell)
            cells.append(cell)
        else:
            cell["outputs"], cell["execution_count"] = [stream(f"{side}\n")], 1
    return nb


@st.composite
def disjoint_edits(draw):
    targets = draw(st.lists(st.integers(0, N_CELLS - 1), unique=True, max_size=8))
    split = draw(st.integers(0, len(targets)))
    ours = [(t, draw(EDIT)) for t in targets[:split]]
    theirs = [(t, draw(EDIT)) for t in targets[split:]]
    # A deleted component may not be anyone's parent: that is the pipeline conflict case.
    deleted = {t for t, k in ours + theirs if k == "delete"}
    ok = all((t + 1) % 3 == 0 or t + 1 >= N_CELLS or t + 1 in deleted for t in deleted)
    return ours, theirs, ok


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(disjoint_edits(), st.booleans())
def test_non_overlapping_edits_always_merge_cleanly(edits, with_ids):
    ours_edits, theirs_edits, ok = edits
    assume(ok)
    base = base_notebook(with_ids)
    ours, theirs = apply(base, ours_edits, "ours"), apply(base, theirs_edits, "theirs")
    result = merged(base, ours, theirs)
    assert result.clean, result.conflicts
    text = "\n".join(source(c) for c in result.notebook["cells"])
    for side, side_edits in (("ours", ours_edits), ("theirs", theirs_edits)):
        for target, kind in side_edits:
            if kind == "source":
                assert f"v{target} * 3  # {side}" in text
            elif kind == "insert_after":
                assert f"print('{side} after {target}')" in text
            elif kind == "delete":
                assert f"v{target} = {target}\n" not in text
            elif kind == "tag":
                assert any(f"{side}-reviewed" in tags(c) for c in result.notebook["cells"])
            elif kind == "move_to_end":
                # Among the last cells: after every cell that was not moved or inserted.
                tail = sum(k in ("move_to_end", "insert_after") for _, k in ours_edits + theirs_edits)
                assert any(f"component:c{target}" in tags(c) for c in result.notebook["cells"][-tail:])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, N_CELLS - 1), EDIT), max_size=6),
    st.lists(st.tuples(st.integers(0, N_CELLS - 1), EDIT), max_size=6),
    st.booleans(),
)
def test_every_merge_result_is_a_valid_notebook_that_keeps_both_sides(ours_edits, theirs_edits, with_ids):
    def unique(edits):
        return list({t: (t, k) for t, k in edits}.values())

    base = base_notebook(with_ids)
    ours, theirs = apply(base, unique(ours_edits), "ours"), apply(base, unique(theirs_edits), "theirs")
    result = merged(base, ours, theirs)
    text = "\n".join(source(c) for c in result.notebook["cells"])
    for side in (ours, theirs):
        for cell in side["cells"]:
            for line in source(cell).splitlines():
                if "ours" in line or "theirs" in line:
                    assert line in text


def test_notebooks_are_written_exactly_as_nbformat_writes_them():
    import nbformat

    from linkkernel.git.nbio import dumps

    nb = pipeline()
    nb["cells"][3]["outputs"].append({"output_type": "execute_result", "execution_count": 3, "metadata": {"x": [1.5, None, True, False, {}]},
                                       "data": {"text/plain": "ünïcode \"quoted\" \\ tab\t", "application/json": {"a": [], "b": -2e-9}}})
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11"}
    written = nbformat.writes(nbformat.from_dict(nb)) + "\n"  # nbformat.write adds the final newline
    assert dumps(json.loads(written)) == written
