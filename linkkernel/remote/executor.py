"""`run_remote`: run one component on a registered worker, as if it ran here.

Inputs go to the shared store (each blob once: the store is content-addressed and remembers
what it holds), the task goes to the worker, and while it runs its outputs reach the cell
live when it is the component the user executed. The result comes back as blobs and
nbformat outputs, the same TaskResult a local run gives, so staleness and caching do not
care where a component ran. Faults outside the user's code are RemoteError lines.
"""

from __future__ import annotations

import base64
import functools
import linecache
import sys
import threading
import uuid
from typing import Any

from linkkernel.progress import TransientLine
from linkkernel.remote import settings
from linkkernel.remote.client import Client, RemoteError
from linkkernel.remote.protocol import read_key
from linkkernel.remote.registry import WorkerEntry, get
from linkkernel.remote.storage import MissingBlob, Store
from linkkernel.store import freeze
from linkkernel.tasks import ComponentTask, TaskResult, UserError

# Kept for the kernel's life: a connected socket per alias and thread (a ZeroMQ socket must
# not be shared between threads) and a store per alias that remembers which blobs it already
# holds. Rebuilt when the registry entry or the key in its key file changes (a key rewritten
# in place, the worker restarted with it).
_clients: dict[tuple[str, int], tuple[tuple[WorkerEntry, bytes], Client]] = {}
_stores: dict[str, tuple[tuple[WorkerEntry, bytes], Store]] = {}


def client_for(entry: WorkerEntry) -> Client:
    slot, key = (entry.alias, threading.get_ident()), read_key(entry.key_file)
    cached = _clients.get(slot)
    if cached and cached[0] == (entry, key) and not cached[1].closed:
        return cached[1]
    if cached:
        cached[1].close()
    client = Client(entry.alias, entry.address, key, entry.server_key)
    _clients[slot] = ((entry, key), client)
    return client


def store_for(entry: WorkerEntry) -> Store:
    key = read_key(entry.key_file)
    cached = _stores.get(entry.alias)
    if cached and cached[0] == (entry, key):
        return cached[1]
    store = Store(entry.storage, key, entry.storage_options)
    _stores[entry.alias] = ((entry, key), store)
    return store


class OutputLog:
    """A task's outputs as nbformat stores them: adjacent stream text joined, displays
    updated in place by display_id, transient data dropped."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, Any]] = []
        self._clear_pending = False

    def add(self, message: dict[str, Any]) -> None:
        if "clear_output" in message:
            if message["clear_output"]:
                self._clear_pending = True
            else:
                self.outputs.clear()
            return
        if self._clear_pending:
            self.outputs.clear()
            self._clear_pending = False
        output = dict(message["output"])
        display_id = (output.pop("transient", None) or {}).get("display_id")
        if output["output_type"] == "update_display_data":
            for i, old in enumerate(self.outputs):
                if old.get("_display_id") == display_id:
                    self.outputs[i] = {**old, "data": output["data"], "metadata": output["metadata"]}
            return
        if output["output_type"] == "stream" and self.outputs:
            last = self.outputs[-1]
            if last["output_type"] == "stream" and last["name"] == output["name"]:
                last["text"] += output["text"]
                return
        if output["output_type"] == "execute_result":
            output["execution_count"] = None
        if display_id:
            output["_display_id"] = display_id
        self.outputs.append(output)

    def nbformat(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in o.items() if k != "_display_id"} for o in self.outputs]


def publish_live(kernel, message: dict[str, Any]) -> None:
    """Show one output in the cell being executed, through the kernel's usual channels."""
    shell = kernel.shell
    if "clear_output" in message:
        shell.display_pub.clear_output(wait=message["clear_output"])
        return
    output = message["output"]
    kind = output["output_type"]
    if kind == "stream":
        stream = sys.stdout if output["name"] == "stdout" else sys.stderr
        stream.write(output["text"])
        stream.flush()
    elif kind in ("display_data", "update_display_data"):
        shell.display_pub.publish(
            output["data"], output["metadata"], transient=output.get("transient"), update=kind == "update_display_data"
        )
    elif kind == "execute_result":
        sys.stdout.flush()
        sys.stderr.flush()
        content = {"data": output["data"], "metadata": output["metadata"], "execution_count": shell.execution_count}
        kernel.session.send(
            kernel.iopub_socket, "execute_result", content, parent=kernel.get_parent(), ident=kernel._topic("execute_result")
        )
    elif kind == "error":
        sys.stdout.flush()
        sys.stderr.flush()
        content = {"ename": output["ename"], "evalue": output["evalue"], "traceback": output["traceback"]}
        kernel.session.send(kernel.iopub_socket, "error", content, parent=kernel.get_parent(), ident=kernel._topic("error"))


# What a task's comms may send (taskprocess.PipeComm): the messages of a kernel's own comms.
_COMM_MESSAGES = frozenset({"comm_open", "comm_msg", "comm_close"})


def publish_comm(kernel, message: dict[str, Any]) -> None:
    """Send a task's comm message to the frontend as the kernel's own comms send theirs,
    whether the component runs live or silently: a local parent's widgets reach the frontend
    too, and the outputs kept for it show them."""
    if message.get("msg_type") not in _COMM_MESSAGES:
        return
    content = message["content"]
    kernel.session.send(
        kernel.iopub_socket,
        message["msg_type"],
        content,
        metadata=message.get("metadata") or {},
        parent=kernel.get_parent(),
        ident=f"comm-{content.get('comm_id')}".encode(),
        buffers=[base64.b64decode(buffer) for buffer in message.get("buffers") or ()],
    )


def component_sources(kernel) -> dict[str, list[str]]:
    """The kernel's component cell files: {filename: [component, source]}.

    A function defined in a parent component that ran here and is called on the worker has
    its code in one of these files; with them the worker labels its frames `Component
    load, line 3` and shows the source, instead of a temporary path on this machine. A
    parent that ran elsewhere (on a worker, or in an earlier kernel) compiled its code in a
    file of the same name in another directory: every component's code is named here as
    this kernel would name its file, and the worker matches such files by that name.
    """
    shell = getattr(kernel, "shell", None)
    compiler = getattr(shell, "compile", None)
    if not hasattr(compiler, "labelled_files"):
        return {}
    known = getattr(shell, "component_sources", None)
    sources = {_cell_file(source): [component, source] for component, source in (known() if known else ())}
    sources.update(
        (filename, [component, "".join(linecache.getlines(filename))])
        for filename, component in compiler.labelled_files().items()
    )
    return sources


@functools.lru_cache(maxsize=4096)
def _cell_file(source: str) -> str:
    """ipykernel's file name for a cell's code, remembered: the hash is pure Python."""
    from ipykernel.compiler import get_file_name

    return get_file_name(source)


def _upload(store: Store, task: ComponentTask) -> set[str]:
    """Store the task's inputs; the digests of those actually uploaded (not already there)."""
    return {blob.digest for blob in task.inputs.values() if store.put(blob)}


def _submit(kernel, client: Client, store: Store, task: ComponentTask, alias: str, on_output) -> Any:
    """Send the task and follow it to its end: the worker's `done` message."""
    from linkkernel.remote.worker import versions

    task_id = uuid.uuid4().hex
    body = {
        "task": task_id,
        "name": task.name,
        "code": task.code,
        "inputs": {name: blob.digest for name, blob in task.inputs.items()},
        # Local input files this kernel wrote or verified: a worker on this machine maps them
        # without hashing them again.
        "verified": store.verified(blob.digest for blob in task.inputs.values()) if store.local else {},
        "live": task.live,  # only then is the value it shows sent back, for `_`
        "versions": versions(),
        "sources": component_sources(kernel),
        "settings": settings.of_kernel(getattr(kernel, "shell", None)),
    }
    # Executed by the user and waiting for a slot on a busy worker, the cell would show
    # nothing, as if it hung; an ancestor waits under the run's own progress line instead.
    # Removed before the task shows anything, alone in its cell it goes without a trace.
    waiting = TransientLine(kernel, "waiting", alone=task.alone)
    try:
        accepted = client.submit(body)
        if task.live and accepted.get("ahead"):
            waiting.show(f"linkkernel: waiting for worker {alias!r}: {accepted['ahead']} task(s) ahead in its queue")
        return client.follow(task_id, on_output, on_started=waiting.clear)
    except KeyboardInterrupt:
        client.cancel(task_id)
        raise
    finally:
        waiting.clear()


def run_remote(kernel, task: ComponentTask, alias: str) -> TaskResult:
    """Run `task` on the worker registered as `alias`; KeyboardInterrupt cancels it there."""
    entry = get(alias)
    store = store_for(entry)
    uploaded = _upload(store, task)
    client = client_for(entry)
    log = OutputLog()

    def on_output(message: dict[str, Any]) -> None:
        if "comm" in message:
            publish_comm(kernel, message["comm"])
            return
        log.add(message)
        if task.live:
            publish_live(kernel, message)

    resent = False
    while True:
        try:
            done = _submit(kernel, client, store, task, alias, on_output)
            break
        except KeyboardInterrupt as exc:
            # Still the user's KeyboardInterrupt; it carries what the task had shown, kept for
            # the run's record as a local cell interrupted keeps what it printed.
            exc.outputs = log.nbformat()
            raise
        except RemoteError as exc:
            # Maybe a blob this kernel takes for stored is gone from the store (emptied, expired):
            # the next run checks rather than failing the same way for the kernel's whole life.
            store.forget_uploads()
            # An input lost that way (the storage cleaned up, the worker restarted on a new
            # folder) is stored again and the task sent once more. Missing though stored just
            # now, the worker reads another storage than the one registered: that is the error.
            if exc.missing is None or resent or exc.missing in uploaded:
                raise
            uploaded, resent = _upload(store, task), True
    result = done.body["result"]
    if result.get("error"):
        error = result["error"]
        return TaskResult(
            outputs=log.nbformat(), error=UserError(error["ename"], error["evalue"], error["traceback"]), asked_exit=result.get("exit"),
            payload=result.get("payload") or [],
        )
    if result.get("unpicklable"):
        name, type_name = next(iter(result["unpicklable"].items()))
        raise RemoteError(
            f"component {task.name!r} ran on worker {alias!r} but its output {name!r} ({type_name}) "
            "cannot be pickled, so it cannot come back; keep such values inside one component"
        )
    if store.local:
        store.remember(done.body.get("verified") or {})  # output files the task wrote and hashed
    # Frozen as each arrives: a blob file whose buffers are all small is let go of at once,
    # rather than every output holding its file open until all are in (see store.freeze).
    try:
        bound = {name: freeze(store.get(digest, mapped=True)) for name, digest in result["bound"].items()}
        same = next((blob for blob in bound.values() if blob.digest == result.get("last")), None)
        last = same or (freeze(store.get(result["last"], mapped=True)) if task.live and result.get("last") else None)
    except MissingBlob as exc:
        raise RemoteError(
            f"{exc}, though worker {alias!r} has just stored it there: is the worker's --storage "
            f"the storage registered for it ({entry.storage})?"
        ) from None
    return TaskResult(bound=bound, deleted=tuple(result["deleted"]), outputs=log.nbformat(), last=last, asked_exit=result.get("exit"), payload=result.get("payload") or [])
