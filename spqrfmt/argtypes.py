"""Flag value types shared by the command line and the codecs' encoder options.

argparse turns their ``ArgumentTypeError`` into a usage error (exit 2) that names the flag.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        v = int(text)
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} must be {f'in {lo}..{hi}' if hi is not None else f'>= {lo}'}")
        return v

    parse.__name__ = "integer"
    return parse


def stat_bits(text: str) -> int:
    v = int(text)
    if not (1 <= v <= 8 or v == 16):
        raise argparse.ArgumentTypeError(f"{v}: statistics bits must be 1..8 or 16 (plain f16)")
    return v


def float_in(lo: float, hi: float | None = None, *, hi_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        v = float(text)
        if not math.isfinite(v) or v < lo or (hi is not None and (v >= hi if hi_open else v > hi)):
            if hi is None:
                raise argparse.ArgumentTypeError(f"{text} must be a finite number >= {lo:g}")
            raise argparse.ArgumentTypeError(f"{text} is outside [{lo:g}, {hi:g}{')' if hi_open else ']'}")
        return v

    parse.__name__ = "number"
    return parse


def flag(dest: str) -> str:
    """The command-line spelling of an argparse ``dest``: ``group_size`` -> ``--group-size``."""
    return "--" + dest.replace("_", "-")
