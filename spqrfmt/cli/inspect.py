"""``spqr inspect``: summary of a .spqr file as text, Markdown or JSON"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..paths import input_file, output_file
from ..summary import safe as _safe
from ._common import _error, _regex


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect", help="summary of a .spqr file as text, Markdown or JSON (like gguf-dump)",
                       description="Print format version, metadata, totals per codec and a table of tensors (codec, "
                       "dtype, shape, bits per parameter, codec params). Reads only the header.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--sections", dest="plain_sections", action="store_true",
                   help="also list every section (dtype, shape, offset, length, CRC-32) in the text output")
    p.add_argument("--json", action="store_true", help="machine-readable: totals per codec, every metadata value "
                   "(bytes as {\"base64\": ...}), every tensor with its sections and their CRC-32s")
    p.add_argument("--markdown", action="store_true", help="Markdown tables (metadata, codecs, tensors)")
    p.add_argument("--no-tensors", dest="tensors", action="store_false", help="omit the per-tensor list")
    p.add_argument("--filter", metavar="REGEX", type=_regex,
                   help="only tensors whose name matches REGEX (re.search); totals count only them")
    p.add_argument("--plot", metavar="OUT.png", help="also draw bits/param and relative error (recorded by "
                   "spqr convert) per layer into a PNG (needs matplotlib: pip install 'spqrfmt[plot]')")


def run(args: argparse.Namespace) -> int:
    from ..split import open_model
    from ..summary import render_markdown, render_text, summary

    if args.json and args.markdown:
        return _error("--json and --markdown are two output formats; pass one of them", 2)
    if args.plain_sections and (args.json or args.markdown):
        return _error("--sections applies to the text output (JSON always lists the sections)", 2)
    with open_model(input_file(args.file), verify_checksums=False) as f:
        if args.json:
            print(json.dumps(summary(f, args.filter, tensors=args.tensors), indent=1, allow_nan=False))
        elif args.markdown:
            print(render_markdown(f, args.filter, tensors=args.tensors))
        else:
            print(render_text(f, args.filter, tensors=args.tensors, sections=args.plain_sections))
        if args.plot:
            from ..plot import plot_layers

            out = output_file(args.plot, [args.file])
            try:
                n = plot_layers(f, out, title=Path(args.file).name)
            except (RuntimeError, ValueError) as e:
                return _error(str(e), 1)
            print(f"wrote {_safe(str(out))}: {n} quantized tensors", file=sys.stderr)
    return 0


