"""The interactive shell of Link Python: ipykernel's shell plus error collection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ipykernel.zmqshell import ZMQInteractiveShell


@dataclass
class CollectedError:
    """An error a silent run raised, kept instead of being sent to the frontend."""

    ename: str
    evalue: str
    traceback: list[str]


class LinkShell(ZMQInteractiveShell):
    """Lets a silent run keep its errors to itself.

    `capture_output()` does not stop ipykernel's shell from publishing an `error` message,
    so a run of a parent component that must stay invisible collects its errors here.
    """

    _error_sinks: list[list[CollectedError]]

    def __init__(self, *args, **kwargs) -> None:
        self._error_sinks = []
        super().__init__(*args, **kwargs)

    @contextmanager
    def collect_errors(self) -> Iterator[list[CollectedError]]:
        """Inside the block, errors are appended to the yielded list instead of published."""
        sink: list[CollectedError] = []
        self._error_sinks.append(sink)
        try:
            yield sink
        finally:
            self._error_sinks.remove(sink)

    def _showtraceback(self, etype, evalue, stb):
        if self._error_sinks:
            self._error_sinks[-1].append(CollectedError(etype.__name__, str(evalue), list(stb)))
            self._last_traceback = stb
            return
        super()._showtraceback(etype, evalue, stb)
