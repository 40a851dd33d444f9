"""The transient progress line a cell shows while components run silently (SPEC §3).

Sent straight to IOPub (not through the shell's display publisher, which a silent run has
swapped out) as a display with a display_id, updated in place. Removing it updates that
display to empty content rather than sending clear_output, which would also wipe whatever
the cell showed before (a `print` above `%link run`, a warning).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection


class Progress:
    """The transient line in the cell: which component, k of n, elapsed.

    Components in `targets` are what the user asked for; the others are named as parents.
    """

    def __init__(self, kernel, total: int, targets: Collection[str] = ()) -> None:
        self.kernel, self.total, self.targets = kernel, total, targets
        self.display_id = f"linkkernel-progress-{id(self)}-{time.monotonic_ns()}"
        self.started = time.monotonic()
        self.current: tuple[int, str] | None = None
        self.shown = False
        self._parent = kernel.get_parent()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def _send(self, data: dict[str, str]) -> None:
        """Show `data` in the progress display (the first call creates it); caller holds the lock."""
        kernel = self.kernel
        msg_type = "update_display_data" if self.shown else "display_data"
        content = {"data": data, "metadata": {}, "transient": {"display_id": self.display_id}}
        kernel.session.send(kernel.iopub_socket, msg_type, content, parent=self._parent, ident=kernel._topic(msg_type))
        self.shown = True

    def _line(self) -> dict[str, str]:
        k, name = self.current
        what = f"{name!r}" if name in self.targets else f"parent {name!r}"
        return {"text/plain": f"linkkernel: running {what} ({k} of {self.total}, {time.monotonic() - self.started:.1f} s elapsed)"}

    def show(self, k: int, name: str) -> None:
        with self._lock:
            self.current = (k, name)
            self._send(self._line())
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True, name="linkkernel-progress")
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self.current is not None:
                    self._send(self._line())

    def remove(self) -> None:
        """Stop updating and empty the line, leaving every other output of the cell alone."""
        self._stop.set()
        with self._lock:
            if self.current is not None:
                self._send({})
                self.current = None
