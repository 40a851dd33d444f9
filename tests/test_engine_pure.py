"""Staleness, declaration sources and the graph picture, without a kernel."""

from __future__ import annotations

import json
import os
import time

import pytest

from linkkernel.declarations import NAME_RULE, DeclarationError
from linkkernel.graph import PipelineError, build_graph
from linkkernel.graph_svg import render_svg, render_text
from linkkernel.sources import Sources, notebook_path_from_env
from linkkernel.staleness import FAILED, FRESH, NEVER, STALE, RunRecord, code_hash, states


def record(name, parents=None, code="x", status="ok", run_id=None):
    return RunRecord(name, run_id or f"run-{name}", code_hash(code), dict(parents or {}), status, 0.0, 0.0)


def test_states_chain_fresh_then_parent_rerun_makes_descendants_stale():
    order = ["a", "b", "c"]
    parents = {"a": (), "b": ("a",), "c": ("b",)}
    hashes = {n: code_hash("x") for n in order}
    records = {"a": record("a"), "b": record("b", {"a": "run-a"}), "c": record("c", {"b": "run-b"})}
    assert states(order, parents, hashes, records) == {"a": FRESH, "b": FRESH, "c": FRESH}
    records["a"] = record("a", run_id="run-a2")  # a ran again: new run id
    assert states(order, parents, hashes, records) == {"a": FRESH, "b": STALE, "c": STALE}


def test_states_edit_makes_all_descendants_stale_even_before_the_parent_reruns():
    order = ["a", "b", "c"]
    parents = {"a": (), "b": ("a",), "c": ("b",)}
    records = {"a": record("a"), "b": record("b", {"a": "run-a"}), "c": record("c", {"b": "run-b"})}
    hashes = {"a": code_hash("edited"), "b": code_hash("x"), "c": code_hash("x")}
    assert states(order, parents, hashes, records) == {"a": STALE, "b": STALE, "c": STALE}


def test_states_never_failed_unavailable_and_changed_parents():
    order = ["a", "b", "c", "d"]
    parents = {"a": (), "b": ("a",), "c": (), "d": ("a",)}
    hashes = {n: code_hash("x") for n in order}
    records = {"a": record("a"), "b": record("b", {"a": "run-a"}, status="failed"), "c": None,
               "d": record("d", {})}  # d gained parent a since its run
    assert states(order, parents, hashes, records) == {"a": FRESH, "b": FAILED, "c": NEVER, "d": STALE}
    assert states(order, parents, hashes, records, {"a": False})["a"] == STALE


def test_code_hash_ignores_trailing_whitespace_only():
    assert code_hash("x = 1\n\n") == code_hash("x = 1")
    assert code_hash("x = 1") != code_hash("x = 2")


def test_record_round_trips_through_json():
    r = record("a", {"p": "run-p"})
    r.outputs = [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]
    assert RunRecord.from_json(json.loads(json.dumps(r.to_json()))) == r


def write_notebook(path, cells):
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": cid, "source": src, "metadata": meta, "outputs": [], "execution_count": None}
        for cid, src, meta in cells
    ]}
    path.write_text(json.dumps(nb))


def tags(name, *parents):
    return {"tags": [f"component:{name}"] + [f"parent:{p}" for p in parents]}


def test_sources_merge_file_and_executed_cells_newest_wins(tmp_path):
    nb = tmp_path / "nb.ipynb"
    write_notebook(nb, [("c1", "a = 1", tags("a")), ("c2", "b = a", tags("b", "a"))])
    sources = Sources(str(nb))
    assert [c.name for c in sources.components()] == ["a", "b"]
    # the user renames a in JupyterLab and executes it: the request is newer than the file
    sources.learn("a = 1", {"tags": ["component:load"], "cellId": "c1"}, "c1")
    assert [c.name for c in sources.components()] == ["load", "b"]
    with pytest.raises(PipelineError, match=r"parent 'a', which is not declared in .*nb.ipynb"):
        build_graph(sources.components(), sources.looked_in())
    # then saves a newer file: the file is now the newest word on c1 and c2
    time.sleep(0.01)
    write_notebook(nb, [("c1", "a = 2", tags("a")), ("c2", "b = a", tags("b", "a"))])
    os.utime(nb, (time.time() + 1, time.time() + 1))
    assert [(c.name, c.source) for c in sources.components()] == [("a", "a = 2"), ("b", "b = a")]


def test_sources_unsaved_and_deleted_cells(tmp_path):
    nb = tmp_path / "nb.ipynb"
    write_notebook(nb, [("c1", "a = 1", tags("a")), ("c2", "b = a", tags("b", "a"))])
    sources = Sources(str(nb))
    sources.learn("c = b", {"tags": ["component:c", "parent:b"], "cellId": "new"}, "new")
    assert [c.name for c in sources.components()] == ["a", "b", "c"]
    sources.learn("print(1)", {"deletedCells": ["c2"], "cellId": "c9"}, "c9")
    assert [c.name for c in sources.components()] == ["a", "c"]


def test_sources_match_requests_without_cell_id_by_source(tmp_path):
    nb = tmp_path / "nb.ipynb"
    write_notebook(nb, [("c1", "a = 1", tags("a")), ("c2", "b = a\n", tags("b", "a"))])
    sources = Sources(str(nb))
    component = sources.learn("b = a", {}, None)
    assert component.name == "b" and component.parents == ("a",) and component.cell_id == "c2"
    assert sources.learn("print('plain')", {}, None) is None


def test_sources_without_notebook_say_where_they_looked():
    sources = Sources(None)
    sources.learn("b = 1", tags("b", "missing"), "x")
    with pytest.raises(PipelineError, match="parent 'missing'.*no saved notebook known"):
        build_graph(sources.components(), sources.looked_in())


def test_sources_malformed_declaration_is_one_error(tmp_path):
    with pytest.raises(DeclarationError, match="malformed tag 'component:9x'"):
        Sources(None).learn("x", {"tags": ["component:9x"]}, "c")


def test_malformed_cells_block_only_the_runs_that_reach_them(tmp_path):
    nb = tmp_path / "nb.ipynb"
    write_notebook(nb, [
        ("c1", "a = 1", tags("a")),
        ("c2", "b = a", tags("b", "a")),
        ("c3", "x = 1", {"tags": ["component:x", "parent:9bad"]}),
        ("c4", "y = x", tags("y", "x")),
    ])
    declared = Sources(str(nb)).declared()
    assert [c.name for c in declared.relevant(["b"])] == ["a", "b"]
    assert [(m.names, str(m.error)) for m in declared.malformed] == [
        (frozenset({"x"}), "cell 3 (id c3): malformed tag 'parent:9bad': '9bad' is not a valid name " + NAME_RULE)
    ]
    with pytest.raises(DeclarationError, match="parent:9bad"):
        declared.relevant(["y"])
    with pytest.raises(DeclarationError, match="parent:9bad"):
        declared.all()
    assert list(declared.blocked()) == ["y"]
    # a cell whose name cannot be read might be the one a missing parent names
    write_notebook(nb, [("c1", "a = 1", tags("a")), ("c2", "b = m", tags("b", "m")), ("c3", "", {"tags": ["component:1m"]})])
    declared = Sources(str(nb)).declared()
    assert [c.name for c in declared.relevant(["a"])] == ["a"]
    with pytest.raises(DeclarationError, match="component:1m"):
        declared.relevant(["b"])


def test_notebook_path_from_env_prefers_linkkernel_notebook():
    env = {"JPY_SESSION_NAME": "/a/one.ipynb", "LINKKERNEL_NOTEBOOK": "/b/two.ipynb"}
    assert notebook_path_from_env(env) == "/b/two.ipynb"
    assert notebook_path_from_env({"JPY_SESSION_NAME": "/a/one.ipynb"}) == "/a/one.ipynb"
    assert notebook_path_from_env({"JPY_SESSION_NAME": "console-1"}) is None


def test_graph_svg_is_layered_and_coloured_by_state():
    svg = render_svg([["a"], ["b", "c"], ["d"]], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
                     {"a": "fresh", "b": "stale", "c": "failed"})
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<line") == 4 and svg.count("<rect") == 4
    assert 'class="node fresh"' in svg and 'class="node never"' in svg and "#c62828" in svg
    text = render_text([["a"], ["b"]], {"b": ("a",)}, {"a": "fresh"})
    assert text == "a [fresh]\nb [never] <- a"


def test_unreadable_notebook_does_not_stop_plain_cells_but_is_reported_for_components(tmp_path):
    nb = tmp_path / "broken.ipynb"
    nb.write_text("{not json")
    sources = Sources(str(nb))
    assert sources.learn("print(1)", {"cellId": "p"}, "p") is None
    with pytest.raises(Exception, match="cannot read the saved notebook .*broken.ipynb"):
        sources.components()


def test_changes_pickles_a_mutated_input_once_within_its_namespace():
    """The digest that shows an in-place mutation comes from the pickle the caller stores."""
    from linkkernel.namespaces import changes, dump, pickling_names

    grown, same, untouchable = [1, 2], {"k": 1}, [0]
    before = {name: dump(name, value).digest for name, value in (("grown", grown), ("same", same))}
    grown.append(3)
    final = {"grown": grown, "same": same, "untouchable": untouchable, "new": 1}
    with pickling_names(final) as names:
        found = changes({"grown": grown, "same": same, "untouchable": untouchable}, {**before, "untouchable": None}, final)
        assert dump("grown", grown) is names.blobs["grown"]
    assert found.bound == ("grown", "new") and found.deleted == ()
    assert names.blobs["grown"].digest == dump("grown", [1, 2, 3]).digest


class _Scaler:
    fitted = False


def _loaded_together(blobs: dict) -> dict:
    from linkkernel.namespaces import load, loading_together

    with loading_together({n: b.digest for n, b in blobs.items()}, lambda n: load(blobs[n])) as value_of:
        return {n: value_of(n) for n in blobs}


def test_names_holding_one_object_hold_one_object_again_when_loaded_together():
    """SPEC §3, as if the ancestors had run in one namespace: `pipe` holds the `scaler` a
    child fits, and `model` is `best`; loaded alone, a value keeps a copy of its own."""
    from linkkernel.namespaces import dump, load, pickling_names

    scaler = _Scaler()
    final = {"scaler": scaler, "pipe": {"steps": [("scale", scaler)]}, "best": _Scaler(), "n": 3}
    final["model"] = final["best"]
    with pickling_names(final):
        blobs = {name: dump(name, value) for name, value in final.items()}
    ns = _loaded_together(blobs)
    assert ns["pipe"]["steps"][0][1] is ns["scaler"] and ns["model"] is ns["best"]
    alone = load(blobs["pipe"])
    assert isinstance(alone["steps"][0][1], _Scaler) and alone["steps"][0][1] is not ns["scaler"]


def test_a_name_holding_a_mutated_object_changes_with_it_and_a_rebound_one_keeps_its_object():
    from linkkernel.namespaces import changes, dump, pickling_names

    scaler = _Scaler()
    final = {"scaler": scaler, "pipe": [scaler]}
    with pickling_names(final):
        before = {name: dump(name, value) for name, value in final.items()}
    ns = _loaded_together(before)
    digests = {n: b.digest for n, b in before.items()}
    ns["scaler"].fitted = True
    with pickling_names(ns):
        assert changes(dict(ns), digests, ns).bound == ("scaler", "pipe")
    old = ns["scaler"]
    ns["scaler"] = _Scaler()
    with pickling_names(ns):
        assert dump("pipe", ns["pipe"]).digest != digests["pipe"]
        rebuilt = _loaded_together({"scaler": dump("scaler", ns["scaler"]), "pipe": dump("pipe", ns["pipe"])})
    assert rebuilt["pipe"][0] is not rebuilt["scaler"] and rebuilt["pipe"][0].fitted and old.fitted


def _module(name: str, code: str) -> dict:
    import types

    namespace = types.ModuleType(name).__dict__
    exec(code, namespace)
    return namespace


HELPERS = (
    "scale = 1\ncount = 0\n"
    "def scaled(v):\n    return v * scale\n"
    "def counted():\n    global count\n    count += 1\n"
    "class Scaler:\n    def apply(self, v):\n        return scaled(v) + scale\n"
)


def test_notebook_functions_read_the_globals_of_the_namespace_they_are_loaded_into():
    """SPEC §3, one namespace: a parent's function reads, and writes, the child's globals."""
    from linkkernel.namespaces import dump, load

    parent = _module("__main__", HELPERS)
    child = {"scale": 10, "count": 5}
    scaled, counted, scaler = (load(dump(n, parent[n]), child) for n in ("scaled", "counted", "Scaler"))
    child["scaled"] = scaled
    assert (scaled(2), scaler().apply(1)) == (20, 20)
    counted()
    assert (child["count"], parent["count"]) == (6, 0)
    assert "__builtins__" not in child  # cloudpickle sets it in globals; a namespace keeps its own
    kept = {"__builtins__": "mine", "scale": 2}
    assert load(dump("scaled", parent["scaled"]), kept)(3) == 6 and kept["__builtins__"] == "mine"


def test_a_notebook_functions_digest_follows_its_code_not_the_globals_it_reads():
    """A child rebinding `scale` must not make its parent's `scaled` look mutated (an output)."""
    from linkkernel.namespaces import dump, reads_notebook_globals

    parent = _module("__main__", HELPERS)
    before = dump("scaled", parent["scaled"])
    parent["scale"] = 99
    assert dump("scaled", parent["scaled"]).digest == before.digest
    assert reads_notebook_globals(before) and not reads_notebook_globals(dump("n", [1, "scaled"]))


def test_functions_of_other_modules_keep_the_globals_they_were_pickled_with():
    """Only a notebook's namespace (`__main__`) is shared; a module made at run time keeps
    cloudpickle's own copy of what its functions read."""
    from linkkernel.namespaces import dump, load, reads_notebook_globals

    module = _module("made_at_run_time", HELPERS)
    blob = dump("scaled", module["scaled"])
    assert not reads_notebook_globals(blob)
    assert load(blob, {"scale": 10})(2) == 2


def test_a_class_loaded_for_a_run_gets_its_methods_back_afterwards_unless_the_run_changed_them():
    """A component's class is one object per process: a child's run binds its methods to the
    child's globals only while it runs; a method the run replaced itself stays replaced."""
    from linkkernel.namespaces import classes_put_back, dump, load

    blob = dump("Scaler", _module("__main__", HELPERS)["Scaler"])
    notebook, child = {"scale": 3}, {"scale": 10}
    cls = load(blob, notebook)
    with classes_put_back():
        assert load(blob, child) is cls and cls.apply.__globals__ is child
    assert cls.apply.__globals__ is notebook

    def patched(self, v):
        return -v

    with classes_put_back():
        load(blob, child)
        cls.apply = patched
    assert cls.apply is patched


def test_a_class_is_unchanged_by_pickling_its_instances():
    """copyreg caches `__slotnames__` in a class when an instance is first pickled; a child
    that merely used a parent's class must not have it among its outputs."""
    import types

    from linkkernel.namespaces import dump

    module = types.ModuleType("__main__")
    exec("class Point:\n    def norm(self):\n        return 0\n", module.__dict__)
    point_class = module.__dict__["Point"]
    before = dump("Point", point_class).digest
    dump("p", point_class())
    assert "__slotnames__" in vars(point_class)
    assert dump("Point", point_class).digest == before


def _declared_again(sources, code, meta, cell_id):
    """What `declared` answers before and after `learn(code, meta, cell_id)`."""
    before = sources.declared()
    sources.learn(code, {**meta, "cellId": cell_id}, cell_id)
    return before, sources.declared()


def test_sources_answer_the_same_declarations_until_something_changes_them(tmp_path):
    """Run All executes every cell as saved: the declarations are not merged again for each
    cell. Whatever changes them (an edit, a declaration, a deletion, a save, an unsaved cell
    executed, another notebook) gives a new answer, with the change in it."""
    nb = tmp_path / "nb.ipynb"
    write_notebook(nb, [("c1", "a = 1", tags("a")), ("c2", "b = a", tags("b", "a")), ("c3", "print(1)", {})])
    sources = Sources(str(nb))
    for code, meta, cell_id in [("a = 1", tags("a"), "c1"), ("b = a", tags("b", "a"), "c2"), ("print(1)", {}, "c3"), ("a = 1", tags("a"), "c1")]:
        before, after = _declared_again(sources, code, meta, cell_id)
        assert after is before, cell_id
    before, after = _declared_again(sources, "a = 2", tags("a"), "c1")  # edited
    assert after is not before and after.components[0].source == "a = 2"
    assert _declared_again(sources, "a = 2", tags("a"), "c1")[1] is after  # executed again as edited
    before, after = _declared_again(sources, "b = a", tags("b"), "c2")  # its parent removed
    assert after is not before and after.components[1].parents == ()
    before, after = _declared_again(sources, "b = a", {**tags("b"), "link": {"name": "b"}}, "c2")  # other metadata
    assert after is not before
    before, after = _declared_again(sources, "b = a", {}, "c2")  # no longer a component
    assert after is not before and [c.name for c in after.components] == ["a"]
    before, after = _declared_again(sources, "c = a", tags("c", "a"), "new")  # a cell not saved yet
    assert after is not before and [c.name for c in after.components] == ["a", "c"]
    before, after = _declared_again(sources, "c = a", tags("c", "a"), "new")  # moves after the other unsaved ones
    assert after is not before
    before = sources.declared()
    sources.learn("print(2)", {"deletedCells": ["c1"], "cellId": "c9"}, "c9")
    assert [c.name for c in sources.declared().components] == ["c"]
    before = sources.declared()
    write_notebook(nb, [("c1", "a = 3", tags("a"))])
    os.utime(nb, (time.time() + 1, time.time() + 1))
    after = sources.declared()
    assert after is not before and [(c.name, c.source) for c in after.components][0] == ("a", "a = 3")
    before = sources.declared()
    other = tmp_path / "other.ipynb"
    write_notebook(other, [("c1", "a = 3", tags("a"))])
    sources.notebook_path = str(other)
    assert sources.declared() is not before



def test_sources_keep_the_declarations_when_only_metadata_no_declaration_reads_differs(tmp_path):
    """JupyterLab sends `trusted: true` with every cell and saves none (and adds `execution`
    timings, `collapsed`, `scrolled`, `jupyter` as the user works): a Run All of the saved
    notebook, before or after a save, is still the notebook as saved. The tags (their order
    too) and `link` are what a declaration is read from: a change there is a new answer."""
    nb = tmp_path / "nb.ipynb"
    write_notebook(nb, [("c1", "a = 1", tags("a")), ("c2", "b = a", tags("b", "a")), ("c3", "print(1)", {})])
    sources = Sources(str(nb))
    lab = {"trusted": True, "deletedCells": [], "recordTiming": False}
    timing = {"execution": {"iopub.status.busy": "2026-11-27T05:00:00.000Z"}, "collapsed": False, "scrolled": True,
              "jupyter": {"source_hidden": False}}
    for extra in (lab, {**lab, **timing}):
        for code, meta, cell_id in [("a = 1", tags("a"), "c1"), ("b = a", tags("b", "a"), "c2"), ("print(1)", {}, "c3")]:
            before, after = _declared_again(sources, code, {**meta, **extra}, cell_id)
            assert after is before, (cell_id, extra)
    reordered = {"tags": ["parent:a", "component:b"], **lab}
    before, after = _declared_again(sources, "b = a", reordered, "c2")
    assert after is not before and after.components[1].parents == ("a",)
    before, after = _declared_again(sources, "b = a", {**reordered, "link": {"name": "b", "parents": ["a"]}}, "c2")
    assert after is not before
    before, after = _declared_again(sources, "b = a", {"trusted": True}, "c2")  # no longer a component
    assert after is not before and [c.name for c in after.components] == ["a"]

def test_ipython_names_are_told_apart_without_the_pattern_only_when_it_cannot_match():
    """Every name a run ends with is asked about; those not starting with an underscore skip
    the pattern unless the pattern has a name of that kind."""
    from linkkernel.runner import _IPYTHON_NAME, is_ipython_name

    alternatives = _IPYTHON_NAME.pattern.rstrip("\\Z").split("|")
    plain = {a for a in alternatives if not a.startswith("_")}
    assert plain and all(a.isidentifier() for a in plain)
    for name in [*plain, "_", "__", "_7", "_i", "_iii", "_i12", "_oh", "__spec__", "x", "_x", "Input", "In_", "v0", "quit2"]:
        assert is_ipython_name(name) == (_IPYTHON_NAME.fullmatch(name) is not None), name


def _compiled_in(filename: str, code: str) -> dict:
    """A notebook namespace after running `code` compiled as the cell file `filename`."""
    import types

    namespace = types.ModuleType("__main__").__dict__
    exec(compile(code, filename, "exec"), namespace)
    return namespace


def test_a_cells_function_pickles_alike_in_every_kernel_process_and_loads_into_this_ones_file():
    """Code compiled from a cell names its kernel process's temp file: pickled by the cell's
    hash, the same function has one digest whichever process pickled it (a child only calling
    it after a restart does not make it its output), and loaded it names this process's file
    of the cell, where JupyterLab's debugger sets its breakpoints."""
    from ipykernel.compiler import get_file_name

    from linkkernel.namespaces import dump, load

    here = get_file_name(HELPERS)
    elsewhere = here.replace(f"ipykernel_{os.getpid()}", "ipykernel_1")
    ours, theirs = (dump("scaled", _compiled_in(f, HELPERS)["scaled"]) for f in (here, elsewhere))
    assert ours.digest == theirs.digest and elsewhere.encode() not in theirs.stream
    loaded = load(theirs)
    assert loaded.__code__.co_filename == here
    assert dump("scaled", loaded).digest == theirs.digest
    assert dump("f", _compiled_in("/somewhere/script.py", HELPERS)["scaled"]).stream.count(b"/somewhere/script.py") == 1


def test_a_blob_pickled_with_a_cells_temp_path_loads_into_this_processs_file_and_is_compared_as_loaded():
    """Blobs cached before code pickled by cell hash hold the old process's path: their code
    loads into this process's file of the cell too, and a run that only reads such a value is
    compared with how it pickles now, not with its blob (else it would be an output)."""
    import io
    import types

    from ipykernel.compiler import get_file_name

    from linkkernel import namespaces

    class PathPickler(namespaces._Pickler):  # how code pickled before (the old blobs' form)
        def reducer_override(self, obj):
            if isinstance(obj, types.CodeType) and obj.co_filename != "<dynamic-code>":
                return namespaces._code_in_file, (obj.replace(co_filename="<dynamic-code>"), obj.co_filename)
            return super().reducer_override(obj)

    elsewhere = get_file_name(HELPERS).replace(f"ipykernel_{os.getpid()}", "ipykernel_1")
    with io.BytesIO() as file:
        PathPickler(file, protocol=namespaces.PROTOCOL).dump(_compiled_in(elsewhere, HELPERS)["scaled"])
        stream = file.getvalue()
    old = namespaces.Blob(stream, (), namespaces._digest(stream, ()))
    loaded = namespaces.load(old)
    assert loaded.__code__.co_filename == get_file_name(HELPERS)
    as_loaded = namespaces.digests_as_loaded({"scaled": loaded}, {"scaled": old})
    assert as_loaded == {"scaled": namespaces.dump("scaled", loaded).digest} != {"scaled": old.digest}
