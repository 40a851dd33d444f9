"""The interactive shell of Link Python: ipykernel's shell with the user's own tracebacks.

Every traceback the shell produces (cells, magics, display formatters, event hooks, `%tb`)
goes through `showtraceback`/`showsyntaxerror`; overriding them here is what keeps the
kernel's machinery out of what users see, in every `%xmode`, and out of `%debug`.
"""

from __future__ import annotations

import builtins
import linecache
import logging
import sys
import threading
import traceback
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from IPython.core.error import StdinNotImplementedError, UsageError
from ipykernel.compiler import get_file_name
from ipykernel.zmqshell import ZMQInteractiveShell

from linkkernel.errors import internal_error_line
from linkkernel.namespaces import twin_path
from linkkernel.tracebacks import (
    chained,
    contains_group,
    format_warning,
    formatted,
    frames_of,
    group_traceback,
    is_internal,
    own_rendering,
    trim,
)

log = logging.getLogger(__name__)


@dataclass
class CollectedError:
    """An error a silent run raised, kept instead of being sent to the frontend."""

    ename: str
    evalue: str
    traceback: list[str]


class LinkShell(ZMQInteractiveShell):
    """Lets a silent run keep its errors to itself, and shows only the user's frames.

    `capture_output()` does not stop ipykernel's shell from publishing an `error` message,
    so a run of a parent component that must stay invisible collects its errors here.
    """

    # The sinks of the silent runs in progress, in this context only: a kernel subshell's
    # request (JEP 91) failing meanwhile in a thread of its own shows its error as usual.
    _error_sinks: ContextVar[tuple[list[CollectedError], ...]]
    # Who else hears of every error shown in this context: a component run keeps the errors
    # its cell shows without failing (`%run` of a failing script) with its stored outputs.
    _error_listeners: ContextVar[tuple[Callable[[CollectedError], None], ...]]
    # (component, source) of every component the kernel knows, asked only when a traceback
    # holds a frame of an earlier kernel session's cell file (see register_source).
    component_sources: Callable[[], Iterable[tuple[str, str]]] | None = None

    def __init__(self, *args, **kwargs) -> None:
        self._error_sinks = ContextVar("linkkernel_error_sinks", default=())
        self._error_listeners = ContextVar("linkkernel_error_listeners", default=())
        self._cell_file_of_label: dict[str, str] = {}
        self._component_module: ContextVar[types.ModuleType | None] = ContextVar("linkkernel_module", default=None)
        super().__init__(*args, **kwargs)
        warnings.formatwarning = format_warning(warnings.formatwarning, self.compile.format_code_name)
        threading.excepthook = self._thread_excepthook
        sys.unraisablehook = self._unraisable_hook

    # While a component runs, IPython's user namespace is the component's, but only for the
    # code running it: a kernel subshell (JEP 91) runs plain cells in a thread of its own
    # meanwhile, and those run in the notebook namespace (SPEC §3), as in ipykernel.

    @property
    def user_module(self) -> types.ModuleType:
        module = self._component_module.get()
        return self._notebook_module if module is None else module

    @user_module.setter
    def user_module(self, module: types.ModuleType) -> None:
        self._notebook_module = module

    @property
    def user_ns(self) -> dict:
        module = self._component_module.get()
        return self._user_ns if module is None else module.__dict__

    @user_ns.setter
    def user_ns(self, ns: dict) -> None:
        if not isinstance(ns, dict):
            raise TypeError(f"a user namespace is a dict, not {type(ns).__name__}")
        self._user_ns = ns

    @property
    def notebook_ns(self) -> dict:
        """The notebook's namespace, also in the code of a running component: where the
        visual debugger's "copy to globals" puts a value, as stock puts it in the cell's
        globals, which are the notebook's there."""
        return self._user_ns

    @contextmanager
    def running_in(self, module: types.ModuleType) -> Iterator[None]:
        """Inside the block, and in what it awaits, the user namespace is `module`'s.

        `module` is also `sys.modules['__main__']` meanwhile, as ipykernel makes the user
        module, because pickle finds functions and classes by name there: without it a
        component could not hand its own functions to multiprocessing or concurrent.futures.
        That one is process-wide, so a subshell's cell pickling its `__main__` functions by
        name during the run would find the component's (ipykernel shares one module too).
        `__builtins__` is the builtins module, as IPython makes it in the user module (exec
        would insert its dict: `dir(__builtins__)` would list dict methods).
        """
        module.__dict__.setdefault("__builtins__", builtins)
        token = self._component_module.set(module)
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = module
        try:
            yield
        finally:
            if main is None:
                sys.modules.pop("__main__", None)
            else:
                sys.modules["__main__"] = main
            self._component_module.reset(token)

    @contextmanager
    def collect_errors(self) -> Iterator[list[CollectedError]]:
        """Inside the block, errors are appended to the yielded list instead of published."""
        sink: list[CollectedError] = []
        token = self._error_sinks.set((*self._error_sinks.get(), sink))
        try:
            yield sink
        finally:
            self._error_sinks.reset(token)

    @contextmanager
    def errors_shown_to(self, listener: Callable[[CollectedError], None]) -> Iterator[None]:
        """Inside the block, every error the shell shows (or collects) is also passed to `listener`."""
        token = self._error_listeners.set((*self._error_listeners.get(), listener))
        try:
            yield
        finally:
            self._error_listeners.reset(token)

    def _showtraceback(self, etype, evalue, stb):
        sinks, listeners = self._error_sinks.get(), self._error_listeners.get()
        if sinks or listeners:
            error = CollectedError(etype.__name__, str(evalue), list(stb))
            for listener in listeners:
                listener(error)
        if sinks:
            sinks[-1].append(error)
            self._last_traceback = stb
            return
        super()._showtraceback(etype, evalue, stb)

    @property
    def debugger_cls(self):
        # Imported on first use, as IPython does: pdb is not needed to start a kernel.
        from linkkernel.debugger import LinkPdb

        return LinkPdb

    def showtraceback(
        self,
        exc_tuple=None,
        filename=None,
        tb_offset=None,
        exception_only=False,
        running_compiled_code=False,
    ):
        try:
            etype, value, tb = self._get_exc_info(exc_tuple)
        except ValueError:
            value = None
        if not isinstance(value, BaseException):  # nothing to show, or not in a shape we trim
            return super().showtraceback(exc_tuple, filename, tb_offset, exception_only, running_compiled_code)
        value.__traceback__ = tb
        if is_internal(value):
            self._show_internal_error(etype, value)
            return None
        trim(value)
        self._lend_sources(value)
        exc_tuple = (etype, value, value.__traceback__)
        formats_itself = hasattr(value, "_render_traceback_") or issubclass(etype, (SyntaxError, UsageError))
        no_frames_of_its_own = value.__traceback__ is None and not chained(value)
        if tb is not None and no_frames_of_its_own and not formats_itself and not isinstance(value, BaseExceptionGroup):
            # Raised and caught inside the kernel (an interrupt between ancestors, say):
            # no frame of the user's to show, so the exception line alone, as in %xmode Minimal.
            self._get_exc_info(exc_tuple)
            self._showtraceback(etype, value, self.InteractiveTB.get_exception_only(etype, value))
            return None
        if contains_group(value) and not exception_only and not formats_itself:
            self._get_exc_info(exc_tuple)
            self._showtraceback(etype, value, self._group_traceback(value))
            if self.call_pdb:
                self.debugger(force=True)
            return None
        rendered = None if exception_only else own_rendering(value, lambda: self._structured_traceback(etype, value), self._kernel_log)
        if rendered is not None or (not formats_itself and not exception_only):
            self._get_exc_info(exc_tuple)
            self._showtraceback(etype, value, self._structured_traceback(etype, value) if rendered is None else rendered)
            if self.call_pdb:
                self.debugger(force=True)
            return None
        # The machinery frames tb_offset would skip are gone already.
        return super().showtraceback(exc_tuple, filename, 0, exception_only, running_compiled_code)

    def _structured_traceback(self, etype, value: BaseException) -> list[str]:
        return self._formatted(lambda: self.InteractiveTB.structured_traceback(etype, value, value.__traceback__, tb_offset=0))

    def _formatted(self, format_error: Callable[[], list[str]]) -> list[str]:
        return formatted(self.InteractiveTB, format_error, self._kernel_log)

    def register_source(self, component: str, source: str) -> None:
        """Make known the code of a component that did not run in this process (fresh from
        the cache store), so frames of functions it defined read `Component NAME`, with their
        source lines, instead of an earlier kernel's temporary file."""
        with self.compile.labelled(component):
            self.compile.cache(self.transform_cell(source), 0, raw_code=source)

    def _lend_sources(self, value: BaseException) -> None:
        """Frames from an earlier kernel's cell files read their lines from this kernel's."""
        for frame in frames_of(value):
            filename = frame.f_code.co_filename
            twin = twin_path(filename)
            if twin is None:
                continue
            if self.compile.local_twin(filename) is None and self.component_sources is not None:
                self._register_twin(twin)
            if twin in linecache.cache:
                linecache.cache[filename] = linecache.cache[twin]

    def _register_twin(self, twin: str) -> None:
        try:
            known = list(self.component_sources())
        except Exception:  # noqa: BLE001 - a label is not worth failing to show the user's error
            self._kernel_log.warning("component sources unavailable for a traceback", exc_info=True)
            return
        for component, source in known:
            if get_file_name(source) == twin:
                self.register_source(component, source)
                return

    def debugger(self, force=False):
        if self._error_sinks.get():
            # A silent run (a parent component) keeps its errors, and everything the debugger
            # would print: a post-mortem there prompts `ipdb>` while its answers stay invisible.
            # Whoever shows the collected error starts it (Runner.execute_cell).
            return
        reported = getattr(getattr(sys, "last_value", None), "post_mortem", None)
        if isinstance(reported, BaseException):  # a component failed (runner.ComponentFailed): debug its error
            sys.last_type, sys.last_value, sys.last_traceback = type(reported), reported, reported.__traceback__
            if sys.version_info >= (3, 12):  # what IPython's post-mortem opens there
                sys.last_exc = reported
        if (force or self.call_pdb) and hasattr(sys, "last_traceback") and sys.last_traceback is None:
            # IPython's post-mortem would crash on an error that left no frame of the user's.
            print("No frame of your code to debug: the error was raised inside the kernel.", file=sys.stderr)
            return
        try:
            super().debugger(force)
        except StdinNotImplementedError as exc:
            # %pdb under nbclient or papermill: the cell's error stays the user's, not the prompt's.
            print(f"The debugger cannot run: {exc}", file=sys.stderr)

    def showsyntaxerror(self, filename=None, running_compiled_code=False):
        etype, value, _ = self._get_exc_info()
        if is_internal(value):
            self._show_internal_error(etype, value)
            return
        trim(value)
        self._get_exc_info((etype, value, value.__traceback__))
        if filename and issubclass(etype, SyntaxError):
            value.filename = filename
        if issubclass(etype, SyntaxError) and value.filename in self._cell_file_of_label:
            value.filename = self._cell_file_of_label[value.filename]  # shown before (%tb)
        frames = traceback.extract_tb(value.__traceback__) if running_compiled_code else []
        stb = self.SyntaxTB.structured_traceback(etype, value, frames)
        # str(SyntaxError) names its file: make `evalue` say "(Cell In[3], line 2)" too.
        label = self.compile.format_code_name(getattr(value, "filename", None) or "")
        if label is not None:
            self._cell_file_of_label[" ".join(label)] = value.filename
            value.filename = " ".join(label)
        self._showtraceback(etype, value, stb)

    @property
    def _kernel_log(self) -> logging.Logger:
        # The kernel's log goes to the server's terminal; a bare logger would print to the cell.
        return getattr(self.kernel, "log", log)

    def _thread_excepthook(self, args: threading.ExceptHookArgs) -> None:
        """An error in a thread the user started: the user's frames, to the cell's stderr.

        Python's default hook prints threading's frames and the kernel's temp file paths.
        """
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else threading.get_ident()
        self._report_hooked(f"Exception in thread {name}:", args)

    def _unraisable_hook(self, args) -> None:
        """An error Python cannot raise (in `__del__`, a weakref callback...): the user's
        frames under Python's own header, to the cell's stderr.

        Python's default hook prints the kernel's temp file paths, as for threads.
        """
        header = (args.err_msg or "Exception ignored in") + ("" if args.object is None else f": {args.object!r}")
        self._report_hooked(header, args)

    def _report_hooked(self, header: str, args) -> None:
        """What Python's thread and unraisable hooks hand over, shown under `header` as the
        user's error; one with no frame of the user's (a thread of the kernel's own) goes
        to the kernel log instead."""
        value = args.exc_value if args.exc_value is not None else args.exc_type()
        value.__traceback__ = args.exc_traceback
        if is_internal(value) or (args.exc_traceback is not None and trim(value).__traceback__ is None):
            self._kernel_log.error("%s", header, exc_info=(args.exc_type, value, args.exc_traceback))
            return
        if value.__traceback__ is None:
            stb = self.InteractiveTB.get_exception_only(args.exc_type, value)
        else:
            stb = self._structured_traceback(args.exc_type, value)
        print(f"{header}\n{self.InteractiveTB.stb2text(stb)}", file=sys.stderr, flush=True)

    def _group_traceback(self, value: BaseException) -> list[str]:
        return self._formatted(lambda: group_traceback(self.InteractiveTB, value))

    def _show_internal_error(self, etype, value: BaseException) -> None:
        """A linkkernel bug: the full traceback to the kernel log, one line to the user."""
        self._kernel_log.error("linkkernel internal error", exc_info=(etype, value, value.__traceback__))
        trim(value)
        self._get_exc_info((etype, value, value.__traceback__))
        self._showtraceback(etype, value, [f"\x1b[0;31m{internal_error_line(value)}\x1b[0m"])
