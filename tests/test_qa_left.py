"""QA of what a long session on one notebook meets: a cache disk that fills, is freed and fills
again; a notebook renamed under two kernels; a notebook saved twice in one clock tick.

Real kernels, real commands, and (as root) real small file systems (tmpfs).
"""

from __future__ import annotations

import time
from pathlib import Path

from engine_support import Notebook
from support import Kernel
from test_qa_fs import cli, small_disk  # noqa: F401 - small_disk is a fixture

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

