"""The pipeline engine: executing a component runs its stale ancestors silently, then it.

The kernel hands every component cell here. For each run the runner builds a fresh namespace
from the parents' final namespaces (copies loaded from blobs, declared order, later parent
wins), swaps it in as the shell's user namespace, runs the code through IPython (so magics,
top-level await and the display hook keep working), works out what the run changed and
publishes that into the notebook namespace. Ancestors run captured; the component runs live.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import re
import signal
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from linkkernel import capture
from linkkernel.cow import IMMUTABLE, Loaded
from linkkernel.declarations import Component
from linkkernel.errors import LinkError
from linkkernel.graph import with_ancestors
from linkkernel.namespaces import (
    Blob,
    UnpicklableValue,
    changes,
    classes_put_back,
    digests_as_loaded,
    dump,
    loading_together,
    pickling_names,
    reads_notebook_globals,
    type_name,
)
from linkkernel.progress import Progress
from linkkernel.sources import Sources, notebook_path_from_env
from linkkernel.staleness import FRESH, RunRecord, code_hash, new_run_id
from linkkernel.store import MEMORY_PREFIX, CacheStore, LostValue, freeze

# Names IPython itself keeps in the user namespace; never outputs of a component.
_IPYTHON_NAME = re.compile(r"_+|_\d+|_i+|_i\d+|_[ido]h|In|Out|get_ipython|exit|quit|__builtins__|__name__|__doc__|__package__|__loader__|__spec__\Z")
_PRELUDE = ("In", "Out", "_ih", "_oh", "_dh", "get_ipython", "exit", "quit")
# The run's own module attributes, which the notebook's module keeps its own of.
_MODULE_NAMES = ("__builtins__", "__name__", "__doc__", "__package__", "__loader__", "__spec__")


# Those of IPython's names that do not start with an underscore.
_PLAIN_IPYTHON_NAMES = frozenset(("In", "Out", "get_ipython", "exit", "quit"))


def is_ipython_name(name: str) -> bool:
    """Whether `name` is one IPython keeps in a namespace. Asked of every name a run ends
    with: most are the user's, told apart without the pattern."""
    if name[:1] != "_" and name not in _PLAIN_IPYTHON_NAMES:
        return False
    return _IPYTHON_NAME.fullmatch(name) is not None


@dataclass
class RunOutcome:
    """What one run of one component left behind."""

    record: RunRecord
    values: dict[str, Any] = field(default_factory=dict)
    deleted: tuple[str, ...] = ()
    error: dict[str, Any] | None = None
    exception: BaseException | None = None  # the user's error when it was raised in this process
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    blobs: dict[str, Blob] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    reply: dict[str, Any] | None = None


def _taking_turns(method):
    """Requests on kernel subshells (JEP 91) run in threads of their own, concurrently with the
    main shell. Pipeline runs share one namespace, one cache and one set of run records, so
    they take turns: a run waits for the one in progress. The lock is re-entrant so that a
    run nested in the same thread could never hang the kernel, though none is expected
    (`%link run` inside a component cell is refused)."""

    @functools.wraps(method)
    async def run(self, *args: Any, **kwargs: Any) -> Any:
        with self._turn:
            return await method(self, *args, **kwargs)

    return run


class Runner:
    """Per-kernel engine state: where declarations come from, the cache store, and the runs."""

    def __init__(self, kernel, cache_url: str | None) -> None:
        self.kernel = kernel
        self.shell = kernel.shell
        self.cache_url = cache_url
        self.sources = Sources(notebook_path_from_env())
        self.store = CacheStore(cache_url, self.sources.notebook_path)
        self._turn = threading.RLock()
        # Component -> the run whose outputs were last put in the notebook namespace: one of
        # this process, or a cached one published by `publish_cached`. Another run of it in
        # the store (a run imported from an archive) is published in turn.
        self._published: dict[str, str] = {}
        # Names of values that pickled but could not be rebuilt when a child loaded them: made
        # again, each is tried, and kept in memory only if it fails again. By name, not by
        # digest: a value made anew each run (a timestamp in it) has a new digest each time.
        self._unrebuilt: set[str] = set()
        # (component, digest) of inputs shared with their parent that the component's run said so.
        self._said_shared: set[tuple[str, str]] = set()
        # Whether the cell of the request being handled shows a line of the kernel's already
        # (a cached value was lost, a parent's warning): transient lines then must not be
        # removed with clear_output, which would wipe it (see progress.TransientLine).
        self._cell_spoke = False
        # The DAG of every declared component, for the declarations it was built from (by
        # identity: Sources answers the same object until something changes), None when the
        # whole pipeline is not valid; see `graph`.
        self._whole: tuple[Any, Any] | None = None
        # Component -> the run id of its record when it and all its ancestors were found
        # published (see `publish_cached`).
        self._closed: dict[str, str] = {}

    # ---- declarations and graph -------------------------------------------------------

    def set_notebook(self, path: str) -> None:
        """`%link notebook PATH`: read declarations from PATH and use its cache. The notebook
        namespace holds the other notebook's values from then on, so every run of this one is
        published again as its cells need it, also those published before the switch."""
        self.store.flush()
        if path != self.sources.notebook_path:
            self._published.clear()
            self._closed.clear()
        self.sources.notebook_path = path
        self.store = CacheStore(self.cache_url, self.sources.notebook_path)

    def learn(self, code: str, cell_meta: dict | None, cell_id: str | None) -> Component | None:
        component = self.sources.learn(code, cell_meta, cell_id)
        self._follow_notebook()
        return component

    def _follow_notebook(self) -> None:
        """The notebook renamed: its cache goes along (`CacheStore.follow`)."""
        path = self.sources.notebook_path
        if path is not None:
            self.store.follow(path)

    def graph(self, targets: list[str] | None = None):
        """The validated DAG of `targets` and their ancestors (every component when None).

        Only the part of the notebook a run needs is validated, so a half-finished rename or
        a malformed tag elsewhere does not block an unrelated component.
        """
        from linkkernel.graph import build_graph

        # networkx, imported by the first component cell (not paid at start), is imported
        # whole: an interrupt midway left a package without its functions, and every
        # component cell after it an internal error until a restart.
        if "networkx" not in sys.modules:
            with _interrupts_held():
                import networkx  # noqa: F401

        declared = self.sources.declared()
        whole = self._whole_graph(declared)
        if whole is not None:  # every part of a valid pipeline is valid, with the same ancestors
            return whole
        components = declared.all() if targets is None else declared.relevant(targets)
        return build_graph(components, self.sources.looked_in())

    def _whole_graph(self, declared):
        """The DAG of every component `declared` holds, built once for it; None when some
        part of it is invalid (then only the part a run needs is validated, each time). One
        graph object while the declarations stay: what is known fresh is kept for it."""
        from linkkernel.graph import PipelineError, build_graph

        if self._whole is None or self._whole[0] is not declared:
            whole = None
            if not declared.malformed:
                try:
                    whole = build_graph(declared.components, self.sources.looked_in())
                except PipelineError:
                    pass
            self._whole = (declared, whole)
        return self._whole[1]

    def plan(self, graph, targets: list[str], force: bool = False, rerun_targets: bool = False) -> list[str]:
        """The components to run for `targets`, in run order: whatever is stale, plus the targets
        themselves when `rerun_targets` (executing a component cell always runs it)."""
        order = None
        if force or _has_remotes(graph):
            order = with_ancestors(graph, targets)
            self._check_remotes(graph, order)
            if force:
                return order
        unfresh = self.store.unfresh(graph, targets, anyway=targets if rerun_targets else ())
        chosen = unfresh | set(targets) if rerun_targets else unfresh
        if len(chosen) <= 1:  # the common case (Run All): no order to work out
            return list(chosen)
        return [n for n in order or with_ancestors(graph, targets) if n in chosen]

    def _check_remotes(self, graph, names: list[str]) -> None:
        aliases = {graph.nodes[n]["component"].remote for n in names} - {None}
        if aliases:
            from linkkernel.remote.registry import require_registered

            require_registered(aliases)

    # ---- executing a component cell ------------------------------------------------------

    @_taking_turns
    async def execute_cell(
        self,
        component: Component,
        live: Callable[[], Awaitable[dict]],
        store_history: bool,
        allow_stdin: bool = False,
        user_expressions: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run the stale ancestors of `component` silently, then `live()` (ipykernel's own
        do_execute) inside the component's namespace. Returns the execute_reply content.

        The request's `user_expressions` are evaluated after a successful run, as ipykernel
        does after a cell, in the notebook namespace the run published its outputs to (in the
        component's own they could not name the rest of the notebook), local or remote alike."""
        history = component.source if store_history else None
        try:
            reply = await self._again_when_lost(self._execute_cell, component, live, history, allow_stdin)
        except LostValue as exc:
            return self.refuse(exc, history)
        if reply.get("status") == "ok" and user_expressions:
            reply["user_expressions"] = self.shell.user_expressions(user_expressions)
        return reply

    async def _again_when_lost(self, run: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """`run(*args)`, again each time a cached value it needed turned out lost (deleted or
        damaged in the store): the components that made it are then stale and run again, as
        after `%link cache clear`, with one line saying why. A value lost twice is an error."""
        lost: set[str] = set()
        while True:
            self._cell_spoke = bool(lost)
            try:
                return await run(*args)
            except LostValue as exc:
                if _lost_key(exc) in lost:
                    raise
                lost.add(_lost_key(exc))
                print(f"linkkernel: {self._lose(exc)}", file=sys.stderr)

    def _lose(self, exc: LostValue) -> str:
        """Take the value `exc` names for gone, so the components that made it are stale and
        run again; the line that says so."""
        if isinstance(exc, UnrebuiltValue):
            self._unrebuilt.add(exc.name)
        self.store.lose(exc.digest)
        return f"{exc}; running the components that made it again"

    def publish_fresh(self, names: list[str]) -> tuple[list[str], list[str]]:
        """Publish the values of those of `names` that are fresh in the cache, for a run that
        does not execute them (`linkkernel run`). Returns them in run order, and the lines
        about values the store turned out to have lost: their components are stale then, and
        run again like any other, as when a cell finds a value lost."""
        from linkkernel.graph import run_order

        graph = self.graph(names)
        lost: dict[str, str] = {}
        while True:
            states = self.store.states(graph)
            fresh = [name for name in run_order(graph, names) if states.get(name) == FRESH]
            try:
                self.publish_cached(graph, fresh, [])
            except LostValue as exc:
                if _lost_key(exc) in lost:
                    raise
                lost[_lost_key(exc)] = self._lose(exc)
                continue
            return fresh, list(lost.values())

    async def _execute_cell(
        self, component: Component, live: Callable[[], Awaitable[dict]], history: str | None, allow_stdin: bool
    ) -> dict[str, Any]:
        before: dict[str, str | None] = {}
        try:
            graph = self.graph([component.name])
            plan = self.plan(graph, [component.name], rerun_targets=True)
            self.publish_cached(graph, [component.name], plan)
            parents = [n for n in plan if n != component.name]
            before = self._run_ids(parents)
            with _input_from_frontend(self.kernel, allow_stdin):
                # Nothing of the cell has run yet: the progress line is all it shows, unless
                # the line about a lost value is above it.
                await self._run_captured(graph, parents, alone=not self._cell_spoke)
        except KeyboardInterrupt:
            return self.report_interrupt(history, "running parent components", self._kept_since(before))
        except ComponentFailed as exc:
            reply = self._report_parent_error(exc.name, exc.error, history)
            if exc.post_mortem is not None and self.shell.call_pdb and allow_stdin:
                sys.last_value = exc  # the shell's debugger opens the error it carries
                with _input_from_frontend(self.kernel, allow_stdin):  # %pdb, after the error as in a cell
                    self.shell.debugger(force=True)
            return reply
        except LostValue:
            raise
        except LinkError as exc:  # an invalid pipeline
            return self.refuse(exc, history)
        count_before = self.shell.execution_count
        before = self._run_ids([component.name])
        try:
            outcome = await self.run_component(component, live=live)
        except LostValue:  # an input, lost before any of the component's code ran
            raise
        except LinkError as exc:
            return self.refuse(exc, history)
        except InputsInterrupted:  # before any of its code ran
            return self.report_interrupt(history, f"loading the inputs of component {component.name!r}")
        except KeyboardInterrupt:  # after the user's code: while its outputs were being kept, or once they were
            counted = self.shell.execution_count != count_before  # the live run already numbered the cell
            history = None if counted else history
            if self._kept_since(before):  # the interrupt landed as the run was recorded: it stays recorded
                return self._fail(_interrupt_error(f"interrupted just after component {component.name!r} ran; its run was kept"), history)
            return self.report_interrupt(history, f"keeping the outputs of component {component.name!r}")
        for line in outcome.warnings:
            print(line, file=sys.stderr)
        return outcome.reply

    async def run_component(self, component: Component, live: Callable[[], Awaitable[dict]] | None) -> RunOutcome:
        """One run of one component: silent when `live` is None, else through `live()`."""
        parent_runs, merged = self._parent_namespaces(component)
        started_wall, started = time.time(), time.monotonic()
        record = RunRecord(
            name=component.name,
            run_id=new_run_id(),
            code_hash=code_hash(component.source),
            parents=parent_runs,
            status="failed",
            started=started_wall,
            duration=0.0,
            where=component.runs_on,
        )
        if component.remote:
            outcome = await self._run_remote(component, merged, record, live is not None)
            from linkkernel.debugger import unreachable_breakpoints_note  # debugpy: loaded with the debugger

            note = unreachable_breakpoints_note(self.kernel, component)
            if note is not None:
                outcome.warnings.append(note)
        else:
            outcome = await self._run_local(component, merged, record, live)
        record.duration = time.monotonic() - started
        if not outcome.interrupted:
            self._publish(outcome)
        return outcome

    def _run_ids(self, names: list[str]) -> dict[str, str | None]:
        """The recorded run of each of `names` (None when none is), for `_kept_since`."""
        return {name: getattr(self.store.get(name), "run_id", None) for name in names}

    def _kept_since(self, before: dict[str, str | None]) -> list[str]:
        """Those of the components in `before` (`_run_ids`) whose new run is recorded since.
        An interrupt landing while a run is recorded is raised once it is (`_publish`): the
        line saying what the interrupt stopped names these as kept, as the cache keeps them."""
        return [name for name, run_id in before.items() if getattr(self.store.get(name), "run_id", None) != run_id]

    def _parent_namespaces(self, component: Component) -> tuple[dict[str, str], dict[str, str]]:
        """The recorded run of each parent, and the merge of their final namespaces (as
        digests, staleness.inherited): what the component starts from."""
        runs = {parent: self.store.get(parent).run_id for parent in component.parents}
        return runs, self.store.inherited(component.parents)

    def _publish(self, outcome: RunOutcome) -> None:
        """Outputs into the notebook namespace; the record (failed ones too, for %link status)
        into the store. All of it or, when interrupted, none: the copies the store keeps of
        values that cannot be serialised run their own code, which reads the notebook's
        globals, so they are made once the outputs are published, and an interrupt while they
        are made puts the notebook's old values back; the rest holds an interrupt off."""
        user_ns = self.shell.user_ns
        names = [*outcome.values, *outcome.deleted] if outcome.record.ok else []
        before = {name: user_ns.get(name, _ABSENT) for name in names}
        with _interrupts_held():
            user_ns.update({name: outcome.values[name] for name in names if name in outcome.values})
            for name in outcome.deleted:
                user_ns.pop(name, None)
        try:
            kept = self.store.kept_copies(outcome.memory)
        except BaseException:  # KeyboardInterrupt: copying never raises anything else
            with _interrupts_held():
                user_ns.update({name: old for name, old in before.items() if old is not _ABSENT})
                for name in [name for name, old in before.items() if old is _ABSENT]:
                    user_ns.pop(name, None)
            raise
        with _interrupts_held():
            if outcome.record.ok:
                self._published[outcome.record.name] = outcome.record.run_id
            # Renamed while it ran, and a second kernel on the notebook followed: its cache
            # folder moved there, and a write here made the old one again, for good. Asked
            # of the folder (one stat) rather than of the notebook at every run (~80 us here).
            if self.store.moved_away():
                self._follow_notebook()
            self.store.put(outcome.record, outcome.blobs, kept)
        trouble = self.store.write_trouble()
        if trouble is not None:
            outcome.warnings.append(trouble)

    async def _run_local(self, component: Component, merged: dict[str, str], record: RunRecord, live) -> RunOutcome:
        shell = self.shell
        module = types.ModuleType("__main__")
        ns = module.__dict__
        ns.update({k: shell.user_ns[k] for k in _PRELUDE if k in shell.user_ns})
        outcome = RunOutcome(record)
        # Classes the inputs bring read the run's globals while it runs, then the notebook's again.
        with (
            classes_put_back(),
            _notebook_name_hint(shell, component.name),
            shell.running_in(module),
            shell.compile.labelled(component.name),
        ):
            # Numbers and strings loaded before are those objects (nothing refers to one):
            # the inherited names of a deep pipeline are mostly those, and every other pass
            # over the inputs looks only at the `rest`.
            known = self.store.immutables(merged)
            rest = {n: d for n, d in merged.items() if n not in known} if known else merged
            loaded: dict[str, tuple[Any, Loaded | None]] = {}

            def load_input(name: str) -> Any:
                loaded[name] = self._load(component.name, "input", name, merged[name], ns)
                return loaded[name][0]

            try:  # unpickling and copying run the values' own code, which may take long
                with loading_together(merged, load_input) as value_of:
                    inputs = {name: known[name].value if name in known else value_of(name) for name in merged}
                ns.update(inputs)
                memory_values = self.store.memory_values
                copies = self.store.private({n: (d, inputs[n]) for n, d in rest.items() if d in memory_values})
            except KeyboardInterrupt:
                raise InputsInterrupted from None
            inputs.update(copies)
            ns.update(copies)
            said = self._said_shared
            shared = sorted(n for n, d in rest.items() if d in self.store.shared and (component.name, d) not in said)
            said.update((component.name, merged[n]) for n in shared)
            if shared:
                outcome.warnings.append(_shared_warning(component.name, {n: inputs[n] for n in shared}))
            # what the inputs pickle to as loaded: the sets among them, in their new order
            blobs = {n: how.blob for n, (value, how) in loaded.items() if how is not None and type(value) not in IMMUTABLE}
            as_loaded = {**merged, **digests_as_loaded(inputs, blobs)}
            if live is None:
                with capture.captured(shell) as outputs, shell.collect_errors() as errors:
                    result = await _run_silently(shell, component.source)
                record.outputs = outputs.items
                if result.success:
                    record.status = "ok"
                else:
                    err = result.error_before_exec or result.error_in_exec
                    _release_run_code(err)
                    if isinstance(err, KeyboardInterrupt):
                        outcome.interrupted = True
                        return outcome
                    if errors:  # kept among the outputs already, where the run showed it
                        ename, evalue, traceback = errors[-1].ename, errors[-1].evalue, errors[-1].traceback
                    else:
                        ename, evalue = type(err).__name__, str(err)
                        traceback = [f"{ename}: {evalue}"]
                        outputs.error(ename, evalue, traceback)
                    outcome.error = {"ename": ename, "evalue": evalue, "traceback": traceback}
                    outcome.exception = err
                    return outcome
            else:
                with capture.recorded(shell) as outputs:
                    reply = await live()
                if reply.get("status") != "ok":
                    _release_run_code(getattr(shell.last_execution_result, "error_in_exec", None))
                record.outputs = outputs.items
                if reply.get("status") == "ok":  # its error, if not, is in its outputs as the cell showed it
                    record.status = "ok"
                elif not outputs.shows_error(reply):  # not shown as one (a UsageError)
                    outputs.error(reply.get("ename", ""), reply.get("evalue", ""), reply.get("traceback", []))
                outcome.reply = reply
        if live is not None:  # `_`, `__`, `_i`, `_5`...: plain cells keep IPython's history names
            shell.user_ns.update({n: ns[n] for n in ns if is_ipython_name(n) and n not in _MODULE_NAMES})
        if record.ok:
            self._collect(outcome, inputs, merged, rest, as_loaded, ns, {n: how for n, (_, how) in loaded.items()}, set(copies), known)
        return outcome

    def _collect(
        self,
        outcome: RunOutcome,
        inputs: dict,
        merged: dict[str, str],
        rest: dict[str, str],
        as_loaded: dict[str, str],
        final: dict,
        loaded: dict,
        copied: set[str],
        known: dict[str, Loaded],
    ) -> None:
        """Work out the run's outputs and its final namespace as digests; pickle synchronously.

        An input proven untouched (copy-on-write pages never written) or kept in memory only
        gets no digest, which `changes` reads as "unchanged while it keeps its identity";
        the others are compared with what they pickled to as loaded (`as_loaded`). A
        memory-only input the run got as a copy (`copied`) has nothing to be compared with:
        it may have been mutated, so the run's copy is its output, for its children. The final
        namespace is pickled as one (namespaces.pickling_names), so names holding the same
        object still do in children. `known`: the inputs that were numbers and strings loaded
        before (not in `loaded`); `rest`: the other inputs of `merged`.
        """
        # Numbers and strings the run kept as loaded: unchanged, neither pickled nor compared.
        settled = {n for n, how in known.items() if final.get(n, _ABSENT) is how.value}
        settled.update(
            n for n, how in loaded.items()
            if how is not None and type(how.value) in IMMUTABLE and n in final and final[n] is how.value
        )
        ignore = [n for n in final if n not in settled and is_ipython_name(n)]

        def unchanged(name: str) -> Blob | None:
            how = loaded.get(name)
            return None if how is None else how.unchanged(name, final.get(name))

        namespace = dict(merged)
        blobs: dict[str, Blob] = {}
        memory: dict[str, Any] = {}
        kept_in_memory: list[UnpicklableValue] = []
        # Inputs kept in memory only cannot be pickled, nor referred to: not tried again.
        kept = {n for n, d in rest.items() if d.startswith(MEMORY_PREFIX) and n in final and final[n] is inputs[n]}
        with pickling_names({n: v for n, v in final.items() if n not in ignore and n not in kept and n not in settled}, unchanged) as names:
            # the inputs `known` are settled or no longer the objects loaded: none is compared
            check = {n: None if d.startswith(MEMORY_PREFIX) or n in names.proven or n in settled else as_loaded[n] for n, d in rest.items()}
            found = changes(inputs, check, final, ignore=[*ignore, *settled])
            values = {n: final[n] for n in found.bound}
            for name in found.bound:
                value = final[name]
                try:
                    blob = freeze(dump(name, value))
                except UnpicklableValue as exc:
                    self._keep_in_memory(outcome, name, value, namespace, memory)
                    kept_in_memory.append(exc)
                else:
                    blobs[blob.digest] = blob
                    namespace[name] = blob.digest
        for name in sorted(kept & copied):
            values[name] = final[name]
            self._keep_in_memory(outcome, name, final[name], namespace, memory)
        for name in found.deleted:
            del namespace[name]
        # The notebook is one namespace: its functions read its globals, as those a child
        # loads read the child's, while the live ones read the run's. Outputs holding such
        # functions are published as copies, loaded together with the other outputs.
        copies = {n for n in found.bound if namespace[n] in blobs and reads_notebook_globals(blobs[namespace[n]])}
        # Made again after a child failed to rebuild it: tried here, where the live value still is.
        suspects = {n for n in found.bound if namespace[n] in blobs and n in self._unrebuilt} - copies
        unrebuilt: dict[str, Exception] = {}

        def publishable(name: str) -> Any:
            if name not in copies and name not in suspects:
                return final[name]
            try:
                copy = Loaded(blobs[namespace[name]], self.shell.user_ns).value
            except Exception as exc:  # unpickling runs the value's own code (a __setstate__ that raises)
                unrebuilt[name] = exc
                return final[name]
            self._unrebuilt.discard(name)
            return copy if name in copies else final[name]

        with loading_together({n: namespace[n] for n in found.bound}, publishable) as value_of:
            values.update({n: value_of(n) for n in copies | suspects})
        for name, exc in unrebuilt.items():  # it pickles but cannot be rebuilt: as good as unpicklable
            blob_digest = namespace[name]
            kept_in_memory.append(UnpicklableValue(name, final[name], exc))
            self._keep_in_memory(outcome, name, final[name], namespace, memory)
            if blob_digest not in namespace.values():
                del blobs[blob_digest]
        if kept_in_memory:
            outcome.warnings.append(_memory_only_warning(outcome.record.name, kept_in_memory))
        outcome.record.namespace = namespace
        outcome.values = values
        outcome.deleted = found.deleted
        outcome.blobs = blobs
        outcome.memory = memory

    @staticmethod
    def _keep_in_memory(outcome: RunOutcome, name: str, value: Any, namespace: dict, memory: dict) -> None:
        """An output that cannot be serialised: this process's memory only (the caller warns)."""
        digest = f"{MEMORY_PREFIX}{outcome.record.run_id}:{name}"
        memory[digest] = value
        namespace[name] = digest
        outcome.record.memory_only.append(name)

    def _load(self, component: str, role: str, name: str, digest: str, namespace: dict) -> tuple[Any, Loaded | None]:
        """A cached value for `namespace`. One that its own code cannot rebuild is lost, so
        the components that made it run again: after a restart, a fresh parent that put a
        module on `sys.path` did not run, and its functions cannot be imported until it does.
        Made again and still not rebuilt, it is kept in memory only (`_collect`); lost
        again all the same, it is one line naming it."""
        try:
            return self.store.load(digest, namespace)
        except LinkError:
            raise
        except Exception as exc:  # unpickling runs the value's own code
            reason = " ".join(str(exc).split())  # one line, whatever the value's own error says
            raise UnrebuiltValue(
                digest, name, f"component {component!r}: its {role} {name!r} cannot be rebuilt from the cache: {type(exc).__name__}: {reason}"
            ) from None

    async def _run_remote(self, component: Component, merged: dict[str, str], record: RunRecord, live: bool) -> RunOutcome:
        """The single call site of remote execution: REMOTE's run_remote(kernel, task, alias)."""
        from linkkernel.remote.executor import run_remote
        from linkkernel.tasks import ComponentTask

        for name, digest in merged.items():
            if digest.startswith(MEMORY_PREFIX):
                kind = type_name(self.store.memory_values.get(digest))
                raise LinkError(
                    f"component {component.name!r} cannot run on worker {component.remote!r}: its input "
                    f"{name!r} ({kind}) cannot be pickled, so it exists only in this kernel's memory"
                )
        task = ComponentTask(
            component.name,
            component.source,
            {n: self.store.blob(d) for n, d in merged.items()},
            live,
            # Run live, its first output is the cell's first unless the kernel said something.
            alone=live and not self._cell_spoke,
        )
        self.shell.register_source(component.name, component.source)  # as in `publish_cached`
        try:
            result = run_remote(self.kernel, task, component.remote)
        except KeyboardInterrupt as exc:  # run_remote cancelled the task on the worker, then re-raised
            if not live:
                raise
            error = _interrupt_error(f"the task on worker {component.remote!r} was cancelled")
            # Recorded as failed with what it showed, as a local cell interrupted is.
            record.outputs = [*getattr(exc, "outputs", ()), {"output_type": "error", **error}]
            return RunOutcome(record, reply=self._fail(error, component.source))
        if isinstance(result, Awaitable):
            result = await result
        outcome = RunOutcome(record)
        record.outputs = list(result.outputs)
        if live:  # what the task paged, then asked exit(), for the reply's payload as a local cell's
            for payload in result.payload:
                self.shell.payload_manager.write_payload(payload)
            if result.asked_exit is not None:
                self.shell.keepkernel_on_exit = result.asked_exit
                self.shell.ask_exit()
        if result.error is not None:
            error = {"ename": result.error.ename, "evalue": result.error.evalue, "traceback": list(result.error.traceback)}
            # Run as an ancestor, it stops the run as a local one does; run live it is the
            # cell's own error, which needs its reply like any other.
            if result.error.ename == "KeyboardInterrupt" and not live:
                outcome.interrupted = True
                return outcome
            outcome.error = error
            shown = capture.shows_error(record.outputs, error)
            if not shown:  # kept among the outputs as a local run keeps it (a UsageError is a stderr line)
                record.outputs.append({"output_type": "error", **error})
            if live:  # shown live already, or as IPython shows a UsageError: a line on stderr
                outcome.reply = self._fail(error, component.source, publish=not shown and error["ename"] != "UsageError")
            return outcome
        record.status = "ok"
        namespace = {n: d for n, d in merged.items() if n not in result.deleted}
        bound = result.bound
        # No copy on this side: run_remote froze the blobs as mapped from the store's
        # verified files; the cache keeps them, and the notebook's values map their large
        # buffers from those files copy-on-write (linkkernel.cow), as a child's inputs do.
        with loading_together({n: b.digest for n, b in bound.items()}, lambda n: Loaded(bound[n], self.shell.user_ns).value) as value_of:
            for name, blob in bound.items():
                outcome.blobs[blob.digest] = blob
                try:
                    outcome.values[name] = value_of(name)
                except Exception as exc:  # unpickling runs the value's own code (__reduce__, a module missing here)
                    raise LinkError(
                        f"component {component.name!r} ran on worker {component.remote!r} but its output {name!r} "
                        f"cannot be rebuilt in this kernel: {type(exc).__name__}: {exc}"
                    ) from None
                namespace[name] = blob.digest
        record.namespace = namespace
        outcome.deleted = tuple(result.deleted)
        if live:
            last = _NOT_SHOWN if result.last is None else self._last_value(result, outcome)
            outcome.reply = self._ok_reply(component.source)
            if last is not _NOT_SHOWN:  # `_`, `_N`, `Out[N]` of the cell just numbered, as a local cell's value
                self.shell.displayhook.update_user_ns(last)
        return outcome

    def _last_value(self, result, outcome: RunOutcome) -> Any:
        """The remote run's last value here: the output it is (`df` shown is `df`), else
        rebuilt; _NOT_SHOWN when it cannot be (a module only the worker has): the cell
        showed it, and `_` is not worth failing a run that went well."""
        for name, blob in result.bound.items():
            if blob.digest == result.last.digest:
                return outcome.values[name]
        try:
            return Loaded(result.last, self.shell.user_ns).value
        except Exception:  # noqa: BLE001 - unpickling runs the value's own code
            return _NOT_SHOWN

    # ---- replies ------------------------------------------------------------------------

    def _count(self, history: str | None) -> int:
        """The execution count of a cell the shell did not run (refused, or run remotely).

        `history` is the cell's code, None when the request asked not to store history. The
        code is kept in the input history as IPython keeps a cell that fails, so `In[n]`,
        `_i` and `%history` still match the numbers the frontend shows.
        """
        shell = self.shell
        if history is not None:
            try:
                transformed = shell.transform_cell(history)
            except Exception:  # noqa: BLE001 - IPython keeps a cell it cannot transform as typed
                transformed = history
            shell.history_manager.store_inputs(shell.execution_count, transformed, history)
            shell.execution_count += 1
        return shell.execution_count - 1

    def _ok_reply(self, history: str | None) -> dict[str, Any]:
        return {"status": "ok", "execution_count": self._count(history), "user_expressions": {}, "payload": self._payload()}

    def _payload(self) -> list[dict[str, Any]]:
        """What the cell asked of the frontend (exit()), read and cleared as ipykernel does."""
        payload = self.shell.payload_manager.read_payload()
        self.shell.payload_manager.clear_payload()
        return payload

    def _fail(self, error: dict[str, Any], history: str | None, publish: bool = True) -> dict[str, Any]:
        """Show `error` in the cell as an `error` message (unless it is there already); the
        execute_reply that goes with it."""
        kernel = self.kernel
        if publish:
            kernel.session.send(kernel.iopub_socket, "error", error, parent=kernel.get_parent(), ident=kernel._topic("error"))
        return {
            "status": "error",
            "ename": error["ename"],
            "evalue": error["evalue"],
            "traceback": error["traceback"],
            "execution_count": self._count(history),
            "user_expressions": {},
            "payload": self._payload(),
        }

    def refuse(self, exc: LinkError, history: str | None) -> dict[str, Any]:
        """An invalid pipeline or declaration: one line in the cell, nothing run. `history` is
        the cell's code (None when the request does not store history)."""
        return self._fail({"ename": type(exc).__name__, "evalue": str(exc), "traceback": exc._render_traceback_()}, history)

    def _report_parent_error(self, name: str, error: dict[str, Any], history: str | None) -> dict[str, Any]:
        header = f"\x1b[0;31mError in parent component {name!r}:\x1b[0m"
        return self._fail(dict(error, traceback=[header, *error["traceback"]]), history)

    def report_interrupt(self, history: str | None, during: str, kept: list[str] | None = None) -> dict[str, Any]:
        """The user's interrupt, as Jupyter shows one, saying what it stopped, and which of
        the runs before it were `kept` (recorded fresh) before it landed."""
        done = ""
        if kept:
            done = f"{_listed([repr(name) for name in kept])} ran and {'was' if len(kept) == 1 else 'were'} kept, "
        return self._fail(_interrupt_error(f"interrupted while {during}; {done}nothing half-run was kept"), history)

    # ---- %link run -------------------------------------------------------------------------

    @_taking_turns
    async def run_targets(self, targets: list[str] | None, force: bool, alone: bool = False) -> list[str]:
        """`%link run`: bring `targets` (all when None) up to date, silently. Returns what ran.
        `alone`: the cell has shown nothing yet (see progress.TransientLine)."""
        return await self._again_when_lost(self._run_targets, targets, force, alone)

    async def _run_targets(self, targets: list[str] | None, force: bool, alone: bool) -> list[str]:
        from linkkernel.graph import run_order

        graph = self.graph(targets)
        names = run_order(graph) if targets is None else targets
        for name in names:
            if name not in graph:
                raise LinkError(f"%link run: no component named {name!r} in {self.sources.looked_in()}")
        plan = self.plan(graph, names, force)
        self._refuse_top_level_await(graph, plan)
        self.publish_cached(graph, names, plan)
        return await self._run_captured(graph, plan, targets=names, alone=alone and not self._cell_spoke)

    def _refuse_top_level_await(self, graph, plan: list[str]) -> None:
        """`%link run` runs components from inside its own cell's code, where the kernel's
        event loop is already running: code that awaits at top level (fine in a cell) could
        only stop half-run there. Refused before anything runs; executing the cell, or one of
        its children, runs it in the kernel's loop. Remote components await on their worker."""
        shell = self.shell
        for name in plan:
            component = graph.nodes[name]["component"]
            if component.remote:
                continue
            try:
                transformed = shell.transform_cell(component.source)
            except Exception:  # noqa: BLE001 - the run reports it as the component's own error
                continue
            if shell.should_run_async(component.source, transformed_cell=transformed):
                raise LinkError(
                    f"%link run: component {name!r} uses top-level await, which cannot run inside "
                    "another cell's code; execute its cell (or a child's) to run it"
                )

    def publish_cached(self, graph, targets: list[str], plan: list[str]) -> None:
        """Publish the outputs of fresh components that did not run in this process (found in
        the cache after a restart, or imported) as their run would have: a restarted kernel
        does not run them again, yet a plain cell should see what the pipeline holds, as it
        did before the restart. Each run's outputs are published once, parents first, so a
        value the user changed since is not overwritten by every later cell. `plan` is what
        is about to run (and will publish its own)."""
        order = self._unpublished(graph, targets, plan)
        for name in order:
            record = self.store.get(name)
            if name in plan or record is None or self._published.get(name) == record.run_id:
                continue
            component = graph.nodes[name]["component"]
            _, inherited = self._parent_namespaces(component)
            outputs = {n: d for n, d in record.namespace.items() if inherited.get(n) != d}
            # Its functions' code names this process's file of its cell: with the cell's
            # lines there, `f??` shows their source and their frames read `Component NAME`.
            self.shell.register_source(name, component.source)
            with loading_together(outputs, lambda n: self._load(name, "output", n, outputs[n], self.shell.user_ns)[0]) as value_of:
                values = {output: value_of(output) for output in outputs}
            with _interrupts_held():  # a run's outputs all published, or (interrupted while loading) none
                self.shell.user_ns.update(values)
                self._published[name] = record.run_id
        self._close(graph, order, plan)

    def _is_closed(self, name: str, plan: Collection[str]) -> bool:
        record = self.store.get(name)
        return name not in plan and record is not None and self._closed.get(name) == record.run_id

    def _unpublished(self, graph, targets: list[str], plan: list[str]) -> list[str]:
        """`targets` and their ancestors in run order, but for those whose run and its
        ancestors' are all published already (`_closed`), which a Run All would otherwise
        walk again before each cell. The walk stops at a component not in `plan` (so fresh)
        whose record is the run it was closed with: fresh with the same run means the same
        runs of all its ancestors (their run ids are in its lineage of records), published
        then."""
        store, planned = self.store, set(plan)
        # a closed component's ancestors are closed (`_close`), as with_ancestors needs of `done`
        region = with_ancestors(graph, targets, done=_Closed(self, planned))
        pending = [n for n in region if n not in planned and (r := store.get(n)) is not None and self._published.get(n) != r.run_id]
        # one to publish (or none) needs no walk of the rest
        return region if len(pending) <= 1 else with_ancestors(graph, targets)

    def _close(self, graph, order: list[str], plan: list[str]) -> None:
        """Close the components of `order` (run order) that are fresh and published, their
        parents closed: the next walk of `_unpublished` stops there."""
        planned = set(plan)
        for name in order:
            record = self.store.get(name)
            if (
                name not in planned and record is not None and self._published.get(name) == record.run_id
                and all(self._is_closed(p, planned) for p in graph.pred[name])
            ):
                self._closed[name] = record.run_id

    async def _run_captured(self, graph, names: list[str], targets: Collection[str] = (), alone: bool = False) -> list[str]:
        """Run `names` in order with their outputs captured, under the transient progress line
        (`targets` are named as such, the rest as parents; `alone`: the cell shows nothing
        else yet, see progress.TransientLine). Returns what ran.

        Raises KeyboardInterrupt when interrupted and ComponentFailed for a user error, both
        with nothing half-run recorded; warnings are printed once the progress line is gone.
        """
        ran: list[str] = []
        warnings: list[str] = []
        progress = Progress(self.kernel, len(names), targets, alone)
        try:
            for k, name in enumerate(names, 1):
                progress.show(k, name)
                try:
                    outcome = await self.run_component(graph.nodes[name]["component"], live=None)
                except InputsInterrupted:  # shown as the user's own KeyboardInterrupt (%link run)
                    raise KeyboardInterrupt from None
                if outcome.interrupted:
                    raise KeyboardInterrupt
                if outcome.error is not None:
                    raise ComponentFailed.named(name, outcome.error, outcome.exception)
                ran.append(name)
                warnings.extend(outcome.warnings)
        finally:
            progress.remove()
            for line in warnings:
                print(line, file=sys.stderr)
            self._cell_spoke = self._cell_spoke or bool(warnings)
        return ran


class _Closed:
    """The components closed for a plan (`Runner._is_closed`), as a `done` of with_ancestors."""

    def __init__(self, runner: Runner, plan: Collection[str]) -> None:
        self._runner, self._plan = runner, plan

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._runner._is_closed(name, self._plan)


def _has_remotes(graph) -> bool:
    """Whether any component of `graph` runs on a worker, asked once per graph: only then
    must a run check, before anything runs, that every worker of its ancestors is known."""
    if "remotes" not in graph.graph:
        graph.graph["remotes"] = any(data["component"].remote for _, data in graph.nodes(data=True))
    return graph.graph["remotes"]


def _listed(names: list[str]) -> str:
    """`'a'`, `'a' and 'b'`, `'a', 'b' and 'c'`: names in one of the kernel's lines."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _memory_only_warning(component: str, kept: list[UnpicklableValue]) -> str:
    """One line for all of a run's outputs kept in memory only, named with their types: a
    component holding a client, a lock and a file handle is one warning, not three."""
    names = [f"{exc.name!r} ({exc.type_name})" for exc in sorted(kept, key=lambda exc: exc.name)]
    held = "it is" if len(names) == 1 else "they are"
    return (
        f"linkkernel: component {component!r}: {_listed(names)} cannot be serialised; "
        f"{held} kept in memory only, so after a restart the component runs again"
    )


def _shared_warning(component: str, shared: dict[str, Any]) -> str:
    """One line for the inputs of a run that, kept in memory only, could not be copied for it
    either: unlike every other input they are the very objects its parents hold."""
    names = [f"{name!r} ({type_name(value)})" for name, value in shared.items()]
    held, them = ("it is", "it") if len(names) == 1 else ("they are", "them")
    return (
        f"linkkernel: component {component!r}: input {_listed(names)} cannot be copied; {held} shared with the "
        f"component that made {them}, so what this run does to {them} is seen there and by its other children"
    )


# `_last_value` of a remote run whose shown value is not to become `_`.
_NOT_SHOWN = object()
_ABSENT = object()  # a name the notebook did not hold


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """An interrupt (SIGINT) arriving inside is raised once the block is done, so that it
    lands before or after, never halfway (a namespace half published). Only the main thread
    receives interrupts; elsewhere there is nothing to hold."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:  # None: set outside Python
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        signal.raise_signal(signal.SIGINT)


def _interrupt_error(text: str) -> dict[str, Any]:
    return {"ename": "KeyboardInterrupt", "evalue": "", "traceback": [f"\x1b[0;31mKeyboardInterrupt\x1b[0m: {text}"]}


class InputsInterrupted(KeyboardInterrupt):
    """The user's interrupt, while a component's inputs were being loaded: none of its code ran."""


class UnrebuiltValue(LostValue):
    """A cached value whose own code failed to rebuild it (a `__getattr__` that recurses
    before `__setstate__` is found, a module not importable yet): its component runs again,
    and if the value it makes again fails too, it is kept in memory only, as one that does
    not pickle. `name` is the name the value is bound to, which stays when the value made
    again differs (see `_lost_key`)."""

    def __init__(self, digest: str, name: str, message: str) -> None:
        super().__init__(digest, message)
        self.name = name


def _lost_key(exc: LostValue) -> str:
    """What tells a loss seen again within one request apart from a new one: the name of a
    value that could not be rebuilt (made again, it may have another digest), else the
    digest of the value the storage lost."""
    return f"name:{exc.name}" if isinstance(exc, UnrebuiltValue) else exc.digest


class ComponentFailed(Exception):
    """A component run by `%link run` failed; shown as that component's own error.

    `post_mortem` is the user's exception when the component ran in this process: what
    `%debug` and `%pdb` open (LinkShell.debugger), rather than the line that ran it.
    """

    def __init__(self, name: str, error: dict[str, Any], post_mortem: BaseException | None = None) -> None:
        super().__init__(error["evalue"])
        self.name, self.error, self.post_mortem = name, error, post_mortem

    @classmethod
    def named(cls, name: str, error: dict[str, Any], post_mortem: BaseException | None = None) -> ComponentFailed:
        """An instance whose class carries the user's exception name, so the `error` message's
        ename/evalue are the user's own, as for a cell (tools such as nbclient read them)."""
        return type(error["ename"], (cls,), {})(name, error, post_mortem)

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mError in component {self.name!r}:\x1b[0m", *self.error["traceback"]]


def _release_run_code(error: BaseException | None) -> None:
    """Clear the locals of IPython's `run_code` frame, the caller of the cell's code that
    raised `error`. That frame holds the ExecutionResult, which holds the error, whose
    traceback holds the cell's frame, whose caller is that frame: a cycle, so each failed or
    interrupted run's namespace (its inputs: maps of large parent buffers, the pages it wrote
    copied) stayed until Python's cyclic collector ran, long after the next error replaced it
    as the one %debug looks at. The user's frames are left as they are."""
    from IPython.core.interactiveshell import InteractiveShell

    run_code = InteractiveShell.run_code.__code__
    tb = getattr(error, "__traceback__", None)
    frame = None if tb is None else tb.tb_frame
    while frame is not None and frame.f_code is not run_code:
        frame = frame.f_back
    if frame is not None:
        with contextlib.suppress(RuntimeError):  # still running: never, once the run ended
            frame.clear()


async def _run_silently(shell, code: str):
    """Run a cell inside the caller's capture, without a number in the notebook's history.

    Not IPython's `silent=True`: that evaluates the last expression without showing its
    value, and the capture keeps it as the execute_result the cell would show. Not silent,
    IPython also fires `pre_run_cell` before it, as before a cell the user runs:
    `%autoreload` reloads changed modules there, so a stale parent does not run, and get
    recorded fresh, with the old code. `post_execute` fires after it, as after every cell
    (`run_cell` fires it, not `run_cell_async`): matplotlib's inline backend shows and closes
    the figures the cell drew then, so they are this run's outputs instead of appearing in
    the next cell that runs live.
    """
    preprocessing_exc_tuple = None
    try:
        transformed = shell.transform_cell(code)
    except Exception:  # noqa: BLE001 - reported by run_cell exactly as ipykernel does
        transformed, preprocessing_exc_tuple = code, sys.exc_info()
    try:
        return await shell.run_cell_async(
            code, store_history=False, silent=False, transformed_cell=transformed, preprocessing_exc_tuple=preprocessing_exc_tuple
        )
    finally:
        shell.events.trigger("post_execute")


@contextmanager
def _input_from_frontend(kernel, allow_stdin: bool) -> Iterator[None]:
    """input() and getpass() in a silent ancestor ask the frontend, as in the cell itself.

    ipykernel forwards them only around the cell's own code; before it, input() would read
    the kernel's stdin and fail with an EOFError no frontend ever shows in a cell.
    """
    kernel._forward_input(allow_stdin)
    try:
        yield
    finally:
        kernel._restore_input()


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
            if is_ipython_name(name):  # never an output: no parent could define it
                advice = "it is one of IPython's history names, which only the notebook namespace keeps"
            else:
                advice = "it exists in the notebook namespace — add a parent component that defines it"
            value.args = (f"name {name!r} is not defined in component {component!r}; {advice}",)
        sh.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)

    shell.set_custom_exc((NameError,), handler)
    try:
        yield
    finally:
        shell.custom_exceptions, shell.CustomTB = saved
