"""The transient progress line a component cell shows while its ancestors run (SPEC §3).

Sent straight to IOPub (not through the shell's display publisher, which a silent run has
swapped out) as a display with a display_id, updated in place, then cleared when the
component itself starts.
"""

from __future__ import annotations

import threading
import time


class Progress:
    """The transient line in the cell while ancestors run: which one, k of n, elapsed."""

    def __init__(self, kernel, total: int) -> None:
        self.kernel, self.total = kernel, total
        self.display_id = f"linkkernel-progress-{id(self)}-{time.monotonic_ns()}"
        self.started = time.monotonic()
        self.current: tuple[int, str] | None = None
        self.shown = False
        self._parent = kernel.get_parent()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def _send(self, msg_type: str, content: dict) -> None:
        kernel = self.kernel
        kernel.session.send(kernel.iopub_socket, msg_type, content, parent=self._parent, ident=kernel._topic(msg_type))

    def _line(self) -> str:
        k, name = self.current
        return f"linkkernel: running parent {name!r} ({k} of {self.total}, {time.monotonic() - self.started:.1f} s elapsed)"

    def show(self, k: int, name: str) -> None:
        with self._lock:
            self.current = (k, name)
            content = {"data": {"text/plain": self._line()}, "metadata": {}, "transient": {"display_id": self.display_id}}
            self._send("update_display_data" if self.shown else "display_data", content)
            self.shown = True
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True, name="linkkernel-progress")
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self.shown:
                    content = {"data": {"text/plain": self._line()}, "metadata": {}, "transient": {"display_id": self.display_id}}
                    self._send("update_display_data", content)

    def stop(self) -> None:
        self._stop.set()

    def clear(self) -> None:
        self.stop()
        with self._lock:
            if self.shown:
                self._send("clear_output", {"wait": False})
                self.shown = False
