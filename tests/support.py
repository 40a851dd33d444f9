"""Drive real kernels over the Jupyter protocol, the way JupyterLab and nbclient do."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parent.parent
KERNEL_NAME = "link-python"


def kernel_env(**extra: str) -> dict[str, str]:
    """The environment a test kernel starts with.

    PYTEST_CURRENT_TEST is removed because ipykernel stops capturing fd 1/2 when it sees it,
    and PYTHONPATH points at this checkout so the kernel runs the code under test.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class CellResult:
    """Everything one execute_request produced: the reply and the IOPub messages, in order."""

    reply: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.reply["content"]["status"]

    @property
    def stdout(self) -> str:
        return self._stream("stdout")

    @property
    def stderr(self) -> str:
        return self._stream("stderr")

    def _stream(self, name: str) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.messages
            if m["msg_type"] == "stream" and m["content"]["name"] == name
        )

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m["content"] for m in self.messages if m["msg_type"] == "error"]

    @property
    def traceback_text(self) -> str:
        """All error tracebacks, ANSI colours removed."""
        import re

        text = "\n".join("\n".join(e["traceback"]) for e in self.errors)
        return re.sub(r"\x1b\[[0-9;]*m", "", text)

    @property
    def displays(self) -> list[dict[str, Any]]:
        return [
            m["content"]
            for m in self.messages
            if m["msg_type"] in ("display_data", "execute_result", "update_display_data")
        ]

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m["content"] for m in self.messages if m["msg_type"] == msg_type]


def as_shown(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(msg_type, text) of each stream and display_data message as a notebook shows them: a
    stream's consecutive messages are one output. ipykernel sends what a stream received every
    0.2 s (a timer shared by every request), so a printed line can come in two messages; stock
    ipykernel cuts the same way, more often on a loaded machine."""
    shown: list[tuple[str, str]] = []
    names: list[str | None] = []
    for m in messages:
        content = m["content"]
        if m["msg_type"] == "stream":
            if names and names[-1] == content["name"]:
                shown[-1] = ("stream", shown[-1][1] + content["text"])
            else:
                shown.append(("stream", content["text"]))
                names.append(content["name"])
        elif m["msg_type"] == "display_data":
            shown.append(("display_data", content["data"]["text/plain"]))
            names.append(None)
    return shown


class Kernel:
    """A running kernel process and a blocking client to it."""

    def __init__(self, kernel_name: str = KERNEL_NAME, cwd: str | None = None, **env: str) -> None:
        self.manager = KernelManager(kernel_name=kernel_name)
        self.manager.start_kernel(env=kernel_env(**env), cwd=cwd)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def execute(
        self,
        code: str,
        metadata: dict[str, Any] | None = None,
        cell_id: str | None = None,
        timeout: float = 60,
        allow_stdin: bool = False,
        stdin_reply: str | list[str] | None = None,
        interrupt_after: float | None = None,
    ) -> CellResult:
        """Send an execute_request as JupyterLab does (cell metadata plus cellId) and collect
        every IOPub message until the kernel goes idle for it. `stdin_reply` answers the
        cell's input() prompts: one string, or a list answered in turn (pdb sessions)."""
        answers = [stdin_reply] if isinstance(stdin_reply, str) else list(stdin_reply or [])
        request_meta = dict(metadata or {})
        if cell_id is not None:
            request_meta["cellId"] = cell_id
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": allow_stdin or stdin_reply is not None,
            "stop_on_error": True,
        }
        msg = self.client.session.msg("execute_request", content, metadata=request_meta)
        self.client.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
        deadline = time.monotonic() + timeout
        interrupt_at = None if interrupt_after is None else time.monotonic() + interrupt_after
        messages: list[dict[str, Any]] = []
        idle = False
        while not idle:
            if time.monotonic() > deadline:
                raise TimeoutError(f"kernel did not finish {code[:60]!r} within {timeout}s")
            if interrupt_at is not None and time.monotonic() >= interrupt_at:
                self.manager.interrupt_kernel()
                interrupt_at = None
            if answers:
                try:
                    self.client.get_stdin_msg(timeout=0.01)
                    self.client.input(answers.pop(0))
                except queue.Empty:
                    pass
            try:
                m = self.client.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                continue
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "status":
                idle = m["content"]["execution_state"] == "idle"
                continue
            messages.append(m)
        reply = self.client.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.client.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
        return CellResult(reply, messages)

    def late_output(self, result: CellResult, done: Callable[[CellResult], bool], timeout: float = 30) -> CellResult:
        """`result` with the IOPub messages of its request that came after the kernel went idle
        for it, read until `done(result)`: stock ipykernel passes descriptor output (os.system,
        subprocesses) on from a thread of its own, at times after the reply; it still shows
        in the cell."""
        msg_id = result.reply["parent_header"]["msg_id"]
        deadline = time.monotonic() + timeout
        while not done(result) and time.monotonic() < deadline:
            try:
                m = self.client.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                continue
            if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] != "status":
                result.messages.append(m)
        return result

    def restart(self) -> None:
        self.manager.restart_kernel(now=True)
        self.client.wait_for_ready(timeout=60)

    def restart_as_jupyterlab(self) -> None:
        """Restart as JupyterLab does: a shutdown_request with restart=True, so the kernel
        ends as it would (its cache written after the last reply lands), then a new process."""
        self.manager.restart_kernel(now=False)
        self.client.wait_for_ready(timeout=60)

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def start_stock_kernel(prefix: Path) -> Kernel:
    """A stock ipykernel ("python3-stock", installed under `prefix`): the reference a Link
    Python kernel is compared with for everything that is not about components."""
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "python3-stock"],
        check=True,
        capture_output=True,
    )
    saved = os.environ["JUPYTER_PATH"]
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(prefix / "share" / "jupyter"), saved])
    try:
        return Kernel("python3-stock")
    finally:
        os.environ["JUPYTER_PATH"] = saved


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def component_meta(name: str, *parents: str, remote: str | None = None) -> dict[str, Any]:
    """Cell metadata as JupyterLab's tag editor writes it."""
    tags = [f"component:{name}"] + [f"parent:{p}" for p in parents]
    if remote:
        tags.append(f"remote:{remote}")
    return {"tags": tags}


def python() -> str:
    return sys.executable
