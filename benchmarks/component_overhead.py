"""Overhead of a component cell with fresh parents over a plain cell (goal: <= 2 ms).

Both cells run `pass`; the component has two fresh parents holding small values. Round trips
over the Jupyter protocol, median of many, same kernel.
Run: .venv/bin/python benchmarks/component_overhead.py
"""

from __future__ import annotations

import statistics

from _engine_harness import Kernel, Notebook, setup, timed

REPEAT = 200


def main() -> None:
    home = setup()
    kernel = Kernel()
    try:
        nb = Notebook(kernel, home / "overhead.ipynb")
        nb.add("p1", "a = list(range(100))\nname = 'x'", counted=False)
        nb.add("p2", "b = {'k': 1.5}", counted=False)
        nb.add("leaf", "pass", "p1", "p2", counted=False)
        nb.use()
        nb.run("leaf")
        for _ in range(20):  # warm up both paths
            kernel.execute("pass")
            nb.run("leaf")
        plain = statistics.median(timed(lambda: kernel.execute("pass")) for _ in range(REPEAT))
        component = statistics.median(timed(lambda: nb.run("leaf")) for _ in range(REPEAT))
    finally:
        kernel.shutdown()
    print(f"{'case':<40}{'median ms':>10}")
    print(f"{'plain cell (baseline)':<40}{plain * 1e3:>10.2f}")
    print(f"{'component, 2 fresh parents':<40}{component * 1e3:>10.2f}")
    print(f"{'overhead':<40}{(component - plain) * 1e3:>10.2f}")


if __name__ == "__main__":
    main()
