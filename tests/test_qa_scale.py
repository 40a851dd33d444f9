"""Deep pipelines: a chain of hundreds of components runs, caches and restarts like a short one.

The kernel tests drive real kernels over the Jupyter protocol; the pure ones check what made
deep chains slow or fail: what a component inherits (a recursive walk of every ancestor, for
every component) and how the store forgets the values of replaced runs.
"""

from __future__ import annotations

import json
import time

import pytest

from engine_support import Notebook, value
from linkkernel.declarations import Component, Declaration
from linkkernel.graph import PipelineError, build_graph, with_ancestors
from linkkernel.namespaces import dump
from linkkernel.sources import Declared
from linkkernel.staleness import RunRecord, inherited, new_run_id
from linkkernel.store import CacheStore, freeze

DEPTH = 300


def chain(nb: Notebook, depth: int, body) -> Notebook:
    """`c0 <- c1 <- ... <- c{depth-1}`, component i's code `body(i)`."""
    for i in range(depth):
        nb.add(f"c{i}", body(i), *([f"c{i - 1}"] if i else []))
    return nb.use()


def test_a_chain_of_hundreds_of_components_runs_from_its_last_cell_and_again_after_a_restart(link, nb):
    chain(nb, DEPTH, lambda i: f"v{i} = v{i - 1} + 1" if i else "v0 = 0")
    last = f"c{DEPTH - 1}"
    first = nb.run(last, timeout=120)
    assert first.status == "ok", first.traceback_text
    assert first.stderr == ""
    assert nb.runs() == [f"c{i}" for i in range(DEPTH)]
    assert value(link, f"(v0, v{DEPTH // 2}, v{DEPTH - 1})") == (0, DEPTH // 2, DEPTH - 1)
    again = nb.run(last)
    assert again.status == "ok" and nb.runs() == [last]
    status = link.execute("%link status").stdout.splitlines()[1:]
    assert len(status) == DEPTH and all(" fresh " in row for row in status), status[:3]
    link.manager.restart_kernel(now=False)  # as JupyterLab: a shutdown_request, the cache written first
    link.client.wait_for_ready(timeout=60)
    nb.use()
    restarted = nb.run(last, timeout=120)
    assert restarted.status == "ok", restarted.traceback_text
    assert nb.runs() == [last]  # every ancestor fresh in the cache: published, not run
    assert value(link, f"(v0, v{DEPTH - 1})") == (0, DEPTH - 1)


def test_a_chain_deeper_than_the_recursion_limit_runs(link, nb):
    """One value passed down 1200 components, each changing it: what a component inherits is
    worked out without recursion (a walk of every ancestor's record ended in RecursionError)."""
    depth = 1200
    for i in range(depth):
        nb.add(f"c{i}", "x = x + 1" if i else "x = 0", *([f"c{i - 1}"] if i else []), counted=False)
    nb.use()
    result = nb.run(f"c{depth - 1}", timeout=120)
    assert result.status == "ok", result.traceback_text
    assert "RecursionError" not in result.stderr
    assert value(link, "x") == depth - 1


def record(name: str, parents: dict[str, str], namespace: dict[str, str], run_id: str | None = None) -> RunRecord:
    return RunRecord(name, run_id or f"run-{name}", "code", parents, "ok", 0.0, 0.0, namespace=namespace)


def chain_records(depth: int) -> dict[str, RunRecord]:
    """Records of a chain that passes `x` down, each component changing it and adding its own name."""
    records = {}
    for i in range(depth):
        parent = records.get(f"c{i - 1}")
        namespace = {**(parent.namespace if parent else {}), "x": f"x{i}", f"own{i % 7}": f"own{i}"}
        records[f"c{i}"] = record(f"c{i}", {parent.name: parent.run_id} if parent else {}, namespace)
    return records


def test_inherited_walks_a_chain_far_deeper_than_the_recursion_limit():
    records = chain_records(20_000)
    assert inherited(["c19999"], records.get) == {"x": "x19999", **{f"own{i % 7}": f"own{i}" for i in range(19_993, 20_000)}}


def test_inherited_works_out_each_run_once_with_a_memo_and_forgets_nothing_it_needs():
    records = chain_records(50)
    asked: list[str] = []

    def record_of(name: str) -> RunRecord | None:
        asked.append(name)
        return records.get(name)

    made: dict = {}
    for i in range(1, 50):
        assert inherited([f"c{i - 1}"], record_of, made) == {"x": f"x{i - 1}", **{f"own{k % 7}": f"own{k}" for k in range(max(0, i - 7), i)}}
    assert set(made) == {f"run-c{i}" for i in range(49)}
    assert len(asked) < 10 * 50  # a walk of the whole ancestry each time asks ~50 * 50 / 2
    # A run whose parent's record no longer matches is not kept: its lineage is not shown.
    records["c10"] = record("c10", {"c9": "an-older-run"}, {"x": "x10"}, run_id="run-c10-again")
    records["c11"] = record("c11", {"c10": "run-c10-again"}, {"x": "x11"}, run_id="run-c11-again")
    assert inherited(["c11"], records.get, made) == {"x": "x11"}
    assert "run-c10-again" not in made and "run-c11-again" not in made


def test_inherited_still_merges_two_lines_by_who_made_each_value_with_a_memo():
    """load -> features (changes t), load -> stats (passes t on): features' t wins in either
    order, first computed into the memo, then read from it."""
    records = {
        "load": record("load", {}, {"t": "t0", "raw": "r0"}),
        "features": record("features", {"load": "run-load"}, {"t": "t1"}),
        "stats": record("stats", {"load": "run-load"}, {"t": "t0", "raw": "r0"}),
    }
    made: dict = {}
    for _ in range(2):
        assert inherited(["features", "stats"], records.get, made) == {"t": "t1"}
        assert inherited(["stats", "features"], records.get, made) == {"t": "t1"}


def test_records_read_back_share_their_names_and_digests():
    parent = record("parent", {}, {"table": "d" * 64})
    child = record("child", {"parent": parent.run_id}, {"table": "d" * 64, "model": "e" * 64})
    read = [RunRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in (parent, child)]
    (table_p, digest_p), = read[0].namespace.items()
    table_c, digest_c = next(iter(read[1].namespace.items()))
    assert table_p is table_c and digest_p is digest_c
    assert read[1].parents["parent"] is read[0].run_id


def blob(value):
    return freeze(dump("x", value))


def test_a_replaced_run_forgets_only_the_values_no_other_record_holds():
    store = CacheStore(None, None)
    shared, mine, again = blob([1]), blob([2]), blob([3])
    store.put(record("a", {}, {"s": shared.digest, "m": mine.digest, "m2": mine.digest}), {shared.digest: shared, mine.digest: mine}, {})
    store.put(record("b", {}, {"s": shared.digest}), {shared.digest: shared}, {})
    store.put(record("a", {}, {"m": again.digest}, run_id="run-a2"), {again.digest: again}, {})
    assert set(store.blobs) == {shared.digest, again.digest}  # `mine`, held twice by the old run only, is gone
    store.put(record("b", {}, {}, run_id="run-b2"), {}, {})
    assert set(store.blobs) == {again.digest}
    store.put(record("b", {}, {"s": shared.digest}, run_id="run-b3"), {shared.digest: shared}, {})
    assert set(store.blobs) == {shared.digest, again.digest}  # made again, kept again


def test_a_replaced_run_forgets_its_memory_only_values_and_its_lineage():
    store = CacheStore(None, None)
    store.put(record("a", {}, {"lock": "memory:run-a:lock"}), {}, {"memory:run-a:lock": object()})
    store.put(record("b", {"a": "run-a"}, {"lock": "memory:run-a:lock"}), {}, {})
    assert store.inherited(["b"]) == {"lock": "memory:run-a:lock"}
    assert set(store._made) == {"run-a", "run-b"}
    store.put(record("a", {}, {}, run_id="run-a2"), {}, {})
    assert "memory:run-a:lock" in store.memory_values  # b's run still holds it
    assert set(store._made) == {"run-b"}
    store.put(record("b", {"a": "run-a2"}, {}, run_id="run-b2"), {}, {})
    assert store.memory_values == {} and store._made == {}


def test_available_looks_at_memory_only_and_lost_values(tmp_path):
    store = CacheStore(f"file://{tmp_path}", str(tmp_path / "nb.ipynb"))
    kept = blob([1])
    rec = record("a", {}, {"x": kept.digest, "lock": "memory:run-a:lock"})
    store.put(rec, {kept.digest: kept}, {"memory:run-a:lock": object()})
    store.flush()
    assert store.available(rec)
    store.lose(kept.digest)
    assert not store.available(rec)
    store.put(rec, {kept.digest: kept}, {"memory:run-a:lock": object()})  # made again: in memory until written
    assert store.available(rec)
    store.flush()
    again = CacheStore(f"file://{tmp_path}", str(tmp_path / "nb.ipynb"))
    assert not again.available(again.get("a"))  # the memory-only value died with the process


def test_with_ancestors_leaves_out_what_already_ran():
    components = [Component(Declaration(f"c{i}", (f"c{i - 1}",) if i else ()), "", None, i) for i in range(5000)]
    components.append(Component(Declaration("side", ("c2",)), "", None, 5000))
    graph = build_graph(components)
    assert with_ancestors(graph, ["side"]) == ["c0", "c1", "c2", "side"]
    assert with_ancestors(graph, ["c4"], done={"c0", "c1", "c2"}) == ["c3", "c4"]
    assert len(with_ancestors(graph, ["c4999"])) == 5000


@pytest.mark.timeout(5)  # each component walking its ancestors took 14 s here
def test_nothing_is_blocked_without_a_malformed_cell():
    """`%link status` asks which components a malformed cell blocks: with none, at once."""
    components = [Component(Declaration(f"c{i}", (f"c{i - 1}",) if i else ()), "", None, i) for i in range(3000)]
    assert Declared(components, []).blocked() == {}


def test_build_graph_names_the_cycle_of_a_deep_pipeline():
    """Acyclicity is checked in one pass; the cycle is looked for only to name it."""
    depth = 3000
    components = [Component(Declaration(f"c{i}", (f"c{(i - 1) % depth}",)), "", None, i) for i in range(depth)]
    with pytest.raises(PipelineError, match=r"cycle in pipeline: c\d+ -> "):
        build_graph(components)


def test_the_progress_line_of_many_quick_components_is_not_a_message_each(link, nb):
    """The first and the last are shown; those in between at most ten times a second."""
    chain(nb, 100, lambda i: f"v{i} = {i}")
    result = nb.run("c99")
    assert result.status == "ok", result.traceback_text
    lines = [d["data"]["text/plain"] for d in result.displays if d["data"]]
    assert "running parent 'c0' (1 of 99" in lines[0]
    assert "running parent 'c98' (99 of 99" in lines[-1]
    assert len(lines) < 30, len(lines)


def test_a_number_or_string_kept_as_loaded_is_proven_unchanged_without_pickling():
    from linkkernel.cow import Loaded

    for kept in (12345678901234567890, 2.5, "a label", b"raw", None):
        loaded = Loaded(blob(kept), {})
        assert loaded.unchanged("x", loaded.value) is loaded.blob
    listed = Loaded(blob([1, 2]), {})
    assert listed.unchanged("x", listed.value) is None  # may have been changed in place: compared by digest


def test_run_order_is_networkx_lexicographic_order_by_notebook_position():
    """The sort written for speed orders every DAG as networkx's lexicographic sort did."""
    import random

    import networkx as nx

    from linkkernel.graph import notebook_order, run_order

    rng = random.Random(7)
    for _ in range(100):
        size = rng.randint(1, 30)
        positions = rng.sample(range(size), size)
        components = [
            Component(Declaration(f"n{i}", tuple(sorted({f"n{rng.randrange(i)}" for _ in range(rng.randint(0, 3))})) if i else ()), "", None, positions[i])
            for i in range(size)
        ]
        graph = build_graph(components)
        for names in (None, rng.sample(sorted(graph), rng.randint(0, size))):
            view = graph if names is None else graph.subgraph(names)
            assert run_order(graph, names) == list(nx.lexicographical_topological_sort(view, key=notebook_order(graph)))


def _unfresh_by_states(store: CacheStore, graph, targets: list[str]) -> set[str]:
    """What `unfresh` must answer: the staleness rule applied to the whole pipeline."""
    state = store.states(graph)
    return {n for n in with_ancestors(graph, targets) if state[n] != "fresh"}


def test_what_is_known_fresh_is_forgotten_with_every_change_that_makes_it_stale(tmp_path):
    """`unfresh` remembers fresh components between cells (Run All); a parent run again, a
    failed run, an edit, a lost value, a cleared cache or a record another process wrote
    each make some stale, and it says so as the staleness rule does."""
    from linkkernel.staleness import code_hash

    def pipeline(**sources: str):
        names = ["c0", "c1", "c2", "side"]
        parents = {"c0": (), "c1": ("c0",), "c2": ("c1",), "side": ("c0",)}
        return build_graph([Component(Declaration(n, parents[n]), sources.get(n, f"{n} = 1"), None, i) for i, n in enumerate(names)])

    notebook = str(tmp_path / "nb.ipynb")
    store = CacheStore(f"file://{tmp_path / 'cache'}", notebook)
    graph = pipeline()
    values = {n: blob(n) for n in graph}

    def run(name: str, graph=graph, status: str = "ok", into: CacheStore = store) -> None:
        component = graph.nodes[name]["component"]
        parents = {p: into.get(p).run_id for p in component.parents}
        done = RunRecord(name, new_run_id(), code_hash(component.source), parents, status, 0.0, 0.0, namespace={name: values[name].digest})
        into.put(done, {values[name].digest: values[name]}, {})
        into.flush()

    def check(graph, targets: list[str], expected: set[str]) -> None:
        assert store.unfresh(graph, targets) == expected == _unfresh_by_states(store, graph, targets)

    check(graph, ["c2"], {"c0", "c1", "c2"})
    for name in ("c0", "c1", "c2", "side"):
        run(name)
    check(graph, ["c2", "side"], set())
    run("c1")  # a parent run again: its children stale, not its siblings
    check(graph, ["c2", "side"], {"c2"})
    run("c2")
    check(graph, ["c2"], set())
    run("c0", status="failed")
    check(graph, ["c2", "side"], {"c0", "c1", "c2", "side"})
    for name in ("c0", "c1", "c2", "side"):
        run(name)
    check(graph, ["c2", "side"], set())
    edited = pipeline(c1="c1 = 2")  # the declarations changed: another graph
    check(edited, ["c2", "side"], {"c1", "c2"})
    check(graph, ["c2"], set())
    store.lose(values["c1"].digest)
    check(graph, ["c2", "side"], {"c1", "c2"})
    run("c1")
    run("c2")
    check(graph, ["c2", "side"], set())
    time.sleep(0.01)  # another mtime for the files written next
    elsewhere = CacheStore(f"file://{tmp_path / 'cache'}", notebook)  # `linkkernel cache import` in a terminal
    run("c0", into=elsewhere)
    check(graph, ["c2", "side"], {"c1", "c2", "side"})
    for name in ("c1", "c2", "side"):
        run(name)
    check(graph, ["c2", "side"], set())
    store.clear()
    check(graph, ["c2"], {"c0", "c1", "c2"})


def _written(nb: Notebook, name: str, other_than: str | None = None) -> str:
    """The run id of `name`'s record once the kernel has written it (another run than
    `other_than`), waited for: the kernel writes after the reply."""
    from linkkernel.store import CacheStore, default_cache_url

    folder = f"{CacheStore(default_cache_url(), str(nb.path)).root}/records"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            run_id = json.loads(open(f"{folder}/{name}.json").read())["run_id"]
        except (OSError, ValueError):
            run_id = None
        if run_id is not None and run_id != other_than:
            time.sleep(0.2)  # the write's own bookkeeping, just after the file landed
            return run_id
        time.sleep(0.05)
    raise TimeoutError(f"record of {name} not written")


def test_a_parent_run_another_process_put_in_the_cache_is_published_though_its_old_run_was(link, nb):
    """Before each cell, ancestors already published are not walked again (Run All); one
    whose record another process replaced since (`linkkernel cache import` in a terminal)
    is a run not published yet: its values reach the notebook namespace, and its child
    runs on them."""
    from linkkernel.staleness import code_hash
    from linkkernel.store import CacheStore, default_cache_url

    nb.add("a", "x = 1").add("b", "y = x + 1", "a").use()
    assert nb.run("b").status == "ok"
    first = _written(nb, "b")
    assert nb.run("b").status == "ok"  # `a` fresh and published: known so from now on
    assert nb.runs() == ["a", "b", "b"]
    _written(nb, "b", other_than=first)
    elsewhere = CacheStore(default_cache_url(), str(nb.path))
    imported = blob(41)
    elsewhere.put(
        RunRecord("a", new_run_id(), code_hash(nb.cells["a"]["source"]), {}, "ok", 0.0, 0.0, namespace={"x": imported.digest}),
        {imported.digest: imported},
        {},
    )
    assert elsewhere.write_failures() == []
    result = nb.run("b")
    assert result.status == "ok", result.traceback_text
    assert nb.runs() == ["b"]  # `a` fresh: the imported run
    assert value(link, "(x, y)") == (41, 42)


def test_small_numbers_and_strings_are_loaded_once_and_forgotten_with_their_value():
    """What a chain's components inherit by the hundred is unpickled once: the same object
    for every child (it cannot change), until no record names it or it is lost. A long text
    is not kept twice, and a list is a new copy each time."""
    from linkkernel.store import LostValue

    store = CacheStore(None, None)
    number, other, text, listed = blob(12345678901234567890), blob("a label"), blob("x" * 10_000), blob([1])
    values = {"n": number.digest, "o": other.digest, "t": text.digest, "l": listed.digest}
    store.put(record("a", {}, values), {b.digest: b for b in (number, other, text, listed)}, {})
    first, how = store.load(number.digest, {})
    assert store.load(number.digest, {}) == (first, how) and store.load(number.digest, {})[0] is first
    store.load(other.digest, {})
    assert store.load(text.digest, {})[0] is not store.load(text.digest, {})[0]
    assert store.load(listed.digest, {})[0] is not store.load(listed.digest, {})[0]
    assert set(store.immutables(values)) == {"n", "o"} and store.immutables(values)["n"] is how
    store.put(record("a", {}, {"n": number.digest}, run_id="run-a2"), {}, {})  # no record names "a label" now
    assert set(store.immutables(values)) == {"n"}
    store.lose(number.digest)
    assert store.immutables(values) == {}
    with pytest.raises(LostValue):
        store.load(number.digest, {})
