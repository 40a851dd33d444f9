"""What runs inside a task's own process on a worker: one component, then exit.

The worker forks this process from a parent that already imported IPython, cloudpickle and
fsspec, so a task starts in milliseconds yet leaves nothing behind: its memory (and any GPU
context the user's code opens) goes back to the machine when it exits.

The component runs in an IPython shell, like a local component: magics, the last
expression's value, `display()` and rich output all work. Everything the user's code shows is
sent to the worker over a pipe as nbformat output dicts, one JSON frame each; the last frame
is the result (changed names as blob digests, or the user's error).
"""

from __future__ import annotations

import ast
import base64
import builtins
import getpass
import io
import json
import linecache
import os
import random
import re
import select
import sys
import threading
import tokenize
import warnings
from collections.abc import Collection
from typing import Any, NoReturn

import comm
from comm.base_comm import BaseComm
from IPython.core.async_helpers import _pseudo_sync_runner
from IPython.core import page
from IPython.core.autocall import ZMQExitAutocall
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import StdinNotImplementedError, UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets import Type, default
from traitlets.config import Config

from linkkernel import cow
from linkkernel.compiler import LinkCompiler
from linkkernel.namespaces import Blob, UnpicklableValue, changes, digests_as_loaded, dump, loading_together, loads, pickling_names, twin_path
from linkkernel.remote import settings
from linkkernel.remote.storage import MissingBlob, StorageError, Store, file_map_of
from linkkernel.tasks import as_sent
from linkkernel.tracebacks import contains_group, format_warning, formatted, frames_of, group_traceback, own_rendering, trim

# Names IPython's displayhook and input cache bind in the namespace; they are not outputs.
_SHELL_NAMES = re.compile(r"_{1,3}|_i{1,3}|_i?\d+")


class Pipe:
    """Length-prefixed JSON frames to the worker process.

    The user's threads print at the same time as the task's main thread, and processes it
    forks inherit this pipe: a frame must reach the worker whole, not interleaved with
    another's. Threads take turns; stream text goes in frames the OS writes atomically
    (PIPE_BUF), which holds between processes too.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._turn = threading.Lock()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._turn = threading.Lock()  # a thread of the parent may have held it at the fork

    def send(self, message: dict[str, Any]) -> None:
        output = message.get("output")
        if len(message) == 1 and isinstance(output, dict) and output.get("output_type") == "stream":
            frames = _stream_frames(output["name"], output["text"])
        else:
            frames = [_frame(message)]
        with self._turn:
            for frame in frames:
                view = memoryview(frame)
                while view:
                    view = view[os.write(self.fd, view) :]

    def finish(self, message: dict[str, Any]) -> None:
        """Send the task's last message. This process has nothing left to do but exit, so it
        steps aside first: the worker relaying the result must not wait for its teardown."""
        # Loaded already: this process is a fork of the worker.
        from linkkernel.remote.zygote import step_aside

        step_aside()
        self.send(message)


def _frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return len(data).to_bytes(4, "little") + data


def _stream_frames(name: str, text: str) -> list[bytes]:
    """`text` in frames of at most PIPE_BUF bytes (the worker joins them again)."""
    frame = _frame({"output": {"output_type": "stream", "name": name, "text": text}})
    if len(frame) <= select.PIPE_BUF or len(text) < 2:
        return [frame]
    half = len(text) // 2
    return _stream_frames(name, text[:half]) + _stream_frames(name, text[half:])


# How long text without a newline may wait to be sent: ipykernel's streams flush as often.
FLUSH_INTERVAL = 0.2


class PipeStream(io.TextIOBase):
    """sys.stdout/sys.stderr of a task: whole lines go to the worker as they are written, the
    rest within FLUSH_INTERVAL, as `print('epoch 1: ', end='')` shows at once in a local cell."""

    def __init__(self, pipe: Pipe, name: str) -> None:
        self._pipe = pipe
        self._name = name
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._timer = None  # the parent's timer thread is not in this process

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        """The task process's own fd 1 or 2, which the worker relays to the cell as well:
        code that needs a real file (`subprocess.run(stdout=sys.stdout)`,
        `faulthandler.enable()`) gets one, as from ipykernel's streams."""
        self.flush()  # what was written before comes first
        return 1 if self._name == "stdout" else 2

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # as any text stream: the user's TypeError, at their line
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            timer = None
            with self._lock:
                self._pending.append(text)
                if "\n" not in text and self._timer is None:
                    timer = self._timer = threading.Timer(FLUSH_INTERVAL, self._flush_later)
                    timer.daemon = True
            if timer is not None:
                timer.start()
            elif "\n" in text:
                self.flush()
        return len(text)

    def _flush_later(self) -> None:
        with self._lock:
            self._timer = None
        self.flush()

    def flush(self) -> None:
        with self._lock:  # text a thread appends meanwhile is sent by the next flush
            text, self._pending = "".join(self._pending), []
        if text:
            self._pipe.send({"output": {"output_type": "stream", "name": self._name, "text": text}})


# The task's own stdout and stderr: flushed even when the user's code rebinds sys.stdout
# (to None, say), so their text still comes before what follows and the result still goes.
_streams: list[PipeStream] = []


def _flush_streams() -> None:
    for stream in _streams:
        stream.flush()


class PipeDisplayPublisher(DisplayPublisher):
    """`display()` in a task: a display_data output to the cell."""

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs) -> None:
        _flush_streams()
        data, metadata = as_sent([data, metadata or {}])
        output = {"output_type": "update_display_data" if update else "display_data", "data": data, "metadata": metadata}
        if transient:
            output["transient"] = transient
        self.shell.pipe.send({"output": output})

    def clear_output(self, wait: bool = False) -> None:
        _flush_streams()
        self.shell.pipe.send({"clear_output": wait})


# `PipeDisplayHook.shown` before the task's cell shows a value.
NOTHING_SHOWN = object()


class PipeDisplayHook(DisplayHook):
    """The value of a task's last expression: an execute_result, as in a local cell, and
    the value itself, which goes back for the kernel's `_` and `Out[N]`."""

    shown: Any = NOTHING_SHOWN
    code = ""  # the cell running, as IPython runs it (`execute` sets it)

    def quiet(self) -> bool:
        """A cell ending in `;` shows no value. IPython reads the cell from its input
        history, which a task process does not keep."""
        try:
            return self.semicolon_at_end_of_expression(self.code)
        except (tokenize.TokenError, SyntaxError):  # IPython's own check fails the same way on such cells
            return False

    def update_user_ns(self, result: Any) -> None:
        self.shown = result
        super().update_user_ns(result)

    def start_displayhook(self) -> None:
        _flush_streams()

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict, md_dict=None) -> None:
        data, metadata = as_sent([format_dict, md_dict or {}])
        output = {"output_type": "execute_result", "data": data, "metadata": metadata}
        self.shell.pipe.send({"output": output})

    def finish_displayhook(self) -> None:
        pass


class PipeComm(BaseComm):
    """A comm of the task's (an ipywidgets model, a tqdm.notebook bar): its messages go to the
    kernel, which publishes them to the frontend as its own comms' go, so the widget a task
    displays has its model there and moves as the task updates it. Nothing comes back: the
    frontend's messages reach a kernel that has no such comm, as after a local widget is
    gone. A copy that comes back as part of an output sends nothing either."""

    def publish_msg(self, msg_type: str, data=None, metadata=None, buffers=None, **keys: Any) -> None:
        shell = InteractiveShell.instance() if InteractiveShell.initialized() else None
        if not isinstance(shell, WorkerShell):  # a copy in the kernel
            return
        _flush_streams()  # what the task printed before it showed the widget comes first
        shell.pipe.send({"comm": {
            "msg_type": msg_type,
            "content": {"data": data or {}, "comm_id": self.comm_id, **keys},
            "metadata": metadata or {},
            "buffers": [base64.b64encode(buffer).decode() for buffer in buffers or ()],
        }})


class WorkerShell(InteractiveShell):
    """An IPython shell whose output goes to the pipe and whose errors are kept for the reply.

    Cells are compiled by LinkCompiler, so traceback frames of the user's code read
    `Component NAME, line N` exactly as in the kernel.
    """

    compiler_class = Type(LinkCompiler)
    displayhook_class = Type(PipeDisplayHook)
    display_pub_class = Type(PipeDisplayPublisher)
    pipe: Pipe
    error: dict[str, Any] | None = None
    keepkernel_on_exit = False
    asked_exit: bool | None = None  # `exit(keep_kernel=...)` was called: its keep_kernel

    @default("exiter")
    def _exiter_default(self) -> ZMQExitAutocall:
        return ZMQExitAutocall(self)  # exit(keep_kernel=True) as in a kernel

    def init_hooks(self) -> None:
        """`len?`, `%pdoc`: paged text goes back as the reply's payload, as ipykernel pages it,
        instead of being printed into the cell."""
        super().init_hooks()
        self.set_hook("show_in_pager", page.as_hook(self._page), 99)

    def _page(self, text, start: int = 0, screen_lines: int = 0, pager_cmd=None) -> None:
        data = text if isinstance(text, dict) else {"text/plain": text}
        self.payload_manager.write_payload({"source": "page", "data": as_sent(data), "start": max(0, start)})

    def ask_exit(self) -> None:
        """`exit()` in a task: the kernel asks its frontend, as ipykernel's exit() does."""
        self.asked_exit = self.keepkernel_on_exit

    def showtraceback(self, exc_tuple=None, filename=None, tb_offset=None, exception_only=False, running_compiled_code=False):
        """Without the frames of linkkernel and IPython, as the kernel shows errors (SPEC §4):
        a display() or print() the cell cannot carry fails inside this module."""
        try:
            etype, value, tb = self._get_exc_info(exc_tuple)
        except ValueError:
            value = None
        if not isinstance(value, BaseException) or tb is None:
            return super().showtraceback(exc_tuple, filename, tb_offset, exception_only, running_compiled_code)
        value.__traceback__ = tb
        trim(value)
        self._lend_sources(value)
        if not exception_only:
            # As the kernel's shell does (LinkShell.showtraceback): a user's renderer that
            # fails, and groups IPython's formatter fails on, are still the task's error.
            def layout() -> list[str]:
                return formatted(self.InteractiveTB, lambda: group_traceback(self.InteractiveTB, value))

            rendered = own_rendering(value, layout)
            if rendered is not None or contains_group(value):
                self._get_exc_info((etype, value, value.__traceback__))
                self._showtraceback(etype, value, layout() if rendered is None else rendered)
                return None
        # The machinery frames tb_offset would skip are gone already.
        return super().showtraceback((etype, value, value.__traceback__), filename, 0, exception_only, running_compiled_code)

    def _lend_sources(self, value: BaseException) -> None:
        """Frames of a function a parent defined in another process read as the parent's
        code: labelled and with their lines, through this process's file of the same name."""
        labelled = self.compile.labelled_files()
        for frame in frames_of(value):
            filename = frame.f_code.co_filename
            twin = twin_path(filename)
            if filename not in labelled and twin in labelled:
                self.compile.label(filename, labelled[twin])
                if twin in linecache.cache:
                    linecache.cache[filename] = linecache.cache[twin]

    def thread_excepthook(self, args: threading.ExceptHookArgs) -> None:
        """An error in a thread the task started: its frames, to the cell's stderr, as the
        kernel shows it; Python's own hook prints threading's frames and temporary paths."""
        if args.exc_type is SystemExit:
            return
        value = args.exc_value if args.exc_value is not None else args.exc_type()
        value.__traceback__ = args.exc_traceback
        trim(value)
        stb = self.InteractiveTB.structured_traceback(args.exc_type, value, value.__traceback__, tb_offset=0)
        name = args.thread.name if args.thread is not None else threading.get_ident()
        print(f"Exception in thread {name}:\n{self.InteractiveTB.stb2text(stb)}", file=sys.stderr, flush=True)

    def _showtraceback(self, etype, evalue, stb) -> None:
        if isinstance(evalue, SyntaxError):  # evalue names the component, as the kernel's: "(Component train, line 2)"
            label = self.compile.format_code_name(evalue.filename or "")
            if label is not None:
                evalue.filename = " ".join(label)
        self._show_error({"ename": etype.__name__, "evalue": _text(evalue), "traceback": list(stb)})

    def show_usage_error(self, exc: BaseException) -> None:
        """An unknown magic or bad magic arguments: one line on stderr, as IPython and the
        kernel show it (no red error box); the task's error if the cell then fails."""
        line = f"UsageError: {_text(exc)}"
        print(line, file=sys.stderr, flush=True)
        self.error = {"ename": "UsageError", "evalue": _text(exc), "traceback": [line]}

    def _show_error(self, error: dict[str, Any]) -> None:
        """An error goes to the cell as it happens, as the kernel shows it: a cell may go on
        after one (a failing `%run` script, a display formatter that raised). The last one
        shown is the task's error if the cell failed (`execute` says whether it did)."""
        _flush_streams()
        self.pipe.send({"output": {"output_type": "error", **error}})
        self.error = error

    def init_io(self) -> None:
        """Keep the process's streams alone until a task replaces them."""

    def enable_gui(self, gui: str | None = None) -> None:
        """`%matplotlib inline` as in a kernel, which needs no event loop; a task has no
        display for a GUI's (`%matplotlib qt`), which is said in one line."""
        if gui not in (None, "inline"):
            raise UsageError(f"a remote component cannot run the {gui!r} GUI event loop; use %matplotlib inline")
        self.active_eventloop = gui


def _text(evalue: BaseException) -> str:
    """The exception's message; an exception whose __str__ itself raises must still be
    reported as the user's error, not as a failure inside this module."""
    try:
        return str(evalue)
    except Exception:  # noqa: BLE001 - any error of the user's __str__
        return f"<unprintable {type(evalue).__name__} object>"


def _no_input(prompt: str = "", *args: Any, **kwargs: Any) -> NoReturn:
    """input() and getpass() in a task: the error ipykernel gives a frontend without stdin,
    saying why, instead of an EOFError from a stdin nobody can type into."""
    raise StdinNotImplementedError(
        "input() was called, but a remote component runs on a worker and cannot ask the notebook; "
        "read the value in a local parent component instead"
    )


def preload_shell() -> WorkerShell:
    """The shell every task process inherits from the worker (created once, before forking)."""
    config = Config()
    config.HistoryManager.enabled = False
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.cache_size = 0
    # As ipykernel does: matplotlib draws inline unless told otherwise, so a figure a task
    # draws reaches the cell (the backend matplotlib picks itself, Agg here, drops it).
    if not os.environ.get("MPLBACKEND"):
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # A task's output goes to a notebook: libraries that choose how to render by looking for
    # ipykernel's shell module (tqdm.auto's widget bar) choose as they do in a local cell.
    import ipykernel.zmqshell  # noqa: F401
    shell = WorkerShell.instance(config=config)
    # No frontend is there to answer: the process's stdin is not the notebook's.
    builtins.input = getpass.getpass = _no_input
    # As in the kernel: a warning names the component, not the temporary cell file.
    warnings.formatwarning = format_warning(warnings.formatwarning, shell.compile.format_code_name)
    threading.excepthook = shell.thread_excepthook
    comm.create_comm = PipeComm
    # Run a cell, a display and an error once here: IPython initialises much lazily, and
    # doing it in every forked task would cost milliseconds of copy-on-write each time.
    shell.pipe = _NullPipe()
    shell.run_cell("from IPython.display import display\ndisplay(1)\n1", store_history=False)
    shell.run_cell("1/0", store_history=False)
    execute(shell, "from IPython.display import display\ndisplay(1)\n1")
    execute(shell, "1/0")
    shell.error = None
    # What every task's result reads: traitlets make the payload list on its first read, ~50
    # copy-on-write faults (~0.15 ms) in each task process that did it.
    _asked(shell)
    # A clean namespace every forked task starts from (making one costs a task ~0.6 ms).
    shell.init_create_namespaces(user_ns={})
    shell.init_user_ns()
    return shell


def warm_up(shell: WorkerShell) -> None:
    """Touch, in a spare task process, what every task touches, before any task arrives.

    A forked process copies each inherited page on its first write to it, and reference
    counting writes to every object used: ~1-2 ms of page faults for a trivial task. Paid
    here, while the spare waits for work, they are off the task's path. Nothing here leaves
    state a task could see: `pass` binds no name and the namespace stays the clean one.
    """
    _reseed()
    shell.pipe = _NullPipe()
    json.loads(json.dumps({"task": "", "name": "", "code": "pass", "inputs": {}, "versions": {}, "sources": {}}))
    execute(shell, "pass")
    changes({}, {}, {})
    shell.error = None


def _reseed() -> None:
    """Give this task its own random numbers: every task process starts as a copy of the same
    parent, so without this `random` and numpy's global generator would repeat the same
    draws in every task (a local component continues the kernel's sequence instead)."""
    random.seed()
    numpy_random = sys.modules.get("numpy.random")  # when not imported yet, it seeds itself
    if numpy_random is not None:
        numpy_random.seed()


class _NullPipe(Pipe):
    def __init__(self) -> None:
        super().__init__(-1)

    def send(self, message: dict[str, Any]) -> None:
        pass


def execute(shell: WorkerShell, code: str) -> bool:
    """Run a cell as IPython's run_cell would, taking the short path for plain Python;
    whether it failed.

    In a freshly forked process every object touched costs a copy-on-write page, and
    run_cell's input transformers and async checks are most of a trivial task's time. Code
    that parses as Python without top-level `await` needs none of them; anything else
    (magics, `!cmd`, `await`) goes through run_cell unchanged.
    """
    try:
        plain = "await" not in code and ast.parse(code) is not None
    except SyntaxError:
        plain = False
    if not plain:
        try:
            shell.displayhook.code = shell.transform_cell(code)
        except Exception:  # noqa: BLE001 - run_cell reports what the cell's transforms raise
            shell.displayhook.code = code
        return not shell.run_cell(code, store_history=False, silent=False).success
    shell.displayhook.code = code
    filename = shell.compile.cache(code, 0, code)
    tree = shell.compile.ast_parse(code, filename=filename)
    shell.events.trigger("pre_execute")
    with shell.builtin_trap, shell.display_trap:
        failed = _pseudo_sync_runner(
            shell.run_ast_nodes(tree.body, filename, interactivity=shell.ast_node_interactivity, compiler=shell.compile)
        )
    shell.events.trigger("post_execute")
    return bool(failed)


class MappedInput:
    """An input rebuilt in place on the copy-on-write map of its blob file (storage.FileMap)."""

    def __init__(self, blob, file_map, namespace: dict[str, Any]) -> None:
        self.blob = blob
        self.map = file_map
        self.value: Any = loads(blob.stream, list(blob.buffers), namespace)

    def unchanged(self, name: str, value: Any) -> Blob | None:
        """The blob `value` (of `name`) was loaded from, only when it is provably unchanged:
        same pickle stream, still on the same mapped memory, and no page of the map written;
        None means "not proven" (compare digests). See cow.Loaded.unchanged."""
        if value is not self.value:
            return None
        found = cow.same_pickle(name, value, self.blob)
        if found is None:
            return None
        for (view, shared), original in zip(found, self.blob.buffers):
            if not shared and (view.nbytes != original.nbytes or cow.address(view) != cow.address(original)):
                return None
        return None if cow.written(self.map) else self.blob


def load_input(blob, namespace: dict[str, Any]) -> MappedInput | cow.Loaded:
    """An input to live in `namespace`, built on its blob's file map when it has one."""
    file_map = file_map_of(blob)
    return cow.Loaded(blob, namespace) if file_map is None else MappedInput(blob, file_map, namespace)


def _backend_as_in_the_kernel() -> None:
    """Inputs that brought pyplot come from components that drew with it, and in a kernel
    that chose matplotlib's backend, which (inline) shows a figure as a cell's value as a
    PNG. A task's process starts with no backend chosen: choose it as drawing would."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        try:
            pyplot._get_backend_mod()
        except (ImportError, ValueError):  # a backend this machine lacks: drawing says so, as in a kernel
            pass


def run(shell: WorkerShell, store: Store, task: dict[str, Any], pipe: Pipe) -> None:
    """Run one component and send its outputs and result through `pipe`."""
    digests: dict[str, str] = task["inputs"]
    inputs: dict[str, Any] = {}
    loaded: dict[str, MappedInput | cow.Loaded] = {}
    namespace = shell.user_ns  # made fresh by preload_shell; this process runs one task only
    settings.apply(shell, task.get("settings"))
    # pickle finds functions by name in sys.modules['__main__'] (multiprocessing hands them
    # to its workers so): the user module there, as in a kernel
    sys.modules["__main__"] = shell.user_module
    store.remember(task.get("verified") or {})
    # Each blob file's temporary name, said before it is made: killed or crashed midway, this
    # process leaves it, and the worker removes just that instead of sweeping the store.
    store.announce = lambda name: pipe.send({"writing": name})

    def load(name: str) -> Any:
        loaded[name] = load_input(store.get(digests[name], mapped=True), namespace)
        return loaded[name].value

    with loading_together(digests, load) as value_of:  # names holding one object get it so again
        for name in digests:
            try:
                inputs[name] = value_of(name)
            except MissingBlob as exc:
                pipe.finish({"missing": digests[name], "failed": (
                    f"input {name!r}: {exc} (deleted while in use, or the kernel stored it elsewhere: "
                    "is this worker's --storage the storage registered for it?)"
                )})
                return
            except StorageError as exc:
                pipe.finish({"failed": str(exc)})
                return
            except Exception as exc:  # unpickling runs arbitrary code: a missing module, a bad __setstate__
                pipe.finish({"failed": f"input {name!r} cannot be loaded on the worker: {type(exc).__name__}: {exc}"})
                return
    # Functions from the kernel's components keep their cell file (namespaces.dump); with
    # its label and source here their frames read `Component load, line 3` as they do locally.
    # Code a parent compiled in another process (an earlier task, an earlier kernel) is
    # matched by its file's base name, through the file this process would compile it in.
    for filename, (component, source) in task.get("sources", {}).items():
        for name in {filename, twin_path(filename) or filename}:
            shell.compile.label(name, component)
            linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)
    hidden = set(namespace)
    namespace.update(inputs)
    _backend_as_in_the_kernel()
    as_loaded = {**digests, **digests_as_loaded(inputs, {n: how.blob for n, how in loaded.items()})}
    shell.pipe = pipe
    _streams[:] = [PipeStream(pipe, "stdout"), PipeStream(pipe, "stderr")]
    sys.stdout, sys.stderr = _streams
    shell.displayhook.shown = NOTHING_SHOWN  # the worker's own warm-up cells showed values
    with shell.compile.labelled(task["name"]):
        failed = execute(shell, task["code"])
    _flush_streams()
    if failed and shell.error is not None:
        pipe.finish({"result": {"error": shell.error, **_asked(shell)}})
        return
    final = {k: v for k, v in namespace.items() if k not in hidden and not _SHELL_NAMES.fullmatch(k)}

    def unchanged(name: str) -> Blob | None:
        """An input whose mapped pages were never written is unchanged without re-hashing it."""
        return loaded[name].unchanged(name, final.get(name)) if name in loaded else None

    bound: dict[str, str] = {}
    unpicklable: dict[str, str] = {}
    with pickling_names(final, unchanged) as names:  # names holding one object keep it so (see namespaces)
        check = {n: None if n in names.proven else as_loaded[n] for n in digests}
        changed = changes(inputs, check, final)
        for name in changed.bound:
            try:
                blob = dump(name, final[name])
            except UnpicklableValue as exc:
                unpicklable[name] = exc.type_name
                continue
            try:
                store.put(blob)
            except StorageError as exc:
                pipe.finish({"failed": str(exc)})
                return
            bound[name] = blob.digest
        try:  # for `_`: only a cell the user runs has one
            last = _shown_value(shell, final, digests, changed.bound, store) if task.get("live") else None
        except StorageError as exc:
            pipe.finish({"failed": str(exc)})
            return
    # Files this process verified or wrote: the worker tells the next task, which then maps
    # them without hashing them again.
    result = {"bound": bound, "deleted": list(changed.deleted), "unpicklable": unpicklable, "last": last, **_asked(shell)}
    pipe.finish({"result": result, "verified": store.newly_verified})


def _shown_value(shell: WorkerShell, final: dict[str, Any], digests: dict[str, str], bound: Collection[str], store: Store) -> str | None:
    """The digest of the value the cell showed (its execute_result), for the kernel's `_` and
    `Out[N]`; None when it showed none, or the value does not pickle. A value one of the
    cell's names holds is pickled as that name; an input it left as it came is its blob."""
    shown = shell.displayhook.shown
    if shown is NOTHING_SHOWN:
        return None
    same = next((n for n, v in final.items() if v is shown), None)
    if same in digests and same not in bound:
        return digests[same]
    try:
        blob = dump(same or "_", shown)
    except UnpicklableValue:
        return None
    store.put(blob)
    return blob.digest


def _asked(shell: WorkerShell) -> dict[str, Any]:
    """What the cell asked of the frontend, for the kernel's reply: exit(), paged text."""
    return {"exit": shell.asked_exit, "payload": shell.payload_manager.read_payload()}
