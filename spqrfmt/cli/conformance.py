"""``spqr conformance``: run the conformance vectors"""

from __future__ import annotations

import argparse

from ._common import _error


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "conformance", help="run the conformance vectors against this library or a foreign decoder",
                       description="Run spqrfmt.conformance.runner; pass --help after 'conformance' for its options.",
                       add_help=False)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    from ..conformance import runner

    argv = list(args.rest)
    try:
        return int(runner.main(argv) or 0)
    except ValueError as e:  # --decoder without {input}/{output}, unbalanced quotes
        return _error(e, 2)
