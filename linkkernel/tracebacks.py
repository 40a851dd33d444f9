"""Tracebacks as stock Jupyter shows them, minus the kernel's own machinery.

`__tracebackhide__` cannot do this job: IPython never hides the last frame and only its
Context/Verbose modes read the flag. So the traceback chain itself is rebuilt without the
frames of linkkernel, ipykernel, IPython, zmq and tornado, and everything downstream (every
`%xmode`, `%tb`, `%debug`, `%pdb`, the `error` message) sees only the user's code and the
libraries it called.
"""

from __future__ import annotations

import linecache
import logging
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType

OWN_PACKAGE = "linkkernel"

# Packages whose frames are never the user's business, wherever they appear: the kernel
# runs user code through them, and a user who calls them (a magic, `get_ipython()`) called
# a kernel feature, not a library. traitlets and comm are not here: users call them
# (through ipywidgets) as libraries, and stock Jupyter shows their frames.
MACHINERY = frozenset({OWN_PACKAGE, "ipykernel", "IPython", "zmq", "tornado"})
# Packages that drive the kernel from above the user's code, but are ordinary libraries once
# the user calls them (`await asyncio.wait_for(...)` keeps asyncio's frames, as in Jupyter).
OUTER_MACHINERY = frozenset({"asyncio", "concurrent", "threading", "runpy", "contextlib"})

_USER_ERROR_FLAG = "__linkkernel_user_error__"


def package_of(frame: FrameType) -> str:
    """Top-level package of the module a frame runs in ("" when unknown)."""
    name = frame.f_globals.get("__name__")
    return name.partition(".")[0] if isinstance(name, str) else ""


def walk(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def trimmed_traceback(tb: TracebackType | None, outermost: bool = True) -> TracebackType | None:
    """A new traceback chain holding only the frames a user of stock Jupyter would see.

    `outermost` says the traceback starts where the kernel caught the error, so leading
    event-loop frames are the kernel's; a chained exception's traceback starts where a
    library the user called caught it (asyncio.wait_for, say), and those frames stay.
    """
    kept: list[TracebackType] = []
    for entry in walk(tb):
        package = package_of(entry.tb_frame)
        if package in MACHINERY or (outermost and not kept and package in OUTER_MACHINERY):
            continue
        kept.append(entry)
    rebuilt = None
    for entry in reversed(kept):
        rebuilt = TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return rebuilt


def trim(exc: BaseException) -> BaseException:
    """Trim `exc`'s traceback, and those of its causes, contexts and sub-exceptions, in place.

    In place because IPython's formatters, pdb and `%tb` all read `__traceback__` of every
    exception in the chain. A chained exception raised entirely inside the machinery (say,
    a KeyError the kernel handled while it started the user's code) is cut from the chain:
    it would show as a header with no frame under it. Not so a cause IPython or ipykernel
    names on purpose (`%run` raises `Exception(msg) from OSError(msg)`): stock Jupyter shows
    its header and line, so they stay, without its frames. The chain is walked without
    recursion: a retry loop can chain more exceptions than Python's recursion limit.
    """
    seen: set[int] = set()
    pending = [(exc, True)]
    while pending:
        current, outermost = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = trimmed_traceback(current.__traceback__, outermost)
        for attribute in ("__cause__", "__context__"):
            linked = getattr(current, attribute)
            if linked is None:
                continue
            if _all_machinery(linked.__traceback__) and (attribute == "__context__" or _raised_in_own_package(linked.__traceback__)):
                setattr(current, attribute, None)
                continue
            pending.append((linked, False))
        if isinstance(current, BaseExceptionGroup):
            pending.extend((sub, False) for sub in current.exceptions)
    return exc


def _all_machinery(tb: TracebackType | None) -> bool:
    return tb is not None and trimmed_traceback(tb, outermost=False) is None


def _raised_in_own_package(tb: TracebackType | None) -> bool:
    return any(package_of(entry.tb_frame) == OWN_PACKAGE for entry in walk(tb))


# Where installed code lives. Not sys.prefix: in a container that can be "/" or "/usr".
_LIBRARY_ROOTS = tuple(
    sorted({path for key in ("stdlib", "platstdlib", "purelib", "platlib") if (path := sysconfig.get_paths().get(key))})
)


def is_user_file(filename: str) -> bool:
    """Whether code from `filename` was written by the user rather than installed.

    Installed means the standard library, site-packages or frozen modules; everything else
    (cell files, `<string>`, the user's own modules next to the notebook) is the user's.
    """
    if filename.startswith("<frozen "):
        return False
    return not filename.startswith(_LIBRARY_ROOTS)


def blame_user(exc: BaseException) -> BaseException:
    """Mark an exception linkkernel raises about the user's code (a NameError with a hint,
    say) so it is shown as the user's error, trimmed to the user's frames, not as our bug."""
    setattr(exc, _USER_ERROR_FLAG, True)
    return exc


def is_internal(exc: BaseException, is_user_code: Callable[[str], bool] = is_user_file) -> bool:
    """Whether `exc` is a bug in linkkernel rather than an error in the user's code.

    It is ours when, walking from the outermost frame in, the last frame that is either the
    user's (`is_user_code` of its file) or linkkernel's is linkkernel's: the error started in
    our code, perhaps in a library our code called, and no user code ran below it.
    Interrupts, exits, errors meant for the user (`LinkError` renders itself) and those
    marked with `blame_user` are never ours.
    """
    if not isinstance(exc, Exception) or hasattr(exc, "_render_traceback_"):
        return False
    if getattr(exc, _USER_ERROR_FLAG, False):
        return False
    last_owner = None
    for entry in walk(exc.__traceback__):
        if package_of(entry.tb_frame) == OWN_PACKAGE:
            last_owner = OWN_PACKAGE
        elif is_user_code(entry.tb_frame.f_code.co_filename):
            last_owner = "user"
    return last_owner == OWN_PACKAGE


def frames_of(exc: BaseException) -> Iterator[FrameType]:
    """Every frame of `exc`'s traceback, its causes, contexts and group members."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield from (entry.tb_frame for entry in walk(current.__traceback__))
        pending.extend(linked for linked in (current.__cause__, current.__context__) if linked is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


def chained(exc: BaseException) -> BaseException | None:
    """The exception printed above `exc` ("direct cause" or "during handling"), if any."""
    return exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def contains_group(exc: BaseException | None) -> bool:
    """Whether an exception group is anywhere in the chain IPython would print."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BaseExceptionGroup):
            return True
        seen.add(id(exc))
        exc = chained(exc)
    return False


def group_tree(parts: list[str]) -> str:
    """Box the formatted members of a group the way Python prints groups.

    IPython 9 has no formatter for exception groups (it prints a raw traceback to stderr and
    sends no `error` message), so each member is formatted by IPython and boxed here.
    """
    lines = []
    for number, part in enumerate(parts, 1):
        lines.append(("+-+" if number == 1 else "  +") + f"---------------- {number} ----------------")
        lines.extend("  | " + line for line in part.rstrip("\n").split("\n"))
    lines.append("  +------------------------------------")
    return "\n".join(lines) + "\n"


def group_traceback(formatter, value: BaseException) -> list[str]:
    """IPython's own layout for the group and, boxed under it, for each member; IPython
    itself prints a group to stderr, past `_showtraceback` (kernel and worker shells alike)."""
    if value.__traceback__ is None and value.__cause__ is None and value.__context__ is None:
        # A member that was never raised, as most are: just its line, as Python prints it.
        stb = formatter.get_exception_only(type(value), value)
    else:
        stb = formatter.structured_traceback(type(value), value, value.__traceback__, tb_offset=0)
    if not isinstance(value, BaseExceptionGroup):
        return stb
    parts = [formatter.stb2text(group_traceback(formatter, sub)) for sub in value.exceptions]
    return [formatter.stb2text(stb).rstrip("\n") + "\n" + group_tree(parts)]


def formatted(formatter, format_error: Callable[[], list[str]], log: logging.Logger | None = None) -> list[str]:
    """`format_error()` with IPython's `formatter` in its current %xmode, or in Plain mode when
    that fails (IPython 9's Docs mode asserts on every chained error, every mode on the groups
    `except*` leaves behind).

    IPython's own fallback prints a raw traceback of its internals and of the kernel's
    temporary files; the user's error in another layout is what the user needs.
    """
    try:
        return format_error()
    except Exception:  # noqa: BLE001 - a formatter bug must not replace the user's error
        mode = formatter.mode
        if log is not None:
            log.warning("IPython cannot format this error in %%xmode %s", mode, exc_info=True)
        formatter.set_mode("Plain")
        try:
            return format_error()
        finally:
            formatter.set_mode(mode)


def own_rendering(value: BaseException, format_error: Callable[[], list[str]], log: logging.Logger | None = None) -> list[str] | None:
    """What the user's own `_render_traceback_` makes of `value`; `format_error()`, their
    error formatted as any other, when that renderer fails. None for errors IPython formats
    by their type.

    IPython prints a renderer's failure as a raw traceback of its own frames and the
    kernel's temporary files, and sends no `error` message at all. `log` (the kernel's; a task
    process has none: its stderr is the cell's) hears of what failed.
    """
    from IPython.core.error import UsageError

    if not hasattr(value, "_render_traceback_") or isinstance(value, (SyntaxError, UsageError)):
        return None
    try:
        rendered = value._render_traceback_()
    except Exception:  # noqa: BLE001 - the user's renderer, not their error, is broken
        if log is not None:
            log.warning("%s._render_traceback_ failed", type(value).__name__, exc_info=True)
        rendered = None
    if isinstance(rendered, (list, tuple)) and all(isinstance(line, str) for line in rendered):
        return list(rendered)
    return format_error()


def is_machinery_file(filename: str) -> bool:
    """Whether `filename` is the source of a loaded machinery package (IPython, ...)."""
    for package in MACHINERY:
        module = sys.modules.get(package)
        location = getattr(module, "__file__", None)
        if location and filename.startswith(os.path.dirname(location) + os.sep):
            return True
    return False


def format_warning(
    formatwarning: Callable[..., str], code_name: Callable[[str], tuple[str, str] | None]
) -> Callable[..., str]:
    """Wrap `warnings.formatwarning` so a warning from a cell names the cell or component
    (`Component train, line 2: UserWarning: ...`) instead of the kernel's temporary file, and
    one the kernel itself raises (IPython's "To exit: use 'exit'...") names no file of ours."""

    def labelled_formatwarning(message, category, filename, lineno, line=None) -> str:
        if is_machinery_file(filename):
            return f"{category.__name__}: {message}\n"
        label = code_name(filename)
        if label is None:
            return formatwarning(message, category, filename, lineno, line)
        if line is None:
            line = linecache.getline(filename, lineno)
        text = f"{label[0]} {label[1]}, line {lineno}: {category.__name__}: {message}\n"
        if line and line.strip():
            text += f"  {line.strip()}\n"
        return text

    return labelled_formatwarning
