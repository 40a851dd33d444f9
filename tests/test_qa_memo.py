"""QA of what the engine remembers across cells (declarations, the whole graph, components
known fresh, published lineages, loaded numbers and strings, records watched with inotify)
against SPEC §2-§3: every change that makes a component stale must be seen, by real kernels.

Each test points the shared kernel at a notebook of its own (`Notebook.use`).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from engine_support import Notebook, value
from support import component_meta


@pytest.fixture
def nb(link, home, request):
    return Notebook(link, home / f"{request.node.name}.ipynb")


def ok(result):
    assert result.status == "ok", result.traceback_text
    return result


def test_a_parent_edited_in_the_saved_file_only_runs_again_for_its_child(nb):
    nb.add("p", "x = 1").add("c", "print(x)", "p").use()
    assert ok(nb.run("c")).stdout == "1\n"
    assert ok(nb.run("c")).stdout == "1\n"
    assert nb.runs() == ["p", "c", "c"]
    nb.cells["p"]["source"] = nb.cells["p"]["source"].replace("x = 1", "x = 2")
    nb.save()
    assert ok(nb.run("c")).stdout == "2\n"
    assert nb.runs() == ["p", "c"]


def test_executed_with_other_code_then_saved_with_the_original(nb):
    nb.add("p", "x = 1").add("c", "print(x)", "p").use()
    assert ok(nb.run("c")).stdout == "1\n"
    original = nb.cells["p"]["source"]
    ok(nb.kernel.execute(original.replace("x = 1", "x = 5"), metadata=component_meta("p"), cell_id="id-p"))
    assert ok(nb.run("c")).stdout == "5\n"
    time.sleep(0.05)
    nb.save()  # the original code, saved after the edited run
    assert ok(nb.run("c")).stdout == "1\n"
    assert nb.runs() == ["p", "c", "p", "c", "p", "c"]


def test_parents_changed_in_the_request_metadata_only(nb):
    nb.add("a", "x = 'a'").add("b", "x = 'b'").add("c", "print(x)", "a").use()
    assert ok(nb.run("c")).stdout == "a\n"
    nb.cells["c"]["metadata"] = component_meta("c", "b")
    assert ok(nb.run("c")).stdout == "b\n"
    nb.cells["c"]["metadata"] = component_meta("c", "a")
    assert ok(nb.run("c")).stdout == "a\n"
    nb.runs()


def test_a_deleted_parent_added_again(nb, link):
    nb.add("p", "x = 1").add("c", "print(x)", "p").use()
    assert ok(nb.run("c")).stdout == "1\n"
    gone = link.execute("print(x)", metadata={**component_meta("c", "p"), "deletedCells": ["id-p"]}, cell_id="id-c")
    assert gone.status == "error"
    nb.cells["p"]["source"] = nb.cells["p"]["source"].replace("x = 1", "x = 7")
    ok(nb.run("p"))
    assert ok(nb.run("c")).stdout == "7\n"
    nb.runs()


def test_a_renamed_component(nb):
    nb.add("p", "x = 1").add("c", "print(x)", "p").use()
    assert ok(nb.run("c")).stdout == "1\n"
    nb.cells["p"]["metadata"] = component_meta("q")
    nb.cells["c"]["metadata"] = component_meta("c", "q")
    ok(nb.run("p"))
    assert ok(nb.run("c")).stdout == "1\n"
    assert nb.runs() == ["p", "c", "p", "c"]
    nb.save()
    nb.cells["p"]["metadata"] = component_meta("p")
    nb.cells["c"]["metadata"] = component_meta("c", "p")
    nb.save()
    assert ok(nb.run("c")).stdout == "1\n"
    assert nb.runs() == ["c"]  # the record of 'p' is its run before the rename: fresh again


def test_another_notebook_and_back(nb, link, home):
    nb.add("p", "x = 1").add("c", "y = x + 1", "p").use()
    ok(nb.run("c"))
    other = Notebook(link, home / "memo-other.ipynb", counter=nb.counter)
    other.add("p", "x = 100").add("c", "y = x + 1", "p").use()
    ok(other.run("c"))
    assert value(link, "(x, y)") == (100, 101)
    nb.use()
    nb.cells["d"] = {"id": "id-d", "source": "print(x, y)", "metadata": component_meta("d", "c")}
    nb.save()
    assert ok(nb.run("d")).stdout == "1 2\n"
    assert nb.runs() == ["p", "c", "p", "c"]
    # the plain cells see this notebook's values again, not the other notebook's
    assert value(link, "(x, y)") == (1, 2)


def test_cache_clear_mid_pipeline(nb, link):
    nb.add("a", "x = 1").add("b", "y = x + 1", "a").add("c", "print(y)", "b").use()
    ok(nb.run("a"))
    ok(nb.run("b"))
    ok(link.execute("%link cache clear"))
    assert ok(nb.run("c")).stdout == "2\n"
    assert nb.runs() == ["a", "b", "a", "b", "c"]


def test_a_component_that_fails_after_having_been_fresh_is_not_fresh_for_its_child(nb, link):
    nb.add("p", "x = 1").add("c", "print(x)", "p").use()
    assert ok(nb.run("c")).stdout == "1\n"
    broken = link.execute(nb.cells["p"]["source"] + "\nraise ValueError('no')", metadata=component_meta("p"), cell_id="id-p")
    assert broken.status == "error"
    assert nb.run("c").status == "error"
    assert nb.runs() == ["p", "c", "p", "p"]
    # the same code failing (its input gone): its child runs it again, and fails with it
    gone = nb.path.with_suffix(".input")
    gone.write_text("first")
    nb.add("r", f"t = open({str(gone)!r}).read()").add("u", "print(t)", "r").save()
    assert ok(nb.run("u")).stdout == "first\n"
    gone.unlink()
    assert nb.run("r").status == "error"
    assert nb.run("u").status == "error"
    assert nb.runs() == ["r", "u", "r", "r"]


def test_a_forced_parent_then_its_children(nb, link):
    nb.add("p", "import random; x = random.random()").add("c", "y = x", "p").add("d", "z = y", "c").use()
    ok(nb.run("d"))
    first = value(link, "x")
    ok(link.execute("%link run p --force"))
    forced = value(link, "x")
    assert forced != first
    ok(nb.run("c"))
    ok(nb.run("d"))
    assert value(link, "(x, y, z)") == (forced, forced, forced)
    assert nb.runs() == ["p", "c", "d", "p", "c", "d"]


def test_a_memory_only_value_in_the_chain(nb, link):
    nb.add("p", "import threading; lock = threading.Lock(); n = 1").add("c", "m = n + 1; print(type(lock).__name__)", "p").add("d", "print(m)", "c").use()
    ok(nb.run("c"))
    assert ok(nb.run("d")).stdout == "2\n"
    assert ok(nb.run("d")).stdout == "2\n"
    assert nb.runs() == ["p", "c", "d", "d"]


def test_a_published_name_rebound_by_the_user_between_run_all_cells(nb, link):
    nb.add("a", "x = 1").add("b", "y = x + 1", "a").add("c", "print(x, y)", "b").use()
    ok(nb.run("a"))
    ok(link.execute("x = 999"))
    ok(nb.run("b"))
    assert value(link, "(x, y)") == (999, 2)
    assert ok(nb.run("c")).stdout == "1 2\n"
    assert value(link, "x") == 999


def test_a_child_rebinding_and_deleting_inherited_numbers(nb, link):
    nb.add("a", "x = 1; s = 'text'; f = 2.5").add("b", "pass", "a").add("c", "x += 1; del s; f = 2.5", "b").add("d", "print(x, 's' in dir(), f)", "c").use()
    ok(nb.run("b"))
    ok(nb.run("c"))
    assert ok(nb.run("d")).stdout == "2 False 2.5\n"


def test_a_record_imported_in_the_same_tick_as_the_kernels_own_write_with_the_same_size(nb, link):
    """A file's modification time moves by the kernel's clock tick (milliseconds), and two
    records of one component are often of one size: a run another process moved into place
    just after the kernel's own write looked like that write, and was ignored for good."""
    from test_qa_scale import _written, blob

    from linkkernel.store import CacheStore, default_cache_url, write_blob

    nb.add("a", "x = 1").add("b", "print(x)", "a").use()
    ok(nb.run("b"))
    first = _written(nb, "b")
    ok(nb.run("b"))  # `a` known fresh and published from now on
    _written(nb, "b", other_than=first)
    assert nb.runs() == ["a", "b", "b"]
    elsewhere = CacheStore(default_cache_url(), str(nb.path))
    path = f"{elsewhere.root}/records/a.json"
    own, mine = open(path).read(), os.stat(path)
    record = elsewhere.get("a")
    imported, run_id = blob(41), "f" * len(record.run_id)
    elsewhere._write_aside(elsewhere._blob_path(imported.digest), lambda f: write_blob(f, imported))
    # the same record file but for its run and value, moved into place in the same tick
    same_size = own.replace(record.run_id, run_id).replace(record.namespace["x"], imported.digest)
    with open(f"{path}.other", "w") as f:
        f.write(same_size)
    os.utime(f"{path}.other", ns=(mine.st_atime_ns, mine.st_mtime_ns))
    os.replace(f"{path}.other", path)
    result = ok(nb.run("b"))
    assert result.stdout == "41\n"
    assert nb.runs() == ["b"]


def test_an_interrupt_while_an_ancestor_runs_leaves_it_stale_and_its_parent_fresh(nb, link):
    nb.add("a", "x = 1").add("b", "import time; time.sleep(3); y = x + 1", "a").add("c", "print(y)", "b").use()
    ok(nb.run("a"))
    ok(nb.run("a"))  # `a` known fresh
    stopped = nb.run("c", interrupt_after=1.0)
    assert stopped.status == "error"
    assert ok(nb.run("c")).stdout == "2\n"
    assert nb.runs() == ["a", "a", "b", "b", "c"]


def test_an_interrupted_component_cell_is_not_fresh_for_its_child(nb, link):
    nb.add("a", "x = 1").add("b", "y = x + 1\nimport time; time.sleep(3)", "a").add("c", "print(y)", "b").use()
    ok(nb.run("a"))
    stopped = nb.run("b", interrupt_after=1.0)
    assert stopped.status == "error"
    assert ok(nb.run("c")).stdout == "2\n"
    assert nb.runs() == ["a", "b", "b", "c"]


def test_published_values_mutated_by_the_user_between_run_all_cells(nb, link):
    # the child starts from what the parent's run left, not from the notebook's objects
    nb.add("a", "items = [1]\nlabel = 'a'").add("b", "n = len(items)", "a").add("c", "print(n, items, label)", "b").use()
    ok(nb.run("a"))
    ok(nb.run("a"))
    ok(link.execute("items.append(999); label = 'mine'"))
    ok(nb.run("b"))
    assert ok(nb.run("c")).stdout == "1 [1] a\n"
    assert value(link, "(items, label)") == ([1, 999], "mine")


def test_a_parent_renamed_and_cells_moved_in_the_saved_file_only(nb, link):
    nb.add("a", "x = 1").add("c", "y = x + 1", "a").add("d", "print(y)", "c").use()
    ok(nb.run("c"))
    assert ok(nb.run("d")).stdout == "2\n"
    assert nb.runs() == ["a", "c", "d"]
    time.sleep(0.05)
    nb.cells["a"]["metadata"] = component_meta("q")
    nb.cells["c"]["metadata"] = component_meta("c", "q")
    nb.cells = {name: nb.cells[name] for name in ("d", "c", "a")}  # moved, too
    nb.save()
    assert ok(nb.run("d")).stdout == "2\n"
    assert nb.runs() == ["a", "c", "d"]  # the cell of 'a', now 'q', has no run of that name
    assert ok(nb.run("d")).stdout == "2\n"
    assert nb.runs() == ["d"]


def test_a_parent_edited_and_run_on_a_subshell_while_the_main_shell_runs_its_child(nb, link):
    from test_kernel_subshells import _create_subshell, _replies, _send

    nb.add("a", "x = 1").add("b", "import time; time.sleep(1.5); y = x + 1", "a").add("c", "print(y)", "b").use()
    ok(nb.run("c"))
    assert nb.runs() == ["a", "b", "c"]
    subshell = _create_subshell(link)
    edited = nb.cells["a"]["source"].replace("x = 1", "x = 10")
    ids = {
        _send(link, "import time; time.sleep(1.5); y = x + 1", {**component_meta("b", "a"), "cellId": "id-b"}),
        _send(link, edited, {**component_meta("a"), "cellId": "id-a"}, subshell),
    }
    time.sleep(0.3)
    assert {r["status"] for r in _replies(link, ids).values()} == {"ok"}
    # `a` ran once or twice (the main shell's `b` may find it edited already): either way
    # `c` starts from the edited run
    assert ok(nb.run("c")).stdout == "11\n"
    assert nb.runs()[-1] == "c"


def test_a_cell_id_two_saved_cells_share_is_the_newest_word_on_both(link, home):
    """A notebook whose cells were copied by hand can hold one id twice: the cell executed
    with it stands for both, so its name is then declared twice, and the run refused at once,
    not only once something else changed."""
    path = home / "same-id.ipynb"
    cells = [
        {"cell_type": "code", "id": "dup", "source": "x = 1", "metadata": component_meta("a"), "outputs": [], "execution_count": None},
        {"cell_type": "code", "id": "dup", "source": "print(x)", "metadata": component_meta("b", "a"), "outputs": [], "execution_count": None},
    ]
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}))
    ok(link.execute(f"%link notebook {path}"))
    assert "never" in link.execute("%link status").stdout
    refused = link.execute("print(x)", metadata=component_meta("b", "a"), cell_id="dup")
    assert refused.status == "error"
    assert "duplicate component name 'b'" in refused.traceback_text


def test_an_archive_imported_from_a_terminal_after_a_forced_run(nb, link, home):
    """The runs an archive holds, imported by another process after the kernel ran their
    parent again, are the current ones: the child starts from them, runs nothing else."""
    from test_qa_scale import _written
    from test_sharing_cache import cli

    nb.add("a", "import random; x = random.random()").add("b", "y = x", "a").add("c", "print(repr(y))", "b").use()
    ok(nb.run("b"))
    first = _written(nb, "b")
    then = value(link, "x")
    archive = home / f"{nb.path.stem}.tar.gz"
    exported = cli("cache", "export", str(nb.path), "-o", str(archive), cwd=home)
    assert exported.returncode == 0, exported.stderr
    ok(link.execute("%link run b --force"))
    _written(nb, "b", other_than=first)
    assert value(link, "x") != then
    imported = cli("cache", "import", str(archive), "--notebook", str(nb.path), cwd=home)
    assert imported.returncode == 0, imported.stderr
    assert ok(nb.run("c")).stdout == f"{then!r}\n"  # the imported runs
    assert nb.runs() == ["a", "b", "a", "b", "c"]
    assert value(link, "x") == then  # plain cells see them too, not the forced run's values
