"""QA of what a long session on one notebook meets: a cache disk that fills, is freed and fills
again; a notebook renamed under two kernels; a notebook saved twice in one clock tick.

Real kernels, real commands, and (as root) real small file systems (tmpfs).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import test_qa_fs
from engine_support import Notebook, kernels_on_one_cache
from support import Kernel
from test_qa_fs import cli

from linkkernel.store import notebook_key

small_disk = test_qa_fs.small_disk  # a 2 MB tmpfs (a fixture)
TROUBLE = "linkkernel: cannot write the component cache"

# ---------------------------------------------------------------- A. a disk full twice


def _told(*results) -> list[int]:
    """How many lines saying the cache cannot be written each cell showed."""
    return [sum(line.startswith(TROUBLE) for line in r.stderr.splitlines()) for r in results]


def _records(cache: Path) -> Path:
    return next(cache.iterdir()) / "records"


def test_a_cache_disk_full_again_after_it_was_freed_is_said_again(link_kernelspec, small_disk, tmp_path):
    """Said once per session: the disk filled, the user freed it, results were written again,
    and when it filled a second time the next results were lost without a word."""
    kernel = Kernel(LINKKERNEL_CACHE=str(small_disk / "cache"))
    try:
        nb = Notebook(kernel, tmp_path / "nb.ipynb", counter=tmp_path / "runs")
        nb.add("big", "a = bytes(3 << 20)").add("small", "s = 1").add("again", "b = bytes(3 << 20)").use()
        first, still, small, second, same = nb.run("big"), nb.run("big"), nb.run("small"), nb.run("again"), nb.run("big")
        assert all(r.status == "ok" for r in (first, still, small, second, same))
        assert _told(first, still, small, second, same) == [1, 0, 0, 1, 0], second.stderr
        assert "the disk is full" in second.stderr
        kernel.execute("%link status")  # the write has landed by the next cell
        assert sorted(p.name for p in _records(small_disk / "cache").iterdir()) == ["small.json"]
    finally:
        kernel.shutdown()


def test_writes_failing_again_after_they_landed_are_said_again_and_the_old_failure_not(link_kernelspec, tmp_path):
    """Writes that fail (here: a file where the records folder goes) are said once; once they
    land again, the next failure is said, once, and the failure before is not said again."""
    cache = tmp_path / "cache"
    kernel = Kernel(LINKKERNEL_CACHE=str(cache))
    try:
        nb = Notebook(kernel, tmp_path / "nb.ipynb", counter=tmp_path / "runs")
        for name in "abcdef":
            nb.add(name, f"{name} = 1")
        nb.use()
        assert nb.run("a").status == "ok"
        records = _records(cache)
        _wait_for(lambda: (records / "a.json").exists())
        (records / "a.json").unlink()
        records.rmdir()
        records.write_text("in the way")
        outage = [nb.run("b"), nb.run("c")]
        records.unlink()
        landed = nb.run("d")
        _wait_for(lambda: (records / "d.json").exists())
        records.rename(records.with_name("aside"))
        records.write_text("in the way")
        second = [nb.run("e"), nb.run("f"), nb.run("a")]
        assert all(r.status == "ok" for r in [*outage, landed, *second])
        assert sum(_told(*outage)) == 1 and _told(landed) == [0] and sum(_told(*second)) == 1, [r.stderr for r in second]
    finally:
        kernel.shutdown()


def test_link_run_says_a_cache_disk_full_a_second_time_in_the_terminal(link_kernelspec, small_disk, tmp_path):
    """Headless, each outage shows in the terminal: a second one, after results were written
    again, went into the executed notebook's cell only, or nowhere."""
    Notebook(None, tmp_path / "nb.ipynb").add("big", "a = bytes(3 << 20)", counted=False).add(
        "small", "s = 1", counted=False).add("again", "b = bytes(3 << 20)", counted=False).save()
    done = cli("run", "nb.ipynb", cwd=tmp_path, LINKKERNEL_CACHE=str(small_disk / "cache"))
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "cache" in line]
    assert len(said) == 2 and all(line.startswith("linkkernel run: cannot write the component cache at ") for line in said), done.stderr
    assert sorted(p.name for p in _records(small_disk / "cache").iterdir()) == ["small.json"]


def _wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ---------------------------------------------------------------- C. two saves in one clock tick


@pytest.fixture
def coarse_disk(tmp_path: Path):
    """An ext2 file system whose file times keep whole seconds (128-byte inodes), as ext3,
    HFS+ and many NFS servers do: two saves within one second keep every stat field (a
    loop mount needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system image needs root")
    image, folder = tmp_path / "ext2.img", tmp_path / "coarse"
    folder.mkdir()
    with image.open("wb") as f:
        f.truncate(4 << 20)
    made = subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-I", "128", str(image)], check=False, capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot make an ext2 image here: {made.stderr.strip()}")
    done = subprocess.run(["mount", "-o", "loop", str(image), str(folder)], check=False, capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot loop-mount here: {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _stat_of(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def test_a_notebook_saved_twice_within_one_tick_of_its_times_is_read_again(link_kernelspec, coarse_disk, tmp_path):
    """JupyterLab writes the notebook in place: the kernel read a save, the user saved again
    within the same tick of the file's times with the same size (a component renamed to a
    name as long), and the kernel kept the declarations of the save it had read."""
    path = coarse_disk / "nb.ipynb"
    kernel = Kernel(JPY_SESSION_NAME=str(path), LINKKERNEL_CACHE=str(tmp_path / "cache"))
    nb = Notebook(kernel, path, counter=tmp_path / "runs").add("first", "x = 1", counted=False)
    try:
        for _ in range(3):  # the read and the second save within one second of the first
            time.sleep(1.2 - time.time() % 1)  # well after a second begins: the read counts as settled by a fine clock
            nb.add("later", "y = x", "first", counted=False).save()
            before = _stat_of(path)
            assert "later" in kernel.execute("%link status").stdout
            del nb.cells["later"]
            nb.add("other", "y = x", "first", counted=False).save()
            if _stat_of(path) == before:
                break
            del nb.cells["other"]
        else:
            pytest.fail("the two saves never fell within one second")
        time.sleep(1.1)
        shown = kernel.execute("%link status").stdout
        assert "other" in shown and "later" not in shown, shown
    finally:
        kernel.shutdown()


# ---------------------------------------------------------------- B. one notebook, two kernels, renamed

cache, kernels = kernels_on_one_cache("renamed-twice")


def test_a_run_under_way_in_a_second_kernel_when_the_notebook_is_renamed_lands_in_the_new_folder(kernels, cache, tmp_path):
    """Two kernels on one notebook (two JupyterLab sessions); renamed while a cell runs in B,
    and A followed it (its cache folder moved to the new name's). B's run then wrote the old
    folder anew, and kept writing there (the new name's taken): two folders, and the kernel
    started for the new name ran B's components again."""
    one, two = kernels
    path = tmp_path / "analysis.ipynb"
    started = tmp_path / "started"
    nb_one = Notebook(one, path, counter=tmp_path / "runs").add("a", "x = 1").add("b", "y = x + 1", "a")
    nb_one.add("slow", f"open({str(started)!r}, 'w').close()\nimport time\ntime.sleep(1.5)\nw = 5", "a").use()
    nb_two = Notebook(two, path, counter=tmp_path / "runs")
    nb_two.cells = nb_one.cells
    nb_two.use()
    assert nb_one.run("b").status == "ok" and nb_one.runs() == ["a", "b"]
    running = threading.Thread(target=lambda: ran.append(nb_two.run("slow")))
    ran = []
    running.start()
    _wait_for(started.exists)
    nb_one.path = nb_two.path = path.rename(tmp_path / "final.ipynb")
    nb_one.add("c", "z = y + 1", "b").save()
    assert nb_one.run("c").status == "ok"
    running.join(30)
    assert ran[0].status == "ok" and nb_one.runs() == ["slow", "c"]
    for kernel in kernels:
        assert f"cache: {cache}/final-" in kernel.execute("%link notebook").stdout
    assert _folders(cache, path, nb_one.path) == [notebook_key(str(nb_one.path))]
    third = Kernel(JPY_SESSION_NAME=str(nb_one.path), LINKKERNEL_CACHE=f"file://{cache}")
    try:
        nb_one.kernel = third
        for name in ("slow", "c"):
            assert third.execute(f"%link run {name}").status == "ok"
        assert nb_one.runs() == []  # both fresh: A's run and B's are in the new name's folder
    finally:
        third.shutdown()


def test_a_notebook_renamed_twice_ends_in_one_folder_whichever_kernel_followed_which_rename(kernels, cache, tmp_path):
    """Renamed twice (Untitled, then draft, then final): kernel A followed the first rename,
    B, idle meanwhile, only the second. B looked for its folder under the first name, found
    none, ran its components again into a new folder for the last name, and A, following,
    found that name taken: two folders, each kernel on its own. B holds its folder since it
    read it, and finds it where A moved it."""
    one, two = kernels
    path = tmp_path / "Untitled.ipynb"
    nb_one = Notebook(one, path, counter=tmp_path / "runs").add("a", "x = 1").add("b", "y = x + 1", "a").use()
    nb_two = Notebook(two, path, counter=tmp_path / "runs")
    nb_two.cells = nb_one.cells
    nb_two.use()
    assert nb_one.run("b").status == "ok" and nb_one.runs() == ["a", "b"]
    assert nb_two.run("b").status == "ok" and nb_two.runs() == ["b"]
    nb_one.path = path.rename(tmp_path / "draft.ipynb")
    assert f"cache: {cache}/draft-" in one.execute("%link notebook").stdout
    nb_one.path = nb_two.path = nb_one.path.rename(tmp_path / "final.ipynb")
    nb_two.add("c", "z = y + 1", "b").save()
    assert nb_two.run("c").status == "ok" and nb_two.runs() == ["c"]  # its parents still fresh
    assert nb_one.run("c").status == "ok" and nb_one.runs() == ["c"]
    for kernel in kernels:
        assert f"cache: {cache}/final-" in kernel.execute("%link notebook").stdout
    assert _folders(cache, path, tmp_path / "draft.ipynb", nb_one.path) == [notebook_key(str(nb_one.path))]


def _folders(cache: Path, *names: Path) -> list[str]:
    """The cache folders there are of the notebooks at `names` (other tests' share `cache`)."""
    keys = {notebook_key(str(name)) for name in names}
    return sorted(p.name for p in cache.iterdir() if p.name in keys)
