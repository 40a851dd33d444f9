"""Transient lines in a cell: the progress line while components run silently (SPEC §3),
and any other line the kernel shows until the thing it reports is over.

Sent straight to IOPub (not through the shell's display publisher, which a silent run has
swapped out) as a display with a display_id, updated in place. Removing a line updates that
display to empty content rather than sending clear_output, which would also wipe whatever
the cell showed before (a `print` above `%link run`, a warning). An emptied display is still
an output, though: JupyterLab saves it into the notebook as an empty `display_data`. So a
line known to be the first thing its cell shows (the parents of a component cell run before
any of its code) is removed with clear_output, which then wipes nothing else.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Collection


class TransientLine:
    """One line of text in the cell of the request being handled, replaced in place by each
    `show` and removed by `clear`. `alone`: nothing else is shown in the cell before it."""

    def __init__(self, kernel, kind: str, alone: bool = False) -> None:
        self.kernel, self.alone = kernel, alone
        self.display_id = f"linkkernel-{kind}-{uuid.uuid4().hex}"
        self.showing = False
        self._parent: dict | None = None  # the request shown in, taken at the first show

    def show(self, text: str) -> None:
        self._send({"text/plain": text})
        self.showing = True

    def clear(self) -> None:
        if self.showing:
            if self.alone:
                self._publish("clear_output", {"wait": False})
            else:
                self._send({})
            self.showing = False

    def _send(self, data: dict[str, str]) -> None:
        """The first call creates the display; later ones, from any thread, update it."""
        created = self._parent is not None
        if not created:
            self._parent = self.kernel.get_parent()
        content = {"data": data, "metadata": {}, "transient": {"display_id": self.display_id}}
        self._publish("update_display_data" if created else "display_data", content)

    def _publish(self, msg_type: str, content: dict) -> None:
        kernel = self.kernel
        kernel.session.send(kernel.iopub_socket, msg_type, content, parent=self._parent, ident=kernel._topic(msg_type))


class Progress:
    """The progress line: which component, k of n, elapsed, ticking every second.

    Components in `targets` are what the user asked for; the others are named as parents.
    `alone`: the line is the first thing its cell shows (see TransientLine). Components that
    take less than `INTERVAL` are not each shown: a deep pipeline's hundreds of quick ones
    cost a message each, more than running them, and no one reads ten lines a second.
    """

    INTERVAL = 0.1

    def __init__(self, kernel, total: int, targets: Collection[str] = (), alone: bool = False) -> None:
        self.total, self.targets = total, targets
        self.started = time.monotonic()
        self.current: tuple[int, str] | None = None
        self._line = TransientLine(kernel, "progress", alone)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._shown: tuple[int, str] | None = None
        self._shown_at = float("-inf")

    def _text(self) -> str:
        k, name = self.current
        what = f"{name!r}" if name in self.targets else f"parent {name!r}"
        return f"linkkernel: running {what} ({k} of {self.total}, {time.monotonic() - self.started:.1f} s elapsed)"

    def show(self, k: int, name: str) -> None:
        """Component `name` (the k-th) is running: shown now when it is the last one or the
        line was last shown more than INTERVAL ago, else by the ticker if still running then."""
        with self._lock:
            self.current = (k, name)
            if k == self.total or time.monotonic() - self._shown_at >= self.INTERVAL:
                self._show()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True, name="linkkernel-progress")
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            with self._lock:
                if self.current is not None and (self.current != self._shown or time.monotonic() - self._shown_at >= 1.0):
                    self._show()

    def _show(self) -> None:
        """The line for the current component, now (the lock held)."""
        self._line.show(self._text())
        self._shown, self._shown_at = self.current, time.monotonic()

    def remove(self) -> None:
        """Stop updating and remove the line, leaving every other output of the cell alone."""
        self._stop.set()
        with self._lock:
            self._line.clear()
            self.current = None
