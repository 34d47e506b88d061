"""``spqr hash``: SHA-256 of every tensor's stored bytes and of the whole file"""

from __future__ import annotations

import argparse
import json

from ..paths import input_file
from ..summary import safe as _safe
from ._common import _regex


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "hash", help="SHA-256 of every tensor's stored bytes and of the whole file (like gguf_hash)",
                       description="One SHA-256 per tensor over its sections' stored bytes, concatenated in the "
                       "order of their role names (sorted), then one of every byte of the file. Tensor digests "
                       "depend on the data only: a metadata edit changes the file digest, never a tensor digest. "
                       "Checks nothing (spqr verify does).")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--filter", metavar="REGEX", type=_regex, help="only tensors whose name matches REGEX")
    p.add_argument("--json", action="store_true", help="{file: {name, sha256}, tensors: {name: sha256}}")


def run(args: argparse.Namespace) -> int:
    from ..hashing import file_sha256, tensor_sha256
    from ..reader import open_file
    from ..summary import selected

    path = input_file(args.file)
    with open_file(path, verify_checksums=False) as f:
        tensors = selected(f, args.filter)
        digests = {t.name: tensor_sha256(t) for t in tensors}
        whole = file_sha256(path)
    if args.json:
        print(json.dumps({"file": {"name": path.name, "sha256": whole}, "tensors": digests}, indent=1))
        return 0
    for name, digest in digests.items():
        print(f"sha256 {digest}  {_safe(name)}")
    print(f"sha256 {whole}  {_safe(path.name)} (whole file)")
    return 0


