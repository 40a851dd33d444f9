"""`linkkernel run`: execute a pipeline notebook without a browser (SPEC §8).

The notebook runs in a real Link Python kernel driven by nbclient, so a headless run and a
JupyterLab session share one engine: same declarations, staleness, cache store and errors.
Each component is executed as its own cell, parents first, so its outputs land in its cell.

Order: cells run at their place in the notebook, as with Run All, except that a component a
cell above needs runs just before that cell, so every component runs once, after its parents.
Plain (untagged) cells run on a full run: setup cells first, inspection cells at the end see
the components' published outputs. With `--target`, only the pipeline runs: plain cells
cannot feed a component (components start from their parents' namespaces) and may read
components that were not selected.

Components whose results are fresh in the cache store (same code, same parent runs; e.g. from
an earlier run of this notebook) are not re-run: their cells get the stored outputs and the
summary says `cached`. `--force` runs every selected component.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from linkkernel.declarations import NOTEBOOK_ENCODING, Component, cell_source, notebook_components, notebook_problem
from linkkernel.errors import INTERNAL_ERROR_NAME, LinkError
from linkkernel.graph import build_graph, run_order, with_ancestors

KERNEL_NAME = "link-python"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# The keys of each kind of nbformat output (nbformat 4 schema), as Jupyter keeps them from a message.
OUTPUT_KEYS = {
    "stream": ("name", "text"),
    "display_data": ("data", "metadata"),
    "execute_result": ("data", "metadata", "execution_count"),
    "error": ("ename", "evalue", "traceback"),
}

# States in the summary table.
RAN, CACHED, FAILED, NOT_RUN = "ran", "cached", "failed", "not run"


@dataclass(frozen=True)
class Step:
    """One cell to execute: a component, or a plain cell when `component` is None."""

    index: int
    component: Component | None = None

    @property
    def label(self) -> str:
        return self.component.name if self.component else f"cell {self.index + 1}"


@dataclass
class Outcome:
    """How one component fared, for the summary table."""

    name: str
    where: str
    state: str = NOT_RUN
    seconds: float | None = None


@dataclass
class RunReport:
    """The executed notebook, every component's outcome, and the first failure, if any."""

    notebook: Any
    outcomes: list[Outcome] = field(default_factory=list)
    failed: str | None = None
    error: str | None = None
    kernel_log: Path | None = None
    kernel_trouble: bool = False

    @property
    def ok(self) -> bool:
        return self.failed is None


def read_notebook(path: str | os.PathLike) -> Any:
    """The notebook at `path`, refused in one line when it is missing or not a notebook.

    The JSON is checked with `notebook_problem` before nbformat sees it: nbformat fails on a
    JSON list with an AttributeError from its own code and accepts `{"cells": 3}`, which
    would then surface as a TypeError in `plan`.
    """
    import nbformat

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise LinkError(f"{path}: no such notebook") from None
    except OSError as exc:
        raise LinkError(f"{path}: not a readable notebook ({exc})") from None
    try:
        text = data.decode(NOTEBOOK_ENCODING)
        parsed = json.loads(text)
    except ValueError as exc:
        raise LinkError(f"{path}: not a readable notebook ({exc})") from None
    except RecursionError:
        raise LinkError(f"{path}: not a readable notebook (JSON nested too deeply)") from None
    problem = notebook_problem(parsed) or _duplicate_id(parsed)
    if problem:
        raise LinkError(f"{path}: {problem}")
    with warnings.catch_warnings():  # nbformat warns in two lines about the ids it adds itself
        warnings.simplefilter("ignore")
        return nbformat.reads(text, as_version=4)


def _duplicate_id(notebook: Mapping[str, Any]) -> str | None:
    """The kernel finds each executed cell in the saved file by its id, so with two cells of
    one id it would read the wrong cell's declaration (nbformat repairs only its own copy)."""
    seen: dict[str, int] = {}
    for index, cell in enumerate(notebook["cells"]):
        cell_id = cell.get("id")
        if cell_id in seen:
            return (
                f"cell {index + 1} has the id {cell_id!r} of cell {seen[cell_id] + 1}; cell ids must be unique "
                "(saving the notebook in Jupyter repairs them)"
            )
        if cell_id is not None:
            seen[cell_id] = index
    return None


def plan(notebook: Mapping[str, Any], targets: Sequence[str] = (), looked_in: str = "the notebook") -> list[Step]:
    """The cells to execute, in order; raises LinkError for an invalid pipeline or target.

    Validation happens here, before a kernel starts, so a broken pipeline costs nothing.
    """
    components = notebook_components(notebook)
    graph = build_graph(components, looked_in)
    unknown = [t for t in targets if t not in graph]
    if unknown:
        known = ", ".join(run_order(graph)) or "none"
        raise LinkError(f"no component named {unknown[0]!r} in {looked_in} (components: {known})")
    selected = set(graph) if not targets else set(with_ancestors(graph, targets))
    by_index = {c.index: c for c in components}
    steps: list[Step] = []
    done: set[str] = set()
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        component = by_index.get(index)
        if component is None:
            if not targets and cell_source(cell).strip():
                steps.append(Step(index))
            continue
        if component.name not in selected or component.name in done:
            continue
        for name in with_ancestors(graph, [component.name], done):
            done.add(name)
            steps.append(Step(graph.nodes[name]["component"].index, graph.nodes[name]["component"]))
    return steps


def run_notebook(
    path: str | os.PathLike,
    targets: Sequence[str] = (),
    force: bool = False,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    progress: IO[str] | None = sys.stderr,
    kernel_name: str = KERNEL_NAME,
) -> RunReport:
    """Run the pipeline in `path` with a fresh Link Python kernel; never raises for user errors.

    `env` is added to this process's environment for the kernel. `progress` receives the
    progress bar, or on anything but a terminal (a CI log) one line per component as it
    ends; None: neither. The returned report holds the executed notebook.
    """
    path = Path(os.path.abspath(path))  # symlinks kept: the kernel follows the path as given (the cache resolves them)
    notebook = read_notebook(path)
    steps = plan(notebook, targets, looked_in=str(path))
    require_workers(steps)
    require_kernelspec(kernel_name)
    with _one_run_at_a_time(path, progress):
        return _run_steps(path, notebook, steps, force, timeout, env, progress, kernel_name)


@contextmanager
def _one_run_at_a_time(path: Path, progress: IO[str] | None) -> Iterator[None]:
    """Hold the notebook's run lock on this machine for the whole run. Two runs of one
    notebook at once each replaced the other's runs in the cache, so an executed notebook
    could show its own `load` output next to children reported cached from the other
    run's `load`. The second run waits, then finds the first's results fresh."""
    import fcntl

    from jupyter_core.paths import jupyter_runtime_dir

    from linkkernel.store import notebook_key

    folder = Path(jupyter_runtime_dir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / f"linkkernel-run-{notebook_key(str(path))}.lock", "a+")  # noqa: SIM115 - closed below
    except OSError:  # a runtime folder this user cannot write: nothing to share a lock in
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            if progress is not None:
                print(f"linkkernel run: waiting for the run of {path.name} already under way ({holder}) to finish", file=progress, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield


def _run_steps(
    path: Path, notebook: Any, steps: list[Step], force: bool, timeout: float | None,
    env: Mapping[str, str] | None, progress: IO[str] | None, kernel_name: str,
) -> RunReport:
    """`run_notebook` once the notebook is read, checked and this run is the only one."""
    from nbclient import NotebookClient
    from tqdm import tqdm

    outcomes = {s.component.name: Outcome(s.component.name, s.component.runs_on) for s in steps if s.component}
    report = RunReport(notebook, list(outcomes.values()))
    _clear_outputs(notebook)
    client = NotebookClient(
        notebook,
        kernel_name=kernel_name,
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent)}},
    )
    kernel_env = {**os.environ, **(env or {}), "LINKKERNEL_NOTEBOOK": str(path)}
    # The kernel's own log (start-up warnings, linkkernel internal errors) goes to a file, so
    # the terminal shows the pipeline; the file is kept and named only when the kernel itself
    # failed (died, or a linkkernel bug), since a user error is shown in full already. The
    # notebook's name is cut: one near NAME_MAX made the log's name too long to create.
    log_fd, log_name = tempfile.mkstemp(prefix=f"linkkernel-run-{path.stem[:40]}-", suffix=".log")
    bar = None
    try:
        try:
            _start_kernel(client, log_name, env=kernel_env, stdout=log_fd, stderr=log_fd)
        except LinkError:
            report.kernel_trouble = True
            raise
        with client.setup_kernel():
            _record_kernel(client, notebook)
            terminal = progress is not None and progress.isatty()
            bar = tqdm(
                total=len(outcomes),
                unit="component",
                file=progress,
                disable=not terminal or not outcomes,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]",
            )
            ended = 0
            for step in steps:
                bar.set_description_str(step.label)
                cell = notebook.cells[step.index]
                outcome = outcomes.get(step.label) if step.component else None
                stored, lost = (None, []) if outcome is None or force else _restore_fresh(client, outcome.name)
                if progress is not None:
                    for line in lost:
                        tqdm.write(f"linkkernel run: {line}", file=progress)
                if stored is not None:
                    cell.outputs = replayed_outputs(stored, cell.execution_count)
                    outcome.state = CACHED
                else:
                    started = time.monotonic()
                    error, report.kernel_trouble = _execute(client, cell, step.index, timeout)
                    if progress is not None:
                        for line in _write_trouble(cell):
                            tqdm.write(f"linkkernel run: {line.removeprefix('linkkernel: ')}", file=progress)
                    if error is not None:
                        report.failed, report.error = step.label, error
                    if outcome is not None:
                        outcome.seconds = time.monotonic() - started
                        outcome.state = FAILED if error is not None else RAN
                if outcome is not None:
                    bar.update(1)
                    ended += 1
                    if progress is not None and not terminal:
                        print(f"linkkernel run: [{ended}/{len(outcomes)}] {outcome.name} {outcome.state}", file=progress, flush=True)
                if report.failed:
                    break
            for cell in notebook.cells:
                if cell.cell_type == "code":
                    _join_streams(cell)
            client.set_widgets_metadata()  # as nbclient's own `execute` does: widgets render from the file
    finally:
        if bar is not None:
            bar.close()
        os.close(log_fd)
        if report.kernel_trouble:
            report.kernel_log = Path(log_name)
        else:
            os.unlink(log_name)
    return report


def _start_kernel(client: Any, log_name: str, **launch: Any) -> None:
    """Start the kernel and its client; a kernel that dies or hangs at start-up is one line."""
    client.km = client.create_kernel_manager()
    try:
        client.start_new_kernel(**launch)
        client.start_new_kernel_client()
    except (RuntimeError, TimeoutError) as exc:
        raise LinkError(f"the Link Python kernel did not start ({exc}); its log: {log_name}") from None


def _record_kernel(client: Any, notebook: Any) -> None:
    """Say in the executed notebook what ran it, as nbclient's own `execute` does: its
    `language_info` (nbconvert highlights by it), and a kernelspec when the notebook had none,
    so that it reopens in Jupyter with Link Python instead of asking for a kernel."""
    reply = client.wait_for_reply(client.kc.kernel_info())
    if reply is not None and "language_info" in reply["content"]:
        notebook.metadata["language_info"] = reply["content"]["language_info"]
    if "kernelspec" not in notebook.metadata:
        spec = client.km.kernel_spec
        notebook.metadata["kernelspec"] = {"name": client.kernel_name, "display_name": spec.display_name,
                                           "language": spec.language}


def _execute(client: Any, cell: Any, index: int, timeout: float | None) -> tuple[str | None, bool]:
    """Run one cell: (the error as the user should see it, or None; whether the kernel itself failed)."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    try:
        with _sending_cell_metadata(client.kc.session, cell):
            client.execute_cell(cell, index)
    except CellExecutionError as exc:
        return _error_text(cell, exc), getattr(exc, "ename", None) == INTERNAL_ERROR_NAME
    except CellTimeoutError:
        return f"timed out after {timeout:g} s", False
    except DeadKernelError:
        return "the kernel died", True
    return None, False


def _write_trouble(cell: Any) -> list[str]:
    """The kernel's line in `cell` saying the cache could not be written (a disk full): in the
    executed notebook only, the terminal showed a clean run, and the next run ran everything
    again without a word."""
    from linkkernel.store import WRITE_TROUBLE

    texts = (o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stderr")
    text = "".join("".join(t) if isinstance(t, list) else t for t in texts)
    return [line for line in text.splitlines() if line.startswith(WRITE_TROUBLE)]


def _join_streams(cell: Any) -> None:
    """The cell's consecutive stream outputs of one name joined into one, as JupyterLab keeps
    them. ipykernel sends a stream's text every 0.2 s, on a timer shared by every request, so
    nbclient's outputs were cut wherever it fired: `print('setup', x)` was one output or two
    ('setup', ' 0\\n') from run to run, and the notebook written differed with it. Done once
    every cell ran: nbclient finds a display another cell updates by its output's index."""
    joined: list[Any] = []
    for output in cell.get("outputs", []):
        last = joined[-1] if joined else None
        if last is not None and output.get("output_type") == last.get("output_type") == "stream" and output.get("name") == last.get("name"):
            last["text"] += output["text"]
        else:
            joined.append(output)
    cell.outputs = joined


@contextmanager
def _sending_cell_metadata(session: Any, cell: Any) -> Iterator[None]:
    """Meanwhile every message `session` sends carries `cell`'s metadata and `cellId`, as
    JupyterLab's execute_request does (nbclient sends none): the kernel then knows the cell by
    its id, and its declaration from the request itself, not by matching its source."""
    before = session.metadata
    sent = copy.deepcopy(dict(cell.metadata))
    if cell.get("id"):  # nbformat < 4.5 cells have none; JupyterLab then sends its own
        sent["cellId"] = cell.id
    session.metadata = sent
    try:
        yield
    finally:
        session.metadata = before


def require_workers(steps: Sequence[Step]) -> None:
    """Refuse a pipeline whose remote aliases are not registered, before any cell runs."""
    aliases = {step.component.remote for step in steps if step.component and step.component.remote}
    if aliases:
        from linkkernel.remote.registry import require_registered

        require_registered(aliases)


def require_kernelspec(kernel_name: str = KERNEL_NAME) -> None:
    """Refuse in one actionable line when the kernel is not installed, before starting anything."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise LinkError(
            f"the {kernel_name!r} kernel is not installed; run 'linkkernel install --sys-prefix'"
        ) from None


def _restore_fresh(client: Any, name: str) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """Ask the kernel whether `name` is fresh in the cache store, at its place in the run;
    returns its stored outputs (None: it runs), and the lines about cached values found lost
    (their components run again).

    Asked through `user_expressions` of a silent request, so nothing shows in any cell; the
    kernel side (`restore_fresh`) also publishes its values, there and then, as running its
    cell would: a plain cell above that sets a name it outputs does not win over it.
    """
    expression = f"__import__('linkkernel.headless', fromlist=['_']).restore_fresh(get_ipython(), {name!r})"
    msg_id = client.kc.execute("", silent=True, store_history=False, user_expressions={"fresh": expression})
    reply = client.wait_for_reply(msg_id)
    result = (reply or {}).get("content", {}).get("user_expressions", {}).get("fresh", {})
    if result.get("status") != "ok":
        raise LinkError(
            f"could not read the component cache: {result.get('ename', 'no reply')}: {result.get('evalue', '')}"
        )
    answer = json.loads(ast.literal_eval(result["data"]["text/plain"]))
    return answer["outputs"], answer["lost"]


def restore_fresh(shell: Any, name: str) -> str:
    """Kernel side of `_restore_fresh`: JSON {"outputs": the stored outputs of `name` when it
    is fresh, else null; "lost": [lines about values the cache lost]}.

    A fresh component is not re-run, so its values are put into the notebook namespace here,
    as its run would have published them, for plain cells that read them. One whose value
    the store lost (a blob deleted or damaged) is stale instead, and its cell runs.
    """
    runner = shell.kernel.runner
    fresh, lost = runner.publish_fresh([name])
    return json.dumps({"outputs": runner.store.get(name).outputs if name in fresh else None, "lost": lost})


def replayed_outputs(stored: Sequence[Mapping[str, Any]], execution_count: int | None) -> list[Any]:
    """A cached component's stored outputs as nbformat outputs of its cell, as Jupyter makes
    them from messages: only the keys nbformat allows (a record another tool or version kept
    may hold more), an `execute_result` numbered as the cell is, and an output nbformat
    refuses left out, so the written notebook stays valid.

    A widget view names a model of the kernel that showed it, which this run's widget state
    does not hold: the view is dropped for the widget's other representations (its text), as
    JupyterLab shows a widget whose model is gone.
    """
    from nbformat import ValidationError, from_dict
    from nbformat.v4 import new_output

    outputs = []
    for output in stored:
        kind = output.get("output_type")
        if kind not in OUTPUT_KEYS:
            continue
        fields = {key: output[key] for key in OUTPUT_KEYS[kind] if key in output}
        if isinstance(fields.get("data"), Mapping):
            fields["data"] = {mime: value for mime, value in fields["data"].items() if mime != WIDGET_VIEW}
            if not fields["data"]:
                continue
        if kind == "execute_result":
            fields["execution_count"] = execution_count
        try:
            outputs.append(new_output(kind, **from_dict(fields)))
        except ValidationError:
            continue
    return outputs


def _clear_outputs(notebook: Any) -> None:
    """The executed notebook shows this run only: no output of an earlier run survives."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None


def _error_text(cell: Any, exc: Exception) -> str:
    """The user's error as the kernel showed it in the cell (its traceback, colours included).

    The one the reply names (`exc`): a cell can show other errors before the one that ends it
    (`%run` of a failing script, a `__repr__` raising in `display()`), and those did not fail it.
    """
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    for output in reversed(cell.get("outputs", [])):
        if output.get("output_type") == "error" and (output.get("ename"), output.get("evalue")) == (ename, evalue):
            return "\n".join(output.get("traceback") or [f"{ename}: {evalue}"])
    return f"{ename}: {evalue}"


def summary_table(outcomes: Sequence[Outcome]) -> str:
    """Component, state, duration and where it ran, one line each, aligned."""
    rows = [("component", "state", "duration", "where")]
    for o in outcomes:
        rows.append((o.name, o.state, "-" if o.seconds is None else f"{o.seconds:.2f} s", o.where))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def write_notebook(notebook: Any, path: str | os.PathLike) -> None:
    """As `nbformat.write` lays it out, but atomically and with one-line errors: a bad `-o`
    (a folder, a missing directory) must not end a finished run in a traceback."""
    import nbformat

    from linkkernel.sharing.commandline import write_atomically

    write_atomically(path, (nbformat.writes(notebook) + "\n").encode("utf-8"))


def default_output(path: str | os.PathLike) -> Path:
    """`NB.out.ipynb` beside `NB.ipynb`: a run never overwrites the notebook it was given."""
    path = Path(path)
    return path.with_name(f"{path.stem}.out.ipynb")


def plain(text: str, stream: IO[str]) -> str:
    """`text` without ANSI colours unless `stream` is a terminal."""
    return text if stream.isatty() else ANSI.sub("", text)


def report_run(
    report: RunReport, output: Path | None, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr
) -> int:
    """Print the summary (and the user's error), return the exit status."""
    if report.outcomes:
        print(summary_table(report.outcomes), file=out)
    if output is not None:
        print(f"executed notebook written to {output}", file=out)
    if report.ok:
        return 0
    step = next((o for o in report.outcomes if o.name == report.failed), None)
    what = f"component {report.failed!r}" if step else report.failed
    print(f"linkkernel run: {what} failed:", file=err)
    print(plain(report.error or "", err), file=err)
    if report.kernel_log is not None:
        print(f"(kernel log: {report.kernel_log})", file=err)
    return 1


def _seconds(text: str) -> float:
    """A cell timeout: nbclient fails on nan/inf with a traceback and reads 0 or less as none."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def configure_run(parser: argparse.ArgumentParser) -> None:
    from linkkernel.sharing.commandline import output_path

    parser.add_argument("notebook", help="the pipeline notebook (.ipynb)")
    parser.add_argument(
        "--target", action="append", default=[], metavar="NAME",
        help="run only NAME and its ancestors (repeatable; default: every component and plain cell)",
    )
    parser.add_argument(
        "-o", "--output", metavar="OUT.ipynb", type=output_path,
        help="where to write the executed notebook (default: NB.out.ipynb; - for stdout)"
    )
    parser.add_argument("--force", action="store_true", help="re-run components even when their cached results are fresh")
    parser.add_argument("--timeout", type=_seconds, metavar="S", help="fail a cell that runs longer than S seconds")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linkkernel.sharing.commandline import check_output, report_stream

    output = Path(args.output) if args.output else default_output(args.notebook)
    check_output(output, (args.notebook,))  # the executed notebook never replaces the user's own
    out = report_stream(output)
    report = run_notebook(args.notebook, args.target, args.force, args.timeout)
    write_notebook(report.notebook, output)
    return report_run(report, output, out=out)

