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
