"""What the runner hands an executor (this kernel or a remote worker) and what it gets back.

The contract between the pipeline engine and remote execution: inputs and outputs travel as
content-addressed blobs, so a remote run reuses the blobs the cache store already holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from linkkernel.namespaces import Blob


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
    the user executed) or is captured silently (an ancestor).
    """

    name: str
    code: str
    inputs: dict[str, Blob]
    live: bool


@dataclass
class TaskResult:
    """What a run produced: changed names as blobs, frozen (linkkernel.store.freeze) so that
    the cache can keep them as they are; deleted names, nbformat outputs, error."""

    bound: dict[str, Blob] = field(default_factory=dict)
    deleted: tuple[str, ...] = ()
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: UserError | None = None
