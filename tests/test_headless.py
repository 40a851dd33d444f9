"""`linkkernel run` and `linkkernel demo` (SPEC §8): real notebooks on disk, real kernels, the real CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from linkkernel.errors import LinkError
from linkkernel.headless import plan
from support import REPO, kernel_env


def notebook(*cells: tuple[str, list[str]] | str) -> nbformat.NotebookNode:
    """A notebook of code cells given as (source, tags); a bare string is a markdown cell."""
    nb = new_notebook(metadata={"kernelspec": {"name": "link-python", "display_name": "Link Python", "language": "python"}})
    for index, cell in enumerate(cells):
        if isinstance(cell, str):
            nb.cells.append(new_markdown_cell(cell, id=f"md{index}"))
        else:
            source, tags = cell
            nb.cells.append(new_code_cell(source, id=f"c{index}", metadata={"tags": tags} if tags else {}))
    return nb


def write(path: Path, nb: nbformat.NotebookNode) -> Path:
    nbformat.write(nb, str(path))
    return path


def linkkernel(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "linkkernel.cli", *args],
        capture_output=True, text=True, env=kernel_env(), cwd=cwd, timeout=180,
    )


def outputs_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] == "error":
            parts.append("\n".join(output["traceback"]))
        else:
            parts.append(str(output.get("data", {}).get("text/plain", "")))
    return "".join(parts)


def summary(stdout: str) -> dict[str, tuple[str, str]]:
    """The summary table as component -> (state, where)."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"(\S+)\s+(ran|failed|not run|cached)\s+(?:-|[\d.]+ s)\s+(\S+)$", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    return rows


def by_id(nb) -> dict:
    return {cell.id: cell for cell in nb.cells}


# A pipeline whose notebook order is not its run order: `report` sits above its parent.
PIPELINE = notebook(
    "# a pipeline",
    ("import os\nprint('setup ran')", []),
    ("total = sum(values)\nprint('report: total', total)", ["component:report", "parent:double"]),
    ("values = [1, 2, 3]\nprint('load ran')", ["component:load"]),
    ("values = [v * 2 for v in values]\nprint('double ran', values)", ["component:double", "parent:load"]),
    ("side = len(values)\nprint('side ran')", ["component:side", "parent:load"]),
    ("print('inspect sees', total)", []),
)


# ---- the plan: pure, no kernel ------------------------------------------------------------


def test_plan_runs_parents_first_and_plain_cells_in_notebook_order() -> None:
    steps = [step.label for step in plan(PIPELINE)]
    assert steps == ["cell 2", "load", "double", "report", "side", "cell 7"]


def test_plan_with_targets_runs_only_targets_and_ancestors() -> None:
    assert [step.label for step in plan(PIPELINE, ["double"])] == ["load", "double"]
    assert [step.label for step in plan(PIPELINE, ["side", "report"])] == ["load", "double", "report", "side"]


def test_plan_refuses_unknown_target_and_invalid_pipeline() -> None:
    with pytest.raises(LinkError, match=r"no component named 'nope' .*components: load, double, report, side"):
        plan(PIPELINE, ["nope"])
    cyclic = notebook(("a = 1", ["component:a", "parent:b"]), ("b = 1", ["component:b", "parent:a"]))
    with pytest.raises(LinkError, match=r"cycle in pipeline: (a -> b -> a|b -> a -> b)"):
        plan(cyclic)


# ---- the command: real kernels ------------------------------------------------------------


def test_run_writes_each_components_outputs_into_its_own_cell(tmp_path: Path) -> None:
    source = write(tmp_path / "pipe.ipynb", PIPELINE)
    result = linkkernel("run", str(source), "-o", str(tmp_path / "out.ipynb"))
    assert result.returncode == 0, result.stderr
    cells = by_id(nbformat.read(str(tmp_path / "out.ipynb"), as_version=4))
    assert outputs_text(cells["c1"]) == "setup ran\n"
    assert outputs_text(cells["c3"]) == "load ran\n"
    assert outputs_text(cells["c4"]) == "double ran [2, 4, 6]\n"
    assert outputs_text(cells["c2"]) == "report: total 12\n"
    assert outputs_text(cells["c5"]) == "side ran\n"
    assert outputs_text(cells["c6"]) == "inspect sees 12\n"
    # The summary table: every component ran, locally.
    assert summary(result.stdout) == {name: ("ran", "local") for name in ("load", "double", "report", "side")}
    assert "executed notebook written to" in result.stdout
    # stderr is no terminal here (as in a CI log): a line per component, no progress bar.
    progress = [line for line in result.stderr.splitlines() if line.startswith("linkkernel run: [")]
    assert progress == [f"linkkernel run: [{i}/4] {name} ran" for i, name in enumerate(("load", "double", "report", "side"), 1)]
    assert "\r" not in result.stderr
    # The notebook the user gave is left as it was.
    assert nbformat.read(str(source), as_version=4) == PIPELINE


def test_run_targets_only_their_pipeline_and_defaults_output_beside_the_notebook(tmp_path: Path) -> None:
    source = write(tmp_path / "pipe.ipynb", PIPELINE)
    result = linkkernel("run", str(source), "--target", "double")
    assert result.returncode == 0, result.stderr
    cells = by_id(nbformat.read(str(tmp_path / "pipe.out.ipynb"), as_version=4))
    assert outputs_text(cells["c3"]) == "load ran\n"
    assert outputs_text(cells["c4"]) == "double ran [2, 4, 6]\n"
    for not_run in ("c1", "c2", "c5", "c6"):
        assert cells[not_run].outputs == [] and cells[not_run].execution_count is None
    assert list(summary(result.stdout)) == ["load", "double"]


FAILING = notebook(
    ("n = 3\nprint('load ran')", ["component:load"]),
    ("def explode(v):\n    return v / 0\n\nresult = explode(n)", ["component:broken", "parent:load"]),
    ("after = 1\nprint('after ran')", ["component:after", "parent:broken"]),
)


def test_run_failure_exits_non_zero_with_the_users_error(tmp_path: Path) -> None:
    source = write(tmp_path / "fail.ipynb", FAILING)
    result = linkkernel("run", str(source), "-o", str(tmp_path / "out.ipynb"))
    assert result.returncode == 1
    assert "linkkernel run: component 'broken' failed:" in result.stderr
    assert "ZeroDivisionError" in result.stderr and "return v / 0" in result.stderr
    assert "\x1b[" not in result.stderr, "colours must be stripped when stderr is not a terminal"
    assert "kernel log" not in result.stderr, "a user error needs no kernel log"
    states = {name: state for name, (state, _) in summary(result.stdout).items()}
    assert states == {"load": "ran", "broken": "failed", "after": "not run"}
    # The executed notebook is written anyway, with the error in the failing cell.
    cells = by_id(nbformat.read(str(tmp_path / "out.ipynb"), as_version=4))
    assert [o["ename"] for o in cells["c1"].outputs if o["output_type"] == "error"] == ["ZeroDivisionError"]
    assert cells["c2"].outputs == []


def test_invalid_pipeline_is_refused_in_one_line_before_a_kernel_starts(tmp_path: Path) -> None:
    source = write(tmp_path / "bad.ipynb", notebook(("a = 1", ["component:a", "parent:ghost"])))
    result = linkkernel("run", str(source))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "parent 'ghost', which is not declared in" in result.stderr
    assert not (tmp_path / "bad.out.ipynb").exists()
    missing = linkkernel("run", str(tmp_path / "missing.ipynb"))
    assert missing.returncode == 1 and missing.stderr.strip().endswith("missing.ipynb: no such notebook")
    for name, text, why in [("list.ipynb", "[]", "not a notebook (a JSON list, not an object)"),
                            ("cells.ipynb", '{"cells": 3}', "not a notebook (no 'cells' list)")]:
        (tmp_path / name).write_text(text)
        refused = linkkernel("run", str(tmp_path / name))
        assert refused.returncode == 1 and refused.stderr.strip() == f"linkkernel run: {tmp_path / name}: {why}"


def test_an_unwritable_output_is_one_line_and_the_notebook_is_untouched(tmp_path: Path) -> None:
    source = write(tmp_path / "pipe.ipynb", notebook(("a = 1", ["component:a"])))
    before = source.read_bytes()
    result = linkkernel("run", str(source), "-o", str(tmp_path / "no-such-dir" / "out.ipynb"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"linkkernel run: {tmp_path / 'no-such-dir' / 'out.ipynb'}: cannot write: No such file or directory"
    )
    assert "Traceback" not in result.stderr
    assert source.read_bytes() == before


def test_fresh_components_are_not_rerun_unless_forced(tmp_path: Path) -> None:
    source = write(tmp_path / "pipe.ipynb", PIPELINE)
    first = linkkernel("run", str(source), "-o", str(tmp_path / "first.ipynb"))
    assert first.returncode == 0, first.stderr
    # Editing `side` makes it stale; everything else is fresh in the cache store.
    edited = nbformat.read(str(source), as_version=4)
    by_id(edited)["c5"].source = "side = len(values) + 1\nprint('side ran again')"
    write(source, edited)
    second = linkkernel("run", str(source), "-o", str(tmp_path / "second.ipynb"))
    assert second.returncode == 0, second.stderr
    assert summary(second.stdout) == {
        "load": ("cached", "local"), "double": ("cached", "local"),
        "report": ("cached", "local"), "side": ("ran", "local"),
    }
    cells = by_id(nbformat.read(str(tmp_path / "second.ipynb"), as_version=4))
    assert outputs_text(cells["c3"]) == "load ran\n", "a cached component shows its stored outputs"
    assert outputs_text(cells["c2"]) == "report: total 12\n"
    assert outputs_text(cells["c5"]) == "side ran again\n"
    assert outputs_text(cells["c6"]) == "inspect sees 12\n", "plain cells see cached components' values"
    forced = linkkernel("run", str(source), "--force", "--target", "double", "-o", str(tmp_path / "forced.ipynb"))
    assert forced.returncode == 0, forced.stderr
    assert summary(forced.stdout) == {"load": ("ran", "local"), "double": ("ran", "local")}


def test_demo_runs_the_example_end_to_end_with_a_local_worker(tmp_path: Path) -> None:
    result = linkkernel("demo", "-o", str(tmp_path / "demo.ipynb"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result.stdout) == {
        "load": ("ran", "local"), "features": ("ran", "local"), "train": ("ran", "remote:local"),
        "evaluate": ("ran", "local"), "plot": ("ran", "local"),
    }
    assert "test accuracy" in result.stdout
    cells = by_id(nbformat.read(str(tmp_path / "demo.ipynb"), as_version=4))
    assert outputs_text(cells["train"]).startswith("trained 500 steps")
    assert any("image/svg+xml" in o.get("data", {}) for o in cells["plot"].outputs)
    # Nothing is left behind: not in the working directory, and the demo's own directory
    # (worker storage, key, registry, cache) is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.ipynb"]
    storage = Path(re.search(r"storage (\S+)", result.stdout)[1])
    assert storage.parent.name.startswith("linkkernel-demo-") and not storage.parent.exists()


def test_timeout_and_a_dying_kernel_fail_the_run_in_one_clear_line(tmp_path: Path) -> None:
    slow = write(tmp_path / "slow.ipynb", notebook(("import time\ntime.sleep(60)", ["component:slow"])))
    result = linkkernel("run", str(slow), "--timeout", "2")
    assert result.returncode == 1
    assert "component 'slow' failed:\ntimed out after 2 s" in result.stderr
    dying = write(tmp_path / "dying.ipynb", notebook(("import os\nos._exit(3)", ["component:dying"])))
    result = linkkernel("run", str(dying))
    assert result.returncode == 1
    assert "component 'dying' failed:\nthe kernel died" in result.stderr
    log = Path(re.search(r"\(kernel log: (\S+)\)", result.stderr)[1])
    assert log.is_file()
    log.unlink()


def test_unregistered_worker_alias_is_refused_before_a_kernel_starts(tmp_path: Path) -> None:
    source = write(tmp_path / "remote.ipynb", notebook(
        ("print('setup')", []),
        ("a = 1", ["component:a", "remote:nowhere"]),
    ))
    result = linkkernel("run", str(source))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "remote worker 'nowhere' is not registered" in result.stderr
    assert not (tmp_path / "remote.out.ipynb").exists()


def test_a_kernel_that_cannot_start_is_one_line_naming_its_log(tmp_path: Path) -> None:
    # A link-python kernelspec found first on JUPYTER_PATH whose interpreter cannot import the
    # kernel module: the kernel dies before replying, wherever linkkernel is installed.
    source = write(tmp_path / "pipe.ipynb", notebook(("a = 1", ["component:a"])))
    spec_dir = tmp_path / "jupyter" / "kernels" / "link-python"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "linkkernel_is_not_here", "-f", "{connection_file}"],
            "display_name": "Link Python", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = kernel_env()
    env["JUPYTER_PATH"] = os.pathsep.join([str(tmp_path / "jupyter"), env.get("JUPYTER_PATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "linkkernel.cli", "run", str(source)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=180,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "the Link Python kernel did not start" in result.stderr
    log = Path(re.search(r"its log: (\S+)$", result.stderr.strip())[1])
    assert "No module named linkkernel_is_not_here" in log.read_text()
    log.unlink()


def test_two_runs_of_one_notebook_at_once_take_turns(tmp_path: Path) -> None:
    """Two `linkkernel run` of one notebook started together (two CI jobs on one checkout):
    each replaced the other's runs in the cache, so an executed notebook could show its own
    `load` next to a `clean` reported cached from the other run's `load`. The second now
    waits, says so, and then finds the first's results fresh: each notebook agrees with itself."""
    source = write(tmp_path / "pipe.ipynb", notebook(
        ("import time, uuid\ntoken = uuid.uuid4().hex\ntime.sleep(3)\nprint('load', token)", ["component:load"]),
        ("print('clean', token)", ["component:clean", "parent:load"]),
    ))
    command = [sys.executable, "-m", "linkkernel.cli", "run", str(source), "-o"]
    runs = [subprocess.Popen([*command, str(tmp_path / f"out{i}.ipynb")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=kernel_env()) for i in range(2)]
    done = [(run.communicate(timeout=180), run.returncode) for run in runs]
    assert [rc for _, rc in done] == [0, 0], [err for (_, err), _ in done]
    waited = [i for i, ((_, err), _) in enumerate(done) if "linkkernel run: waiting for the run of pipe.ipynb already under way (pid " in err]
    assert len(waited) == 1, [err for (_, err), _ in done]
    assert summary(done[waited[0]][0][0]) == {"load": ("cached", "local"), "clean": ("cached", "local")}
    tokens = []
    for i in range(2):
        cells = by_id(nbformat.read(str(tmp_path / f"out{i}.ipynb"), as_version=4))
        load, clean = outputs_text(cells["c0"]).split(), outputs_text(cells["c1"]).split()
        assert load[0] == "load" and clean[0] == "clean" and load[1] == clean[1]
        tokens.append(load[1])
    assert tokens[0] == tokens[1]
