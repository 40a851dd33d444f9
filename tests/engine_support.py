"""Notebooks on disk whose cells a test executes the way JupyterLab does (metadata + cellId)."""

from __future__ import annotations

import json
from pathlib import Path

from support import CellResult, Kernel, component_meta


class Notebook:
    """A saved notebook of component cells; `run(name)` executes one cell like JupyterLab."""

    def __init__(self, kernel: Kernel, path: Path, counter: Path | None = None) -> None:
        self.kernel, self.path = kernel, path
        self.counter = counter or path.with_suffix(".runs")
        self.cells: dict[str, dict] = {}

    def add(self, name: str, code: str, *parents: str, remote: str | None = None, counted: bool = True) -> Notebook:
        """Add a component cell; counted cells append their name to the counter file when they run."""
        if counted:
            code = f"open({str(self.counter)!r}, 'a').write({name + chr(10)!r})\n" + code
        self.cells[name] = {"id": f"id-{name}", "source": code, "metadata": component_meta(name, *parents, remote=remote)}
        return self

    def save(self) -> Notebook:
        nb = {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "link-python", "display_name": "Link Python", "language": "python"}},
            "cells": [
                {"cell_type": "code", "execution_count": None, "outputs": [], **cell} for cell in self.cells.values()
            ],
        }
        self.path.write_text(json.dumps(nb))
        return self

    def use(self) -> Notebook:
        """Save and point the kernel at this notebook (declarations and cache)."""
        self.save()
        assert self.kernel.execute(f"%link notebook {self.path}").status == "ok"
        return self

    def restart(self) -> None:
        """Restart as JupyterLab does, then point the new kernel at this notebook again."""
        self.kernel.restart_as_jupyterlab()
        assert self.kernel.execute(f"%link notebook {self.path}").status == "ok"

    def run(self, name: str, **kwargs) -> CellResult:
        cell = self.cells[name]
        return self.kernel.execute(cell["source"], metadata=dict(cell["metadata"]), cell_id=cell["id"], **kwargs)

    def runs(self) -> list[str]:
        """Names of the components that ran, in order, since the last call."""
        if not self.counter.exists():
            return []
        names = self.counter.read_text().split()
        self.counter.unlink()
        return names


def value(kernel: Kernel, expression: str):
    """Evaluate an expression in the notebook namespace of the kernel."""
    result = kernel.execute(f"print(repr({expression}))")
    assert result.status == "ok", result.traceback_text
    return eval(result.stdout)  # noqa: S307 - our own repr of test values


def kernels_on_one_cache(name: str):
    """Module fixtures for two processes sharing one notebook's cache: `cache` (a folder) and
    `kernels` (kernels A and B on it). Bind them at module level, by the names pytest knows
    them by: `cache, kernels = kernels_on_one_cache("concurrent")`."""
    import pytest

    @pytest.fixture(scope="module")
    def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp(f"{name}-cache")

    @pytest.fixture(scope="module")
    def kernels(link_kernelspec, cache: Path):
        pair = [Kernel(LINKKERNEL_CACHE=f"file://{cache}") for _ in range(2)]
        yield pair
        for k in pair:
            k.shutdown()

    return cache, kernels
