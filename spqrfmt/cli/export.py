"""``spqr export``: write spqr v2 tensors as another runtime's checkpoint"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export", help="write spqr v2 tensors as another runtime's compressed checkpoint (spqr_quant)",
                        description="Write DIR (new or empty): a transformers folder in the SpQR authors' inference "
                        "format (quantization_config quant_method \"spqr\", 3-bit, beta1 = beta2 = 16), which stock "
                        "transformers loads and `spqr import spqr_quant` reads back byte for byte. A field the format "
                        "cannot hold is refused, naming it (exit 1). See docs/importers.md.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=["spqr_quant"], help="target checkpoint format")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to write (new or empty)")


def run(args: argparse.Namespace) -> int:
    from ..importers.spqr_quant_export import cli_export

    return int(cli_export(args))
