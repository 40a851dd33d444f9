"""QA of JupyterLab's visual debugger (DAP as `debug_request` on the control channel, events as
`debug_event` on IOPub) and the other control-channel requests, with components, against stock
ipykernel wherever stock has the same situation (SPEC §1: what works in stock works unchanged)."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path
from typing import Any

import pytest

from engine_support import Notebook
from remote_support import remote_fixtures
from support import CellResult, Kernel, start_stock_kernel

INITIALIZE = {
    "clientID": "jupyterlab", "clientName": "JupyterLab", "adapterID": "python", "pathFormat": "path",
    "linesStartAt1": True, "columnsStartAt1": True, "supportsVariableType": True,
    "supportsVariablePaging": True, "supportsRunInTerminalRequest": True, "locale": "en",
}


class Dap:
    """One debugger session on a kernel, as JupyterLab drives it.

    Every IOPub message is read here, so the debug events that come while a cell runs are not
    lost to the cell's reader: `start` sends a cell, `wait_event` and `finish` read IOPub.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel, self.client = kernel, kernel.client
        self.seq = 0
        self.events: list[dict[str, Any]] = []
        self.cells: dict[str, list[dict[str, Any]]] = {}
        self.idle: set[str] = set()

    def request(self, command: str, arguments: dict | None = None, timeout: float = 20) -> dict[str, Any]:
        """A DAP request and its response (the debug_reply's content)."""
        self.seq += 1
        content = {"type": "request", "seq": self.seq, "command": command, "arguments": arguments or {}}
        msg = self.client.session.msg("debug_request", content)
        self.client.control_channel.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no debug_reply to {command} within {timeout}s")
            try:
                reply = self.client.get_control_msg(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]

    def ok(self, command: str, arguments: dict | None = None) -> dict[str, Any]:
        """The body of a request that must succeed."""
        reply = self.request(command, arguments)
        assert reply.get("success"), (command, reply)
        return reply.get("body", {})

    def attach(self) -> None:
        """initialize + attach, as JupyterLab when the debugger is switched on."""
        self.ok("initialize", INITIALIZE)
        self.ok("attach")

    def break_at(self, code: str, *lines: int) -> str:
        """Breakpoints in a cell's code at `lines`, as JupyterLab sets them: the path dumpCell gave."""
        path = self.ok("dumpCell", {"code": code})["sourcePath"]
        body = self.ok("setBreakpoints", {"source": {"path": path}, "breakpoints": [{"line": n} for n in lines], "sourceModified": False})
        assert all(b["verified"] for b in body["breakpoints"]), body
        self.ok("configurationDone")
        return path

    def start(self, code: str, metadata: dict | None = None, cell_id: str | None = None) -> str:
        """Send an execute_request as JupyterLab does; the msg_id to `finish` it with."""
        meta = dict(metadata or {})
        if cell_id is not None:
            meta["cellId"] = cell_id
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
        msg = self.client.session.msg("execute_request", content, metadata=meta)
        self.client.shell_channel.send(msg)
        self.cells[msg["header"]["msg_id"]] = []
        return msg["header"]["msg_id"]

    def _pump(self, timeout: float = 0.05) -> None:
        try:
            m = self.client.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return
        parent = m["parent_header"].get("msg_id")
        if m["msg_type"] == "debug_event":
            self.events.append(m["content"])
        elif m["msg_type"] == "status":
            if m["content"]["execution_state"] == "idle":
                self.idle.add(parent)
        elif parent in self.cells:
            self.cells[parent].append(m)

    def wait_event(self, event: str, timeout: float = 30) -> dict[str, Any]:
        """The first not yet taken debug event named `event` (taken: removed from `events`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("event") == event:
                    self.events.remove(e)
                    return e
            self._pump()
        raise TimeoutError(f"no {event!r} debug event within {timeout}s; events: {self.events}")

    def output_so_far(self, msg_id: str) -> list[dict[str, Any]]:
        """The IOPub messages of a running cell read so far (and what is waiting now)."""
        for _ in range(20):
            self._pump(0.01)
        return list(self.cells[msg_id])

    def finish(self, msg_id: str, timeout: float = 60) -> CellResult:
        """Read until the cell is idle; its reply and messages."""
        deadline = time.monotonic() + timeout
        while msg_id not in self.idle:
            if time.monotonic() > deadline:
                raise TimeoutError(f"cell did not finish within {timeout}s; events: {self.events}")
            self._pump()
        while True:
            reply = self.client.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                return CellResult(reply, self.cells.pop(msg_id))

    def frames(self, thread_id: int) -> list[dict[str, Any]]:
        return self.ok("stackTrace", {"threadId": thread_id})["stackFrames"]

    def variables_of(self, frame_id: int) -> dict[str, dict[str, Any]]:
        """The variables JupyterLab's panel lists for a frame: every scope's, by name."""
        found: dict[str, dict[str, Any]] = {}
        for scope in self.ok("scopes", {"frameId": frame_id})["scopes"]:
            for var in self.ok("variables", {"variablesReference": scope["variablesReference"]})["variables"]:
                found.setdefault(var["name"], var)
        return found

    def step(self, command: str, thread: int, msg_id: str, timeout: float = 30) -> dict[str, Any] | None:
        """`next`/`stepIn`/`continue`: the `stopped` event it led to, or None when the cell
        finished instead."""
        self.ok(command, {"threadId": thread})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("event") == "stopped":
                    self.events.remove(e)
                    return e
            if msg_id in self.idle:
                return None
            self._pump()
        raise TimeoutError(f"{command} neither stopped nor finished within {timeout}s")

    def run_to_end(self, msg_id: str, timeout: float = 60) -> tuple[list[list[tuple[str, int]]], CellResult]:
        """Let a cell run to its end, continuing at every stop: the (function, line) stacks
        it stopped at, and its result."""
        stops = []
        deadline = time.monotonic() + timeout
        while msg_id not in self.idle:
            assert time.monotonic() < deadline, f"cell not done within {timeout}s; stopped at {stops}"
            self._pump()
            for e in [e for e in self.events if e.get("event") == "stopped"]:
                self.events.remove(e)
                thread = e["body"]["threadId"]
                stops.append([(f["name"], f["line"]) for f in self.frames(thread)][:3])
                self.ok("continue", {"threadId": thread})
        return stops, self.finish(msg_id)

    def reset(self) -> None:
        """No breakpoint left, nothing stopped, no cell left running: the next test starts clean.

        A `next` past a cell's last line stays pending in debugpy and stops the next cell run,
        in IPython's code (stock does so too): a cell run here takes that stop."""
        for source in self.ok("debugInfo")["breakpoints"]:
            self.ok("setBreakpoints", {"source": {"path": source["source"]}, "breakpoints": [], "sourceModified": False})
        for msg_id in [*self.cells, self.start("pass")]:
            self.run_to_end(msg_id)
        self.events.clear()
        # ipykernel keeps listing threads as stopped after a `continue` (stock too); switched
        # off and on again, as in JupyterLab, it starts afresh.
        self.ok("disconnect", {"restart": False, "terminateDebuggee": False})
        self.attach()


# A parent and a child; the child's line 4 calls a function it defines, to step into.
PARENT = "x = 1\ny = x + 1\nprint('parent', y)\n"
CHILD = "def f(a):\n    b = a * 2\n    return b\nz = f(y)\nw = z + 1\nprint('child', w)\n"

tmp, key_file, worker, kernel, nb = remote_fixtures("qa-debugger", "qadbg")


@pytest.fixture(scope="module")
def stock(link_kernelspec: str, tmp_path_factory: pytest.TempPathFactory):
    k = start_stock_kernel(tmp_path_factory.mktemp("stock"))
    yield k
    k.shutdown()


@pytest.fixture(scope="module")
def link_session(kernel: Kernel) -> Dap:
    """JupyterLab's debugger switched on for the module's Link Python kernel (debugpy starts once)."""
    dap = Dap(kernel)
    dap.attach()
    return dap


@pytest.fixture(scope="module")
def stock_session(stock: Kernel) -> Dap:
    dap = Dap(stock)
    dap.attach()
    return dap


@pytest.fixture
def link_dap(link_session: Dap):
    yield link_session
    link_session.reset()


@pytest.fixture
def stock_dap(stock_session: Dap):
    yield stock_session
    stock_session.reset()


def pipeline(nb: Notebook) -> Notebook:
    """`parent` and its `child` saved and in use, and a notebook-only name the child must not see."""
    nb.add("parent", PARENT, counted=False).add("child", CHILD, "parent", counted=False).use()
    assert nb.kernel.execute("nb_only = 5").status == "ok"
    return nb


def start_child(dap: Dap, nb: Notebook) -> str:
    cell = nb.cells["child"]
    return dap.start(cell["source"], cell["metadata"], cell["id"])


def start_stock_child(dap: Dap) -> str:
    """Stock's same situation: the parent's code ran as a plain cell before, the child's runs."""
    assert dap.kernel.execute(PARENT).status == "ok"
    assert dap.kernel.execute("nb_only = 5").status == "ok"
    return dap.start(CHILD)


def where(dap: Dap, thread: int) -> list[tuple[str, str, int]]:
    """(function, file, line) of each frame, innermost first."""
    return [(f["name"], f["source"]["path"], f["line"]) for f in dap.frames(thread)]


def stepped(dap: Dap, msg_id: str) -> tuple[list[list[tuple[str, str, int]]], dict[str, set[str]], CellResult]:
    """Stop at the breakpoint, step into `f`, then `next` until the cell is done: the stacks
    seen at each stop, the variables of the module frame and of `f`'s, and the cell's result."""
    stopped = dap.wait_event("stopped")
    assert stopped["body"]["reason"] == "breakpoint", stopped
    thread = stopped["body"]["threadId"]
    stacks = [where(dap, thread)]
    names = {"<module>": set(dap.variables_of(dap.frames(thread)[0]["id"]))}
    event = dap.step("stepIn", thread, msg_id)
    for _ in range(10):
        if event is None:
            break
        stacks.append(where(dap, thread))
        top = dap.frames(thread)[0]
        names.setdefault(top["name"], set(dap.variables_of(top["id"])))
        event = dap.step("next", thread, msg_id)
    return stacks, names, dap.finish(msg_id)


RAISER = "try:\n    raise ValueError('mine')\nexcept ValueError:\n    print('caught')\n"


def test_raised_exceptions_stop_at_the_users_raise_only(nb, link_dap, stock_dap) -> None:
    """Exception breakpoints on every raised exception (JupyterLab's "raised" filter): a
    component stops where its code raises, as a stock cell, not in the kernel's own libraries
    (networkx, fsspec...), which raise and catch as they work. First in the module: those
    load, and raise, on the kernel's first component run."""
    nb.add("raiser", RAISER, counted=False).use()
    stops = {}
    cell = nb.cells["raiser"]
    for dap, request in ((link_dap, (cell["metadata"], cell["id"])), (stock_dap, ())):
        dap.ok("setExceptionBreakpoints", {"filters": ["raised"]})
        dap.ok("configurationDone")
        stops[dap is link_dap], result = dap.run_to_end(dap.start(RAISER, *request))
        dap.ok("setExceptionBreakpoints", {"filters": []})
        assert (result.status, result.stdout) == ("ok", "caught\n"), result.traceback_text
    assert stops[True] == stops[False] == [[("<module>", 2)]]


def test_a_breakpoint_in_a_component_stops_and_steps_as_in_a_stock_cell(nb, link_dap, stock_dap) -> None:
    """Stopped at a line of the executed component: its cell file as dumpCell named it, its
    own namespace (the parent's names, not the notebook's); stepping in and over lines goes
    as in stock, never into linkkernel's code; the run then ends as without the debugger."""
    pipeline(nb)
    ours, theirs = link_dap.break_at(CHILD, 4), stock_dap.break_at(CHILD, 4)
    link_stacks, link_names, link_result = stepped(link_dap, start_child(link_dap, nb))
    stock_stacks, stock_names, stock_result = stepped(stock_dap, start_stock_child(stock_dap))
    assert [[(name, line) for name, _, line in stack] for stack in link_stacks] == [
        [(name, line) for name, _, line in stack] for stack in stock_stacks
    ]
    assert link_stacks[0] == [("<module>", ours, 4)] and stock_stacks[0] == [("<module>", theirs, 4)]
    assert {path for stack in link_stacks for _, path, _ in stack} == {ours}
    assert len(link_stacks) >= 5, link_stacks  # f's two lines, back in the cell, its last two lines
    groups = {"special variables", "function variables"}
    assert link_names["<module>"] == {"x", "y"} | groups  # the component's namespace
    assert {"x", "y", "nb_only"} | groups <= stock_names["<module>"]
    assert link_names["f"] == {"a", "x", "y"} | groups  # its locals, the component's globals
    assert {"a", "x", "y", "nb_only"} | groups <= stock_names["f"]
    assert (link_result.status, link_result.stdout, link_result.stderr) == ("ok", "child 5\n", "")
    assert (stock_result.status, stock_result.stdout, stock_result.stderr) == ("ok", "child 5\n", "")
    assert link_dap.ok("source", {"source": {"path": ours}}) == {"content": CHILD}


def test_a_breakpoint_in_a_stale_parent_stops_it_under_its_progress_line(nb, link_dap, stock_dap) -> None:
    """The parent run silently stops at its breakpoint: its own cell file and namespace, the
    progress line naming it still shown; continued, the child runs and the parent's captured
    output is kept as without the debugger."""
    pipeline(nb)
    ours, theirs = link_dap.break_at(PARENT, 2), stock_dap.break_at(PARENT, 2)
    running = start_child(link_dap, nb)
    stopped = link_dap.wait_event("stopped")
    thread = stopped["body"]["threadId"]
    assert where(link_dap, thread) == [("<module>", ours, 2)]
    assert set(link_dap.variables_of(link_dap.frames(thread)[0]["id"])) == {"x", "special variables", "function variables"}
    shown = [m["content"]["data"]["text/plain"] for m in link_dap.output_so_far(running) if m["msg_type"] == "display_data"]
    assert len(shown) == 1 and "running parent 'parent' (1 of 1" in shown[0], shown
    assert link_dap.step("continue", thread, running) is None
    result = link_dap.finish(running)
    assert (result.status, result.stdout, result.stderr) == ("ok", "child 5\n", "")
    assert nb.kernel.execute("%link outputs parent").stdout == "parent 2\n"
    # stock, the parent's code as a plain cell: the same stop
    running = stock_dap.start(PARENT)
    stopped = stock_dap.wait_event("stopped")
    assert where(stock_dap, stopped["body"]["threadId"]) == [("<module>", theirs, 2)]
    assert stock_dap.step("continue", stopped["body"]["threadId"], running) is None
    assert stock_dap.finish(running).stdout == "parent 2\n"


def test_link_run_from_a_plain_cell_stops_in_each_component_it_runs(nb, link_dap) -> None:
    """`%link run` runs components silently from a plain cell: their breakpoints stop it, each
    component's frame above the plain cell's, and the run then ends as without the debugger."""
    pipeline(nb)
    link_dap.break_at(PARENT, 2)
    link_dap.break_at(CHILD, 5)
    stops, result = link_dap.run_to_end(link_dap.start("%link run child --force"))
    assert stops == [[("<module>", 2), ("<module>", 1)], [("<module>", 5), ("<module>", 1)]]
    assert (result.status, result.stdout, result.stderr) == ("ok", "ran: parent, child\n", "")


def names_listed(dap: Dap) -> dict[str, set[str]]:
    """The variables panel with nothing stopped (inspectVariables): the names at its top and
    in its two groups."""
    listed = dap.ok("inspectVariables")["variables"]
    panel = {"top": {v["name"] for v in listed}}
    for group in listed:
        if group["name"] in ("special variables", "function variables"):
            children = dap.ok("variables", {"variablesReference": group["variablesReference"]})["variables"]
            panel[group["name"]] = {v["name"] for v in children}
    return panel


def test_copy_to_globals_in_a_component_goes_to_the_notebook_not_its_outputs(nb, link_dap, stock_dap) -> None:
    """"Copy to globals" while stopped in a component (in its code and in a function it
    defines): the notebook's globals have the value at once, as stock's panel lists it; it
    is not one of the component's outputs, which its children would inherit."""
    pipeline(nb)
    nb.add("grandchild", "print(sorted(n for n in dir() if n.endswith('_copy')))", "child", counted=False).use()
    link_dap.break_at(CHILD, 3, 5)
    stock_dap.break_at(CHILD, 3, 5)
    copied = {}
    for dap, start in ((link_dap, lambda: start_child(link_dap, nb)), (stock_dap, lambda: start_stock_child(stock_dap))):
        running = start()
        for source, copy in (("a", "a_copy"), ("z", "z_copy")):  # in f, then in the cell
            thread = dap.wait_event("stopped")["body"]["threadId"]
            frame = dap.frames(thread)[0]["id"]
            dap.ok("copyToGlobals", {"srcVariableName": source, "dstVariableName": copy, "srcFrameId": frame})
            listed = dap.ok("inspectVariables")["variables"]  # the panel, still stopped
            copied.setdefault(dap is link_dap, []).append({v["name"] for v in listed if v["name"].endswith("_copy")})
            dap.ok("continue", {"threadId": thread})
        result = dap.finish(running)
        assert (result.status, result.stdout) == ("ok", "child 5\n"), result.traceback_text
        assert dap.kernel.execute("print(a_copy, z_copy)").stdout == "2 4\n"
    assert copied[True] == copied[False] == [{"a_copy"}, {"a_copy", "z_copy"}]
    shown = nb.run("grandchild")
    assert (shown.status, shown.stdout) == ("ok", "[]\n"), shown.traceback_text


def test_the_variables_panel_after_components_is_the_notebook_namespace_as_in_stock(nb, link_dap, stock_dap) -> None:
    """After components ran, the panel (inspectVariables, richInspectVariables) lists the
    notebook's namespace as stock lists it after the same code as plain cells: the outputs
    published, nothing of linkkernel's own."""
    pipeline(nb)
    assert nb.run("child").status == "ok"
    assert stock_dap.kernel.execute(PARENT).status == stock_dap.kernel.execute("nb_only = 5").status == "ok"
    assert stock_dap.kernel.execute(CHILD).status == "ok"
    ours, theirs = names_listed(link_dap), names_listed(stock_dap)
    assert ours == theirs
    assert {"x", "y", "z", "w", "nb_only"} <= ours["top"] and "f" in ours["function variables"]
    for name in ("w", "f", "nb_only"):
        link_view = link_dap.ok("richInspectVariables", {"variableName": name})
        stock_view = stock_dap.ok("richInspectVariables", {"variableName": name})
        assert link_view == stock_view, name


def test_a_breakpoint_in_a_remote_component_is_not_hit_and_says_so_once(nb, link_dap) -> None:
    """The debugger cannot stop on another machine: a remote component with a breakpoint runs
    to its end as without the debugger, live or as a stale parent, and the cell says once, after
    the component's own output, why the breakpoint was not hit."""
    remote_code = "r = 1\nr2 = r + 1\nprint('remote', r2)\n"
    nb.add("far", remote_code, remote="qadbg", counted=False).add("near", "print('near', r2 * 10)\n", "far", counted=False).use()
    link_dap.break_at(remote_code, 2)
    note = "linkkernel: the breakpoints in component 'far' were not hit: it ran on worker 'qadbg', and the debugger stops only in this kernel\n"
    running = link_dap.start(nb.cells["far"]["source"], nb.cells["far"]["metadata"], nb.cells["far"]["id"])
    live = link_dap.finish(running)
    assert (live.status, live.stdout, live.stderr) == ("ok", "remote 2\n", note), live.traceback_text
    assert nb.kernel.execute("%link cache clear").status == "ok"  # `far` is stale again
    running = link_dap.start(nb.cells["near"]["source"], nb.cells["near"]["metadata"], nb.cells["near"]["id"])
    as_parent = link_dap.finish(running)
    assert (as_parent.status, as_parent.stdout, as_parent.stderr) == ("ok", "near 20\n", note), as_parent.traceback_text
    assert not [e for e in link_dap.events if e.get("event") == "stopped"]
    link_dap.ok("setBreakpoints", {"source": {"path": link_dap.ok("dumpCell", {"code": remote_code})["sourcePath"]}, "breakpoints": []})
    assert nb.run("far").stderr == ""  # no breakpoint, no note


def control_reply(kernel: Kernel, msg_type: str, reply_type: str, timeout: float = 20) -> dict[str, Any]:
    """The content of the reply to a request sent on the control channel."""
    msg = kernel.client.session.msg(msg_type, {})
    kernel.client.control_channel.send(msg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = kernel.client.get_control_msg(timeout=0.5)
        except queue.Empty:
            continue
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            assert reply["msg_type"] == reply_type, reply
            return reply["content"]
    raise TimeoutError(f"no {reply_type} within {timeout}s")


def test_kernel_info_and_the_kernelspec_advertise_the_debugger_as_stock(kernel, stock, link_kernelspec) -> None:
    """JupyterLab shows its debugger switch for a kernel whose kernelspec says `debugger: true`
    and whose kernel_info lists the feature."""
    spec = json.loads((Path(link_kernelspec) / "kernels" / "link-python" / "kernel.json").read_text())
    assert spec["metadata"]["debugger"] is True
    ours, theirs = control_reply(kernel, "kernel_info_request", "kernel_info_reply"), control_reply(stock, "kernel_info_request", "kernel_info_reply")
    assert ours.get("debugger") == theirs.get("debugger")  # ipykernel 7 lists it among the features only
    assert "debugger" in ours["supported_features"] and sorted(ours["supported_features"]) == sorted(theirs["supported_features"])


def test_a_usage_request_is_answered_as_by_stock(kernel, stock) -> None:
    """JupyterLab's resource usage panel asks the kernel (ipykernel 7's usage_request)."""
    ours, theirs = control_reply(kernel, "usage_request", "usage_reply"), control_reply(stock, "usage_request", "usage_reply")
    assert sorted(ours) == sorted(theirs)
    assert ours["pid"] == kernel.manager.provisioner.process.pid and ours["kernel_memory"] > 0


def test_after_a_restart_the_debugger_starts_afresh_and_stops_in_components(nb, link_dap, stock_dap) -> None:
    """A restarted kernel (JupyterLab keeps its debugger switch on) reports a debugger not
    started, no breakpoints, nothing stopped, as stock's; switched on again, it stops in a
    component as before. Last in the module: it restarts the module's kernels."""
    pipeline(nb)
    assert nb.run("child").status == "ok"
    infos = []
    for dap in (link_dap, stock_dap):
        dap.break_at(CHILD, 5)
        dap.kernel.restart()
        dap.idle.clear()
        infos.append({k: v for k, v in dap.ok("debugInfo").items() if k not in ("tmpFilePrefix", "hashSeed")})
    assert infos[0] == infos[1]
    assert (infos[0]["isStarted"], infos[0]["breakpoints"], infos[0]["stoppedThreads"]) == (False, [], [])
    nb.use()
    link_dap.attach()
    path = link_dap.break_at(CHILD, 5)
    running = start_child(link_dap, nb)
    stopped = link_dap.wait_event("stopped")
    assert where(link_dap, stopped["body"]["threadId"]) == [("<module>", path, 5)]
    assert link_dap.step("continue", stopped["body"]["threadId"], running) is None
    assert link_dap.finish(running).stdout == "child 5\n"
    stock_dap.attach()


# A parent defining a function, and a child calling it: the function's line 3 (line 1 is the
# run counter's) is where a breakpoint in the parent's cell stops the child.
LIB = "def scaled(v):\n    doubled = v * 2\n    return doubled\n"
USER = "print('used', scaled(3))\n"


def restarted(dap: Dap, nb: Notebook) -> None:
    """Restart as JupyterLab does (records written after the reply are kept), point the new
    kernel at the notebook again and switch the debugger on again."""
    dap.kernel.restart_as_jupyterlab()
    dap.idle.clear()
    dap.events.clear()
    nb.use()
    dap.attach()


def test_a_breakpoint_in_a_remote_parents_function_stops_where_a_local_child_calls_it(nb, link_dap) -> None:
    """A function a remote component defined, called by a local child: JupyterLab sets the
    breakpoint in the remote component's cell, and the call here stops there, as if the
    component had run in this kernel (its code was compiled in the worker's task process)."""
    far = "def plus(v):\n    more = v + 1\n    return more\n"
    nb.add("farlib", far, remote="qadbg", counted=False).add("nearuser", "print('near', plus(1))\n", "farlib", counted=False).use()
    assert nb.run("nearuser").stdout == "near 2\n"
    link_dap.break_at(far, 2)
    cell = nb.cells["nearuser"]
    stops, result = link_dap.run_to_end(link_dap.start(cell["source"], cell["metadata"], cell["id"]))
    assert (result.status, result.stdout) == ("ok", "near 2\n"), result.traceback_text
    assert stops == [[("plus", 2), ("<module>", 1)]]


def test_a_breakpoint_in_a_function_from_an_imported_cache_stops(nb, link_dap, tmp_path) -> None:
    """Results another user exported (`%link cache export`) and this kernel imported: the
    parent is fresh, its function comes from their kernel's pickles, and a breakpoint in its
    cell stops the child that calls it here."""
    theirs = Kernel(LINKKERNEL_CACHE=str(tmp_path / "their-cache"))
    try:
        their_nb = Notebook(theirs, nb.path).add("lib", LIB).add("user", USER, "lib", counted=False).use()
        assert their_nb.run("user").stdout == "used 6\n"
        archive = tmp_path / "lib.tar.gz"
        assert theirs.execute(f"%link cache export {archive}").status == "ok"
    finally:
        theirs.shutdown()
    assert their_nb.runs() == ["lib"]
    nb.add("lib", LIB).add("user", USER, "lib", counted=False).use()
    imported = nb.kernel.execute(f"%link cache import {archive}")
    assert imported.status == "ok", imported.traceback_text
    stops, result = link_dap.run_to_end(start_child_with_break(link_dap, nb, "user", nb.cells["lib"]["source"], 3))
    assert (result.status, result.stdout) == ("ok", "used 6\n"), result.traceback_text
    assert stops == [[("scaled", 3), ("<module>", 1)]]
    assert nb.runs() == []  # lib came from the archive


def start_child_with_break(dap: Dap, nb: Notebook, name: str, code: str, line: int) -> str:
    """A breakpoint at `line` of `code`'s cell, then component `name` executed."""
    dap.break_at(code, line)
    return start_child_of(dap, nb, name)


def test_after_a_restart_a_breakpoint_in_a_cached_parents_function_stops(nb, link_dap) -> None:
    """After a restart the parent is fresh: its function comes from the cache store, not
    from running its cell again. A breakpoint in it stops the child that calls it, as in
    stock after running the cell again. Restarts the module's kernel."""
    nb.add("lib", LIB).add("user", USER, "lib", counted=False).use()
    assert nb.run("user").stdout == "used 6\n"
    assert nb.runs() == ["lib"]
    restarted(link_dap, nb)
    path = link_dap.break_at(nb.cells["lib"]["source"], 3)
    running = start_child_of(link_dap, nb, "user")
    stopped = link_dap.wait_event("stopped", timeout=15)
    thread = stopped["body"]["threadId"]
    assert where(link_dap, thread)[0] == ("scaled", path, 3)
    assert link_dap.step("continue", thread, running) is None
    assert link_dap.finish(running).stdout == "used 6\n"
    assert nb.runs() == []  # lib came from the cache store


def test_after_a_restart_a_child_only_calling_a_cached_function_does_not_output_it(nb, link_dap) -> None:
    """The cached function loaded in a new process (where its code names this process's cell
    file) and only called by a child is not one of the child's outputs: it would be published
    over the notebook's own `scaled`."""
    nb.add("lib", LIB).add("caller", USER, "lib", counted=False).use()
    assert nb.run("caller").stdout == "used 6\n"
    restarted(link_dap, nb)
    assert nb.run("caller").stdout == "used 6\n"  # publishes lib's cached values once
    assert nb.kernel.execute("scaled = 'the notebook s own'").status == "ok"
    assert nb.run("caller").stdout == "used 6\n"
    assert nb.runs() == ["lib"]  # its one run, before the restart
    assert nb.kernel.execute("print(scaled)").stdout == "the notebook s own\n"


def start_child_of(dap: Dap, nb: Notebook, name: str) -> str:
    cell = nb.cells[name]
    return dap.start(cell["source"], cell["metadata"], cell["id"])


def test_after_a_restart_a_cached_parents_function_shows_its_source(nb, link_dap) -> None:
    """`scaled??` (inspect.getsource) on a function its fresh parent's cache brought into a
    restarted kernel shows its code, as in stock after running the cell again."""
    nb.add("lib", LIB, counted=False).add("shower", USER, "lib", counted=False).use()
    assert nb.run("shower").stdout == "used 6\n"
    restarted(link_dap, nb)
    assert nb.run("shower").stdout == "used 6\n"  # publishes lib's cached values
    shown = nb.kernel.execute("import inspect\nprint(inspect.getsource(scaled), end='')")
    assert (shown.status, shown.stdout) == ("ok", LIB), shown.traceback_text
