"""Kernel subshells (JEP 91, ipykernel 7): requests on a subshell run in a thread of their
own, concurrently with the main shell. Pipeline runs share one namespace and one cache, so
they take turns; plain cells stay concurrent, as in ipykernel."""

from __future__ import annotations

from support import component_meta


def _create_subshell(kernel) -> str:
    client = kernel.client
    request = client.session.msg("create_subshell_request", {})
    client.control_channel.send(request)
    reply = client.get_control_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == request["header"]["msg_id"]
    return reply["content"]["subshell_id"]


def _send(kernel, code: str, metadata: dict, subshell: str | None = None) -> str:
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False,
               "stop_on_error": True}
    msg = kernel.client.session.msg("execute_request", content, metadata=metadata)
    if subshell is not None:
        msg["header"]["subshell_id"] = subshell
    kernel.client.shell_channel.send(msg)
    return msg["header"]["msg_id"]


def _replies(kernel, ids: set[str]) -> dict[str, dict]:
    replies: dict[str, dict] = {}
    while len(replies) < len(ids):
        reply = kernel.client.get_shell_msg(timeout=60)
        if reply["parent_header"]["msg_id"] in ids:
            replies[reply["parent_header"]["msg_id"]] = reply["content"]
    return replies


def _stamped(path, name: str) -> str:
    """A cell that notes when it starts and ends, one second apart."""
    return (
        "import time\n"
        f"with open({str(path)!r}, 'a') as log: log.write(f'{name} start {{time.monotonic()}}\\n')\n"
        "time.sleep(1)\n"
        f"with open({str(path)!r}, 'a') as log: log.write(f'{name} end {{time.monotonic()}}\\n')\n"
        f"{name}_done = True\n"
    )


def _spans(path) -> dict[str, tuple[float, float]]:
    marks: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        name, what, at = line.split()
        marks.setdefault(name, {})[what] = float(at)
    return {name: (m["start"], m["end"]) for name, m in marks.items()}


def test_components_on_a_subshell_wait_for_the_main_shell_s_run(kernel, tmp_path) -> None:
    subshell = _create_subshell(kernel)
    log = tmp_path / "spans"
    ids = {_send(kernel, _stamped(log, "main"), component_meta("on_main")),
           _send(kernel, _stamped(log, "side"), component_meta("on_subshell"), subshell)}
    assert {r["status"] for r in _replies(kernel, ids).values()} == {"ok"}
    (a_start, a_end), (b_start, b_end) = _spans(log).values()
    assert a_end <= b_start or b_end <= a_start  # one after the other, never interleaved


def test_plain_cells_on_a_subshell_still_run_concurrently(kernel, tmp_path) -> None:
    subshell = _create_subshell(kernel)
    log = tmp_path / "spans"
    ids = {_send(kernel, _stamped(log, "main"), {}), _send(kernel, _stamped(log, "side"), {}, subshell)}
    assert {r["status"] for r in _replies(kernel, ids).values()} == {"ok"}
    (a_start, a_end), (b_start, b_end) = _spans(log).values()
    assert a_start < b_end and b_start < a_end


def test_a_subshell_s_plain_cell_is_not_part_of_the_component_the_main_shell_runs(kernel, tmp_path) -> None:
    """`%link run` is refused inside a component's code only: a plain cell on a subshell,
    running while the main shell runs a component, may use it (it waits its turn)."""
    subshell = _create_subshell(kernel)
    started, release, seen = (str(tmp_path / name) for name in ("started", "release", "seen"))
    holds = (f"import os, time\nopen({started!r}, 'w').close()\ndeadline = time.monotonic() + 30\n"
             f"while not os.path.exists({release!r}) and time.monotonic() < deadline:\n    time.sleep(0.02)\n")
    side = (f"import os, time\nwhile not os.path.exists({started!r}):\n    time.sleep(0.02)\n"
            f"try:\n    open({seen!r}, 'w').write(repr(get_ipython().compile.current_component))\n"
            f"finally:\n    open({release!r}, 'w').close()\n"
            "%link run holds")
    ids = [_send(kernel, holds, component_meta("holds")), _send(kernel, side, {}, subshell)]
    replies = _replies(kernel, set(ids))
    assert replies[ids[0]]["status"] == "ok"
    assert replies[ids[1]]["status"] == "ok", replies[ids[1]].get("evalue")
    assert (tmp_path / "seen").read_text() == "None"


def test_a_subshell_s_plain_cell_runs_in_the_notebook_namespace_while_a_component_runs(kernel, tmp_path) -> None:
    """SPEC §3: an untagged cell runs in the notebook namespace, as in ipykernel, even while
    the main shell runs a component in a namespace of its own: the plain cell sees the
    notebook's names, and what it binds is the notebook's, not the component's outputs."""
    subshell = _create_subshell(kernel)
    assert kernel.execute("notebook_only = 'nb'", metadata={}).status == "ok"
    started, release = (str(tmp_path / name) for name in ("started", "release"))
    holds = (f"import os, time\nopen({started!r}, 'w').close()\ndeadline = time.monotonic() + 30\n"
             f"while not os.path.exists({release!r}) and time.monotonic() < deadline:\n    time.sleep(0.02)\n"
             "held = 'component'")
    side = (f"import os, time\nwhile not os.path.exists({started!r}):\n    time.sleep(0.02)\n"
            f"try:\n    seen = notebook_only\n    side_value = 2\nfinally:\n    open({release!r}, 'w').close()")
    ids = [_send(kernel, holds, component_meta("holds_ns")), _send(kernel, side, {}, subshell)]
    replies = _replies(kernel, set(ids))
    assert replies[ids[1]]["status"] == "ok", replies[ids[1]].get("evalue")
    assert replies[ids[0]]["status"] == "ok", replies[ids[0]].get("evalue")
    check = kernel.execute("print(seen, side_value, held)", metadata={})
    assert check.stdout == "nb 2 component\n", check.traceback_text
    child = kernel.execute("print(sorted(n for n in ('side_value', 'seen', 'held') if n in globals()))",
                           metadata=component_meta("after_holds_ns", "holds_ns"))
    assert child.stdout == "['held']\n", child.traceback_text
