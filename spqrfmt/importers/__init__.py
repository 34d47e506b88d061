"""Importers: checkpoints of other SpQR / SqueezeLLM / QuIP# implementations -> one ``.spqr`` file.

Each importer reads its source format with numpy only (safetensors parsed by
``spqrfmt.safetensors_io``; PyTorch ``.pt`` files only through
``torch.load(weights_only=True)``), maps every field onto a codec of this
format and writes the file with the streaming :class:`spqrfmt.Writer`.
``docs/importers.md`` says, per source format, which fields map to which
sections and whether decoding is bit-exact with the source's own
dequantization.

Modules:

* :mod:`.spqr_quant` -- the SpQR authors' inference format (``spqr_quant``,
  transformers' ``quant_method: "spqr"``) -> codec ``spqr``.
* :mod:`.squeezellm` -- SqueezeLLM packed checkpoints -> codec ``squeezellm``.
* :mod:`.quipsharp` -- QuIP# Hugging Face-style safetensors -> codec ``quip``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

IMPORTERS = {
    "spqr_quant": "spqrfmt.importers.spqr_quant",
    "squeezellm": "spqrfmt.importers.squeezellm",
    "quipsharp": "spqrfmt.importers.quipsharp",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``spqr import {spqr_quant,squeezellm,quipsharp} SRC -o OUT.spqr``."""
    parser.add_argument("format", choices=sorted(IMPORTERS), help="source checkpoint format")
    parser.add_argument("src", help="spqr_quant/quipsharp: Hugging Face folder; squeezellm: packed .pt or "
                        ".safetensors file")
    parser.add_argument("-o", "--output", required=True, help="output .spqr file")
    parser.add_argument("--config", metavar="DIR", help="folder with the base model's config.json and tokenizer "
                        "files (squeezellm; quipsharp when SRC is a file)")
    parser.add_argument("--allow-lossy", action="store_true", help="squeezellm: round LUT/residual values that "
                        "are not f16 values instead of refusing (the report says by how much)")
    parser.add_argument("--hadamard", metavar="FILE", action="append", default=[], help="quipsharp: a +-1 "
                        "Hadamard matrix H_K (Sloane's text format) for a dimension K*2^k, or quip-sharp's "
                        "lib/utils/matmul_had.py (parsed, not run); repeatable. Each must be QuIP#'s own matrix "
                        "(checked by SHA-256)")
    parser.add_argument("--allow-unverified-hadamard", action="store_true", help="quipsharp: accept a --hadamard "
                        "matrix that is not QuIP#'s (only for checkpoints made with that matrix)")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per imported layer")


def inputs(args: argparse.Namespace) -> list[Path]:
    """Every file the import reads (checked to be usable; none may be the output)."""
    from ..paths import input_dir, input_file

    src = Path(args.src)
    if args.format == "spqr_quant" or (args.format == "quipsharp" and src.is_dir()):
        files = [p for p in input_dir(src, "source folder").iterdir() if p.is_file()]
    else:
        files = [input_file(src, "source")]
    if args.config:
        files += [p for p in input_dir(args.config, "--config folder").iterdir() if p.is_file()]
    files += [input_file(h, "--hadamard file") for h in args.hadamard]
    return files


# What malformed sources raise inside the importers' numpy code besides ValueError (a missing
# tensor, a short or oddly shaped array): turned into one ValueError naming the source.
MALFORMED = (KeyError, IndexError, ZeroDivisionError, TypeError, AttributeError, OverflowError, SyntaxError,
             RecursionError, EOFError)


__all__ = ["IMPORTERS", "MALFORMED", "add_arguments", "inputs"]
