"""Component declarations read from cell metadata: tags and the `link` key (SPEC §2).

Pure functions over plain dicts, shared by the kernel, the CLI, sharing and git, so every
tool agrees on what a cell declares and every tool refuses the same malformed cells.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from linkkernel.errors import LinkError

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
# Said with every rejected name: "'données' is not a valid name" alone does not say why.
NAME_RULE = "(ASCII letters, digits, '_', '.', '-', not starting with a digit)"
TAG_KINDS = ("component", "parent", "remote")
# A declaration tag written with '=' or a space for its colon (`component=train`): refused
# with the spelling it means. A space only after component and parent, which no other tool
# uses; `remote data` may well be someone's own tag.
COLONLESS_TAG = re.compile(
    r"\s*(?:(component|parent)\s*[=\s]|(remote)\s*=)\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\Z", re.IGNORECASE
)
LINK_KEYS = {"name", "parents", "remote"}
# The cell metadata keys parse_declaration reads; the others never change a declaration.
DECLARING_KEYS = ("tags", "link")


class DeclarationError(LinkError):
    """A cell's declaration is malformed or its two forms disagree."""


@dataclass(frozen=True)
class Declaration:
    """What one cell declares: its component name, parents in declared order, remote alias."""

    name: str
    parents: tuple[str, ...] = ()
    remote: str | None = None

    def to_link_metadata(self) -> dict[str, Any]:
        """The `link` metadata form of this declaration."""
        meta: dict[str, Any] = {"name": self.name, "parents": list(self.parents)}
        if self.remote:
            meta["remote"] = self.remote
        return meta

    def to_tags(self) -> list[str]:
        """The tag form of this declaration, in the order JupyterLab's tag editor shows."""
        tags = [f"component:{self.name}"] + [f"parent:{p}" for p in self.parents]
        return tags + ([f"remote:{self.remote}"] if self.remote else [])


@dataclass(frozen=True)
class Component:
    """A declaration together with the cell that carries it."""

    declaration: Declaration
    source: str
    cell_id: str | None = None
    index: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # False when `index` only orders the component (a cell executed but not in the saved
    # notebook): messages then name the cell by id, not by a position the user cannot find.
    placed: bool = field(default=True, compare=False)

    @property
    def name(self) -> str:
        return self.declaration.name

    @property
    def parents(self) -> tuple[str, ...]:
        return self.declaration.parents

    @property
    def remote(self) -> str | None:
        return self.declaration.remote

    @property
    def runs_on(self) -> str:
        """Where the component executes, as run records and `%link status` name it."""
        return f"remote:{self.remote}" if self.remote else "local"

    @property
    def where(self) -> str:
        if not self.placed and not self.cell_id:
            first = self.source.strip().splitlines()[0] if self.source.strip() else ""
            return f"the executed cell {first[:40]!r}"
        return describe_cell(self.index if self.placed else None, self.cell_id)


def describe_cell(index: int | None, cell_id: str | None) -> str:
    """How error messages name a cell: its 1-based position and id, whichever are known."""
    if index is None:
        return f"cell id {cell_id}" if cell_id else "this cell"
    return f"cell {index + 1}" + (f" (id {cell_id})" if cell_id else "")


def _check_name(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise DeclarationError(f"{where}: {what} {value!r} is not a valid name {NAME_RULE}")
    return value


def _from_tags(tags: Iterable[Any], where: str) -> Declaration | None:
    names: list[str] = []
    parents: list[str] = []
    remotes: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise DeclarationError(f"{where}: tag {tag!r} is not a string")
        kind, sep, value = tag.partition(":")
        if not sep:
            meant = COLONLESS_TAG.match(tag)
            if meant:
                spelling = f"{(meant[1] or meant[2]).lower()}:{meant[3]}"
                raise DeclarationError(f"{where}: malformed tag {tag!r}: write {spelling!r}")
            continue
        if kind not in TAG_KINDS:
            # `Component:train` would otherwise make a plain cell that looks like it worked
            if kind.strip().lower() in TAG_KINDS:
                raise DeclarationError(f"{where}: malformed tag {tag!r}: write {kind.strip().lower() + sep + value!r}")
            continue
        if not NAME_PATTERN.match(value):
            raise DeclarationError(f"{where}: malformed tag {tag!r}: {value!r} is not a valid name {NAME_RULE}")
        {"component": names, "parent": parents, "remote": remotes}[kind].append(value)
    if not names:
        if parents or remotes:
            stray = f"parent:{parents[0]}" if parents else f"remote:{remotes[0]}"
            raise DeclarationError(f"{where}: tag {stray!r} needs a 'component:NAME' tag beside it")
        return None
    if len(set(names)) > 1:
        raise DeclarationError(f"{where}: one cell cannot be two components ({', '.join(names)})")
    if len(set(remotes)) > 1:
        raise DeclarationError(f"{where}: conflicting remote tags ({', '.join(remotes)})")
    return Declaration(names[0], tuple(dict.fromkeys(parents)), remotes[0] if remotes else None)


def _from_link(link: Any, where: str) -> Declaration:
    if not isinstance(link, Mapping):
        raise DeclarationError(f"{where}: metadata 'link' must be an object, not {type(link).__name__}")
    unknown = sorted(set(link) - LINK_KEYS)
    if unknown:
        raise DeclarationError(
            f"{where}: metadata 'link' has unknown key {unknown[0]!r} (allowed: name, parents, remote)"
        )
    if "name" not in link:
        raise DeclarationError(f"{where}: metadata 'link' needs a 'name'")
    name = _check_name(link["name"], "component name", where)
    parents = link.get("parents", [])
    if not isinstance(parents, list):
        raise DeclarationError(f"{where}: metadata 'link.parents' must be a list of names")
    parents = [_check_name(p, "parent", where) for p in parents]
    remote = link.get("remote")
    if remote is not None:
        remote = _check_name(remote, "remote alias", where)
    return Declaration(name, tuple(dict.fromkeys(parents)), remote)


def parse_declaration(metadata: Mapping[str, Any] | None, where: str = "this cell") -> Declaration | None:
    """The declaration in one cell's metadata, or None when the cell is not a component.

    Both forms may be present but must agree on name, parents (as a set) and remote; the
    `link` key's parent order is kept, since it decides which parent wins a name clash.
    """
    metadata = metadata or {}
    if not isinstance(metadata, Mapping):
        raise DeclarationError(f"{where}: cell metadata must be an object, not {type(metadata).__name__}")
    tags = metadata.get("tags") or []
    if not isinstance(tags, list):
        raise DeclarationError(f"{where}: metadata 'tags' must be a list")
    from_tags = _from_tags(tags, where)
    if "link" not in metadata:
        return from_tags
    from_link = _from_link(metadata["link"], where)
    if from_tags is not None and (
        from_tags.name != from_link.name
        or set(from_tags.parents) != set(from_link.parents)
        or from_tags.remote != from_link.remote
    ):
        raise DeclarationError(
            f"{where}: tags declare {_summary(from_tags)} but metadata 'link' declares "
            f"{_summary(from_link)}; make them agree or remove one"
        )
    return from_link


def _summary(decl: Declaration) -> str:
    text = f"component {decl.name!r} with parents [{', '.join(decl.parents)}]"
    return text + (f" on {decl.remote!r}" if decl.remote else "")


CELL_TYPES = ("code", "markdown", "raw")

# How every reader decodes a notebook file. Notebooks are UTF-8; editors on Windows save a
# byte order mark in front, which `utf-8-sig` drops, so every command reads such a file alike.
# Writers never add one: nbformat, and so Jupyter, refuses a notebook that starts with it.
NOTEBOOK_ENCODING = "utf-8-sig"


def notebook_problem(notebook: Any) -> str | None:
    """Why a parsed notebook file is not one linkkernel can read, or None when it is.

    Every reader (the kernel's saved notebook, the cache and git commands) calls this first,
    so a JSON list, an nbformat 3 file or a cell with a non-object metadata is refused in one
    line naming the problem, never met later as an AttributeError deep inside a tool.
    """
    if not isinstance(notebook, Mapping):
        return f"not a notebook (a JSON {type(notebook).__name__}, not an object)"
    if notebook.get("nbformat", 4) != 4:
        return f"only nbformat 4 notebooks are supported, not {notebook['nbformat']!r}"
    if not isinstance(notebook.get("metadata", {}), Mapping):
        return "not a notebook (its metadata is not an object)"
    cells = notebook.get("cells")
    if not isinstance(cells, list):
        return "not a notebook (no 'cells' list)"
    for index, cell in enumerate(cells):
        if not isinstance(cell, Mapping) or cell.get("cell_type") not in CELL_TYPES:
            return f"cell {index + 1} is not a code, markdown or raw cell"
        if not isinstance(cell.get("metadata", {}), (Mapping, type(None))):
            return f"cell {index + 1}: its metadata is not an object"
        if not isinstance(cell.get("id", ""), str):
            return f"cell {index + 1}: its id is not text"
        outputs = cell.get("outputs", [])
        if not (isinstance(outputs, list) and all(isinstance(o, Mapping) for o in outputs)):
            return f"cell {index + 1}: its outputs are not a list of objects"
        source = cell.get("source", "")
        if not (isinstance(source, str) or isinstance(source, list) and all(isinstance(s, str) for s in source)):
            return f"cell {index + 1}: its source is neither text nor a list of lines"
    if lone_surrogate(notebook):  # one pass over the whole notebook; cell by cell only to say where
        for index, cell in enumerate(cells):
            char = lone_surrogate(cell)
            if char:
                return f"cell {index + 1}: holds {char!r}, a lone surrogate escape that is not valid Unicode"
        return f"its metadata holds {lone_surrogate(notebook)!r}, a lone surrogate escape that is not valid Unicode"
    return None


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in `value`'s strings, or None.

    JSON's "\\ud800" escape parses into a string no tool can print or write as UTF-8, so
    every command would end in a UnicodeEncodeError deep inside; readers refuse it up front.
    """
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.object[exc.start:exc.end][:1]
    return None


def cell_source(cell: Mapping[str, Any]) -> str:
    """A cell's source as one string (nbformat allows a list of lines on disk)."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def notebook_components(notebook: Mapping[str, Any]) -> list[Component]:
    """Every component declared in a notebook's code cells, in notebook order."""
    components = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        cell_id = cell.get("id")
        metadata = cell.get("metadata") or {}
        decl = parse_declaration(metadata, describe_cell(index, cell_id))
        if decl is not None:
            components.append(Component(decl, cell_source(cell), cell_id, index, metadata))
    return components
