"""The kernel's side of the conversation with one worker: submit, follow, cancel, ping.

ZeroMQ never says a peer is gone, so every wait here has a deadline: a worker that does not
accept a task within ACCEPT_TIMEOUT is unreachable, and one that stops sending heartbeats
for HEARTBEAT_TIMEOUT while a task is ours died mid-task. Either way the caller gets a
RemoteError within seconds instead of a cell that hangs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from linkkernel.errors import LinkError
from linkkernel.remote.protocol import BadMessage, Message, Signer, configure_curve_client

ACCEPT_TIMEOUT = 3.0
HEARTBEAT_TIMEOUT = 3.0
CANCEL_TIMEOUT = 2.0
log = logging.getLogger("linkkernel.remote")


class RemoteError(LinkError):
    """A remote run failed for a reason outside the user's code (network, worker, storage)."""


class Client:
    """A DEALER socket to one worker, kept open between tasks (connecting costs a round trip)."""

    def __init__(self, alias: str, address: str, key: bytes, server_key: str | None = None) -> None:
        self.alias = alias
        self.address = address
        self.signer = Signer(key)
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.linger = 0
        configure_curve_client(self.socket, server_key)
        try:
            self.socket.connect(address)
        except zmq.ZMQError as exc:  # an address `workers add` would refuse, from a hand-edited registry
            self.socket.close(0)
            raise RemoteError(f"worker {alias!r}: cannot connect to {address}: {exc.strerror}") from None
        self.closed = False

    def close(self) -> None:
        """Forget the connection; anything still queued in it is discarded, never delivered late."""
        self.closed = True
        self.socket.close(0)

    def _where(self) -> str:
        return f"worker {self.alias!r} at {self.address}"

    def send(self, type_: str, body: dict[str, Any]) -> None:
        self.socket.send_multipart(self.signer.sign(type_, body))

    def receive(self, timeout: float) -> Message | None:
        """The next valid message within `timeout` seconds; invalid ones are logged and dropped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(remaining * 1000):
                return None
            frames = self.socket.recv_multipart()
            try:
                return self.signer.verify(frames)
            except BadMessage as exc:
                log.warning("dropped a message claiming to come from %s: %s", self._where(), exc)

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
        while True:
            message = self.receive(max(0.0, ACCEPT_TIMEOUT - (time.perf_counter() - start)))
            if message is None:
                raise self._unreachable("a ping")
            if message.type == "pong":
                return time.perf_counter() - start, message.body

    def submit(self, body: dict[str, Any]) -> None:
        """Hand a task to the worker; returns once it is queued there."""
        task_id = body["task"]
        self.send("submit", body)
        deadline = time.monotonic() + ACCEPT_TIMEOUT
        while True:
            message = self.receive(deadline - time.monotonic())
            if message is None:
                raise self._unreachable("the task")
            if message.body.get("task") != task_id:
                continue
            if message.type == "rejected":
                raise RemoteError(f"{self._where()} refused the task: {message.body.get('message')}")
            if message.type == "accepted":
                return

    def follow(self, task_id: str, on_output: Callable[[dict[str, Any]], None]) -> Message:
        """Relay the task's outputs until it ends; returns the `done` message."""
        last_heard = time.monotonic()
        while True:
            message = self.receive(max(0.0, HEARTBEAT_TIMEOUT - (time.monotonic() - last_heard)))
            if message is None:
                self.close()
                raise RemoteError(
                    f"{self._where()} died mid-task: no heartbeat for {HEARTBEAT_TIMEOUT:g} s"
                )
            last_heard = time.monotonic()
            if message.type == "heartbeat" or message.body.get("task") != task_id:
                continue
            if message.type == "output":
                on_output(message.body)
            elif message.type == "done":
                return message
            elif message.type == "failed":
                raise RemoteError(f"{self._where()}: {message.body.get('message')}")
            elif message.type == "cancelled":
                raise RemoteError(f"{self._where()} cancelled the task")

    def cancel(self, task_id: str) -> bool:
        """Ask the worker to kill the task's process; True once it confirms."""
        if self.closed:
            return False
        self.send("cancel", {"task": task_id})
        deadline = time.monotonic() + CANCEL_TIMEOUT
        while (message := self.receive(deadline - time.monotonic())) is not None:
            if message.type in ("cancelled", "done", "failed") and message.body.get("task") == task_id:
                return True
        return False
