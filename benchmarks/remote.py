"""Remote components vs ipyparallel, same run, same machine:

    PYTHONPATH=. python benchmarks/remote.py [--runs 200] [--mb 100] [--big-runs 3]

1. trivial component round trip (`pass`, a fresh process per task) vs ipyparallel
   1-engine `apply_sync(noop)`, back to back and paced, in alternating batches;
2. MB in + MB out (`b = a + 1` on a float64 array, each input blob made once as the
   engine holds it from the parent's run) through file storage vs ipyparallel
   push + execute + pull: a first run for each of --big-runs new inputs, each followed by a
   re-run with the same input, which must upload nothing; after each pair, this machine's
   floor for a first run: the time to write the two new MB files any first run through a
   store must leave behind (its input and its output), kept like the store's blobs;
3. the same through local S3 servers: moto's (single-threaded Python, in its own process)
   and SeaweedFS `weed mini` (Go; the S3 server the tests check credentials against), and
   50 trivial round trips paced on each (set against ipyparallel's paced ones).

Timings are medians. The kernel side is this process, calling `run_remote` as the engine does
(input uploaded unless the store has it, task run, result fetched and verified), then keeping
the output as the engine does: frozen for the cache, the notebook's value loaded from it.
"""

from __future__ import annotations

import argparse
import atexit
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from _args import positive, require  # noqa: E402
from remote_support import WeedServer  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(storage: str, key_file: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "linkkernel.cli", "worker", "--listen", "tcp://127.0.0.1:*",
            "--storage", storage, "--key-file", str(key_file), *extra]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
                               env={**os.environ, **(env or {})})
    line = process.stdout.readline()
    if "ready on" not in line:
        raise SystemExit(f"worker did not start: {line!r}")
    return process, line.strip().rsplit(" ", 1)[1]


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def interleaved(calls: dict, runs: int, pause: float, batch: int = 25) -> dict[str, list[float]]:
    """`runs` timings of each call, taken in alternating batches so that both sides see the
    same machine (load, CPU frequency) rather than one side the start and the other the end;
    `pause` seconds before each call, as between a user's cells."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    while any(len(t) < runs for t in times.values()):
        for name, call in calls.items():
            for _ in range(min(batch, runs - len(times[name]))):
                time.sleep(pause)
                began = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - began)
    return times


def remote_noop(alias: str):
    from linkkernel.remote.executor import run_remote
    from linkkernel.tasks import ComponentTask

    task = ComponentTask("noop", "pass", {}, False)
    return lambda: run_remote(None, task, alias)


def input_blob(array):
    """The input as the engine hands it to run_remote: the parent's output blob, pickled and
    digested once when the parent ran, frozen into a memfd (linkkernel.store.freeze)."""
    from linkkernel.namespaces import dump
    from linkkernel.store import freeze

    return freeze(dump("a", array))


def new_files(directory: Path, array) -> float:
    """Seconds to write `array` into two new files that stay, as a first run's input and
    output blobs stay in the store: the page-cache pages a first run cannot avoid taking."""
    directory.mkdir(exist_ok=True)
    began = time.perf_counter()
    for _ in range(2):
        with open(directory / secrets.token_hex(8), "wb") as f:
            f.write(memoryview(array).cast("B"))
    return time.perf_counter() - began


def remote_big(alias: str, blobs: list, array, floor_dir: Path | None = None):
    """For each input blob: a first run (upload, run, fetch and verify the output), then a
    re-run with the same input, which must upload nothing; then, with `floor_dir`, the time
    to write two new files of the same size there (`new_files`)."""
    import numpy as np

    from linkkernel.cow import Loaded
    from linkkernel.remote.executor import run_remote, store_for
    from linkkernel.remote.registry import get
    from linkkernel.tasks import ComponentTask

    store = store_for(get(alias))
    first, again, first_bytes, again_bytes, floor = [], [], [], [], []
    for i, blob in enumerate(blobs):
        for times, uploaded in ((first, first_bytes), (again, again_bytes)):
            before = store.bytes_uploaded
            began = time.perf_counter()
            result = run_remote(None, ComponentTask("big", "b = a + 1", {"a": blob}, False), alias)
            b = Loaded(result.bound["b"], {}).value  # as Runner._run_remote keeps it
            times.append(time.perf_counter() - began)
            uploaded.append(store.bytes_uploaded - before)
            assert b[0] == array[0] + 10 * i + 1 and np.array_equal(b[-3:], array[-3:] + 10 * i + 1)
        if floor_dir is not None:
            floor.append(new_files(floor_dir, array))
    return first, again, first_bytes, again_bytes, floor


def start_moto(processes: list) -> tuple[str, dict[str, str]]:
    """moto's S3 server in its own process (single-threaded Python), with a bucket."""
    import s3fs

    port = free_port()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    processes.append(subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, key="bench", secret="bench").mkdir("lk-bench")
            return endpoint, env
        except Exception:  # server not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def s3_figures(name: str, endpoint: str, env: dict[str, str], key_file: Path, blobs: list, array, pause: float):
    """remote_big through `s3://lk-bench/NAME` on a worker of its own, then trivial round
    trips `pause` apart; the kernel side (this process) uses the same credentials."""
    from linkkernel.remote import registry

    os.environ.update(env)
    url = f"s3://lk-bench/{name}"
    worker, address = start_worker(url, key_file, "--storage-option", f"endpoint_url={endpoint}", env=env)
    try:
        registry.add(f"bench-{name}", address, url, str(key_file), {"endpoint_url": endpoint})
        figures = remote_big(f"bench-{name}", blobs, array)[:4]
        trivial = interleaved({"ours": remote_noop(f"bench-{name}")}, 50, pause)["ours"]
        return (*figures, trivial)
    finally:
        worker.terminate()
        worker.wait(10)


def start_ipyparallel():
    """A 1-engine ipyparallel cluster: (view, stop)."""
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=1, log_level=40)
    rc = cluster.start_and_connect_sync()
    rc.wait_for_engines(1, timeout=120)

    def stop() -> None:
        rc.close()
        cluster.stop_cluster_sync()

    return rc[:], stop


def ipyparallel_noop(view):
    def noop():
        return None

    return lambda: view.apply_sync(noop)


def ipyparallel_big(view, array, runs: int) -> list[float]:
    big = []
    for _ in range(runs):
        began = time.perf_counter()
        view.push({"a": array}, block=True)
        view.execute("b = a + 1", block=True)
        view.pull("b", block=True)
        big.append(time.perf_counter() - began)
    return big


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=positive, default=200)
    parser.add_argument("--mb", type=positive, default=100)
    parser.add_argument("--big-runs", type=positive, default=3)
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between paced round trips")
    args = parser.parse_args()
    require("ipyparallel", "numpy")

    import numpy as np

    tmp = Path(tempfile.mkdtemp(prefix="lk-bench-remote-"))
    atexit.register(shutil.rmtree, tmp, True)  # GBs of blobs; dirty pages would skew the next run
    os.environ["JUPYTER_CONFIG_DIR"] = str(tmp / "config")
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")  # an empty S3 mirror: the first run reads S3
    key_file = tmp / "key"
    with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(secrets.token_hex(32))  # never readable by others: the worker would refuse it
    array = np.random.default_rng(0).random(args.mb * 2**20 // 8)
    load_before = os.getloadavg()
    began = time.perf_counter()
    # A new input for each first run, none equal to another run's output (`a + 1`).
    blobs = [input_blob(array + 10 * i) for i in range(args.big_runs)]
    dump_ms = (time.perf_counter() - began) * 1000 / args.big_runs

    from linkkernel.remote import registry

    processes = []
    view, stop_ipyparallel = start_ipyparallel()
    try:
        worker, address = start_worker(str(tmp / "store"), key_file)
        processes.append(worker)
        registry.add("bench", address, str(tmp / "store"), str(key_file))
        calls = {"ours": remote_noop("bench"), "theirs": ipyparallel_noop(view)}
        trivial = interleaved(calls, args.runs, 0)
        paced = interleaved(calls, args.runs, args.pause)
        big, big_again, uploaded, uploaded_again, floor = remote_big("bench", blobs, array, tmp / "floor")

        s3_big, s3_again, s3_uploaded, s3_uploaded_again, s3_trivial = s3_figures(
            "moto", *start_moto(processes), key_file, blobs, array, args.pause)
        (tmp / "weed").mkdir()
        weed = WeedServer(tmp / "weed", bucket="lk-bench")
        processes.append(weed.process)
        weed_env = {"AWS_ACCESS_KEY_ID": weed.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": weed.SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
        weed_big, weed_again, weed_uploaded, _, weed_trivial = s3_figures(
            "weed", weed.endpoint, weed_env, key_file, blobs, array, args.pause)
        ipp_big = ipyparallel_big(view, array, args.big_runs)
    finally:
        stop_ipyparallel()
        for p in processes:
            p.terminate()
            p.wait(10)

    mb = args.mb
    rows = [
        ("trivial round trip, back to back (ms)", median_ms(trivial["ours"]), median_ms(trivial["theirs"])),
        (f"trivial round trip, {args.pause * 1000:.0f} ms apart (ms)", median_ms(paced["ours"]), median_ms(paced["theirs"])),
        (f"{mb} MB in + {mb} MB out, file storage, first run (ms)", median_ms(big), median_ms(ipp_big)),
        (f"{mb} MB in + {mb} MB out, file storage, re-run (ms)", median_ms(big_again), median_ms(ipp_big)),
        (f"  floor of a first run: 2 new {mb} MB files (ms)", median_ms(floor), None),
        (f"{mb} MB in + {mb} MB out, local S3 (moto), first run (ms)", median_ms(s3_big), median_ms(ipp_big)),
        (f"{mb} MB in + {mb} MB out, local S3 (moto), re-run (ms)", median_ms(s3_again), median_ms(ipp_big)),
        (f"{mb} MB in + {mb} MB out, SeaweedFS S3, first run (ms)", median_ms(weed_big), median_ms(ipp_big)),
        (f"{mb} MB in + {mb} MB out, SeaweedFS S3, re-run (ms)", median_ms(weed_again), median_ms(ipp_big)),
        (f"trivial round trip, local S3 (moto), {args.pause * 1000:.0f} ms apart (ms)", median_ms(s3_trivial), median_ms(paced["theirs"])),
        (f"trivial round trip, SeaweedFS S3, {args.pause * 1000:.0f} ms apart (ms)", median_ms(weed_trivial), median_ms(paced["theirs"])),
    ]
    print(f"{'measure':<52} {'linkkernel':>11} {'ipyparallel':>12} {'ratio':>7}")
    for name, ours, theirs in rows:
        compared = f"{theirs:>12.1f} {ours / theirs:>7.2f}" if theirs else ""
        print(f"{name:<52} {ours:>11.1f} {compared}".rstrip())
    print(f"file storage, each first run / floor (ms): {[f'{a * 1000:.0f}/{b * 1000:.0f}' for a, b in zip(big, floor)]}")
    print(f"bytes uploaded, file storage: first runs {uploaded}, re-runs {uploaded_again}")
    print(f"bytes uploaded, local S3:     first runs {s3_uploaded}, re-runs {s3_uploaded_again}")
    print(f"bytes uploaded, SeaweedFS:    first runs {weed_uploaded}")
    print(f"each input pickled + digested + frozen once, as by the parent's run (not in the figures): {dump_ms:.0f} ms")
    print(f"(runs: {args.runs} trivial each, in alternating batches of 25; {args.big_runs} inputs, each run first then re-run;")
    print(" medians; a fresh process per remote task)")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (2 cores, shared)")


if __name__ == "__main__":
    main()
