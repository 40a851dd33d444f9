"""Crashes, interrupts and full disks: linkkernel loses nothing and says one clear line.

Real kernels, real workers, real `kill -9`, and (as root) a real full disk: a small tmpfs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from engine_support import Notebook, value
from remote_support import remote_fixtures, wait_until
from support import REPO, Kernel, kernel_env

tmp, key_file, worker, kernel, nb = remote_fixtures("qa_crash", "qa-crash")


def _mount(folder: Path, *options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs can only be mounted as root")
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=2m", *options]), "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system of this test's own."""
    folder = tmp_path / "disk"
    _mount(folder)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".tmp")))


def _writer(script: str, *args: str) -> subprocess.Popen:
    """A Python process running `script`, stopped mid-write once it prints 'writing'."""
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE, text=True,
                               cwd=REPO, env=kernel_env())
    assert process.stdout.readline().strip() == "writing"
    return process


def _kill_9(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


# ---------------------------------------------------------------- 1. partial files of dead writers


def test_a_cache_write_killed_midway_leaves_no_part_file_once_the_store_opens_again(tmp_path):
    from linkkernel.store import CacheStore

    cache, notebook = str(tmp_path / "cache"), str(tmp_path / "nb.ipynb")
    writer = _writer("""
        import sys, time
        from linkkernel.store import CacheStore
        store = CacheStore(sys.argv[1], sys.argv[2])
        def slow_disk(f):
            f.write(b"half a blob"); f.flush(); print("writing", flush=True); time.sleep(60)
        store._write_aside(store.root + "/blobs/ab/abcdef", slow_disk)
    """, cache, notebook)
    try:
        root = Path(CacheStore(cache, notebook).root)
        CacheStore(cache, notebook).flush()
        assert len(_leftovers(root)) == 1  # a live writer's file is its own business
    finally:
        _kill_9(writer)
    CacheStore(cache, notebook).flush()
    assert _leftovers(root) == []


def test_a_blob_write_to_the_shared_storage_killed_midway_is_removed_when_the_storage_opens(tmp_path):
    from linkkernel.remote.storage import Store

    folder = tmp_path / "store"
    writer = _writer("""
        import sys, time
        from linkkernel.remote.storage import Store
        from linkkernel.namespaces import dump
        def slow_disk(self, f, *args):
            f.write(b"half a blob"); f.flush(); print("writing", flush=True); time.sleep(60)
        Store._write_frames = slow_disk
        Store(sys.argv[1], b"k" * 32).put(dump("x", 42))
    """, str(folder))
    try:
        Store(str(folder), b"k" * 32).check()
        assert len(_leftovers(folder)) == 1
    finally:
        _kill_9(writer)
    Store(str(folder), b"k" * 32).check()
    assert _leftovers(folder) == []


def test_a_file_written_atomically_by_a_killed_process_is_cleaned_when_written_again(tmp_path):
    from linkkernel.sharing.commandline import write_atomically

    target = tmp_path / "out.json"
    writer = _writer("""
        import os, sys, time
        from linkkernel.sharing import commandline
        def slow_rename(src, dst):
            print("writing", flush=True); time.sleep(60)
        commandline.os.replace = slow_rename
        commandline.write_atomically(sys.argv[1], b"{}")
    """, str(target))
    _kill_9(writer)
    assert len(_leftovers(tmp_path)) == 1
    write_atomically(target, b"[]")
    assert _leftovers(tmp_path) == [] and target.read_bytes() == b"[]"


# ---------------------------------------------------------------- 2. the worker's killed task processes


def _crashing_writer(store: Path, then: str) -> str:
    """Component code making a 64 MB output; as soon as the task process starts writing its
    blob into the shared storage, a thread of the process does `then` to it."""
    return textwrap.dedent(f"""
        import os, signal, threading, time
        def watch():
            while True:
                for folder, _, files in os.walk({str(store)!r}):
                    if any(name.endswith((".tmp", ".part")) for name in files):
                        {then}
                time.sleep(0.0005)
        threading.Thread(target=watch, daemon=True).start()
        big = bytearray(64 << 20)
    """)


def test_a_task_process_that_crashes_while_writing_its_result_leaves_no_partial_blob(nb, tmp):
    store = tmp / "store"
    nb.add("crashes", _crashing_writer(store, "os.kill(os.getpid(), signal.SIGKILL)"), remote="qa-crash", counted=False).use()
    result = nb.run("crashes", timeout=60)
    assert result.status == "error"
    assert "SIGKILL" in result.traceback_text
    assert _leftovers(store) == []


def test_a_task_process_cancelled_while_writing_its_result_leaves_no_partial_blob(nb, tmp):
    store, stopped = tmp / "store", tmp / "stopped"
    then = f"open({str(stopped)!r}, 'w').close(); os.kill(os.getpid(), signal.SIGSTOP)"
    nb.add("cancelled", _crashing_writer(store, then), remote="qa-crash", counted=False).use()

    def interrupt_once_stopped():
        assert wait_until(stopped.exists, timeout=30)
        nb.kernel.manager.interrupt_kernel()

    thread = threading.Thread(target=interrupt_once_stopped)
    thread.start()
    result = nb.run("cancelled", timeout=60)
    thread.join()
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert wait_until(lambda: _leftovers(store) == [], timeout=5), _leftovers(store)


# ---------------------------------------------------------------- 3, 5. interrupts


SLOW_TO_LOAD = "import time\nclass SlowToLoad:\n    def __reduce__(self):\n        return (time.sleep, (30,))\n"


def test_interrupt_while_the_kernel_reads_the_notebook_is_a_keyboard_interrupt(nb):
    nb.add("reads", "x = 1", counted=False).use()
    nb.path.unlink()
    os.mkfifo(nb.path)  # opening it waits for a writer: the read never ends by itself
    result = nb.run("reads", interrupt_after=1.5, timeout=30)
    nb.path.unlink()
    assert result.status == "error"
    assert result.reply["content"]["ename"] == "KeyboardInterrupt", result.traceback_text
    assert "linkkernel" not in result.traceback_text.replace("Link", "")
    nb.save()
    assert nb.run("reads").status == "ok"


def test_interrupt_while_a_components_inputs_load_says_so(nb):
    nb.add("slow_parent", SLOW_TO_LOAD + "s = SlowToLoad()", counted=False).add("child", "y = 1", "slow_parent").use()
    assert nb.run("slow_parent").status == "ok"
    result = nb.run("child", interrupt_after=1.5, timeout=30)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert result.traceback_text.strip() == (
        "KeyboardInterrupt: interrupted while loading the inputs of component 'child'; nothing half-run was kept"
    )


def test_interrupt_while_a_component_publishes_its_values_publishes_none_of_them(nb):
    nb.kernel.execute("a = 'before'")
    code = ("import time, copy\nclass SlowToCopy:\n    def __reduce__(self):\n        raise TypeError('not picklable')\n"
            "    def __deepcopy__(self, memo):\n        time.sleep(30)\n        return self\na = 'after'\nkept = SlowToCopy()")
    nb.add("publishes", code, counted=False).use()
    result = nb.run("publishes", interrupt_after=2, timeout=30)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert value(nb.kernel, "a") == "before"
    assert value(nb.kernel, "'kept' in globals()") is False


def test_interrupt_while_cached_values_are_published_after_a_restart_publishes_none(nb):
    nb.add("parent", SLOW_TO_LOAD + "a = 'after'\nslow = SlowToLoad()", counted=False).add("child", "pass", "parent").use()
    assert nb.run("parent").status == "ok"
    # as JupyterLab restarts: a shutdown_request, so the cache written after the reply lands
    # first (a kill right after the reply could lose the parent's record: nothing to publish)
    nb.kernel.restart_as_jupyterlab()
    nb.use()
    nb.kernel.execute("a = 'before'")
    result = nb.run("child", interrupt_after=1.5, timeout=30)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert value(nb.kernel, "a") == "before"


# The interrupt button pressed in the very instant a run is recorded: the kernel's own store,
# patched by a plain cell of the test, sends the SIGINT from inside `put`, once.
INTERRUPT_WHILE_RECORDED = textwrap.dedent("""
    import os, signal
    import linkkernel.store as _store
    _put = _store.CacheStore.put
    def _interrupting_put(self, *args):
        _store.CacheStore.put = _put
        os.kill(os.getpid(), signal.SIGINT)
        return _put(self, *args)
    _store.CacheStore.put = _interrupting_put
""")


def _states(kernel) -> dict[str, str]:
    return {row.split()[0]: row.split()[2] for row in kernel.execute("%link status").stdout.splitlines()[1:]}


def test_an_interrupt_while_a_run_is_recorded_says_the_run_was_kept_and_it_is(nb):
    nb.add("kept", "x = 42\nprint('ran')").add("child", "y = x + 1", "kept").use()
    assert nb.kernel.execute(INTERRUPT_WHILE_RECORDED).status == "ok"
    result = nb.run("kept", timeout=30)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert result.traceback_text.strip() == "KeyboardInterrupt: interrupted just after component 'kept' ran; its run was kept"
    assert result.stdout == "ran\n"
    assert result.reply["content"]["execution_count"] == result.of_type("execute_input")[0]["execution_count"]
    assert value(nb.kernel, "x") == 42
    assert _states(nb.kernel)["kept"] == "fresh"
    nb.runs()
    nb.kernel.restart()
    nb.use()
    assert _states(nb.kernel)["kept"] == "fresh"
    assert nb.run("child").status == "ok"
    assert nb.runs() == ["child"]  # kept in the cache: not run again


def test_an_interrupt_while_a_parents_run_is_recorded_names_the_parent_kept(nb):
    nb.add("parent", "x = 1").add("child", "y = x + 1", "parent").use()
    assert nb.kernel.execute(INTERRUPT_WHILE_RECORDED).status == "ok"
    result = nb.run("child", timeout=30)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert result.traceback_text.strip() == (
        "KeyboardInterrupt: interrupted while running parent components; 'parent' ran and was kept, nothing half-run was kept"
    )
    assert nb.runs() == ["parent"]
    assert _states(nb.kernel) == {"parent": "fresh", "child": "never"}
    assert value(nb.kernel, "x") == 1


# ---------------------------------------------------------------- 6, 7, 8. full and read-only disks


@pytest.fixture
def disk_kernel(small_disk):
    k = Kernel(LINKKERNEL_CACHE=str(small_disk / "cache"))
    yield k
    k.shutdown()


def test_a_full_disk_is_said_in_the_cell_and_the_results_stay_in_memory(disk_kernel, small_disk, tmp_path):
    nb = Notebook(disk_kernel, tmp_path / "full.ipynb")
    nb.add("big", "big = bytearray(3 << 20)", counted=False).add("child", "n = len(big)", "big", counted=False)
    nb.add("bigger", "bigger = bytearray(3 << 20)", "child", counted=False).use()
    first = nb.run("big")
    assert first.status == "ok"
    lines = [line for line in first.stderr.splitlines() if line]
    assert len(lines) == 1 and "disk is full" in lines[0] and "kept in memory only" in lines[0], first.stderr
    assert "Errno" not in lines[0] and "Traceback" not in first.stderr
    assert value(disk_kernel, "len(big)") == 3 << 20
    # `child`'s small result is written, so the outage was over; `bigger`'s is not: said again,
    # once, in the cell whose results it loses (test_qa_left covers the outages in detail).
    second = nb.run("bigger")
    lines = [line for line in second.stderr.splitlines() if line]
    assert second.status == "ok" and len(lines) == 1 and "disk is full" in lines[0], second.stderr
    assert value(disk_kernel, "n") == 3 << 20 and value(disk_kernel, "len(bigger)") == 3 << 20
    assert _leftovers(small_disk) == []


def test_clearing_a_read_only_cache_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    _mount(folder)
    try:
        k = Kernel(LINKKERNEL_CACHE=str(folder / "cache"))
        try:
            nb = Notebook(k, tmp_path / "ro.ipynb").add("x", "x = 1", counted=False).use()
            assert nb.run("x").status == "ok"
            k.execute("%link status")  # the write has landed by the next cell
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
            result = k.execute("%link cache clear")
            assert result.status == "error"
            text = result.traceback_text.strip()
            assert len(text.splitlines()) == 1 and "Read-only file system" in text, text
            assert "cannot clear the component cache" in text and "internal error" not in text
        finally:
            k.shutdown()
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_importing_a_cache_onto_a_full_disk_keeps_the_results_in_memory(kernel, disk_kernel, tmp_path):
    nb = Notebook(kernel, tmp_path / "share.ipynb").add("big", "big = bytearray(3 << 20)", counted=False).use()
    assert nb.run("big").status == "ok"
    archive = tmp_path / "big.tar.gz"
    assert kernel.execute(f"%link cache export {archive}").status == "ok"
    kernel.execute(f"%link notebook {tmp_path / 'none.ipynb'}")
    there = Notebook(disk_kernel, nb.path).add("big", "big = bytearray(3 << 20)", counted=False).use()
    there.add("child", "n = len(big)", "big", counted=False).save()
    imported = disk_kernel.execute(f"%link cache import {archive}")
    assert imported.status == "ok", imported.traceback_text
    assert "kept in memory only" in imported.stdout + imported.stderr
    child = there.run("child")
    assert child.status == "ok", child.traceback_text
    assert not any("running parent" in d["data"].get("text/plain", "") for d in child.displays)  # "big" was imported
    assert value(disk_kernel, "n") == 3 << 20


# ---------------------------------------------------------------- 4. tracebacks


def test_interrupting_link_run_while_inputs_load_is_a_keyboard_interrupt(nb):
    nb.add("slow_parent", SLOW_TO_LOAD + "s = SlowToLoad()", counted=False).add("child", "y = 1", "slow_parent").use()
    assert nb.run("slow_parent").status == "ok"
    result = nb.kernel.execute("%link run child", interrupt_after=1.5, timeout=30)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"


def test_a_mirror_file_a_killed_kernel_was_writing_goes_when_the_mirror_makes_room(tmp_path):
    from linkkernel.remote.mirror import Mirror

    folder = tmp_path / "mirror"
    writer = _writer("""
        import os, sys, time
        from linkkernel.partfiles import temp_name
        os.makedirs(sys.argv[1] + "/blobs/ab")
        open(temp_name(sys.argv[1] + "/blobs/ab/abcdef", "tmp"), "wb").write(b"half a blob")
        print("writing", flush=True); time.sleep(60)
    """, str(folder))
    try:
        assert Mirror(str(folder)).make_room(1) and len(_leftovers(folder)) == 1
    finally:
        _kill_9(writer)
    assert Mirror(str(folder)).make_room(1) and _leftovers(folder) == []
