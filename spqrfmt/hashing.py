"""SHA-256 digests of a file's tensors and of the whole file: ``spqr hash`` (as gguf_hash does for GGUF).

What is hashed, so that another tool can reproduce it: a tensor's digest is
SHA-256 over the stored bytes of its sections (exactly ``length`` bytes each,
no padding), concatenated in the order of their role names sorted as UTF-8
byte strings. It covers the data only: two files with equal tensor digests
store identical bytes for that tensor whatever their metadata, header order
or padding, so a metadata edit (``spqr meta``) keeps every tensor digest and
changes only the file digest, which is SHA-256 of every byte of the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .reader import SpqrFile, Tensor

CHUNK = 16 << 20


def tensor_sha256(t: Tensor) -> str:
    """Hex SHA-256 of ``t``'s section bytes in sorted role order (the module docstring)."""
    h = hashlib.sha256()
    for role in sorted(t.record.sections, key=lambda r: r.encode("utf-8")):
        s = t.record.sections[role]
        start = t._file._data_offset + s.offset
        for pos in range(0, s.length, CHUNK):
            h.update(t._file._read(start + pos, min(CHUNK, s.length - pos)))
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of every byte of the file."""
    h = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digests(f: SpqrFile) -> dict[str, str]:
    """``{tensor name: digest}`` in file order."""
    return {name: tensor_sha256(t) for name, t in f.tensors.items()}


__all__ = ["file_digests", "file_sha256", "tensor_sha256"]
