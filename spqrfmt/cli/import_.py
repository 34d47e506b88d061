"""``spqr import``: convert another implementation's checkpoint to .spqr"""

from __future__ import annotations

import argparse
import importlib

from ._common import _error


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
    """``spqr import``: run the chosen importer; a field the codec cannot hold exits with status 1.

    A malformed source raises ValueError (the CLI prints one ``error:`` line, exit 1).
    """
    from ..importers import IMPORTERS, MALFORMED, inputs
    from ..importers.common import NotRepresentable
    from ..paths import output_file

    output_file(args.output, inputs(args))
    mod = importlib.import_module(IMPORTERS[args.format])
    try:
        return int(mod.cli_import(args))
    except NotRepresentable as e:
        return _error(f"not representable: {e}", 1)
    except MALFORMED as e:
        detail = f"missing entry {e.args[0]!r}" if isinstance(e, KeyError) and e.args else f"{type(e).__name__}: {e}"
        raise ValueError(f"{args.src}: not a valid {args.format} checkpoint: {detail}") from None
