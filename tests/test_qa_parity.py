"""QA: what works in the stock IPython kernel works the same inside component cells (SPEC §1).

A Link Python kernel and a stock `python3` ipykernel run the same cells side by side, and the
messages a frontend would see are compared. Only what differs on purpose is left out: frames
read `Component NAME` instead of `Cell In[n]`, and a component sees its parents' names only.
A parent run silently must also keep to itself: nothing of another request's (a subshell's
output or error) goes into it, and nothing of it (payloads, a debugger) reaches the cell.
"""

from __future__ import annotations

import os
import time

import pytest

from engine_support import Notebook
from support import Kernel, as_shown, component_meta, start_stock_kernel
from test_tracebacks_kernel import assert_clean


@pytest.fixture(scope="module")
def ours(link_kernelspec: str, tmp_path_factory: pytest.TempPathFactory):
    k = Kernel(cwd=str(tmp_path_factory.mktemp("parity")))
    assert k.execute("base = 10", metadata=component_meta("base"), cell_id="par-base").status == "ok"
    yield k
    k.shutdown()


@pytest.fixture(scope="module")
def stock(link_kernelspec: str, tmp_path_factory: pytest.TempPathFactory):
    k = start_stock_kernel(tmp_path_factory.mktemp("stock"))
    assert k.execute("base = 10").status == "ok"
    yield k
    k.shutdown()


def use_no_notebook(kernel: Kernel, tmp_path) -> None:
    """Point the kernel at no saved notebook again, and declare `base` once more (switching
    notebooks forgets the cells executed for the previous one)."""
    assert kernel.execute(f"%link notebook {tmp_path / 'none.ipynb'}").status == "ok"
    assert kernel.execute("base = 10", metadata=component_meta("base"), cell_id="par-base").status == "ok"


def in_child(kernel: Kernel, name: str, code: str, *parents: str):
    """Run `code` as component `name` (child of `base` unless told otherwise)."""
    return kernel.execute(code, metadata=component_meta(name, *(parents or ("base",))), cell_id=f"par-{name}")


@pytest.mark.parametrize("value", ["b'raw'", "5"], ids=["bytes", "int"])
def test_writing_a_non_string_to_stdout_is_the_users_type_error(ours, stock, value):
    code = f"import sys\nsys.stdout.write({value})"
    expected = stock.execute(code).reply["content"]
    for result in (in_child(ours, "writer", code), ours.execute(code, metadata=component_meta("child_of_writer", "writer"), cell_id="par-cow")):
        content = result.reply["content"]
        assert (content["ename"], content["evalue"]) == (expected["ename"], expected["evalue"])
        assert "linkkernel internal error" not in result.traceback_text
        assert "sys.stdout.write(" in result.traceback_text
        assert_clean(result.traceback_text)


LOGGING_PARENT = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.INFO, format='%(message)s', force=True)\n"
    "log = logging.getLogger('qa-parity')\n"
    "out = sys.stdout\n"
    "log.info('from parent')"
)


@pytest.mark.parametrize("parent_runs", ["silently", "live"])
def test_a_stream_kept_by_a_parent_writes_to_later_cells_not_to_the_parents_outputs(ours, stock, tmp_path, parent_runs):
    # logging.basicConfig() keeps sys.stderr; in stock ipykernel its output reaches whichever cell logs
    plain = "log.info('from plain')\nprint('plain via out', file=out)"
    assert stock.execute(LOGGING_PARENT).status == "ok"
    expected = stock.execute(plain)
    nb = Notebook(ours, tmp_path / "logging.ipynb")
    nb.add("logp", LOGGING_PARENT, counted=False).add("logc", "log.info('from child')\nprint('via out', file=out)", "logp", counted=False).use()
    try:
        if parent_runs == "live":
            assert "from parent\n" in nb.run("logp").stderr.splitlines(keepends=True)
        child = nb.run("logc")
        assert (child.status, child.stdout) == ("ok", "via out\n"), child.traceback_text
        # (after the warning that `out`, a stream, stays in memory only)
        assert "from child\n" in child.stderr.splitlines(keepends=True), child.stderr
        later = ours.execute(plain)
        assert (later.stdout, later.stderr) == (expected.stdout, expected.stderr) == ("plain via out\n", "from plain\n")
        kept = ours.execute("%link outputs logp")
        assert kept.stderr == "from parent\n" and kept.stdout == ""
    finally:
        stock.execute("logging.getLogger().handlers.clear()")
        ours.execute("logging.getLogger().handlers.clear()")
        use_no_notebook(ours, tmp_path)


def test_a_components_builtins_are_the_module_as_in_a_cell(ours, stock):
    code = "print(type(__builtins__).__name__, 'len' in dir(__builtins__), __builtins__.len('ab'))"
    expected = stock.execute(code).stdout
    assert expected == "module True 2\n"
    result = in_child(ours, "builtins_user", code)
    assert (result.status, result.stdout) == ("ok", expected), result.traceback_text


def test_autoreload_reloads_before_a_stale_parent_runs_silently(ours, tmp_path):
    module = tmp_path / "qa_parity_reloaded.py"
    module.write_text("def f():\n    return 1\n")
    assert ours.execute(f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n%load_ext autoreload\n%autoreload 2").status == "ok"
    try:
        for name, code, parents in [
            ("ar_root", "k = 100", ()),
            ("ar_parent", "import qa_parity_reloaded\nv = qa_parity_reloaded.f() + k", ("ar_root",)),
            ("ar_child", "print(v)", ("ar_parent",)),
        ]:
            assert in_child(ours, name, code, *parents).status == "ok"
        assert in_child(ours, "ar_root", "k = 100").status == "ok"  # ar_parent is stale now
        module.write_text("def f():\n    return 2\n")
        later = module.stat().st_mtime + 10
        os.utime(module, (later, later))
        # in stock ipykernel the user runs ar_parent (autoreload reloads first), then ar_child
        child = in_child(ours, "ar_child", "print(v)", "ar_parent")
        assert (child.status, child.stdout) == ("ok", "102\n"), child.traceback_text
    finally:
        ours.execute("%autoreload 0")


def _gather(kernel: Kernel, ids: list[str]) -> dict[str, tuple[dict, list[dict]]]:
    """Replies and IOPub messages of concurrent requests, by msg_id, until all are idle."""
    messages: dict[str, list[dict]] = {i: [] for i in ids}
    idle: set[str] = set()
    while len(idle) < len(ids):
        m = kernel.client.get_iopub_msg(timeout=60)
        parent = m["parent_header"].get("msg_id")
        if parent not in messages:
            continue
        if m["msg_type"] == "status":
            if m["content"]["execution_state"] == "idle":
                idle.add(parent)
            continue
        messages[parent].append(m)
    replies: dict[str, dict] = {}
    while len(replies) < len(ids):
        reply = kernel.client.get_shell_msg(timeout=60)
        if reply["parent_header"]["msg_id"] in messages:
            replies[reply["parent_header"]["msg_id"]] = reply["content"]
    return {i: (replies[i], messages[i]) for i in ids}


def test_a_subshell_request_during_a_pipeline_run_gets_its_reply_and_its_own_output(ours, tmp_path):
    # JupyterLab 4.6 sends widget traffic to subshells: it must not crash while a parent runs
    # silently (the captured display publisher lacked set_parent: no reply, the cell hung)
    from test_kernel_subshells import _create_subshell, _send

    flags = {name: tmp_path / name for name in ("during_parent", "during_child")}
    # each component says it has started, then waits (20 s at most) for the subshell's cell
    wait = "import os, time\nopen({0!r} + '.started', 'w').close()\nfor _ in range(400):\n    if os.path.exists({0!r}):\n        break\n    time.sleep(0.05)\n"
    nb = Notebook(ours, tmp_path / "subshells.ipynb")
    nb.add("sub_parent", wait.format(str(flags["during_parent"])) + "print('parent done')\nready = True", counted=False)
    nb.add("sub_child", wait.format(str(flags["during_child"])) + "print('child done', ready)", "sub_parent", counted=False).use()
    subshell = _create_subshell(ours)
    cell = nb.cells["sub_child"]
    try:
        main = _send(ours, cell["source"], {**cell["metadata"], "cellId": cell["id"]})
        side = []
        for n, flag in enumerate(flags.values()):
            started = flag.with_name(flag.name + ".started")
            deadline = time.monotonic() + 30
            while not started.exists():
                assert time.monotonic() < deadline, f"component {n} never started"
                time.sleep(0.05)
            code = f"from IPython.display import display\nprint('from subshell {n}')\ndisplay('shown {n}')\nopen({str(flag)!r}, 'w').close()"
            side.append(_send(ours, code, {}, subshell))
        results = _gather(ours, [main, *side])
        for n, request in enumerate(side):
            reply, messages = results[request]
            assert reply["status"] == "ok", reply
            assert as_shown(messages) == [("stream", f"from subshell {n}\n"), ("display_data", f"'shown {n}'")]
        reply, messages = results[main]
        assert reply["status"] == "ok", reply
        assert "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream") == "child done True\n"
        assert ours.execute("%link outputs sub_parent").stdout == "parent done\n"
        assert ours.execute("%link outputs sub_child").stdout == "child done True\n"
    finally:
        use_no_notebook(ours, tmp_path)


def test_pdb_on_starts_no_debugger_in_a_silent_parent_and_debug_afterwards_lands_there(ours, tmp_path):
    # the debugger's listing would be captured with the parent's outputs: a blind prompt, or
    # without stdin (nbclient) a "linkkernel internal error" instead of the parent's error.
    # With stdin, the post-mortem opens once the cell shows the parent's error (test_qa_run).
    nb = Notebook(ours, tmp_path / "pdb.ipynb")
    nb.add("pdb_parent", "secret = 41\n1/0", counted=False).add("pdb_child", "print('child')", "pdb_parent", counted=False).use()
    assert ours.execute("%pdb on").status == "ok"
    try:
        for stdin in (None, ["q"]):
            child = nb.run("pdb_child", stdin_reply=stdin)
            assert [(e["ename"], e["evalue"]) for e in child.errors] == [("ZeroDivisionError", "division by zero")]
            assert "Error in parent component 'pdb_parent'" in child.traceback_text
            assert ("Component pdb_parent" in child.stdout) == (stdin is not None), child.stdout
            kept = ours.execute("%link outputs pdb_parent")
            assert kept.stdout == ""  # no debugger listing kept
        debugged = ours.execute("%debug", stdin_reply=["p secret", "q"])
        assert "Component pdb_parent" in debugged.stdout and "41\n" in debugged.stdout
    finally:
        ours.execute("%pdb off")
        use_no_notebook(ours, tmp_path)


def test_a_subshell_cells_error_during_a_silent_parent_is_its_own(ours, tmp_path):
    from test_kernel_subshells import _create_subshell, _send

    flag = tmp_path / "raised"
    wait = f"import os, time\nopen({str(flag)!r} + '.started', 'w').close()\nfor _ in range(400):\n    if os.path.exists({str(flag)!r}):\n        break\n    time.sleep(0.05)\n"
    nb = Notebook(ours, tmp_path / "subshell_errors.ipynb")
    nb.add("err_parent", wait + "calm = True", counted=False).add("err_child", "print('child', calm)", "err_parent", counted=False).use()
    subshell = _create_subshell(ours)
    cell = nb.cells["err_child"]
    try:
        main = _send(ours, cell["source"], {**cell["metadata"], "cellId": cell["id"]})
        deadline = time.monotonic() + 30
        while not flag.with_name("raised.started").exists():
            assert time.monotonic() < deadline, "the parent never started"
            time.sleep(0.05)
        side = _send(ours, f"open({str(flag)!r}, 'w').close()\nraise ValueError('subshell error')", {}, subshell)
        results = _gather(ours, [main, side])
        reply, messages = results[side]
        assert (reply["status"], reply.get("ename")) == ("error", "ValueError")
        assert [m["content"]["evalue"] for m in messages if m["msg_type"] == "error"] == ["subshell error"]
        reply, messages = results[main]
        assert reply["status"] == "ok", reply
        # joined: where ipykernel cuts a print into stream messages depends on its flush timing
        assert "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream") == "child True\n"
    finally:
        use_no_notebook(ours, tmp_path)


def test_a_silent_parents_payloads_do_not_reach_the_childs_cell(ours, stock, tmp_path):
    # %load and `?` answer through the execute_reply's payload: JupyterLab would replace the
    # child's code with the parent's loaded script, or page the parent's help
    script = tmp_path / "loaded.py"
    script.write_text("loaded = 1\n")
    parent = f"%load {script}\nlen?"
    payload = stock.execute(parent).reply["content"]["payload"]
    assert sorted(p["source"] for p in payload) == ["page", "set_next_input"]
    nb = Notebook(ours, tmp_path / "payloads.ipynb")
    nb.add("loader", parent, counted=False).add("after_loader", "print('child')", "loader", counted=False).use()
    try:
        child = nb.run("after_loader")
        assert (child.status, child.stdout) == ("ok", "child\n"), child.traceback_text
        assert child.reply["content"]["payload"] == []
        assert sorted(p["source"] for p in nb.run("loader").reply["content"]["payload"]) == ["page", "set_next_input"]
    finally:
        use_no_notebook(ours, tmp_path)
