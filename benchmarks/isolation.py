"""A child whose fresh parents hold 1 GB of numpy arrays, vs the same cell in stock ipykernel.

The extra seconds are what isolation costs (the child gets a private copy of its inputs, and
its outputs are found by re-digesting them). Goal: <= one memory copy of the inputs; prints
the effective GB/s and each kernel's peak RSS.
Run: .venv/bin/python benchmarks/isolation.py [GB]
"""

from __future__ import annotations

import statistics
import sys
import time

from _engine_harness import Kernel, Notebook, peak_rss_mb, setup, timed

REPEAT = 3


def wait_for_cache(home, names: list[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(list(home.glob(f"cache/linkkernel/*/records/{n}.json")) for n in names):
            return
        time.sleep(0.2)


def main() -> None:
    gb = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    half = int(gb * 2**30 / 8 / 2)
    parent_a = f"import numpy as np\nleft = np.ones({half})"
    parent_b = f"import numpy as np\nright = np.full({half}, 2.0)"
    child = "total = float(left[0] + right[-1])"
    home = setup(stock=True)

    stock = Kernel(kernel_name="python3")
    try:
        stock.execute(parent_a)
        stock.execute(parent_b)
        stock_time = statistics.median(timed(lambda: stock.execute(child)) for _ in range(REPEAT))
        stock_rss = peak_rss_mb(stock)
    finally:
        stock.shutdown()

    link = Kernel()
    try:
        nb = Notebook(link, home / "isolation.ipynb")
        nb.add("a", parent_a, counted=False).add("b", parent_b, counted=False)
        nb.add("child", child, "a", "b", counted=False)
        nb.use()
        assert nb.run("a").status == "ok" and nb.run("b").status == "ok"
        wait_for_cache(home, ["a", "b"])  # fresh parents: computed and stored before the child runs
        link_time = statistics.median(timed(lambda: nb.run("child")) for _ in range(REPEAT))
        link_rss = peak_rss_mb(link)
    finally:
        link.shutdown()

    extra = link_time - stock_time
    print(f"inputs: {gb:.2f} GB of numpy in two parents")
    print(f"{'kernel':<28}{'child s':>9}{'peak RSS MB':>13}")
    print(f"{'stock ipykernel (baseline)':<28}{stock_time:>9.3f}{stock_rss:>13.0f}")
    print(f"{'Link Python':<28}{link_time:>9.3f}{link_rss:>13.0f}")
    rate = f"{gb / extra:.2f} GB/s of inputs" if extra > 0.001 else "within noise: no copy of the inputs"
    print(f"extra: {extra:+.3f} s  ->  {rate}")


if __name__ == "__main__":
    main()
