"""Running a cell without showing anything, keeping what it would have shown (FACTS "silent").

Python-level stdout/stderr and display calls are caught by swapping the streams and the
shell's display publisher; output written straight to file descriptors 1 and 2 (os.system,
subprocesses, C extensions) by pointing those descriptors at temporary files. Everything is
kept in order as nbformat outputs, so `%link outputs NAME` can show it again. A live run
keeps the same outputs while they reach the cell: descriptors 1 and 2 then go through pipes
of ours that pass everything on to where it went before.
"""

from __future__ import annotations

import codecs
import ctypes
import io
import os
import queue
import selectors
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from ipykernel.iostream import OutStream
from ipykernel.subshell import SubshellThread

from linkkernel.tasks import as_sent
from linkkernel.tracebacks import blame_user

_libc = ctypes.CDLL(None)


class Outputs:
    """nbformat output dicts, consecutive stream writes merged as Jupyter does."""

    def __init__(self) -> None:
        self._items: list[dict[str, Any]] = []
        # Text written to the last stream output since it was last joined: a loop printing
        # 100 000 lines makes 200 000 writes, and appending each to one growing string
        # copied it every time (minutes where ipykernel takes a second).
        self._tail: list[str] = []
        self._by_display_id: dict[str, dict[str, Any]] = {}
        self._clear_next = False  # clear_output(wait=True): clear when the next output comes
        self._lock = threading.Lock()  # a live run's descriptor output arrives on other threads
        self._followed: list[tuple[str, _FileTail]] = []

    @property
    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            self._catch_up()
            self._join_tail()
            return self._items

    def follow(self, name: str, fd: int) -> None:
        """Keep what the file `fd` receives (a descriptor's output: os.system, subprocesses,
        C code) as stream `name`, read each time other output comes, so it keeps its place
        among the Python-level output as in a cell: printed, then a subprocess's, then printed."""
        with self._lock:
            self._followed.append((name, _FileTail(fd)))

    def unfollow(self) -> None:
        """Read the followed files to their end, and no more."""
        with self._lock:
            self._catch_up(final=True)
            for _, tail in self._followed:
                tail.close()
            self._followed.clear()

    def _catch_up(self, stream: str | None = None, final: bool = False) -> None:
        """What the followed files (only `stream`'s, if given) received since last read; the
        caller holds the lock. Before a print only its own stream's: between stdout and
        stderr, ipykernel keeps no order either (each is buffered and flushed apart)."""
        for name, tail in self._followed:
            if stream is None or name == stream:
                self._add_stream(name, tail.read(final))

    def _join_tail(self) -> None:
        """Fold the pending writes into the last stream output; the caller holds the lock."""
        if self._tail:
            self._items[-1]["text"] += "".join(self._tail)
            self._tail.clear()

    def stream(self, name: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            self._catch_up(name)
            self._add_stream(name, text)

    def _add_stream(self, name: str, text: str) -> None:
        """The caller holds the lock."""
        if not text:
            return
        self._clear_if_pending()
        last = self._items[-1] if self._items else None
        if last is not None and last["output_type"] == "stream" and last["name"] == name:
            self._tail.append(text)
        else:
            self._join_tail()
            self._items.append({"output_type": "stream", "name": name, "text": text})

    def display(
        self, data: dict, metadata: dict | None, output_type: str = "display_data",
        display_id: str | None = None, update: bool = False,
    ) -> None:
        """A new output, or with `update` the new content of the display `display_id`, kept in
        place as a notebook keeps it (a progress display updated a thousand times is one
        output, not a thousand). An update of a display this run did not show is not its output.

        Data and metadata are kept as the frontend receives them: formatters may return bytes
        (matplotlib's PNG figures), which only the message packer turns into base64 text, and
        the outputs must be JSON for the cache store to keep them."""
        data, metadata = as_sent([data, metadata or {}])
        with self._lock:
            self._catch_up()
            if update:
                shown = self._by_display_id.get(display_id) if display_id else None
                if shown is not None:
                    shown.update(data=data, metadata=metadata)
                return
            self._clear_if_pending()
            self._join_tail()
            item = {"output_type": output_type, "data": data, "metadata": metadata}
            if output_type == "execute_result":
                item["execution_count"] = None
            self._items.append(item)
            if display_id:
                self._by_display_id[display_id] = item

    def clear(self, wait: bool = False) -> None:
        """clear_output as a notebook applies it: with `wait`, only once another output
        comes, so the last output before a final `clear_output(wait=True)` stays."""
        with self._lock:
            self._catch_up()
            self._clear_next = True
            if not wait:
                self._clear_if_pending()

    def _clear_if_pending(self) -> None:
        if self._clear_next:
            self._items.clear()
            self._tail.clear()
            self._by_display_id.clear()
            self._clear_next = False

    def shows_error(self, error: dict[str, Any]) -> bool:
        """Whether an error output shows `error` (a reply's) already (see `shows_error`)."""
        with self._lock:
            return shows_error(self._items, error)

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        with self._lock:
            self._catch_up()
            self._clear_if_pending()
            self._join_tail()
            self._items.append({"output_type": "error", "ename": ename, "evalue": evalue, "traceback": list(traceback)})


def shows_error(outputs: list[dict[str, Any]], error: dict[str, Any]) -> bool:
    """Whether an error output among `outputs` shows `error` (a reply's, a task's) already:
    the same exception, or the same traceback (ipykernel names a display formatter's error
    'NoneType' in its reply)."""
    return any(
        o["output_type"] == "error"
        and ((o["ename"], o["evalue"]) == (error.get("ename"), error.get("evalue")) or o["traceback"] == error.get("traceback", []) != [])
        for o in outputs
    )


class _FileTail:
    """The text a growing file received since it was last read (UTF-8 split across reads
    decoded whole).

    Asked at every print of a silent run, so it asks cheaply: an lseek to the end of a
    description of its own (the writers' offset stays theirs), where fstat costs 3 times more.
    """

    def __init__(self, fd: int) -> None:
        self._fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        self._offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self, final: bool = False) -> str:
        size = os.lseek(self._fd, 0, os.SEEK_END)
        data = os.pread(self._fd, size - self._offset, self._offset) if size > self._offset else b""
        self._offset += len(data)
        return self._decoder.decode(data, final=final) if data or final else ""

    def close(self) -> None:
        os.close(self._fd)


def _on_another_request(owner: int) -> bool:
    """Whether the calling thread is handling another kernel request than the run's, which
    runs in thread `owner`. ipykernel runs subshell requests (JEP 91; JupyterLab 4.6 sends
    widget traffic there) in threads of their own while the main shell runs a component, and
    sys.stdout and the display publisher are process-wide: that output is its own cell's."""
    current = threading.current_thread()
    return current.ident != owner and (current is threading.main_thread() or isinstance(current, SubshellThread))


class _OutputWidgets:
    """The ipywidgets `Output` widgets alive, found again only when the set of widgets
    changed: asked on every write of a run, scanning every widget each time made a parent
    with twenty sliders print five times slower."""

    def __init__(self) -> None:
        self._seen: tuple[int, str | None] = (0, None)
        self._outputs: list[Any] = []

    def capturing(self) -> bool:
        """Whether output now goes into an `Output` widget (`with out: ...`).

        The widget takes the running request's message id as its own, and the frontend puts
        every output with that parent into the widget rather than the cell: such output must
        reach the frontend, also from a silent run, and is not the cell's to keep."""
        module = sys.modules.get("ipywidgets.widgets.widget_output")
        if module is None:
            return False
        instances = sys.modules["ipywidgets.widgets.widget"]._instances
        # New widgets are added last (a fresh id each): the count and the last id change
        # whenever the set of widgets does.
        seen = (len(instances), next(reversed(instances), None))
        if seen != self._seen:
            self._seen = seen
            self._outputs = [w for w in list(instances.values()) if isinstance(w, module.Output)]
        if not self._outputs:
            return False
        from IPython import get_ipython

        shell = get_ipython()
        parent = shell.get_parent() if shell is not None and hasattr(shell, "get_parent") else None
        msg_id = (parent or {}).get("header", {}).get("msg_id")
        return bool(msg_id) and any(w.msg_id == msg_id for w in self._outputs)


_into_output_widget = _OutputWidgets().capturing


class _Stream(io.TextIOBase):
    """sys.stdout or sys.stderr during a run, keeping what is written.

    It answers `name`, `encoding` and `fileno()` as ipykernel's stream does (io.TextIOBase
    would say None and raise): user code and libraries read them, e.g. tqdm and `%time`
    choose their characters by `encoding`, `subprocess.run(stdout=sys.stdout)` needs a
    descriptor. A silent run's descriptor is 1 or 2, which point at the capture then.

    What is not the run's goes to `kernel_stream`, the ipykernel stream this one replaced,
    which sends it to the cell it belongs to: writes of another request (a subshell's), and
    writes after the run ends (`logging.basicConfig()` keeps sys.stderr), once `detach`ed.
    """

    def __init__(self, outputs: Outputs, name: str, kernel_stream: Any, echo: bool = False) -> None:
        self._outputs: Outputs | None = outputs
        self._name, self._kernel = name, kernel_stream
        self._echo = kernel_stream if echo else None
        self._owner = threading.get_ident()

    def detach(self) -> None:
        """The run is over: keep nothing more, pass everything on to the kernel's stream."""
        self._outputs = None

    def _keeps(self) -> bool:
        """Whether a write now is the run's output, to keep."""
        return self._outputs is not None and not _on_another_request(self._owner) and not _into_output_widget()

    @property
    def name(self) -> str:
        return getattr(self._echo, "name", self._name)

    @property
    def encoding(self) -> str:
        return getattr(self._echo, "encoding", "UTF-8")

    def fileno(self) -> int:
        if self._echo is None:
            return 1 if self._name == "stdout" else 2
        return self._echo.fileno()

    def isatty(self) -> bool:
        return self._echo is not None and self._echo.isatty()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # ipykernel's error, the user's to see (not kept as output)
            raise blame_user(TypeError(f"write() argument must be str, not {type(text)}"))
        keep = self._keeps()
        if keep:
            self._outputs.stream(self._name, text)
        if self._echo is not None or not keep:
            self._kernel.write(text)
        return len(text)

    def flush(self) -> None:
        if self._echo is not None or not self._keeps():
            self._kernel.flush()

    def close(self) -> None:
        """Nothing to release: the kernel's stream is not ours to close, nor to flush here.

        io.IOBase's finalizer calls close(), and its close() flushes. The cyclic GC can
        finalize a stream whose run ended while ipykernel's OutStream.write holds the lock
        that OutStream.flush waits for: the cell froze for the flush timeout (10 s) each time.
        """

    def __getattr__(self, attr: str) -> Any:
        # set_parent and the like: ipykernel tells its stream which request is running
        return getattr(self._kernel, attr)


class _CapturingPublisher(DisplayPublisher):
    """The shell's display publisher during a silent run; another request's displays go to
    the kernel's publisher it replaced, which ipykernel also tells what request each runs."""

    def __init__(self, outputs: Outputs, kernel_publisher: Any) -> None:
        super().__init__()
        self._outputs, self._kernel = outputs, kernel_publisher
        self._owner = threading.get_ident()

    def set_parent(self, parent: dict) -> None:
        self._kernel.set_parent(parent)

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs) -> None:
        if _on_another_request(self._owner) or _into_output_widget():
            self._kernel.publish(data, metadata, transient=transient, update=update, **kwargs)
            return
        self._outputs.display(data, metadata, display_id=(transient or {}).get("display_id"), update=update)

    def clear_output(self, wait: bool = False) -> None:
        if _on_another_request(self._owner) or _into_output_widget():
            self._kernel.clear_output(wait)
            return
        self._outputs.clear(wait)


class _CapturingDisplayHook:
    """sys.displayhook during a silent run: the value of the cell's last expression, kept as
    the execute_result the cell would show (a parent ending in `df.head()` keeps its table).

    IPython's own displayhook would also bind `_`, `_N` and `Out[N]` under the number of the
    request that triggered the run: those are the notebook's history of what it showed, and
    a silent run shows nothing. Another request's values go to the kernel's hook it replaced.
    """

    def __init__(self, shell, outputs: Outputs, kernel_hook: Any) -> None:
        self._shell, self._outputs, self._kernel = shell, outputs, kernel_hook
        self._owner = threading.get_ident()

    def __call__(self, value: Any) -> None:
        if _on_another_request(self._owner):
            self._kernel(value)
            return
        if value is None or self._quiet():
            return
        data, metadata = self._shell.display_formatter.format(value)
        if data:
            self._outputs.display(data, metadata, "execute_result")

    def _quiet(self) -> bool:
        """A cell ending in `;` shows no value (IPython asks its input history, which a silent
        run does not write: the running cell is the shell's current execution result)."""
        result = self._shell.displayhook.exec_result
        if result is None:
            return False
        cell = result.info.transformed_cell or result.info.raw_cell
        return DisplayHook.semicolon_at_end_of_expression(cell)


@contextmanager
def _descriptors(targets: dict[int, int]) -> Iterator[dict[int, int]]:
    """Point fds 1 and 2 at `targets` for the block, flushing Python's and C's buffers on both
    sides of the switch; yields copies of where they pointed before (closed afterwards)."""
    _flush_before_switch(sys.stdout)
    _flush_before_switch(sys.stderr)
    _libc.fflush(None)
    before = {fd: os.dup(fd) for fd in targets}
    try:
        for fd, target in targets.items():
            os.dup2(target, fd)
        yield before
    finally:
        _libc.fflush(None)
        for fd, copy in before.items():
            os.dup2(copy, fd)
            os.close(copy)


def _flush_before_switch(stream: Any) -> None:
    """Flush what `stream` holds for fds 1 and 2 before they are switched. A live run's
    stream (`_Stream` echoing to ipykernel's) holds nothing for them unless ipykernel's
    echoes to a terminal: what it holds goes to the cell as messages, in the order written
    wherever the fds point, and flushing it waits for the kernel's I/O thread, twice for
    every component cell. Before a silent run, ipykernel's stream itself is flushed: what
    the cell printed so far goes out before the progress line changes."""
    echoed = stream._echo if isinstance(stream, _Stream) else None
    if isinstance(echoed, OutStream) and getattr(echoed, "echo", None) is None:
        return
    stream.flush()


def _capture_file() -> int:
    """A file for fd 1 or 2 of a silent run: a memfd where there are memfds; a temporary
    file on disk costs fifty times more, twice for every component a pipeline runs."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("linkkernel-capture", os.MFD_CLOEXEC)
    return os.dup(tempfile.TemporaryFile().fileno())  # the duplicate outlives the closed file object


@contextmanager
def _fd_redirect(outputs: Outputs) -> Iterator[None]:
    files = {fd: _capture_file() for fd in (1, 2)}
    try:
        for fd, file in files.items():
            outputs.follow("stdout" if fd == 1 else "stderr", file)
        with _descriptors(files):
            yield
    finally:
        outputs.unfollow()
        for file in files.values():
            os.close(file)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _reads_descriptor(stream: Any, fd: int) -> bool:
    """Whether `stream` is ipykernel's stream that reads what descriptor `fd` receives into
    the cell: ipykernel points fd 1 and 2 at pipes that a thread of its own reads (`_fid`,
    the read end, only while `_should_watch`)."""
    read_end = getattr(stream, "_fid", None)
    if not isinstance(stream, OutStream) or read_end is None or not getattr(stream, "_should_watch", False):
        return False
    try:
        ours, its = os.fstat(fd), os.fstat(read_end)
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (its.st_dev, its.st_ino)


class _Forward:
    """Where a live run's descriptor output goes on to: where the descriptor pointed before.

    When that is ipykernel's pipe, the output is handed to ipykernel's stream here instead,
    as its reading thread would (the text to the cell, the bytes to the kernel's own output).
    Passed through that pipe, it was read by that thread after the reply now and then: the
    end of a subprocess's output missed its cell (stock ipykernel, one pipe less, less often).
    Handed over here, all of it is in the stream before the run ends.
    """

    def __init__(self, before: int, kernel_stream: Any) -> None:
        self._stream = kernel_stream if _reads_descriptor(kernel_stream, before) else None
        self._fd = None if self._stream is not None else os.dup(before)

    def __call__(self, data: bytes, text: str) -> None:
        if self._stream is None:
            _write_all(self._fd, data)
            return
        if text:
            self._stream.write(text)
        with suppress(OSError):  # the kernel's own output closed: the cell has the text
            _write_all(self._stream.fileno(), data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


class _Pipe:
    """One pipe of a live run, passed on until every writer has closed it, its text kept."""

    def __init__(self, read_end: int, forward: _Forward, outputs: Outputs, name: str) -> None:
        self.read_end, self.forward, self.outputs, self.name = read_end, forward, outputs, name
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.done = threading.Event()

    def pass_on(self) -> bool:
        """Pass on what the pipe holds now; False once it is at its end."""
        chunk = os.read(self.read_end, 1 << 16)
        text = self.decoder.decode(chunk, final=not chunk)
        self.forward(chunk, text)
        self.outputs.stream(self.name, text)
        return bool(chunk)

    def close(self) -> None:
        try:
            os.close(self.read_end)
            self.forward.close()
        finally:
            self.done.set()


class _Pumps:
    """The thread that passes on the pipes of live runs (`_fd_tee`), one per process, started
    when first needed: a thread started and joined for each pipe of each run cost every
    component cell more than the rest of what the engine does for it."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)  # full: a wake-up is pending already
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._new: queue.SimpleQueue[_Pipe] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="linkkernel-pipes", daemon=True)
        self._thread.start()

    def follow(self, pipe: _Pipe) -> None:
        self._new.put(pipe)
        with suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    self._take_new()
                elif not self._pass_on(key.data):
                    self._selector.unregister(key.fileobj)
                    key.data.close()

    def _take_new(self) -> None:
        with suppress(BlockingIOError):
            os.read(self._wake_read, 1 << 12)
        while True:
            try:
                pipe = self._new.get_nowait()
            except queue.Empty:
                return
            self._selector.register(pipe.read_end, selectors.EVENT_READ, pipe)

    def _pass_on(self, pipe: _Pipe) -> bool:
        """`pipe.pass_on()`; an error of its own ends that pipe only, reported as the error
        of a thread is, and the other runs' pipes go on."""
        try:
            return pipe.pass_on()
        except Exception as exc:  # noqa: BLE001 - reported as threading reports a thread's
            threading.excepthook(threading.ExceptHookArgs((type(exc), exc, exc.__traceback__, self._thread)))
            return False


_pumps: tuple[int, _Pumps] | None = None
_pumps_lock = threading.Lock()


def _pumps_here() -> _Pumps:
    """This process's pumps: a process forked from one that had them has no thread of theirs."""
    global _pumps
    with _pumps_lock:
        if _pumps is None or _pumps[0] != os.getpid():
            _pumps = (os.getpid(), _Pumps())
        return _pumps[1]


# How long the end of a live run waits for output still in its pipes; a background process
# that keeps them open beyond that still reaches the cell, it is only not kept.
_DRAIN_TIMEOUT = 0.5


@contextmanager
def _fd_tee(outputs: Outputs, kernel_streams: dict[int, Any]) -> Iterator[None]:
    pumps = _pumps_here()
    pipes = {fd: os.pipe() for fd in (1, 2)}
    followed: list[_Pipe] = []
    try:
        with _descriptors({fd: write_end for fd, (_, write_end) in pipes.items()}) as before:
            for fd, (read_end, write_end) in pipes.items():
                os.close(write_end)  # fd 1 or 2 holds it now
                pipe = _Pipe(read_end, _Forward(before[fd], kernel_streams[fd]), outputs, "stdout" if fd == 1 else "stderr")
                pumps.follow(pipe)
                followed.append(pipe)
            yield
    finally:
        for pipe in followed:
            pipe.done.wait(_DRAIN_TIMEOUT)


@contextmanager
def captured(shell) -> Iterator[Outputs]:
    """Inside the block nothing reaches the frontend; the yielded Outputs collects it instead,
    the value of the cell's last expression included (run it with silent=False for that).

    Payloads too (`%load`'s next input, `?`'s pager): ipykernel sends the ones written by
    then with the reply of the cell, which would load or page the run's into that cell.
    Errors the run shows are kept in their place among the outputs (see `_errors_kept`).
    """
    outputs = Outputs()
    saved = sys.stdout, sys.stderr, shell.display_pub
    payloads = shell.payload_manager
    pending = list(payloads.read_payload())
    streams = _Stream(outputs, "stdout", sys.stdout), _Stream(outputs, "stderr", sys.stderr)
    trap = shell.display_trap
    saved_hooks = trap.hook, sys.displayhook
    with _fd_redirect(outputs), _errors_kept(shell, outputs):
        sys.stdout, sys.stderr = streams
        shell.display_pub = _CapturingPublisher(outputs, shell.display_pub)
        # The cell installs the trap's hook; already installed when a cell runs the pipeline (%link run).
        trap.hook = sys.displayhook = _CapturingDisplayHook(shell, outputs, shell.displayhook)
        try:
            yield outputs
        finally:
            sys.stdout, sys.stderr, shell.display_pub = saved
            trap.hook, sys.displayhook = saved_hooks
            for stream in streams:
                stream.detach()
            payloads.clear_payload()
            for payload in pending:
                payloads.write_payload(payload, single=False)


@contextmanager
def recorded(shell) -> Iterator[Outputs]:
    """Let output reach the frontend live as usual, and keep a copy of it as nbformat outputs.

    The execute_result is kept from the display hook's own message, so the user's reprs run
    once, as in ipykernel.
    """
    outputs = Outputs()
    saved = sys.stdout, sys.stderr

    def hook(msg: dict) -> dict:
        if _into_output_widget():
            return msg
        kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
        content = msg.get("content", {})
        if kind in ("display_data", "update_display_data", "execute_result"):
            display_id = (content.get("transient") or {}).get("display_id")
            outputs.display(content.get("data", {}), content.get("metadata"),
                            "execute_result" if kind == "execute_result" else "display_data",
                            display_id=display_id, update=kind == "update_display_data")
        elif kind == "clear_output":
            outputs.clear(bool(content.get("wait")))
        return msg

    hooked = [shell.display_pub, shell.displayhook]
    for publisher in hooked:
        publisher.register_hook(hook)
    streams = _Stream(outputs, "stdout", sys.stdout, echo=True), _Stream(outputs, "stderr", sys.stderr, echo=True)
    sys.stdout, sys.stderr = streams
    try:
        with _fd_tee(outputs, {1: saved[0], 2: saved[1]}), _errors_kept(shell, outputs):
            yield outputs
    finally:
        sys.stdout, sys.stderr = saved
        for stream in streams:
            stream.detach()
        for publisher in hooked:
            publisher.unregister_hook(hook)


def _errors_kept(shell, outputs: Outputs):
    """Every error the shell shows meanwhile, kept as an error output where it appeared: a
    cell can show one and still succeed (`%run` of a failing script, a `__repr__` that raises
    in `display()`), and a notebook keeps it among the cell's outputs."""
    return shell.errors_shown_to(lambda error: outputs.error(error.ename, error.evalue, error.traceback))
