"""Merge and diff of generated pipeline notebooks: linkkernel vs nbdime, in the same run.

Both tools run as subprocesses, the way git runs a merge driver (start-up included), and
each run's peak RSS comes from wait4(). Usage:

    .venv/bin/python benchmarks/git.py [--sizes 200 2000] [--timeout 180]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _args import positive, require

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==" * 20


def make_base(n: int, rng: random.Random) -> dict:
    cells, components = [], []
    for i in range(n):
        if i % 10 == 0:
            cells.append({"cell_type": "markdown", "id": f"m{i}", "metadata": {}, "source": [f"## Step {i}\n", "Some notes.\n"]})
            continue
        lines = [f"value_{i} = compute({i}, scale={rng.randint(1, 9)})\n", f"result_{i} = transform(value_{i})\n",
                 f"print('step {i}', result_{i})\n"]
        tags = []
        if i % 4 == 1:
            parents = rng.sample(components[-6:], min(len(components), rng.randint(0, 2)))
            tags = [f"component:step_{i}", *(f"parent:{p}" for p in parents)]
            components.append(f"step_{i}")
        outputs = [
            {"output_type": "stream", "name": "stdout", "text": [f"step {i} {rng.random()}\n"]},
            {"output_type": "execute_result", "execution_count": i, "metadata": {},
             "data": {"text/plain": [f"array({i})"], "image/png": PNG}},
        ]
        cells.append({"cell_type": "code", "id": f"c{i}", "metadata": {"tags": tags} if tags else {},
                      "source": lines, "outputs": outputs, "execution_count": i})
    return {"cells": cells, "metadata": {"kernelspec": {"name": "link-python", "display_name": "Link Python",
                                                        "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}


def make_side(base: dict, name: str, targets: list[int], rng: random.Random, conflicts: list[int]) -> dict:
    """5% of cells edited, plus inserts, deletes and tag rewires on disjoint cells; `conflicts` edited by both."""
    nb = copy.deepcopy(base)
    cells = nb["cells"]
    deleted = set()
    for k, index in enumerate(targets):
        cell = cells[index]
        if cell["cell_type"] != "code":
            continue
        action = k % 6
        if action in (0, 1, 2):
            cell["source"][1] = f"result_{index} = transform(value_{index}, variant='{name}')\n"
            cell["outputs"] = cell["outputs"][:1]
        elif action == 3 and not cell["metadata"].get("tags"):
            deleted.add(cell["id"])
        elif action == 4:
            cell["metadata"].setdefault("tags", [])
            if cell["metadata"]["tags"]:
                cell["metadata"]["tags"] = [t for t in cell["metadata"]["tags"] if not t.startswith("parent:")]
        else:
            cell["execution_count"] = 1000 + index
    for index in conflicts:
        cells[index]["source"][0] = f"value_{index} = compute({index}, scale=0, by='{name}')\n"
    inserts = [(rng.randrange(len(cells)), k) for k in range(max(1, len(cells) // 100))]
    nb["cells"] = [c for c in cells if c["id"] not in deleted]
    for position, k in sorted(inserts, reverse=True):
        nb["cells"].insert(min(position, len(nb["cells"])), {
            "cell_type": "code", "id": f"{name}-new-{k}", "metadata": {}, "outputs": [], "execution_count": None,
            "source": [f"# {name} inserted a check here\n", f"assert_{name}_invariants(section={k})\n"]})
    return nb


def generate(n: int, folder: Path, with_ids: bool) -> tuple[Path, Path, Path]:
    rng = random.Random(n)
    base = make_base(n, rng)
    code_cells = [i for i, c in enumerate(base["cells"]) if c["cell_type"] == "code"]
    conflicts = rng.sample(code_cells, 3)
    free = [i for i in code_cells if i not in conflicts]
    rng.shuffle(free)
    share = max(1, n * 5 // 100)
    ours = make_side(base, "ours", free[:share], rng, conflicts)
    theirs = make_side(base, "theirs", free[share:2 * share], rng, conflicts)
    paths = []
    for label, nb in (("base", base), ("ours", ours), ("theirs", theirs)):
        if not with_ids:
            nb = copy.deepcopy(nb)
            nb["nbformat_minor"] = 4
            for cell in nb["cells"]:
                cell.pop("id", None)
        path = folder / f"{label}-{n}-{'ids' if with_ids else 'noids'}.ipynb"
        path.write_text(json.dumps(nb, indent=1, sort_keys=True) + "\n")
        paths.append(path)
    return paths[0], paths[1], paths[2]


def measure(command: list[str], timeout: float) -> tuple[float, float, float, int | None, bool]:
    """(wall seconds, CPU seconds, peak RSS MB, exit status, timed out) of one subprocess.

    CPU time (user + system, from wait4) is reported next to wall time because the machine is
    shared: wall time grows with other people's load, CPU time much less.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            elapsed = time.perf_counter() - start
            process.returncode = os.waitstatus_to_exitcode(status)
            return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, process.returncode, False
        if time.perf_counter() - start > timeout:
            os.killpg(process.pid, signal.SIGKILL)
            _, _, usage = os.wait4(process.pid, 0)
            return timeout, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, None, True
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=positive, nargs="+", default=[200, 2000])
    parser.add_argument("--timeout", type=float, default=180.0, help="cap on each nbdime run (s)")
    parser.add_argument("--repeat", type=positive, default=3, help="runs of each of ours (best kept)")
    args = parser.parse_args()
    require("nbdime")
    python = sys.executable
    cases = [(n, True) for n in args.sizes] + [(max(args.sizes), False)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n, with_ids in cases:
            base, ours, theirs = generate(n, folder, with_ids)
            out = folder / "out.ipynb"
            jobs = {
                "merge": ([python, "-m", "linkkernel.cli", "merge", str(base), str(ours), str(theirs), "-o", str(out)],
                          [str(VENV_BIN / "nbmerge"), str(base), str(ours), str(theirs), "--out", str(out)]),
                "diff": ([python, "-m", "linkkernel.cli", "diff", str(base), str(ours)],
                         [str(VENV_BIN / "nbdiff"), "--no-color", str(base), str(ours)]),
            }
            for job, (ours_cmd, nbdime_cmd) in jobs.items():
                runs = [measure(ours_cmd, args.timeout) for _ in range(args.repeat)]
                seconds, cpu, rss, status, _ = min(runs)
                nb_seconds, nb_cpu, nb_rss, nb_status, timed_out = measure(nbdime_cmd, args.timeout)
                label = f"{n} cells{'' if with_ids else ', no ids'}"
                nb_time = f"> {args.timeout:.0f} s" if timed_out else f"{nb_seconds:.2f} s"
                speedup = f">{args.timeout / seconds:.0f}x" if timed_out else f"{nb_seconds / seconds:.0f}x"
                rows.append((label, job, f"{seconds:.2f} s", f"{cpu:.2f} s", f"{rss:.0f} MB", str(status),
                             nb_time, f"{nb_cpu:.2f} s", f"{nb_rss:.0f} MB", str(nb_status), speedup))
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    header = ("case", "job", "linkkernel wall", "CPU", "peak RSS", "exit",
              "nbdime wall", "CPU", "peak RSS", "exit", "speed-up (wall)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
