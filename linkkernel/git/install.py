"""`linkkernel git install|uninstall|textconv`: wire the drivers into git, the way nbdime's
`config-git` does, and notice when they are missing.

Three pieces, because git uses each in a different place: the merge driver (`git merge`,
`rebase`, `cherry-pick`), the diff driver (`git diff`), and a textconv (`git log -p` and
`git show` never run a diff driver without `--ext-diff`, but they do run textconv).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import linkkernel
from linkkernel.errors import LinkError

DRIVER = "linkkernel"
ATTRIBUTES_LINE = f"*.ipynb merge={DRIVER} diff={DRIVER}"


def _command(*args: str) -> str:
    """How git should start us: this interpreter, and this checkout when it is not installed."""
    command = shlex.join([sys.executable, "-m", "linkkernel.cli", *args])
    root = Path(linkkernel.__file__).resolve().parent.parent
    if "site-packages" not in root.parts and "dist-packages" not in root.parts:
        command = f"PYTHONPATH={shlex.quote(str(root))} {command}"
    return command


def git_settings() -> dict[str, str]:
    """The git config entries that make up the drivers (the placeholders are git's)."""
    return {
        f"merge.{DRIVER}.name": "linkkernel: merge notebooks cell by cell and the pipeline as sets",
        f"merge.{DRIVER}.driver": _command("merge", "%O", "%A", "%B", "%L", "%P"),
        f"diff.{DRIVER}.command": _command("diff"),
        f"diff.{DRIVER}.textconv": _command("git", "textconv"),
    }


def _git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise LinkError("git is not installed (no 'git' on PATH)") from None
    if check and done.returncode:
        raise LinkError(f"git {' '.join(args[:3])} failed: {done.stderr.strip() or done.returncode}")
    return done


def _attributes_file(global_: bool) -> Path:
    if not global_:
        done = _git("rev-parse", "--show-toplevel", check=False)
        if done.returncode:
            raise LinkError("not inside a git repository; run it in one, or use --global")
        return Path(done.stdout.strip()) / ".gitattributes"
    configured = _git("config", "--global", "--get", "core.attributesFile", check=False).stdout.strip()
    if configured:
        return Path(configured).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "git" / "attributes"


def install(global_: bool = False) -> Path:
    """Write the git config entries and the attributes line; returns the attributes file."""
    attributes = _attributes_file(global_)
    scope = ["--global"] if global_ else []
    lines, newline = _attribute_lines(attributes)
    for key, value in git_settings().items():
        _git("config", *scope, key, value)
    placed = _placed(lines)
    if placed != lines:
        _write_attributes(attributes, placed, newline)
    return attributes


def _sets_driver(line: str) -> bool:
    fields = line.split()
    return bool(fields) and fields[0] == "*.ipynb" and any(
        field.lstrip("-!").partition("=")[0] in ("merge", "diff", "binary") for field in fields[1:]
    )


def _placed(lines: list[str]) -> list[str]:
    """The attribute lines with ours after every other '*.ipynb' driver line.

    git takes the last line that matches, so nbdime's `config-git` lines written after ours
    would silently win; lines for narrower patterns (`docs/*.ipynb -diff`) keep their place.
    """
    others = [n for n, line in enumerate(lines) if _sets_driver(line) and line.strip() != ATTRIBUTES_LINE]
    ours = [n for n, line in enumerate(lines) if line.strip() == ATTRIBUTES_LINE]
    if ours and (not others or ours[-1] > others[-1]):
        return lines
    if not others:
        return [*lines, ATTRIBUTES_LINE]
    before = [line for line in lines[:others[-1] + 1] if line.strip() != ATTRIBUTES_LINE]
    return [*before, ATTRIBUTES_LINE, *lines[others[-1] + 1:]]


def uninstall(global_: bool = False) -> Path:
    attributes = _attributes_file(global_)
    scope = ["--global"] if global_ else []
    lines, newline = _attribute_lines(attributes)
    for section in (f"merge.{DRIVER}", f"diff.{DRIVER}"):
        _git("config", *scope, "--remove-section", section, check=False)
    kept = [line for line in lines if line.strip() != ATTRIBUTES_LINE]
    if kept != lines:
        _write_attributes(attributes, kept, newline)
    return attributes


def _attribute_lines(attributes: Path) -> tuple[list[str], str]:
    """The attributes file's lines and line ending, read before git config changes, so a file
    we cannot read or write leaves git config as it was.

    git reads the file as bytes: a latin-1 comment or CRLF endings are valid there, and are
    kept byte for byte (surrogateescape) rather than crashing or rewriting every line.
    """
    try:
        data = attributes.read_bytes() if attributes.exists() else b""
    except OSError as exc:
        raise LinkError(f"{attributes}: cannot read: {exc.strerror}") from None
    text = data.decode("utf-8", "surrogateescape")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines[-1] == "":
        lines.pop()
    return lines, "\r\n" if "\r\n" in text else "\n"


def _write_attributes(attributes: Path, lines: list[str], newline: str) -> None:
    try:
        attributes.parent.mkdir(parents=True, exist_ok=True)
        attributes.write_bytes("".join(line + newline for line in lines).encode("utf-8", "surrogateescape"))
    except OSError as exc:
        raise LinkError(f"{attributes}: cannot write: {exc.strerror}") from None


def overridden_drivers(root: Path, global_: bool = False) -> list[str]:
    """One line per driver that git still takes from elsewhere for notebooks in this
    repository after install.

    `.git/info/attributes`, where `nbstripout --install` writes `*.ipynb diff=ipynb`, is read
    after `.gitattributes` and wins; after a global install, so does the repository's own
    `.gitattributes` (a team's committed nbdime lines): install would report success while
    git kept using the other tool. Narrower patterns (`docs/*.ipynb -diff`) are the user's
    choice and are not looked at: the probe is a notebook at the top of the repository.
    """
    done = _git("check-attr", "merge", "diff", "--", "linkkernel-probe.ipynb", cwd=root, check=False)
    info = Path(root, _git("rev-parse", "--git-path", "info/attributes", cwd=root).stdout.strip())
    candidates = [(info, ".gitattributes")] + ([(root / ".gitattributes", "your global one")] if global_ else [])
    where = "a line git reads after ours sets it"
    for path, after in candidates:
        lines = _attribute_lines(path)[0] if path.is_file() else []
        if any(_sets_driver(line) and line.strip() != ATTRIBUTES_LINE for line in lines):
            where = f"{path} sets it, and git reads that file after {after}"
            break
    setting = {"set": "{0}", "unset": "-{0}", "unspecified": "no {0} driver"}
    warnings = []
    for line in done.stdout.splitlines():
        attribute, value = (field.strip() for field in line.split(":")[-2:])
        if value != DRIVER:
            shown = setting.get(value, "{0}=" + value).format(attribute)
            warnings.append(f"git still uses {shown} for notebooks: {where}; remove that line there to use linkkernel's")
    return warnings


def missing_driver_warning(near: str | Path = ".") -> str | None:
    """One line when `.gitattributes` names our driver but git config lacks it.

    git then silently text-merges notebooks into invalid JSON. Cheap: one file read, and one
    `git config` call only when the attributes mention us.
    """
    start = Path(near).resolve()
    start = start if start.is_dir() else start.parent
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            break
    else:
        return None
    try:
        text = (folder / ".gitattributes").read_text(errors="replace")  # git allows any bytes there
    except OSError:
        return None
    if f"merge={DRIVER}" not in text and f"diff={DRIVER}" not in text:
        return None
    done = _git("config", "--get-regexp", rf"^(merge|diff)\.{DRIVER}\.", cwd=folder, check=False)
    keys = {line.split(" ", 1)[0].lower() for line in done.stdout.splitlines()}
    needed = {key.lower() for key in git_settings() if not key.endswith(".name")}
    if needed <= keys:
        return None
    return (
        f"linkkernel: {folder / '.gitattributes'} names the '{DRIVER}' git driver but git config lacks it, "
        "so git merges notebooks as text (invalid JSON); run 'linkkernel git install'"
    )


def warn_if_unconfigured(near: str | Path = ".") -> None:
    warning = missing_driver_warning(near)
    if warning:
        print(warning, file=sys.stderr)


def textconv(path: str) -> str:
    """A notebook as text for git's own line diff: one header per cell, then its source."""
    from linkkernel.git.diff import notebook_as_text
    from linkkernel.git.nbio import read

    try:
        return notebook_as_text(read(path))
    except LinkError:
        # Not a notebook (e.g. a file git text-merged into invalid JSON): show it as it is,
        # since a failing textconv makes git refuse to show the commit at all.
        try:
            return Path(path).read_text(errors="replace")
        except OSError as exc:
            raise LinkError(f"cannot read {path}: {exc.strerror}") from None


def configure_git(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_ in (
        ("install", "register the merge driver, diff driver and textconv, and add the .gitattributes line"),
        ("uninstall", "remove them again"),
    ):
        command = sub.add_parser(action, help=help_)
        command.add_argument("--global", dest="global_", action="store_true",
                             help="your global git config and attributes file instead of this repository's")
    command = sub.add_parser("textconv", help="print a notebook as text (git runs this for log -p / show)")
    command.add_argument("file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "textconv":
        sys.stdout.write(textconv(args.file))
        return 0
    if args.action == "install":
        attributes = install(args.global_)
        where = "your global git config" if args.global_ else "this repository's git config"
        print(f"linkkernel git drivers registered in {where}; '{ATTRIBUTES_LINE}' is in {attributes}")
        if not args.global_:
            print(f"Commit {attributes.name} so collaborators get it; each of them runs 'linkkernel git install' once.")
        root = _git("rev-parse", "--show-toplevel", check=False).stdout.strip()
        for warning in overridden_drivers(Path(root), args.global_) if root else []:
            print(f"linkkernel git install: {warning}", file=sys.stderr)
        return 0
    attributes = uninstall(args.global_)
    print(f"linkkernel git drivers removed; '{ATTRIBUTES_LINE}' removed from {attributes}")
    return 0
