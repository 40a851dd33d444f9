"""What the `linkkernel` subcommands and their `%link` twins share in this package.

One argparse configuration serves both, so the flags never drift apart; inside the kernel a
usage error must be a one-line LinkError, not argparse's `SystemExit`, which would kill the cell.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, NoReturn, TextIO

from linkkernel.errors import LinkError
from linkkernel.partfiles import remove_abandoned, temp_name, temp_pattern


class _HelpShown(Exception):
    """`--help` printed the usage; the magic stops there without an error."""


class MagicArgumentParser(argparse.ArgumentParser):
    """argparse for `%link SUB`: errors raise LinkError, `--help` prints and returns."""

    def error(self, message: str) -> NoReturn:
        raise LinkError(f"{self.prog}: {message} (see '{self.prog} --help')")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise LinkError(f"{self.prog}: {(message or 'failed').strip()}")
        raise _HelpShown


def parse_magic_args(
    prog: str, configure: Callable[[argparse.ArgumentParser], None], argv: list[str]
) -> argparse.Namespace | None:
    """Parse a `%link` line with the CLI's own configuration; None after `--help`."""
    parser = MagicArgumentParser(prog=prog)
    configure(parser)
    try:
        return parser.parse_args(argv)
    except _HelpShown:
        return None


def output_path(text: str) -> str:
    """The argparse type of `-o`: `-` is standard output, as for most command-line tools
    (written in place, the report line going to stderr: see write_atomically, report_stream)."""
    return "/dev/stdout" if text == "-" else text


def check_output(path: str | Path, inputs: tuple[str | Path | None, ...] = ()) -> None:
    """Refuse an output path that cannot be written, in one line, before any work is done.

    `linkkernel run` calls it before running a pipeline, whose result would otherwise be
    lost to a mistyped folder at the very end; `write_atomically` calls it again.
    `path` may not be one of the command's `inputs`: `-o` pointing at the notebook being
    read would replace the user's work with the command's output.
    """
    shown = os.fspath(path) or "''"
    # Path("out/") is Path("out"): a folder the user named, missing, would become a file
    named_a_folder = shown.endswith(("/", os.sep))
    path = Path(path)
    if not path.name or path.is_dir() or named_a_folder:
        what = "no file name" if not path.name else "it is a directory" if path.is_dir() else "it names a folder"
        raise LinkError(f"{shown}: cannot write: {what}; give a file name")
    for source in filter(None, inputs):
        if path.exists() and os.path.exists(source) and os.path.samefile(path, source):
            raise LinkError(f"{shown}: not written: it is the input {source}, which it would replace; choose another output")
    folder = Path(os.path.realpath(path)).parent
    if not folder.is_dir():
        raise LinkError(f"{path}: cannot write: {os.strerror(errno.ENOTDIR if folder.exists() else errno.ENOENT)}")
    if path.exists() and not path.is_file():
        return  # a FIFO or a device, written in place (see write_atomically)
    # Only creating a file shows a folder that refuses one (read-only, sysfs, root-squashed
    # NFS): permission bits do not, and os.access answers yes to root.
    probe = temp_name(str(folder / f".{path.name}"), "tmp")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise LinkError(f"{path}: cannot write: {exc.strerror}") from exc
    os.unlink(probe)


def report_stream(output: str | Path) -> TextIO:
    """Where a command says what it wrote: stderr when `output` is this process's stdout
    (`-o /dev/stdout`), so that `linkkernel export NB -o /dev/stdout | jq` reads the document
    alone. Ask before writing: a file replaced by the write is no longer the one stdout holds."""
    if is_stdout(output):
        return sys.stderr
    try:
        written, stdout = os.stat(output), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no such file yet; stdout closed or not a file
        return sys.stdout
    return sys.stderr if (written.st_dev, written.st_ino) == (stdout.st_dev, stdout.st_ino) else sys.stdout


def write_atomically(
    path: str | Path, data: bytes, inputs: tuple[str | Path | None, ...] = (), mode: int | None = None
) -> None:
    """Write `data` to `path` as `atomic_output` does; in the kernel, text written to
    standard output goes through `sys.stdout`, which is the cell (fd 1 there is ipykernel's
    capture, echoed in the kernel's terminal)."""
    if is_stdout(path) and not hasattr(sys.stdout, "buffer"):
        check_output(path, inputs)
        sys.stdout.flush()
        sys.stdout.write(data.decode("utf-8"))
        sys.stdout.flush()
        return
    with atomic_output(path, inputs, mode) as out:
        out.write(data)


@contextmanager
def atomic_output(
    path: str | Path, inputs: tuple[str | Path | None, ...] = (), mode: int | None = None
) -> Iterator[OutputFile]:
    """A binary file for `path`, written through a temporary file in the same folder and a
    rename when the block ends without an error.

    A failure half-way (disk full, interrupt, an error making the data) leaves the old file,
    or none, never a torn one, and the data is never all in memory at once. The path is
    checked by `check_output` first. With `mode` the file has exactly that mode from its
    creation on (a file only its owner may read); without it the umask decides, and a file
    rewritten keeps its mode. Standard output, devices and FIFOs are written in place.
    """
    check_output(path, inputs)
    path = Path(path)
    if is_stdout(path):
        if not hasattr(sys.stdout, "buffer"):
            raise LinkError(f"{path}: not written: standard output here is this cell, which shows text, "
                            "and this file is binary; give a file name")
        sys.stdout.flush()
        out = OutputFile(sys.stdout.buffer, path)
        yield out
        out.flush()
        return
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: a rename would replace them
        try:
            device = open(path, "wb")
        except OSError as exc:
            raise LinkError(f"{path}: cannot write: {exc.strerror}") from exc
        yield from _filled(device, path)
        return
    if path.is_symlink():  # a rename would replace the link; the user meant the file it points to
        path = Path(os.path.realpath(path))
    # Named after this process, so the file a writer killed midway left is removed here, next time.
    remove_abandoned(str(path.parent), [temp_pattern(f".{path.name}", "tmp")])
    tmp = Path(temp_name(str(path.with_name(f".{path.name}")), "tmp"))
    try:
        # os.open with 0o666 lets the umask decide permissions, as a plain open() would.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    except OSError as exc:
        raise LinkError(f"{path}: cannot write: {exc.strerror}") from exc
    try:
        yield from _filled(os.fdopen(fd, "wb"), path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _put_in_place(tmp, path, mode)


def _filled(file: BinaryIO, path: Path) -> Iterator[OutputFile]:
    """Lend `file` to the block and close it: an error closing it is the write's error; after
    an error in the block, what is still buffered does not matter and closing says nothing."""
    out = OutputFile(file, path)
    try:
        yield out
        out.close()
    except BaseException:
        with suppress(OSError):
            file.close()
        raise


def _put_in_place(tmp: Path, path: Path, mode: int | None) -> None:
    """Give the written temporary file its mode and rename it over `path`."""
    try:
        if mode is not None:  # whatever the umask took away
            os.chmod(tmp, mode)
        elif path.exists():  # a notebook kept private (0600) stays private when rewritten
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LinkError(f"{path}: cannot write: {exc.strerror}") from exc


class OutputFile:
    """The file a command writes into: a write that fails says which file, in one line (a
    disk filling up half-way through an archive), while errors of the code making the data
    stay its own."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        self._file, self._path = file, path

    def write(self, data: bytes | memoryview) -> int:
        with self._failure_named():
            return self._file.write(data)

    def flush(self) -> None:
        with self._failure_named():
            self._file.flush()

    def close(self) -> None:
        with self._failure_named():
            self._file.close()

    @contextmanager
    def _failure_named(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise LinkError(f"{self._path}: cannot write: {exc.strerror}") from exc


def is_stdout(path: str | Path) -> bool:
    """Whether `path` names this process's standard output (`-o -` becomes /dev/stdout)."""
    return os.fspath(path) in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")
