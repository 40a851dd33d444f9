"""Line-level three-way merge of one cell's source (diff3), with git-style conflict markers."""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Iterator

Region = tuple[str, list[str], list[str]]  # ("same", lines, []) or ("conflict", ours, theirs)


def _lines(text: str) -> list[str]:
    return text.splitlines(True)


def _matching_blocks(a: list[str], b: list[str]) -> list[tuple[int, int, int]]:
    """SequenceMatcher's matching blocks, with the common head and tail matched first.

    Without junk heuristics the matcher is quadratic in lines that repeat (a 100000-line
    cell of a few distinct lines took most of an hour); an edit is nearly always local, so
    only the part between the unchanged head and tail goes through it.
    """
    head = 0
    limit = min(len(a), len(b))
    while head < limit and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < limit - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    middle = SequenceMatcher(None, a[head:len(a) - tail], b[head:len(b) - tail], autojunk=False).get_matching_blocks()
    blocks = [(0, 0, head)] if head else []
    blocks += [(i + head, j + head, n) for i, j, n in middle if n]
    if tail:
        blocks.append((len(a) - tail, len(b) - tail, tail))
    return [*blocks, (len(a), len(b), 0)]


def _sync_regions(base: list[str], ours: list[str], theirs: list[str]) -> Iterator[tuple[int, int, int, int, int, int]]:
    """Stretches of base that both sides kept unchanged, with where they sit on each side."""
    ours_blocks = _matching_blocks(base, ours)
    theirs_blocks = _matching_blocks(base, theirs)
    io = it = 0
    while io < len(ours_blocks) and it < len(theirs_blocks):
        obase, omatch, olen = ours_blocks[io]
        tbase, tmatch, tlen = theirs_blocks[it]
        start, end = max(obase, tbase), min(obase + olen, tbase + tlen)
        if start < end:
            yield (start, end, omatch + start - obase, omatch + end - obase, tmatch + start - tbase, tmatch + end - tbase)
        if obase + olen < tbase + tlen:
            io += 1
        else:
            it += 1
    yield (len(base), len(base), len(ours), len(ours), len(theirs), len(theirs))


def merge_regions(base: str | None, ours: str, theirs: str) -> list[Region]:
    """diff3 regions; without a base (both sides added the cell) lines common to both are kept."""
    o, t = _lines(ours), _lines(theirs)
    if base is None:
        regions: list[Region] = []
        for tag, i1, i2, j1, j2 in SequenceMatcher(None, o, t, autojunk=False).get_opcodes():
            regions.append(("same", o[i1:i2], []) if tag == "equal" else ("conflict", o[i1:i2], t[j1:j2]))
        return regions
    b = _lines(base)
    regions = []
    ib = io = it = 0
    for bstart, bend, ostart, oend, tstart, tend in _sync_regions(b, o, t):
        ours_part, theirs_part, base_part = o[io:ostart], t[it:tstart], b[ib:bstart]
        if ours_part or theirs_part:
            if ours_part == theirs_part or theirs_part == base_part:
                regions.append(("same", ours_part, []))
            elif ours_part == base_part:
                regions.append(("same", theirs_part, []))
            else:
                regions.append(("conflict", ours_part, theirs_part))
        if bend > bstart:
            regions.append(("same", b[bstart:bend], []))
        ib, io, it = bend, oend, tend
    return regions


def _terminated(lines: list[str]) -> list[str]:
    if lines and not lines[-1].endswith("\n"):
        return [*lines[:-1], lines[-1] + "\n"]
    return lines


def conflict_block(ours: list[str], theirs: list[str], marker_size: int) -> list[str]:
    """`<<<<<<< ours` / `=======` / `>>>>>>> theirs` around both sides, as git writes them."""
    return [
        "<" * marker_size + " ours\n",
        *_terminated(ours),
        "=" * marker_size + "\n",
        *_terminated(theirs),
        ">" * marker_size + " theirs\n",
    ]


def _final_newline(base: str | None, ours: str, theirs: str) -> bool:
    """Whether the merged text ends with a newline: a change to that on one side wins."""
    o, t = ours.endswith("\n"), theirs.endswith("\n")
    if o == t or base is None:
        return o
    return t if o == base.endswith("\n") else o


def _with_final_newline(text: str) -> str:
    return text + "\n" if text and not text.endswith("\n") else text


def merge_text(base: str | None, ours: str, theirs: str, marker_size: int = 7) -> tuple[str, int]:
    """The merged source and how many conflict blocks it holds.

    Jupyter saves a cell's last line without a newline, so appending a line would change the
    old last line too and conflict with an edit just above it: the lines are merged as if all
    three ended with a newline, and the final newline is merged on its own.
    """
    out: list[str] = []
    conflicts = 0
    final_newline = _final_newline(base, ours, theirs)
    base = None if base is None else _with_final_newline(base)
    regions = merge_regions(base, _with_final_newline(ours), _with_final_newline(theirs))
    for kind, first, second in regions:
        if kind == "same":
            out.extend(first)
            continue
        conflicts += 1
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.extend(conflict_block(first, second, marker_size))
    text = "".join(out)
    if not final_newline and text.endswith("\n"):
        text = text[:-1]
    return text, conflicts
