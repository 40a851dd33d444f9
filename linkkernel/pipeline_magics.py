"""`%link status|graph|outputs|run|cache clear|notebook`: the engine's commands in the kernel."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

from linkkernel.errors import LinkError
from linkkernel.sharing.commandline import parse_magic_args

if TYPE_CHECKING:
    import networkx as nx

    from linkkernel.sources import Declared


def _no_arguments(parser) -> None:
    """Configures a subcommand that takes no arguments (it still answers --help)."""


def _valid_part(runner) -> tuple[Declared, set[str], nx.DiGraph, list[str]]:
    """What `%link status` and `%link graph` show: the declarations, the names that cannot be
    placed (a malformed cell, an unknown parent, a duplicate, a cycle, or one of those among
    their ancestors), the DAG of the rest, and one line per reason."""
    from linkkernel.graph import placeable

    declared = runner.sources.declared()
    blocked = declared.blocked()
    placed = placeable([c for c in declared.components if c.name not in blocked], runner.sources.looked_in())
    errors = list(dict.fromkeys(str(m.error) for m in declared.malformed)) + placed.problems
    return declared, set(blocked) | placed.broken, placed.graph, errors


def status(kernel, argv: list[str]) -> None:
    """A table: name, parents, state, last run, duration, where it runs.

    A component that cannot be placed in the pipeline (malformed cell, unknown parent,
    duplicate, cycle, or one of those among its ancestors) is an `error` row; the reasons
    follow the table, so the rest of the pipeline is still shown.
    """
    if parse_magic_args("%link status", _no_arguments, argv) is None:
        return
    from linkkernel.graph import run_order

    runner = kernel.runner
    declared, unplaced, graph, errors = _valid_part(runner)
    state = runner.store.states(graph, remote=True)
    rows = [("name", "parents", "state", "last run", "duration", "where")]
    for name in run_order(graph):
        component = graph.nodes[name]["component"]
        record = runner.store.get(name)
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started)) if record else "-"
        duration = f"{record.duration:.2f} s" if record else "-"
        rows.append((name, ", ".join(component.parents) or "-", state[name], last, duration, component.runs_on))
    for component in declared.components:
        if component.name in unplaced:
            rows.append((component.name, ", ".join(component.parents) or "-", "error", "-", "-", component.runs_on))
    for malformed in declared.malformed:
        rows.append((", ".join(sorted(malformed.names)) or "?", "-", "error", "-", "-", "-"))
    if len(rows) == 1:
        print(f"no components declared in {runner.sources.looked_in()}")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for error in errors:
        print(f"error: {error}")


def graph(kernel, argv: list[str]) -> None:
    """The DAG as an SVG coloured by state, with a text fallback; the components that cannot
    be placed are left out and the reasons follow, as in `%link status`."""
    if parse_magic_args("%link graph", _no_arguments, argv) is None:
        return
    import networkx as nx
    from IPython.display import display

    from linkkernel.graph import notebook_order
    from linkkernel.graph_svg import render_svg, render_text

    runner = kernel.runner
    _, _, g, errors = _valid_part(runner)
    state = runner.store.states(g, remote=True)
    key = notebook_order(g)
    layers = [sorted(layer, key=key) for layer in nx.topological_generations(g)]
    parents = {n: g.nodes[n]["component"].parents for n in g}
    display(
        {"image/svg+xml": render_svg(layers, list(g.edges), state), "text/plain": render_text(layers, parents, state)},
        raw=True,
    )
    for error in errors:
        print(f"error: {error}")


def outputs(kernel, argv: list[str]) -> None:
    """Show a component's stored outputs again."""
    args = parse_magic_args("%link outputs", lambda p: p.add_argument("name", metavar="NAME", help="the component"), argv)
    if args is None:
        return
    from IPython.display import display

    runner = kernel.runner
    runner.store.refresh(remote=True)  # the latest run, also one another process recorded (`linkkernel run`)
    record = runner.store.get(args.name)
    if record is None:
        if args.name not in {c.name for c in runner.sources.declared().components}:  # a typo, most likely
            raise LinkError(f"%link outputs: no component named {args.name!r} in {runner.sources.looked_in()}")
        raise LinkError(f"%link outputs: component {args.name!r} has no stored outputs (it has not run)")
    # Each written out at once: ipykernel buffers stdout and stderr apart, and would show all
    # of one before the other instead of in the order the run showed them.
    for output in record.outputs:
        kind = output["output_type"]
        if kind == "stream":
            stream = sys.stderr if output["name"] == "stderr" else sys.stdout
            stream.write(output["text"])
            stream.flush()
        elif kind in ("display_data", "execute_result"):
            display(output["data"], metadata=output.get("metadata") or None, raw=True)
        elif kind == "error" and output["ename"] != "UsageError":  # shown as its stderr line, kept above
            print("\n".join(output["traceback"]), file=sys.stderr, flush=True)


def _configure_run(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("--all", action="store_true", help="every component")
    parser.add_argument("--force", action="store_true", help="run them and their ancestors even when fresh")


def run(kernel, argv: list[str]) -> None:
    """Bring components up to date: `%link run NAME... [--force]` or `%link run --all`."""
    args = parse_magic_args("%link run", _configure_run, argv)
    if args is None:
        return
    if bool(args.names) == args.all:
        raise LinkError("%link run: give component names or --all")
    running = kernel.shell.compile.current_component
    if running is not None:  # the run would publish its outputs into this component's namespace
        raise LinkError(
            f"%link run cannot be used inside component cell {running!r}: a component's outputs must come "
            "from its own code; make the components it needs its parents (tag parent:NAME)"
        )
    from IPython.core.interactiveshell import _pseudo_sync_runner

    # A cell of this one line has shown nothing before the run's progress line.
    code = kernel.get_parent().get("content", {}).get("code", "").strip()
    alone = code.startswith("%link") and "\n" not in code
    ran = _pseudo_sync_runner(kernel.runner.run_targets(None if args.all else args.names, args.force, alone))
    print(f"ran: {', '.join(ran)}" if ran else "everything was fresh; nothing ran")


def cache(kernel, argv: list[str]) -> None:
    """`%link cache clear`: forget every stored run of this notebook."""
    if parse_magic_args("%link cache", lambda p: p.add_argument("action", choices=["clear"]), argv) is None:
        return
    store = kernel.runner.store
    store.clear()
    print(f"cleared the component cache ({store.location})")


def _configure_notebook(parser) -> None:
    # the rest of the line, as `%cd` takes it: `%link notebook My Analysis.ipynb` needs no quotes
    parser.add_argument("path", nargs="*", metavar="PATH",
                        help="the saved notebook to read declarations from; without it, show the current one")


def notebook(kernel, argv: list[str]) -> None:
    """`%link notebook [PATH]`: read declarations from this saved notebook (and key the cache by it)."""
    args = parse_magic_args("%link notebook", _configure_notebook, argv)
    if args is None:
        return
    runner = kernel.runner
    if args.path:
        given = " ".join(args.path)
        path = os.path.expanduser(given)
        if os.path.isdir(path):
            raise LinkError(f"%link notebook: {given} is a directory; give the notebook file (NAME.ipynb)")
        if os.path.abspath(path) != runner.sources.notebook_path:  # the same one again keeps what we know
            runner.set_notebook(path)
    path = runner.sources.notebook_path
    state = " (does not exist yet: declarations come from executed cells until it is saved)"
    shown = "(none)" if path is None else path + ("" if os.path.exists(path) else state)
    print(f"notebook: {shown}\ncache: {runner.store.location}")
