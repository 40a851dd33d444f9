"""`linkkernel diff --html`: both pipelines drawn as inline SVG with the change coloured.

Self-contained page, no Graphviz or JavaScript: a layered layout (each component one row below
its deepest parent) is enough for the pipelines people draw in notebooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from linkkernel.declarations import Declaration
from linkkernel.git.diff import NotebookDiff

ADDED, REMOVED, CHANGED, SAME = "#1a7f37", "#cf222e", "#bf8700", "#57606a"
BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 150, 30, 30, 60, 20


def layout(components: Mapping[str, Declaration]) -> dict[str, tuple[float, float]]:
    """Top-left corner of each component's box; rows by depth, columns in declaration order."""
    depth: dict[str, int] = {}
    for start in components:
        stack = [(start, False)]
        visiting: set[str] = set()
        while stack:
            name, done = stack.pop()
            if name in depth:
                continue
            parents = [p for p in components[name].parents if p in components and p not in visiting]
            if done:
                depth[name] = 1 + max((depth.get(p, 0) for p in parents), default=-1)
                visiting.discard(name)
                continue
            visiting.add(name)
            stack.append((name, True))
            stack.extend((p, False) for p in parents if p not in depth)
    rows: dict[int, list[str]] = {}
    for name in components:
        rows.setdefault(depth[name], []).append(name)
    return {
        name: (PAD + column * (BOX_W + GAP_X), PAD + row * (BOX_H + GAP_Y))
        for row, names in rows.items()
        for column, name in enumerate(names)
    }


def _svg(components: Mapping[str, Declaration], node_colour: Mapping[str, str], edge_colour: Mapping[tuple[str, str], str]) -> str:
    places = layout(components)
    width = max((x for x, _ in places.values()), default=0) + BOX_W * 1.5 + PAD
    height = max((y for _, y in places.values()), default=0) + BOX_H + PAD
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker></defs>',
    ]
    for name, decl in components.items():
        for parent in decl.parents:
            if parent not in places:
                continue
            (px, py), (cx, cy) = places[parent], places[name]
            x1, y1, x2, y2 = px + BOX_W / 2, py + BOX_H, cx + BOX_W / 2, cy
            # An edge skipping rows bends aside so it does not run through the boxes between.
            rows = round((cy - py) / (BOX_H + GAP_Y))
            # (a quadratic curve reaches half-way to its control point, hence the full box width).
            bend = (BOX_W + 40) * (rows > 1 or rows < 0) + 30 * max(rows - 2, 0)
            curve = f"M {x1} {y1} Q {(x1 + x2) / 2 + bend} {(y1 + y2) / 2} {x2} {y2}"
            colour = edge_colour.get((parent, name), SAME)
            dash = ' stroke-dasharray="5,4"' if colour == REMOVED else ""
            parts.append(
                f'<path d="{curve}" fill="none" stroke="{colour}" stroke-width="{2 if colour != SAME else 1}"{dash} '
                f'marker-end="url(#arrow)"><title>{escape(parent)} -&gt; {escape(name)}</title></path>'
            )
    for name, (x, y) in places.items():
        colour = node_colour.get(name, SAME)
        remote = f" @{components[name].remote}" if components[name].remote else ""
        label = escape(name + remote)
        parts.append(
            f'<g><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="white" stroke="{colour}" '
            f'stroke-width="{2.5 if colour != SAME else 1}"/><text x="{x + BOX_W / 2}" y="{y + BOX_H / 2 + 4}" '
            f'text-anchor="middle" fill="{colour}">{label}</text><title>{label}</title></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(diff: NotebookDiff, text: str, old_name: str, new_name: str) -> str:
    """The page: old pipeline (removed in red), new pipeline (added in green), renames in amber."""
    change = diff.pipeline
    renamed_old = {old for old, _ in change.renamed}
    renamed_new = {new for _, new in change.renamed}
    remote_changed = {name for name, _, _ in change.remotes}
    old_nodes = {d.name: REMOVED for d in change.removed} | {n: CHANGED for n in renamed_old}
    new_nodes = {d.name: ADDED for d in change.added} | {n: CHANGED for n in renamed_new | remote_changed}
    rename = dict(change.renamed)
    old_edges = {}
    removed = set(change.edges_removed)
    for name, decl in diff.old_components.items():
        for parent in decl.parents:
            if (rename.get(parent, parent), rename.get(name, name)) in removed:
                old_edges[(parent, name)] = REMOVED
    new_edges = {edge: ADDED for edge in change.edges_added}
    legend = (
        f'<p><span style="color:{ADDED}">added</span> · <span style="color:{REMOVED}">removed</span> · '
        f'<span style="color:{CHANGED}">renamed or moved to another remote</span></p>'
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>linkkernel diff {escape(old_name)} {escape(new_name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} .dags{{display:flex;gap:2em;flex-wrap:wrap}}
.dag{{border:1px solid #d0d7de;border-radius:6px;padding:.5em;overflow:auto}} pre{{background:#f6f8fa;padding:1em}}</style>
</head><body>
<h1>Pipeline change</h1>{legend}
<div class="dags">
<div class="dag"><h2>{escape(old_name)}</h2>
{_svg(diff.old_components, old_nodes, old_edges)}
</div>
<div class="dag"><h2>{escape(new_name)}</h2>
{_svg(diff.new_components, new_nodes, new_edges)}
</div>
</div>
<h1>Cells</h1>
<pre>{escape(text) or "no changes"}</pre>
</body></html>
"""
