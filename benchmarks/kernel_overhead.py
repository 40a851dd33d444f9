"""Link Python vs stock ipykernel: start-up time and `pass` execute round trip, same run.

    python benchmarks/kernel_overhead.py [--starts 10] [--kernels 3] [--runs 200]

Both kernelspecs are installed into a temporary prefix with this interpreter, and the two
kernels are measured alternately so machine load affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from _args import positive
from _engine_harness import setup
from jupyter_client.manager import KernelManager

KERNELS = {"stock ipykernel": "python3", "Link Python": "link-python"}


def start(name: str) -> tuple[KernelManager, object, float]:
    began = time.perf_counter()
    manager = KernelManager(kernel_name=name)
    manager.start_kernel(stderr=subprocess.DEVNULL)  # ipykernel's TCP warning is noise here
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    return manager, client, time.perf_counter() - began


def round_trips(client, runs: int) -> list[float]:
    client.execute_interactive("pass", timeout=30)  # warm up
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        client.execute_interactive("pass", timeout=30, output_hook=lambda msg: None)
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=positive, default=10)
    parser.add_argument("--kernels", type=positive, default=3)
    parser.add_argument("--runs", type=positive, default=200)
    args = parser.parse_args()
    setup(stock=True)
    startup: dict[str, list[float]] = {label: [] for label in KERNELS}
    trips: dict[str, list[float]] = {label: [] for label in KERNELS}
    for _ in range(args.starts):
        for label, name in KERNELS.items():
            manager, client, seconds = start(name)
            startup[label].append(seconds)
            client.stop_channels()
            manager.shutdown_kernel(now=True)
    for _ in range(args.kernels):
        for label, name in KERNELS.items():
            manager, client, _ = start(name)
            trips[label] += round_trips(client, args.runs)
            client.stop_channels()
            manager.shutdown_kernel(now=True)
    base_start = statistics.median(startup["stock ipykernel"])
    base_trip = statistics.median(trips["stock ipykernel"])
    print(f"{'kernel':<16} {'start-up (median)':>18} {'ratio':>6} {'pass round trip (median)':>25} {'ratio':>6}")
    for label in KERNELS:
        s, t = statistics.median(startup[label]), statistics.median(trips[label])
        print(f"{label:<16} {s * 1000:>15.0f} ms {s / base_start:>6.2f} {t * 1000:>22.2f} ms {t / base_trip:>6.2f}")
    print(f"\n{args.starts} starts per kernel; {args.runs} round trips on each of {args.kernels} kernels per kind")


if __name__ == "__main__":
    main()
