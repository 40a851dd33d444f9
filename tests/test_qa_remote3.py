"""QA round 3 of remote components, as a demanding user meets them: `linkkernel worker`,
`linkkernel workers` and `remote:ALIAS` cells against real workers and kernels on loopback.
Each bad input is one line, each fault a clear error, and remote cells behave as local ones
(SPEC §4, §5)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest

from engine_support import Notebook
from linkkernel.remote import registry
from remote_support import WorkerProcess, cli, closed_port, one_line_error, remote_fixtures, run_behind_another_kernels_task, wait_until
from support import kernel_env


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


tmp, key_file, worker, kernel, nb = remote_fixtures("qa-remote3", "qa3")


def _write_registry(entries: dict) -> None:
    path = registry.registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    path.chmod(0o600)


# --- linkkernel worker ------------------------------------------------------------------------


def test_worker_storage_fsspec_cannot_open_is_one_line(tmp, key_file) -> None:
    """fsspec backends fail in their own ways when opened (zip:// opens a file): a traceback
    into fsspec used to end the worker instead of a line naming the storage."""
    done = cli("worker", "--listen", "tcp://127.0.0.1:0", "--preload", "sys", "--storage", "zip://x",
               "--key-file", str(key_file), cwd=str(tmp))
    assert "zip://x" in one_line_error(done, "worker")


def test_worker_empty_storage_is_refused_not_the_current_directory(tmp, key_file) -> None:
    """`--storage "$STORE"` with STORE unset used to store blobs in whatever directory the
    worker was started from, where no kernel looks."""
    where = tmp / "cwd-empty"
    where.mkdir()
    done = cli("worker", "--listen", "tcp://127.0.0.1:0", "--preload", "sys", "--storage", "",
               "--key-file", str(key_file), cwd=str(where), timeout=20)
    assert "storage" in one_line_error(done, "worker")
    assert list(where.iterdir()) == []


def test_workers_add_empty_storage_is_refused(key_file) -> None:
    done = cli("workers", "add", "w", "--address", "tcp://127.0.0.1:5555", "--storage", "", "--key-file", str(key_file))
    assert "storage" in one_line_error(done, "workers")


# --- linkkernel workers -----------------------------------------------------------------------


def test_workers_add_refuses_a_server_key_that_is_not_z85(tmp, key_file) -> None:
    """40 characters but not Z85: registered, then every ping and run failed inside ZeroMQ."""
    done = cli("workers", "add", "w", "--address", "tcp://127.0.0.1:5555", "--storage", str(tmp / "store"),
               "--key-file", str(key_file), "--server-key", "_" * 40)
    assert "--server-key" in one_line_error(done, "workers")


@pytest.mark.parametrize("server_key", ["_" * 40, "short"])
def test_a_hand_edited_server_key_is_one_line_for_ping_and_in_the_kernel(tmp, key_file, kernel, server_key) -> None:
    before = registry.registry_path().read_bytes()
    entry = {"address": f"tcp://127.0.0.1:{closed_port()}", "storage": str(tmp / "store"),
             "key_file": str(key_file), "server_key": server_key}
    _write_registry({"workers": {"bad": entry}})
    try:
        line = one_line_error(cli("workers", "ping", "bad"), "workers")
        assert "bad" in line and "server" in line and "Traceback" not in line
        result = kernel.execute("x = 1", metadata={"tags": ["component:far", "remote:bad"]}, cell_id="far")
        assert result.status == "error"
        assert result.reply["content"]["ename"] in ("LinkError", "RemoteError"), result.traceback_text
        assert len(result.traceback_text.strip().splitlines()) == 1, result.traceback_text
    finally:
        registry.registry_path().write_bytes(before)
        registry.registry_path().chmod(0o600)


# --- remote:ALIAS components in the kernel ----------------------------------------------------


def test_a_function_of_a_remote_parent_failing_in_a_remote_child_names_the_parent(nb, worker) -> None:
    """As when either runs locally: `Component parent, line 2` with its source, not `Code
    from another kernel process` without a line of it."""
    nb.add("rparent", "def f(v):\n    return v / 0\n", remote="qa3", counted=False)
    nb.add("rchild", "z = f(3)", "rparent", remote="qa3", counted=False)
    nb.use()
    result = nb.run("rchild")
    assert result.reply["content"]["ename"] == "ZeroDivisionError"
    text = plain(result.traceback_text)
    assert "Component rparent, line 2, in f(v)" in text, text
    assert "return v / 0" in text and "another kernel process" not in text


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_worker_stopped_while_a_task_runs_says_so_in_the_cell_and_its_log(kernel, tmp, key_file, tmp_path, sig) -> None:
    """The cell used to wait for heartbeats and then call the worker dead; the log had no
    line for the task."""
    import signal
    import threading

    w = WorkerProcess(str(tmp / "store"), key_file, tmp)
    registry.add("qa3_stopped", w.address, str(tmp / "store"), str(key_file))
    started = tmp_path / "started"
    book = Notebook(kernel, tmp_path / "stopped.ipynb")
    book.add("long", f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(60)", remote="qa3_stopped", counted=False)
    book.use()
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=book.run("long")))
    runner.start()
    try:
        assert wait_until(started.exists, timeout=30)
        w.process.send_signal(getattr(signal, sig))
        assert w.process.wait(30) == 0
    finally:
        runner.join(60)
        w.stop()
    result = outcome["result"]
    assert result.status == "error" and result.reply["content"]["ename"] == "RemoteError"
    text = result.traceback_text.strip()
    assert len(text.splitlines()) == 1 and f"stopped ({sig})" in text, text
    log = w.log_path.read_text()
    assert "'long' from client" in log and f"failed: the worker was stopped ({sig})" in log, log


def test_logging_in_a_remote_component_is_as_in_a_local_one(nb, worker) -> None:
    """The task process inherited the worker's log handler at INFO: the user's logging.info
    reached the cell, every line prefixed `linkkernel worker:`, and so did the worker's own
    libraries (botocore's `Found credentials in environment variables.`)."""
    code = "import logging\nlogging.getLogger('lib').info('hidden')\nlogging.getLogger('lib').warning('careful')\n"
    nb.add("logs_here", code, counted=False)
    nb.add("logs_there", code, remote="qa3", counted=False)
    nb.use()
    here, there = nb.run("logs_here"), nb.run("logs_there")
    assert here.status == there.status == "ok", there.traceback_text
    assert "careful" in here.stderr and "hidden" not in here.stderr
    assert there.stderr == here.stderr


@pytest.fixture(scope="module")
def elsewhere(worker, tmp, key_file):
    """The qa3 worker registered with a storage it does not use: a slip in `workers add`."""
    registry.add("qa3_elsewhere", worker.address, str(tmp / "not-the-workers-store"), str(key_file))
    return "qa3_elsewhere"


@pytest.mark.parametrize("missing, named", [("outputs", "not-the-workers-store"), ("inputs", "'x'")])
def test_a_worker_registered_with_another_storage_is_named_as_the_cause_of_missing_blobs(nb, elsewhere, missing, named) -> None:
    """The cell said `has no blob … (deleted while in use?)` when the worker had just stored
    it in its own storage: the registry and the worker's --storage differ."""
    if missing == "outputs":
        nb.add("away", "y = 1", remote=elsewhere, counted=False)
    else:
        nb.add("here", "x = 41", counted=False).add("away", "y = x + 1", "here", remote=elsewhere, counted=False)
    result = nb.use().run("away")
    assert result.reply["content"]["ename"] == "RemoteError", result.traceback_text
    text = result.traceback_text.strip()
    assert len(text.splitlines()) == 1 and "--storage" in text and named in text, text


def test_worker_preload_of_a_module_that_fails_on_import_is_one_line(tmp, key_file) -> None:
    """A module raising while it is imported ended the worker with its traceback."""
    modules = tmp / "modules"
    modules.mkdir(exist_ok=True)
    (modules / "qa3_broken.py").write_text("raise RuntimeError('no GPU driver here')\n")
    done = subprocess.run(
        [sys.executable, "-m", "linkkernel.cli", "worker", "--listen", "tcp://127.0.0.1:0", "--storage", str(tmp / "store"),
         "--key-file", str(key_file), "--preload", "qa3_broken"],
        capture_output=True, text=True, timeout=30, cwd=str(modules),
        env=kernel_env(PYTHONPATH=f"{kernel_env()['PYTHONPATH']}:{modules}"),
    )
    line = one_line_error(done, "worker")
    assert line == "linkkernel worker: --preload qa3_broken: RuntimeError: no GPU driver here"


def test_a_cell_waiting_behind_another_kernels_task_says_so_until_it_starts(nb, worker, tmp_path) -> None:
    """With the worker's one slot taken by another kernel, the cell showed nothing at all
    while it waited, as if it hung."""
    result = run_behind_another_kernels_task(nb, "qa3", "behind", "print('ran')", tmp_path)
    assert result.status == "ok" and result.stdout == "ran\n", result.traceback_text
    shown = [m for m in result.messages if m["msg_type"] in ("display_data", "update_display_data", "clear_output")]
    # The first thing the cell shows, the line goes with clear_output (qa-remote4: an emptied
    # display stayed in the saved notebook as an empty output).
    assert [m["msg_type"] for m in shown] == ["display_data", "clear_output"], shown
    line = shown[0]["content"]
    assert line["data"] == {"text/plain": "linkkernel: waiting for worker 'qa3': 1 task(s) ahead in its queue"}
    order = [m["msg_type"] for m in result.messages]
    assert order.index("clear_output") < order.index("stream")  # cleared once the task started


def test_an_upload_to_s3_interrupted_midway_leaves_no_truncated_blob(tmp, monkeypatch) -> None:
    """Closing the s3fs file on the interrupt completed the multipart upload: a truncated
    blob stood at its content address, later puts took it for stored, and every task that
    needed the input failed verification ('tampered or corrupt') for good."""
    import os
    import signal
    import threading
    import time

    import boto3
    import numpy as np

    from linkkernel.namespaces import dump
    from linkkernel.remote.storage import Store
    from remote_support import S3_ENV, MotoServer

    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    server = next(MotoServer.serving("qa3-interrupted"))
    try:
        options = {"endpoint_url": server.endpoint}
        blob = dump("big", [np.random.default_rng(3).random(4_000_000) for _ in range(12)])  # 12 x 32 MB
        s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
        uploading, finished = threading.Event(), threading.Event()

        def interrupt_once_uploading() -> None:
            while not finished.is_set():
                if s3.list_multipart_uploads(Bucket="qa3-interrupted").get("Uploads"):
                    uploading.set()
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                time.sleep(0.005)

        watcher = threading.Thread(target=interrupt_once_uploading)
        watcher.start()
        try:
            Store("s3://qa3-interrupted/p", b"k" * 32, options).put(blob)
            finished.set()
            watcher.join()
            time.sleep(0.5)  # an interrupt sent just as the upload ended lands here
        except KeyboardInterrupt:
            pass
        finished.set()
        watcher.join()
        assert uploading.is_set()
        fresh = Store("s3://qa3-interrupted/p", b"k" * 32, options)
        assert fresh.put(blob) is True  # nothing there was taken for the blob
        assert fresh.get(blob.digest).digest == blob.digest
    finally:
        server.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_a_worker_on_the_ipv6_loopback_listens_and_answers(tmp, key_file) -> None:
    """`[::1]` is a loopback host the worker knows, yet binding it failed with `No such
    device`: ZeroMQ sockets use IPv6 only when told to."""
    w = WorkerProcess(str(tmp / "store"), key_file, tmp, "--listen", "tcp://[::1]:*")
    try:
        assert w.address.startswith("tcp://[::1]:")
        registry.add("qa3_v6", w.address, str(tmp / "store"), str(key_file))
        assert registry.ping("qa3_v6").startswith(f"qa3_v6 ({w.address}): round trip")
    finally:
        w.stop()
