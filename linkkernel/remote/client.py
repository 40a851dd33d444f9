"""The kernel's side of the conversation with one worker: submit, follow, cancel, ping.

ZeroMQ never says a peer is gone, so every wait here has a deadline: a worker that does not
accept a task within ACCEPT_TIMEOUT is unreachable, and one that stops sending heartbeats
for HEARTBEAT_TIMEOUT while a task is ours died mid-task. Either way the caller gets a
RemoteError within seconds instead of a cell that hangs.

The deadlines count only time this process ran. A kernel that was stopped or suspended did
not hear the worker meanwhile through no fault of the worker; once it runs again, what the
worker sent is still on its way in. If it was away longer than the worker waits for a kernel
that does not answer (KERNEL_SILENCE), the worker dropped it and killed its task, and the
error says so rather than blaming the worker.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from linkkernel.errors import LinkError
from linkkernel.remote.protocol import (
    KERNEL_PING_INTERVAL,
    KERNEL_SILENCE,
    BadMessage,
    Message,
    Signer,
    configure_curve_client,
    is_ipv6,
)

ACCEPT_TIMEOUT = 3.0
HEARTBEAT_TIMEOUT = 3.0
CANCEL_TIMEOUT = 2.0
# Waits are cut into slices this long: a slice that ends much later than asked means this
# process did not run meanwhile, and that time is not counted against the worker.
POLL_SLICE = 0.25
# Linux's boot-time clock keeps counting while the machine sleeps (the monotonic clock does
# not), so a kernel on a laptop that was suspended knows for how long.
_now = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic
log = logging.getLogger("linkkernel.remote")


class RemoteError(LinkError):
    """A remote run failed for a reason outside the user's code (network, worker, storage).
    `missing`: the digest of an input the worker did not find in the storage, if that was why."""

    def __init__(self, message: str, missing: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing


class Client:
    """A DEALER socket to one worker, kept open between tasks (connecting costs a round trip)."""

    def __init__(self, alias: str, address: str, key: bytes, server_key: str | None = None) -> None:
        self.alias = alias
        self.address = address
        self.signer = Signer(key)
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.linger = 0
        configure_curve_client(self.socket, server_key)
        self.socket.ipv6 = is_ipv6(address)
        try:
            self.socket.connect(address)
        except zmq.ZMQError as exc:  # an address `workers add` would refuse, from a hand-edited registry
            self.socket.close(0)
            raise RemoteError(f"worker {alias!r}: cannot connect to {address}: {exc.strerror}") from None
        self.closed = False
        self.away = 0.0  # the longest time this process did not run while following; see messages
        self._waited_until: tuple[float, float] | None = None  # clock and CPU time when a wait ended

    def close(self) -> None:
        """Forget the connection; anything still queued in it is discarded, never delivered late."""
        self.closed = True
        self.socket.close(0)

    def _where(self) -> str:
        return f"worker {self.alias!r} at {self.address}"

    def send(self, type_: str, body: dict[str, Any]) -> None:
        self.socket.send_multipart(self.signer.sign(type_, body))

    def receive(self, timeout: float) -> Message | None:
        """The next valid message within `timeout` seconds of this process running."""
        return next(self.messages(timeout), None)

    def messages(self, timeout: float) -> Iterator[Message]:
        """Valid messages as they arrive, until `timeout` seconds of this process running
        were spent waiting; invalid ones are logged and dropped. Time it did not run is left
        out and kept in `away`: a wait that ends later than asked, or time between waits
        (handling what arrived) that passed without the process using the CPU."""
        waited = 0.0
        while True:
            wait = min(timeout - waited, POLL_SLICE)
            if wait <= 0:
                return
            start, cpu = _now(), time.process_time()
            if self._waited_until is not None:
                self.away = max(self.away, (start - self._waited_until[0]) - (cpu - self._waited_until[1]))
            ready = self.socket.poll(wait * 1000)
            end = _now()
            self._waited_until = (end, time.process_time())
            elapsed = end - start
            self.away = max(self.away, elapsed - wait)
            waited += min(elapsed, wait)
            if not ready:
                continue
            frames = self.socket.recv_multipart()
            try:
                message = self.signer.verify(frames)
            except BadMessage as exc:
                log.warning("dropped a message claiming to come from %s: %s", self._where(), exc)
                continue
            yield message

    def _dropped(self) -> bool:
        """Whether this process did not run for as long as the worker waits for a kernel that
        does not answer. The worker counts KERNEL_SILENCE from its last ping, which may have
        gone out up to a ping interval before this process stopped."""
        return self.away >= KERNEL_SILENCE - KERNEL_PING_INTERVAL

    def _away_error(self) -> RemoteError:
        self.close()
        return RemoteError(
            f"this kernel did not run for {self.away:.0f} s (stopped or suspended), as long as "
            f"{self._where()} waits for a kernel that does not answer ({KERNEL_SILENCE:g} s): "
            "the worker dropped this kernel and killed the task; run the cell again"
        )

    def _unreachable(self, what: str) -> RemoteError:
        self.close()
        return RemoteError(
            f"{self._where()} is unreachable: no answer to {what} within {ACCEPT_TIMEOUT:g} s "
            "(is `linkkernel worker` running there, with the same key file and --server-key?)"
        )

    def ping(self) -> tuple[float, dict[str, Any]]:
        """Round-trip time in seconds and the worker's pong (versions, slots, load)."""
        start = time.perf_counter()
        self.send("ping", {})
        for message in self.messages(ACCEPT_TIMEOUT):
            if message.type == "pong":
                return time.perf_counter() - start, message.body
        raise self._unreachable("a ping")

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Hand a task to the worker; returns, once it is queued there, what the worker said
        (`ahead`: how many tasks it waits for, when it waits).

        The time this process does not run counts from here, not from `follow`: the task may
        start before the worker says it accepted it, and a kernel stopped meanwhile was
        dropped as surely as one stopped while following."""
        task_id = body["task"]
        self.away, self._waited_until = 0.0, None
        self.send("submit", body)
        for message in self.messages(ACCEPT_TIMEOUT):
            if message.body.get("task") != task_id:
                continue
            if message.type == "rejected":
                raise RemoteError(f"{self._where()} refused the task: {message.body.get('message')}")
            if message.type == "accepted":
                return message.body
        if self._dropped():
            raise self._away_error()
        raise self._unreachable("the task")

    def follow(
        self, task_id: str, on_output: Callable[[dict[str, Any]], None], on_started: Callable[[], None] | None = None
    ) -> Message:
        """Relay the task's outputs until it ends; returns the `done` message. `on_started`
        is called when a task that waited for a slot starts. Follows `submit` of that task."""
        while True:
            message = self.receive(HEARTBEAT_TIMEOUT)
            if message is None:
                if self._dropped():
                    raise self._away_error()
                self.close()
                raise RemoteError(
                    f"{self._where()} died mid-task: no heartbeat for {HEARTBEAT_TIMEOUT:g} s"
                )
            if message.type == "heartbeat" or message.body.get("task") != task_id:
                continue
            if message.type == "output":
                on_output(message.body)
            elif message.type == "started":
                if on_started is not None:
                    on_started()
            elif message.type == "done":
                return message
            elif message.type == "failed":
                text = f"{self._where()}: {message.body.get('message')}"
                missing = message.body.get("missing")
                raise RemoteError(text, missing if isinstance(missing, str) else None)
            elif message.type == "cancelled":
                raise RemoteError(f"{self._where()} cancelled the task")

    def cancel(self, task_id: str) -> bool:
        """Ask the worker to kill the task's process; True once it confirms."""
        if self.closed:
            return False
        self.send("cancel", {"task": task_id})
        return any(
            message.type in ("cancelled", "done", "failed") and message.body.get("task") == task_id
            for message in self.messages(CANCEL_TIMEOUT)
        )
