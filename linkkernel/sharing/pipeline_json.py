"""Pipelines as a versioned JSON document, and back into tagged cells (SPEC §6).

`linkkernel export` / `%link export` write the document; `linkkernel import` / `%link import`
re-create the cells. The format is described by `pipeline.schema.json` next to this module
(also in docs/). Declarations are read by `linkkernel.declarations` and the DAG is validated
by `linkkernel.graph`, so a document is refused for exactly the reasons a notebook would be.

Schema validation uses `jsonschema`, which nbformat already requires (nbformat >= 5 depends on
both `jsonschema` and `fastjsonschema`); linkkernel adds no dependency for it.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import re
import warnings
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from linkkernel import __version__
from linkkernel.declarations import (
    NOTEBOOK_ENCODING,
    TAG_KINDS,
    Component,
    Declaration,
    lone_surrogate,
    notebook_components,
    notebook_problem,
    parse_declaration,
)
from linkkernel.errors import LinkError
from linkkernel.sharing.commandline import output_path, parse_magic_args, report_stream, write_atomically

FORMAT = "linkkernel-pipeline"
VERSION = 1
SCHEMA_FILE = "pipeline.schema.json"
KERNELSPEC = {"name": "link-python", "display_name": "Link Python", "language": "python"}


@dataclass(frozen=True)
class Pipeline:
    """A validated document: components in document order and the parents it needs from outside."""

    components: list[Component]
    requires: tuple[str, ...] = ()


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of the pipeline document, as shipped in the package."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- notebooks on disk


def read_notebook(path: str | Path, invent_ids: bool = True):
    """Read a notebook as nbformat 4.5 (cell ids present), or one line saying why not.

    nbformat only logs a notebook that fails its schema, so what it returns is checked like
    every other reader's (`notebook_problem`): otherwise a source that is a number would be
    exported into a document that import refuses.
    With `invent_ids` False, cells keep exactly the ids the file gives them, none when it has
    none (nbformat < 4.5): the ids nbformat makes up are random, and exporting a notebook
    twice must write the same document.
    """
    import nbformat

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise LinkError(f"{path}: no such notebook") from exc
    except OSError as exc:
        raise LinkError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        with warnings.catch_warnings():  # nbformat warns in two lines about ids it repairs itself
            warnings.simplefilter("ignore")
            nb = nbformat.reads(data.decode(NOTEBOOK_ENCODING), as_version=4)
    except Exception as exc:  # nbformat raises NotJSONError, ValidationError, KeyError... on bad files
        raise LinkError(f"{path}: {_unreadable(data, exc)}".splitlines()[0]) from exc
    problem = notebook_problem(nb)
    if problem:
        raise LinkError(f"{path}: {problem}")
    if not invent_ids:
        parsed = json.loads(data.decode(NOTEBOOK_ENCODING))
        given = parsed["cells"] if parsed.get("nbformat") == 4 else []  # v3 has worksheets, no ids
        for index, cell in enumerate(nb.cells):
            raw = given[index] if index < len(given) else {}
            if isinstance(raw.get("id"), str):
                cell["id"] = raw["id"]  # also one nbformat replaced for repeating an earlier cell's
            else:
                cell.pop("id", None)
        return nb
    if nb.nbformat_minor < 5:
        nb = nbformat.v4.upgrade(nb, from_version=4, from_minor=nb.nbformat_minor)
    return nb


def _unreadable(data: bytes, exc: Exception) -> str:
    """Why nbformat could not read a notebook file's `data`: our own words when the JSON is
    not a notebook's shape (nbformat then fails with an AttributeError or TypeError about
    its own code), else nbformat's."""
    try:
        parsed = json.loads(data.decode(NOTEBOOK_ENCODING))
    except RecursionError:
        return "not a readable notebook (JSON nested too deeply)"
    except ValueError:
        parsed = {"cells": []}
    return notebook_problem(parsed) or f"not a readable notebook ({type(exc).__name__}: {exc})"


def write_notebook(nb, path: str | Path, inputs: tuple[str | Path | None, ...] = ()) -> None:
    """Validate, then write atomically: a notebook that nbformat rejects is never written."""
    import nbformat

    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        raise LinkError(f"{path}: not written, the result would not be a valid notebook: {exc.message}") from exc
    write_atomically(path, (nbformat.writes(nb) + "\n").encode("utf-8"), inputs)


def new_notebook():
    """An empty nbformat 4.5 notebook that opens with the Link Python kernel."""
    import nbformat

    return nbformat.v4.new_notebook(
        metadata={"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    )


# ---------------------------------------------------------------- export


def _plain(value: Any) -> Any:
    """A deep copy as plain dicts and lists (NotebookNode is a dict subclass json can't tell apart)."""
    return json.loads(json.dumps(value))


def _is_declaration_tag(tag: Any) -> bool:
    """`component:x`, `parent:x`, `remote:x`; a plain `parent` tag declares nothing and is the user's."""
    kind, sep, _ = tag.partition(":") if isinstance(tag, str) else ("", "", "")
    return bool(sep) and kind in TAG_KINDS


def _without_declaration(metadata: Any) -> dict[str, Any]:
    """Cell metadata minus the declaration, which the document carries as name/parents/remote."""
    meta = _plain(dict(metadata or {}))
    meta.pop("link", None)
    tags = [t for t in meta.get("tags", []) if not _is_declaration_tag(t)]
    if tags:
        meta["tags"] = tags
    else:
        meta.pop("tags", None)
    return meta


def _entry(component: Component) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": component.name,
        "code": component.source,
        "parents": list(component.parents),
        "remote": component.remote,
    }
    if component.cell_id:
        entry["cell_id"] = component.cell_id
    entry["metadata"] = _without_declaration(component.metadata)
    return entry


def export_document(nb, select: list[str] | None = None, with_ancestors: bool = False, where: str = "the notebook") -> dict[str, Any]:
    """The pipeline document of a notebook, or of the selected components.

    Parents of selected components that are not exported themselves are listed under
    `requires`: such a document can be imported into a notebook that declares them.
    """
    from linkkernel import graph as pipeline_graph
    from linkkernel.graph import build_graph, run_order

    try:
        graph = build_graph(notebook_components(nb), "the notebook")
    except LinkError as exc:
        raise LinkError(f"{where}: {exc}") from exc
    if select:
        unknown = [name for name in select if name not in graph]
        if unknown:
            declared = ", ".join(run_order(graph)) or "no components"
            raise LinkError(f"{where} has no component {unknown[0]!r} (it declares: {declared})")
        chosen = set(select)
        if with_ancestors:
            chosen.update(pipeline_graph.with_ancestors(graph, select))
    else:
        chosen = set(graph)
    entries = [_entry(graph.nodes[name]["component"]) for name in run_order(graph, chosen)]
    requires = list(dict.fromkeys(p for e in entries for p in e["parents"] if p not in chosen))
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "generator": f"linkkernel {__version__}"}
    if requires:
        doc["requires"] = requires
    doc["components"] = entries
    doc["edges"] = [[parent, e["name"]] for e in entries for parent in e["parents"]]
    return doc


# ---------------------------------------------------------------- reading a document


def parse_document(text: str | bytes, where: str) -> Pipeline:
    """Validate a document (JSON, format, version, schema, edges, DAG) and return its pipeline."""
    import jsonschema
    from linkkernel.graph import build_graph

    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LinkError(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except UnicodeDecodeError as exc:
        raise LinkError(f"{where}: not valid JSON: not UTF-8 text") from exc
    except RecursionError:
        raise LinkError(f"{where}: not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise LinkError(f"{where}: not a linkkernel pipeline (a JSON {type(doc).__name__}, expected an object)")
    char = lone_surrogate(doc)
    if char:
        raise LinkError(f"{where}: not valid JSON text: it holds {char!r}, a lone surrogate escape that is not valid Unicode")
    if doc.get("format") != FORMAT:
        raise LinkError(f"{where}: not a linkkernel pipeline (format {doc.get('format')!r}, expected {FORMAT!r})")
    version = doc.get("version")
    if version != VERSION:
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            raise LinkError(
                f"{where}: pipeline format version {version} is newer than this linkkernel reads "
                f"(version {VERSION}); upgrade linkkernel"
            )
        raise LinkError(f"{where}: unsupported pipeline format version {version!r} (this linkkernel reads version {VERSION})")
    _check_keys(doc, where)
    validator = _validator_class()(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        raise LinkError(f"{where}: invalid pipeline document at {error.json_path}: {error.message}")

    components = []
    for index, entry in enumerate(doc["components"]):
        link = {"name": entry["name"], "parents": entry["parents"], "remote": entry.get("remote")}
        decl = parse_declaration({"link": link}, f"{where}: component {index + 1}")
        _check_no_declaration(entry.get("metadata", {}), f"{where}: component {index + 1} ({decl.name!r})")
        components.append(Component(decl, entry["code"], entry.get("cell_id"), index, entry.get("metadata", {})))
        _check_cell(components[-1], f"{where}: component {index + 1} ({decl.name!r})")
    requires = tuple(doc.get("requires", ()))
    both = sorted({c.name for c in components} & set(requires))
    if both:
        raise LinkError(f"{where}: {both[0]!r} is listed both as a component and under 'requires'")
    placeholders = [Component(Declaration(name), "", None, -1) for name in requires]
    try:
        build_graph(components + placeholders, "the document")
    except LinkError as exc:
        raise LinkError(f"{where}: {exc}") from exc
    _check_edges(doc["edges"], components, where)
    return Pipeline(components, requires)


@cache
def _validator_class():
    """The schema's validator, reading `pattern` as JSON Schema means it (ECMA 262): there `$`
    ends the string, where Python's `re` also matches before a final newline, which would let
    a cell id `"a\\n"` through into the notebook."""
    import jsonschema

    def pattern(validator, regex: str, instance: Any, _schema: dict[str, Any]):
        if validator.is_type(instance, "string") and not re.search(re.sub(r"\$$", r"\\Z", regex), instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {regex!r}")

    return jsonschema.validators.extend(jsonschema.validators.validator_for(schema()), {"pattern": pattern})


def _check_keys(doc: dict[str, Any], where: str) -> None:
    """Refuse a key the format does not have, naming it and the key it was likely meant to be:
    the schema alone would report a misspelled `parnets` as the missing `parents`."""
    _check_known(doc, schema()["properties"], where)
    components = doc.get("components")
    for index, entry in enumerate(components if isinstance(components, list) else []):
        if isinstance(entry, dict):
            name = entry.get("name")
            _check_known(entry, schema()["$defs"]["component"]["properties"],
                         f"{where}: component {index + 1}" + (f" ({name!r})" if isinstance(name, str) else ""))


def _check_known(obj: dict[str, Any], known: dict[str, Any], where: str) -> None:
    unknown = [key for key in obj if key not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], [k for k in known if k not in obj], n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(known)}"
        raise LinkError(f"{where}: unknown key {unknown[0]!r} ({hint})")


def _check_no_declaration(metadata: dict[str, Any], where: str) -> None:
    """Import writes the declaration from name/parents/remote; one repeated in the metadata
    would be written beside it and give the cell two names or unknown parents."""
    if "link" in metadata:
        raise LinkError(f"{where}: metadata key 'link' repeats a declaration; declare it with name, parents and remote")
    for tag in metadata.get("tags", []):
        if _is_declaration_tag(tag):
            raise LinkError(f"{where}: metadata tag {tag!r} repeats a declaration; declare it with name, parents and remote")
    # A misspelled declaration tag (`Parent:load`, `component=x`) would be written into a
    # notebook that the kernel and `linkkernel export` then refuse.
    parse_declaration({"tags": metadata.get("tags", [])}, f"{where}: metadata")


def _check_cell(component: Component, where: str) -> None:
    """The cell import would write must be one nbformat accepts: the schema lets through
    metadata it refuses (an empty tag, a tag with a comma or given twice, `collapsed: "yes"`),
    which would otherwise end the import in nbformat's traceback."""
    import nbformat

    try:
        nbformat.v4.new_code_cell(component.source, metadata=_cell_metadata(component))
    except nbformat.ValidationError as exc:
        raise LinkError(f"{where}: its metadata is not valid notebook cell metadata: {exc.message}") from exc


def _check_edges(edges: list[list[str]], components: list[Component], where: str) -> None:
    """The DAG listed in `edges` must be exactly the one the parents declare."""
    declared = [(p, c.name) for c in components for p in c.parents]
    listed = {(p, c) for p, c in edges}
    for parent, child in declared:
        if (parent, child) not in listed:
            raise LinkError(f"{where}: edge {parent} -> {child} (a parent of {child!r}) is missing from 'edges'")
    for parent, child in edges:
        if (parent, child) not in set(declared):
            raise LinkError(f"{where}: edge {parent} -> {child} in 'edges' is not declared by {child!r}'s parents")


def read_document(path: str | Path) -> Pipeline:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise LinkError(f"{path}: no such file") from exc
    except OSError as exc:
        raise LinkError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_document(data, str(path))


# ---------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportResult:
    notebook: Any
    added: list[str]
    renamed: dict[str, str]


def _free_name(name: str, taken: set[str]) -> str:
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    return f"{name}_{n}"


def _cell_metadata(component: Component) -> dict[str, Any]:
    """Both declaration forms (tags for JupyterLab's editor, `link` for tools) plus the rest."""
    meta = _plain(dict(component.metadata))
    meta["tags"] = component.declaration.to_tags() + meta.get("tags", [])
    meta["link"] = component.declaration.to_link_metadata()
    return meta


def import_pipeline(pipeline: Pipeline, into=None, rename: bool = False, where: str = "the notebook") -> ImportResult:
    """Append the pipeline's components as tagged cells, in run order, to `into` (or a new notebook).

    Names already declared in `into` are refused, listed, unless `rename`: then each clash
    gets the first free `_2`, `_3`... suffix and the edges inside the pipeline follow it.
    """
    import nbformat
    from linkkernel.graph import build_graph, run_order

    nb = copy.deepcopy(into) if into is not None else new_notebook()
    try:
        existing = notebook_components(nb)
    except LinkError as exc:
        raise LinkError(f"{where}: {exc}") from exc
    taken = {c.name for c in existing}
    clashes = [c.name for c in pipeline.components if c.name in taken]
    if clashes and not rename:
        raise LinkError(
            f"{where} already declares {', '.join(repr(n) for n in clashes)}; "
            "nothing imported (use --rename to import them under new names)"
        )
    taken |= {c.name for c in pipeline.components} | set(pipeline.requires)
    renamed: dict[str, str] = {}
    for name in clashes:
        renamed[name] = _free_name(name, taken)
        taken.add(renamed[name])

    used_ids = {cell.get("id") for cell in nb.cells}
    base = len(nb.cells)
    incoming = []
    for component in pipeline.components:
        decl = component.declaration
        decl = Declaration(renamed.get(decl.name, decl.name), tuple(renamed.get(p, p) for p in decl.parents), decl.remote)
        cell_id = component.cell_id if component.cell_id not in used_ids else None
        used_ids.add(cell_id)
        incoming.append(Component(decl, component.source, cell_id, base + component.index, component.metadata))
    graph = build_graph(existing + incoming, f"{where} or the imported pipeline" if into is not None else where)

    added = run_order(graph, [c.name for c in incoming])
    for name in added:
        component = graph.nodes[name]["component"]
        extra = {"id": component.cell_id} if component.cell_id else {}
        nb.cells.append(nbformat.v4.new_code_cell(component.source, metadata=_cell_metadata(component), **extra))
    return ImportResult(nb, added, renamed)


# ---------------------------------------------------------------- commands


def configure_export(parser: argparse.ArgumentParser, notebook_optional: bool = False) -> None:
    parser.add_argument(
        "notebook",
        nargs="?" if notebook_optional else None,
        metavar="NB.ipynb",
        help="notebook to export" + (" (default: the kernel's notebook)" if notebook_optional else ""),
    )
    parser.add_argument("-c", "--component", dest="components", action="append", metavar="NAME",
                        help="export only this component (repeatable); default: all")
    parser.add_argument("--with-ancestors", action="store_true",
                        help="also export every ancestor of the selected components")
    parser.add_argument("-o", "--output", required=True, metavar="pipeline.json", type=output_path, help="file to write (- for stdout)")
    parser.set_defaults(func=run_export)


def configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("document", metavar="pipeline.json", help="pipeline document to import")
    parser.add_argument("--into", metavar="NB.ipynb", help="append to this notebook's cells (default: a new notebook)")
    parser.add_argument("--rename", action="store_true",
                        help="import components whose names the notebook already uses under new names")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.ipynb", type=output_path, help="notebook to write (- for stdout)")
    parser.set_defaults(func=run_import)


def run_export(args: argparse.Namespace) -> int:
    nb = read_notebook(args.notebook, invent_ids=False)
    doc = export_document(nb, args.components, args.with_ancestors, str(args.notebook))
    report = report_stream(args.output)
    write_atomically(args.output, (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8"), (args.notebook,))
    names = [c["name"] for c in doc["components"]]
    line = f"exported {len(names)} component{'s' * (len(names) != 1)} ({', '.join(names)}) to {args.output}"
    if doc.get("requires"):
        line += f"; importing it needs {', '.join(doc['requires'])} in the target notebook"
    print(line, file=report)
    return 0


def run_import(args: argparse.Namespace) -> int:
    pipeline = read_document(args.document)
    into = read_notebook(args.into) if args.into else None
    result = import_pipeline(pipeline, into, args.rename, str(args.into or args.document))
    report = report_stream(args.output)
    write_notebook(result.notebook, args.output, (args.document,))  # --into NB -o NB appends in place
    line = f"wrote {args.output}: {len(result.added)} component{'s' * (len(result.added) != 1)} added ({', '.join(result.added)})"
    if result.renamed:
        line += "; renamed " + ", ".join(f"{a} -> {b}" for a, b in result.renamed.items())
    print(line, file=report)
    return 0


def kernel_notebook(kernel) -> str | None:
    """The saved notebook the kernel reads declarations from (the engine's `%link notebook`,
    LINKKERNEL_NOTEBOOK or JPY_SESSION_NAME)."""
    return kernel.runner.sources.notebook_path


def export_magic(kernel, argv: list[str]) -> None:
    """`%link export [NB.ipynb] [-c NAME ...] [--with-ancestors] -o pipeline.json`."""
    args = parse_magic_args("%link export", lambda p: configure_export(p, notebook_optional=True), argv)
    if args is None:
        return
    if args.notebook is None:
        args.notebook = kernel_notebook(kernel)
        if not args.notebook:
            raise LinkError("%link export: the kernel does not know its notebook; give its path: %link export NB.ipynb -o FILE")
    run_export(args)


def import_magic(kernel, argv: list[str]) -> None:
    """`%link import pipeline.json [--into NB.ipynb] [--rename] -o OUT.ipynb`."""
    args = parse_magic_args("%link import", configure_import, argv)
    if args is not None:
        run_import(args)
