"""A chain of 10 components of ~0.2 s each: re-executing the leaf costs about the leaf alone.

Prints the leaf as a plain cell (the baseline), the first execution of the leaf (all 10 run:
what re-running everything costs, the seed's behaviour), and the second execution (ancestors
fresh, only the leaf runs), with the ratio to the baseline. Goal: second / baseline <= 1.1.
Run: .venv/bin/python benchmarks/incremental.py
"""

from __future__ import annotations

import statistics

from _engine_harness import Kernel, Notebook, setup, timed

N, SECONDS, REPEAT = 10, 0.2, 5


def main() -> None:
    home = setup()
    kernel = Kernel()
    try:
        nb = Notebook(kernel, home / "chain.ipynb")
        body = f"import time\ntime.sleep({SECONDS})\n"
        for i in range(N):
            nb.add(f"step{i}", body + f"v{i} = {i}", *([f"step{i - 1}"] if i else []), counted=False)
        nb.use()
        leaf = f"step{N - 1}"
        plain = statistics.median(timed(lambda: kernel.execute(body)) for _ in range(REPEAT))
        first = timed(lambda: nb.run(leaf))
        second = statistics.median(timed(lambda: nb.run(leaf)) for _ in range(REPEAT))
    finally:
        kernel.shutdown()
    print(f"{'case':<44}{'seconds':>9}{'x leaf':>9}")
    for name, value in [
        ("leaf alone (plain cell, baseline)", plain),
        (f"leaf, first run: all {N} run (re-run all)", first),
        ("leaf again, ancestors fresh", second),
    ]:
        print(f"{name:<44}{value:>9.3f}{value / plain:>9.2f}")


if __name__ == "__main__":
    main()
