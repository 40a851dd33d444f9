"""Errors linkkernel reports to users, and the boundary that keeps its own bugs to one line."""

from __future__ import annotations

import logging
from typing import Any


class LinkError(Exception):
    """A problem with the user's input (pipeline, tag, file, flag), told in one clear line.

    Raised anywhere in linkkernel; the kernel, magics and CLI show `str(error)` alone, never a
    traceback, because the fix is in the user's notebook or command, not in our code.
    """

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback when the error reaches a cell."""
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


INTERNAL_ERROR_NAME = "LinkKernelInternalError"


def internal_error_line(exc: BaseException) -> str:
    """The one line a user sees for a bug inside linkkernel."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return (
        f"linkkernel internal error ({detail}); this is a bug in linkkernel, not in your code. "
        "The full traceback is in the kernel log (the Jupyter server's terminal)."
    )


def internal_error_reply(exc: BaseException, log: logging.Logger, execution_count: int) -> dict[str, Any]:
    """Log a linkkernel bug in full and build the execute_reply content that reports it."""
    log.error("linkkernel internal error while handling execute_request", exc_info=exc)
    line = internal_error_line(exc)
    return {
        "status": "error",
        "ename": INTERNAL_ERROR_NAME,
        "evalue": line,
        "traceback": [line],
        "execution_count": execution_count,
        "user_expressions": {},
        "payload": [],
    }
