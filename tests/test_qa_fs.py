"""QA on an untidy machine: full disks, awkward paths, notebooks moved under a running kernel,
and what a long session leaves open.

Real kernels, real commands, real git, and (as root) real small file systems (tmpfs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine_support import Notebook, value
from git_support import Repo
from linkkernel.remote import registry
from linkkernel.store import notebook_key
from remote_support import WorkerProcess, descendants, make_key, wait_until
from support import Kernel, kernel_env

# A notebook name a file system takes (NAME_MAX is 255 bytes) with room for ".out" and ".json".
LONG = "résultats " + "L" * 230


def notebook_json() -> dict:
    """A two-component pipeline as JupyterLab saves it."""
    def cell(name: str, source: str, *parents: str) -> dict:
        tags = [f"component:{name}", *(f"parent:{p}" for p in parents)]
        return {"cell_type": "code", "id": f"id-{name}", "metadata": {"tags": tags}, "source": source,
                "outputs": [], "execution_count": None}

    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "link-python", "display_name": "Link Python", "language": "python"}},
            "cells": [cell("load", "x = 1\nprint('loaded')"), cell("train", "y = x + 1\ny", "load")]}


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linkkernel.cli", *args], cwd=cwd, env=kernel_env(**env),
                          capture_output=True, text=True, errors="replace", timeout=180)


# ---------------------------------------------------------------- 2. paths


def test_outputs_named_near_the_longest_name_a_file_system_takes_are_written(tmp_path: Path):
    assert len(os.fsencode(LONG + ".ipynb.json")) <= 255
    (tmp_path / f"{LONG}.ipynb").write_text(json.dumps(notebook_json()))
    exported = cli("export", f"{LONG}.ipynb", "-o", f"{LONG}.ipynb.json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / f"{LONG}.ipynb.json").read_text())["components"][0]["name"] == "load"
    imported = cli("import", f"{LONG}.ipynb.json", "-o", f"{LONG}.new.ipynb", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{LONG}.ipynb", f"{LONG}.ipynb.json", f"{LONG}.new.ipynb"])


def test_link_run_of_a_notebook_named_near_the_limit_in_wide_characters_writes_it(tmp_path: Path):
    name = "数" * 80  # 240 bytes: ".out.ipynb" still fits
    (tmp_path / f"{name}.ipynb").write_text(json.dumps(notebook_json()))
    done = cli("run", f"{name}.ipynb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    executed = json.loads((tmp_path / f"{name}.out.ipynb").read_text())
    assert executed["cells"][1]["outputs"][0]["data"]["text/plain"] in ("2", ["2"])


def test_link_notebook_takes_a_path_with_spaces_as_typed(link_kernelspec, tmp_path: Path):
    """`%link notebook My Analysis #2.ipynb`, as `%cd My Folder` takes it: the rest of the line
    is the path; quoted, it is the same path."""
    folder = tmp_path / "my data 'q' % ü"
    folder.mkdir()
    nb = Notebook(None, folder / "My Analysis #2.ipynb", counter=tmp_path / "runs").add("a", "x = 1").add("b", "y = x + 1", "a").save()
    nb.kernel = kernel = Kernel(LINKKERNEL_CACHE=str(tmp_path / "cache"), cwd=str(folder))
    try:
        shown = kernel.execute("%link notebook My Analysis #2.ipynb")
        assert shown.status == "ok", shown.traceback_text
        assert shown.stdout.startswith(f"notebook: {nb.path}\n")
        assert nb.run("b").status == "ok" and nb.runs() == ["a", "b"]
        assert kernel.execute(f'%link notebook "{nb.path}"').stdout.startswith(f"notebook: {nb.path}\n")
        assert nb.run("b").status == "ok" and nb.runs() == ["b"]  # the same notebook: its parent still fresh
    finally:
        kernel.shutdown()


def test_a_notebook_opened_through_a_link_shares_its_cache_with_its_real_path(link_kernelspec, tmp_path: Path):
    """~/work linked to /data/work: JupyterLab opens the notebook by one path, a terminal's
    `linkkernel run` by the other; the same file is one cache (it was two: every component
    ran again on the other side)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "work").symlink_to(tmp_path / "data")
    nb = Notebook(None, tmp_path / "data" / "nb.ipynb", counter=tmp_path / "runs")
    nb.add("a", "x = 1").add("b", "y = x + 1", "a").save()
    cache = {"LINKKERNEL_CACHE": str(tmp_path / "cache")}
    done = cli("run", "data/nb.ipynb", cwd=tmp_path, **cache)
    assert done.returncode == 0, done.stderr
    assert nb.runs() == ["a", "b"]
    nb.kernel = kernel = Kernel(JPY_SESSION_NAME=str(tmp_path / "work" / "nb.ipynb"), **cache)
    try:
        assert nb.run("b").status == "ok"
        assert nb.runs() == ["b"]
        assert str(tmp_path / "work" / "nb.ipynb") in kernel.execute("%link notebook").stdout  # as the user named it
    finally:
        kernel.shutdown()


def test_a_notebook_whose_name_is_not_utf8_runs_and_caches(link_kernelspec, tmp_path: Path):
    """A name from an old Latin-1 archive or a Windows share: bytes that are not UTF-8 (Python
    holds them as surrogates). The cache key hashed it as UTF-8 and failed with a traceback."""
    name = os.fsdecode(b"caf\xe9.ipynb")
    (tmp_path / name).write_text(json.dumps(notebook_json()))
    cache = {"LINKKERNEL_CACHE": str(tmp_path / "cache")}
    # as in a terminal whose locale is en_US.UTF-8 (C.UTF-8 here lets Python's stdout pass any byte)
    done = cli("run", name, cwd=tmp_path, PYTHONIOENCODING="utf-8:strict", **cache)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.splitlines()[-1] == "executed notebook written to caf\ufffd.out.ipynb"
    exported = cli("cache", "export", name, "-o", "results.tar.gz", cwd=tmp_path, **cache)
    assert exported.returncode == 0, exported.stderr
    nb = Notebook(None, tmp_path / name, counter=tmp_path / "runs").add("a", "x = 1").add("b", "y = x + 1", "a").save()
    nb.kernel = kernel = Kernel(LINKKERNEL_NOTEBOOK=str(nb.path), **cache)
    try:
        assert nb.run("b").status == "ok" and nb.runs() == ["a", "b"]
        kernel.restart_as_jupyterlab()
        assert nb.run("b").status == "ok" and nb.runs() == ["b"]
    finally:
        kernel.shutdown()


def test_log_and_html_diff_of_a_notebook_whose_name_is_not_utf8(tmp_path: Path):
    repo = Repo(tmp_path)
    name = os.fsdecode(b"caf\xe9.ipynb")
    first = notebook_json()
    repo.commit(first, "first", name=name)
    second = notebook_json()
    second["cells"][0]["source"] = "x = 2\nprint('loaded')"
    repo.commit(second, "second", name=name)
    (repo.path / "old.ipynb").write_text(json.dumps(first))

    def linkkernel(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "linkkernel.cli", *args], cwd=repo.path, env=repo.env,
                              capture_output=True, text=True, errors="surrogateescape")

    log = linkkernel("log", name)
    assert log.returncode == 0 and "Traceback" not in log.stderr, log.stderr
    assert "+x = 2" in log.stdout and "second" in log.stdout
    page = os.fsdecode(b"diff-\xe9.html")
    diff = linkkernel("diff", "old.ipynb", name, "--html", page)
    assert diff.returncode == 0 and "Traceback" not in diff.stderr, diff.stderr
    assert "x = 2" in (repo.path / page).read_text(encoding="utf-8")


# ---------------------------------------------------------------- 1. full disks


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MB file system of this test's own (a tmpfs: mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".tmp")))


def test_a_run_whose_outputs_do_not_fit_the_cache_disk_says_so_in_its_own_cell(link_kernelspec, small_disk, tmp_path):
    """A component printing more than the cache's disk holds: its record (outputs and all) is
    what does not fit. The line saying so came in the next component's cell, whose results
    were written, or never when no component ran after it."""
    kernel = Kernel(LINKKERNEL_CACHE=str(small_disk / "cache"))
    try:
        nb = Notebook(kernel, tmp_path / "talk.ipynb")
        nb.add("talk", "print('x' * (3 << 20))\nn = 1", counted=False).add("after", "m = n + 1", "talk", counted=False).use()
        talk = nb.run("talk")
        assert talk.status == "ok" and len(talk.stdout) == (3 << 20) + 1
        lines = talk.stderr.splitlines()
        assert len(lines) == 1 and "cannot write the component cache" in lines[0] and "the disk is full" in lines[0], talk.stderr
        after = nb.run("after")
        assert after.status == "ok" and after.stderr == ""
        assert value(kernel, "m") == 2
        kernel.execute("%link status")  # the write has landed by the next cell
        records = small_disk / "cache" / next(p.name for p in (small_disk / "cache").iterdir()) / "records"
        assert sorted(p.name for p in records.iterdir()) == ["after.json"]
        assert _leftovers(small_disk) == []
    finally:
        kernel.shutdown()


def test_a_value_larger_than_half_the_cache_disk_is_kept_again_when_re_run(link_kernelspec, small_disk, tmp_path):
    """The replaced run's files go once the new one is written, and the room check before a
    write counted them as taken: a value over half of the disk, kept once, was never kept
    again (each re-run: 'the disk is full', and the old run's 1.2 MB stayed for good). The
    replaced run's files make room first when the disk is short."""
    kernel = Kernel(LINKKERNEL_CACHE=str(small_disk / "cache"))
    try:
        nb = Notebook(kernel, tmp_path / "big.ipynb")
        nb.add("big", "import os\nblob = os.urandom(1_200_000)")
        nb.add("peek", "import hashlib\nseen = hashlib.sha256(blob).hexdigest()", "big").use()
        for _ in range(3):
            again = nb.kernel.execute("%link run big --force")
            assert again.status == "ok" and again.stderr == "", again.stderr
            kernel.execute("%link status")  # the write has landed by the next cell
            digest = value(kernel, "__import__('hashlib').sha256(blob).hexdigest()")
        assert nb.runs() == ["big"] * 3
        folder = small_disk / "cache" / next(p.name for p in (small_disk / "cache").iterdir())
        assert [p.name for p in (folder / "records").iterdir()] == ["big.json"]
        named = set(json.loads((folder / "records" / "big.json").read_text())["namespace"].values())
        assert {p.name for p in folder.glob("blobs/*/*")} == named  # the last run's files alone
        nb.restart()
        assert nb.run("peek").status == "ok" and nb.runs() == ["peek"]  # its parent fresh in the cache
        assert value(kernel, "seen") == digest  # the last run's value
    finally:
        kernel.shutdown()


def test_link_run_onto_a_full_cache_disk_says_so_in_the_terminal(link_kernelspec, small_disk, tmp_path):
    """Headless, the line saying the cache could not be written went only into the executed
    notebook's cell; the terminal showed a clean run, and the next run ran everything again."""
    Notebook(None, tmp_path / "nb.ipynb").add("a", "x = bytes(3 << 20)", counted=False).add("b", "y = len(x)", "a", counted=False).save()
    done = cli("run", "nb.ipynb", cwd=tmp_path, LINKKERNEL_CACHE=str(small_disk / "cache"))
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "cache" in line]
    assert len(said) == 1 and said[0].startswith("linkkernel run: cannot write the component cache at "), done.stderr
    assert "the disk is full" in said[0]
    assert _leftovers(small_disk) == []


def test_the_merge_driver_writing_onto_a_full_disk_fails_naming_the_notebook(small_disk):
    """As git runs it (%O %A %B %L %P, the result into %A, a temporary file of git's): git must
    see a failure, %A must stay whole, and the line must name the notebook, not git's file."""
    base, ours, theirs = notebook_json(), notebook_json(), notebook_json()
    ours["cells"][1]["source"] = "y = x + 10\ny"
    theirs["cells"][0]["source"] = "x = 2\nprint('loaded')"
    for name, nb in (("O", base), ("A", ours), ("B", theirs)):
        (small_disk / f".merge_file_{name}").write_text(json.dumps(nb, indent=1))
    before = (small_disk / ".merge_file_A").read_bytes()
    subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'fill'}", "bs=4k"], capture_output=True)
    merged = cli("merge", ".merge_file_O", ".merge_file_A", ".merge_file_B", "7", "analysis/nb.ipynb", cwd=small_disk)
    assert merged.returncode != 0
    assert merged.stderr.splitlines() == [
        "linkkernel merge: analysis/nb.ipynb: the merged notebook cannot be written: No space left on device"]
    assert (small_disk / ".merge_file_A").read_bytes() == before
    assert _leftovers(small_disk) == []


@pytest.fixture
def full_worker(link_kernelspec, small_disk: Path, tmp_path: Path):
    """A real worker whose --storage is the small disk, registered as 'full'; a kernel."""
    key = make_key(tmp_path / "key")
    worker = WorkerProcess(str(small_disk / "store"), key, tmp_path)
    registry.add("full", worker.address, str(small_disk / "store"), str(key))
    kernel = Kernel()
    yield worker, kernel
    kernel.shutdown()
    worker.stop()


def test_a_worker_whose_storage_is_full_says_so_in_the_cell_and_keeps_serving(full_worker, small_disk, tmp_path):

    worker, kernel = full_worker
    nb = Notebook(kernel, tmp_path / "remote.ipynb").add("s", "x = 1", counted=False)
    nb.add("big", "big = bytes(3 << 20)", "s", remote="full", counted=False)
    nb.add("small", "y = x + 1", "s", remote="full", counted=False)
    nb.add("local", "data = bytes(3 << 20)", counted=False).add("sent", "n = len(data)", "local", remote="full", counted=False)
    nb.use()
    failed = nb.run("big")
    assert failed.status == "error"
    text = failed.traceback_text.strip()
    assert len(text.splitlines()) == 1, text
    assert f"storage {small_disk / 'store'} cannot be written: the disk is full" in text, text
    assert "unreachable" not in text and "Errno" not in text
    sending = nb.run("sent")  # the kernel cannot put the input there either
    assert sending.status == "error"
    assert sending.traceback_text.strip().endswith(f"storage {small_disk / 'store'} cannot be written: the disk is full")
    assert nb.run("small").status == "ok"
    assert value(kernel, "y") == 2
    assert worker.alive() and _leftovers(small_disk) == []


# ---------------------------------------------------------------- 3. a notebook renamed under its kernel


def _ran_a_and_b(tmp_path: Path, name: str) -> tuple[Kernel, Notebook, Path, Path]:
    """A kernel started for notebook `name` in `tmp_path` as JupyterLab starts one
    (JPY_SESSION_NAME), on a cache there, whose components `a` and its child `b` have just
    run: (kernel, notebook, the notebook's path, the cache folder)."""
    path, cache = tmp_path / name, tmp_path / "cache"
    kernel = Kernel(JPY_SESSION_NAME=str(path), LINKKERNEL_CACHE=str(cache))
    nb = Notebook(kernel, path, counter=tmp_path / "runs")
    try:
        nb.add("a", "x = 1").add("b", "y = x + 1", "a").save()
        assert nb.run("b").status == "ok" and nb.runs() == ["a", "b"]
    except BaseException:
        kernel.shutdown()
        raise
    return kernel, nb, path, cache


def test_the_cache_follows_a_notebook_renamed_while_its_kernel_runs(link_kernelspec, tmp_path: Path):
    """JupyterLab renames the file and tells the kernel nothing; its next kernel is started for
    the new name. The components fresh before the rename are fresh for that kernel too."""
    kernel, nb, path, cache = _ran_a_and_b(tmp_path, "analysis.ipynb")
    try:
        nb.path = path.rename(tmp_path / "final.ipynb")
        nb.add("c", "z = y + 1", "b").save()
        ran = nb.run("c")
        assert ran.status == "ok" and ran.stderr == "" and nb.runs() == ["c"]
        assert f"cache: {cache}/final-" in kernel.execute("%link notebook").stdout
    finally:
        kernel.shutdown()
    nb.kernel = kernel = Kernel(JPY_SESSION_NAME=str(nb.path), LINKKERNEL_CACHE=str(cache))
    try:
        assert nb.run("c").status == "ok"
        assert nb.runs() == ["c"]
        assert [p.name.split("-")[0] for p in cache.iterdir()] == ["final"]
    finally:
        kernel.shutdown()


def test_a_notebook_deleted_to_the_trash_and_restored_finds_its_cache(link_kernelspec, tmp_path: Path):
    """JupyterLab deletes to the trash (send2trash: a rename into ~/.local/share/Trash/files).
    That is no rename to follow: the cache went into the trash with it, and the notebook
    restored found none, every component ran again."""
    kernel, nb, path, cache = _ran_a_and_b(tmp_path, "nb.ipynb")
    trash = {"XDG_DATA_HOME": str(tmp_path / "share")}
    try:
        deleted = subprocess.run([sys.executable, "-c", "import send2trash, sys; send2trash.send2trash(sys.argv[1])", str(path)],
                                 env=kernel_env(**trash), capture_output=True, text=True)
        assert deleted.returncode == 0 and not path.exists(), deleted.stderr
        assert (tmp_path / "share" / "Trash" / "files" / "nb.ipynb").exists()
        after = nb.run("b")  # the tab still open: the notebook is gone
        assert after.status == "error" and "which does not exist" in after.traceback_text
    finally:
        kernel.shutdown()
    (tmp_path / "share" / "Trash" / "files" / "nb.ipynb").rename(path)  # restored
    nb.kernel = kernel = Kernel(JPY_SESSION_NAME=str(path), LINKKERNEL_CACHE=str(cache))
    try:
        assert nb.run("b").status == "ok" and nb.runs() == ["b"]
    finally:
        kernel.shutdown()


def test_a_notebook_renamed_onto_a_name_with_a_cache_of_its_own_keeps_its_cache(link_kernelspec, tmp_path: Path):
    """The new name's folder is taken (a notebook once saved there): the cache stays where it
    was, in use, and nothing of the other is read as this notebook's."""
    kernel, nb, path, cache = _ran_a_and_b(tmp_path, "draft.ipynb")
    try:
        taken = cache / notebook_key(str(tmp_path / "final.ipynb"))
        (taken / "records").mkdir(parents=True)
        (taken / "records" / "a.json").write_text("{}")
        nb.path = path.rename(tmp_path / "final.ipynb")
        for _ in range(2):
            assert nb.run("b").status == "ok" and nb.runs() == ["b"]
        assert f"cache: {cache / notebook_key(str(path))}" in kernel.execute("%link notebook").stdout
        assert (taken / "records" / "a.json").read_text() == "{}"
    finally:
        kernel.shutdown()


# ---------------------------------------------------------------- 4. a long session


def _memfds(pid: int) -> int:
    """The memfds process `pid` holds open: the frozen large buffers and their private maps."""
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held += "memfd:" in os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            pass
    return held


def test_a_component_failing_again_and_again_frees_each_failed_runs_inputs(link_kernelspec, tmp_path: Path):
    """Each failed run of a component held its inputs (a map of a large parent's buffer, pages
    it wrote copied) until Python's cyclic collector ran, which in a kernel holding many
    objects is rarely: the collector is off here so that what is held is what the code keeps,
    the last error's run only (for %debug)."""
    kernel = Kernel(LINKKERNEL_CACHE=str(tmp_path / "cache"))
    try:
        nb = Notebook(kernel, tmp_path / "long.ipynb").add("data", "import numpy as np\nx = np.arange(400_000)", counted=False)
        nb.add("bad", "x[:] = 0\nraise ValueError('not yet')", "data", counted=False)
        nb.add("stop", "import time\nx[:] = 1\ntime.sleep(30)", "data", counted=False).use()
        assert kernel.execute("import gc; gc.disable()").status == "ok"
        assert nb.run("data").status == "ok"
        pid = kernel.manager.provisioner.process.pid
        assert nb.run("bad").status == "error"
        held = _memfds(pid)
        for _ in range(6):
            assert nb.run("bad").status == "error"
            assert nb.run("stop", interrupt_after=0.5).status == "error"
        assert _memfds(pid) <= held
        debugged = kernel.execute("%debug", stdin_reply=["p int(x[0]) + 41", "q"]).stdout  # the last error's run is kept
        assert "Component stop" in debugged and "42" in debugged
    finally:
        kernel.shutdown()


@pytest.mark.parametrize("delay", [0.02, 0.05])
def test_stopping_the_first_component_cell_at_once_leaves_the_kernel_usable(link_kernelspec, tmp_path: Path, delay):
    """The first component cell imports networkx (130 ms, not paid at start): an interrupt in
    the middle of that import left a package without its functions, and every component cell
    after it an internal error until a restart."""
    kernel = Kernel(LINKKERNEL_CACHE=str(tmp_path / "cache"))
    try:
        nb = Notebook(kernel, tmp_path / "first.ipynb").add("a", "x = 1", counted=False).add("b", "y = x + 1", "a", counted=False).use()
        nb.run("b", interrupt_after=delay)
        again = nb.run("b")
        assert again.status == "ok", again.traceback_text
        assert value(kernel, "y") == 2
    finally:
        kernel.shutdown()


def _held(pid: int) -> dict[str, int]:
    """What process `pid` holds: descriptors (memfds apart) and threads."""
    fds = os.listdir(f"/proc/{pid}/fd")
    return {"fds": len(fds), "memfds": _memfds(pid), "threads": len(os.listdir(f"/proc/{pid}/task"))}


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts what /proc names")
def test_two_hundred_runs_of_a_long_session_hold_no_more_than_the_first_forty(link_kernelspec, tmp_path: Path):
    """Successes, user errors, interrupts, forced re-runs, cache clears and remote runs (some
    failing, some interrupted) in one kernel and one worker: descriptors, memfds, threads,
    the worker's task processes and temporary files stay at what the first forty runs used."""
    temp, key = tmp_path / "temp", make_key(tmp_path / "key")
    temp.mkdir()
    worker = WorkerProcess(str(tmp_path / "store"), key, tmp_path, env={"TMPDIR": str(temp)})
    registry.add("long", worker.address, str(tmp_path / "store"), str(key))
    kernel = Kernel(LINKKERNEL_CACHE=str(tmp_path / "cache"), TMPDIR=str(temp))
    try:
        nb = Notebook(kernel, tmp_path / "session.ipynb").add("a", "import numpy as np\nx = np.arange(200_000)", counted=False)
        nb.add("b", "y = x * 2", "a", counted=False).add("bad", "raise ValueError('no')", "a", counted=False)
        nb.add("slow", "import time\ntime.sleep(30)", "b", counted=False)
        nb.add("r", "r = len(x) + 1", "a", remote="long", counted=False)
        nb.add("rbad", "1 / 0", "a", remote="long", counted=False).use()
        steps = [
            lambda: nb.run("r", interrupt_after=0.05), lambda: nb.run("bad"), lambda: nb.run("slow", interrupt_after=0.3),
            lambda: kernel.execute("%link run b --force"), lambda: nb.run("r"), lambda: nb.run("rbad"),
            lambda: kernel.execute("%link cache clear"), lambda: nb.run("b"),
        ]
        kernel_pid, worker_pid = kernel.manager.provisioner.process.pid, worker.process.pid
        assert nb.run("r").status == "ok"
        time.sleep(1)
        idle = len(descendants(worker_pid))  # the zygote and what it forked ahead
        samples = []
        for i in range(200):
            steps[i % len(steps)]()
            if i % len(steps) == len(steps) - 1:
                # the worker idle: its zygote's task processes ended
                assert wait_until(lambda: len(descendants(worker_pid)) <= idle), (idle, descendants(worker_pid))
                samples.append({**_held(kernel_pid), **{f"worker {k}": v for k, v in _held(worker_pid).items()},
                                "worker processes": len(descendants(worker_pid)), "temp files": _files(temp),
                                "store temp files": len(_leftovers(tmp_path / "store"))})
        warm = {k: max(s[k] for s in samples[:5]) for k in samples[0]}
        for later in samples[5:]:
            # descriptors: a task's pipes and a cell's sockets come and go around a sample
            over = {k: v for k, v in later.items() if v > warm[k] + (3 if "fds" in k else 0)}
            assert not over, (over, warm)
        assert samples[-1]["store temp files"] == 0
    finally:
        kernel.shutdown()
        worker.stop()

