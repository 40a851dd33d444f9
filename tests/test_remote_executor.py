"""run_remote against real worker processes on loopback: results, errors, and every fault."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from linkkernel.errors import LinkError
from linkkernel.namespaces import dump, load
from linkkernel.remote import executor, registry
from linkkernel.remote.client import Client, RemoteError
from linkkernel.remote.protocol import read_key
from linkkernel.remote.storage import Store, StorageError, file_map_of
from linkkernel.tasks import ComponentTask
from remote_support import S3_ENV, MotoServer, WorkerProcess, closed_port, kernel_env, owned, pid_alive, remote_fixtures, wait_until


tmp, key_file, worker, _, _ = remote_fixtures("executor", "w1", slots=2)


def task(code: str, live: bool = False, name: str = "train", **inputs) -> ComponentTask:
    return ComponentTask(name, code, {k: dump(k, v) for k, v in inputs.items()}, live)


def test_results_come_back_as_blobs_with_outputs(worker) -> None:
    code = (
        "from IPython.display import display, HTML\n"
        "x.append(4)\n"
        "y = np.asarray(x) * 2\n"
        "del gone\n"
        "print('hello from', 'the worker')\n"
        "display(HTML('<b>hi</b>'))\n"
        "y.sum()\n"
    )
    result = executor.run_remote(None, task(code, np=np, x=[1, 2, 3], gone=1, kept="same"), "w1")
    assert result.error is None
    assert sorted(result.bound) == ["HTML", "display", "x", "y"]
    assert load(result.bound["x"]) == [1, 2, 3, 4]
    assert np.array_equal(load(result.bound["y"]), [2, 4, 6, 8])
    assert result.deleted == ("gone",)
    kinds = [o["output_type"] for o in result.outputs]
    assert kinds == ["stream", "display_data", "execute_result"]
    assert result.outputs[0]["text"] == "hello from the worker\n"
    assert result.outputs[1]["data"]["text/html"] == "<b>hi</b>"
    assert result.outputs[2]["data"]["text/plain"] == "np.int64(20)"


def test_user_error_has_component_frames_and_library_frames_only(worker) -> None:
    code = "import json\n\ndef parse(s):\n    return json.loads(s)\n\nparse('{')\n"
    result = executor.run_remote(None, task(code, name="clean"), "w1")
    assert result.bound == {}
    error = result.error
    assert (error.ename, error.evalue) == ("JSONDecodeError", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error.traceback))
    assert "Component clean, line 6" in text and "Component clean, line 4" in text
    assert "json/decoder.py" in text  # the library the user called stays, as in Jupyter
    for machinery in ("linkkernel", "taskprocess", "ipykernel_", "IPython/core", "interactiveshell"):
        assert machinery not in text


def test_each_task_runs_in_a_fresh_process_that_exits(worker) -> None:
    pids = [load(executor.run_remote(None, task("import os\npid = os.getpid()"), "w1").bound["pid"]) for _ in range(2)]
    assert pids[0] != pids[1] and worker.process.pid not in pids
    assert wait_until(lambda: not any(map(pid_alive, pids)))
    # One log line per task, written once the worker has seen the process end.
    assert wait_until(lambda: worker.log().count("'train' from client") >= 2)


def test_unchanged_inputs_are_uploaded_once(worker) -> None:
    array = np.arange(100_000.0)
    store = executor.store_for(registry.get("w1"))
    before = store.bytes_uploaded
    for _ in range(2):
        result = executor.run_remote(None, task("total = float(a.sum())", a=array), "w1")
        assert load(result.bound["total"]) == float(array.sum())
    assert store.bytes_uploaded - before == dump("a", array).size + 0


def test_unreachable_worker_is_one_line_within_seconds(tmp, key_file) -> None:
    registry.add("nobody", f"tcp://127.0.0.1:{closed_port()}", str(tmp / "store"), str(key_file))
    started = time.monotonic()
    with pytest.raises(RemoteError, match=r"worker 'nobody' at tcp://127\.0\.0\.1:\d+ is unreachable"):
        executor.run_remote(None, task("x = 1"), "nobody")
    assert time.monotonic() - started < 15


def test_worker_killed_mid_task_is_reported_and_takes_the_task_with_it(tmp, key_file) -> None:
    w = WorkerProcess(str(tmp / "store"), key_file, tmp)
    registry.add("doomed", w.address, str(tmp / "store"), str(key_file))
    pid_file = tmp / "doomed.pid"
    code = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)"
    killer = threading.Thread(target=lambda: wait_until(pid_file.exists) and w.kill())
    killer.start()
    try:
        with pytest.raises(RemoteError, match="worker 'doomed' .* died mid-task: no heartbeat"):
            executor.run_remote(None, task(code), "doomed")
    finally:
        killer.join()
        w.stop()
    assert wait_until(lambda: not pid_alive(int(pid_file.read_text())))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import ctypes\nctypes.string_at(0)", "task process crashed with SIGSEGV"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "task process crashed with SIGKILL (killed from outside: the out-of-memory killer"),
        ("import os\nos._exit(3)", "task process exited with status 3"),
    ],
)
def test_task_process_crash_names_the_signal_and_the_worker_survives(worker, code, expected) -> None:
    with pytest.raises(RemoteError) as info:
        executor.run_remote(None, task(code), "w1")
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert executor.run_remote(None, task("ok = True"), "w1").bound


def test_unpicklable_output_names_variable_and_type(worker) -> None:
    with pytest.raises(RemoteError, match=r"output 'lock' \(_thread\.lock\) cannot be pickled"):
        executor.run_remote(None, task("import threading\nlock = threading.Lock()"), "w1")


def test_version_skew_is_one_clear_error(worker, monkeypatch) -> None:
    from linkkernel.remote import worker as worker_module

    real = worker_module.versions()
    monkeypatch.setattr(worker_module, "versions", lambda: {**real, "python": "3.99.0", "cloudpickle": "0.1"})
    refusal = (
        f"refused the task: version mismatch: worker has Python {real['python']} / cloudpickle {real['cloudpickle']}, "
        "kernel has Python 3.99.0 / cloudpickle 0.1"
    )
    with pytest.raises(RemoteError, match=re.escape(refusal)):
        executor.run_remote(None, task("x = 1"), "w1")


def test_tampered_input_blob_fails_the_task_not_the_worker(worker, tmp, key_file) -> None:
    blob = dump("data", np.arange(50_000.0))
    Store(str(tmp / "store"), read_key(key_file)).put(blob)
    (path,) = (tmp / "store").rglob(blob.digest)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RemoteError, match="failed verification"):
        executor.run_remote(None, ComponentTask("t", "n = len(data)", {"data": blob}, False), "w1")
    rtt, pong = executor.client_for(registry.get("w1")).ping()
    assert worker.alive() and pong["versions"]["python"]


def test_input_tampered_after_the_worker_verified_it_is_refused(worker, tmp) -> None:
    """The worker remembers verified files between tasks only while they provably stay the same."""
    data = np.arange(300_000.0)
    first = executor.run_remote(None, task("total = float(data.sum())", data=data), "w1")
    assert load(first.bound["total"]) == float(data.sum())
    blob = dump("data", data)
    (path,) = (tmp / "store").rglob(blob.digest)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(np.float64(1e9).tobytes())
    path.chmod(0o444)
    with pytest.raises(RemoteError, match="failed verification"):
        executor.run_remote(None, task("total = float(data.sum())", data=data), "w1")


def test_files_the_worker_wrote_are_mapped_without_hashing_them_again(worker, monkeypatch) -> None:
    """The worker vouches, in its signed reply, for the output files its task wrote and hashed."""
    from linkkernel.remote import storage

    hashed = []
    real_digest = storage._digest
    monkeypatch.setattr(storage, "_digest", lambda stream, buffers: hashed.append(1) or real_digest(stream, buffers))
    data = np.random.default_rng().random(200_000)  # content no earlier test stored
    result = executor.run_remote(None, task("doubled = data * 2", data=data), "w1")
    assert np.array_equal(load(result.bound["doubled"]), data * 2)
    assert storage.file_map_of(result.bound["doubled"]) is not None and hashed == []


def test_each_task_draws_its_own_random_numbers(tmp, key_file) -> None:
    """Task processes are copies of one parent; `random` and numpy's global generator (here
    preloaded, so imported before the copy) must not repeat the same draws in every task."""
    w = WorkerProcess(str(tmp / "store"), key_file, tmp, "--preload", "numpy.random")
    try:
        registry.add("seeded", w.address, str(tmp / "store"), str(key_file))
        code = "import random, numpy\ndraws = (random.random(), float(numpy.random.rand()))"
        draws = [load(executor.run_remote(None, task(code), "seeded").bound["draws"]) for _ in range(3)]
        assert len({d[0] for d in draws}) == 3 and len({d[1] for d in draws}) == 3
    finally:
        w.stop()


def test_inputs_and_outputs_travel_through_the_storage(worker, tmp) -> None:
    """SPEC §5: the input namespace and the outputs go through the fsspec storage, small ones too."""
    before = {p.name for p in (tmp / "store").rglob("*") if p.is_file()}
    marker = uuid.uuid4().hex  # content no earlier test stored
    inputs = {"x": dump("x", [marker])}
    result = executor.run_remote(None, ComponentTask("t", "y = x + [4]", inputs, live=False), "w1")
    assert load(result.bound["y"]) == [marker, 4]
    stored = {p.name for p in (tmp / "store").rglob("*") if p.is_file()} - before
    assert {inputs["x"].digest, result.bound["y"].digest} <= stored


def test_kernel_side_storage_unreachable_is_one_line(tmp, key_file, worker, monkeypatch) -> None:
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    registry.add("s3down", worker.address, "s3://bucket/p", str(key_file), {"endpoint_url": f"http://127.0.0.1:{closed_port()}"})
    with pytest.raises(StorageError, match=r"^storage s3://bucket/p is unreachable"):
        executor.run_remote(None, task("y = x", x=np.arange(20_000.0)), "s3down")


def test_worker_refuses_to_start_on_unreachable_storage(tmp, key_file) -> None:
    argv = [sys.executable, "-m", "linkkernel.cli", "worker", "--listen", "tcp://127.0.0.1:*", "--storage", "s3://bucket/p",
            "--storage-option", f"endpoint_url=http://127.0.0.1:{closed_port()}", "--key-file", str(key_file)]
    done = subprocess.run(argv, capture_output=True, text=True, env=kernel_env(**S3_ENV), timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("linkkernel worker: storage s3://bucket/p is unreachable")


def _clients(alias_entry, n: int) -> list[Client]:
    return [Client(f"c{i}", alias_entry.address, read_key(alias_entry.key_file)) for i in range(n)]


def _body(code: str, name: str) -> dict:
    from linkkernel.remote.worker import versions

    return {"task": uuid.uuid4().hex, "name": name, "code": code, "inputs": {}, "versions": versions()}


def test_slots_run_in_parallel_and_the_rest_queue_in_order(worker, tmp) -> None:
    """Two slots, four tasks. Each notes its start. a waits for b (so they overlap), b waits
    for c (which can only start in a's freed slot), so d must start last: queued in order."""
    order = tmp / "order.txt"

    def wait_for(name: str) -> str:
        return (
            f"for _ in range(400):\n    if {name!r} in open({str(order)!r}).read().split(): break\n"
            f"    time.sleep(0.05)\nelse:\n    raise RuntimeError('{name} never ran alongside')\n"
        )

    def started(name: str) -> str:
        return f"import time\nopen({str(order)!r}, 'a').write({name!r} + '\\n')\n"

    codes = {"a": started("a") + wait_for("b"), "b": started("b") + wait_for("c"), "c": started("c"), "d": started("d")}
    clients = _clients(registry.get("w1"), 4)
    bodies = {name: _body(code, name) for name, code in codes.items()}
    for client, (name, body) in zip(clients, bodies.items()):
        client.submit(body)
    results = {}
    threads = [
        threading.Thread(target=lambda c=c, n=n: results.__setitem__(n, c.follow(bodies[n]["task"], lambda m: None)))
        for c, n in zip(clients, bodies)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in clients:
        c.close()
    assert all(results[n].body["result"].get("error") is None for n in bodies), results
    lines = order.read_text().split()
    assert sorted(lines[:2]) == ["a", "b"] and lines[2:] == ["c", "d"]


def test_cancel_kills_the_task_process(worker, tmp) -> None:
    pid_file = tmp / "cancel.pid"
    (client,) = _clients(registry.get("w1"), 1)
    body = _body(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)", "slow")
    client.submit(body)
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text())  # created, then written
    pid = int(pid_file.read_text())
    assert client.cancel(body["task"])
    assert wait_until(lambda: not pid_alive(pid))
    worker.wait_for_log("'slow' from client")
    assert "cancelled, task process killed" in worker.log()
    client.close()


def test_cancelling_a_task_the_worker_no_longer_runs_is_answered_at_once(worker) -> None:
    """An interrupt that races the task's end must not leave the kernel waiting for a reply."""
    done = executor.run_remote(None, task("x = 1"), "w1")
    assert load(done.bound["x"]) == 1
    assert executor.client_for(registry.get("w1")).cancel(uuid.uuid4().hex)


def test_unregistered_alias_is_refused(worker) -> None:
    with pytest.raises(LinkError, match="remote worker 'ghost' is not registered"):
        executor.run_remote(None, task("x = 1"), "ghost")


@pytest.fixture(scope="module")
def moto():
    yield from MotoServer.serving("lk-remote")


@contextlib.contextmanager
def s3_worker(moto, tmp, key_file, monkeypatch, alias: str, prefix: str):
    """A worker on `s3://lk-remote/PREFIX` registered as `alias`; this process has its credentials."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    url = f"s3://lk-remote/{prefix}"
    w = WorkerProcess(url, key_file, tmp, "--storage-option", f"endpoint_url={moto.endpoint}", env=S3_ENV)
    try:
        registry.add(alias, w.address, url, str(key_file), {"endpoint_url": moto.endpoint})
        yield w
    finally:
        w.stop()


def test_remote_run_through_s3(moto, tmp, key_file, monkeypatch) -> None:
    with s3_worker(moto, tmp, key_file, monkeypatch, "s3w", "runs"):
        result = executor.run_remote(None, task("b = a[::-1].copy()", a=np.arange(10_000.0)), "s3w")
        assert np.array_equal(load(result.bound["b"]), np.arange(10_000.0)[::-1])


def test_re_run_through_s3_maps_its_input_and_output_from_the_mirror(moto, tmp, key_file, monkeypatch) -> None:
    """Worker and kernel share this user's mirror here; each keeps what it read from S3."""
    with s3_worker(moto, tmp, key_file, monkeypatch, "s3m", "mirrored"):
        a = np.arange(200_000.0) + uuid.uuid4().int % 1000  # content no earlier test stored
        code = "b = a[::-1].copy()\nmaps = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'remote-blobs' in l})"
        run = task(code, a=a)
        first = executor.run_remote(None, run, "s3m")
        store = executor.store_for(registry.get("s3m"))
        digest_a, digest_b = run.inputs["a"].digest, first.bound["b"].digest
        mirrored = {p.name for p in Path(store.mirror.root).rglob("*") if p.is_file()}
        assert {digest_a, digest_b} <= mirrored
        store.fs.rm(store._path(digest_a))  # from now on, the task could not download its input
        again = executor.run_remote(None, run, "s3m")
        assert np.array_equal(owned(again.bound["b"]), a[::-1])
        assert file_map_of(again.bound["b"]) is not None
        assert [Path(p).name for p in load(again.bound["maps"])] == [digest_a]


def test_curve_encrypted_worker_with_pinned_key(tmp, key_file) -> None:
    curve_file = tmp / "curve.key"
    w = WorkerProcess(str(tmp / "store"), key_file, tmp, "--curve-key-file", str(curve_file))
    try:
        public = shlex.split(re.search(r"--server-key\): (.*)", w.log()).group(1))[0]
        registry.add("curve", w.address, str(tmp / "store"), str(key_file), server_key=public)
        assert load(executor.run_remote(None, task("z = 7"), "curve").bound["z"]) == 7
        registry.add("curve-wrong", w.address, str(tmp / "store"), str(key_file), server_key="A" * 40)
        with pytest.raises(RemoteError, match="unreachable"):
            executor.run_remote(None, task("z = 7"), "curve-wrong")
    finally:
        w.stop()


def test_output_of_subprocesses_and_c_code_reaches_the_outputs(worker) -> None:
    code = "import os, subprocess\nos.system('echo from-os-system')\nsubprocess.run(['sh', '-c', 'echo from-sh >&2'])\nos.write(1, b'raw-fd\\n')"
    result = executor.run_remote(None, task(code), "w1")
    text = {name: "".join(o["text"] for o in result.outputs if o["output_type"] == "stream" and o["name"] == name) for name in ("stdout", "stderr")}
    assert "from-os-system" in text["stdout"] and "raw-fd" in text["stdout"]
    assert "from-sh" in text["stderr"]


def test_ipython_syntax_works_as_in_a_local_cell(worker) -> None:
    code = "lines = !echo one; echo two\n%time total = 1 + 1\nimport asyncio\nawait asyncio.sleep(0)\nafter_await = True"
    result = executor.run_remote(None, task(code), "w1")
    assert result.error is None, result.error
    assert list(load(result.bound["lines"])) == ["one", "two"]
    assert load(result.bound["total"]) == 2 and load(result.bound["after_await"]) is True
    assert "Wall time" in "".join(o.get("text", "") for o in result.outputs)


def _below_the_label(traceback: list[str]) -> str:
    """A syntax error's traceback without colours or its first line (`Cell In[1], line 1`)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(traceback)).split("\n", 1)[1]


def test_syntax_error_is_reported_like_jupyter(worker, stock) -> None:
    # like stock ipykernel on the same Python: 3.13 names an incomplete cell's _IncompleteInputError
    result = executor.run_remote(None, task("x = (1,\n"), "w1")
    [expected] = stock.execute("x = (1,\n").errors
    assert result.error.ename == expected["ename"]
    assert _below_the_label(result.error.traceback) == _below_the_label(expected["traceback"])
    assert "linkkernel" not in "\n".join(result.error.traceback)


def test_updated_display_is_stored_once_with_its_last_content(worker) -> None:
    code = "from IPython.display import display\nh = display('step 1', display_id=True)\nh.update('step 2')\ndel h"
    result = executor.run_remote(None, task(code), "w1")
    displays = [o for o in result.outputs if o["output_type"] == "display_data"]
    assert len(displays) == 1 and displays[0]["data"]["text/plain"] == "'step 2'"
    assert "transient" not in displays[0]


def test_two_threads_of_one_kernel_use_the_same_worker_at_once(worker) -> None:
    results = {}

    def run(n: int) -> None:
        results[n] = load(executor.run_remote(None, task(f"v = {n} * 10"), "w1").bound["v"])

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {0: 0, 1: 10, 2: 20}


def test_large_inputs_mutated_in_place_come_back_and_untouched_ones_do_not(worker) -> None:
    big = np.arange(1_000_000.0)  # 8 MB: mapped copy-on-write on the worker
    result = executor.run_remote(None, task("a[0] = -1.0\ntotal = float(b.sum())", a=big, b=big.copy()), "w1")
    assert sorted(result.bound) == ["a", "total"]
    assert load(result.bound["a"])[0] == -1.0 and load(result.bound["total"]) == float(big.sum())


def test_a_task_never_sees_names_of_an_earlier_task(worker) -> None:
    executor.run_remote(None, task("leak = 1"), "w1")
    assert load(executor.run_remote(None, task("seen = 'leak' in dir()"), "w1").bound["seen"]) is False


def test_storage_lost_by_the_worker_mid_session_is_one_line(tmp, key_file, monkeypatch) -> None:
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    server = MotoServer()
    server.make_bucket("lk-lost")
    url = "s3://lk-lost/runs"
    w = WorkerProcess(url, key_file, tmp, "--storage-option", f"endpoint_url={server.endpoint}", env=S3_ENV)
    try:
        registry.add("lost", w.address, url, str(key_file), {"endpoint_url": server.endpoint})
        inputs = {"x": dump("x", np.arange(20_000.0))}
        assert executor.run_remote(None, ComponentTask("t", "y = len(x)", inputs, False), "lost").bound
        server.stop()  # the kernel already stored x, so only the worker finds the store gone
        with pytest.raises(RemoteError, match=r"worker 'lost' .*: storage s3://lk-lost/runs is unreachable"):
            executor.run_remote(None, ComponentTask("t", "y = len(x) + 1", inputs, False), "lost")
        assert w.alive()
    finally:
        w.stop()


def test_task_processes_are_reaped_not_left_as_zombies(worker) -> None:
    for _ in range(3):
        executor.run_remote(None, task("import os\npid = os.getpid()"), "w1")

    def zombies_under_the_worker() -> list[int]:
        family = {worker.process.pid}
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, ppid = f.read().rsplit(") ", 1)[1].split()[:2]
            except (FileNotFoundError, ValueError, IndexError):
                continue
            if int(ppid) in family:
                family.add(int(entry))
                if state == "Z":
                    found.append(int(entry))
        return found

    assert wait_until(lambda: not zombies_under_the_worker())
    assert worker.alive()


def test_worker_survives_the_loss_of_its_zygote(tmp, key_file) -> None:
    w = WorkerProcess(str(tmp / "store"), key_file, tmp)
    try:
        registry.add("nozygote", w.address, str(tmp / "store"), str(key_file))
        assert load(executor.run_remote(None, task("a = 1"), "nozygote").bound["a"]) == 1
        children = subprocess.run(["ps", "--ppid", str(w.process.pid), "-o", "pid="], capture_output=True, text=True).stdout.split()
        assert len(children) == 1  # the zygote; task processes are its children
        os.kill(int(children[0]), 9)
        w.wait_for_log("the zygote process died")
        for n in range(3):
            assert load(executor.run_remote(None, task(f"a = {n}"), "nozygote").bound["a"]) == n
    finally:
        w.stop()
