"""Remote components inside real pipelines: cells tagged `remote:ALIAS` run on a real worker
and behave as local components (SPEC §5): mixed pipelines, silent ancestors, live output,
errors, interrupt, staleness and the persistent cache."""

from __future__ import annotations

import re
from contextlib import contextmanager

import pytest

from engine_support import value
from linkkernel.remote import registry
from remote_support import closed_port, make_key, pid_alive, remote_fixtures, wait_until
from test_engine_run import SHARED_CHILD, SHARED_GRANDCHILD, SHARED_PARENT


tmp, key_file, worker, kernel, nb = remote_fixtures("pipeline-worker", "gpu1")


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_mixed_pipeline_remote_ancestor_runs_silently(nb, worker) -> None:
    nb.add("load", "import numpy as np\nraw = np.arange(6.0)\nprint('loading')")
    nb.add("train", "import os\nweights = raw * 2\nworker_pid = os.getpid()\nprint('training on the worker')\nweights.sum()", "load", remote="gpu1")
    nb.add("report", "score = float(weights.sum())\nprint('score', score)", "train")
    nb.use()
    result = nb.run("report")
    assert result.status == "ok", result.traceback_text
    assert result.stdout == "score 30.0\n"
    shown = [d for d in result.displays if not d.get("transient")]  # the progress line is transient
    assert shown == []  # train's last value was captured with its outputs, not shown
    assert nb.runs() == ["load", "train", "report"]
    assert value(nb.kernel, "(weights.tolist(), score)") == ([0.0, 2.0, 4.0, 6.0, 8.0, 10.0], 30.0)
    kernel_pid = value(nb.kernel, "__import__('os').getpid()")
    assert value(nb.kernel, "worker_pid") != kernel_pid
    stored = nb.kernel.execute("%link outputs train")
    assert "training on the worker" in stored.stdout
    status = nb.kernel.execute("%link status").stdout
    assert "remote:gpu1" in status


def test_remote_component_executed_shows_output_live(nb, worker) -> None:
    nb.add("base", "n = 20")
    nb.add("far", "from IPython.display import display, Markdown\nprint('hello from far')\ndisplay(Markdown('*md*'))\nn + 1", "base", remote="gpu1")
    nb.use()
    result = nb.run("far")
    assert result.status == "ok", result.traceback_text
    assert result.stdout == "hello from far\n"
    assert any(d["data"].get("text/markdown") == "*md*" for d in result.displays)
    assert any(d["data"].get("text/plain") == "21" for d in result.of_type("execute_result"))
    assert nb.runs() == ["base", "far"]


def test_remote_error_is_the_users_error_and_stops_the_child(nb, worker) -> None:
    nb.add("src", "d = {}")
    nb.add("bad", "x = 1\ny = d['missing']", "src", remote="gpu1")
    nb.add("after", "z = y", "bad")
    nb.use()
    direct = nb.run("bad")
    assert direct.status == "error"
    assert direct.reply["content"]["ename"] == "KeyError" and direct.errors[0]["evalue"] == "'missing'"
    text = plain(direct.traceback_text)
    assert "Component bad, line 3" in text  # line 1 is the test's run counter
    for machinery in ("linkkernel", "taskprocess", "ipykernel_"):
        assert machinery not in text
    child = nb.run("after")
    assert child.status == "error" and "bad" in plain(child.traceback_text)
    assert "after" not in nb.runs()


def test_remote_results_are_fresh_cached_and_survive_a_restart(nb, worker) -> None:
    nb.add("p", "v = 2")
    nb.add("r", "w = v * 100", "p", remote="gpu1")
    nb.add("c", "u = w + 1", "r")
    nb.use()
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["p", "r", "c"]
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["c"]  # the remote parent is fresh, as a local one would be
    nb.add("r", "w = v * 1000", "p", remote="gpu1").save()
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["r", "c"]
    assert value(nb.kernel, "u") == 2001
    nb.kernel.restart()
    nb.use()
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["c"]
    assert value(nb.kernel, "u") == 2001


def test_unregistered_alias_is_refused_before_anything_runs(nb, worker) -> None:
    nb.add("first", "a = 1")
    nb.add("nowhere", "b = a", "first", remote="gpu9")
    nb.use()
    result = nb.run("nowhere")
    assert result.status == "error"
    assert "remote worker 'gpu9' is not registered" in plain(result.traceback_text)
    assert len(plain(result.traceback_text).strip().splitlines()) == 1
    assert nb.runs() == []


def test_unreachable_worker_in_a_pipeline_is_one_line(nb, worker, tmp, key_file) -> None:
    registry.add("offline", f"tcp://127.0.0.1:{closed_port()}", str(tmp / "store"), str(key_file))
    nb.add("one", "a = 1")
    nb.add("away", "b = a", "one", remote="offline")
    nb.add("last", "c = b", "away")
    nb.use()
    result = nb.run("last", timeout=60)
    assert result.status == "error"
    text = plain(result.traceback_text).strip()
    assert "worker 'offline'" in text and "is unreachable" in text and len(text.splitlines()) == 1
    assert nb.kernel.execute("1 + 1").status == "ok"


def test_a_registered_key_file_others_can_read_is_one_line_before_anything_runs(nb, worker, tmp) -> None:
    """chmod g+r after `workers add`: the kernel refuses to use the key, as ssh would."""
    key = make_key(tmp / "leaky.key")
    registry.add("leaky", worker.address, str(tmp / "store"), str(key))
    key.chmod(0o640)
    nb.add("leak", "x = 1", remote="leaky")
    nb.use()
    result = nb.run("leak", timeout=60)
    assert result.status == "error"
    text = plain(result.traceback_text).strip()
    assert text.endswith(f"key file {key} is readable by other users (mode 0640); run: chmod 600 {key}"), text
    assert len(text.splitlines()) == 1
    assert nb.runs() == []
    assert nb.kernel.execute("1 + 1").status == "ok"


def test_interrupting_a_remote_component_cancels_its_task(nb, worker, tmp) -> None:
    pid_file = tmp / "pipeline-interrupt.pid"
    nb.add("top", "t = 1")
    nb.add("slow", f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)", "top", remote="gpu1")
    nb.use()
    assert nb.run("top").status == "ok"
    nb.runs()
    result = nb.run("slow", interrupt_after=4.0, timeout=60)
    assert result.status == "error"
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert pid_file.exists()
    assert wait_until(lambda: not pid_alive(int(pid_file.read_text())))
    assert nb.kernel.execute("1 + 1").status == "ok"


def test_interrupting_a_remote_ancestor_stops_the_run_and_keeps_nothing(nb, worker, tmp) -> None:
    pid_file = tmp / "ancestor-interrupt.pid"
    nb.add("slowparent", f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\nq = 1", remote="gpu1")
    nb.add("kid", "r = q", "slowparent")
    nb.use()
    result = nb.run("kid", interrupt_after=4.0, timeout=60)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert wait_until(lambda: not pid_alive(int(pid_file.read_text())))
    assert nb.runs() == ["slowparent"]  # it started, and was cancelled
    rows = nb.kernel.execute("%link status").stdout.splitlines()
    (row,) = [line.split() for line in rows if line.split()[:1] == ["slowparent"]]
    assert row[2] in ("never", "stale", "failed"), rows  # name, parents, state: not fresh


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import ctypes\nctypes.string_at(0)", "task process crashed with SIGSEGV"),
        ("import threading\nlock = threading.Lock()", "output 'lock' (_thread.lock) cannot be pickled"),
    ],
)
def test_faults_in_a_remote_ancestor_are_one_line(nb, worker, code, expected) -> None:
    nb.add("crashy", code, remote="gpu1")
    nb.add("below", "pass", "crashy")
    nb.use()
    result = nb.run("below")
    assert result.status == "error"
    text = plain(result.traceback_text).strip()
    assert expected in text and len(text.splitlines()) == 1
    assert nb.kernel.execute("1 + 1").status == "ok"


def test_unpicklable_input_of_a_remote_component_is_named(nb, worker) -> None:
    nb.add("holder", "import threading\nguard = threading.Lock()\nn = 1")
    nb.add("user", "m = n + 1", "holder", remote="gpu1")
    nb.use()
    result = nb.run("user")
    assert result.status == "error"
    text = plain(result.traceback_text).strip()
    assert "input 'guard' (_thread.lock) cannot be pickled" in text and len(text.splitlines()) == 1
    assert "user" not in nb.runs()


# Which mapping of the kernel holds the notebook value `big`'s array data.
_BACKING = """
address = big.__array_interface__['data'][0]
for line in open('/proc/self/maps'):
    low, high = (int(x, 16) for x in line.split()[0].split('-'))
    if low <= address < high:
        print(line.split(None, 5)[5].strip() if len(line.split()) > 5 else 'anonymous')
"""


def test_a_remote_output_is_one_copy_shared_copy_on_write_with_the_cache(nb, worker, tmp) -> None:
    nb.add("far_big", "import numpy as np\nbig = np.arange(2_000_000, dtype=np.int64)", remote="gpu1")
    nb.add("near_big", "seen = int(big[5])", "far_big")
    nb.use()
    assert nb.run("far_big").status == "ok"
    backing = nb.kernel.execute(_BACKING)
    assert backing.status == "ok", backing.traceback_text
    # the notebook's array lives in the blob file the worker wrote to the store, mapped
    # privately: no copy in the kernel, none for the cache
    store = str(tmp / "store" / "blobs")
    assert backing.stdout.startswith(store), (backing.stdout, store)
    # and it is still the user's own: writing it leaves the cached value alone
    assert nb.kernel.execute("big[5] = -1").status == "ok"
    assert nb.run("near_big").status == "ok"
    assert value(nb.kernel, "(int(big[5]), seen)") == (-1, 5)


def test_functions_read_the_globals_of_where_they_run_as_in_one_namespace(nb, worker) -> None:
    # SPEC §3 and §5: a parent's function reads the globals of the component calling it, on a
    # worker as locally, and a function made on a worker reads the notebook's once published
    nb.add("helpers", "scale = 1\ndef scaled(v):\n    return v * scale")
    nb.add("far_fn", "scale = 10\nfar_out = scaled(2)\ndef shifted(v):\n    return v + scale", "helpers", remote="gpu1")
    nb.add("near_fn", "scale = 100\nnear_out = (scaled(3), shifted(1))", "far_fn")
    nb.use()
    result = nb.run("near_fn")
    assert result.status == "ok", result.traceback_text
    assert value(nb.kernel, "(far_out, near_out)") == (20, (300, 101))
    assert nb.kernel.execute("scale = 7").status == "ok"
    assert value(nb.kernel, "(scaled(2), shifted(1))") == (14, 8)


def test_an_unknown_magic_in_a_remote_component_is_its_error(nb, worker) -> None:
    # as in ipykernel: the cell stops there and fails; it used to pass with nothing bound
    nb.add("magic_far", "%nosuchmagic\ny = 2", remote="gpu1")
    nb.use()
    result = nb.run("magic_far")
    assert result.status == "error"
    # a line on stderr as ipykernel prints it, no red error box (qa-remote4)
    assert result.errors == [] and result.stderr == "UsageError: Line magic function `%nosuchmagic` not found.\n"
    status = nb.kernel.execute("%link status").stdout
    assert re.search(r"magic_far\s+-\s+failed", status), status
    assert nb.kernel.execute("y").status == "error"


@contextmanager
def usual_open_file_limit(kernel):
    """The kernel at the soft limit of open files a desktop session usually hands Jupyter
    (1024), as long as the block runs."""
    limit = kernel.execute("import resource\n_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
                           "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, _nofile[1]))")
    assert limit.status == "ok", limit.traceback_text
    try:
        yield
    finally:
        assert kernel.execute("resource.setrlimit(resource.RLIMIT_NOFILE, _nofile)").status == "ok"


def test_a_remote_output_of_many_small_arrays_fits_the_usual_open_file_limit(nb, worker) -> None:
    # 1024 open files is the usual soft limit a desktop session hands to Jupyter. Mapping
    # each small buffer of a remote output on its own took an fd (and a mapping) per array,
    # so a list of 2000 small arrays could not even be rebuilt in the notebook
    nb.add("far_many", "import numpy as np\nsmall = [np.arange(4.0) + i for i in range(2000)]", remote="gpu1")
    nb.add("near_many", "small[0][0] = -1\ntotal = float(sum(a.sum() for a in small))", "far_many")
    nb.use()
    with usual_open_file_limit(nb.kernel):
        result = nb.run("near_many")
        assert result.status == "ok", result.traceback_text
        assert value(nb.kernel, "(len(small), float(small[0][0]), float(small[-1][3]), total)") == (2000, -1.0, 2002.0, 8007999.0)


def test_many_remote_outputs_holding_small_arrays_fit_the_usual_open_file_limit(nb, worker) -> None:
    # each output is a blob file of its own: kept mapped for the cache, each held two open
    # files for the kernel's lifetime, however small its arrays
    nb.add("far_names", "import numpy as np\nfor i in range(600):\n    globals()[f'arr{i}'] = np.arange(4.0) + i", remote="gpu1")
    nb.use()
    with usual_open_file_limit(nb.kernel):
        result = nb.run("far_names")
        assert result.status == "ok", result.traceback_text
        assert value(nb.kernel, "(float(arr0[0]), float(arr599[3]))") == (0.0, 602.0)


def test_a_remote_components_function_pickles_by_name_as_in_a_cell(nb, worker) -> None:
    # pickle (multiprocessing, concurrent.futures) finds a function by name in
    # sys.modules['__main__'], which in a cell is the user namespace's module
    code = ("import pickle, concurrent.futures\ndef double(v):\n    return v * 2\n"
            "print(pickle.loads(pickle.dumps(double))(3))\n"
            "with concurrent.futures.ProcessPoolExecutor(1) as pool:\n    print(list(pool.map(double, [1, 2])))\ndel pool")
    nb.add("far_pickles", code, remote="gpu1")
    nb.use()
    result = nb.run("far_pickles")
    assert (result.status, result.stdout) == ("ok", "6\n[2, 4]\n"), result.traceback_text


def test_names_holding_one_object_still_do_after_a_remote_run(nb, worker) -> None:
    """As locally (test_engine_run): the worker loads `pipe` and `scaler` as one object, and
    the kernel gets them back as one."""
    nb.add("p", SHARED_PARENT).add("fit", SHARED_CHILD, "p", remote="gpu1").add("use", SHARED_GRANDCHILD, "fit", remote="gpu1").use()
    result = nb.run("use")
    assert result.status == "ok", result.traceback_text
    assert value(nb.kernel, "same") == (True, True, True)
    assert value(nb.kernel, "seen") == (True, True, True, True, 7.0)
    assert value(nb.kernel, "(pipe['steps'][0][1] is scaler, model is best, data.arr is arr)") == (True, True, True)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def widget_traffic(result) -> tuple[dict[str, dict], list[str], list[dict]]:
    """The cell's comm_open messages by comm id, the model ids its displays show, and its
    comm_msg updates."""
    opens = {content["comm_id"]: content for content in result.of_type("comm_open")}
    shown = [d["data"][WIDGET_VIEW]["model_id"] for d in result.displays if WIDGET_VIEW in d["data"]]
    return opens, shown, result.of_type("comm_msg")


def test_a_remote_components_widgets_reach_the_frontend(nb, worker) -> None:
    """A widget displayed by a remote task has its model in the frontend, as a local cell's
    has: JupyterLab would otherwise show "Error displaying widget: model not found", and a
    `tqdm.notebook` bar in a remote training loop would never move."""
    nb.add("slider", "import ipywidgets as w\ns = w.IntSlider(value=3)\ndisplay(s)\ns.value = 7", remote="gpu1")
    nb.add("bar", "from tqdm.notebook import tqdm\nfor i in tqdm(range(3)):\n    pass", remote="gpu1")
    nb.use()
    result = nb.run("slider")
    assert result.status == "ok", result.traceback_text
    opens, shown, updates = widget_traffic(result)
    assert len(shown) == 1 and shown[0] in opens
    assert opens[shown[0]]["target_name"] == "jupyter.widget"
    assert opens[shown[0]]["data"]["state"]["value"] == 3
    assert {"method": "update", "state": {"value": 7}, "buffer_paths": []} in [u["data"] for u in updates]
    # The slider came back as an output: a copy whose changes go nowhere, as a gone widget's
    moved = nb.kernel.execute("s.value = 9\nprint(s.value)")
    assert (moved.status, moved.stdout, moved.of_type("comm_msg")) == ("ok", "9\n", []), moved.traceback_text
    bar = nb.run("bar")
    assert bar.status == "ok", bar.traceback_text
    opens, shown, updates = widget_traffic(bar)
    assert shown and all(model in opens for model in shown)
    assert any(u["data"].get("state", {}).get("value") == 3 for u in updates)  # the bar reached 3 of 3


def test_a_silent_remote_parents_widgets_are_in_the_frontend_for_its_kept_outputs(nb, worker) -> None:
    nb.add("panel", "import ipywidgets as w\nlabel = w.Label(value='ready')\ndisplay(label)", remote="gpu1")
    nb.add("after", "done = True", "panel")
    nb.use()
    result = nb.run("after")
    assert result.status == "ok", result.traceback_text
    opens, shown, _ = widget_traffic(result)
    assert shown == []  # the parent's display is kept, not shown
    kept = nb.kernel.execute("%link outputs panel")
    model = next(d["data"][WIDGET_VIEW]["model_id"] for d in kept.displays if WIDGET_VIEW in d["data"])
    assert opens[model]["data"]["state"]["value"] == "ready"
