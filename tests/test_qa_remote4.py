"""QA round 4 of remote components: parity in everyday use. From the user's side a remote
component behaves as a local component (SPEC §5): its last value is `_` and `Out[N]`, a wait
for a busy worker leaves nothing in the saved notebook, an unknown magic reads as IPython's
usage line."""

from __future__ import annotations

import re

import pytest

from linkkernel.remote.executor import OutputLog
from remote_support import remote_fixtures, run_behind_another_kernels_task
from support import CellResult

tmp, key_file, worker, kernel, nb = remote_fixtures("qa-remote4", "qa4")


def saved_outputs(result: CellResult) -> list[dict]:
    """The cell's outputs as a frontend keeps and saves them: displays updated in place by
    display_id, clear_output wiping what came before."""
    log = OutputLog()
    for m in result.messages:
        kind, content = m["msg_type"], m["content"]
        if kind == "clear_output":
            log.add({"clear_output": content["wait"]})
        elif kind in ("stream", "display_data", "update_display_data", "execute_result", "error"):
            log.add({"output": {"output_type": kind, **content}})
    return log.nbformat()


def test_a_remote_components_last_value_is_underscore_and_out(nb) -> None:
    """As a local component's and a stock cell's: `_` and `Out[N]` hold the value shown."""
    nb.add("answer", "40 + 2", remote="qa4", counted=False).add("local_answer", "40 + 3", counted=False).use()
    for name, expected in (("local_answer", 43), ("answer", 42)):
        shown = nb.run(name)
        assert shown.status == "ok", shown.traceback_text
        count = shown.reply["content"]["execution_count"]
        assert [d["data"]["text/plain"] for d in shown.of_type("execute_result")] == [str(expected)]
        check = nb.kernel.execute(f"print(_, Out[{count}], _{count})")
        assert check.stdout == f"{expected} {expected} {expected}\n", (name, check.stdout, check.traceback_text)
    # a cell that shows nothing leaves `_` alone; one that shows what cannot pickle too
    nb.add("quiet", "z = 1", remote="qa4", counted=False).add("gen", "(i for i in range(3))", remote="qa4", counted=False).use()
    for name in ("quiet", "gen"):
        assert nb.run(name).status == "ok"
        assert nb.kernel.execute("print(_)").stdout == "42\n", name


def test_a_shown_value_of_a_module_only_the_worker_has_is_shown_and_the_run_ok(nb, tmp_path) -> None:
    """`_` is a nicety: a value the kernel cannot rebuild is shown, and the run still counts."""
    (tmp_path / "onlyworker.py").write_text("class Thing:\n    def __repr__(self):\n        return 'Thing()'\n")
    code = f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n__import__('onlyworker').Thing()"
    nb.add("thing", code, remote="qa4", counted=False).use()
    assert nb.kernel.execute("'before'").status == "ok"
    shown = nb.run("thing")
    assert shown.status == "ok", shown.traceback_text
    assert [d["data"]["text/plain"] for d in shown.of_type("execute_result")] == ["Thing()"]
    assert nb.kernel.execute("print(_)").stdout == "before\n"


def test_a_remote_dataframe_shown_is_the_output_it_is(nb) -> None:
    """`df` as the last line: `_` is the DataFrame published as `df`, not a copy."""
    nb.add("frame", "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]}).astype({'a': 'category'})\ndf", remote="qa4", counted=False).use()
    shown = nb.run("frame")
    assert shown.status == "ok", shown.traceback_text
    assert "text/html" in shown.of_type("execute_result")[0]["data"]
    assert nb.kernel.execute("print(_ is df, str(_.a.dtype))").stdout == "True category\n"
    nb.add("frame_again", "df", "frame", remote="qa4", counted=False).use()  # an input, unchanged
    assert nb.run("frame_again").status == "ok"
    assert nb.kernel.execute("print(_.equals(df), str(_.a.dtype))").stdout == "True category\n"


def test_an_unknown_magic_in_a_remote_component_reads_as_in_a_local_one(nb) -> None:
    nb.add("magic_local", "%nosuchmagic", counted=False).add("magic_remote", "%nosuchmagic", remote="qa4", counted=False).use()
    local, remote = nb.run("magic_local"), nb.run("magic_remote")
    assert local.status == remote.status == "error"
    assert local.errors == [] and "UsageError: Line magic function `%nosuchmagic` not found." in local.stderr
    assert remote.errors == [], remote.errors
    assert remote.stderr == local.stderr
    assert remote.reply["content"]["ename"] == local.reply["content"]["ename"] == "UsageError"
    kept_local, kept_remote = (nb.kernel.execute(f"%link outputs {name}") for name in ("magic_local", "magic_remote"))
    assert (kept_remote.stderr, kept_remote.errors) == (kept_local.stderr, kept_local.errors) == (local.stderr, [])


def test_waiting_for_a_busy_worker_leaves_nothing_in_the_saved_notebook(link_kernelspec, worker, nb, tmp_path) -> None:
    """Another kernel holds the worker's one slot: the cell says it waits, then keeps only
    what the component printed (the emptied line stayed as an empty display_data)."""
    shown = run_behind_another_kernels_task(nb, "qa4", "waits", "print('done')", tmp_path)
    assert shown.status == "ok", shown.traceback_text
    assert any("waiting for worker" in d["data"].get("text/plain", "") for d in shown.of_type("display_data")), shown.messages
    assert saved_outputs(shown) == [{"output_type": "stream", "name": "stdout", "text": "done\n"}]


PARITY_CELLS = {
    "semicolon": "1 + 1;",
    "semicolon_after_statements": "x = 3\nx;",
    "time_cell": "%%time\ny = 2\ny",
    "time_cell_semicolon": "%%time\ny = 2\ny;",
    "time_line": "%time z = 5\nz",
    "timeit": "%timeit -n 2 -r 2 sum(range(10))\nw = 3",
    "syntax_error": "x = (",
    "indentation_error": "  x = 1",
    "stdout_fileno": "import sys\nprint(sys.stdout.fileno() > 0, sys.stderr.fileno() > 0)",
    "faulthandler": "import faulthandler\nfaulthandler.enable()\nfaulthandler.is_enabled()",
    "display_image": "from IPython.display import Image, display\nimport base64\n"
                     "png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')\n"
                     "display(Image(png))\nImage(png)",
}


def _as_shown(result: CellResult) -> tuple:
    """What the user and tools read, timings (`%timeit` may print `1e+03 ns`, and a line when they vary) and the component's own name left out."""
    def text(t: str) -> str:
        t = re.sub(r"The slowest run took .*\n", "", t)  # %timeit says so when this machine's timings vary
        return re.sub(r"\d+(\.\d+)?(e[+-]\d+)? ?(µs|μs|ms|ns|s)\b", "T", re.sub(r"Component (local|remote)_\w+", "Component C", t))
    errors = [(e["ename"], text(e["evalue"])) for e in result.errors]
    return result.status, text(result.stdout), text(result.stderr), [d["data"] for d in result.displays], errors, text(result.traceback_text)


@pytest.mark.parametrize("case", list(PARITY_CELLS))
def test_a_remote_cell_shows_what_the_same_local_cell_shows(nb, case) -> None:
    code = PARITY_CELLS[case]
    nb.add(f"local_{case}", code, counted=False).add(f"remote_{case}", code, remote="qa4", counted=False).use()
    local = nb.run(f"local_{case}")
    local_underscore = nb.kernel.execute("print(repr(_))").stdout
    remote = nb.run(f"remote_{case}")
    assert _as_shown(remote) == _as_shown(local)
    assert nb.kernel.execute("print(repr(_))").stdout == local_underscore


def test_exit_in_a_remote_component_asks_the_frontend_as_in_a_local_one(nb) -> None:
    """It was an AttributeError naming the worker's shell class, an internal traceback."""
    code = "exit(keep_kernel=True)\nprint('after')"
    nb.add("exit_local", code, counted=False).add("exit_remote", code, remote="qa4", counted=False).use()
    local, remote = nb.run("exit_local"), nb.run("exit_remote")
    assert _as_shown(remote) == _as_shown(local) == ("ok", "after\n", "", [], [], "")
    assert remote.reply["content"]["payload"] == local.reply["content"]["payload"] == [{"source": "ask_exit", "keepkernel": True}]
    assert nb.kernel.execute("1").reply["content"]["payload"] == []


def test_tqdm_auto_in_a_remote_component_is_the_widget_bar_it_is_locally(nb) -> None:
    """tqdm.auto looks for ipykernel to choose its bar: on a worker it printed a text bar on
    stderr where the same local cell shows the notebook widget."""
    code = "from tqdm.auto import tqdm\nfor i in tqdm(range(3)):\n    pass\nt = 1"
    nb.add("bar_local", code, counted=False).add("bar_remote", code, remote="qa4", counted=False).use()
    local, remote = nb.run("bar_local"), nb.run("bar_remote")
    assert [m["msg_type"] for m in remote.messages] == [m["msg_type"] for m in local.messages]
    assert remote.stderr == local.stderr == ""
    (shown,) = remote.displays
    assert "application/vnd.jupyter.widget-view+json" in shown["data"]


def test_an_interrupted_remote_cell_is_recorded_failed_with_what_it_showed(nb) -> None:
    """As an interrupted local cell: `%link status` said `never` (or kept an earlier fresh
    run) and `%link outputs` had nothing, though the cell had printed."""
    code = "import time\nprint('start', flush=True)\ntime.sleep(30)"
    nb.add("stopped", "print('first run')", remote="qa4", counted=False).use()
    assert nb.run("stopped").status == "ok"
    nb.cells["stopped"]["source"] = code
    nb.use()
    shown = nb.run("stopped", interrupt_after=4)
    assert shown.reply["content"]["ename"] == "KeyboardInterrupt" and shown.stdout == "start\n"
    assert re.search(r"stopped\s+-\s+failed", nb.kernel.execute("%link status").stdout)
    kept = nb.kernel.execute("%link outputs stopped")
    assert kept.stdout == "start\n" and "was cancelled" in kept.stderr


def test_a_subprocess_given_the_remote_cells_stdout_prints_into_the_cell(nb) -> None:
    """sys.stdout.fileno() raised UnsupportedOperation on a worker. (ipykernel hands out
    its terminal's fd, so locally this text goes to the server's terminal: on a worker,
    whose terminal nobody sees, it goes to the cell.)"""
    nb.add("sub", "import subprocess, sys\nrc = subprocess.run(['echo', 'child'], stdout=sys.stdout).returncode",
           remote="qa4", counted=False).use()
    shown = nb.run("sub")
    assert shown.status == "ok", shown.traceback_text
    assert shown.stdout == "child\n"


def test_paged_help_in_a_remote_component_is_the_pager_payload_as_locally(nb) -> None:
    """`len?` printed the help into the cell (and the saved notebook) instead of paging it."""
    nb.add("help_local", "len?", counted=False).add("help_remote", "len?", remote="qa4", counted=False).use()
    local, remote = nb.run("help_local"), nb.run("help_remote")
    assert _as_shown(remote) == _as_shown(local) == ("ok", "", "", [], [], "")
    (paged,) = remote.reply["content"]["payload"]
    assert paged == local.reply["content"]["payload"][0] and paged["source"] == "page"
