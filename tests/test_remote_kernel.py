"""run_remote inside a real kernel: live output reaches the cell while the task runs, a
silent run publishes nothing, and interrupting the cell kills the remote task process."""

from __future__ import annotations

import os
import queue
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from linkkernel.remote import registry
from linkkernel.remote.protocol import KERNEL_PING_INTERVAL, KERNEL_SILENCE
from remote_support import WorkerProcess, make_key, pid_alive, wait_until
from support import Kernel


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kernel")
    key_file = make_key(tmp / "key")
    w = WorkerProcess(str(tmp / "store"), key_file, tmp)
    registry.add("kw", w.address, str(tmp / "store"), str(key_file))
    yield tmp, w
    w.stop()


def cell(code: str, live: bool) -> str:
    return (
        "from linkkernel.remote.executor import run_remote\n"
        "from linkkernel.tasks import ComponentTask\n"
        f"result = run_remote(get_ipython().kernel, ComponentTask('comp', {code!r}, {{}}, {live}), 'kw')\n"
    )


def run_watching(kernel, code: str, on_message, timeout: float = 60) -> list[dict]:
    """Execute `code` and call `on_message` with each IOPub message as it arrives."""
    msg_id = kernel.client.execute(code)
    messages, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            m = kernel.client.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            on_message(None)
            continue
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return messages
        messages.append(m)
        on_message(m)
    raise TimeoutError(code)


def test_live_output_reaches_the_cell_while_the_task_runs(setup, kernel) -> None:
    tmp, _ = setup
    go = tmp / "go"
    code = (
        "print('first', flush=True)\n"
        "import os, time\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n"
        "from IPython.display import display, Markdown\n"
        "display(Markdown('**md**'))\n"
        "import sys\nprint('oops', file=sys.stderr)\n"
        "41 + 1\n"
    )

    def release_once_first_is_shown(m) -> None:
        if m and m["msg_type"] == "stream" and "first" in m["content"]["text"]:
            go.touch()

    messages = run_watching(kernel, cell(code, live=True), release_once_first_is_shown)
    assert go.exists(), "'first' did not reach the cell before the task finished"
    kinds = [(m["msg_type"], m["content"].get("name")) for m in messages if m["msg_type"] not in ("execute_input", "status")]
    assert kinds == [("stream", "stdout"), ("display_data", None), ("stream", "stderr"), ("execute_result", None)]
    assert messages[-1]["content"]["data"]["text/plain"] == "42"
    outputs = kernel.execute("[o['output_type'] for o in result.outputs], result.error").displays[0]["data"]["text/plain"]
    assert outputs == "(['stream', 'display_data', 'stream', 'execute_result'], None)"


def test_text_without_a_newline_reaches_the_cell_while_the_task_runs(setup, kernel) -> None:
    """`print('epoch 1: ', end='')` before a long step shows at once in a local cell
    (ipykernel flushes its streams every 0.2 s); so it must from a worker."""
    tmp, _ = setup
    go = tmp / "go-partial"
    code = (
        "import os, time\nprint('epoch 1: ', end='')\nuntil = time.monotonic() + 20\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < until:\n    time.sleep(0.02)\nprint('done')"
    )

    def release_once_shown(m) -> None:
        if m and m["msg_type"] == "stream" and m["content"]["text"] == "epoch 1: ":
            go.touch()

    messages = run_watching(kernel, cell(code, live=True), release_once_shown)
    assert go.exists(), "'epoch 1: ' did not reach the cell before the task finished"
    assert "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream") == "epoch 1: done\n"


def test_silent_run_publishes_nothing_but_keeps_outputs(setup, kernel) -> None:
    result = kernel.execute(cell("print('quiet')\nfrom IPython.display import display\ndisplay(1)\nv = 3", live=False))
    assert result.status == "ok", result.traceback_text
    assert result.stdout == "" and result.displays == []
    check = kernel.execute("result.outputs[0]['text'], result.outputs[1]['data']['text/plain']")
    assert check.displays[0]["data"]["text/plain"] == "('quiet\\n', '1')"


def test_interrupting_the_cell_cancels_the_remote_task(setup, kernel) -> None:
    tmp, w = setup
    pid_file = tmp / "interrupted.pid"
    code = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)"
    interrupted = []

    def interrupt_once_running(m) -> None:
        if not interrupted and pid_file.exists() and pid_file.read_text():
            interrupted.append(int(pid_file.read_text()))
            kernel.manager.interrupt_kernel()

    messages = run_watching(kernel, cell(code, live=True), interrupt_once_running)
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert errors and errors[0]["ename"] == "KeyboardInterrupt"
    assert wait_until(lambda: not pid_alive(interrupted[0]))
    w.wait_for_log("cancelled, task process killed")
    again = kernel.execute(cell("x = 1", live=True))
    assert again.status == "ok", again.traceback_text


def test_a_kernel_that_goes_away_frees_its_running_task(setup, kernel) -> None:
    """A restarted or killed kernel cannot cancel: the worker notices it is gone and kills
    the task, so the slot (this worker has one) serves the next kernel at once."""
    tmp, w = setup
    pid_file = tmp / "orphaned.pid"
    code = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)"
    doomed = Kernel()
    try:
        doomed.client.execute(cell(code, live=True))
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
        doomed.manager.provisioner.process.kill()  # SIGKILL: no interrupt, no goodbye
    finally:
        doomed.shutdown()
    assert wait_until(lambda: not pid_alive(int(pid_file.read_text())))
    w.wait_for_log("cancelled: its kernel is gone")
    again = kernel.execute(cell("x = 1", live=True), timeout=20)
    assert again.status == "ok", again.traceback_text


def test_a_kernel_that_stops_answering_frees_its_task_and_then_says_why(setup, kernel) -> None:
    """A stopped kernel keeps its TCP connection open yet answers nothing, like one on a
    crashed host, behind a cut network or on a sleeping laptop: the worker drops it and kills
    its task, so the slot (this worker has one) serves another kernel. Once the kernel runs
    again its cell ends with one line saying why, and the kernel stays usable."""
    tmp, w = setup
    pid_file = tmp / "stopped.pid"
    code = (
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "while True:\n    print('still here', flush=True)\n    time.sleep(0.05)"
    )
    stopped = Kernel()
    kernel_pid = stopped.manager.provisioner.process.pid
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(stopped.execute, cell(code, live=True), timeout=120)
            assert wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
            gone = w.log().count("cancelled: its kernel is gone")
            os.kill(kernel_pid, signal.SIGSTOP)
            try:
                assert wait_until(lambda: not pid_alive(int(pid_file.read_text())), timeout=30)
                assert wait_until(lambda: w.log().count("cancelled: its kernel is gone") == gone + 1)
                other = kernel.execute(cell("x = 1", live=True), timeout=20)
                assert other.status == "ok", other.traceback_text
            finally:
                os.kill(kernel_pid, signal.SIGCONT)
            result = running.result(timeout=60)
        assert result.status == "error"
        assert result.reply["content"]["ename"] == "RemoteError"
        assert "this kernel did not run for" in result.reply["content"]["evalue"]
        assert "the worker dropped this kernel and killed the task; run the cell again" in result.traceback_text
        assert len(result.traceback_text.strip().splitlines()) == 1, result.traceback_text
        again = stopped.execute(cell("x = 1", live=True), timeout=20)
        assert again.status == "ok", again.traceback_text
    finally:
        os.kill(kernel_pid, signal.SIGCONT)
        stopped.shutdown()


def _unread_by(port: int) -> int:
    """Bytes that arrived for the process listening on loopback `port` and that it has not
    read yet (stopped, it reads nothing)."""
    unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # ESTABLISHED
            unread += int(fields[4].split(":")[1], 16)
    return unread


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the worker's socket queue from /proc/net/tcp")
def test_a_kernel_stopped_before_it_heard_its_task_accepted_says_why(setup, kernel) -> None:
    """The task starts before the worker says it accepted it. A kernel stopped in between
    lost the time it was stopped, and once it ran again its cell said the worker died."""
    tmp, w = setup
    pid_file = tmp / "unheard.pid"
    code = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)"
    port = int(w.address.rsplit(":", 1)[1])
    stopped = Kernel()
    kernel_pid = stopped.manager.provisioner.process.pid
    try:
        assert stopped.execute(cell("x = 1", live=True), timeout=20).status == "ok"  # connected
        os.kill(w.process.pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(1) as pool:
                running = pool.submit(stopped.execute, cell(code, live=True), timeout=120)
                # the task is sent: the kernel waits to hear that it is accepted
                assert wait_until(lambda: _unread_by(port) > 100, timeout=30)
                os.kill(kernel_pid, signal.SIGSTOP)
                os.kill(w.process.pid, signal.SIGCONT)
                try:
                    assert wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
                    assert wait_until(lambda: not pid_alive(int(pid_file.read_text())), timeout=30)
                finally:
                    os.kill(kernel_pid, signal.SIGCONT)
                result = running.result(timeout=60)
        finally:
            os.kill(w.process.pid, signal.SIGCONT)
        assert result.reply["content"]["ename"] == "RemoteError"
        assert "this kernel did not run for" in result.reply["content"]["evalue"], result.traceback_text
    finally:
        os.kill(kernel_pid, signal.SIGCONT)
        stopped.shutdown()


def test_a_kernel_holding_the_gil_for_long_keeps_its_task(setup, kernel) -> None:
    """The worker's heartbeats are answered by ZeroMQ's own thread: a kernel whose Python is
    busy (here: a C call that holds the GIL) for longer than the worker waits for a silent
    kernel is not taken for gone."""
    tmp, w = setup
    started, go = tmp / "busy.started", tmp / "busy.go"
    task = f"import os, time\nopen({str(started)!r}, 'w').close()\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\ny = 2"
    busy_for = int(KERNEL_PING_INTERVAL + KERNEL_SILENCE) + 2
    code = (
        "import ctypes, os, threading, time\n"
        "from linkkernel.remote.executor import run_remote\n"
        "from linkkernel.tasks import ComponentTask\n"
        "box = {}\n"
        "def remote():\n"
        f"    box['result'] = run_remote(get_ipython().kernel, ComponentTask('busy', {task!r}, {{}}, False), 'kw')\n"
        "thread = threading.Thread(target=remote)\n"
        "thread.start()\n"
        f"while not os.path.exists({str(started)!r}):\n    time.sleep(0.02)\n"
        f"ctypes.PyDLL(None).sleep({busy_for})\n"
        f"open({str(go)!r}, 'w').close()\n"
        "thread.join()\n"
        "print(box['result'].error, 'y' in box['result'].bound)"
    )
    result = kernel.execute(code, timeout=60)
    assert result.status == "ok", result.traceback_text
    assert result.stdout == "None True\n"
    busy = [line for line in w.wait_for_log("'busy' from client").splitlines() if "'busy'" in line]
    assert len(busy) == 1 and ": ok in" in busy[0], busy


def test_functions_from_kernel_components_are_labelled_in_remote_tracebacks(setup, kernel) -> None:
    define = kernel.execute(
        "with get_ipython().compile.labelled('load'):\n"
        "    get_ipython().run_cell('def invert(x):\\n    return 1 / x')\n"
        "from linkkernel.namespaces import dump\n"
        "from linkkernel.remote.executor import run_remote\n"
        "from linkkernel.tasks import ComponentTask\n"
        "failed = run_remote(get_ipython().kernel, ComponentTask('train', 'invert(0)', {'invert': dump('invert', invert)}, False), 'kw')\n"
        "print('\\n'.join(failed.error.traceback))"
    )
    assert define.status == "ok", define.traceback_text
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", define.stdout)
    assert "Component train, line 1" in text and "Component load, line 2" in text
    assert "return 1 / x" in text and "ipykernel_" not in text
