"""Rewrite a file's metadata (SPEC §7) with every data byte kept: ``spqr meta set/rm``.

Why a module of its own: editing metadata must not re-encode any tensor. The
data section is copied verbatim and the tensor records are kept as they are,
so every section keeps its offset, bytes and CRC-32; only the header changes.
The new header goes through the writer's checks (:func:`checked_header`) and
the file is replaced atomically (SPEC §11), so a value the header limits
reject leaves the file untouched.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .constants import RESERVED_PREFIX
from .errors import SpqrFormatError
from .reader import open_file
from .writer import checked_header, write_atomic

CHUNK = 16 << 20


class MetadataValueError(ValueError):
    """The edited metadata breaks a header rule (size, nesting, UTF-8, ...): the file is left as it was."""


def is_reserved(key: str) -> bool:
    """Keys the spec reserves for the reference tools (SPEC §7); user edits of them need an explicit force."""
    return key.startswith(RESERVED_PREFIX)


def rewrite_metadata(path: str | os.PathLike[str], metadata: Mapping[str, Any],
                     output: str | os.PathLike[str] | None = None) -> Path:
    """Write ``path`` (or ``output``) with ``metadata`` as its whole metadata map; return the path written.

    The source is validated first (every rule, all CRCs: a corrupt file is not rewritten,
    SpqrFormatError). Its data section is copied byte for byte and its tensor records and
    other top-level header keys are kept, so every section is byte-identical. In place
    (``output`` None), the real file behind a symlink is replaced and keeps its mode.
    Raises MetadataValueError when the new header breaks a header rule.
    """
    src = Path(os.path.realpath(path))
    dst = src if output is None else Path(output)
    with open_file(src, mmap=False) as f:
        f.validate()
        header = dict(f.header)
        header["metadata"] = dict(metadata)
        length = f.preamble.data_length
        try:
            raw = checked_header(header, length)
        except SpqrFormatError as e:
            raise MetadataValueError(f"the new metadata breaks a header rule: {e}") from None
        start = f.preamble.data_offset

        def copy_data(out: Any) -> None:
            for pos in range(0, length, CHUNK):
                out.write(f._read(start + pos, min(CHUNK, length - pos)))

        mode = stat.S_IMODE(os.stat(src).st_mode) if dst == src else None
        write_atomic(dst, raw, length, copy_data, mode=mode)
    return dst


__all__ = ["MetadataValueError", "RESERVED_PREFIX", "is_reserved", "rewrite_metadata"]
