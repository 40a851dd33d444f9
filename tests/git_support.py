"""Notebooks and git repositories for the git tests: real git, config kept in a temp HOME."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import kernel_env


def code(source: str, *tags: str, id: str | None = None, outputs: list | None = None, count: int | None = None) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "cell_type": "code", "metadata": {"tags": list(tags)} if tags else {}, "source": source,
        "outputs": outputs or [], "execution_count": count,
    }
    if id is not None:
        cell["id"] = id
    return cell


def markdown(source: str, id: str | None = None) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": "markdown", "metadata": {}, "source": source}
    if id is not None:
        cell["id"] = id
    return cell


def notebook(*cells: dict[str, Any]) -> dict[str, Any]:
    """nbformat 4.5 when every cell has an id, 4.4 (no ids) otherwise."""
    with_ids = all("id" in c for c in cells)
    return {
        "cells": [dict(c) for c in cells],
        "metadata": {"kernelspec": {"name": "link-python", "display_name": "Link Python", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5 if with_ids else 4,
    }


def stream(text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": "stdout", "text": text}


def pipeline_cells() -> list[dict[str, Any]]:
    """The load -> clean -> train pipeline under a title, that diff and repository tests start from."""
    return [
        markdown("# Pipeline\n", id="m1"),
        code("data = [1, 2, 3]\n", "component:load", id="c1"),
        code("clean = [x * 2 for x in data]\n", "component:clean", "parent:load", id="c2"),
        code("model = sum(clean)\nprint(model)\n", "component:train", "parent:clean", id="c3",
             outputs=[stream("12\n")], count=3),
    ]


def validate(nb: dict[str, Any]) -> None:
    import nbformat

    nbformat.validate(nbformat.from_dict(nb))


def source(cell: dict[str, Any]) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def tags(cell: dict[str, Any]) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


class Repo:
    """A git repository in a temp dir whose git config never touches the user's."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.path = root / "repo"
        self.path.mkdir()
        self.env = kernel_env(
            HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"),
            GIT_CONFIG_GLOBAL=str(self.home / "gitconfig"), GIT_CONFIG_NOSYSTEM="1",
            GIT_AUTHOR_NAME="Ada", GIT_AUTHOR_EMAIL="ada@example.org",
            GIT_COMMITTER_NAME="Ada", GIT_COMMITTER_EMAIL="ada@example.org", GIT_PAGER="cat", PAGER="cat",
        )
        self.env.pop("GIT_DIR", None)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["git", *args], cwd=self.path, env=self.env, capture_output=True, text=True)
        if check and done.returncode:
            raise AssertionError(f"git {' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done

    def linkkernel(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "linkkernel.cli", *args], cwd=self.path, env=self.env,
                              capture_output=True, text=True)

    def write(self, nb: dict[str, Any], name: str = "nb.ipynb") -> None:
        (self.path / name).write_text(json.dumps(nb, indent=1, sort_keys=True) + "\n")

    def read(self, name: str = "nb.ipynb") -> dict[str, Any]:
        return json.loads((self.path / name).read_text())

    def commit(self, nb: dict[str, Any], message: str, name: str = "nb.ipynb") -> None:
        self.write(nb, name)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def merge_branch(self, ours: dict[str, Any], theirs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """Commit `theirs` on a new branch 'theirs' and `ours` on main; returns `git merge theirs`."""
        self.git("checkout", "-q", "-b", "theirs")
        self.commit(theirs, "theirs")
        self.git("checkout", "-q", "main")
        self.commit(ours, "ours")
        return self.git("merge", "theirs", "-m", "merge theirs", check=False)
