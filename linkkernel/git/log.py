"""`linkkernel log NB.ipynb [-n N]`: the notebook's history, with each commit's code and
pipeline changes.

One `git log --raw` gives every commit with the file's old and new blob ids, and one
`git cat-file --batch` process streams the blobs: no process per commit, no interpreter per
commit (nbdime's `git log -p` with its diff driver starts Python twice per commit).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from linkkernel.errors import LinkError

NULL_BLOB = "0" * 40
FIELD = "\x00"  # the one character a commit message cannot hold


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    date: str
    message: str
    old_blob: str | None  # the file before this commit (None: added, or no change shown)
    new_blob: str | None  # the file after (None: deleted)
    old_path: str
    new_path: str


def commits(path: Path, limit: int | None) -> list[Commit]:
    """Commits that changed `path`, newest first, following renames, merges against their first parent."""
    fmt = "%x00%H%x00%an <%ae>%x00%ad%x00%B%x00"  # FIELD as git's escape (argv holds no NUL); then --raw lines
    # --literal-pathspecs: 'nb[1].ipynb' is that file, not a glob that also matches nb1.ipynb;
    # core.quotePath=false: --raw names 'Übung.ipynb' as it is, not as "\303\234bung.ipynb";
    # --root: the commit that created the notebook is listed even with log.showRoot=false
    args = ["git", "--literal-pathspecs", "-c", "core.quotePath=false", "log", "--root", "--follow", "--raw", "--no-abbrev", "--diff-merges=first-parent", f"--format={fmt}"]
    if limit is not None:
        args.append(f"-n{limit}")
    # surrogateescape: a file name that is not UTF-8 comes back as Python names the file
    done = subprocess.run([*args, "--", path.name], cwd=path.parent, capture_output=True, text=True,
                          errors="surrogateescape")
    if done.returncode:
        raise LinkError(f"git log failed for {path}: {done.stderr.strip()}")
    found = []
    parts = done.stdout.split(FIELD)[1:]
    for start in range(0, len(parts), 5):
        sha, author, date, message, raw = parts[start:start + 5]
        old = new = None
        old_path = new_path = path.name
        for line in raw.splitlines():
            if not line.startswith(":"):
                continue
            meta, _, paths = line.partition("\t")
            fields = meta.split()
            old, new = fields[2], fields[3]
            names = paths.split("\t")
            old_path, new_path = names[0], names[-1]
        found.append(Commit(sha, author, date, message.strip(), None if old in (None, NULL_BLOB) else old,
                            None if new in (None, NULL_BLOB) else new, old_path, new_path))
    return found


class BlobReader:
    """One `git cat-file --batch` process answering every blob request of a log."""

    def __init__(self, cwd: Path) -> None:
        self._process = subprocess.Popen(["git", "cat-file", "--batch"], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def read(self, sha: str) -> bytes:
        assert self._process.stdin and self._process.stdout
        self._process.stdin.write(sha.encode() + b"\n")
        self._process.stdin.flush()
        header = self._process.stdout.readline().split()
        if len(header) < 3 or header[1] != b"blob":
            raise LinkError(f"git has no blob {sha}")
        data = self._process.stdout.read(int(header[2]))
        self._process.stdout.read(1)
        return data

    def close(self) -> None:
        if self._process.stdin:
            self._process.stdin.close()
        self._process.wait()


def history(path: Path, limit: int | None, outputs: bool = False, color: bool = False) -> Iterator[str]:
    """The rendered log, one commit at a time, so a pager shows the first commits at once."""
    from linkkernel.git import nbio
    from linkkernel.git.diff import diff_notebooks, render_text

    found = commits(path, limit)  # first: outside a repository git says so once, here
    reader = BlobReader(path.parent)
    paint = (lambda text: f"\x1b[33m{text}\x1b[0m") if color else (lambda text: text)
    try:
        for commit in found:
            message = "\n".join("    " + line for line in commit.message.splitlines())
            head = f"{paint('commit ' + commit.sha)}\nAuthor: {commit.author}\nDate:   {commit.date}\n\n{message}\n"
            if commit.old_blob is None and commit.new_blob is None:
                yield head + "\n"
                continue
            try:
                old = nbio.loads(reader.read(commit.old_blob), f"{commit.old_path} at {commit.sha[:8]}^") if commit.old_blob else nbio.empty_notebook()
                new = nbio.loads(reader.read(commit.new_blob), f"{commit.new_path} at {commit.sha[:8]}") if commit.new_blob else nbio.empty_notebook()
            except LinkError as exc:  # e.g. a commit of a text-merged, invalid notebook: the rest of history still shows
                yield head + f"\n(not compared: {exc})\n\n"
                continue
            body = render_text(diff_notebooks(old, new, outputs), color, f"a/{commit.old_path}", f"b/{commit.new_path}")
            yield head + "\n" + (body or "(no code or pipeline change)\n") + "\n"
    finally:
        reader.close()


def configure_log(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", metavar="NB.ipynb")
    parser.add_argument("-n", "--max-count", type=int, dest="limit", metavar="N", help="show only the last N commits")
    parser.add_argument("--outputs", action="store_true", help="also show output and execution count changes")
    from linkkernel.git.diff import add_colour_options

    add_colour_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linkkernel.git.install import warn_if_unconfigured

    path = Path(args.notebook).resolve()
    if path.is_dir():  # git would log the folder's every file, or the folder above it for '.'
        raise LinkError(f"{args.notebook} is a directory; give the notebook whose history you want")
    if not path.parent.is_dir():
        raise LinkError(f"no such directory: {path.parent}")
    if args.limit is not None and args.limit < 1:
        raise LinkError(f"-n needs a positive number, not {args.limit}")
    warn_if_unconfigured(path)
    from linkkernel.git.diff import colour_wanted

    color = colour_wanted(args.color)
    shown = False
    try:
        for chunk in history(path, args.limit, args.outputs, color):
            sys.stdout.write(chunk)
            shown = True
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    if not shown:
        raise LinkError(f"no commits touch {args.notebook}")
    return 0
