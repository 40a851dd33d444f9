"""QA: several processes on one notebook's cache store at once (SPEC §3 "Persistence", §8).

The notebook open in JupyterLab (kernel A) while a second kernel (a console, another tab, a
teammate on the team cache) or `linkkernel run` runs the same pipeline: each sees the runs the
other recorded, as if it had made them itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from engine_support import Notebook, kernels_on_one_cache, value
from support import Kernel, kernel_env

from linkkernel.store import notebook_key


cache, kernels = kernels_on_one_cache("concurrent")  # kernels A and B on one local cache store


def twins(kernels: list[Kernel], path: Path, build) -> tuple[Notebook, Notebook]:
    """The same saved notebook opened in kernels A and B (one counter file of runs)."""
    a, b = (build(Notebook(k, path)) for k in kernels)
    b.counter = a.counter
    a.use(), b.use()
    a.runs()
    return a, b


def run_id(cache: Path, notebook: Path, name: str) -> str | None:
    """The run the store's record of component `name` holds (None: no record yet)."""
    path = cache / notebook_key(str(notebook)) / "records" / f"{name}.json"
    try:
        return json.loads(path.read_text())["run_id"]
    except FileNotFoundError:
        return None


def written(cache: Path, notebook: Path, name: str, other_than: str | None = None, timeout: float = 30) -> str:
    """Wait until the store holds a record of `name` (one other than the run `other_than`):
    a kernel writes its runs after the reply, in the background."""
    deadline = time.monotonic() + timeout
    while (found := run_id(cache, notebook, name)) in (None, other_than):
        assert time.monotonic() < deadline, f"no new record of {name} written"
        time.sleep(0.01)
    return found


def pipeline(nb: Notebook) -> Notebook:
    nb.add("load", "import random\nraw = [random.random() for _ in range(3)]\nprint('load ran')")
    nb.add("clean", "cleaned = sorted(raw)\nprint('clean ran')", "load")
    nb.add("train", "model = sum(cleaned)\nprint('train ran', len(cleaned))", "clean")
    return nb


def test_a_second_kernel_finds_what_the_first_ran_after_it_opened_the_notebook(kernels, cache, tmp_path):
    """B opened the notebook before A ran anything; A then runs the pipeline. B's `%link
    outputs` shows what A's runs printed; B's `train` runs only itself, from A's runs of its
    parents (values A's), and shows only its own output."""
    a, b = twins(kernels, tmp_path / "nb.ipynb", pipeline)
    assert a.run("train").status == "ok" and a.runs() == ["load", "clean", "train"]
    written(cache, a.path, "train")
    made = value(a.kernel, "cleaned")
    shown = b.kernel.execute("%link outputs clean")  # B's first look at the store since A ran
    assert shown.status == "ok" and shown.stdout == "clean ran\n", shown.traceback_text
    ran = b.run("train")
    assert ran.status == "ok", ran.traceback_text
    assert b.runs() == ["train"]
    assert ran.stdout == "train ran 3\n" and ran.stderr == ""
    assert value(b.kernel, "cleaned") == made and value(b.kernel, "model") == sum(made)


def meeting(folder: Path, parties: int = 2) -> str:
    """Code that waits until `parties` processes reached it (a file each in `folder`): both
    kernels are inside the same component at once."""
    return (
        "import os, time, glob\n"
        f"open(os.path.join({str(folder)!r}, str(os.getpid())), 'w').close()\n"
        f"while len(glob.glob(os.path.join({str(folder)!r}, '*'))) < {parties}:\n"
        "    time.sleep(0.01)\n"
    )


def both(calls: list) -> list:
    """Run the calls (each a kernel's blocking request) at once, their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def test_two_kernels_running_the_same_pipeline_at_once(kernels, cache, tmp_path):
    """A and B run `train` at the same moment, nothing cached yet: both succeed with their own
    values, no traceback. The store then holds each component's run last written, whichever
    kernel's: A's next run makes again what of it does not fit together (never `load`), B's
    takes that in and runs only `train`, and a restarted kernel finds the store whole."""
    met = tmp_path / "met"
    met.mkdir()

    def build(nb: Notebook) -> Notebook:
        nb.add("load", meeting(met) + "import random\nraw = [random.random() for _ in range(3)]")
        nb.add("clean", "cleaned = sorted(raw)", "load")
        nb.add("train", "model = sum(cleaned)\nprint('train ran')", "clean")
        return nb

    a, b = twins(kernels, tmp_path / "nb.ipynb", build)
    ra, rb = both([lambda: a.run("train"), lambda: b.run("train")])
    for r in (ra, rb):
        assert r.status == "ok" and r.stdout == "train ran\n" and r.stderr == "" and not r.errors, r.traceback_text
    assert sorted(a.runs()) == sorted(["load", "clean", "train"] * 2)
    for nb in (a, b):  # each kernel's writes landed (opening the notebook again waits for them)
        nb.use()
    ran = []
    for nb in (a, b):
        before = run_id(cache, a.path, "train")
        again = nb.run("train")
        assert again.status == "ok" and again.stderr == "", again.traceback_text
        ran.append(nb.runs())
        assert value(nb.kernel, "cleaned") == sorted(value(nb.kernel, "raw"))
        assert value(nb.kernel, "model") == sum(value(nb.kernel, "cleaned"))
        written(cache, a.path, "train", other_than=before)
    assert ran[0][-1:] == ["train"] and "load" not in ran[0]  # `clean` too when the store's does not fit its `load`
    assert ran[1] == ["train"]
    a.restart()
    assert a.run("train").status == "ok" and a.runs() == ["train"]


def test_a_parent_the_other_kernel_ran_again_makes_the_child_stale_here(kernels, cache, tmp_path):
    """B re-runs `load` (`%link run load --force`) while A is idle: A's next `train` sees
    that its parents' runs changed and runs `clean` and `train` again, from B's `load`; A's
    notebook namespace then holds B's `raw` and what A made from it. When B runs `clean` and
    `load` again, A takes both in and runs only `train`, from B's `cleaned`."""
    a, b = twins(kernels, tmp_path / "nb.ipynb", pipeline)
    assert a.run("train").status == "ok" and a.runs() == ["load", "clean", "train"]
    before = value(a.kernel, "raw")
    ours = written(cache, a.path, "train") and run_id(cache, a.path, "load")
    forced = b.kernel.execute("%link run load --force")
    assert forced.status == "ok", forced.traceback_text
    assert b.runs() == ["load"]
    written(cache, a.path, "load", other_than=ours)
    theirs = value(b.kernel, "raw")
    assert theirs != before
    ran = a.run("train")
    assert ran.status == "ok" and ran.stdout == "train ran 3\n", ran.traceback_text
    assert a.runs() == ["clean", "train"]
    assert value(a.kernel, "raw") == theirs
    assert value(a.kernel, "cleaned") == sorted(theirs) and value(a.kernel, "model") == sum(sorted(theirs))
    assert states(a.kernel) == {"load": "fresh", "clean": "fresh", "train": "fresh"}
    # B runs `clean` and its parent again: A takes in both, the parent's first
    ours = written(cache, a.path, "train") and run_id(cache, a.path, "clean")
    assert b.kernel.execute("%link run clean --force").status == "ok" and b.runs() == ["load", "clean"]
    written(cache, a.path, "clean", other_than=ours)
    theirs = value(b.kernel, "cleaned")
    assert a.run("train").status == "ok" and a.runs() == ["train"]
    assert value(a.kernel, "cleaned") == theirs and value(a.kernel, "model") == sum(theirs)


HOLD = """\
import os, time
open({started!r}, 'w').close()
while os.getpid() == {pid} and not os.path.exists({gate!r}):
    time.sleep(0.01)
slow = [n * 2 for n in raw]
print('slow ran')
"""


def test_linkkernel_run_while_the_notebook_s_kernel_is_mid_run(kernels, cache, tmp_path):
    """`linkkernel run NB.ipynb` while kernel A is inside a long component: the headless run
    takes A's finished runs from the store, runs the rest itself and writes a right notebook;
    A's run then ends normally, and A's next cell takes in what the headless run recorded."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    pid = value(kernels[0], "__import__('os').getpid()")

    def build(nb: Notebook) -> Notebook:
        nb.add("load", "import random\nraw = [random.random() for _ in range(3)]\nprint('load ran')")
        nb.add("slow", HOLD.format(started=str(started), gate=str(gate), pid=pid), "load")
        nb.add("report", "total = sum(slow)\nprint('report', len(slow))", "slow")
        return nb

    a, _ = twins(kernels, tmp_path / "nb.ipynb", build)
    assert a.run("load").status == "ok" and a.runs() == ["load"]
    ours = written(cache, a.path, "load")
    with ThreadPoolExecutor(1) as pool:
        mid = pool.submit(a.run, "slow")
        while not started.exists():
            time.sleep(0.01)
        headless = subprocess.run(
            [sys.executable, "-m", "linkkernel.cli", "run", str(a.path), "-o", str(tmp_path / "out.ipynb")],
            capture_output=True, text=True, env=kernel_env(LINKKERNEL_CACHE=f"file://{cache}"), timeout=120,
        )
        assert headless.returncode == 0, headless.stdout + headless.stderr
        assert a.runs() == ["slow", "slow", "report"]  # A's, held; the headless run's two
        gate.touch()
        slow = mid.result(timeout=60)
    assert slow.status == "ok" and slow.stdout == "slow ran\n", slow.traceback_text
    assert a.runs() == []
    assert run_id(cache, a.path, "load") == ours
    out = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    shown = {cell.id: "".join(o.get("text", "") for o in cell.outputs) for cell in out.cells}
    assert shown == {"id-load": "load ran\n", "id-slow": "slow ran\n", "id-report": "report 3\n"}
    print(headless.stdout)
    reported = a.run("report")
    assert reported.status == "ok" and reported.stdout == "report 3\n", reported.traceback_text
    print(a.runs())
    assert value(a.kernel, "total") == sum(value(a.kernel, "slow")) == 2 * sum(value(a.kernel, "raw"))


@pytest.fixture(scope="module")
def bucket(link_kernelspec):
    from remote_support import MotoServer

    yield from MotoServer.serving("team")


@pytest.fixture(scope="module")
def teammates(bucket):
    """Kernels A and B on one `s3://` team cache (moto on loopback)."""
    from remote_support import S3_ENV

    pair = [Kernel(LINKKERNEL_CACHE="s3://team/cache", AWS_ENDPOINT_URL=bucket.endpoint, **S3_ENV) for _ in range(2)]
    yield pair
    for k in pair:
        k.shutdown()


def s3_run_id(bucket, notebook: Path, name: str) -> str | None:
    """The run the team cache's record of `name` holds (None: none yet)."""
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=bucket.endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    try:
        body = s3.get_object(Bucket="team", Key=f"cache/{notebook_key(str(notebook))}/records/{name}.json")["Body"]
    except s3.exceptions.NoSuchKey:
        return None
    return json.loads(body.read())["run_id"]


def s3_written(bucket, notebook: Path, name: str, other_than: str | None = None, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while (found := s3_run_id(bucket, notebook, name)) in (None, other_than):
        assert time.monotonic() < deadline, f"no new record of {name} written"
        time.sleep(0.02)
    return found


def test_a_teammate_on_the_s3_cache_finds_what_the_other_ran(teammates, bucket, tmp_path):
    """Two kernels on one `s3://` team cache, both with the notebook open: what A ran, B does
    not run again (its `train` runs only itself, from A's values), and a parent B then runs
    again makes A's child stale, as on a local store."""
    a, b = twins(teammates, tmp_path / "nb.ipynb", pipeline)
    assert a.run("train").status == "ok" and a.runs() == ["load", "clean", "train"]
    s3_written(bucket, a.path, "train")
    made = value(a.kernel, "cleaned")
    assert states(b.kernel) == {"load": "fresh", "clean": "fresh", "train": "fresh"}
    ran = b.run("train")
    assert ran.status == "ok" and ran.stdout == "train ran 3\n" and ran.stderr == "", ran.traceback_text
    assert b.runs() == ["train"]
    assert value(b.kernel, "cleaned") == made
    ours = s3_written(bucket, a.path, "train") and s3_run_id(bucket, a.path, "load")
    assert b.kernel.execute("%link run load --force").status == "ok" and b.runs() == ["load"]
    s3_written(bucket, a.path, "load", other_than=ours)
    theirs = value(b.kernel, "raw")
    assert states(a.kernel) == {"load": "fresh", "clean": "stale", "train": "stale"}
    assert a.run("train").status == "ok" and a.runs() == ["clean", "train"]
    assert value(a.kernel, "raw") == theirs and value(a.kernel, "model") == sum(sorted(theirs))


def states(kernel: Kernel) -> dict[str, str]:
    """Component -> state, as `%link status` shows them."""
    shown = kernel.execute("%link status")
    assert shown.status == "ok", shown.traceback_text
    return {line.split()[0]: line.split()[2] for line in shown.stdout.splitlines()[1:]}


def test_an_interrupt_while_the_kernel_reads_the_other_s_records_loses_none_of_them(kernels, cache, tmp_path):
    """A is interrupted while it takes in the records B wrote (a record file slow to read:
    here a pipe no one writes, sorted before B's): A's next cell still takes in B's run of
    `load`, whose change A's folder watch had already handed over, and finds `train` stale."""
    a, b = twins(kernels, tmp_path / "nb.ipynb", pipeline)
    assert a.run("train").status == "ok" and a.runs() == ["load", "clean", "train"]
    ours = written(cache, a.path, "train") and run_id(cache, a.path, "load")
    assert states(a.kernel) == {"load": "fresh", "clean": "fresh", "train": "fresh"}
    assert b.kernel.execute("%link run load --force").status == "ok" and b.runs() == ["load"]
    written(cache, a.path, "load", other_than=ours)
    slow = cache / notebook_key(str(a.path)) / "records" / "a-slow.json"
    os.mkfifo(slow)
    try:
        stopped = a.kernel.execute("%link status", interrupt_after=0.5)
        assert stopped.status == "error" and stopped.errors[0]["ename"] == "KeyboardInterrupt"
    finally:
        slow.unlink()
    assert states(a.kernel) == {"load": "fresh", "clean": "stale", "train": "stale"}



def test_two_kernels_with_a_value_kept_in_memory_only_do_not_run_each_other_s_pipeline_again(kernels, cache, tmp_path):
    """`load` makes a value that cannot be serialised (a lock): its run serves only the
    kernel that made it. B runs the pipeline after A, then A again: A's own runs still serve
    A (its `train` runs alone), instead of both kernels running everything again in turn."""

    def build(nb: Notebook) -> Notebook:
        nb.add("load", "import threading\nlock = threading.Lock()\nraw = [3, 1, 2]")
        nb.add("clean", "cleaned = sorted(raw)", "load")
        nb.add("train", "model = sum(cleaned)", "clean")
        return nb

    a, b = twins(kernels, tmp_path / "nb.ipynb", build)
    assert a.run("train").status == "ok" and a.runs() == ["load", "clean", "train"]
    ours = written(cache, a.path, "train")
    assert b.run("train").status == "ok" and b.runs() == ["load", "clean", "train"]
    written(cache, a.path, "train", other_than=ours)
    ran = a.run("train")
    assert ran.status == "ok", ran.traceback_text
    assert a.runs() == ["train"]


def test_a_kernel_interrupted_in_a_parent_the_other_kernel_then_records(kernels, cache, tmp_path):
    """A is inside `clean` (a parent its `train` cell runs silently) when B runs the pipeline
    through; A is interrupted: it records nothing of its half-run `clean`, and its next `train`
    takes B's `clean` from the store and runs only itself (SPEC §3 "Interrupt")."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    pid = value(kernels[0], "__import__('os').getpid()")

    def build(nb: Notebook) -> Notebook:
        nb.add("load", "raw = [3, 1, 2]")
        nb.add("clean", HOLD.format(started=str(started), gate=str(gate), pid=pid) + "cleaned = sorted(raw)", "load")
        nb.add("train", "model = sum(cleaned)\nprint('train ran')", "clean")
        return nb

    a, b = twins(kernels, tmp_path / "nb.ipynb", build)
    assert a.run("load").status == "ok" and a.runs() == ["load"]
    written(cache, a.path, "load")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(a.run, "train")
        while not started.exists():
            time.sleep(0.01)
        assert b.run("train").status == "ok" and b.runs() == ["clean", "clean", "train"]  # A's, held; B's
        theirs = written(cache, a.path, "train") and run_id(cache, a.path, "clean")
        a.kernel.manager.interrupt_kernel()
        stopped = held.result(timeout=60)
    assert stopped.status == "error" and stopped.errors[-1]["ename"] == "KeyboardInterrupt"
    assert run_id(cache, a.path, "clean") == theirs
    ran = a.run("train")
    assert ran.status == "ok" and ran.stdout == "train ran\n", ran.traceback_text
    assert a.runs() == ["train"] and value(a.kernel, "model") == 6
    assert run_id(cache, a.path, "clean") == theirs


def test_a_cache_cleared_by_the_other_kernel_is_not_called_fresh_here(kernels, cache, tmp_path):
    """A runs the pipeline, B takes its runs in; A clears the cache (`%link cache clear`).
    B no longer calls A's runs fresh, and its `train` runs its parents again without a line
    about cached values it failed to read."""
    a, b = twins(kernels, tmp_path / "nb.ipynb", pipeline)
    assert a.run("train").status == "ok" and a.runs() == ["load", "clean", "train"]
    written(cache, a.path, "train")
    assert states(b.kernel) == {"load": "fresh", "clean": "fresh", "train": "fresh"}
    assert a.kernel.execute("%link cache clear").status == "ok"
    assert states(b.kernel) == {"load": "never", "clean": "never", "train": "never"}
    ran = b.run("train")
    assert ran.status == "ok" and ran.stdout == "train ran 3\n" and ran.stderr == "", ran.traceback_text
    assert b.runs() == ["load", "clean", "train"]
