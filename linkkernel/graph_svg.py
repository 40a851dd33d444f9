"""The pipeline DAG as a self-contained SVG (`%link graph`), no graphviz binary needed.

Layered layout: one row per topological generation, nodes spread evenly in each row, so
JupyterLab renders it as an image without any extension. Pure: takes names, edges and states.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape

COLOURS = {"fresh": "#2e7d32", "stale": "#f9a825", "failed": "#c62828", "never": "#9e9e9e"}
FILLS = {"fresh": "#e8f5e9", "stale": "#fff8e1", "failed": "#ffebee", "never": "#f5f5f5"}
ROW, NODE_H, CHAR_W, PAD, GAP = 80, 34, 8, 16, 24


def render_svg(layers: Iterable[Iterable[str]], edges: Iterable[tuple[str, str]], state: Mapping[str, str]) -> str:
    """An SVG of the DAG: `layers` are the topological generations, top to bottom."""
    rows = [list(layer) for layer in layers]
    widths = {n: max(60, CHAR_W * len(n) + 2 * PAD) for row in rows for n in row}
    row_widths = [sum(widths[n] for n in row) + GAP * (len(row) - 1) for row in rows] or [0]
    total_w = max(row_widths) + 2 * GAP
    total_h = ROW * len(rows) + GAP
    centre: dict[str, tuple[float, float]] = {}
    for r, row in enumerate(rows):
        x = (total_w - row_widths[r]) / 2
        y = GAP + r * ROW
        for n in row:
            centre[n] = (x + widths[n] / 2, y + NODE_H / 2)
            x += widths[n] + GAP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0f}" height="{total_h:.0f}" '
        f'viewBox="0 0 {total_w:.0f} {total_h:.0f}" font-family="sans-serif" font-size="13">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
    ]
    for parent, child in edges:
        (x1, y1), (x2, y2) = centre[parent], centre[child]
        parts.append(
            f'<line x1="{x1:.1f}" y1="{y1 + NODE_H / 2:.1f}" x2="{x2:.1f}" y2="{y2 - NODE_H / 2:.1f}" '
            'stroke="#555" stroke-width="1.5" marker-end="url(#arrow)"/>'
        )
    for n, (cx, cy) in centre.items():
        s = state.get(n, "never")
        w = widths[n]
        parts.append(
            f'<g class="node {s}"><title>{escape(n)}: {s}</title>'
            f'<rect x="{cx - w / 2:.1f}" y="{cy - NODE_H / 2:.1f}" width="{w}" height="{NODE_H}" rx="6" '
            f'fill="{FILLS.get(s, "#fff")}" stroke="{COLOURS.get(s, "#000")}" stroke-width="2"/>'
            f'<text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle">{escape(n)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_text(layers: Iterable[Iterable[str]], parents: Mapping[str, Iterable[str]], state: Mapping[str, str]) -> str:
    """The text fallback: one line per component, layer by layer."""
    lines = []
    for layer in layers:
        for n in layer:
            ps = list(parents.get(n, ()))
            lines.append(f"{n} [{state.get(n, 'never')}]" + (f" <- {', '.join(ps)}" if ps else ""))
    return "\n".join(lines) if lines else "(no components)"
