"""QA of component namespaces, outputs and the cache store (SPEC §3) with the values data
scientists hold: several parents, in-place mutation, unpicklable objects, restarts, a cache
folder that cannot be written.

Each test drives a real Link Python kernel the way JupyterLab does; kernels are shared per module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_support import Notebook, value
from remote_support import registered_worker
from support import Kernel


LINK_CACHE_IN_HOME = True  # conftest's `link` keeps its cache store in the module's home


@pytest.fixture(scope="module")
def worker(home: Path):
    """A real worker on loopback, registered as `qv`: a remote run compares values as a local one does."""
    with registered_worker(home / "worker", "qv") as w:
        yield w


def test_a_parent_passing_a_value_on_unchanged_does_not_undo_a_sibling_parents_change(nb):
    """load -> features (adds a column in place, rebinds a setting) and load -> stats (only
    reads); a model with parents [features, stats] sees the features, as if load, features and
    stats had run in one namespace: stats never bound `table` or `scale`, so there is no clash
    for it to win. Where both parents bind a name, the later one still wins."""
    nb.add("load", "table = {'price': [1, 2]}\nscale = 1\nlabel = 'load'\nraw = 'big'\ntmp = 'load'")
    nb.add("features", "table['double'] = [p * 2 for p in table['price']]\nscale = 10\nlabel = 'features'\n"
                       "del raw\ntmp = 'features'", "load")
    nb.add("stats", "n = len(table['price']) + len(raw)\nlabel = 'stats'\ndel tmp", "load")
    seen = "(sorted(table), scale, n, label, 'raw' in dir(), tmp)"
    nb.add("model", f"seen = {seen}", "features", "stats")
    nb.add("model_rev", f"seen_rev = {seen}", "stats", "features")
    nb.use()
    # stats deleted load's tmp, not the one features made: that one stays
    expected = (["double", "price"], 10, 5, "stats", False, "features")
    assert nb.run("model").status == "ok"
    assert value(nb.kernel, "seen") == expected
    assert nb.run("model_rev").status == "ok"
    assert value(nb.kernel, "seen_rev") == (*expected[:3], "features", *expected[4:])
    nb.runs()
    nb.kernel.restart_as_jupyterlab()  # the same merge from the records in the cache
    nb.kernel.execute(f"%link notebook {nb.path}")
    assert nb.run("model").status == "ok"
    assert nb.runs() == ["model"]
    assert value(nb.kernel, "seen") == expected


def test_underscore_history_after_a_component_that_shows_a_value(nb):
    """`_`, `__` and `___` are the last three outputs, as in ipykernel, also when the last
    one came from a component cell."""
    nb.add("shows", "'from component'", counted=False).use()
    assert nb.kernel.execute("'first'").status == "ok"
    assert nb.kernel.execute("'second'").status == "ok"
    assert nb.run("shows").status == "ok"
    assert value(nb.kernel, "(_, __, ___)") == ("from component", "second", "first")


def test_several_unpicklable_outputs_give_one_warning_naming_them_all(nb):
    nb.add("handles", "import threading\nlock = threading.Lock()\ngen = (i for i in range(3))\nok = 1").use()
    result = nb.run("handles")
    assert result.status == "ok"
    warnings = [line for line in result.stderr.splitlines() if "cannot be serialised" in line]
    assert warnings == [
        "linkkernel: component 'handles': 'gen' (generator) and 'lock' (_thread.lock) cannot be serialised; "
        "they are kept in memory only, so after a restart the component runs again"
    ]


def test_a_cache_folder_that_cannot_be_written_is_said_once_in_the_cell(link_kernelspec, home: Path):
    """Results that never reach the store are re-run after every restart; the user is told
    why, once, in the cell whose results are not kept, instead of only in the server log."""
    blocker = home / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    k = Kernel(cwd=str(home), LINKKERNEL_CACHE=str(blocker / "cache"))
    try:
        nb = Notebook(k, home / "unwritable.ipynb")
        nb.add("first", "x = 1").add("second", "y = x + 1", "first").use()
        result = nb.run("second")
        assert result.status == "ok" and value(k, "y") == 2
        line = f"linkkernel: cannot write the component cache at {blocker / 'cache'}/unwritable-"
        assert result.stderr.count(line) == 1, result.stderr
        assert "Not a directory" in result.stderr
        assert "results are kept in memory only, so after a restart their components run again" in result.stderr
        again = nb.run("second")
        assert again.status == "ok" and "cannot write" not in again.stderr
        assert nb.runs() == ["first", "second", "second"]
    finally:
        k.shutdown()


# Sets whose rebuilt copy iterates in another order: ids deterministically (small ints hash
# to themselves; the set's table is larger than a rebuilt one's), the strings by hash seed.
SETS = (
    "ids = set(range(100))\nids -= set(range(100)) - {2, 9}\n"
    "words = set(str(i) for i in range(1000))\nwords -= set(str(i) for i in range(990))\n"
    "held = {'stop': {'a', 'the', 'of', 'x1', 'x2'}}\nfrozen = frozenset(str(i) for i in range(100))"
)


def test_a_set_a_child_only_reads_is_not_its_output(nb):
    """A set (ids, a vocabulary, stop words) iterates in another order once rebuilt from the
    cache, so it pickles differently; a child that only reads it must not take it for its own
    output: the notebook's value stays, and a sibling parent's change to it is not undone."""
    nb.add("vocab", SETS)
    nb.add("reads", "n = len(ids) + len(words) + len(held['stop']) + len(frozen)", "vocab")
    nb.add("adds", "ids.add(50)\nwords.add('new')", "vocab")
    nb.add("both", "has_new = (50 in ids, 'new' in words)", "adds", "reads")
    nb.use()
    assert nb.run("vocab").status == "ok"
    nb.kernel.execute("ids = words = held = frozen = 'changed in the notebook'")
    assert nb.run("reads").status == "ok"
    assert value(nb.kernel, "(ids, words, held, frozen)") == ("changed in the notebook",) * 4
    assert nb.run("both").status == "ok"
    assert value(nb.kernel, "has_new") == (True, True)


def test_a_set_a_remote_child_only_reads_is_not_its_output(nb, worker):
    nb.add("vocab_far", SETS)
    nb.add("reads_far", "m = len(ids)", "vocab_far", remote="qv")
    nb.use()
    assert nb.run("vocab_far").status == "ok"
    nb.kernel.execute("ids = words = held = frozen = 'changed in the notebook'")
    result = nb.run("reads_far")
    assert result.status == "ok", result.traceback_text
    assert value(nb.kernel, "(m, ids, words, held, frozen)") == (2, *("changed in the notebook",) * 4)


def test_a_value_that_pickles_but_cannot_be_rebuilt_is_kept_in_memory(nb, home: Path):
    """The classic delegating wrapper (`__getattr__` reading `self._inner`) pickles, but
    unpickling it recurses forever. Its class comes from a module, so nothing notices until a
    child loads it; then its parent runs again, and the value it makes again is kept in
    memory only, with the warning, instead of the child never being able to run."""
    (home / "wrapping.py").write_text(
        "class Wrapper:\n"
        "    def __init__(self, inner):\n        self._inner = inner\n"
        "    def __getattr__(self, name):\n        return getattr(self._inner, name)\n"
    )
    nb.add("wraps", f"import sys\nsys.path.insert(0, {str(home)!r})\nfrom wrapping import Wrapper\nw = Wrapper([3, 1, 3])\nother = 5")
    nb.add("uses", "print(w.count(3), other)", "wraps")
    nb.use()
    result = nb.run("uses")
    assert result.status == "ok", result.traceback_text
    assert result.stdout == "2 5\n"
    assert "its input 'w' cannot be rebuilt from the cache: RecursionError" in result.stderr
    assert "'w' (wrapping.Wrapper) cannot be serialised; it is kept in memory only" in result.stderr
    assert nb.runs() == ["wraps", "wraps", "uses"]
    again = nb.run("uses")
    assert again.status == "ok" and again.stderr == ""
    assert nb.runs() == ["uses"]


def test_merging_parents_whose_lineage_the_records_cannot_show_lets_the_later_parent_win():
    """Pure: an ancestor's record missing (a partial cache import) or newer than the run that
    used it means the parent's values count as its own, and the declared order decides."""
    from linkkernel.staleness import RunRecord, inherited

    def record(name: str, parents: dict[str, str], namespace: dict[str, str]) -> RunRecord:
        return RunRecord(name, f"run-{name}", "code", parents, "ok", 0.0, 0.0, namespace=namespace)

    records = {
        "load": record("load", {}, {"t": "t0"}),
        "features": record("features", {"load": "run-load"}, {"t": "t1"}),
        "stats": record("stats", {"load": "run-load"}, {"t": "t0"}),
    }
    assert inherited(["features", "stats"], records.get) == {"t": "t1"}
    assert inherited(["stats", "features"], records.get) == {"t": "t1"}
    records["stats"] = record("stats", {"load": "an-older-run"}, {"t": "t0"})
    assert inherited(["features", "stats"], records.get) == {"t": "t0"}
    del records["load"]
    records["stats"] = record("stats", {"load": "run-load"}, {"t": "t0"})
    assert inherited(["features", "stats"], records.get) == {"t": "t0"}


def test_a_record_with_outputs_in_no_known_shape_means_run_again(nb, home: Path):
    """A record edited by hand, or imported with --trust from someone's damaged archive, whose
    captured outputs are not nbformat's: its component runs again, instead of `%link outputs`
    failing as a bug in linkkernel."""
    import json

    nb.add("shown", "print('shown once')", counted=True).use()
    assert nb.run("shown").status == "ok"
    nb.kernel.restart_as_jupyterlab()  # the record is on disk
    record_file = next((home / "cache").glob("*/records/shown.json"))
    record = json.loads(record_file.read_text())
    record["outputs"] = [{"output_type": "stream"}, {"no": "type"}]
    record_file.write_text(json.dumps(record))
    nb.kernel.restart_as_jupyterlab()
    nb.kernel.execute(f"%link notebook {nb.path}")
    shown = nb.kernel.execute("%link outputs shown")
    assert shown.status == "error"
    assert shown.reply["content"]["evalue"] == "%link outputs: component 'shown' has no stored outputs (it has not run)"
    assert nb.run("shown").stdout == "shown once\n"
    assert nb.runs() == ["shown", "shown"]
