"""A chain of N components (`c0 <- c1 <- ... <- cN-1`), each one line, vs stock ipykernel.

Times, over the Jupyter protocol: executing the last component in a fresh kernel (all N run
silently), the same after a kernel restart (every ancestor fresh in the cache: only the last
runs, the others' outputs are published from the store), and `%link run --force` of the last
(all N again, in one cell), and every component cell executed in order, one request each
(JupyterLab's Run All, with the request metadata it sends: each cell runs its component, its
ancestors fresh); the baseline is stock ipykernel executing the same N cells in order, one
request each. What is measured is the engine's cost per component in a deep pipeline, which
must grow linearly with the depth.
Run: .venv/bin/python benchmarks/scale.py [--depth 400] [--run-all]
"""

from __future__ import annotations

import argparse
import time

from _args import positive
from _engine_harness import Kernel, Notebook, setup, timed

TIMEOUT = 600
# What JupyterLab 4 adds to every cell's saved metadata in an execute_request (besides cellId):
# `trusted` is never saved, so a kernel comparing whole metadata with the file sees every cell changed.
JUPYTERLAB_EXTRAS = {"trusted": True, "deletedCells": [], "recordTiming": False}


def chain(depth: int) -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, code, parents) of each component: each reads its parent's value and adds one."""
    cells = [("c0", "v0 = 0", ())]
    return cells + [(f"c{i}", f"v{i} = v{i - 1} + 1", (f"c{i - 1}",)) for i in range(1, depth)]


def wait_for_records(home, name: str) -> None:
    """Until the background writer has stored `name`'s record (a restart would lose it)."""
    deadline = time.monotonic() + TIMEOUT
    while not list(home.glob(f"cache/linkkernel/*/records/{name}.json")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"record of {name} not written")
        time.sleep(0.1)


def as_jupyterlab(nb: Notebook, name: str):
    """Execute a component's cell with the request metadata JupyterLab sends for it."""
    cell = nb.cells[name]
    return nb.kernel.execute(cell["source"], metadata={**cell["metadata"], **JUPYTERLAB_EXTRAS}, cell_id=cell["id"])


def each_ok(results) -> float:
    """Seconds to execute one cell after another (`results` makes each when asked), each ok."""
    started = time.perf_counter()
    for result in results:
        assert result.status == "ok", result.traceback_text
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=positive, default=400)
    parser.add_argument("--run-all", action="store_true", help="time only Run All (and stock): the other cases take most of the minute")
    args = parser.parse_args()
    depth = args.depth
    cells = chain(depth)
    last = cells[-1][0]
    home = setup(stock=True)

    stock = Kernel(kernel_name="python3")
    try:
        stock_time = each_ok(stock.execute(code) for _, code, _ in cells)
    finally:
        stock.shutdown()

    link = Kernel()
    try:
        nb = Notebook(link, home / "scale.ipynb")
        for name, code, parents in cells:
            nb.add(name, code, *parents, counted=False)
        nb.use()
        if not args.run_all:
            first = timed(lambda: nb.run(last, timeout=TIMEOUT))
            wait_for_records(home, last)
            link.restart()
            nb.use()
            restarted = timed(lambda: nb.run(last, timeout=TIMEOUT))
            check = link.execute(f"print(v{depth - 1})")
            assert check.stdout.strip() == str(depth - 1), check.stdout
            forced = timed(lambda: link.execute(f"%link run --force {last}", timeout=TIMEOUT))
        in_order = each_ok(as_jupyterlab(nb, name) for name, _, _ in cells)
        check = link.execute(f"print(v{depth - 1})")
        assert check.stdout.strip() == str(depth - 1), check.stdout
    finally:
        link.shutdown()

    print(f"chain of {depth} components, one line each")
    print(f"{'case':<52}{'seconds':>9}{'x stock':>9}")
    rows = [(f"stock ipykernel: the {depth} cells in order (baseline)", stock_time)]
    if not args.run_all:
        rows += [
            ("last component, fresh kernel: all run", first),
            ("last component after a restart: ancestors cached", restarted),
            ("%link run --force last: all run again", forced),
        ]
    for case, value in [*rows, ("each component cell in order (Run All)", in_order)]:
        print(f"{case:<52}{value:>9.2f}{value / stock_time:>9.2f}")


if __name__ == "__main__":
    main()
