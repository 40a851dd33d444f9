"""`linkkernel merge`: the merge driver, as a command and as git runs it (`%O %A %B %L %P`).

Exit status is what git needs: 0 for a clean merge, 1 when conflicts are marked in the
result (git then reports the file as conflicted and keeps all three versions in the index).
"""

from __future__ import annotations

import argparse
import sys

from linkkernel.errors import LinkError


def configure_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="BASE OURS THEIRS, or git's %%O %%A %%B %%L %%P (result written into %%A)")
    parser.add_argument("-o", "--output", help="where to write the merged notebook (BASE OURS THEIRS form)")
    parser.add_argument("--marker-size", type=int, default=7, help="length of conflict markers (git's %%L)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linkkernel.git import nbio
    from linkkernel.git.merge import merge_notebooks

    marker_size = args.marker_size
    if len(args.files) == 5:
        base, ours, theirs, size, shown = args.files
        output = args.output or ours
        try:
            marker_size = int(size)
        except ValueError:
            raise LinkError(f"marker size {size!r} is not a number (git passes %L)") from None
    elif len(args.files) == 3:
        base, ours, theirs = args.files
        shown = ours
        if args.output is None:
            raise LinkError("say where the merged notebook goes with -o OUT")
        output = args.output
        from linkkernel.git.install import warn_if_unconfigured

        warn_if_unconfigured(ours)
    else:
        raise LinkError(f"expected BASE OURS THEIRS (or git's %O %A %B %L %P), got {len(args.files)} files")
    if marker_size < 1:
        raise LinkError(f"marker size must be positive, not {marker_size}")
    # git's %O %A %B are temp files (.merge_file_XXXXXX): name the notebook and the version instead
    names = [f"{shown} ({side})" if len(args.files) == 5 else None for side in ("base", "ours", "theirs")]
    (base_nb, _), (ours_nb, layout), (theirs_nb, _) = (
        nbio.read_with_layout(path, where) for path, where in zip((base, ours, theirs), names)
    )
    result = merge_notebooks(base_nb, ours_nb, theirs_nb, marker_size)
    try:
        nbio.write(result.notebook, output, layout)  # as ours was saved: the merge commit changes only what merged
    except LinkError as exc:
        if output != ours or len(args.files) != 5:
            raise
        # %A is git's temporary file (.merge_file_XXXXXX): the user knows the notebook
        reason = getattr(exc.__cause__, "strerror", None) or str(exc)
        raise LinkError(f"{shown}: the merged notebook cannot be written: {reason}") from exc
    for conflict in result.conflicts:
        where = "the notebook metadata" if conflict.cell is None else f"cell {conflict.cell + 1}"
        print(f"linkkernel merge: {shown}: conflict in {where}: {conflict.message}", file=sys.stderr)
    return 1 if result.conflicts else 0
