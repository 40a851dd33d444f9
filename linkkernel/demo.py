"""`linkkernel demo`: the example pipeline end to end, with everything it needs started and removed.

A newcomer's first command must show the whole product working without any set-up of their
own: so the demo starts a real worker on loopback with local storage and a fresh key,
registers it as `local` in a throw-away Jupyter config directory, keeps the component cache in
a temporary directory, runs the notebook through `linkkernel run`'s code path, and then stops
the worker and deletes all of it. The user's registry, cache and notebooks are never touched.
"""

from __future__ import annotations

import argparse
import os
import queue
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from linkkernel.declarations import parse_declaration
from linkkernel.errors import LinkError

DEMO_NOTEBOOK = "iris_pipeline.ipynb"
WORKER_ALIAS = "local"
READY = "linkkernel worker ready"


def demo_notebook() -> Path:
    """The example notebook: packaged in a wheel, at the repository's top level in a checkout."""
    packaged = resources.files("linkkernel") / "examples" / DEMO_NOTEBOOK
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "examples" / DEMO_NOTEBOOK


def free_port() -> int:
    """A loopback port nobody listens on right now (other engineers' servers share the host)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "linkkernel.cli", *args]


@contextmanager
def local_worker(workdir: Path, timeout: float = 60) -> Iterator[dict[str, str]]:
    """Start `linkkernel worker` on loopback and register it as `local`; stop it on exit.

    Yields the worker's address, storage and key file. The registration goes into the
    Jupyter config directory of this process's environment.
    """
    key_file = workdir / "worker.key"
    key_file.touch(mode=0o600)
    key_file.write_text(secrets.token_hex(32) + "\n")
    storage = workdir / "storage"
    storage.mkdir()
    address = f"tcp://127.0.0.1:{free_port()}"
    log_path = workdir / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            _cli("worker", "--listen", address, "--storage", str(storage), "--key-file", str(key_file)),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        _wait_ready(worker, timeout, log_path)
        registered = subprocess.run(
            _cli(
                "workers", "add", WORKER_ALIAS, "--address", address,
                "--storage", str(storage), "--key-file", str(key_file),
            ),
            capture_output=True,
            text=True,
        )
        if registered.returncode != 0:
            raise LinkError(f"could not register the demo worker: {registered.stderr.strip()}")
        yield {"address": address, "storage": str(storage), "key_file": str(key_file)}
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()


def _wait_ready(worker: subprocess.Popen, timeout: float, log_path: Path) -> None:
    """Block until the worker prints its ready line; a worker that exits or hangs is an error."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in worker.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise LinkError(f"the demo worker did not start within {timeout:g} s (log: {log_path})") from None
        if line.startswith(READY):
            return
        if not line:
            detail = log_path.read_text().strip().splitlines()
            raise LinkError(f"the demo worker exited: {detail[-1] if detail else 'no output'}")


def run_demo(output: Path | None = None, progress=sys.stderr, out=sys.stdout, err=sys.stderr) -> int:
    """Run the example pipeline with a temporary worker, registry and cache; returns the exit status."""
    from linkkernel.headless import report_run, require_kernelspec, run_notebook, write_notebook

    source = demo_notebook()
    if not source.is_file():
        raise LinkError(f"the demo notebook is missing ({source}); reinstall linkkernel")
    require_kernelspec()
    with tempfile.TemporaryDirectory(prefix="linkkernel-demo-") as tmp:
        workdir = Path(tmp)
        notebook = workdir / DEMO_NOTEBOOK
        shutil.copy(source, notebook)
        print(f"linkkernel demo: running {source.name} with a worker '{WORKER_ALIAS}' on loopback", file=out)
        # Everything the demo starts (worker, registration, kernel) sees only throw-away state.
        with _environment(JUPYTER_CONFIG_DIR=str(workdir / "jupyter-config"), LINKKERNEL_CACHE=str(workdir / "cache")):
            with local_worker(workdir) as worker:
                print(f"linkkernel demo: worker {worker['address']}, storage {worker['storage']}", file=out)
                report = run_notebook(notebook, progress=progress)
        if output is not None:
            write_notebook(report.notebook, output)
        _print_cell_text(report.notebook, out)
        return report_run(report, output, out=out, err=err)


@contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _print_cell_text(notebook, out) -> None:
    """What each cell printed, so the terminal shows the pipeline's results, not just its states."""
    for index, cell in enumerate(notebook.cells):
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        pictures = sum(1 for o in cell.get("outputs", []) if "image/svg+xml" in o.get("data", {}))
        if not text and not pictures:
            continue
        declaration = parse_declaration(cell.metadata)
        print(f"--- {declaration.name if declaration else f'cell {index + 1}'}", file=out)
        if text:
            print(text.rstrip("\n"), file=out)
        if pictures:
            print("[a picture; open the executed notebook (-o FILE) to see it]", file=out)


def configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", metavar="OUT.ipynb", type=Path,
        help="keep the executed demo notebook here (default: nothing is kept)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_demo(args.output)
