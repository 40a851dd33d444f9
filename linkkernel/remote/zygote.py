"""The making of a worker's task processes: forked ahead of time, wired, scheduled, reaped.

A task process is forked, before its task arrives, by a zygote: a single-threaded copy of
the worker made after it imported everything tasks share, so a task starts in milliseconds
yet runs in a fresh process whose memory and GPU go back to the machine when it exits. Here
are that zygote, the pipes between the worker and a task process, the scheduling that keeps
this background work out of the way of the worker relaying results, the huge pages that
make each fork cheaper, and how a task process's exit is described. What a task process
does once forked is the worker's, handed in as `become_task`, so the worker imports this
module and not the other way round.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import socket
import struct
from collections.abc import Callable
from typing import NoReturn

Spare = tuple[int, int, int, int, dict[int, str]]  # pid, pidfd, result pipe, task pipe, {pipe: stream}
# What a forked task process becomes, given its ends of the pipes: task, result, stdout,
# stderr. It never returns.
BecomeTask = Callable[[int, int, int, int], NoReturn]
PR_SET_PDEATHSIG = 1


@functools.cache
def _libc():
    """The C library, looked up once in the worker rather than in every task process."""
    import ctypes

    return ctypes.PyDLL(None, use_errno=True)


def set_parent_death_signal() -> None:
    """Linux: the task dies with the worker, so a killed worker leaves no orphan holding a GPU."""
    try:
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # no prctl(2) outside Linux


def _fork_single_threaded() -> int:
    """fork(2) without Python's before/after-fork hooks, for the zygote only.

    os.fork re-initialises the interpreter's locks and runs every registered at-fork handler
    (threading, logging, random, fsspec...) in the child, which touches hundreds of inherited
    pages: ~1 ms of copy-on-write faults per task process here. The zygote has a single
    thread and holds no lock while it forks, so there is nothing to re-initialise; the one
    handler whose effect matters, reseeding `random`, is done by the task process itself
    (taskprocess.warm_up).
    """
    pid = _libc().fork()
    if pid < 0:
        import ctypes

        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return pid


def read_exactly(fd: int, size: int) -> bytes:
    """`size` bytes from the pipe `fd`, fewer only at its end. Plain reads, not a file object:
    making one in each task process costs ~25 copy-on-write faults (~0.1 ms)."""
    data = os.read(fd, size)
    while 0 < len(data) < size and (more := os.read(fd, size - len(data))):
        data += more
    return data


def _task_pipes() -> list[tuple[int, int]]:
    """The pipes of a new task process, (read, write) each: task, result, stdout, stderr."""
    return [os.pipe() for _ in range(4)]


def _child_ends(pipes: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    """What the task process keeps: it reads its task and writes its result and streams."""
    return pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]


def _parent_ends(pipes: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    """What the worker keeps: it writes the task and reads the result and streams."""
    return pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]


def _spare(pid: int, task_write: int, out_read: int, stdout_read: int, stderr_read: int) -> Spare:
    """A task process waiting for its task, as the worker holds it: what it reads, non-blocking."""
    for fd in (out_read, stdout_read, stderr_read):
        os.set_blocking(fd, False)
    return pid, os.pidfd_open(pid), out_read, task_write, {stdout_read: "stdout", stderr_read: "stderr"}


def discard(spare: Spare) -> None:
    """Let go of an unused task process: kill it and close our ends of its pipes."""
    pid, pidfd, out_read, task_write, streams = spare
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for fd in (pidfd, out_read, task_write, *streams):
        os.close(fd)


# sched_setattr(2), which glibc before 2.41 does not wrap: its number on this machine, looked up
# once in the worker rather than twice in every task process (None: not known here).
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}.get(os.uname().machine)
_LONG_SLICE_NS = 20_000_000


def set_policy(policy: int, background: bool = False) -> None:
    """This process's scheduling: `background` work (the zygote forking and a spare warming
    up, SCHED_BATCH; a task process whose result is sent) asks for a long time slice.

    Linux (EEVDF, 6.12 and later) lets a process that wakes with a shorter slice than the one
    running preempt it at once; otherwise the running one keeps the CPU for the rest of its
    slice (1.4 ms here), and on 2 cores the worker relaying a result, and the kernel reading
    it, waited behind a spare warming up or a task process exiting. A lower priority would
    do that too, but a process ending with it gave its memory back slowly on a busy worker
    (4 GB: 8.3 s instead of 0.1 s beside two busy tasks). Where the call is not known, only
    the policy is set."""
    attr = struct.pack("IIQiIQQQ", 48, policy, 0, 0, 0, _LONG_SLICE_NS if background else 0, 0, 0)
    if _SCHED_SETATTR is not None and _libc().syscall(_SCHED_SETATTR, 0, attr, 0) == 0:
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except (OSError, AttributeError):
        pass  # not Linux, or not allowed: everything still works, only less smoothly


def step_aside() -> None:
    """For a task process about to send its result, with only its exit left after it: the
    worker relaying the result and the kernel reading it come first, and its memory still
    goes back at once however busy the machine is."""
    set_policy(os.SCHED_OTHER, background=True)


def _plain_logging() -> None:
    """Logging as in a fresh Python, for task processes, as in a kernel: the worker's INFO
    handler would put the user's logging.info and its libraries' chatter in the cell,
    prefixed `linkkernel worker:`."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


MADV_COLLAPSE = 25  # Linux >= 6.1
_HUGE_PAGE = 2 << 20


def _collapse_into_huge_pages() -> None:
    """Back the zygote's private memory with 2 MB pages wherever the kernel agrees.

    Forking copies one page-table entry per 4 KB page and every task process's exit drops
    them all again: a fifth of all CPU time when tasks run back to back, for a worker that has
    IPython and numpy loaded. A huge page is one entry. A task process still copies only the
    4 KB pages it writes. Best effort: a range the kernel refuses (or an older kernel) stays
    as it was; the cost is the unused rest of each collapsed 2 MB, once.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
    except OSError:
        return
    for line in maps:
        fields = line.split()
        if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
            continue  # only anonymous private memory and the malloc heap
        start, end = (int(address, 16) for address in fields[0].split("-"))
        first, last = -(-start // _HUGE_PAGE) * _HUGE_PAGE, end // _HUGE_PAGE * _HUGE_PAGE
        if first < last:
            _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_COLLAPSE)


class Zygote:
    """A copy of the pre-loaded worker that forks task processes in parallel with the
    worker's loop, so even back-to-back tasks never wait for a fork (3-6 ms here).

    Task processes are its children: it reaps each one and reports how it exited (the worker
    names the signal). Messages on its SOCK_SEQPACKET socket: b"spare PID" with the task
    process's four pipe ends attached, and b"exit PID STATUS". Each task process it forks
    becomes a task through `become_task`, the worker's.
    """

    def __init__(self, become_task: BecomeTask) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pending = False
        self.alive = True
        gc.collect()
        gc.freeze()
        self.pid = os.fork()
        if self.pid == 0:
            code = 0
            try:
                self.sock.close()
                set_parent_death_signal()
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                set_policy(os.SCHED_BATCH, background=True)
                _plain_logging()  # once here rather than in each task process
                _collapse_into_huge_pages()
                self._serve(become_task, theirs)
            except BaseException:  # noqa: BLE001 - nothing may escape a forked child into the worker loop
                code = 70
            finally:
                os._exit(code)
        theirs.close()

    @staticmethod
    def _serve(become_task: BecomeTask, sock: socket.socket) -> None:
        """Fork a task process per request; report each one's exit.

        Exits are watched through pidfds rather than a SIGCHLD handler: a task process then
        inherits no handler to reset, and resetting one costs ~0.2 ms of copy-on-write per
        task (signal.signal converts the old handler through an enum lookup that raises).
        """
        import select

        tasks: dict[int, int] = {}  # pidfd: pid of each task process not yet reaped
        while True:
            ready, _, _ = select.select([sock, *tasks], [], [])
            for pidfd in ready:
                if pidfd in tasks:
                    pid = tasks.pop(pidfd)
                    os.close(pidfd)
                    sock.send(f"exit {pid} {os.waitpid(pid, 0)[1]}".encode())
            if sock not in ready:
                continue
            if not sock.recv(1):
                return
            pipes = _task_pipes()
            pid = _fork_single_threaded()
            if pid == 0:
                sock.close()
                for fd in (*tasks, *_parent_ends(pipes)):
                    os.close(fd)
                become_task(*_child_ends(pipes))
            tasks[os.pidfd_open(pid)] = pid
            socket.send_fds(sock, [f"spare {pid}".encode()], list(_parent_ends(pipes)))
            for read_end, write_end in pipes:
                os.close(read_end)
                os.close(write_end)

    def request(self) -> None:
        if not self.pending:
            self.sock.send(b"f")
            self.pending = True

    def receive(self, timeout: float, exits: dict[int, int]) -> Spare | None:
        """Wait up to `timeout` for the zygote to say something, then read all it said:
        exit statuses go into `exits`; a new task process is returned."""
        spare = None
        self.sock.settimeout(timeout)
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self.sock, 64, 4)
            except OSError:  # nothing (more) there, or the zygote is gone
                return spare
            if not message:  # the zygote is gone
                self.alive = False
                return spare
            self.sock.settimeout(0)
            kind, *fields = message.split()
            if kind == b"exit" and len(fields) == 2:
                exits[int(fields[0])] = int(fields[1])
            elif kind == b"spare" and len(fds) == 4 and spare is None:
                self.pending = False
                spare = _spare(int(fields[0]), *fds)
            else:
                for fd in fds:
                    os.close(fd)

    def stop(self) -> None:
        self.sock.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def fork_spare(become_task: BecomeTask) -> Spare:
    """A new task process forked from the worker itself, waiting for its task."""
    pipes = _task_pipes()
    # Objects the parent made so far are left out of the child's garbage collections,
    # which would otherwise write to (and so copy) nearly every page it inherited. The
    # collection first keeps the parent's own garbage from being frozen for good; it only
    # scans what was made since the last freeze, so it is cheap.
    gc.collect()
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        for fd in _parent_ends(pipes):
            os.close(fd)
        _plain_logging()
        become_task(*_child_ends(pipes))
    for fd in _child_ends(pipes):
        os.close(fd)
    try:
        os.setpgid(pid, pid)
    except (PermissionError, ProcessLookupError):
        pass  # the child already did it, or already exited
    return _spare(pid, *_parent_ends(pipes))


def describe_exit(status: int) -> str:
    """How a task process ended, naming the signal that killed it."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hint = " (killed from outside: the out-of-memory killer, or a kill -9)" if number == signal.SIGKILL else ""
        return f"task process crashed with {name}{hint}"
    return f"task process exited with status {os.WEXITSTATUS(status)} before reporting a result"
