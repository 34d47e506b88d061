"""Streaming, atomic writer of .spqr files.

Sections are appended to a scratch data file as tensors are added, so the
whole model never sits in memory; ``close()`` then writes preamble + header +
data to a temporary file next to the target and renames it into place. An
interrupted write leaves no file under the target name (spec/SPEC.md §11).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import codecs
from .dtypes import ITEMSIZE, STORAGE, name_of
from .errors import SpqrFormatError
from .format import (
    ALIGNMENT,
    MAJOR,
    MINOR,
    PREAMBLE_SIZE,
    Preamble,
    align64,
    crc32,
    pack_header,
    pack_preamble,
)
from .paths import new_file_mode
from .records import SectionRecord, TensorRecord, check_shape

SectionInput = np.ndarray | tuple[str, np.ndarray]


def _as_section(value: SectionInput) -> tuple[str, np.ndarray]:
    """(dtype name, little-endian C-contiguous array); pass ('bf16', uint16 bits) for bf16."""
    if isinstance(value, tuple):
        dtype, arr = value
        arr = np.asarray(arr, dtype=STORAGE[dtype], order="C")
        return dtype, arr
    arr = np.asarray(value, order="C")
    dtype = name_of(arr.dtype)
    return dtype, np.asarray(arr, dtype=STORAGE[dtype], order="C")


class Writer:
    """Write tensors one at a time, then ``close()`` (or use as a context manager).

    Every tensor of a known codec is checked with the same rules the reader
    applies before it is accepted, so the writer cannot produce a file the
    reader rejects.
    """

    def __init__(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> None:
        from . import __version__

        self.path = Path(path)
        self.metadata: dict[str, Any] = {"spqrfmt.writer": f"spqrfmt-python {__version__}"}  # SPEC §7
        if metadata:
            self.metadata.update(metadata)
        self._records: list[TensorRecord] = []
        self._names: set[str] = set()
        self._data = tempfile.NamedTemporaryFile(
            prefix=f".{self.path.name}.", suffix=".data", dir=self.path.parent or ".", delete=False
        )
        self._pos = 0
        self._closed = False

    def _append(self, arr: np.ndarray, dtype: str) -> SectionRecord:
        pad = align64(self._pos) - self._pos
        if pad:
            self._data.write(b"\0" * pad)
            self._pos += pad
        raw = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
        self._data.write(raw)
        rec = SectionRecord(dtype, tuple(arr.shape), self._pos, arr.size * ITEMSIZE[dtype], crc32(raw))
        self._pos += rec.length
        return rec

    def add(
        self,
        name: str,
        *,
        shape: tuple[int, ...],
        dtype: str,
        codec: str,
        params: Mapping[str, Any],
        sections: Mapping[str, SectionInput],
        codec_version: int = 1,
    ) -> None:
        """Add one tensor given its codec params and section arrays (roles as in the codec spec)."""
        if self._closed:
            raise ValueError("writer is closed")
        if name in self._names:
            raise ValueError(f"tensor {name!r} was already written")
        shape = check_shape(list(shape), "tensor", name)
        typed = {role: _as_section(v) for role, v in sections.items()}
        # Check with the reader's rules against in-memory arrays before writing any byte.
        probe = TensorRecord(
            name, shape, dtype, codec, codec_version, dict(params),
            {r: SectionRecord(d, tuple(a.shape), 0, a.size * ITEMSIZE[d], 0) for r, (d, a) in typed.items()},
        )
        codec_impl = codecs.get(probe)
        codec_impl.check_record(probe)
        codec_impl.check_content(probe, {r: a for r, (_d, a) in typed.items()})
        recs = {role: self._append(a, d) for role, (d, a) in typed.items()}
        self._records.append(TensorRecord(name, shape, dtype, codec, codec_version, dict(params), recs))
        self._names.add(name)

    def add_raw(self, name: str, array: np.ndarray, dtype: str | None = None) -> None:
        """Add an unquantized tensor; pass dtype='bf16' with uint16 bit patterns for bfloat16."""
        dtype = dtype or name_of(np.asarray(array).dtype)
        self.add(name, shape=tuple(np.shape(array)), dtype=dtype, codec="raw", params={},
                 sections={"data": (dtype, np.asarray(array))})

    def add_encoded(self, name: str, encoded: Any, dtype: str = "f16") -> None:
        """Add the output of an encoder (anything with codec, codec_version, params, sections, shape)."""
        self.add(name, shape=encoded.shape, dtype=dtype, codec=encoded.codec, params=encoded.params,
                 sections=encoded.sections, codec_version=encoded.codec_version)

    def close(self) -> None:
        """Write header + data to a temp file and atomically rename it to the target path."""
        if self._closed:
            return
        self._closed = True
        self._data.flush()
        header = pack_header({"metadata": self.metadata, "tensors": [r.to_header() for r in self._records]})
        pre = Preamble(MAJOR, MINOR, crc32(header), len(header), self._pos)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent or ".")
        try:
            os.fchmod(fd, new_file_mode())  # mkstemp's 0o600 would ignore the umask
            with os.fdopen(fd, "wb") as out:
                out.write(pack_preamble(pre))
                out.write(header)
                out.write(b"\0" * (pre.data_offset - PREAMBLE_SIZE - len(header)))
                self._data.seek(0)
                shutil.copyfileobj(self._data, out, length=16 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            self._discard_data()

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched."""
        self._closed = True
        self._discard_data()

    def _discard_data(self) -> None:
        self._data.close()
        if os.path.exists(self._data.name):
            os.unlink(self._data.name)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


__all__ = ["Writer", "SpqrFormatError", "ALIGNMENT"]
