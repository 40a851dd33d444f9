"""What the worker does when a task process dies or the worker is stopped, said and done exactly:
the cleanup after a dead task touches only what that task wrote, and a worker stopped while
kernels submit answers every submission. Real workers, real kernels, real signals."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from remote_support import WorkerProcess, remote_fixtures
from support import REPO, kernel_env

tmp, key_file, worker, kernel, nb = remote_fixtures("qa_accuracy", "qa-accuracy")


# ---------------------------------------------------------------- the cleanup after a dead task


def _temp_blob(store: Path, folder: str, stay: bool) -> tuple[Path, subprocess.Popen | None]:
    """A half-written blob file in `store`'s blob folder `folder`, named after another process
    than any task's: one that goes on writing (`stay`), or one that is gone."""
    script = textwrap.dedent("""
        import os, sys, time
        from linkkernel.partfiles import temp_name
        os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
        path = temp_name(sys.argv[1], "tmp")
        open(path, "wb").write(b"half a blob")
        print(path, flush=True)
        if sys.argv[2] == "stay":
            time.sleep(60)
    """)
    target = str(store / "blobs" / folder / (folder + "0" * 62))
    process = subprocess.Popen([sys.executable, "-c", script, target, "stay" if stay else "go"], stdout=subprocess.PIPE,
                               text=True, cwd=REPO, env=kernel_env())
    path = Path(process.stdout.readline().strip())
    if not stay:
        process.wait(10)
    return path, process if stay else None


def _crashes_while_writing(store: Path) -> str:
    """Component code making a 64 MB output whose task process kills itself as soon as it
    starts writing that output's blob (its own temporary file, told by its pid)."""
    return textwrap.dedent(f"""
        import os, signal, threading, time
        def watch():
            mine = f"-{{os.getpid()}}-"
            while True:
                for folder, _, files in os.walk({str(store)!r}):
                    if any(mine in name and name.endswith(".tmp") for name in files):
                        os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.0005)
        threading.Thread(target=watch, daemon=True).start()
        big = bytearray(64 << 20)
    """)


def _temp_files(store: Path) -> set[Path]:
    return set((store / "blobs").glob("*/*.tmp"))


def test_the_cleanup_after_a_crashed_task_removes_its_own_half_blob_and_nothing_else(nb, tmp, key_file):
    """A crashed task's half-written blob goes at once; temporary files it never wrote stay
    (a live writer's, and a dead one's in another folder: the cleanup did not look there),
    until a worker starting on the store sweeps every folder."""
    store = tmp / "store"
    live, writer = _temp_blob(store, "ee", stay=True)
    dead, _ = _temp_blob(store, "dd", stay=False)
    try:
        nb.add("crashes", _crashes_while_writing(store), remote="qa-accuracy", counted=False).use()
        result = nb.run("crashes", timeout=60)
        assert result.status == "error" and "SIGKILL" in result.traceback_text, result.traceback_text
        assert _temp_files(store) == {live, dead}
        WorkerProcess(str(store), key_file, tmp).stop()  # a worker starting sweeps the store
        assert _temp_files(store) == {live}
    finally:
        writer.kill()
        writer.wait(10)
