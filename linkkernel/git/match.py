"""Which cell of one notebook is which cell of another.

nbdime compares every cell with every other at each level (an N x M grid), which takes about
two minutes for 2000 cells without ids. Here each pass is linear or near-linear and only
looks at what the previous passes left unmatched:

1. nbformat 4.5 cell ids, then the ids Google Colab keeps in each cell's metadata (it still
   saves nbformat 4.0, which has no cell ids);
2. component names (a component keeps its name across edits and moves);
3. exact cell type + source, in order (unedited cells, including moved ones);
4. similar source, only between consecutive anchors of the longest monotone chain of the
   matches so far, with a bounded look-ahead: an edited cell stays where it was, so it is
   found near its old neighbours.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from difflib import SequenceMatcher
from typing import Any

from linkkernel.declarations import DeclarationError, cell_source, parse_declaration

LOOKAHEAD = 30
SIMILAR = 0.5


def component_name(cell: Mapping[str, Any]) -> str | None:
    """The component a code cell declares; a malformed declaration names nothing."""
    if cell.get("cell_type") != "code":
        return None
    try:
        decl = parse_declaration(cell.get("metadata"))
    except DeclarationError:
        return None
    return decl.name if decl else None


def similarity(a: str, b: str, threshold: float = SIMILAR) -> float:
    """How alike two sources are (0..1), by characters for short text, by lines for long."""
    if a == b:
        return 1.0
    if len(a) + len(b) > 4000:
        a, b = a.splitlines(), b.splitlines()  # type: ignore[assignment]
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    if matcher.real_quick_ratio() < threshold or matcher.quick_ratio() < threshold:
        return 0.0
    return matcher.ratio()


def monotone_chain(pairs: Mapping[int, int]) -> list[tuple[int, int]]:
    """The longest chain of matches increasing on both sides (patience-style LIS, n log n).

    Matches off the chain are cells that moved.
    """
    items = sorted(pairs.items())
    tails: list[int] = []
    tail_at: list[int] = []
    back: list[int] = [-1] * len(items)
    for position, (_, j) in enumerate(items):
        k = bisect.bisect_left(tails, j)
        if k == len(tails):
            tails.append(j)
            tail_at.append(position)
        else:
            tails[k] = j
            tail_at[k] = position
        back[position] = tail_at[k - 1] if k else -1
    chain = []
    position = tail_at[-1] if tail_at else -1
    while position >= 0:
        chain.append(items[position])
        position = back[position]
    return chain[::-1]


def _match_by_key(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    key: Callable[[Mapping[str, Any]], Any],
    pairs: dict[int, int],
    used: set[int],
) -> None:
    """Pair cells still unmatched whose keys are equal, in order of appearance (None never pairs).

    Keys are computed only for unmatched cells, so with ids everywhere the later passes are free.
    """
    waiting: dict[Any, list[int]] = defaultdict(list)
    for j in range(len(b) - 1, -1, -1):
        if j not in used:
            value = key(b[j])
            if value is not None:
                waiting[value].append(j)
    if not waiting:
        return
    for i, cell in enumerate(a):
        if i in pairs:
            continue
        value = key(cell)
        if value is None or not waiting.get(value):
            continue
        j = waiting[value].pop()
        pairs[i] = j
        used.add(j)


def _match_gaps(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], pairs: dict[int, int], used: set[int],
    strict_names: bool, threshold: float,
) -> None:
    anchors = [(-1, -1), *monotone_chain(pairs), (len(a), len(b))]
    for (i0, j0), (i1, j1) in zip(anchors, anchors[1:]):
        free_a = [i for i in range(i0 + 1, i1) if i not in pairs]
        free_b = [j for j in range(j0 + 1, j1) if j not in used]
        start = 0
        for i in free_a:
            source = cell_source(a[i])
            kind = a[i].get("cell_type")
            name = component_name(a[i])
            best, best_score = None, threshold
            for position in range(start, min(start + LOOKAHEAD, len(free_b))):
                j = free_b[position]
                if b[j].get("cell_type") != kind or (strict_names and name != component_name(b[j])):
                    continue
                score = similarity(source, cell_source(b[j]), threshold)
                if score > best_score:
                    best, best_score = position, score
                    if score == 1.0:
                        break
            if best is not None:
                pairs[i] = free_b[best]
                used.add(free_b[best])
                start = best + 1


def _cell_id(cell: Mapping[str, Any]) -> str | None:
    return cell.get("id") or None


def _unique_key(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], str | None]
) -> Callable[[Mapping[str, Any]], str | None]:
    """`key`, except for values that several cells of one notebook share: those identify nothing.

    Frontends that keep a cell's id on copy and paste save one id on several cells; pairing
    the first of them with the first of the other side's pairs a pasted cell with the
    original. Such cells are matched by what they hold instead.
    """
    shared: set[str] = set()
    for cells in (a, b):
        seen: set[str] = set()
        for cell in cells:
            value = key(cell)
            if value is not None:
                (shared if value in seen else seen).add(value)
    if not shared:
        return key
    return lambda cell: None if key(cell) in shared else key(cell)


def _colab_id(cell: Mapping[str, Any]) -> str | None:
    metadata = cell.get("metadata")
    cell_id = metadata.get("id") if isinstance(metadata, Mapping) else None
    return cell_id if isinstance(cell_id, str) and cell_id else None


def _content_key(cell: Mapping[str, Any]) -> tuple[str, str] | None:
    source = cell_source(cell)
    return (cell.get("cell_type"), source) if source.strip() else None


def match_cells(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    similar: bool = True,
    strict_names: bool = False,
    threshold: float = SIMILAR,
) -> dict[int, int]:
    """Map each cell index of `a` to the index of the same cell in `b`; unmatched cells are absent.

    `similar=False` stops after exact matches; `strict_names` never pairs cells declaring
    different components (two new cells are not one renamed cell); `threshold` is the
    similarity (0..1) below which cells are different cells.
    """
    pairs: dict[int, int] = {}
    used: set[int] = set()
    _match_by_key(a, b, _unique_key(a, b, _cell_id), pairs, used)
    if len(pairs) == len(a) or len(used) == len(b):
        return pairs
    _match_by_key(a, b, _unique_key(a, b, _colab_id), pairs, used)
    _match_by_key(a, b, component_name, pairs, used)
    _match_by_key(a, b, _content_key, pairs, used)
    if similar:
        _match_gaps(a, b, pairs, used, strict_names, threshold)
    return pairs
