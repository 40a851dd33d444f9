"""Three-way merge of notebooks, cell by cell, with the pipeline merged as sets (SPEC §7).

Pure: plain notebook dicts in, a `MergeResult` (notebook + conflicts as data) out; the driver
does the I/O. Inputs are never mutated; the result shares unchanged parts (outputs, metadata
values) with them instead of deep-copying, which was most of the time of a 2000-cell merge. The rules, and why:

* Cells are matched base<->ours and base<->theirs (`match`); a cell is edited, moved, deleted
  or inserted relative to base on each side, and one-sided changes are simply applied.
* Order: ours' order, with the cells theirs moved or inserted placed after their predecessor
  in theirs' order, so a move on one side and an edit on the other stay one cell.
* Sources merge by lines (diff3), attachments by name; declarations merge as sets of parents and other tags, with
  a conflict only for real contradictions: both renamed differently, both re-pointed the same
  edge differently, one removed the component while the other changed it.
* Outputs and execution counts never conflict: they follow the side whose source won, and are
  cleared when the source is a mix of both.
* The merged pipeline is validated (unknown parent, duplicate name, cycle): such a pipeline is
  a conflict on the cells involved, not a clean merge into a broken DAG; a problem one side
  already had is left as it was.
* Every conflict is marked inside its cell with git-style markers; the cell keeps both
  sides' content. Any internal error gives a conflict result, never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from linkkernel.declarations import (
    TAG_KINDS,
    Component,
    Declaration,
    DeclarationError,
    describe_cell,
    parse_declaration,
)
from linkkernel.git.match import match_cells, monotone_chain
from linkkernel.git.nbio import RECORDED_NOTEBOOK_METADATA, UI_METADATA, Cell, Notebook, cell_source, set_source
from linkkernel.git.textmerge import conflict_block, merge_text

_MISSING = object()
# Two cells added at the same place are one cell added twice only when nearly identical;
# otherwise both are kept, one after the other, as git keeps two different added files.
SAME_NEW_CELL = 0.8


@dataclass(frozen=True)
class Conflict:
    """One real contradiction, marked in cell `cell` (0-based index in the merged notebook).

    `cell` is None for the notebook's own metadata: no cell can carry its markers, so the
    driver's message and exit status are what tell the user.
    """

    cell: int | None
    kind: str  # "source", "declaration", "metadata", "attachment", "cell type", "delete", "insert", "pipeline", "internal"
    message: str


@dataclass
class MergeResult:
    notebook: Notebook
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.conflicts


def _comment(cell_type: str, text: str) -> str:
    return f"# {text}\n" if cell_type == "code" else f"{text}\n"


def _note(cell: Cell, message: str, ours: Sequence[str], theirs: Sequence[str], marker_size: int) -> None:
    """Put a conflict that is not about source lines at the top of the cell's source."""
    kind = cell["cell_type"]
    block = [_comment(kind, f"linkkernel merge conflict: {message}")]
    block += conflict_block([_comment(kind, line) for line in ours], [_comment(kind, line) for line in theirs], marker_size)
    set_source(cell, "".join(block) + cell_source(cell))


# ---- declarations --------------------------------------------------------------------------


def _declaration(cell: Mapping[str, Any] | None) -> Declaration | None:
    if cell is None or cell.get("cell_type") != "code":
        return None
    return parse_declaration(cell.get("metadata"))


def _describe(decl: Declaration | None) -> str:
    return " ".join(decl.to_tags()) if decl else "(not a component)"


def _scalar(base: Any, ours: Any, theirs: Any) -> tuple[Any, bool]:
    """Three-way merge of one value: (result, conflicted)."""
    if ours == theirs or theirs == base:
        return ours, False
    if ours == base:
        return theirs, False
    return ours, True


def merge_declarations(
    base: Declaration | None, ours: Declaration | None, theirs: Declaration | None
) -> tuple[Declaration | None, str | None]:
    """The merged declaration and, for a real contradiction, why (ours is kept then)."""
    result, conflicted = _scalar(base, ours, theirs)
    if not conflicted:
        return result, None
    if ours is None or theirs is None:
        kept = ours or theirs
        side = "ours" if ours is None else "theirs"
        return kept, f"{side} removed component {base.name if base else kept.name!r}, the other side changed it"
    name, conflicted = _scalar(base.name if base else None, ours.name, theirs.name)
    if conflicted:
        return ours, f"component named {ours.name!r} by ours and {theirs.name!r} by theirs"
    base_parents = set(base.parents) if base else set()
    ours_set, theirs_set = set(ours.parents), set(theirs.parents)
    removed_o, removed_t = base_parents - ours_set, base_parents - theirs_set
    added_o, added_t = ours_set - base_parents, theirs_set - base_parents
    if removed_o & removed_t and added_o and added_t and added_o != added_t:
        old = ", ".join(sorted(removed_o & removed_t))
        return ours, (
            f"parent {old} of {name!r} re-pointed to {', '.join(sorted(added_o))} by ours "
            f"and to {', '.join(sorted(added_t))} by theirs"
        )
    parents = [p for p in ours.parents if p not in removed_t]
    parents += [p for p in theirs.parents if p in added_t and p not in ours_set]
    remote, conflicted = _scalar(base.remote if base else None, ours.remote, theirs.remote)
    if conflicted:
        return ours, f"{name!r} sent to remote {ours.remote!r} by ours and {theirs.remote!r} by theirs"
    return Declaration(name, tuple(parents), remote), None


def _is_declaration_tag(tag: Any) -> bool:
    kind, sep, _ = tag.partition(":") if isinstance(tag, str) else ("", "", "")
    return bool(sep) and kind in TAG_KINDS


def _merge_list_as_set(base: Sequence[Any], ours: Sequence[Any], theirs: Sequence[Any]) -> list[Any]:
    """Items added on either side are added, items removed on either side are removed."""
    removed = [x for x in base if x not in ours or x not in theirs]
    merged = [x for x in ours if x not in removed]
    return merged + [x for x in theirs if x not in merged and x not in base]


def _merge_mapping(
    base: Mapping[str, Any], ours: Mapping[str, Any], theirs: Mapping[str, Any], skip: set[str]
) -> tuple[dict[str, Any], list[str]]:
    """Key-wise three-way merge; returns the merged mapping and the keys both changed differently."""
    merged: dict[str, Any] = {}
    conflicted = []
    for key in dict.fromkeys([*ours, *theirs, *base]):
        if key in skip:
            continue
        value, clash = _scalar(base.get(key, _MISSING), ours.get(key, _MISSING), theirs.get(key, _MISSING))
        if clash and key not in UI_METADATA:
            conflicted.append(key)
        if value is not _MISSING:
            merged[key] = value
    return merged, conflicted


def _merge_metadata(base: Cell | None, ours: Cell, theirs: Cell, target: Cell, marker_size: int) -> list[tuple[str, str]]:
    """Merge cell metadata into `target`; returns (kind, message) for each contradiction."""
    metas = [(c or {}).get("metadata") or {} for c in (base, ours, theirs)]
    conflicts: list[tuple[str, str]] = []
    merged, clashes = _merge_mapping(*metas, skip={"tags", "link"})
    for key in clashes:
        conflicts.append(("metadata", f"metadata {key!r} changed by both sides"))
        _note(
            target, f"metadata {key!r} changed by both sides (ours kept)",
            [f"{key}: {json.dumps(metas[1].get(key))}"], [f"{key}: {json.dumps(metas[2].get(key))}"], marker_size,
        )
    tags = [m.get("tags") if isinstance(m.get("tags"), list) else [] for m in metas]
    try:
        decls = [_declaration(c) for c in (base, ours, theirs)]
    except DeclarationError:
        # A malformed declaration on some side: merge its tags and `link` key as plain data.
        merged["tags"] = _merge_list_as_set(*tags)
        link, clash = _scalar(*(m.get("link", _MISSING) for m in metas))
        if link is not _MISSING:
            merged["link"] = link
        if clash:
            conflicts.append(("declaration", "metadata 'link' changed by both sides"))
            _note(target, "metadata 'link' changed by both sides (ours kept)",
                  [json.dumps(metas[1].get("link"))], [json.dumps(metas[2].get("link"))], marker_size)
        target["metadata"] = merged
        return conflicts
    decl, why = merge_declarations(*decls)
    if why:
        conflicts.append(("declaration", why))
        _note(target, f"{why} (ours kept in the metadata)", [_describe(decls[1])], [_describe(decls[2])], marker_size)
    other_tags = _merge_list_as_set(*([t for t in ts if not _is_declaration_tag(t)] for ts in tags))
    uses_tags = any(_is_declaration_tag(t) for ts in tags for t in ts)
    uses_link = any("link" in m for m in metas)
    new_tags = (decl.to_tags() if decl and (uses_tags or not uses_link) else []) + other_tags
    if new_tags or "tags" in metas[1]:
        merged["tags"] = new_tags
    if decl and uses_link:
        merged["link"] = decl.to_link_metadata()
    target["metadata"] = merged
    return conflicts


# ---- cells ---------------------------------------------------------------------------------


def _shape(cell: Cell, cell_type: str) -> Cell:
    """Give a cell exactly the keys its type requires (a type change rebuilds it)."""
    cell["cell_type"] = cell_type
    if cell_type == "code":
        cell.setdefault("outputs", [])
        cell.setdefault("execution_count", None)
        cell.pop("attachments", None)
    else:
        cell.pop("outputs", None)
        cell.pop("execution_count", None)
        if cell_type == "raw":
            cell.pop("attachments", None)
    return cell


def _content(cell: Cell | None) -> tuple[Any, ...] | None:
    """What a user edits in a cell: outputs and execution counts are not content."""
    if cell is None:
        return None
    return (cell.get("cell_type"), cell_source(cell), cell.get("metadata") or {}, cell.get("attachments"))


def _edited(cell: Cell, base: Cell) -> bool:
    """Whether a side changed what a cell does: a re-run that only rewrote its run record
    (JupyterLab's `execution`, Colab's `executionInfo`) or a fold is not worth a conflict
    against the other side deleting the cell."""
    def visible(c: Cell) -> tuple[Any, ...]:
        meta = {k: v for k, v in (c.get("metadata") or {}).items() if k not in UI_METADATA}
        return c.get("cell_type"), cell_source(c), meta, c.get("attachments")

    return visible(cell) != visible(base)


def _take_outputs(base: Cell | None, ours: Cell, theirs: Cell, target: Cell) -> None:
    if target["cell_type"] != "code":
        return
    source = cell_source(target)

    def changed(cell: Cell) -> bool:
        return base is None or cell.get("outputs") != base.get("outputs")

    if source == cell_source(ours) and ours.get("cell_type") == "code" and (
        source != cell_source(theirs) or changed(ours) or not changed(theirs)
    ):
        chosen = ours
    elif source == cell_source(theirs) and theirs.get("cell_type") == "code":
        chosen = theirs
    else:
        target["outputs"], target["execution_count"] = [], None
        return
    target["outputs"] = chosen.get("outputs", [])
    target["execution_count"] = chosen.get("execution_count")


def merge_cell(base: Cell | None, ours: Cell, theirs: Cell, marker_size: int = 7) -> tuple[Cell, list[tuple[str, str]]]:
    """Merge one cell present on both sides (base None: both sides added it)."""
    if _content(ours) == _content(theirs):
        return dict(ours), []
    if base is not None and _content(theirs) == _content(base):
        return dict(ours), []
    if base is not None and _content(ours) == _content(base):
        return dict(theirs), []
    conflicts: list[tuple[str, str]] = []
    target = dict(ours)
    cell_type, clash = _scalar(base and base.get("cell_type"), ours["cell_type"], theirs["cell_type"])
    _shape(target, cell_type)
    source, blocks = merge_text(base and cell_source(base), cell_source(ours), cell_source(theirs), marker_size)
    set_source(target, source)
    if blocks:
        what = "both sides added this cell differently" if base is None else "both sides edited the same lines"
        conflicts.append(("source" if base is not None else "insert", what))
    if clash:
        conflicts.append(("cell type", f"cell made {ours['cell_type']} by ours and {theirs['cell_type']} by theirs"))
        _note(target, "cell type changed by both sides (ours kept)", [ours["cell_type"]], [theirs["cell_type"]], marker_size)
    conflicts += _merge_metadata(base, ours, theirs, target, marker_size)
    target.pop("attachments", None)
    if target["cell_type"] != "code":  # images pasted into markdown and raw cells, by name
        attachments, clashes = _merge_mapping(*((c or {}).get("attachments") or {} for c in (base, ours, theirs)), set())
        if attachments:
            target["attachments"] = attachments
        for name in clashes:
            why = f"attachment {name!r} changed by both sides (ours kept)"
            conflicts.append(("attachment", why))
            _note(target, why, [f"ours' {name}"], [f"theirs' {name}"], marker_size)
    _take_outputs(base, ours, theirs, target)
    return target, conflicts


def _deleted_but_edited(kept: Cell, deleter: str, marker_size: int) -> tuple[Cell, list[tuple[str, str]]]:
    """One side deleted a cell the other edited: keep the edit, wrapped in markers."""
    target = dict(kept)
    source = cell_source(kept)
    ours, theirs = ([], source.splitlines(True)) if deleter == "ours" else (source.splitlines(True), [])
    editor = "theirs" if deleter == "ours" else "ours"
    note = _comment(kept["cell_type"], f"linkkernel merge conflict: {deleter} deleted this cell, {editor} edited it")
    set_source(target, note + "".join(conflict_block(ours, theirs, marker_size)))
    return target, [("delete", f"{deleter} deleted this cell, {editor} edited it")]


# ---- the notebook ----------------------------------------------------------------------------


Key = tuple[str, int]  # ("b", base index), ("o", ours index) or ("t", theirs index)


def merged_order(
    ours_keys: Sequence[Key], theirs_keys: Sequence[Key], keep: set[Key], moved_by_theirs: set[Key]
) -> list[Key]:
    """Ours' order; what theirs moved or inserted goes after its predecessor in theirs' order."""
    sequence = [k for k in ours_keys if k[0] != "b" or (k in keep and k not in moved_by_theirs)]
    placed = set(sequence)
    in_theirs = set(theirs_keys)
    # Where each key's own-insert run ends: theirs' cells added after a cell go after the
    # cells ours added there, so two different additions read ours first, then theirs.
    run_end: dict[Key | None, Key | None] = {}
    last: Key | None = None
    for key in [None, *sequence]:
        if key is not None and key[0] == "o" and key not in in_theirs:
            run_end[last] = key
        else:
            last = key
            run_end[key] = key
    after: dict[Key | None, list[Key]] = {}
    anchor: Key | None = None
    run: list[Key] | None = None
    for key in theirs_keys:
        if key[0] == "b" and key not in keep:
            continue
        if key in placed:
            anchor, run = key, None
            continue
        if run is None:
            run = after.setdefault(run_end.get(anchor, anchor), [])
        run.append(key)
        placed.add(key)
    order = list(after.get(None, []))
    for key in sequence:
        order.append(key)
        order.extend(after.get(key, []))
    return order


def _moved(keys: Sequence[Key]) -> set[Key]:
    """Base cells off the longest in-order chain: the ones this side moved."""
    positions = {k[1]: n for n, k in enumerate(keys) if k[0] == "b"}
    chain = {b for b, _ in monotone_chain(positions)}
    return {("b", b) for b in positions if b not in chain}


def _anchors(new: Sequence[int], matched: Mapping[int, int]) -> dict[int, int]:
    """For each inserted cell, the base cell it follows on its side (-1: at the top)."""
    anchor, found = -1, {}
    new_set = set(new)
    for index in range(max(new, default=-1) + 1):
        if index in new_set:
            found[index] = anchor
        elif index in matched:
            anchor = matched[index]
    return found


def _match_inserts(
    o_cells: Sequence[Cell], t_cells: Sequence[Cell], ours_new: Sequence[int], theirs_new: Sequence[int],
    from_ours: Mapping[int, int], from_theirs: Mapping[int, int],
) -> dict[int, int]:
    """Cells both sides added: the same id, component or source anywhere, or a similar cell in the same place."""
    exact = match_cells([t_cells[t] for t in theirs_new], [o_cells[o] for o in ours_new], similar=False)
    pairs = {theirs_new[t]: ours_new[o] for t, o in exact.items()}
    taken = set(pairs.values())
    ours_at, theirs_at = _anchors(ours_new, from_ours), _anchors(theirs_new, from_theirs)
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for o in ours_new:
        if o not in taken:
            groups.setdefault(ours_at[o], ([], []))[0].append(o)
    for t in theirs_new:
        if t not in pairs and theirs_at[t] in groups:
            groups[theirs_at[t]][1].append(t)
    for ours_group, theirs_group in groups.values():
        if theirs_group:
            found = match_cells([t_cells[t] for t in theirs_group], [o_cells[o] for o in ours_group],
                                strict_names=True, threshold=SAME_NEW_CELL)
            pairs.update({theirs_group[t]: ours_group[o] for t, o in found.items()})
    return pairs


def _merge(base: Notebook, ours: Notebook, theirs: Notebook, marker_size: int) -> MergeResult:
    b_cells, o_cells, t_cells = base["cells"], ours["cells"], theirs["cells"]
    to_ours = match_cells(b_cells, o_cells)
    to_theirs = match_cells(b_cells, t_cells)
    from_ours = {o: b for b, o in to_ours.items()}
    from_theirs = {t: b for b, t in to_theirs.items()}
    ours_new = [o for o in range(len(o_cells)) if o not in from_ours]
    theirs_new = [t for t in range(len(t_cells)) if t not in from_theirs]
    theirs_as_ours = _match_inserts(o_cells, t_cells, ours_new, theirs_new, from_ours, from_theirs)

    ours_keys = [("b", from_ours[o]) if o in from_ours else ("o", o) for o in range(len(o_cells))]
    theirs_keys = [
        ("b", from_theirs[t]) if t in from_theirs else ("o", theirs_as_ours[t]) if t in theirs_as_ours else ("t", t)
        for t in range(len(t_cells))
    ]

    cells: dict[Key, Cell] = {}
    origin: dict[Key, tuple[int | None, int | None, int | None]] = {}
    notes: dict[Key, list[tuple[str, str]]] = {}
    for b, cell in enumerate(b_cells):
        o, t = to_ours.get(b), to_theirs.get(b)
        key = ("b", b)
        origin[key] = (b, o, t)
        if o is None and t is None:
            continue
        if o is None or t is None:
            present = o_cells[o] if o is not None else t_cells[t]
            if _edited(present, cell):
                cells[key], notes[key] = _deleted_but_edited(present, "theirs" if t is None else "ours", marker_size)
            continue
        cells[key], notes[key] = merge_cell(cell, o_cells[o], t_cells[t], marker_size)
    ours_to_theirs = {o: t for t, o in theirs_as_ours.items()}
    for o in ours_new:
        t = ours_to_theirs.get(o)
        key = ("o", o)
        origin[key] = (None, o, t)
        if t is None:
            cells[key] = dict(o_cells[o])
        else:
            cells[key], notes[key] = merge_cell(None, o_cells[o], t_cells[t], marker_size)
    for t in theirs_new:
        if t not in theirs_as_ours:
            origin[("t", t)] = (None, None, t)
            cells[("t", t)] = dict(t_cells[t])

    keep = {k for k in cells if k[0] == "b"}
    order = merged_order(ours_keys, theirs_keys, keep, _moved(theirs_keys) - _moved(ours_keys))
    merged_cells = [cells[k] for k in order]
    for key, cell in zip(order, merged_cells):
        t = origin[key][2]
        if "id" not in cell and t is not None and "id" in t_cells[t]:
            cell["id"] = t_cells[t]["id"]  # ours predates cell ids (4.4): theirs' ids, not new ones
    conflicts = [Conflict(n, kind, msg) for n, k in enumerate(order) for kind, msg in notes.get(k, [])]

    notebook = dict(ours)
    notebook["metadata"], clashes = _merge_mapping(base.get("metadata", {}), ours.get("metadata", {}), theirs.get("metadata", {}), set())
    conflicts += [Conflict(None, "metadata", f"{key!r} changed by both sides (ours kept)")
                  for key in clashes if key not in RECORDED_NOTEBOOK_METADATA]
    widgets = _merge_widget_state(ours.get("metadata", {}), theirs.get("metadata", {}))
    if widgets is not None:
        notebook["metadata"]["widgets"] = widgets
    notebook["nbformat_minor"] = max(ours.get("nbformat_minor", 0), theirs.get("nbformat_minor", 0))
    notebook["cells"] = merged_cells
    _fix_ids(notebook)
    def renames() -> dict[str, str]:
        return _renames(base, ours, to_ours) | _renames(base, theirs, to_theirs)

    conflicts += check_pipeline(notebook, renames, [origin[k] for k in order], ours, theirs, marker_size)
    conflicts.sort(key=lambda c: -1 if c.cell is None else c.cell)
    return MergeResult(notebook, conflicts)


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _merge_widget_state(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any] | None:
    """Both sides' saved widget models, when both saved some and they differ (else None).

    Each cell's outputs come from the side whose source won, and a widget output is only a
    model id: the notebook's state must hold the models of both sides, or theirs' progress
    bars and sliders show 'model not found'. Ours wins a model id both sides saved.
    JupyterLab and VS Code keep the models under "state"; Colab keeps them by id directly.
    """
    sides = [m.get("widgets") for m in (ours, theirs)]
    if sides[0] == sides[1] or not all(isinstance(w, Mapping) and isinstance(w.get(WIDGET_STATE), Mapping) for w in sides):
        return None
    blobs = [w[WIDGET_STATE] for w in sides]
    if all(isinstance(blob.get("state"), Mapping) for blob in blobs):
        merged = {**blobs[0], "state": {**blobs[1]["state"], **blobs[0]["state"]}}
    elif not any("state" in blob for blob in blobs):
        merged = {**blobs[1], **blobs[0]}
    else:
        return None
    return {**sides[0], WIDGET_STATE: merged}


def _fix_ids(notebook: Notebook) -> None:
    """nbformat 4.5 wants a unique id on every cell; older notebooks carry none."""
    cells = notebook["cells"]
    if notebook["nbformat_minor"] < 5:
        for cell in cells:
            cell.pop("id", None)
        return
    seen: set[str] = set()
    for n, cell in enumerate(cells):
        cell_id = cell.get("id")
        if not isinstance(cell_id, str) or not cell_id or cell_id in seen:
            suffix = n
            while f"merged-{suffix}" in seen:
                suffix += len(cells)
            cell["id"] = cell_id = f"merged-{suffix}"
        seen.add(cell_id)


def _renames(base: Notebook, side: Notebook, matches: Mapping[int, int]) -> dict[str, str]:
    """Components this side renamed: same cell, new name, old name gone from this side."""
    base_decls, side_decls = _cell_declarations(base), _cell_declarations(side)
    names = {d.name for d in side_decls.values()}
    renames = {}
    for b, o in matches.items():
        old, new = base_decls.get(b), side_decls.get(o)
        if old and new and old.name != new.name and old.name not in names:
            renames[old.name] = new.name
    return renames


def _cell_declarations(notebook: Notebook) -> dict[int, Declaration]:
    found = {}
    for index, cell in enumerate(notebook["cells"]):
        try:
            decl = _declaration(cell)
        except DeclarationError:
            continue
        if decl:
            found[index] = decl
    return found


def _follow_renames(cell: Cell, component: Component, renamed: Mapping[str, str]) -> Component:
    """Point the cell's parents at the new names, in whichever forms the cell declares them."""
    decl = component.declaration
    parents = tuple(dict.fromkeys(renamed.get(p, p) for p in decl.parents))
    new = Declaration(decl.name, parents, decl.remote)
    metadata = dict(cell.get("metadata") or {})
    if isinstance(metadata.get("tags"), list) and any(_is_declaration_tag(t) for t in metadata["tags"]):
        metadata["tags"] = new.to_tags() + [t for t in metadata["tags"] if not _is_declaration_tag(t)]
    if "link" in metadata:
        metadata["link"] = new.to_link_metadata()
    cell["metadata"] = metadata
    return Component(new, component.source, component.cell_id, component.index)


def _dangling(notebook: Notebook) -> set[tuple[str, str]]:
    """(component, parent) pairs already dangling in one side: the merge did not make them."""
    declared = _side_declarations(notebook)
    return {(d.name, p) for d in declared.values() for p in d.parents if p not in declared}


def _side_declarations(notebook: Notebook) -> dict[str, Declaration]:
    found = {}
    for cell in notebook["cells"]:
        try:
            decl = _declaration(cell)
        except DeclarationError:
            continue
        if decl:
            found[decl.name] = decl
    return found


def _malformed(notebook: Notebook, index: int | None) -> str | None:
    """Why this side's cell has a malformed declaration, if it has one."""
    if index is None:
        return None
    try:
        _declaration(notebook["cells"][index])
    except DeclarationError as exc:
        return str(exc)
    return None


def _duplicated(notebook: Notebook) -> set[str]:
    """Component names this side already declares more than once."""
    seen: set[str] = set()
    twice: set[str] = set()
    for decl in _cell_declarations(notebook).values():
        (twice if decl.name in seen else seen).add(decl.name)
    return twice


def check_pipeline(
    notebook: Notebook,
    renames: Callable[[], dict[str, str]],
    origins: Sequence[tuple[int | None, int | None, int | None]],
    ours: Notebook,
    theirs: Notebook,
    marker_size: int,
) -> list[Conflict]:
    """Mark cells whose merged declarations make an invalid pipeline; a valid one passes build_graph.

    A parent that one side renamed is followed to its new name first: the other side's new
    reference to the old name meant the same component. A problem one side already had (a
    dangling parent, a malformed declaration, a name declared twice) is not the merge's doing:
    it is left for the user as it was, not marked in a cell neither side may have touched.
    """
    cells = notebook["cells"]
    components: list[Component] = []
    by_name: dict[str, int] = {}
    problems: dict[int, tuple[str, list[str]]] = {}
    duplicated = _duplicated(ours) | _duplicated(theirs)
    for n, cell in enumerate(cells):
        try:
            decl = _declaration(cell)
        except DeclarationError as exc:
            if str(exc) not in (_malformed(ours, origins[n][1]), _malformed(theirs, origins[n][2])):
                problems[n] = (str(exc), [])
            continue
        if decl is None:
            continue
        if decl.name in by_name:
            if decl.name in duplicated:
                continue
            where = describe_cell(by_name[decl.name], None)
            problems[n] = (f"component {decl.name!r} declared twice (also in {where})", [decl.name])
            continue
        by_name[decl.name] = n
        components.append(Component(decl, cell_source(cell), cell.get("id"), n))
    already = _dangling(ours) | _dangling(theirs)
    dangling = any(p not in by_name for c in components for p in c.parents)
    renamed = {old: new for old, new in renames().items() if new in by_name} if dangling else {}
    for n, component in enumerate(components):
        if any(p in renamed and p not in by_name for p in component.parents):
            component = _follow_renames(cells[component.index], component, renamed)
            components[n] = component
    for component in components:
        missing = [p for p in component.parents if p not in by_name and (component.name, p) not in already]
        if missing and component.index not in problems:
            message = f"parent {missing[0]!r} of {component.name!r} is not declared in the merged notebook"
            problems[component.index] = (message, missing)
    if not problems:
        problems = _cycle_problems(components, ours, theirs)
    if not problems:
        return []
    known = {"ours": _side_declarations(ours), "theirs": _side_declarations(theirs)}
    conflicts = []
    for n, (message, names) in sorted(problems.items()):
        lines: list[list[str]] = []
        for side, nb, index in (("ours", ours, origins[n][1]), ("theirs", theirs, origins[n][2])):
            try:
                cell_decl = _describe(_declaration(nb["cells"][index])) if index is not None else "(cell absent)"
            except DeclarationError as exc:
                cell_decl = f"(malformed: {exc})"
            state = [f"component {name!r} {'declared' if name in known[side] else 'absent'} in {side}" for name in names]
            lines.append([cell_decl, *state])
        _note(cells[n], message, lines[0], lines[1], marker_size)
        conflicts.append(Conflict(n, "pipeline", message))
    return conflicts


def _edges(components: Sequence[Component]) -> set[tuple[str, str]]:
    return {(p, c.name) for c in components for p in c.parents}


def _cycle_problems(components: Sequence[Component], ours: Notebook, theirs: Notebook) -> dict[int, tuple[str, list[str]]]:
    """A cycle needs edges from both sides: a subset of one side's (valid) DAG has none.

    Looked for directly, not through `build_graph`: a parent dangling on one side already is
    allowed here, and build_graph would stop at it before looking for a cycle.
    """
    edges = _edges(components)
    for side in (ours, theirs):
        if edges <= {(p, d.name) for d in _cell_declarations(side).values() for p in d.parents}:
            return {}
    import networkx as nx

    try:
        cycle = nx.find_cycle(nx.DiGraph(list(edges)))
    except nx.NetworkXNoCycle:
        return {}
    path = [parent for parent, _ in cycle] + [cycle[0][0]]
    index = {c.name: c.index for c in components}
    return {index[child]: (f"cycle in pipeline: {' -> '.join(path)}", []) for _, child in cycle}


def _fallback(ours: Notebook, exc: BaseException, marker_size: int) -> MergeResult:
    """An internal error must not cost the user their merge: ours, with the failure marked on top."""
    notebook = dict(ours)
    message = f"linkkernel could not merge this notebook ({type(exc).__name__}: {exc}); theirs is unchanged in git"
    cell: Cell = {"cell_type": "raw", "metadata": {}, "id": "linkkernel-merge-failed"}
    set_source(cell, message + "\n" + "".join(conflict_block(["(this notebook)\n"], ["git checkout --theirs FILE\n"], marker_size)))
    notebook["cells"] = [cell, *notebook.get("cells", [])]
    notebook.setdefault("nbformat_minor", 5)
    _fix_ids(notebook)
    return MergeResult(notebook, [Conflict(0, "internal", message)])


def merge_notebooks(base: Notebook, ours: Notebook, theirs: Notebook, marker_size: int = 7) -> MergeResult:
    """Merge three versions of a notebook; never raises for well-formed notebooks."""
    try:
        return _merge(base, ours, theirs, marker_size)
    except Exception as exc:  # noqa: BLE001 - the contract: a conflict result, never a crash
        return _fallback(ours, exc, marker_size)
