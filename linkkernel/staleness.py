"""Run records and when a component is fresh (SPEC §3 "Staleness"). Pure: no kernel, no I/O.

A component is fresh when its code hash and its parents' run ids are the ones recorded at its
own last successful run, and every parent is fresh. Run ids are unique per run, so re-running a
parent makes every descendant stale even when the parent produced the same values.
"""

from __future__ import annotations

import hashlib
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

FRESH, STALE, FAILED, NEVER = "fresh", "stale", "failed", "never"


def code_hash(source: str) -> str:
    """What identifies a component's code; trailing whitespace does not change what it does."""
    return hashlib.sha256(source.rstrip().encode()).hexdigest()


def new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass
class RunRecord:
    """One run of one component: what it ran, against which parent runs, and what it left.

    `namespace` maps every name of the component's final namespace to a blob digest;
    `memory_only` lists names whose values could not be serialised and live in this process.
    """

    name: str
    run_id: str
    code_hash: str
    parents: dict[str, str]
    status: str
    started: float
    duration: float
    where: str = "local"
    namespace: dict[str, str] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    memory_only: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data: its own dicts, not copies (json.dumps only reads them)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        """A record read back from a store or an archive; ValueError (or TypeError) when it
        is not one: a torn or hand-edited file must mean 'run again', not an error later."""
        record = cls(**data)
        texts = (record.name, record.run_id, record.code_hash, record.status, record.where)
        well_formed = (
            all(isinstance(text, str) for text in texts)
            and isinstance(record.started, (int, float)) and isinstance(record.duration, (int, float))
            and _str_map(record.parents) and _str_map(record.namespace)
            and isinstance(record.outputs, list) and all(_output(o) for o in record.outputs)
            and isinstance(record.memory_only, list) and all(isinstance(n, str) for n in record.memory_only)
        )
        if not well_formed:
            raise ValueError(f"malformed run record for {record.name!r}")
        # A pipeline's records repeat the same names, digests and run ids (a child's namespace
        # holds its parents' values): read back, each is one string, not one per record.
        record.name, record.run_id = sys.intern(record.name), sys.intern(record.run_id)
        record.parents = {sys.intern(n): sys.intern(r) for n, r in record.parents.items()}
        record.namespace = {sys.intern(n): sys.intern(d) for n, d in record.namespace.items()}
        return record


# The change behind one name: its digest (None for a deletion), and the component whose run made it.
Change = tuple[str | None, str]


def inherited(
    parents: Iterable[str],
    record_of: Callable[[str], RunRecord | None],
    made: dict[str, dict[str, Change]] | None = None,
) -> dict[str, str]:
    """The namespace (name -> digest) a component with `parents` (in declared order) starts
    from: the merge of their recorded final namespaces, a later parent winning a name clash.

    A clash is two parents holding a name each bound, changed or deleted on its own line, as
    if every ancestor had run in one namespace (SPEC §3). A parent that only passes on,
    unchanged, a value an ancestor of the other parent's version made does not win: with
    `load -> features` (adding a column to `table` in place, deleting `raw`) and `load ->
    stats` (reading both), a child of `[features, stats]` sees the features and no `raw`. A
    deletion removes only the value it deleted (or an older one), never another line's.
    Where a record cannot show who made a value (an ancestor's record missing or newer than
    the run that used it), the parent itself did.

    `made` is a memo the caller keeps between calls (run id -> the change behind each name of
    that run's namespace): without it each component of a deep chain walked its whole
    ancestry again, quadratic in the depth. Only runs whose whole lineage the records showed
    go there: what such a run's values came from is fixed, whatever runs after it.
    """
    lineage = _Lineage(record_of, {} if made is None else made)
    runs = dict.fromkeys(parents)
    for parent, _ in lineage.matching(runs):
        lineage.settle(parent)
    return {name: digest for name, (digest, _) in lineage.merge(runs).items() if digest is not None}


class _Lineage:
    """Who made each value the records hold, worked out without recursion: a chain of
    thousands of components costs no more stack than one of three."""

    def __init__(self, record_of: Callable[[str], RunRecord | None], kept: dict[str, dict[str, Change]]) -> None:
        self.record_of = record_of
        self.kept = kept  # by run id, across calls
        self.made: dict[str, dict[str, Change]] = {}  # by component, this call only
        self.partial: set[str] = set()  # components some of whose lineage no record shows
        self.lineage: dict[str, set[str]] = {}

    def ancestors(self, name: str) -> set[str]:
        """Every ancestor of `name` by the current records."""
        if name not in self.lineage:
            found: set[str] = set()
            todo = [name]
            while todo:
                record = self.record_of(todo.pop())
                for parent in record.parents if record is not None else ():
                    if parent not in found:
                        found.add(parent)
                        todo.append(parent)
            self.lineage[name] = found
        return self.lineage[name]

    def matching(self, runs: Mapping[str, str | None]) -> list[tuple[str, RunRecord]]:
        """Each parent in `runs` whose current record is the run named (any run when None)."""
        found = []
        for parent, run_id in runs.items():
            record = self.record_of(parent)
            if record is not None and (run_id is None or record.run_id == run_id):
                found.append((parent, record))
        return found

    def known(self, name: str, record: RunRecord) -> dict[str, Change] | None:
        made = self.made.get(name)
        return made if made is not None else self.kept.get(record.run_id)

    def settle(self, name: str) -> None:
        """Work out what `name` (which has a record) made, its ancestors first, from an
        explicit stack. An ancestor met again before it is settled (a cycle in hand-edited
        records) counts as having made nothing."""
        stack = [name]
        started: set[str] = set()
        while stack:
            current = stack[-1]
            record = self.record_of(current)
            if self.known(current, record) is not None:
                stack.pop()
            elif current not in started:
                started.add(current)
                stack.extend(p for p, r in self.matching(record.parents) if p not in started and self.known(p, r) is None)
            else:
                stack.pop()
                self._own(current, record)

    def _own(self, name: str, record: RunRecord) -> None:
        """What `name` made, from what its parents (settled) had made."""
        parents = self.matching(record.parents)
        start = self.merge(record.parents)
        ours = {n: start[n] if n in start and start[n][0] == d else (d, name) for n, d in record.namespace.items()}
        ours.update({n: held if held[0] is None else (None, name) for n, held in start.items() if n not in ours})
        self.made[name] = ours
        shown = len(parents) == len(record.parents) and all(
            p not in self.partial and self.known(p, r) is not None for p, r in parents
        )
        if shown:
            self.kept[record.run_id] = ours
        else:
            self.partial.add(name)

    def merge(self, runs: Mapping[str, str | None]) -> dict[str, Change]:
        """The changes behind the namespace of parents `runs` (settled), merged in order."""
        parents = self.matching(runs)
        if len(parents) == 1:  # nothing to merge (a chain): theirs as it is, not a copy
            return self.known(*parents[0]) or {}
        merged: dict[str, Change] = {}
        for parent, record in parents:
            for name, (digest, maker) in (self.known(parent, record) or {}).items():
                held = merged.get(name)
                if held is not None and held[0] != digest:
                    if maker in self.ancestors(held[1]):
                        continue  # the earlier parent holds a later change of this value
                    if digest is None and held[0] is not None and held[1] not in self.ancestors(maker):
                        continue  # a deletion of another line's value: that value stays
                merged[name] = (digest, maker)
        return merged


def _output(value: Any) -> bool:
    """Whether `value` is a captured output in the shape `%link outputs` and `linkkernel run`
    show (nbformat's), so that a hand-edited record means "run again", not an error later."""
    if not isinstance(value, dict):
        return False
    kind = value.get("output_type")
    if kind == "stream":
        return value.get("name") in ("stdout", "stderr") and isinstance(value.get("text"), str)
    if kind in ("display_data", "execute_result"):
        return isinstance(value.get("data"), dict) and isinstance(value.get("metadata", {}), dict)
    if kind == "error":
        traceback = value.get("traceback")
        return (
            isinstance(value.get("ename"), str) and isinstance(value.get("evalue"), str)
            and isinstance(traceback, list) and all(isinstance(line, str) for line in traceback)
        )
    return False


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def states(
    order: Iterable[str],
    parents: Mapping[str, Iterable[str]],
    code_hashes: Mapping[str, str],
    records: Mapping[str, RunRecord | None],
    available: Mapping[str, bool] | None = None,
) -> dict[str, str]:
    """The state of every component in `order` (a topological order).

    `available[name]` False means the record's values are gone (kept in memory by a process
    that ended), so the component must run again even though its record is fine.
    """
    result: dict[str, str] = {}
    for name in order:
        result[name] = state(
            records.get(name),
            list(parents.get(name, ())),
            code_hashes.get(name),
            records.get,
            lambda parent: result.get(parent) == FRESH,
            available is None or available.get(name, True),
        )
    return result


def state(
    record: RunRecord | None,
    parents: list[str],
    code_hash: str | None,
    record_of: Callable[[str], RunRecord | None],
    parent_fresh: Callable[[str], bool],
    available: bool | Callable[[], bool],
) -> str:
    """The state of one component: its last `record`, its declared `parents` (in order) and
    the hash of its code now, its parents' current records (`record_of`) and whether each
    is fresh, and whether the record's values can still be loaded (`available`, asked last:
    a callable is only called when the rest says fresh)."""
    if record is None:
        return NEVER
    if not record.ok:
        return FAILED
    current = {}
    for parent in parents:
        parent_record = record_of(parent)
        current[parent] = parent_record.run_id if parent_record is not None and parent_record.ok else None
    fresh = (
        record.code_hash == code_hash
        and list(record.parents) == parents
        and record.parents == current
        and all(parent_fresh(p) for p in parents)
        and (available() if callable(available) else available)
    )
    return FRESH if fresh else STALE
