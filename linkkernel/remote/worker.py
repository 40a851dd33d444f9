"""`linkkernel worker`: serve remote components to any number of kernels (SPEC §5).

One process owns the socket and a queue. Each task runs in a fresh process, so memory and
GPU go back to the machine when the task ends, yet a task starts in milliseconds: task
processes are forked, ahead of time, by a zygote, a copy of the worker made after it imported
IPython, cloudpickle, fsspec and the --preload modules (none of which may touch a GPU). At
most `--slots` tasks run at once; the rest wait in arrival order. While a kernel has work
here it gets a heartbeat twice a second, so a dead worker is noticed within seconds; the
same heartbeat tells the worker when a kernel is gone (its connection closed, or dropped by
ZeroMQ after the kernel stopped answering), and that kernel's tasks are killed. A task
process that dies is reported with the signal that killed it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import shlex
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from linkkernel.errors import LinkError
from linkkernel.remote.zygote import (
    Spare,
    Zygote,
    describe_exit,
    discard,
    fork_spare,
    read_exactly,
    set_parent_death_signal,
    set_policy,
)

if TYPE_CHECKING:
    from linkkernel.remote.storage import Store

HEARTBEAT_INTERVAL = 0.5
# Task processes kept ready, forked ahead of time by the zygote. The zygote runs in the
# background (`zygote.set_policy`), so forking and warming a spare (~2 ms of CPU here) only
# uses CPU the worker, the running task and the kernel do not need.
SPARES = 2
# A spare used is made again once the worker has heard nothing for this long, or at once when
# none is left. Made while a task runs, it held up the worker relaying the result and the
# kernel reading it (a 50 ms-paced trivial task: 3.9 -> 2.6 ms); a kernel running components
# back to back sends its next task within ~1 ms of a result, and finds the other spare.
QUIET = 0.005
# How often a local storage is swept for blobs no task has used for --keep-days.
SWEEP_INTERVAL = 3600.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
log = logging.getLogger("linkkernel.worker")


def versions() -> dict[str, str]:
    """What a pickle depends on, and what `linkkernel workers ping` shows."""
    import cloudpickle
    import fsspec
    import zmq

    from linkkernel import __version__

    found = {
        "python": platform.python_version(),
        "linkkernel": __version__,
        "cloudpickle": cloudpickle.__version__,
        "pyzmq": zmq.__version__,
        "fsspec": fsspec.__version__,
    }
    for optional in ("s3fs", "numpy"):
        module = sys.modules.get(optional)
        if module is not None:
            found[optional] = getattr(module, "__version__", "?")
    return found


def skew(mine: dict[str, str], theirs: dict[str, str]) -> str | None:
    """Why pickles cannot cross between two sides, or None when they can."""
    python_mine, python_theirs = mine["python"].rsplit(".", 1)[0], str(theirs.get("python", "?")).rsplit(".", 1)[0]
    if python_mine != python_theirs or mine["cloudpickle"] != theirs.get("cloudpickle"):
        return (
            f"version mismatch: worker has Python {mine['python']} / cloudpickle {mine['cloudpickle']}, "
            f"kernel has Python {theirs.get('python')} / cloudpickle {theirs.get('cloudpickle')}; "
            "pickled values only cross between the same Python minor version and cloudpickle version"
        )
    return None


@dataclass
class Task:
    """A submitted task: queued, then running in its own process until that process exits."""

    id: str
    client: bytes
    body: dict[str, Any]
    queued_at: float = field(default_factory=time.monotonic)
    pid: int = 0
    fd: int = -1
    pidfd: int = -1
    streams: dict[int, str] = field(default_factory=dict)
    started_at: float = 0.0
    buffer: bytearray = field(default_factory=bytearray)
    outcome: dict[str, Any] | None = None
    cancelled: bool = False
    eof: bool = False
    waited: bool = False  # its kernel was told it waits for a slot, and is told when it starts
    garbled: bool = False  # it sent what is not a message: the rest it sends is dropped
    writing: list[str] = field(default_factory=list)  # its temporary blob files, as it named them

    def watched(self) -> list[int]:
        return [*([] if self.eof else [self.fd]), *self.streams, self.pidfd]


class Sweeper:
    """Removes the blobs of a local storage that no task has used for `keep_days`, one blob
    folder per idle round of the worker loop, a sweep an hour. Every input and output of
    every task stays in the storage so unchanged inputs are never uploaded twice; without
    this, a worker serving for weeks filled its disk with values nobody reads any more."""

    def __init__(self, store, keep_days: float) -> None:
        self.store = store
        self.unused_for = keep_days * 86400
        self.folders: list[str] = []
        self.next_sweep = 0.0
        self.removed, self.freed = 0, 0

    def step(self) -> None:
        if not self.folders:
            if time.monotonic() < self.next_sweep:
                return
            self.next_sweep = time.monotonic() + SWEEP_INTERVAL
            self.folders = self.store.blob_folders()
            return
        removed, freed = self.store.remove_unused(self.folders.pop(), self.unused_for)
        self.removed, self.freed = self.removed + removed, self.freed + freed
        if not self.folders and self.removed:
            log.info(
                "removed %d blob(s), %.1f MB, that no task used for %g day(s), from the storage",
                self.removed, self.freed / 1e6, self.unused_for / 86400,
            )
            self.removed, self.freed = 0, 0


class Worker:
    """The socket loop: receive signed requests, queue, fork, relay outputs, report."""

    def __init__(
        self,
        listen: str,
        store_url: str,
        store_options: dict[str, Any],
        key: bytes,
        slots: int = 1,
        curve_secret: bytes | None = None,
        keep_days: float = 0,
    ) -> None:
        import zmq

        from linkkernel.remote import taskprocess
        from linkkernel.remote.protocol import KERNEL_PING_INTERVAL, KERNEL_SILENCE, Signer, is_ipv6
        from linkkernel.remote.storage import Store

        self.slots = slots
        self.signer = Signer(key)
        self.store = Store(store_url, key, store_options)
        self.store.check()
        self.store_url, self.store_options, self.key = store_url, store_options, key
        self.sweeper = Sweeper(self.store, keep_days) if keep_days > 0 and self.store.local else None
        self.shell = taskprocess.preload_shell()
        self.versions = versions()
        # Forked before ZeroMQ starts its threads, so task processes never inherit them.
        self.zygote = Zygote(self._become_task) if hasattr(socket, "recv_fds") and hasattr(os, "pidfd_open") else None
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        # A ROUTER silently drops what exceeds a peer's high-water mark: a task printing fast
        # to a busy kernel lost lines, then its result, and the kernel reported a dead worker.
        # Queue instead; the kernel reads everything in order.
        self.socket.sndhwm = 0
        # Sending to a kernel that is gone (killed, restarted, its socket closed) fails
        # instead of vanishing, so the worker learns it within a heartbeat and frees its tasks.
        self.socket.router_mandatory = 1
        # A kernel that stops answering without closing its connection is disconnected by
        # libzmq after KERNEL_SILENCE; the next send to it fails as above (see protocol.py).
        self.socket.heartbeat_ivl = int(KERNEL_PING_INTERVAL * 1000)
        self.socket.heartbeat_timeout = int(KERNEL_SILENCE * 1000)
        if curve_secret is not None:
            self.socket.curve_server = True
            self.socket.curve_secretkey = curve_secret
        self.socket.ipv6 = is_ipv6(listen)
        try:
            self.socket.bind(listen)
        except zmq.ZMQError as exc:
            raise LinkError(f"cannot listen on {listen}: {exc}") from None
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.queue: deque[Task] = deque()
        self.to_accept: deque[tuple[bytes, str, dict[str, Any]]] = deque()
        self.running: dict[int, Task] = {}
        self._last_beat = 0.0
        self.spares: deque[Spare] = deque()
        self.exit_status: dict[int, int] = {}
        self.departed: set[bytes] = set()  # clients a send found gone; see _drop_departed
        self.stopped_by: int | None = None  # the signal that asked the worker to stop; see stop

    def stop(self, signum: int, _frame: Any = None) -> None:
        """SIGINT/SIGTERM handler: stop once the loop is between two rounds.

        Raised from the handler (KeyboardInterrupt, SystemExit), the stop could land between
        starting a task and telling its kernel (so the cell heard neither that it was accepted
        nor why it failed), or between taking a task off the queue and noting it as running
        (so nobody heard of it at all)."""
        self.stopped_by = signum

    def send(self, client: bytes, type_: str, body: dict[str, Any]) -> None:
        import zmq

        if client in self.departed:
            return
        try:
            self.socket.send_multipart([client, *self.signer.sign(type_, body)])
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.departed.add(client)

    def _drop_departed(self) -> None:
        """Nobody will read the results of a kernel that is gone: its queued tasks leave the
        queue and its running ones are killed, so their slots, memory and GPUs go back to
        the machine instead of serving nobody until they end (a restart, a killed kernel,
        or one that stopped answering heartbeats: a crashed host, a cut network, a sleeping
        laptop)."""
        for task in [t for t in self.queue if t.client in self.departed]:
            self.queue.remove(task)
            self._log(task, "dropped from the queue: its kernel is gone")
        for task in self.running.values():
            if task.client in self.departed and not task.cancelled:
                self._log(task, "cancelled: its kernel is gone")
                task.cancelled = True
                self._kill(task)
        self.departed = {c for c in self.departed if any(t.client == c for t in self.running.values())}

    def serve(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        log.info("worker listening on %s, storage %s, %d slot(s)", self.address, self.store_url, self.slots)
        registered: set[int] = set()
        while self.stopped_by is None:
            # Pipes and pidfds come and go with tasks; closed ones are no longer watched, so
            # they leave the poller before it polls again.
            watched = {fd for task in self.running.values() for fd in task.watched()}
            if self.zygote is not None:
                watched.add(self.zygote.sock.fileno())
            for fd in registered - watched:
                poller.unregister(fd)
            for fd in watched - registered:
                poller.register(fd, zmq.POLLIN)
            registered = watched
            # Waiting to be quiet for a spare to be asked of the zygote (its answer wakes the poll).
            short = self.zygote is not None and len(self.spares) < SPARES and not self.zygote.pending
            events = dict(poller.poll(timeout=(QUIET if short else HEARTBEAT_INTERVAL) * 1000))
            idle = not events
            if self.zygote is not None and self.zygote.sock.fileno() in events:
                self._take_spare(self.zygote.receive(0, self.exit_status))
                # Exits of processes already finished with a result: nobody asks for them.
                self.exit_status = {pid: s for pid, s in self.exit_status.items() if pid in self.running}
                if not self.zygote.alive:
                    self._drop_zygote()
            for task in list(self.running.values()):
                if any(fd in events for fd in task.streams):
                    self._relay_streams(task)
                if task.fd in events and not task.eof:
                    self._read_task(task)
                if task.pidfd in events:
                    self._finish(task)
            if self.socket in events:
                for client, message in self._received():
                    try:
                        self._handle(client, message)
                    except (TypeError, ValueError, AttributeError, KeyError) as exc:
                        # Signed with our key yet not what a kernel sends: a bug or a test,
                        # never a reason for the worker to stop serving everyone else.
                        log.warning("dropped a malformed %r from client %s: %r", message.type, client.hex(), exc)
            self._start_queued()
            # Said once the task's process has it, so that process starts before we sign this.
            while self.to_accept:
                self._accept(*self.to_accept.popleft())
            # The next task's process is made ahead of time, so a task starts without paying
            # for fork; it is still a fresh process, used for one task only. The zygote
            # makes it once the worker is quiet (QUIET); without a zygote it is forked here,
            # when no result is waiting to be relayed.
            if self.zygote is not None and len(self.spares) < SPARES and (idle or not self.spares):
                self.zygote.request()
            elif self.zygote is None and not self.spares and (idle or all(t.outcome for t in self.running.values())):
                self.spares.append(fork_spare(self._become_task))
            self._heartbeat()
            if self.departed:
                self._drop_departed()
            if idle and self.sweeper is not None and not self.running and not self.queue:
                self.sweeper.step()

    def _handle(self, client: bytes, message) -> None:
        body = message.body
        if message.type == "ping":
            self.send(client, "pong", {"versions": self.versions, "slots": self.slots, "running": self._busy(), "queued": len(self.queue)})
        elif message.type == "submit":
            task_id = str(body.get("task", ""))
            inputs = body.get("inputs")
            well_formed = (
                task_id and isinstance(body.get("code"), str) and isinstance(inputs, dict)
                and all(isinstance(digest, str) for digest in inputs.values())
                and isinstance(body.get("verified", {}), dict)
            )
            if not well_formed:
                log.warning("dropped a malformed submit from client %s", client.hex())
                return
            problem = skew(self.versions, body.get("versions") or {})
            if problem:
                self._refuse(client, body, problem)
                return
            self.queue.append(Task(task_id, client, body))
            self.to_accept.append((client, "accepted", {"task": task_id, "position": len(self.queue) + len(self.running)}))
        elif message.type == "cancel":
            self._cancel(client, str(body.get("task", "")))
        else:
            log.warning("dropped a message of unknown type %r from client %s", message.type, client.hex())

    def _accept(self, client: bytes, type_: str, body: dict[str, Any]) -> None:
        """Say a task is accepted and, when it waits for a slot, how many tasks are ahead of
        it: the cell shows that until the task starts, rather than nothing at all."""
        waiting = next((i for i, t in enumerate(self.queue) if t.id == body.get("task") and t.client == client), None)
        if waiting is not None:
            self.queue[waiting].waited = True
            body = {**body, "ahead": waiting + self._busy()}
        self.send(client, type_, body)

    def _cancel(self, client: bytes, task_id: str) -> None:
        for task in self.queue:
            if task.id == task_id and task.client == client:
                self.queue.remove(task)
                self._log(task, "cancelled while queued")
                self.send(client, "cancelled", {"task": task_id})
                return
        for task in self.running.values():
            if task.id == task_id and task.client == client:
                task.cancelled = True
                self._kill(task)
                return
        # Finished (or never seen): nothing left to stop, and the kernel is waiting to hear it.
        self.send(client, "cancelled", {"task": task_id})

    def _kill(self, task: Task) -> None:
        for kill in (lambda: os.killpg(task.pid, signal.SIGKILL), lambda: os.kill(task.pid, signal.SIGKILL)):
            try:
                kill()
            except ProcessLookupError:
                pass

    def _busy(self) -> int:
        """Slots in use: a task whose result is in frees its slot while its process exits."""
        return sum(1 for task in self.running.values() if not task.outcome)

    def _start_queued(self) -> None:
        while self.queue and self._busy() < self.slots:
            task = self.queue.popleft()
            spare = self.spares.popleft() if self.spares else self._next_spare()
            task.pid, task.pidfd, task.fd, task_pipe, task.streams = spare
            task.started_at = time.monotonic()
            inputs = task.body.get("inputs") or {}
            if self.store.local:
                # Input files the kernel wrote or checked (a dict, checked in _handle): signed,
                # like the code we run for it.
                vouched = task.body.get("verified") or {}
                self.store.remember({d: vouched[d] for d in inputs.values() if d in vouched})
            verified = self.store.verified(inputs.values())  # local store files or s3 mirror files
            data = json.dumps({**task.body, "name": str(task.body.get("name", "?")), "verified": verified}).encode()
            try:
                with os.fdopen(task_pipe, "wb") as f:
                    f.write(len(data).to_bytes(4, "little") + data)
            except BrokenPipeError:
                pass  # the spare died (killed from outside); its exit is reported like a crash
            self.running[task.pid] = task
            if task.waited:
                self.send(task.client, "started", {"task": task.id})

    def _next_spare(self) -> Spare:
        """A task process ready for a task: the zygote's, or forked here if there is none."""
        if self.zygote is not None:
            self.zygote.request()
            deadline = time.monotonic() + 10
            while self.zygote.alive and time.monotonic() < deadline:
                spare = self.zygote.receive(deadline - time.monotonic(), self.exit_status)
                if spare is not None:
                    return spare
            self._drop_zygote()
        return fork_spare(self._become_task)

    def _become_task(self, task_read: int, out_write: int, stdout_write: int, stderr_write: int) -> NoReturn:
        """In a new task process: wait for one task, run it, exit.

        fds 1 and 2 become pipes to the worker, so what C code, `os.system` and subprocesses
        print reaches the cell, as in ipykernel, rather than the worker's terminal.
        """
        code = 0
        try:
            for fd, write_end in ((1, stdout_write), (2, stderr_write)):
                os.dup2(write_end, fd)
                os.close(write_end)
            os.setpgid(0, 0)
            set_parent_death_signal()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            from linkkernel.remote import taskprocess

            taskprocess.warm_up(self.shell)
            store = self._connected_store()
            set_policy(os.SCHED_OTHER)  # ready: the task, when it comes, runs at once
            size = int.from_bytes(read_exactly(task_read, 4) or b"\0", "little")
            body = json.loads(read_exactly(task_read, size)) if size else None
            os.close(task_read)
            if body is not None:
                self._run_in_child(body, out_write, store)
        except BaseException:  # noqa: BLE001 - nothing may escape a forked child into the worker loop
            code = 70
        finally:
            os._exit(code)

    def _relay_streams(self, task: Task) -> None:
        """Forward raw fd 1/2 output of the task process as stream outputs."""
        for fd, name in list(task.streams.items()):
            chunks = []
            try:
                while chunk := os.read(fd, 1 << 16):
                    chunks.append(chunk)
            except BlockingIOError:
                chunk = b"-"
            if chunks:
                text = b"".join(chunks).decode(errors="replace")
                self.send(task.client, "output", {"task": task.id, "output": {"output_type": "stream", "name": name, "text": text}})
            if not chunk:
                os.close(fd)
                del task.streams[fd]

    def _connected_store(self) -> Store | None:
        """In a spare task process, while it waits: the store its task will use. A local store
        is plain files, the worker's own. Anything else (s3fs: sessions, an event loop thread)
        must be made in this process, not used across fork, and connecting it sets up a
        botocore client (~60 ms here), better spent before the task comes than after. None
        when that fails: the task makes it again and says why."""
        if self.store.local:
            return self.store
        from linkkernel.remote.storage import Store

        try:
            store = Store(self.store_url, self.key, self.store_options)
            connect = getattr(store.fs, "connect", None)
            if connect is not None:
                connect()
        except Exception:  # noqa: BLE001 - said by the task, which makes it again (_run_in_child)
            return None
        return store

    def _run_in_child(self, body: dict[str, Any], write_fd: int, store: Store | None) -> None:
        from linkkernel.remote import taskprocess
        from linkkernel.remote.storage import Store

        pipe = taskprocess.Pipe(write_fd)
        try:
            if store is None:
                store = Store(self.store_url, self.key, self.store_options)
            taskprocess.run(self.shell, store, body, pipe)
        except Exception as exc:  # report our own failure as one line rather than a silent exit
            pipe.finish({"failed": f"worker error while running the task: {type(exc).__name__}: {exc}"})
        sys.stdout.flush()

    def _read_task(self, task: Task) -> None:
        """Relay what the task process sent; its result goes out at once, before it exits."""
        try:
            while chunk := os.read(task.fd, 1 << 20):
                task.buffer += chunk
        except BlockingIOError:
            chunk = b"-"
        text: list[str] = []  # adjacent lines of one stream, relayed as one output
        stream: dict[str, Any] = {}
        if task.garbled:
            task.buffer.clear()
        while len(task.buffer) >= 4:
            size = int.from_bytes(task.buffer[:4], "little")
            if len(task.buffer) < 4 + size:
                break
            try:
                message = json.loads(task.buffer[4 : 4 + size])
            except ValueError:
                message = None
            if not isinstance(message, dict):
                self._stop_garbled(task)
                break
            del task.buffer[: 4 + size]
            output = message.get("output")
            if isinstance(output, dict) and output.get("output_type") == "stream" and len(message) == 1:
                # A task printing line by line sends a frame per line; a message per line
                # costs the worker and the kernel ~50 us each (200k lines: 20 s in the cell).
                if text and output.get("name") != stream.get("name"):
                    self._send_text(task, stream, text)
                stream = output
                text.append(str(output.get("text", "")))
                continue
            if text:
                self._send_text(task, stream, text)
            if "output" in message or "clear_output" in message or "comm" in message:
                self.send(task.client, "output", {"task": task.id, **message})
            elif "result" in message and not task.cancelled:
                self.store.remember(message.get("verified"))  # it ignores what is malformed
                self._relay_streams(task)  # what the process printed comes before its result
                task.outcome = message
                bound = message["result"].get("bound") or {}
                outputs = self.store.verified(bound.values()) if self.store.local else {}
                self.send(task.client, "done", {"task": task.id, "result": message["result"], "verified": outputs})
            elif "writing" in message:
                task.writing.append(str(message["writing"]))
            else:
                task.outcome = message
        if text:
            self._send_text(task, stream, text)
        if not chunk:
            if task.buffer and not task.garbled:  # a frame that never ended: its length was garbage
                self._stop_garbled(task)
            os.close(task.fd)
            task.eof = True

    def _stop_garbled(self, task: Task) -> None:
        """The task process sent bytes that are not a message: its user code wrote into the
        pipe, or processes it forked sent large outputs at the same moment. Nothing after them
        can be trusted, so the task ends with that said; the worker and other tasks go on."""
        task.garbled = True
        task.buffer.clear()
        task.outcome = {"failed": (
            "the task's messages to the worker were garbled (its code wrote into the task's pipe, "
            "or processes it started sent large outputs at the same moment), so the task was stopped"
        )}
        try:
            os.killpg(task.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _send_text(self, task: Task, stream: dict[str, Any], text: list[str]) -> None:
        """Relay the stream text gathered by _read_task as one output, and start over."""
        self.send(task.client, "output", {"task": task.id, "output": {**stream, "text": "".join(text)}})
        text.clear()

    def _finish(self, task: Task) -> None:
        """The task process exited: free its slot and say how it ended."""
        # What the task forked or started shares its process group: it ends with the task, so
        # memory and GPUs go back to the machine (SPEC §5). An empty group is ESRCH.
        try:
            os.killpg(task.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not task.eof:
            # Everything the process wrote is in the pipe now; a grandchild may still hold
            # the pipe open, so read what is there instead of waiting for end-of-file.
            self._read_task(task)
            if not task.eof:
                os.close(task.fd)
                task.eof = True
        self._relay_streams(task)
        for fd in task.streams:
            os.close(fd)
        task.streams.clear()
        outcome = task.outcome or {}
        status = self._exit_status(task.pid, needed=not ("result" in outcome or "failed" in outcome or task.cancelled))
        os.close(task.pidfd)
        del self.running[task.pid]
        if task.cancelled or "result" not in outcome:  # killed or crashed, perhaps while writing a blob
            # Only the files it said it was writing: a sweep of the store lists every blob
            # folder, a pause of the loop. Garbled, it may not have said: the store is swept.
            self.store.remove_abandoned(None if task.garbled else task.writing)
        elapsed = f"{time.monotonic() - task.started_at:.3f} s"
        if task.cancelled:  # even when its result came in meanwhile: the kernel waits for this
            self._log(task, f"cancelled, task process killed after {elapsed}")
            self.send(task.client, "cancelled", {"task": task.id})
        elif "result" in outcome:
            error = outcome["result"].get("error")
            self._log(task, f"{'error ' + error['ename'] if error else 'ok'} in {elapsed}")
        else:
            lost = "task process was lost with the worker's zygote process"
            reason = outcome.get("failed") or (lost if status is None else describe_exit(status))
            self._log(task, f"failed after {elapsed}: {reason}")
            missing = {"missing": outcome["missing"]} if isinstance(outcome.get("missing"), str) else {}
            self.send(task.client, "failed", {"task": task.id, "message": reason, **missing})

    def _exit_status(self, pid: int, needed: bool) -> int | None:
        """How a finished task process exited; None when nobody can tell any more, or when
        nobody needs to (its result is in): the worker does not wait for the zygote then."""
        if self.zygote is not None and pid not in self.exit_status:
            if not needed:
                return None
            # The zygote's child: it says how the process ended, right after it did.
            deadline = time.monotonic() + 5
            while self.zygote.alive and pid not in self.exit_status and time.monotonic() < deadline:
                self._take_spare(self.zygote.receive(0.1, self.exit_status))
        if pid in self.exit_status:
            return self.exit_status.pop(pid)
        try:
            return os.waitpid(pid, 0)[1]  # our own child: reap it
        except ChildProcessError:  # a child of a zygote that is gone
            return None

    def _take_spare(self, spare: Spare | None) -> None:
        if spare is not None and len(self.spares) < SPARES:
            self.spares.append(spare)
        elif spare is not None:
            discard(spare)

    def _drop_zygote(self) -> None:
        """Fork task processes here from now on; the zygote's spares died with it."""
        log.warning("the zygote process died; forking task processes from the worker itself")
        self.zygote.stop()
        self.zygote = None
        while self.spares:
            discard(self.spares.popleft())

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT_INTERVAL:
            return
        self._last_beat = now
        tasks: dict[bytes, list[str]] = {}
        for task in [*self.queue, *self.running.values()]:
            tasks.setdefault(task.client, []).append(task.id)
        for client, ids in tasks.items():
            self.send(client, "heartbeat", {"tasks": ids})

    def _log(self, task: Task, outcome: str) -> None:
        waited = (task.started_at or time.monotonic()) - task.queued_at
        log.info(
            "task %s %r from client %s: %s (queued %.3f s)",
            task.id[:8], task.body.get("name"), task.client.hex(), outcome, waited,
        )

    def shutdown(self, why: str = "the worker stopped") -> None:
        """Kill every task and tell its kernel why, so the cell says the worker was stopped
        rather than, seconds later, that it died."""
        for task in self.running.values():
            self._kill(task)
            if not task.outcome and not task.cancelled:
                self._log(task, f"failed: {why}")
                self.send(task.client, "failed", {"task": task.id, "message": f"{why} while the task ran"})
        for task in self.queue:
            self._log(task, f"dropped from the queue: {why}")
            self.send(task.client, "failed", {"task": task.id, "message": f"{why} while the task waited in its queue"})
        for spare in self.spares:
            os.kill(spare[0], signal.SIGKILL)
        if self.zygote is not None:
            self.zygote.stop()
        self._refuse_unread(why)
        self.socket.close(linger=1000)  # long enough to deliver the news above
        self.context.term()

    def _refuse_unread(self, why: str) -> None:
        """Refuse the tasks submitted after the loop's last read, saying `why`: their kernels
        would otherwise wait out the accept deadline and call a worker just stopped
        unreachable. What arrives after this is past helping: the socket closes next."""
        for client, message in self._received():
            if message.type == "submit":
                self._refuse(client, message.body, f"{why} before it could start the task")

    def _received(self) -> Iterator[tuple[bytes, Any]]:
        """Each signed message waiting on the socket now, with the client that sent it;
        unsigned, forged, replayed or malformed ones are dropped and logged."""
        import zmq

        from linkkernel.remote.protocol import BadMessage

        while self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            client, *rest = self.socket.recv_multipart()
            try:
                message = self.signer.verify(rest)
            except BadMessage as exc:
                log.warning("dropped a message from client %s: %s", client.hex(), exc)
                continue
            yield client, message

    def _refuse(self, client: bytes, body: dict[str, Any], problem: str) -> None:
        """Tell the kernel that sent the task `body` it will not run, and why; one log line."""
        task_id = str(body.get("task", ""))
        log.info("task %s %r refused: %s", task_id[:8], body.get("name"), problem)
        self.send(client, "rejected", {"task": task_id, "message": problem})


def configure_worker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="tcp://127.0.0.1:5555", help="ZeroMQ address to bind: tcp://HOST:PORT or ipc://PATH (default: tcp://127.0.0.1:5555, loopback only)")
    parser.add_argument("--storage", required=True, help="artifact store shared with kernels: a directory or s3://bucket/prefix")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE", help="fsspec option, e.g. endpoint_url=http://host:9000")
    parser.add_argument("--key-file", required=True, help="file holding the shared HMAC key")
    parser.add_argument("--slots", type=int, default=1, metavar="N", help="tasks run in parallel (default 1); the rest wait in order")
    parser.add_argument(
        "--keep-days", type=float, default=7, metavar="D",
        help="remove blobs no task has used for D days from a local storage, swept hourly while idle (default 7; 0 keeps all)",
    )
    parser.add_argument("--curve-key-file", help="CurveZMQ secret key of this worker (created if missing); encrypts traffic")
    parser.add_argument(
        "--preload", action="append", default=None, metavar="MODULE",
        help="import MODULE once in the worker so tasks start fast (default: numpy if installed); never a GPU library",
    )
    parser.set_defaults(func=run)


def _check_listen(address: str) -> None:
    """Refuse what ZeroMQ would misread: it wraps a port out of range (99999 binds 34463),
    so kernels registered with the port the user typed would never find the worker."""
    if not address.startswith(("tcp://", "ipc://")):
        raise LinkError(f"--listen {address!r} must be tcp://HOST:PORT or ipc://PATH")
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        if not host or not (port == "*" or port.isdigit() and int(port) <= 65535):
            raise LinkError(f"--listen {address!r} must be tcp://HOST:PORT with a port from 0 to 65535 (0 or * for any free port)")
        if host not in LOOPBACK_HOSTS:
            log.warning("listening on %s: reachable from other machines; every message is still signed", address)


def run(args: argparse.Namespace) -> int:
    from linkkernel.cow import allow_many_maps
    from linkkernel.remote.protocol import load_or_create_curve_key, read_key
    from linkkernel.remote.storage import parse_options, refuse_unshareable

    logging.basicConfig(level=logging.INFO, format="%(asctime)s linkkernel worker: %(message)s", stream=sys.stderr)
    if args.slots < 1:
        raise LinkError("--slots must be at least 1")
    if not args.keep_days >= 0:
        raise LinkError("--keep-days must be 0 (keep every blob) or a positive number of days")
    _check_listen(args.listen)
    refuse_unshareable(args.storage)
    key = read_key(args.key_file)
    curve_secret = None
    if args.curve_key_file:
        public, curve_secret = load_or_create_curve_key(args.curve_key_file)
        # shell-quoted: Z85 keys hold $, &, (, ; ... which a shell would read, pasted as is
        log.info("CurveZMQ public key (register it with --server-key): %s", shlex.quote(public.decode()))
    preload = args.preload if args.preload is not None else ["numpy"]
    for module in preload:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - not found, not a module name ("", ".x"), or its own code failed
            if args.preload is not None:
                raise LinkError(f"--preload {module}: {type(exc).__name__}: {exc}") from None
    if args.storage.startswith("s3"):
        importlib.import_module("s3fs")
    allow_many_maps()  # for the task processes, which map each large input from its file
    worker = Worker(args.listen, args.storage, parse_options(args.storage_option), key, args.slots, curve_secret, args.keep_days)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, worker.stop)
    print(f"linkkernel worker ready on {worker.address}", flush=True)
    why = "the worker stopped"
    try:
        worker.serve()
        why = f"the worker was stopped ({signal.Signals(worker.stopped_by).name})"
    finally:
        worker.shutdown(why)
    return 0
