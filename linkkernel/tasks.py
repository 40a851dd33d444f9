"""What the runner hands an executor (this kernel or a remote worker) and what it gets back.

The contract between the pipeline engine and remote execution: inputs and outputs travel as
content-addressed blobs, so a remote run reuses the blobs the cache store already holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.jsonutil import json_clean, json_default

from linkkernel.namespaces import Blob
from linkkernel.tracebacks import blame_user


@dataclass(frozen=True)
class UserError:
    """An error in the user's code, as Jupyter shows it: traceback already trimmed and labelled."""

    ename: str
    evalue: str
    traceback: list[str]


@dataclass
class ComponentTask:
    """One run of one component.

    `inputs` is the component's starting namespace (the merge of its parents' final
    namespaces); `live` says whether its output goes to the cell as it happens (the component
    the user executed) or is captured silently (an ancestor); `alone` that, live, it shows
    the first output of its cell (nothing of the kernel's is above it).
    """

    name: str
    code: str
    inputs: dict[str, Blob]
    live: bool
    alone: bool = False


@dataclass
class TaskResult:
    """What a run produced: changed names as blobs, frozen (linkkernel.store.freeze) so that
    the cache can keep them as they are; deleted names, nbformat outputs, error; `last`: the
    value of the last expression (shown as the execute_result), for `_` and `Out[N]`, when
    it pickles; `asked_exit`: the code called exit(), with this keep_kernel; `payload`: what
    it paged (`len?`), as ipykernel's reply payload."""

    bound: dict[str, Blob] = field(default_factory=dict)
    deleted: tuple[str, ...] = ()
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: UserError | None = None
    last: Blob | None = None
    asked_exit: bool | None = None
    payload: list[dict[str, Any]] = field(default_factory=list)


def as_sent(value: Any) -> Any:
    """Display data or metadata as the frontend receives it in a message: bytes as base64
    text, tuples as lists (jupyter_client's message packer, without the deprecation warning
    it prints when it has to clean a value first, which the cell shows once already when the
    message goes). Outputs are kept as JSON: formatters may return bytes (matplotlib's PNG
    figures). A value no message could carry is the user's error, as ipykernel raises it."""
    try:
        return json.loads(json.dumps(value, default=json_default, allow_nan=False))
    except (TypeError, ValueError):
        try:
            return json.loads(json.dumps(json_clean(value), default=json_default, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise blame_user(exc) from None
