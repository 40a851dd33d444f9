"""What the worker does when a task process dies or the worker is stopped, said and done exactly:
the cleanup after a dead task touches only what that task wrote, and a worker stopped while
kernels submit answers every submission. Real workers, real kernels, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from remote_support import WorkerProcess, remote_fixtures
from support import REPO, kernel_env

tmp, key_file, worker, kernel, nb = remote_fixtures("qa_accuracy", "qa-accuracy")


# ---------------------------------------------------------------- the cleanup after a dead task


def _temp_blob(store: Path, folder: str, stay: bool) -> tuple[Path, subprocess.Popen | None]:
    """A half-written blob file in `store`'s blob folder `folder`, named after another process
    than any task's: one that goes on writing (`stay`), or one that is gone."""
    script = textwrap.dedent("""
        import os, sys, time
        from linkkernel.partfiles import temp_name
        os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
        path = temp_name(sys.argv[1], "tmp")
        open(path, "wb").write(b"half a blob")
        print(path, flush=True)
        if sys.argv[2] == "stay":
            time.sleep(60)
    """)
    target = str(store / "blobs" / folder / (folder + "0" * 62))
    process = subprocess.Popen([sys.executable, "-c", script, target, "stay" if stay else "go"], stdout=subprocess.PIPE,
                               text=True, cwd=REPO, env=kernel_env())
    path = Path(process.stdout.readline().strip())
    if not stay:
        process.wait(10)
    return path, process if stay else None


def _crashes_while_writing(store: Path) -> str:
    """Component code making a 64 MB output whose task process kills itself as soon as it
    starts writing that output's blob (its own temporary file, told by its pid)."""
    return textwrap.dedent(f"""
        import os, signal, threading, time
        def watch():
            mine = f"-{{os.getpid()}}-"
            while True:
                for folder, _, files in os.walk({str(store)!r}):
                    if any(mine in name and name.endswith(".tmp") for name in files):
                        os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.0005)
        threading.Thread(target=watch, daemon=True).start()
        big = bytearray(64 << 20)
    """)


def _temp_files(store: Path) -> set[Path]:
    return set((store / "blobs").glob("*/*.tmp"))


def test_the_cleanup_after_a_crashed_task_removes_its_own_half_blob_and_nothing_else(nb, tmp, key_file):
    """A crashed task's half-written blob goes at once; temporary files it never wrote stay
    (a live writer's, and a dead one's in another folder: the cleanup did not look there),
    until a worker starting on the store sweeps every folder."""
    store = tmp / "store"
    live, writer = _temp_blob(store, "ee", stay=True)
    dead, _ = _temp_blob(store, "dd", stay=False)
    try:
        nb.add("crashes", _crashes_while_writing(store), remote="qa-accuracy", counted=False).use()
        result = nb.run("crashes", timeout=60)
        assert result.status == "error" and "SIGKILL" in result.traceback_text, result.traceback_text
        assert _temp_files(store) == {live, dead}
        WorkerProcess(str(store), key_file, tmp).stop()  # a worker starting sweeps the store
        assert _temp_files(store) == {live}
    finally:
        writer.kill()
        writer.wait(10)


# ---------------------------------------------------------------- a worker stopped while kernels submit


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _spares(w: WorkerProcess) -> list[int]:
    """The task processes the worker's zygote forked ahead, waiting for tasks."""
    return [spare for zygote in _children(w.process.pid) for spare in _children(zygote)]


def _kernel_stack(pid: int) -> str:
    """Where in the OS kernel the main thread of process `pid` waits (only root may look)."""
    try:
        return Path(f"/proc/{pid}/stack").read_text()
    except PermissionError:
        pytest.skip("only root may read where another process waits (/proc/PID/stack)")


def _submit(client, code: str, outcomes: dict[str, str], key: str) -> None:
    """Submit and follow one task; what came of it, as the cell would say it."""
    from linkkernel.remote.client import RemoteError
    from linkkernel.remote.worker import versions

    body = {"task": uuid.uuid4().hex, "name": key, "code": code, "inputs": {}, "versions": versions()}
    try:
        client.submit(body)
        client.follow(body["task"], lambda output: None)
        outcomes[key] = "done"
    except RemoteError as exc:
        outcomes[key] = str(exc)
    except BaseException as exc:  # noqa: BLE001 - the test says what else came
        outcomes[key] = f"{type(exc).__name__} (not a RemoteError): {exc}"


def test_a_task_submitted_as_the_worker_stops_is_told_the_worker_stopped(tmp, key_file):
    """The worker stops once its loop is between rounds; a task that reached it while it was
    busy with its last round was never read: the kernel waited for the accept deadline, then
    called a worker that had just been stopped unreachable. Here the last round is held up
    for certain (its task process, stopped, cannot take a task larger than a pipe), the
    SIGTERM lands and a second kernel submits meanwhile."""
    from linkkernel.remote.client import ACCEPT_TIMEOUT, Client
    from linkkernel.remote.protocol import read_key
    from remote_support import wait_until

    w = WorkerProcess(str(tmp / "store"), key_file, tmp)
    clients = [Client("stopping", w.address, read_key(key_file)) for _ in range(2)]
    spares: list[int] = []
    try:
        assert wait_until(lambda: len(_spares(w)) == 2, timeout=10)
        spares = _spares(w)
        for pid in spares:
            os.kill(pid, signal.SIGSTOP)
        outcomes: dict[str, str] = {}
        big = threading.Thread(target=_submit, args=(clients[0], "x = 1\n" + "#" * (1 << 20), outcomes, "big"))
        big.start()
        # the worker writes the big task into a stopped process's pipe, and waits there
        assert wait_until(lambda: "pipe_write" in _kernel_stack(w.process.pid), timeout=10)
        w.process.send_signal(signal.SIGTERM)
        late = threading.Thread(target=_submit, args=(clients[1], "y = 2", outcomes, "late"))
        started = time.monotonic()
        late.start()
        time.sleep(0.5)  # its submission is in the worker's socket, unread
        for pid in spares:
            os.kill(pid, signal.SIGCONT)
        big.join(30)
        late.join(30)
        assert time.monotonic() - started < ACCEPT_TIMEOUT, outcomes
        assert w.process.wait(10) == 0
    finally:
        for pid in spares:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for client in clients:
            client.close()
        w.stop()
    assert outcomes["big"].endswith("the worker was stopped (SIGTERM) while the task ran"), outcomes
    assert outcomes["late"].endswith("refused the task: the worker was stopped (SIGTERM) before it could start the task"), outcomes
    log = w.log_path.read_text()
    assert "'big' from client" in log and "failed: the worker was stopped (SIGTERM)" in log, log
    assert "'late' refused: the worker was stopped (SIGTERM)" in log, log


def test_kernels_submitting_while_the_worker_stops_each_get_a_result_or_one_line(kernel, tmp, key_file, tmp_path):
    """Two kernels run a remote cell again and again; the worker gets SIGTERM meanwhile. Every
    run ends with its result or one line saying what happened (stopped, refused, or, once the
    worker is gone, unreachable), within the client's deadlines; the worker exits 0."""
    from engine_support import Notebook
    from linkkernel.remote import registry
    from linkkernel.remote.client import ACCEPT_TIMEOUT, HEARTBEAT_TIMEOUT
    from remote_support import wait_until
    from support import Kernel

    w = WorkerProcess(str(tmp / "store"), key_file, tmp)
    registry.add("qa-accuracy-stopping", w.address, str(tmp / "store"), str(key_file))
    other = Kernel()
    runs: dict[int, list[tuple[str, str, float]]] = {0: [], 1: []}

    def keep_running(k: int, book: Notebook) -> None:
        while len(runs[k]) < 40:
            started = time.monotonic()
            result = book.run("again", timeout=30)
            runs[k].append((result.status, result.traceback_text.strip(), time.monotonic() - started))
            if "unreachable" in result.traceback_text:  # the worker is gone: nothing more to learn
                return

    try:
        books = [Notebook(k, tmp_path / f"again{i}.ipynb") for i, k in enumerate((kernel, other))]
        for book in books:
            book.add("again", "import time\ntime.sleep(0.05)\nn = 1", remote="qa-accuracy-stopping", counted=False).use()
        threads = [threading.Thread(target=keep_running, args=(k, book)) for k, book in enumerate(books)]
        for thread in threads:
            thread.start()
        assert wait_until(lambda: all(len(r) >= 2 for r in runs.values()), timeout=30), runs
        w.process.send_signal(signal.SIGTERM)
        assert w.process.wait(10) == 0
        for thread in threads:
            thread.join(60)
    finally:
        other.shutdown()
        registry.remove("qa-accuracy-stopping")
        w.stop()
    for k, done in runs.items():
        assert done[-1][0] == "error" and "unreachable" in done[-1][1], done
        for status, text, took in done:
            assert took < ACCEPT_TIMEOUT + HEARTBEAT_TIMEOUT + 2, done
            if status == "ok":
                continue
            assert len(text.splitlines()) == 1 and text.startswith("RemoteError: worker 'qa-accuracy-stopping'"), text
            assert any(why in text for why in ("stopped (SIGTERM)", "unreachable")), text
    log = w.log_path.read_text()
    assert "Traceback" not in log, log
