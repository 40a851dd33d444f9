"""Command-line argument types the benchmark scripts share."""

from __future__ import annotations

import argparse
import importlib.util
import sys


def positive(text: str) -> int:
    """A count the medians and per-run averages can divide by: zero would end in a traceback."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def require(*modules: str) -> None:
    """Stop in one line, before any set-up, when a baseline's package is missing: they come
    with the `bench` extra, not with the README's first command."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"{sys.argv[0]}: {', '.join(missing)} not installed; first run: .venv/bin/pip install -e '.[bench]'")
