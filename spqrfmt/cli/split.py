"""``spqr split``: one .spqr file -> a split set (SPEC §12)"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..paths import UsageError, input_file, output_file
from ..summary import safe as _safe


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "split", help="one .spqr file -> a split set (PREFIX-00001-of-0000N.spqr + index, SPEC §12)",
                        description="Write FILE as parts of at most SIZE data bytes each (a tensor larger than "
                        "SIZE gets a part of its own) plus PREFIX.spqr.index.json with each part's SHA-256. "
                        "Section bytes are copied verbatim; every part carries the metadata. FILE is verified first.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--split-size", required=True, metavar="SIZE", help="largest part, e.g. 5GB or 500MiB")
    p.add_argument("-o", "--output", required=True, metavar="PREFIX",
                    help="path prefix of the set: PREFIX-00001-of-0000N.spqr and PREFIX.spqr.index.json")


def _write_set(f: Any, split_size: int, prefix: Path, inputs: list[Path]) -> tuple[Path, int]:
    """Split ``f`` into the set PREFIX (SPEC §12) once every output is known to replace no input; (index, parts)."""
    from ..split import INDEX_SUFFIX, part_name, plan_parts, split_file

    n = len(plan_parts(f, split_size))
    for i in range(n):
        output_file(prefix.with_name(part_name(prefix.name, i + 1, n)), inputs)
    output_file(prefix.with_name(prefix.name + INDEX_SUFFIX), inputs)
    return split_file(f, split_size, prefix), n


def run(args: argparse.Namespace) -> int:
    from ..hf.export import parse_size
    from ..split import open_model, part_paths

    src = input_file(args.file)
    try:
        size = parse_size(args.split_size)
    except ValueError as e:
        raise UsageError(f"--split-size: {e}") from None
    inputs = [src, *part_paths(src)]
    prefix = Path(args.output)
    with open_model(src, mmap=False) as f:
        f.validate()  # a corrupt file is not split
        index, n = _write_set(f, size, prefix, inputs)
    print(f"wrote {_safe(str(index))}: {n} parts")
    return 0
