"""The pipeline engine: executing a component runs its stale ancestors silently, then it.

The kernel hands every component cell here. For each run the runner builds a fresh namespace
from the parents' final namespaces (copies loaded from blobs, declared order, later parent
wins), swaps it in as the shell's user namespace, runs the code through IPython (so magics,
top-level await and the display hook keep working), works out what the run changed and
publishes that into the notebook namespace. Ancestors run captured; the component runs live.
"""

from __future__ import annotations

import builtins
import re
import sys
import time
import types
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from linkkernel import capture
from linkkernel.declarations import Component
from linkkernel.errors import LinkError
from linkkernel.namespaces import Blob, UnpicklableValue, changes, dump, load
from linkkernel.progress import Progress
from linkkernel.sources import Sources, notebook_path_from_env
from linkkernel.staleness import FRESH, RunRecord, code_hash, new_run_id, states
from linkkernel.store import MEMORY_PREFIX, CacheStore, freeze

# Names IPython itself keeps in the user namespace; never outputs of a component.
_IPYTHON_NAME = re.compile(r"_+|_\d+|_i+|_i\d+|_[ido]h|In|Out|get_ipython|exit|quit|__builtins__|__name__|__doc__|__package__|__loader__|__spec__\Z")
_PRELUDE = ("In", "Out", "_ih", "_oh", "_dh", "get_ipython", "exit", "quit")


def is_ipython_name(name: str) -> bool:
    return _IPYTHON_NAME.fullmatch(name) is not None


class Interrupted(Exception):
    """The user interrupted a run; nothing half-run was recorded."""


@dataclass
class RunOutcome:
    """What one run of one component left behind."""

    record: RunRecord
    values: dict[str, Any] = field(default_factory=dict)
    deleted: tuple[str, ...] = ()
    error: dict[str, Any] | None = None
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    blobs: dict[str, Blob] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    reply: dict[str, Any] | None = None


class Runner:
    """Per-kernel engine state: where declarations come from, the cache store, and the runs."""

    def __init__(self, kernel, cache_url: str | None) -> None:
        self.kernel = kernel
        self.shell = kernel.shell
        self.cache_url = cache_url
        self.sources = Sources(notebook_path_from_env())
        self.store = CacheStore(cache_url, self.sources.notebook_path)

    # ---- declarations and graph -------------------------------------------------------

    def set_notebook(self, path: str) -> None:
        """`%link notebook PATH`: read declarations from PATH and use its cache."""
        self.store.flush()
        self.sources.notebook_path = path
        self.store = CacheStore(self.cache_url, self.sources.notebook_path)

    def learn(self, code: str, cell_meta: dict | None, cell_id: str | None) -> Component | None:
        return self.sources.learn(code, cell_meta, cell_id)

    def graph(self, targets: list[str] | None = None):
        """The validated DAG of `targets` and their ancestors (every component when None).

        Only the part of the notebook a run needs is validated, so a half-finished rename
        elsewhere does not block an unrelated component.
        """
        from linkkernel.graph import build_graph

        components = self.sources.components()
        if targets is not None:
            components = _relevant(components, targets)
        return build_graph(components, self.sources.looked_in())

    def states(self, graph) -> dict[str, str]:
        from linkkernel.graph import run_order

        order = run_order(graph)
        comps = {n: graph.nodes[n]["component"] for n in order}
        records = {n: self.store.get(n) for n in order}
        return states(
            order,
            {n: c.parents for n, c in comps.items()},
            {n: code_hash(c.source) for n, c in comps.items()},
            records,
            {n: r is not None and self.store.available(r) for n, r in records.items()},
        )

    def plan(self, graph, targets: list[str], force: bool = False, rerun_targets: bool = False) -> list[str]:
        """The components to run for `targets`, in run order: whatever is stale, plus the targets
        themselves when `rerun_targets` (executing a component cell always runs it)."""
        from linkkernel.graph import ancestors, run_order

        needed = set(targets)
        for target in targets:
            needed.update(ancestors(graph, target))
        order = run_order(graph, needed)
        self._check_remotes(graph, order)
        if force:
            return order
        state = self.states(graph)
        return [n for n in order if (rerun_targets and n in targets) or state[n] != FRESH]

    def _check_remotes(self, graph, names: list[str]) -> None:
        aliases = {graph.nodes[n]["component"].remote for n in names} - {None}
        if aliases:
            try:
                from linkkernel.remote.registry import require_registered
            except ImportError as exc:
                raise LinkError(f"remote components ({', '.join(sorted(aliases))}) need linkkernel.remote: {exc}") from exc
            require_registered(aliases)

    # ---- executing a component cell ------------------------------------------------------

    async def execute_cell(
        self, component: Component, live: Callable[[], Awaitable[dict]], store_history: bool
    ) -> dict[str, Any]:
        """Run the stale ancestors of `component` silently, then `live()` (ipykernel's own
        do_execute) inside the component's namespace. Returns the execute_reply content."""
        try:
            graph = self.graph([component.name])
            plan = self.plan(graph, [component.name], rerun_targets=True)
        except LinkError as exc:
            return self.refuse(exc, store_history)
        ancestors_to_run = [n for n in plan if n != component.name]
        progress = Progress(self.kernel, len(ancestors_to_run))
        warnings: list[str] = []
        try:
            for k, name in enumerate(ancestors_to_run, 1):
                progress.show(k, name)
                outcome = await self.run_component(graph.nodes[name]["component"], live=None)
                if outcome.interrupted:
                    raise Interrupted
                if outcome.error is not None:
                    progress.clear()
                    return self._report_parent_error(name, outcome.error, store_history)
                warnings.extend(outcome.warnings)
            progress.clear()
        except (Interrupted, KeyboardInterrupt):
            progress.clear()
            return self._report_interrupt(store_history)
        except LinkError as exc:  # e.g. a cached value the storage lost
            progress.clear()
            return self.refuse(exc, store_history)
        finally:
            progress.stop()
        for line in warnings:
            print(line, file=sys.stderr)
        try:
            outcome = await self.run_component(component, live=live)
        except LinkError as exc:
            return self.refuse(exc, store_history)
        for line in outcome.warnings:
            print(line, file=sys.stderr)
        return outcome.reply

    async def run_component(self, component: Component, live: Callable[[], Awaitable[dict]] | None) -> RunOutcome:
        """One run of one component: silent when `live` is None, else through `live()`."""
        parent_runs: dict[str, str] = {}
        merged: dict[str, str] = {}
        for parent in component.parents:
            record = self.store.get(parent)
            parent_runs[parent] = record.run_id
            merged.update(record.namespace)
        started_wall, started = time.time(), time.monotonic()
        record = RunRecord(
            name=component.name,
            run_id=new_run_id(),
            code_hash=code_hash(component.source),
            parents=parent_runs,
            status="failed",
            started=started_wall,
            duration=0.0,
            where=f"remote:{component.remote}" if component.remote else "local",
        )
        if component.remote:
            outcome = await self._run_remote(component, merged, record, live is not None)
        else:
            outcome = await self._run_local(component, merged, record, live)
        record.duration = time.monotonic() - started
        if not outcome.interrupted:
            self._publish(outcome)
        return outcome

    def _publish(self, outcome: RunOutcome) -> None:
        """Outputs into the notebook namespace; the record (failed ones too, for %link status) into the store."""
        if outcome.record.ok:
            user_ns = self.shell.user_ns
            user_ns.update(outcome.values)
            for name in outcome.deleted:
                user_ns.pop(name, None)
        self.store.put(outcome.record, outcome.blobs, outcome.memory)

    async def _run_local(self, component: Component, merged: dict[str, str], record: RunRecord, live) -> RunOutcome:
        shell = self.shell
        loaded = {name: self.store.load(digest) for name, digest in merged.items()}
        inputs = {name: value for name, (value, _) in loaded.items()}
        module = types.ModuleType("__main__")
        ns = module.__dict__
        ns.update({k: shell.user_ns[k] for k in _PRELUDE if k in shell.user_ns})
        ns.update(inputs)
        outcome = RunOutcome(record)
        result = None
        with _notebook_name_hint(shell, component.name), _swapped_namespace(shell, module), shell.compile.labelled(
            component.name
        ):
            if live is None:
                with capture.captured(shell) as outputs, shell.collect_errors() as errors:
                    result = await _run_silently(shell, component.source)
                record.outputs = outputs.items
                if result.success:
                    record.status = "ok"
                else:
                    err = result.error_before_exec or result.error_in_exec
                    if isinstance(err, KeyboardInterrupt):
                        outcome.interrupted = True
                        return outcome
                    collected = errors[-1] if errors else None
                    ename = collected.ename if collected else type(err).__name__
                    evalue = collected.evalue if collected else str(err)
                    traceback = collected.traceback if collected else [f"{ename}: {evalue}"]
                    outputs.error(ename, evalue, traceback)
                    outcome.error = {"ename": ename, "evalue": evalue, "traceback": traceback}
                    return outcome
            else:
                with capture.recorded(shell) as outputs:
                    reply = await live()
                result = shell.last_execution_result
                value = getattr(result, "result", None)
                if value is not None:
                    data, meta = shell.display_formatter.format(value)
                    outputs.display(data, meta, "execute_result")
                record.outputs = outputs.items
                if reply.get("status") == "ok":
                    record.status = "ok"
                else:
                    outputs.error(reply.get("ename", ""), reply.get("evalue", ""), reply.get("traceback", []))
                outcome.reply = reply
        if live is not None:  # `_`, `_i`, `_5`...: plain cells keep IPython's history names
            shell.user_ns.update({n: ns[n] for n in ns if is_ipython_name(n) and not n.startswith("__")})
        if record.ok:
            self._collect(outcome, inputs, merged, ns, {n: how for n, (_, how) in loaded.items()})
        return outcome

    def _collect(self, outcome: RunOutcome, inputs: dict, merged: dict[str, str], final: dict, loaded: dict) -> None:
        """Work out the run's outputs and its final namespace as digests; pickle synchronously.

        An input proven untouched (copy-on-write pages never written) or kept in memory only
        gets no digest, which `changes` reads as "unchanged while it keeps its identity".
        """
        ignore = [n for n in final if is_ipython_name(n)]
        check = {
            n: None if d.startswith(MEMORY_PREFIX) or (loaded.get(n) is not None and loaded[n].unchanged(final.get(n))) else d
            for n, d in merged.items()
        }
        found = changes(inputs, check, final, ignore=ignore)
        namespace = {n: d for n, d in merged.items() if n not in found.deleted}
        blobs: dict[str, Blob] = {}
        memory: dict[str, Any] = {}
        for name in found.bound:
            value = final[name]
            try:
                blob = freeze(dump(name, value))
            except UnpicklableValue as exc:
                digest = f"{MEMORY_PREFIX}{outcome.record.run_id}:{name}"
                memory[digest] = value
                outcome.record.memory_only.append(name)
                outcome.warnings.append(
                    f"linkkernel: component {outcome.record.name!r}: {exc.name!r} ({exc.type_name}) cannot be "
                    "serialised; it is kept in memory only, so after a restart the component runs again"
                )
            else:
                digest = blob.digest
                blobs[digest] = blob
            namespace[name] = digest
        outcome.record.namespace = namespace
        outcome.values = {n: final[n] for n in found.bound}
        outcome.deleted = found.deleted
        outcome.blobs = blobs
        outcome.memory = memory

    async def _run_remote(self, component: Component, merged: dict[str, str], record: RunRecord, live: bool) -> RunOutcome:
        """The single call site of remote execution: REMOTE's run_remote(kernel, task, alias)."""
        from linkkernel.remote.executor import run_remote
        from linkkernel.tasks import ComponentTask

        for name, digest in merged.items():
            if digest.startswith(MEMORY_PREFIX):
                type_name = UnpicklableValue(name, self.store.memory_values.get(digest), TypeError()).type_name
                raise LinkError(
                    f"component {component.name!r} cannot run on worker {component.remote!r}: its input "
                    f"{name!r} ({type_name}) cannot be pickled, so it exists only in this kernel's memory"
                )
        task = ComponentTask(
            component.name,
            component.source,
            {n: self.store.blob(d) for n, d in merged.items()},
            live,
        )
        try:
            result = run_remote(self.kernel, task, component.remote)
        except KeyboardInterrupt:  # run_remote cancelled the task on the worker, then re-raised
            if not live:
                raise
            error = {
                "ename": "KeyboardInterrupt",
                "evalue": "",
                "traceback": [f"\x1b[0;31mKeyboardInterrupt\x1b[0m: the task on worker {component.remote!r} was cancelled"],
            }
            self._send_error(error)
            return RunOutcome(record, interrupted=True, reply=self._error_reply(error, True))
        if isinstance(result, Awaitable):
            result = await result
        outcome = RunOutcome(record)
        record.outputs = list(result.outputs)
        if result.error is not None:
            error = {"ename": result.error.ename, "evalue": result.error.evalue, "traceback": list(result.error.traceback)}
            if result.error.ename == "KeyboardInterrupt":
                outcome.interrupted = True
                return outcome
            outcome.error = error
            if live:
                self._send_error(error)
                outcome.reply = self._error_reply(error, True)
            return outcome
        record.status = "ok"
        namespace = {n: d for n, d in merged.items() if n not in result.deleted}
        blobs = {}
        for name, blob in result.bound.items():
            blobs[blob.digest] = freeze(blob)
            namespace[name] = blob.digest
        for name, type_name in result.unpicklable.items():
            outcome.warnings.append(f"linkkernel: component {component.name!r}: {name!r} ({type_name}) cannot be serialised and was not returned")
        record.namespace = namespace
        outcome.values = {name: load(blob) for name, blob in result.bound.items()}
        outcome.deleted = tuple(result.deleted)
        outcome.blobs = blobs
        if live:
            outcome.reply = self._ok_reply(True)
        return outcome

    # ---- replies ------------------------------------------------------------------------

    def _count(self, store_history: bool) -> int:
        if store_history:
            self.shell.execution_count += 1
        return self.shell.execution_count - 1

    def _ok_reply(self, store_history: bool) -> dict[str, Any]:
        return {"status": "ok", "execution_count": self._count(store_history), "user_expressions": {}, "payload": []}

    def _error_reply(self, error: dict[str, Any], store_history: bool) -> dict[str, Any]:
        return {
            "status": "error",
            "ename": error["ename"],
            "evalue": error["evalue"],
            "traceback": error["traceback"],
            "execution_count": self._count(store_history),
            "user_expressions": {},
            "payload": [],
        }

    def _send_error(self, error: dict[str, Any]) -> None:
        kernel = self.kernel
        kernel.session.send(
            kernel.iopub_socket, "error", error, parent=kernel.get_parent(), ident=kernel._topic("error")
        )

    def refuse(self, exc: LinkError, store_history: bool = True) -> dict[str, Any]:
        """An invalid pipeline or declaration: one line in the cell, nothing run."""
        error = {"ename": type(exc).__name__, "evalue": str(exc), "traceback": exc._render_traceback_()}
        self._send_error(error)
        return self._error_reply(error, store_history)

    def _report_parent_error(self, name: str, error: dict[str, Any], store_history: bool) -> dict[str, Any]:
        full = dict(error, traceback=[f"\x1b[0;31mError in parent component {name!r}:\x1b[0m", *error["traceback"]])
        self._send_error(full)
        return self._error_reply(full, store_history)

    def _report_interrupt(self, store_history: bool) -> dict[str, Any]:
        error = {
            "ename": "KeyboardInterrupt",
            "evalue": "",
            "traceback": ["\x1b[0;31mKeyboardInterrupt\x1b[0m: interrupted while running parent components; nothing half-run was kept"],
        }
        self._send_error(error)
        return self._error_reply(error, store_history)

    # ---- %link run -------------------------------------------------------------------------

    async def run_targets(self, targets: list[str] | None, force: bool) -> list[str]:
        """`%link run`: bring `targets` (all when None) up to date, silently. Returns what ran."""
        from linkkernel.graph import run_order

        graph = self.graph(targets)
        names = run_order(graph) if targets is None else targets
        for name in names:
            if name not in graph:
                raise LinkError(f"%link run: no component named {name!r} in {self.sources.looked_in()}")
        plan = self.plan(graph, names, force)
        ran = []
        progress = Progress(self.kernel, len(plan))
        try:
            for k, name in enumerate(plan, 1):
                progress.show(k, name)
                outcome = await self.run_component(graph.nodes[name]["component"], live=None)
                if outcome.interrupted:
                    raise KeyboardInterrupt
                if outcome.error is not None:
                    raise ComponentFailed.named(name, outcome.error)
                ran.append(name)
                for line in outcome.warnings:
                    print(line, file=sys.stderr)
        finally:
            progress.stop()
            progress.clear()
        return ran


def _relevant(components: list[Component], targets: list[str]) -> list[Component]:
    """The components named by `targets` or reachable through their parents (all same-named cells,
    so a duplicate still shows)."""
    by_name: dict[str, list[Component]] = {}
    for component in components:
        by_name.setdefault(component.name, []).append(component)
    wanted, todo = set(), list(targets)
    while todo:
        name = todo.pop()
        if name in wanted or name not in by_name:
            continue
        wanted.add(name)
        for component in by_name[name]:
            todo.extend(component.parents)
    return [c for c in components if c.name in wanted]


class ComponentFailed(Exception):
    """A component run by `%link run` failed; shown as that component's own error."""

    def __init__(self, name: str, error: dict[str, Any]) -> None:
        super().__init__(error["evalue"])
        self.name, self.error = name, error

    @classmethod
    def named(cls, name: str, error: dict[str, Any]) -> ComponentFailed:
        """An instance whose class carries the user's exception name, so the `error` message's
        ename/evalue are the user's own, as for a cell (tools such as nbclient read them)."""
        return type(error["ename"], (cls,), {})(name, error)

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mError in component {self.name!r}:\x1b[0m", *self.error["traceback"]]


async def _run_silently(shell, code: str):
    preprocessing_exc_tuple = None
    try:
        transformed = shell.transform_cell(code)
    except Exception:  # noqa: BLE001 - reported by run_cell exactly as ipykernel does
        transformed, preprocessing_exc_tuple = code, sys.exc_info()
    return await shell.run_cell_async(
        code, store_history=False, silent=True, transformed_cell=transformed, preprocessing_exc_tuple=preprocessing_exc_tuple
    )


@contextmanager
def _swapped_namespace(shell, module: types.ModuleType) -> Iterator[None]:
    saved = shell.user_module, shell.user_ns
    shell.user_module, shell.user_ns = module, module.__dict__
    try:
        yield
    finally:
        shell.user_module, shell.user_ns = saved


@contextmanager
def _notebook_name_hint(shell, component: str) -> Iterator[None]:
    """A NameError for a name only the notebook namespace has says so and suggests a parent."""
    notebook_ns = shell.user_ns
    saved = shell.custom_exceptions, shell.CustomTB

    def handler(sh, etype, value, tb, tb_offset=None):
        name = getattr(value, "name", None)
        if (
            etype is NameError
            and name
            and name in notebook_ns
            and name not in sh.user_ns
            and not hasattr(builtins, name)
        ):
            value.args = (
                f"name {name!r} is not defined in component {component!r}; it exists in the notebook "
                "namespace — add a parent component that defines it",
            )
        sh.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)

    shell.set_custom_exc((NameError,), handler)
    try:
        yield
    finally:
        shell.custom_exceptions, shell.CustomTB = saved
