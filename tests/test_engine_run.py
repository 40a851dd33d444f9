"""Executing a component runs its stale ancestors silently, then itself (SPEC §3)."""

from __future__ import annotations

import pytest

from engine_support import Notebook, value
from support import component_meta


@pytest.fixture
def nb(kernel, tmp_path):
    return Notebook(kernel, tmp_path / "pipeline.ipynb")


def test_chain_runs_stale_ancestors_silently_and_shows_only_its_own_output(nb):
    nb.add("load", "import os, subprocess, ctypes\nraw = [3, 1, 2]\nprint('loading')\n"
                   "os.system('echo from-os-system')\nsubprocess.run(['echo', 'from-subprocess'])\n"
                   "ctypes.CDLL(None).printf(b'from-c\\n')\n"
                   "from IPython.display import display, HTML\ndisplay(HTML('<b>loaded</b>'))\nraw")
    nb.add("clean", "data = sorted(raw)\nimport sys\nprint('cleaning', file=sys.stderr)", "load")
    nb.add("train", "model = sum(data)\nprint('model', model)", "clean")
    nb.use()
    result = nb.run("train")
    assert result.status == "ok", result.traceback_text
    assert result.stdout == "model 6\n"
    assert result.stderr == ""
    assert [d for d in result.displays if "text/html" in d["data"]] == []
    assert nb.runs() == ["load", "clean", "train"]
    stored = nb.kernel.execute("%link outputs load")
    assert "loading\n" in stored.stdout
    for text in ("from-os-system", "from-subprocess", "from-c"):
        assert text in stored.stdout
    assert any(d["data"].get("text/html") == "<b>loaded</b>" for d in stored.displays)
    assert "cleaning" in nb.kernel.execute("%link outputs clean").stderr
    # outputs are published into the notebook namespace for plain cells
    assert value(nb.kernel, "(raw, data, model)") == ([3, 1, 2], [1, 2, 3], 6)


def test_fresh_ancestors_are_not_rerun_and_the_component_always_runs(nb):
    nb.add("a", "x = 1").add("b", "y = x + 1", "a").add("c", "z = y + 1", "b").use()
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["a", "b", "c"]
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["c"]
    # re-running a parent makes its descendants stale
    assert nb.run("a").status == "ok"
    assert nb.runs() == ["a"]
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["b", "c"]
    # editing a cell (executed with new code) makes its descendants stale
    nb.add("a", "x = 10")
    assert nb.run("a").status == "ok"
    nb.runs()
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["b", "c"]
    assert value(nb.kernel, "z") == 12


def test_edit_saved_but_not_executed_is_seen_from_the_file(nb):
    nb.add("a", "x = 1").add("b", "y = x * 2", "a").use()
    assert nb.run("b").status == "ok"
    nb.runs()
    nb.add("a", "x = 21").save()
    assert nb.run("b").status == "ok"
    assert nb.runs() == ["a", "b"]
    assert value(nb.kernel, "y") == 42


def test_diamond_parent_order_wins_and_siblings_are_isolated(nb):
    nb.add("root", "base = 1\nshared = 'root'")
    nb.add("left", "shared = 'left'\nleft_only = base + 1", "root")
    nb.add("right", "shared = 'right'\nright_sees_left = 'left_only' in dir()", "root")
    nb.add("join", "result = (shared, left_only, right_sees_left, base)", "left", "right")
    nb.add("join_rev", "result_rev = shared", "right", "left")
    nb.use()
    assert nb.run("join").status == "ok"
    assert nb.runs() == ["root", "left", "right", "join"]
    assert value(nb.kernel, "result") == ("right", 2, False, 1)
    assert nb.run("join_rev").status == "ok"
    assert nb.runs() == ["join_rev"]
    assert value(nb.kernel, "result_rev") == "left"


def test_sibling_reading_a_sibling_name_fails(nb):
    nb.add("r", "v = 1").add("s1", "only_s1 = 1", "r").add("s2", "w = only_s1", "r").use()
    assert nb.run("s1").status == "ok"
    result = nb.run("s2")
    assert result.status == "error"
    assert "not defined in component 's2'; it exists in the notebook namespace" in result.traceback_text
    assert "add a parent component that defines it" in result.reply["content"]["evalue"]


def test_reading_ipython_output_history_in_a_component_does_not_suggest_a_parent(nb):
    # `_`, `_3`, `_i`: IPython's history lives in the notebook namespace and is never a
    # component's output, so no parent could ever define it
    nb.add("reads_history", "print(_)").use()
    assert nb.kernel.execute("41 + 1").status == "ok"
    result = nb.run("reads_history")
    assert result.status == "error"
    evalue = result.reply["content"]["evalue"]
    assert evalue.startswith("name '_' is not defined in component 'reads_history'; "), evalue
    assert "add a parent" not in evalue and "IPython's history names" in evalue, evalue


def test_child_mutation_never_changes_the_parents_cached_value(nb):
    nb.add("p", "import numpy as np\nitems = [1]\narr = np.zeros(3)\nconfig = {'k': 1}")
    nb.add("mutator", "items.append(2)\narr += 5\nnew = 1", "p")
    nb.add("reader", "seen = (list(items), arr.tolist(), config)", "p")
    nb.use()
    assert nb.run("mutator").status == "ok"
    # mutated-in-place objects are outputs of the child
    assert value(nb.kernel, "(items, arr.tolist())") == ([1, 2], [5.0, 5.0, 5.0])
    assert nb.run("reader").status == "ok"
    assert value(nb.kernel, "seen") == ([1], [0.0, 0.0, 0.0], {"k": 1})
    # mutating the published object in a plain cell does not touch the cache either
    nb.kernel.execute("config['k'] = 99")
    assert nb.run("reader").status == "ok"
    assert value(nb.kernel, "seen[2]") == {"k": 1}


SHARED_PARENT = """import numpy as np
class Scaler:
    fitted = False
    def fit(self):
        self.fitted = True
class Holder:
    def __init__(self, arr):
        self.arr = arr
scaler = Scaler()
pipe = {'steps': [('scale', scaler)]}
best = Scaler()
model = best
arr = np.zeros(300_000)
data = Holder(arr)"""
SHARED_CHILD = "pipe['steps'][0][1].fit()\narr[0] = 7\nsame = (pipe['steps'][0][1] is scaler, model is best, data.arr is arr)"
SHARED_GRANDCHILD = "seen = (scaler.fitted, pipe['steps'][0][1] is scaler, model is best, data.arr is arr, float(data.arr[0]))"


def test_names_holding_one_object_still_do_in_children_and_in_the_notebook(nb):
    """SPEC §3, as if the ancestors had run in one namespace: fitting the scaler inside `pipe`
    fits `scaler`, `model = best` stays one object, and so does an array inside a value."""
    nb.add("p", SHARED_PARENT).add("fit", SHARED_CHILD, "p").add("use", SHARED_GRANDCHILD, "fit").use()
    assert nb.run("use").status == "ok"
    assert value(nb.kernel, "same") == (True, True, True)
    assert value(nb.kernel, "seen") == (True, True, True, True, 7.0)
    assert value(nb.kernel, "(pipe['steps'][0][1] is scaler, model is best, data.arr is arr)") == (True, True, True)


def test_deleted_names_are_removed_from_the_notebook_namespace(nb):
    nb.add("src", "tmp = 1\nkeep = 2").add("dropper", "del tmp\nafter = 'tmp' in dir()", "src").use()
    assert nb.run("src").status == "ok"
    assert value(nb.kernel, "'tmp' in globals()") is True
    assert nb.run("dropper").status == "ok"
    assert value(nb.kernel, "('tmp' in globals(), keep, after)") == (False, 2, False)


def test_parent_error_is_reported_as_the_parents_error_and_child_does_not_run(nb):
    nb.add("good", "g = 1").add("clean", "def f(v):\n    return v / 0\nf(g)", "good")
    nb.add("child", "never = True", "clean").use()
    result = nb.run("child")
    assert result.status == "error"
    content = result.reply["content"]
    assert (content["ename"], content["evalue"]) == ("ZeroDivisionError", "division by zero")
    assert [(e["ename"], e["evalue"]) for e in result.errors] == [("ZeroDivisionError", "division by zero")]
    text = result.traceback_text
    assert text.splitlines()[0] == "Error in parent component 'clean':"
    assert "Component clean" in text
    assert nb.runs() == ["good", "clean"]
    assert "failed" in nb.kernel.execute("%link status").stdout
    assert value(nb.kernel, "'never' in globals()") is False


def test_component_error_is_the_users_own(nb):
    nb.add("boom", "raise ValueError('bad input')").use()
    result = nb.run("boom")
    assert result.status == "error"
    assert result.reply["content"]["ename"] == "ValueError"
    assert "Component boom" in result.traceback_text


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ([("a", ["nope"])], "component 'a' (cell 1 (id id-a)) has parent 'nope', which is not declared in"),
        ([("a", []), ("a2", ["a"])], None),
        ([("a", ["b"]), ("b", ["a"])], "cycle in pipeline: a -> b -> a"),
    ],
)
def test_invalid_pipelines_are_refused_before_anything_runs(nb, cells, message):
    for name, parents in cells:
        nb.add(name, "ran = True", *parents)
    if message is None:  # duplicate: a second cell also declares 'a'
        nb.cells["dup"] = dict(nb.cells["a2"], id="id-dup", metadata=component_meta("a"))
        message = "duplicate component name 'a'"
    nb.use()
    result = nb.run(cells[-1][0])
    assert result.status == "error"
    assert message in result.reply["content"]["evalue"]
    assert len(result.traceback_text.strip().splitlines()) == 1
    assert nb.runs() == []


def test_malformed_and_disagreeing_declarations_are_one_line(kernel):
    bad = kernel.execute("x = 1", metadata={"tags": ["component:9bad"]}, cell_id="m1")
    assert bad.status == "error" and "malformed tag 'component:9bad'" in bad.traceback_text
    assert len(bad.traceback_text.strip().splitlines()) == 1
    disagree = kernel.execute(
        "x = 1", metadata={"tags": ["component:one"], "link": {"name": "two"}}, cell_id="m2"
    )
    assert disagree.status == "error"
    assert "tags declare component 'one'" in disagree.traceback_text
    assert kernel.execute("print('still fine')").stdout == "still fine\n"
    # the bad cells are fixed (untagged) so they do not poison later tests
    kernel.execute("x = 1", metadata={}, cell_id="m1")
    kernel.execute("x = 1", metadata={}, cell_id="m2")


def test_renamed_component_and_deleted_parent(nb):
    nb.add("first", "v = 1").add("user", "w = v + 1", "first").use()
    assert nb.run("user").status == "ok"
    nb.runs()
    # rename 'first' to 'origin' in JupyterLab and update the child's parent tag
    nb.cells["first"]["metadata"] = component_meta("origin")
    assert nb.run("first").status == "ok"
    nb.cells["user"]["metadata"] = component_meta("user", "origin")
    assert nb.run("user").status == "ok"
    assert nb.runs() == ["first", "user"]
    # delete the parent cell (JupyterLab reports it in deletedCells) and run the child
    gone = nb.kernel.execute("pass", metadata={"deletedCells": ["id-first"]}, cell_id="other")
    assert gone.status == "ok"
    result = nb.run("user")
    assert result.status == "error"
    assert "has parent 'origin', which is not declared in" in result.reply["content"]["evalue"]


def test_interrupt_during_ancestors_records_nothing_half_run(nb):
    nb.add("slow", "import time\ntime.sleep(30)\nslow_done = True").add("after", "a = 1", "slow").use()
    result = nb.run("after", interrupt_after=1.5, timeout=30)
    assert result.status == "error"
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert nb.runs() == ["slow"]
    status = nb.kernel.execute("%link status").stdout
    assert "never" in status.split("slow", 1)[1].splitlines()[0]
    nb.add("slow", "slow_done = True").save()
    assert nb.run("after").status == "ok"
    assert nb.runs() == ["slow", "after"]


def test_progress_line_is_transient(nb):
    nb.add("p1", "import time\ntime.sleep(0.1)").add("p2", "pass", "p1").add("leaf", "print('leaf')", "p2").use()
    result = nb.run("leaf")
    kinds = [m["msg_type"] for m in result.messages if m["msg_type"] != "execute_input"]
    assert kinds[0] == "display_data"
    first = result.messages[1]["content"]
    assert "running parent 'p1' (1 of 2" in first["data"]["text/plain"]
    assert "display_id" in first["transient"]
    updates = result.of_type("update_display_data")
    assert any("'p2' (2 of 2" in u["data"]["text/plain"] for u in updates)
    # The only thing the cell shows before the component's output: removed by clearing the
    # cell, so no emptied display is left for JupyterLab to save into the notebook.
    assert kinds.count("clear_output") == 1
    assert kinds.index("clear_output") < kinds.index("stream")
    assert result.of_type("clear_output") == [{"wait": False}]
    assert not [u for u in updates if not u["data"]]
    assert result.stdout == "leaf\n"


def test_link_run_removes_its_progress_line_without_clearing_the_cell(nb):
    nb.add("base", "import threading\nlock = threading.Lock()").add("top", "pass", "base").use()
    result = nb.kernel.execute("print('before')\n%link run top")
    assert result.status == "ok", result.traceback_text
    assert "clear_output" not in [m["msg_type"] for m in result.messages]
    lines = [d["data"]["text/plain"] for d in result.displays if d["data"]]
    assert any("running parent 'base' (1 of 2" in line for line in lines)
    assert any("running 'top' (2 of 2" in line for line in lines)
    assert not any("parent 'top'" in line for line in lines)
    kinds = [(m["msg_type"], m["content"].get("name")) for m in result.messages]
    removal = next(i for i, m in enumerate(result.messages) if m["msg_type"] == "update_display_data" and not m["content"]["data"])
    warning = next(i for i, m in enumerate(result.messages) if "cannot be serialised" in m["content"].get("text", ""))
    assert kinds.index(("stream", "stdout")) < removal < warning
    assert result.stdout == "before\nran: base, top\n"


def test_unpicklable_values_stay_in_memory_with_a_warning(nb):
    nb.add("gen", "import threading\nlock = threading.Lock()\nn = 1").add("use", "m = n + 1\nlock_ok = lock is not None", "gen")
    nb.use()
    result = nb.run("gen")
    assert result.status == "ok"
    assert "'lock' (_thread.lock) cannot be serialised; it is kept in memory only" in result.stderr
    assert nb.run("use").status == "ok"
    assert value(nb.kernel, "(m, lock_ok)") == (2, True)


def test_component_keeps_magics_await_and_display_hook(nb):
    nb.add("magic", "%time t = 1\nimport asyncio\nawaited = await asyncio.sleep(0, result=7)\nawaited * 6").use()
    result = nb.run("magic")
    assert result.status == "ok", result.traceback_text
    assert "Wall time" in result.stdout
    assert [d["data"]["text/plain"] for d in result.of_type("execute_result")] == ["42"]
    assert value(nb.kernel, "(t, awaited, _)") == (1, 7, 42)
    assert value(nb.kernel, "'In' in globals() and 'get_ipython' in globals()") is True


def test_untagged_cells_are_plain_ipykernel(kernel):
    result = kernel.execute("plain_value = 3\nplain_value * 2")
    assert result.status == "ok"
    assert result.of_type("execute_result")[0]["data"]["text/plain"] == "6"


def test_large_inputs_are_copy_on_write_and_mutation_is_still_seen(nb):
    nb.add("big", "import numpy as np\nbig = np.arange(2_000_000, dtype=np.int64)\nother = np.ones(500_000)")
    nb.add("reads", "total = int(big.sum())", "big")
    nb.add("writes", "big[7] = -1\nother[:] = 3", "big")
    nb.add("after", "check = (int(big[7]), float(other[0]))", "big")
    nb.use()
    assert nb.run("reads").status == "ok"
    k = nb.kernel
    before = value(k, "id(big)")
    assert nb.run("reads").status == "ok"
    # an input the child only read is not an output: the notebook keeps the parent's object
    assert value(k, "id(big)") == before
    assert nb.run("writes").status == "ok"
    assert value(k, "(int(big[7]), float(other[0]))") == (-1, 3.0)
    assert nb.run("after").status == "ok"
    assert value(k, "check") == (7, 1.0)


def test_functions_and_classes_travel_to_children_and_status_says_where(nb):
    nb.add("defs", "k = 3\ndef triple(v):\n    return v * k\nclass Box:\n    def __init__(self, v):\n        self.v = v")
    nb.add("uses", "boxed = Box(triple(2)).v", "defs")
    nb.add("far", "pass", "defs", remote="gpu1", counted=False)
    nb.use()
    assert nb.run("uses").status == "ok"
    assert value(nb.kernel, "boxed") == 6
    rows = {line.split()[0]: line for line in nb.kernel.execute("%link status").stdout.splitlines()[1:]}
    assert rows["far"].split()[-1] == "remote:gpu1"
    assert rows["uses"].split()[-1] == "local"


def test_link_run_reports_a_failing_component_as_the_users_error(nb):
    nb.add("ok_part", "a = 1").add("bad", "a / 0", "ok_part").use()
    result = nb.kernel.execute("%link run bad")
    assert result.status == "error"
    assert (result.reply["content"]["ename"], result.reply["content"]["evalue"]) == ("ZeroDivisionError", "division by zero")
    assert result.traceback_text.splitlines()[0] == "Error in component 'bad':"
    assert "Component bad" in result.traceback_text


def test_interrupt_while_a_components_outputs_are_pickled_is_a_keyboard_interrupt(nb):
    nb.add("pickles_slowly", "import time\nclass Slow:\n    def __reduce__(self):\n        time.sleep(30)\n"
                             "        return (Slow, ())\nslow = Slow()\nprint('ran')").use()
    result = nb.run("pickles_slowly", interrupt_after=2, timeout=30)
    assert result.status == "error"
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert "while keeping the outputs of component 'pickles_slowly'" in result.traceback_text
    assert result.stdout == "ran\n"
    # the cell keeps the number its execute_input showed
    assert result.reply["content"]["execution_count"] == result.of_type("execute_input")[0]["execution_count"]
    status = nb.kernel.execute("%link status").stdout
    assert "never" in status.split("pickles_slowly", 1)[1].splitlines()[0]


def test_a_components_result_is_formatted_once_and_kept(nb):
    nb.add("shows", "class Shown:\n    def _repr_html_(self):\n        print('html-called')\n        return '<b>shown</b>'\n"
                    "    def _repr_markdown_(self):\n        raise ValueError('bad markdown')\n"
                    "    def __repr__(self):\n        return 'Shown()'\nShown()").use()
    result = nb.run("shows")
    # as in stock ipykernel: each repr runs once; the failing one is one error (and the reply's status)
    assert result.stdout.count("html-called") == 1
    assert [e["evalue"] for e in result.errors] == ["bad markdown"]
    assert [r["data"]["text/html"] for r in result.of_type("execute_result")] == ["<b>shown</b>"]
    stored = nb.kernel.execute("%link outputs shows")
    assert [d["data"].get("text/html") for d in stored.displays] == ["<b>shown</b>"]
    assert "html-called" in stored.stdout


def test_a_malformed_cell_blocks_only_the_runs_that_need_it(nb):
    nb.add("fine", "f = 1").add("child", "g = f + 1", "fine")
    nb.cells["broken"] = {"id": "id-broken", "source": "h = 1", "metadata": {"tags": ["component:broken", "parent:9bad"]}}
    nb.cells["nameless"] = {"id": "id-nameless", "source": "i = 1", "metadata": {"tags": ["component:7up"]}}
    nb.use()
    assert nb.run("child").status == "ok"
    assert nb.runs() == ["fine", "child"]
    assert nb.kernel.execute("%link run child --force").stdout.endswith("ran: fine, child\n")
    status = nb.kernel.execute("%link status")
    assert status.status == "ok", status.traceback_text
    rows = {line.split()[0]: line.split()[2] for line in status.stdout.splitlines()[1:] if not line.startswith("error:")}
    assert rows == {"fine": "fresh", "child": "fresh", "broken": "error", "?": "error"}
    assert "error: cell 3 (id id-broken): malformed tag 'parent:9bad'" in status.stdout
    assert "error: cell 4 (id id-nameless): malformed tag 'component:7up'" in status.stdout
    # a component that needs the malformed cell is refused with that cell's own error
    nb.add("needs", "j = h", "broken").save()
    refused = nb.run("needs")
    assert refused.status == "error"
    assert "malformed tag 'parent:9bad'" in refused.traceback_text
    status = nb.kernel.execute("%link status").stdout
    assert [line.split()[2] for line in status.splitlines() if line.startswith("needs ")] == ["error"]


def test_a_live_components_descriptor_output_reaches_the_cell_and_is_kept(nb):
    """What os.system, subprocesses and C code write shows live, as in ipykernel, and
    `%link outputs` shows it again, as it does for a parent that ran silently."""
    nb.add("shell_out", "import os, subprocess, ctypes\nprint('from-python')\nos.system('echo from-os-system')\n"
                        "subprocess.run(['echo', 'from-subprocess'])\nctypes.CDLL(None).printf(b'from-c\\n')\n"
                        "os.system('echo from-stderr >&2')\nresult = 1").use()
    result = nb.run("shell_out")
    assert result.status == "ok", result.traceback_text
    for text in ("from-python", "from-os-system", "from-subprocess", "from-c"):
        assert text in result.stdout
    assert "from-stderr" in result.stderr
    stored = nb.kernel.execute("%link outputs shell_out")
    for text in ("from-python", "from-os-system", "from-subprocess", "from-c"):
        assert text in stored.stdout
    assert "from-stderr" in stored.stderr


def test_a_background_process_started_by_a_live_component_does_not_hold_the_cell(nb):
    """It keeps the component's output pipe open; the run ends anyway, its early output kept."""
    nb.add("server", "import subprocess, sys\nprint('starting')\n"
                     "proc = subprocess.Popen([sys.executable, '-c', 'import time; print(\"up\", flush=True); time.sleep(30)'])\n"
                     "import time; time.sleep(0.5)\npid = proc.pid").use()
    result = nb.run("server")
    assert result.status == "ok", result.traceback_text
    assert "starting" in result.stdout and "up" in result.stdout
    stored = nb.kernel.execute("%link outputs server")
    assert "starting" in stored.stdout and "up" in stored.stdout
    nb.kernel.execute("proc.kill(); proc.wait()")
