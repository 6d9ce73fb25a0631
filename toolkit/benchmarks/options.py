"""Option types shared by the benchmarks: out-of-range values are refused by argparse (exit status 2, the valid
range in the message) before any work starts."""

from __future__ import annotations

import argparse


def int_range(lo: int, hi: int | None = None):
    """An argparse ``type``: an integer in ``[lo, hi]`` (``hi`` None: no upper bound)."""
    valid = f"an integer from {lo} to {hi}" if hi is not None else f"an integer of at least {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; valid values: {valid}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range; valid values: {valid}")
        return value

    parse.__name__ = valid  # argparse names the type in some messages
    return parse


POSITIVE = int_range(1)
THREADS = int_range(1, 1024)

