"""Memory-mapped, lazy, strict reader of .spqr files.

Opening a file reads and checks the preamble, the header checksum and every
generic header rule (spec/SPEC.md §2–§4): after that, each section is known to
lie inside the file. Codec rules, section checksums and index contents are
checked per tensor the first time its arrays are requested, before any
decoder sees them, so a file with one bad or unknown tensor still serves the
others (§9).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import codecs
from .dtypes import STORAGE, f32_to_bf16
from .errors import ErrorCode, SpqrFormatError, fail
from .format import MAX_HEADER_LENGTH, PREAMBLE_SIZE, Preamble, crc32, read_preamble, unpack_header
from .records import TensorRecord, parse_records


class Tensor:
    """One tensor of an open file; sections are read from the memory map on demand."""

    def __init__(self, file: SpqrFile, record: TensorRecord) -> None:
        self._file = file
        self.record = record
        self._checked = False

    name = property(lambda self: self.record.name)
    shape = property(lambda self: self.record.shape)
    dtype = property(lambda self: self.record.dtype)
    codec = property(lambda self: self.record.codec)
    codec_version = property(lambda self: self.record.codec_version)
    params = property(lambda self: self.record.params)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Stored bytes of all sections (statistics, outliers, permutation included)."""
        return sum(s.length for s in self.record.sections.values())

    @property
    def bits_per_param(self) -> float:
        return 8.0 * self.nbytes / self.numel if self.numel else 0.0

    def _raw_section(self, role: str) -> np.ndarray:
        s = self.record.sections[role]
        start = self._file._data_offset + s.offset
        arr = np.frombuffer(self._file._map, dtype=STORAGE[s.dtype], count=s.size, offset=start)
        return arr.reshape(s.shape)

    def check(self) -> None:
        """Every rule for this tensor: codec known, params/sections, checksums, CSR/perm contents."""
        if self._checked:
            return
        codec = codecs.get(self.record)
        codec.check_record(self.record)
        arrays = {role: self._raw_section(role) for role in self.record.sections}
        if self._file.verify_checksums:
            for role, s in self.record.sections.items():
                got = crc32(memoryview(arrays[role].reshape(-1).view(np.uint8)))
                if got != s.crc32:
                    raise fail(ErrorCode.SECTION_CHECKSUM,
                               f"section {role!r} CRC-32 is {got:#010x}, header says {s.crc32:#010x}", self.name)
        codec.check_content(self.record, arrays)
        self._checked = True

    def arrays(self) -> dict[str, np.ndarray]:
        """Validated, read-only section arrays (views into the map; bf16 as uint16 bit patterns)."""
        self.check()
        return {role: self._raw_section(role) for role in self.record.sections}

    def decode(self, dtype: str | None = None) -> np.ndarray:
        """The decoded tensor (spec §6.4): f32 for quantized codecs, own dtype for ``raw``.

        ``dtype`` ('f32', 'f16' or 'bf16'; bf16 comes back as uint16 bit patterns)
        casts the decoded f32 array with round-to-nearest-even.
        """
        out = codecs.get(self.record).decode(self.record, self.arrays())
        if dtype is None:
            return out
        if self.codec == "raw" and self.dtype == "bf16":
            from .dtypes import bf16_to_f32

            out = bf16_to_f32(out)
        if dtype == "f32":
            return out.astype(np.float32)
        if dtype == "f16":
            return out.astype(np.float32).astype(np.float16)
        if dtype == "bf16":
            return f32_to_bf16(out.astype(np.float32))
        raise ValueError(f"dtype must be 'f32', 'f16' or 'bf16', got {dtype!r}")

    def bias(self) -> np.ndarray | None:
        """The optional layer bias a quantized codec carries, widened to f32."""
        if "bias" not in self.record.sections:
            return None
        from .dtypes import to_float32

        return to_float32(self.arrays()["bias"], self.record.sections["bias"].dtype)

    def __repr__(self) -> str:
        return f"<Tensor {self.name} {self.codec} {self.dtype}{list(self.shape)}>"


class SpqrFile(Mapping[str, Tensor]):
    """An open .spqr file: a read-only mapping from tensor name to :class:`Tensor`."""

    def __init__(self, path: str | os.PathLike[str], *, verify_checksums: bool = True,
                 max_header_length: int = MAX_HEADER_LENGTH) -> None:
        self.path = Path(path)
        self.verify_checksums = verify_checksums
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < PREAMBLE_SIZE:
                raise fail(ErrorCode.TRUNCATED, f"file has {size} bytes, the preamble alone needs {PREAMBLE_SIZE}")
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.preamble: Preamble = read_preamble(self._map[:PREAMBLE_SIZE], size, max_header_length)
            header = self._map[PREAMBLE_SIZE:PREAMBLE_SIZE + self.preamble.header_length]
            if crc32(header) != self.preamble.header_crc:
                raise fail(ErrorCode.HEADER_CHECKSUM, "header CRC-32 does not match the preamble: file is corrupt")
            self.header: dict[str, Any] = unpack_header(header)
            records, self.metadata = parse_records(self.header, self.preamble.data_length)
        except BaseException:
            self._map.close()
            raise
        self._data_offset = self.preamble.data_offset
        self.tensors: dict[str, Tensor] = {r.name: Tensor(self, r) for r in records}

    @property
    def version(self) -> tuple[int, int]:
        return (self.preamble.major, self.preamble.minor)

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def check_all(self) -> list[tuple[str, SpqrFormatError | None]]:
        """Check every tensor; one (name, error or None) entry per tensor."""
        out: list[tuple[str, SpqrFormatError | None]] = []
        for name, t in self.tensors.items():
            try:
                t.check()
                out.append((name, None))
            except SpqrFormatError as e:
                out.append((name, e))
        return out

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            pass  # arrays handed out still view the map; it closes when they are gone

    def __enter__(self) -> SpqrFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SpqrFile {str(self.path)!r} v{self.version[0]}.{self.version[1]} {len(self)} tensors>"


def open_file(path: str | os.PathLike[str], *, verify_checksums: bool = True,
              max_header_length: int = MAX_HEADER_LENGTH) -> SpqrFile:
    """Open a .spqr file (memory-mapped, lazy). Raises SpqrFormatError on a bad file."""
    return SpqrFile(path, verify_checksums=verify_checksums, max_header_length=max_header_length)


def validate(path: str | os.PathLike[str], *, verify_checksums: bool = True) -> None:
    """Check every rule of the spec for every tensor; raise the first SpqrFormatError."""
    with open_file(path, verify_checksums=verify_checksums) as f:
        for _name, err in f.check_all():
            if err is not None:
                raise err
