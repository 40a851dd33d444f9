"""Command-line argument types the benchmark scripts share."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    """A count the medians and per-run averages can divide by: zero would end in a traceback."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value
