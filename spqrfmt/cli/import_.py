"""``spqr import``: convert another implementation's checkpoint to .spqr"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "import", help="convert an existing SpQR/SqueezeLLM/QuIP# checkpoint to .spqr",
                        description="Read a checkpoint in another implementation's format and write it as .spqr. "
                        "See docs/importers.md for what each maps to and what is bit-exact.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..importers import add_arguments as import_arguments

    import_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..importers import cli_import

    return int(cli_import(args))
