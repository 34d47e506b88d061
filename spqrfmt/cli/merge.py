"""``spqr merge``: a split set -> one .spqr file"""

from __future__ import annotations

import argparse

from ..paths import input_file, output_file
from ..summary import safe as _safe
from ._common import _error


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "merge", help="a split set (its index or first part) -> one .spqr file",
                        description="Check the set (index, SHA-256 of every part, every rule of every part) and "
                        "write its tensors as one file, atomically; the output is never one of the set's files.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", metavar="INDEX")
    p.add_argument("-o", "--output", required=True, metavar="OUT.spqr")


def run(args: argparse.Namespace) -> int:
    from ..split import SplitFile, index_for, is_index, merge_set, part_paths

    src = input_file(args.index)
    index = src if is_index(src) else index_for(src)
    if index is None:
        return _error(f"{src} is neither a split index (*.spqr.index.json) nor the first part of a set", 2)
    out = output_file(args.output, part_paths(index))
    with SplitFile(index, mmap=False) as s:
        s.validate()
        merge_set(s, out)
        n = len(s)
    print(f"wrote {_safe(str(out))} ({n} tensors)")
    return 0


