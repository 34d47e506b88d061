"""``spqr export``: write spqr v2 tensors as another runtime's checkpoint"""

from __future__ import annotations

import argparse

from ..summary import safe as _safe
from ._common import _error


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
    """``spqr export spqr_quant FILE -o DIR``."""
    from ..importers.common import NotRepresentable
    from ..importers.spqr_quant_export import export_spqr_quant
    from ..paths import input_file
    from ..reader import open_file

    src = input_file(args.file)
    with open_file(src) as f:
        try:
            rep = export_spqr_quant(f, args.output)
        except NotRepresentable as e:
            return _error(f"not representable: {e}", 1)
    print(f"wrote {_safe(args.output)}: {', '.join(_safe(n) for n in rep.files)}; {len(rep.quantized)} spqr_quant "
          f"layers, {len(rep.raw)} raw tensors; spqr_quant's dequantization equals decode('f16') in every bit "
          f"({rep.checked} weights checked)")
    return 0
