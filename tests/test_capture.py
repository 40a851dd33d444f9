"""Capture streams without a kernel: what a component's sys.stdout does when it goes away."""

from __future__ import annotations

import gc
import io

from linkkernel.capture import Outputs, _Stream


class _KernelStream(io.StringIO):
    """Stands for ipykernel's OutStream, whose flush waits for its I/O thread."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_a_capture_stream_collected_in_a_cycle_does_not_flush_the_kernels_stream():
    # io.IOBase's finalizer closes, and closing flushes. The cyclic GC may finalize a capture
    # stream inside ipykernel's OutStream.write, which holds the lock its flush then waits
    # 10 s for: every such collection froze the cell.
    kernel_stream, outputs = _KernelStream(), Outputs()
    stream = _Stream(outputs, "stdout", kernel_stream, echo=True)
    stream.write("kept\n")
    stream.cycle = stream
    del stream
    gc.collect()
    assert kernel_stream.flushes == 0
    assert kernel_stream.getvalue() == "kept\n" and outputs.items == [{"output_type": "stream", "name": "stdout", "text": "kept\n"}]


def test_closing_a_capture_stream_leaves_the_kernels_stream_open():
    kernel_stream = _KernelStream()
    stream = _Stream(Outputs(), "stderr", kernel_stream, echo=True)
    stream.close()
    assert kernel_stream.flushes == 0 and not kernel_stream.closed
    stream.flush()  # an explicit flush still goes through
    assert kernel_stream.flushes == 1


class _Forwarded:
    """Where a pipe's output goes on to; `fails` makes passing it on raise, as a closed
    kernel stream would."""

    def __init__(self, fails: bool = False) -> None:
        self.fails, self.text, self.closed = fails, "", False

    def __call__(self, data: bytes, text: str) -> None:
        if self.fails:
            raise ValueError("cannot pass this on")
        self.text += text

    def close(self) -> None:
        self.closed = True


def test_the_pipes_of_live_runs_share_one_thread_and_one_failing_stops_no_other(monkeypatch):
    """Live runs' descriptor output is passed on by one thread of the process, not two new
    threads per cell: a pipe whose output cannot be passed on is reported as a thread's
    error and closed, and the other pipes go on."""
    import os
    import threading

    from linkkernel.capture import _Pipe, _pumps_here

    reported = []
    monkeypatch.setattr(threading, "excepthook", reported.append)
    outputs = Outputs()
    (bad_read, bad_write), (good_read, good_write) = os.pipe(), os.pipe()
    bad, good = _Pipe(bad_read, _Forwarded(fails=True), outputs, "stdout"), _Pipe(good_read, _Forwarded(), outputs, "stderr")
    pumps = _pumps_here()
    assert _pumps_here() is pumps
    pumps.follow(bad)
    pumps.follow(good)
    os.write(bad_write, b"lost\n")
    assert bad.done.wait(5) and bad.forward.closed
    assert [args.exc_type for args in reported] == [ValueError]
    os.write(good_write, "passed on \u00e9\n".encode())
    os.close(good_write)
    assert good.done.wait(5) and good.forward.closed
    assert good.forward.text == "passed on \u00e9\n"
    assert outputs.items == [{"output_type": "stream", "name": "stderr", "text": "passed on \u00e9\n"}]
    os.close(bad_write)
