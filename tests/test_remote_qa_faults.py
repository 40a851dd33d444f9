"""A demanding user's faults around remote components, against real workers and kernels:
each is one clear error within seconds (or no error at all), the kernel stays usable and
the worker keeps serving (SPEC §4, §5)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from engine_support import Notebook, value
from linkkernel.namespaces import dump, load
from linkkernel.remote import executor, registry
from linkkernel.remote.client import ACCEPT_TIMEOUT, Client, RemoteError
from linkkernel.remote.protocol import read_key
from linkkernel.remote.storage import Store
from linkkernel.remote.worker import versions
from linkkernel.tasks import ComponentTask
from remote_support import (
    WorkerProcess,
    descendants,
    free_port,
    make_key,
    pid_alive,
    registered_worker,
    remote_fixtures,
    wait_until,
)
from support import REPO, Kernel, kernel_env


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


tmp, key_file, worker, kernel, nb = remote_fixtures("qa-remote-faults", "qa1")


def task(code: str, **inputs) -> ComponentTask:
    return ComponentTask("qa", code, {k: dump(k, v) for k, v in inputs.items()}, False)


def test_keyboardinterrupt_raised_by_a_remote_component_is_its_error_and_the_cell_ends(nb, worker) -> None:
    """Raised by the user's code on the worker, not an interrupt of this kernel: the cell used
    to get no execute_reply at all and stayed busy for good."""
    nb.add("src", "a = 1")
    nb.add("stopper", "b = a\nraise KeyboardInterrupt", "src", remote="qa1")
    nb.add("below", "c = b", "stopper")
    nb.use()
    direct = nb.run("stopper", timeout=30)
    assert direct.status == "error"
    assert direct.reply["content"]["ename"] == "KeyboardInterrupt"
    assert "linkkernel" not in plain(direct.traceback_text)
    assert nb.kernel.execute("1 + 1").status == "ok"
    child = nb.run("below", timeout=30)
    assert child.status == "error" and child.reply["content"]["ename"] == "KeyboardInterrupt"
    assert "below" not in nb.runs()
    assert nb.kernel.execute("1 + 1").status == "ok" and worker.alive()


def test_an_exception_whose_str_fails_shows_no_worker_frames(worker) -> None:
    code = "class Odd(Exception):\n    def __str__(self):\n        raise ValueError('no text')\n\nraise Odd()\n"
    result = executor.run_remote(None, task(code), "qa1")
    assert result.error is not None and result.error.ename == "Odd"
    text = plain("\n".join(result.error.traceback))
    assert "Component qa, line 5" in text
    for machinery in ("linkkernel", "taskprocess", "_showtraceback"):
        assert machinery not in text
    assert worker.alive()


def test_output_faster_than_the_kernel_reads_it_is_neither_lost_nor_taken_for_a_dead_worker(worker, key_file) -> None:
    """A kernel busy elsewhere (here: not reading for 2 s) must still get every line and the
    result: ZeroMQ used to drop messages past its high-water mark, the result included."""
    lines = 30_000
    client = Client("qa1", worker.address, read_key(key_file))
    body = {"task": uuid.uuid4().hex, "name": "chatty", "code": f"for i in range({lines}):\n    print(i)\ndone = 1",
            "inputs": {}, "versions": versions()}
    try:
        client.submit(body)
        time.sleep(2)
        received: list[str] = []
        done = client.follow(body["task"], lambda message: received.append(message["output"].get("text", "")))
    finally:
        client.close()
    assert done.body["result"]["bound"]
    assert "".join(received).split() == [str(i) for i in range(lines)]


def test_storage_deleted_between_runs_is_filled_again(worker, tmp) -> None:
    """The whole storage folder removed: the input the kernel took for stored is uploaded
    again and the task sent once more (it used to be one error, then a run that worked)."""
    data = np.arange(10_000.0)
    store = executor.store_for(registry.get("qa1"))
    assert load(executor.run_remote(None, task("total = float(data.sum())", data=data), "qa1").bound["total"]) == data.sum()
    shutil.rmtree(tmp / "store")
    before = store.bytes_uploaded
    assert load(executor.run_remote(None, task("total = float(data.sum()) + 1", data=data), "qa1").bound["total"]) == data.sum() + 1
    assert store.bytes_uploaded - before == dump("data", data).size
    assert load(executor.run_remote(None, task("total = float(data.sum()) + 2", data=data), "qa1").bound["total"]) == data.sum() + 2
    assert store.bytes_uploaded - before == dump("data", data).size  # stored again once, not for every run
    assert worker.alive()


def test_blobs_left_in_the_store_under_an_old_key_are_replaced_not_fatal(tmp) -> None:
    """The user changes the key of a worker and its kernels but keeps the storage: blobs
    signed with the old key must not fail every later task that needs them."""
    store = tmp / "rotated-store"
    old_key, new_key = make_key(tmp / "old-key"), make_key(tmp / "new-key")
    data = np.arange(5_000.0)
    Store(str(store), read_key(old_key)).put(dump("data", data))
    Store(str(store), read_key(old_key)).put(dump("out", float(data.sum())))  # what the task will bind
    w = WorkerProcess(str(store), new_key, tmp)
    try:
        registry.add("rotated", w.address, str(store), str(new_key))
        result = executor.run_remote(None, task("out = float(data.sum())", data=data), "rotated")
        assert result.error is None and load(result.bound["out"]) == data.sum()
    finally:
        w.stop()


def test_a_remote_output_that_cannot_be_rebuilt_in_the_kernel_is_one_line(nb, worker) -> None:
    """Unpickling runs the value's own code (here a __reduce__ that fails on load): the user's
    problem, named with the output, not a linkkernel internal error."""
    nb.add("maker", "class Brittle:\n    def __reduce__(self):\n        return (int, ('not a number',))\n\nthing = Brittle()", remote="qa1")
    nb.add("taker", "other = 1", "maker")
    nb.use()
    for name in ("maker", "taker"):
        result = nb.run(name, timeout=30)
        assert result.status == "error"
        assert result.reply["content"]["ename"] != "LinkKernelInternalError", result.traceback_text
        text = plain(result.traceback_text).strip()
        assert "'thing'" in text and "'maker'" in text and "ValueError" in text and len(text.splitlines()) == 1
    assert "taker" not in nb.runs()
    assert nb.kernel.execute("1 + 1").status == "ok"


def test_the_worker_log_tells_two_kernels_apart(worker, key_file) -> None:
    """One log line per task names its client; ZeroMQ's ids of successive clients share their
    first bytes, so a prefix named every kernel alike."""
    clients = [Client(f"k{i}", worker.address, read_key(key_file)) for i in range(2)]
    try:
        for client in clients:
            body = {"task": uuid.uuid4().hex, "name": "who", "code": "x = 1", "inputs": {}, "versions": versions()}
            client.submit(body)
            client.follow(body["task"], lambda message: None)
    finally:
        for client in clients:
            client.close()
    assert wait_until(lambda: worker.log().count("'who' from client") == 2)
    named = set(re.findall(r"'who' from client (\w+)", worker.log()))
    assert len(named) == 2, worker.log()


def test_a_key_changed_in_its_file_is_used_at_the_next_run(tmp) -> None:
    """The user writes a new key into the registered key file and restarts the worker with
    it: the kernel must sign and verify with the new key, not the one it read first."""
    key_path, store = make_key(tmp / "rekeyed"), tmp / "rekey-store"
    address = f"tcp://127.0.0.1:{free_port()}"
    data = np.arange(3_000.0)
    w = WorkerProcess(str(store), key_path, tmp, "--listen", address)
    try:
        registry.add("rekey", address, str(store), str(key_path))
        assert load(executor.run_remote(None, task("total = float(data.sum())", data=data), "rekey").bound["total"]) == data.sum()
    finally:
        w.stop()
    make_key(key_path)
    w = WorkerProcess(str(store), key_path, tmp, "--listen", address)
    try:
        result = executor.run_remote(None, task("total = float(data.sum()) + 1", data=data), "rekey")
        assert load(result.bound["total"]) == data.sum() + 1
    finally:
        w.stop()


@pytest.mark.parametrize(
    ("code", "ename"),
    [
        # A set goes as a list, as ipykernel sends it; an object no message can carry is an error.
        ("from IPython.display import display\ndisplay({'application/json': object()}, raw=True)", "ValueError"),
        ("import sys\nsys.stdout.write(b'bytes\\n')", "TypeError"),
    ],
)
def test_output_the_cell_cannot_carry_is_the_users_error_without_worker_frames(worker, code, ename) -> None:
    result = executor.run_remote(None, task(code + "\nafter = 1"), "qa1")
    assert result.error is not None and result.error.ename == ename
    text = plain("\n".join(result.error.traceback))
    assert "Component qa, line 2" in text
    for machinery in ("linkkernel", "taskprocess", "IPython/core"):
        assert machinery not in text, text


def test_a_task_that_replaces_sys_stdout_still_returns_its_results(worker) -> None:
    result = executor.run_remote(None, task("import sys\nprint('shown')\nsys.stdout = None\nprint('nowhere')\nkept = 1"), "qa1")
    assert result.error is None and load(result.bound["kept"]) == 1
    assert [o.get("text") for o in result.outputs] == ["shown\n"]


def test_an_exception_group_from_a_remote_component_is_its_error(worker) -> None:
    """IPython prints a group to stderr without calling _showtraceback: the task counted as a
    success and the temporary cell path reached the cell."""
    result = executor.run_remote(None, task("raise ExceptionGroup('several', [ValueError('one'), KeyError('two')])"), "qa1")
    assert result.error is not None and result.error.ename == "ExceptionGroup"
    text = plain("\n".join(result.error.traceback))
    assert "Component qa, line 1" in text and "ValueError: one" in text and "KeyError: 'two'" in text
    assert "ipykernel_" not in text and "linkkernel" not in text and not result.bound


def test_warnings_of_a_remote_component_name_it_not_a_temporary_file(worker) -> None:
    result = executor.run_remote(None, task("import warnings\nwarnings.warn('careful')\nx = 1"), "qa1")
    stderr = "".join(o.get("text", "") for o in result.outputs if o.get("name") == "stderr")
    assert "Component qa, line 2: UserWarning: careful" in stderr, stderr
    exited = executor.run_remote(None, task("import sys\nsys.exit(3)"), "qa1")
    assert exited.error is not None and exited.error.ename == "SystemExit"
    shown = "".join(o.get("text", "") for o in exited.outputs) + "\n".join(exited.error.traceback)
    for path in ("ipykernel_", "interactiveshell.py", "site-packages"):
        assert path not in shown, shown


@pytest.mark.parametrize("code", ["name = input('name? ')", "import getpass\nsecret = getpass.getpass()"])
def test_input_in_a_remote_component_says_why_it_cannot_be_answered(worker, code) -> None:
    result = executor.run_remote(None, task(code), "qa1")
    assert result.error is not None and result.error.ename == "StdinNotImplementedError"
    assert "remote component" in result.error.evalue
    text = plain("\n".join(result.error.traceback))
    assert "Component qa, line" in text and "linkkernel" not in text and "taskprocess" not in text, text


def test_an_error_in_a_thread_of_a_remote_component_names_the_component(worker) -> None:
    code = "import threading\ndef work():\n    1 / 0\nt = threading.Thread(target=work, name='helper')\nt.start()\nt.join()\ndel t"
    result = executor.run_remote(None, task(code), "qa1")
    stderr = plain("".join(o.get("text", "") for o in result.outputs if o.get("name") == "stderr"))
    assert "Exception in thread helper" in stderr and "Component qa, line 3" in stderr and "ZeroDivisionError" in stderr
    assert "ipykernel_" not in stderr and "threading.py" not in stderr, stderr


@pytest.mark.parametrize(
    "spawn",
    [
        "import os, time\nchild = os.fork()\nif child == 0:\n    time.sleep(60)\n    os._exit(0)",
        "import subprocess\nchild = subprocess.Popen(['sleep', '60']).pid",
    ],
    ids=["fork", "subprocess"],
)
def test_processes_a_task_leaves_behind_end_with_it(worker, tmp, spawn) -> None:
    """Memory and GPUs go back to the machine when a task ends (SPEC §5), also what its
    forked children or subprocesses hold; the task itself must still succeed at once."""
    result = executor.run_remote(None, task(spawn + "\nleft = child"), "qa1")
    assert result.error is None
    child = load(result.bound["left"])
    assert wait_until(lambda: not pid_alive(child)), f"process {child} outlived its task"
    assert worker.alive()


def test_a_local_store_without_permission_is_not_called_a_credentials_problem(tmp) -> None:
    """Tests run as root, where chmod cannot take permission away: the message itself is checked."""
    from linkkernel.remote.storage import describe_failure

    store = str(tmp / "read-only-store")
    line = describe_failure(store, PermissionError(13, "Permission denied", f"{store}/blobs/ab"))
    assert "credentials" not in line and "Permission denied" in line and "permission" in line.split(":")[0]
    s3 = describe_failure("s3://bucket/p", PermissionError(13, "Access Denied"))
    assert "refused the credentials" in s3


def test_a_kernel_stopped_while_waiting_for_an_answer_takes_it_once_it_runs_again(tmp, key_file) -> None:
    """A kernel stopped (SIGSTOP, a suspended laptop) right after asking a worker something
    finds the answer waiting once it runs again, instead of counting the time it did not run
    against the worker and calling it unreachable."""
    w = WorkerProcess(str(tmp / "store"), key_file, tmp)
    asking = None
    try:
        os.kill(w.process.pid, signal.SIGSTOP)  # so the answer cannot arrive before the kernel stops
        script = (
            "import sys\n"
            "from linkkernel.remote.client import Client\n"
            "from linkkernel.remote.protocol import read_key\n"
            f"client = Client('w', {w.address!r}, read_key({str(key_file)!r}))\n"
            "print('asking', flush=True)\n"
            "seconds, pong = client.ping()\n"
            "print('answered', pong['versions']['python'], flush=True)\n"
        )
        asking = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, cwd=REPO, env=kernel_env())
        assert asking.stdout.readline() == "asking\n"
        time.sleep(0.5)  # the ping is out; the asker is waiting for the pong
        os.kill(asking.pid, signal.SIGSTOP)
        os.kill(w.process.pid, signal.SIGCONT)
        time.sleep(ACCEPT_TIMEOUT + 1)
        os.kill(asking.pid, signal.SIGCONT)
        out, _ = asking.communicate(timeout=30)
        assert asking.returncode == 0, out
        assert out.startswith("answered 3."), out
    finally:
        os.kill(w.process.pid, signal.SIGCONT)
        if asking is not None and asking.poll() is None:
            os.kill(asking.pid, signal.SIGCONT)
            asking.kill()
        w.stop()


def test_kernels_and_task_processes_may_hold_as_many_files_as_the_system_allows(tmp, key_file) -> None:
    """Each large buffer held stays mapped from its open file: a kernel or a task started
    under the usual soft limit of 1024 raises it to the hard limit, as `ulimit -n` would."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        w = WorkerProcess(str(tmp / "store"), key_file, tmp)
        k = Kernel()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        registry.add("limits", w.address, str(tmp / "store"), str(key_file))
        limit = "import resource\nlimit = resource.getrlimit(resource.RLIMIT_NOFILE)"
        assert k.execute(limit + "\nprint(limit)").stdout == f"({hard}, {hard})\n"
        remote = Notebook(k, tmp / "limits.ipynb").add("far", limit, remote="limits").use().run("far")
        assert remote.status == "ok", remote.traceback_text
        assert k.execute("print(limit)").stdout == f"({hard}, {hard})\n"
    finally:
        k.shutdown()
        w.stop()


@pytest.mark.parametrize("code, ename, shown", [
    ("try:\n    raise ExceptionGroup('outer', [ValueError(1), ExceptionGroup('inner', [KeyError(2)])])\n"
     "except* KeyError:\n    raise RuntimeError('handled')", "ExceptionGroup", "RuntimeError: handled"),
    ("class Fancy(Exception):\n    def _render_traceback_(self):\n        raise TypeError('renderer broke')\n"
     "def fail():\n    raise Fancy('the real error')\nfail()", "Fancy", "Fancy: the real error"),
])
def test_errors_ipython_cannot_format_are_still_the_remote_components_error(worker, code, ename, shown) -> None:
    """As in the kernel (test_qa_run): an error raised in an except* handler made IPython's
    formatter fail into an AssertionError, and a user's _render_traceback_ that fails made
    the task pass for a success with IPython's raw traceback on stderr."""
    result = executor.run_remote(None, task(code), "qa1")
    assert result.error is not None and result.error.ename == ename
    text = plain("\n".join(result.error.traceback))
    assert shown in text and "Component qa" in text, text
    assert "ipykernel_" not in text and "linkkernel" not in text and "IPython" not in text
    assert all(output.get("name") != "stderr" for output in result.outputs), result.outputs


def test_an_endpoint_whose_port_holds_403_is_unreachable_not_refusing_credentials() -> None:
    """The error code 403 counts as a word only: a closed endpoint on port 41403 was called a
    refusal of the credentials, depending on the port the OS picked."""
    from linkkernel.remote.storage import describe_failure

    down = OSError('Could not connect to the endpoint URL: "http://127.0.0.1:41403/bucket/p/blobs/34/3490"')
    assert describe_failure("s3://bucket/p", down).startswith("storage s3://bucket/p is unreachable: ")
    refused = Exception("An error occurred (403) when calling the HeadObject operation: Forbidden")
    assert describe_failure("s3://bucket/p", refused).startswith("storage s3://bucket/p refused the credentials: ")


SPAM = "import sys\ndef spam(tag):\n    for _ in range(200):\n        sys.stdout.write(tag * 5000 + '\\n')\n"


@pytest.mark.parametrize(
    "start",
    [
        "import threading\nfor tag in 'abcd':\n    threading.Thread(target=spam, args=(tag,)).start()\n"
        "for t in threading.enumerate()[1:]:\n    t.join()\ndel t\n",
        "import multiprocessing\nctx = multiprocessing.get_context('fork')\n"
        "with ctx.Pool(4) as pool:\n    pool.map(spam, 'abcd')\ndel pool, ctx\n",
    ],
    ids=["threads", "forked processes"],
)
def test_long_lines_printed_at_once_by_a_tasks_threads_or_processes_arrive_whole(worker, start) -> None:
    """Each print is one frame to the worker: frames of several threads or forked processes
    written at once must not interleave, or the worker read garbage and stopped."""
    result = executor.run_remote(None, task(SPAM + start + "print('end')"), "qa1")
    assert result.error is None, result.error
    text = "".join(o.get("text", "") for o in result.outputs if o.get("name") == "stdout")
    assert text.endswith("end\n") and worker.alive()
    if "threads" in start:  # one write is one line; between processes, text may interleave
        assert sorted(text.splitlines()[:-1]) == sorted(tag * 5000 for tag in "abcd" for _ in range(200))
    assert {tag: text[:-4].count(tag) for tag in "abcd"} == dict.fromkeys("abcd", 200 * 5000)


@pytest.mark.timeout(60)  # the task is stopped, not left to sleep
@pytest.mark.parametrize(
    "garbage, then",
    [(b"\x05\x00\x00\x00\xff\xfe{]!", "import time\ntime.sleep(600)"), (b"\x00\x00\x10\x00{", "x = 1")],
    ids=["not a message", "a frame that never ends"],
)
def test_a_task_writing_garbage_into_its_own_pipe_fails_alone(worker, garbage, then) -> None:
    code = f"import os\nos.write(get_ipython().pipe.fd, {garbage!r})\n{then}"
    with pytest.raises(RemoteError, match="garbled"):
        executor.run_remote(None, task(code), "qa1")
    assert worker.alive()
    assert load(executor.run_remote(None, task("after = 2"), "qa1").bound["after"]) == 2


def test_a_worker_storage_emptied_between_runs_is_given_the_inputs_again(nb, worker, tmp) -> None:
    """The worker's storage was emptied (cleaned up, or the worker restarted on a new folder)
    while this kernel still took its inputs for stored there: the next run failed, naming a
    missing blob, and only the one after it uploaded again. The kernel now uploads what is
    missing and the run goes through, once."""
    nb.add("src", "a = list(range(100_000))")
    nb.add("refilled", "b = sum(a)", "src", remote="qa1")
    nb.use()
    assert nb.run("refilled", timeout=30).status == "ok" and nb.runs() == ["src", "refilled"]
    # A line per task once its process ended: the one that succeeded may come after the reply.
    def sent() -> int:
        return worker.log().count("'refilled' from client")

    def ok() -> int:
        return len(re.findall(r"'refilled' from client \w+: ok in", worker.log()))

    assert wait_until(lambda: ok() == 1)
    before = sent()
    shutil.rmtree(tmp / "store" / "blobs")
    again = nb.kernel.execute("%link run refilled --force", timeout=30)  # src again: the same value, the same digest
    assert again.status == "ok", again.traceback_text
    assert nb.runs() == ["src", "refilled"]
    assert value(nb.kernel, "b") == 4999950000
    assert wait_until(lambda: ok() == 2) and sent() == before + 2  # the task refused for its input, and the one sent again
    assert re.search(r"'refilled' from client \w+: failed after [\d.]+ s: input '\w+': storage .* has no blob", worker.log())


def test_a_worker_reading_another_storage_than_registered_is_one_error_not_a_loop(nb, key_file, tmp) -> None:
    """Inputs a worker cannot find though the kernel has just stored them: the worker reads
    another storage than the one registered for it. Sending the task again cannot help, so
    it is one error that says so, at once."""
    other = WorkerProcess(str(tmp / "elsewhere"), key_file, tmp)
    registry.add("qa-elsewhere", other.address, str(tmp / "registered"), str(key_file))
    try:
        nb.add("origin", "v = list(range(50))")
        nb.add("far", "w = len(v)", "origin", remote="qa-elsewhere")
        nb.use()
        result = nb.run("far", timeout=30)
        assert result.status == "error"
        assert "is this worker's --storage the storage registered for it?" in plain(result.traceback_text)
        assert "linkkernel/" not in plain(result.traceback_text)
        assert other.log().count("'far' from client") == 1
        again = nb.run("far", timeout=30)  # now the kernel takes the input for stored: one resend, no more
        assert again.status == "error" and other.log().count("'far' from client") == 3
    finally:
        registry.remove("qa-elsewhere")
        other.stop()


def test_a_worker_removes_blobs_no_task_used_for_keep_days(tmp, key_file) -> None:
    """Every input and output of every task stayed in the worker's storage for good: a worker
    serving for weeks filled its disk. Blobs nobody read or wrote for --keep-days go; a
    kernel that needs one again stores it again."""
    storage = tmp / "swept"
    store = Store(str(storage), read_key(key_file))
    old, recent = dump("data", np.arange(20_000.0)), dump("other", list(range(1000)))
    store.put(old)
    store.put(recent)
    path = lambda blob: storage / "blobs" / blob.digest[:2] / blob.digest  # noqa: E731
    stray = storage / "blobs" / old.digest[:2] / "notes.txt"
    stray.write_text("not a blob")
    long_ago = time.time() - 3 * 86400
    for aged in (path(old), stray):
        os.utime(aged, (long_ago, long_ago))
    w = WorkerProcess(str(storage), key_file, tmp, "--keep-days", "1")
    try:
        w.wait_for_log("removed 1 blob(s), 0.2 MB, that no task used for 1 day(s), from the storage")
        assert not path(old).exists() and path(recent).exists() and stray.exists()
        registry.add("swept", w.address, str(storage), str(key_file))
        result = executor.run_remote(None, ComponentTask("qa", "total = float(data.sum())", {"data": old}, False), "swept")
        assert load(result.bound["total"]) == float(np.arange(20_000.0).sum())
    finally:
        registry.remove("swept")
        w.stop()


@pytest.mark.parametrize("days", ["-1", "nan"])
def test_keep_days_must_be_a_number_of_days(tmp, key_file, days) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "linkkernel.cli", "worker", "--storage", str(tmp / "store"), "--key-file", str(key_file),
         "--keep-days", days], capture_output=True, text=True, timeout=30, env=kernel_env(),
    )
    assert done.returncode != 0
    assert done.stderr.strip() == "linkkernel worker: --keep-days must be 0 (keep every blob) or a positive number of days"


def test_a_finished_tasks_memory_goes_back_at_once_on_a_busy_machine(tmp_path) -> None:
    """SPEC §5: memory goes back to the machine when a task ends. The worker, its task
    processes and a busy loop share one CPU, as on a worker whose other slots are busy. A
    task process that lowered its priority to step aside for the result's relay took ~2 s to
    free 1 GB there (the busy loop got 98% of the CPU); at normal priority, ~0.06 s."""
    with registered_worker(tmp_path, "busy") as w:
        cpu = min(os.sched_getaffinity(0))
        wait_until(lambda: len(descendants(w.process.pid)) >= 3)  # zygote, two spares
        for pid in [w.process.pid, *descendants(w.process.pid)]:
            os.sched_setaffinity(pid, {cpu})
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            os.sched_setaffinity(busy.pid, {cpu})
            code = "import os, sys\nsys.held = bytearray(1 << 30)\npid = os.getpid()"
            result = executor.run_remote(None, ComponentTask("qa", code, {}, False), "busy")
            ended = time.monotonic()
            pid = load(result.bound["pid"])
            assert wait_until(lambda: not pid_alive(pid), timeout=10)
            assert time.monotonic() - ended < 1.0, f"{time.monotonic() - ended:.2f} s to give 1 GB back"
        finally:
            busy.kill()
            busy.wait()
