"""``spqr generate``: generate text from the compressed model"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "generate", help="run the compressed model: generate text from a prompt (needs torch)",
                       description="Load the model from the .spqr file (config and tokenizer from its metadata) and "
                       "generate text. On CUDA quantized layers stay compressed and run through the Triton kernels.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..generate import add_arguments as generate_arguments

    generate_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..generate import cli_generate

    return int(cli_generate(args))
