"""`linkkernel diff A.ipynb B.ipynb`: what changed, cell by cell and in the pipeline.

The comparison (`diff_notebooks`) is data; text, colour and HTML are renderings of it, so
`linkkernel log` and the HTML view show exactly what the terminal shows.
"""

from __future__ import annotations

import argparse
import bisect
import difflib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linkkernel.declarations import TAG_KINDS, Declaration, DeclarationError, cell_source, parse_declaration
from linkkernel.git.match import match_cells, monotone_chain
from linkkernel.git.nbio import RECORDED_NOTEBOOK_METADATA, UI_METADATA, Notebook



@dataclass(frozen=True)
class CellChange:
    kind: str  # "added", "removed", "modified", "moved"
    old: int | None  # 0-based index in A
    new: int | None  # 0-based index in B
    label: str  # component name, or the cell type
    source_diff: tuple[str, ...] = ()  # unified diff lines, or the whole source for added/removed
    details: tuple[str, ...] = ()  # metadata, type and output changes, one line each


@dataclass
class PipelineChange:
    added: list[Declaration] = field(default_factory=list)
    removed: list[Declaration] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    edges_added: list[tuple[str, str]] = field(default_factory=list)
    edges_removed: list[tuple[str, str]] = field(default_factory=list)
    remotes: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.added, self.removed, self.renamed, self.edges_added, self.edges_removed, self.remotes, self.malformed))


@dataclass
class NotebookDiff:
    cells: list[CellChange]
    pipeline: PipelineChange
    old_components: dict[str, Declaration]
    new_components: dict[str, Declaration]
    metadata: list[str] = field(default_factory=list)  # the notebook's own, one line each

    def __bool__(self) -> bool:
        return bool(self.cells or self.pipeline or self.metadata)


def _kernel_name(metadata: Mapping[str, Any]) -> str:
    spec = metadata.get("kernelspec")
    name = spec.get("name") if isinstance(spec, Mapping) else None
    return str(name) if name else "(none)"


def _notebook_metadata_changes(old: Any, new: Any) -> list[str]:
    """The notebook's kernel by name (switching a notebook off Link Python turns its pipeline
    off), then any other key that changed, except what kernels and editors record as they run."""
    old, new = (m if isinstance(m, Mapping) else {} for m in (old, new))
    changes = []
    if _kernel_name(old) != _kernel_name(new):
        changes.append(f"kernel {_kernel_name(old)} -> {_kernel_name(new)}")
    for key in sorted((set(old) | set(new)) - RECORDED_NOTEBOOK_METADATA - {"kernelspec"}):
        if old.get(key) != new.get(key):
            changes.append(f"metadata {key!r} changed")
    return changes


def _declarations(notebook: Notebook, side: str, malformed: list[str]) -> dict[int, Declaration]:
    """Declarations by cell index; a malformed cell is reported, not fatal, in a diff."""
    found = {}
    for index, cell in enumerate(notebook["cells"]):
        if cell.get("cell_type") != "code":
            continue
        try:
            decl = parse_declaration(cell.get("metadata"), f"{side} cell {index + 1}")
        except DeclarationError as exc:
            malformed.append(str(exc))
            continue
        if decl:
            found[index] = decl
    return found


def _label(cell: Mapping[str, Any], decl: Declaration | None) -> str:
    return f"component {decl.name}" if decl else str(cell.get("cell_type"))


def _visible_metadata(cell: Mapping[str, Any]) -> dict[str, Any]:
    meta = cell.get("metadata") or {}
    return {k: v for k, v in meta.items() if k not in UI_METADATA}


def _output_text(cell: Mapping[str, Any]) -> list[str]:
    lines = []
    for output in cell.get("outputs") or []:
        data = output.get("data")
        text = output.get("text") or (data.get("text/plain") if isinstance(data, Mapping) else "") or output.get("evalue") or ""
        text = "".join(map(str, text)) if isinstance(text, list) else str(text)
        lines.extend(text.splitlines(True) or [f"<{output.get('output_type')}>\n"])
    return lines


def _attachment_changes(old: Any, new: Any) -> list[str]:
    """Images pasted into markdown and raw cells are content, not outputs: always shown, by name."""
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return [] if old == new else ["attachments changed"]
    changes = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            changes.append(f"attachment {name!r} added")
        elif name not in new:
            changes.append(f"attachment {name!r} removed")
        elif old[name] != new[name]:
            changes.append(f"attachment {name!r} changed")
    return changes


def _unified(a: str, b: str, old: str = "", new: str = "") -> tuple[str, ...]:
    """Line diff, as if both texts ended with a newline: Jupyter saves a cell's last line
    without one, and a line appended must not show the old last line removed and re-added."""
    if a == b:
        return ()
    a_lines, b_lines = (text.splitlines(True) for text in (a, b))
    for lines in (a_lines, b_lines):
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
    shown = tuple(line.rstrip("\n") for line in list(difflib.unified_diff(a_lines, b_lines, old, new, n=2, lineterm=""))[2:])
    if shown:
        return shown
    return ("\\ newline at the end of the cell " + ("added" if b.endswith("\n") else "removed"),)


def diff_notebooks(a: Notebook, b: Notebook, outputs: bool = False) -> NotebookDiff:
    """Compare two notebooks; outputs and execution counts only count with `outputs=True`."""
    malformed: list[str] = []
    a_decl, b_decl = _declarations(a, "old", malformed), _declarations(b, "new", malformed)
    a_cells, b_cells = a["cells"], b["cells"]
    pairs = match_cells(a_cells, b_cells)
    chain = monotone_chain(pairs)
    in_order = {i for i, _ in chain}
    changes: list[CellChange] = []
    matched_b = set(pairs.values())
    for i, cell in enumerate(a_cells):
        if i not in pairs:
            changes.append(CellChange("removed", i, None, _label(cell, a_decl.get(i)),
                                      tuple("-" + line for line in cell_source(cell).splitlines())))
            continue
        j = pairs[i]
        other = b_cells[j]
        details = []
        if cell.get("cell_type") != other.get("cell_type"):
            details.append(f"cell type {cell.get('cell_type')} -> {other.get('cell_type')}")
        if a_decl.get(i) != b_decl.get(j):
            details.append(f"declaration: {_tags(a_decl.get(i))} -> {_tags(b_decl.get(j))}")
        old_meta, new_meta = _visible_metadata(cell), _visible_metadata(other)
        for key in sorted((set(old_meta) | set(new_meta)) - {"tags", "link"}):
            if old_meta.get(key) != new_meta.get(key):
                details.append(f"metadata {key!r} changed")
        extra_tags = [sorted(str(t) for t in m.get("tags") or [] if str(t).partition(":")[0] not in TAG_KINDS)
                      for m in (old_meta, new_meta)]
        if extra_tags[0] != extra_tags[1]:
            details.append(f"tags {extra_tags[0]} -> {extra_tags[1]}")
        details += _attachment_changes(cell.get("attachments") or {}, other.get("attachments") or {})
        if outputs:
            if cell.get("execution_count") != other.get("execution_count"):
                details.append(f"execution count {cell.get('execution_count')} -> {other.get('execution_count')}")
            if cell.get("outputs") != other.get("outputs"):
                details.append("outputs changed")
        source_diff = _unified(cell_source(cell), cell_source(other))
        if outputs and cell.get("outputs") != other.get("outputs"):
            old_out, new_out = "".join(_output_text(cell)), "".join(_output_text(other))
            source_diff += tuple("  " + line for line in _unified(old_out, new_out))
        moved = i not in in_order
        if moved or details or source_diff:
            changes.append(CellChange("moved" if moved else "modified", i, j, _label(other, b_decl.get(j)),
                                      source_diff, tuple(details)))
    for j, cell in enumerate(b_cells):
        if j not in matched_b:
            changes.append(CellChange("added", None, j, _label(cell, b_decl.get(j)),
                                      tuple("+" + line for line in cell_source(cell).splitlines())))
    def position(change: CellChange) -> float:
        """A removed cell shows where it was: just after its previous neighbour that stayed in place."""
        if change.new is not None:
            return change.new
        previous = bisect.bisect_left(chain, (change.old, -1)) - 1
        return (chain[previous][1] if previous >= 0 else -1) + 0.5

    changes.sort(key=lambda c: (position(c), c.kind != "removed"))
    pipeline = _pipeline_change(a_decl, b_decl, pairs)
    pipeline.malformed = malformed
    return NotebookDiff(changes, pipeline, {d.name: d for d in a_decl.values()}, {d.name: d for d in b_decl.values()},
                        _notebook_metadata_changes(a.get("metadata"), b.get("metadata")))


def _tags(decl: Declaration | None) -> str:
    return " ".join(decl.to_tags()) if decl else "(none)"


def _pipeline_change(a: dict[int, Declaration], b: dict[int, Declaration], pairs: Mapping[int, int]) -> PipelineChange:
    change = PipelineChange()
    rename: dict[str, str] = {}
    b_names = {d.name for d in b.values()}
    for i, old in a.items():
        new = b.get(pairs[i]) if i in pairs else None
        if new and new.name != old.name and old.name not in b_names:
            rename[old.name] = new.name
            change.renamed.append((old.name, new.name))
    old_by_name = {d.name: d for d in a.values()}
    new_by_name = {d.name: d for d in b.values()}
    renamed_to = set(rename.values())
    change.added = [d for d in new_by_name.values() if d.name not in old_by_name and d.name not in renamed_to]
    change.removed = [d for d in old_by_name.values() if d.name not in new_by_name and d.name not in rename]
    old_edges = {(rename.get(p, p), rename.get(d.name, d.name)) for d in a.values() for p in d.parents}
    new_edges = {(p, d.name) for d in b.values() for p in d.parents}
    change.edges_added = sorted(new_edges - old_edges)
    change.edges_removed = sorted(old_edges - new_edges)
    for name, old in old_by_name.items():
        new = new_by_name.get(rename.get(name, name))
        if new and new.remote != old.remote:
            change.remotes.append((new.name, old.remote, new.remote))
    return change


# ---- rendering -----------------------------------------------------------------------------

COLOURS = {"header": "1;36", "added": "32", "removed": "31", "moved": "33", "modified": "36", "hunk": "36", "note": "35"}


def render_text(diff: NotebookDiff, color: bool = False, old_name: str = "a", new_name: str = "b") -> str:
    def paint(kind: str, text: str) -> str:
        return f"\x1b[{COLOURS[kind]}m{text}\x1b[0m" if color else text

    out: list[str] = []
    if not diff:
        return ""
    out.append(paint("header", f"--- {old_name}\n+++ {new_name}"))
    if diff.metadata:
        out.append(paint("modified", "## notebook"))
        out.extend(paint("note", "   " + line) for line in diff.metadata)
    for change in diff.cells:
        if change.kind == "added":
            head = f"cell {change.new + 1} added ({change.label})"
        elif change.kind == "removed":
            head = f"cell {change.old + 1} removed ({change.label})"
        elif change.kind == "moved":
            head = f"cell {change.new + 1} moved from {change.old + 1} ({change.label})"
        else:
            head = f"cell {change.new + 1} modified ({change.label})"
        out.append(paint(change.kind, "## " + head))
        out.extend(paint("note", "   " + detail) for detail in change.details)
        for line in change.source_diff:
            kind = {"+": "added", "-": "removed", "@": "hunk"}.get(line[:1])
            out.append(paint(kind, line) if kind else line)
    pipeline = diff.pipeline
    if pipeline:
        out.append(paint("header", "## pipeline"))
        for decl in pipeline.added:
            parents = f" (parents: {', '.join(decl.parents)})" if decl.parents else ""
            out.append(paint("added", f"+ component {decl.name}{parents}"))
        for decl in pipeline.removed:
            out.append(paint("removed", f"- component {decl.name}"))
        for old, new in pipeline.renamed:
            out.append(paint("moved", f"~ component {old} renamed to {new}"))
        out.extend(paint("added", f"+ edge {p} -> {c}") for p, c in pipeline.edges_added)
        out.extend(paint("removed", f"- edge {p} -> {c}") for p, c in pipeline.edges_removed)
        for name, old, new in pipeline.remotes:
            out.append(paint("moved", f"~ remote of {name}: {old or '(local)'} -> {new or '(local)'}"))
        out.extend(paint("note", f"! {line}") for line in pipeline.malformed)
    return "\n".join(out) + "\n"


def notebook_as_text(notebook: Notebook) -> str:
    """git's textconv view: each cell's header (type, id, declaration) and source; no outputs.

    Headers carry no cell number: git diffs these lines, so a cell inserted at the top would
    renumber every header below it, and `git log -p` and `git blame` would give all of them
    to the commit that inserted one cell.
    """
    parts = []
    for cell in notebook["cells"]:
        head = f"## {cell.get('cell_type')} cell"
        if cell.get("id"):
            head += f" id={cell['id']}"
        if cell.get("cell_type") == "code":
            try:
                decl = parse_declaration(cell.get("metadata"))
            except DeclarationError as exc:
                head += f" (malformed declaration: {exc})"
            else:
                head += f" [{_tags(decl)}]" if decl else ""
        source = cell_source(cell)
        parts.append(head + "\n" + source + ("" if source.endswith("\n") or not source else "\n"))
    return "\n".join(parts)


def configure_diff(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="A.ipynb B.ipynb (git's 1, 7 or 9 diff-driver arguments are accepted too)")
    parser.add_argument("--outputs", action="store_true", help="also compare outputs and execution counts")
    parser.add_argument("--html", metavar="FILE", help="write an HTML page drawing both pipelines with the change")
    add_colour_options(parser)
    parser.set_defaults(func=run)


def add_colour_options(parser: argparse.ArgumentParser) -> None:
    """--color / --no-color, shared by diff and log; `colour_wanted` decides when neither is given."""
    colour = parser.add_mutually_exclusive_group()
    colour.add_argument("--color", dest="color", action="store_true", default=None, help="always colour")
    colour.add_argument("--no-color", dest="color", action="store_false", help="never colour")


def colour_wanted(choice: bool | None) -> bool:
    """The user's --color/--no-color, else colour on a terminal or git's pager, unless NO_COLOR is set."""
    if choice is not None:
        return choice
    terminal = sys.stdout.isatty() or os.environ.get("GIT_PAGER_IN_USE") == "true"
    return terminal and "NO_COLOR" not in os.environ


def _as_text(old_path: str, new_path: str, old_name: str, new_name: str, note: str) -> str:
    """A plain line diff of two files, for git's sake, under a note saying why."""
    texts = []
    for path in (old_path, new_path):
        try:
            texts.append(Path(path).read_text(errors="replace").splitlines(True))
        except OSError:
            texts.append([])
    lines = difflib.unified_diff(*texts, old_name, new_name)
    return f"({note})\n" + "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def run(args: argparse.Namespace) -> int:
    from linkkernel.errors import LinkError
    from linkkernel.git import nbio

    if len(args.files) == 1 and "GIT_DIFF_PATH_TOTAL" in os.environ:  # git, for an unmerged path: say so as git does
        sys.stdout.write(f"* Unmerged path {args.files[0]}\n")
        return 0
    if len(args.files) in (7, 9):  # git: path old-file old-hex old-mode new-file new-hex new-mode [new-path how]
        old_path, new_path = args.files[1], args.files[4]
        old_name, new_name = f"a/{args.files[0]}", f"b/{args.files[7 if len(args.files) == 9 else 0]}"
    elif len(args.files) == 2:
        old_path, new_path = old_name, new_name = args.files
        from linkkernel.git.install import warn_if_unconfigured

        warn_if_unconfigured(new_path)
    else:
        raise LinkError(f"expected A.ipynb B.ipynb, got {len(args.files)} files")
    try:
        old, new = nbio.read(old_path), nbio.read(new_path)
    except LinkError as exc:
        if len(args.files) == 2:
            raise
        # git stops its whole diff at a driver that fails ('external diff died'), hiding every
        # file after this one: show a broken file (a text merge's markers) as text instead
        sys.stdout.write(_as_text(old_path, new_path, old_name, new_name, f"not compared as notebooks: {exc}"))
        return 0
    diff = diff_notebooks(old, new, outputs=args.outputs)
    color = colour_wanted(args.color)
    sys.stdout.write(render_text(diff, color, old_name, new_name))
    if args.html is not None:
        from linkkernel.git.html import render_html
        from linkkernel.sharing.commandline import write_atomically

        page = render_html(diff, render_text(diff, False, old_name, new_name), old_name, new_name)
        # a file name that is not UTF-8 shows with a "?" for each byte that is not, the page stays UTF-8
        write_atomically(args.html, page.encode("utf-8", "replace"), (old_path, new_path))
    return 0
