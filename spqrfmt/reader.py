"""Memory-mapped (or pread), lazy, strict reader of .spqr files.

Opening a file reads and checks the preamble, the header checksum and every
generic header rule (spec/SPEC.md §2–§4): after that, each section is known to
lie inside the file. Codec rules, section checksums and index contents are
checked per tensor the first time its arrays are requested, before any
decoder sees them, so a file with one bad or unknown tensor still serves the
others (§9).

Memory map hazard: by default sections are zero-copy views of a memory map.
If another process truncates the file while it is mapped, touching a page
past the new end kills this process with SIGBUS; no reader of a mapped file
can turn that into an exception. ``open(path, mmap=False)`` reads with
``pread`` instead (sections are copied into memory) and reports a file that
shrinks under it as TRUNCATED; :func:`validate` always reads that way.
"""

from __future__ import annotations

import io
import math
import mmap as _mmap
import os
import stat
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
        self._codec_params: dict[str, Any] | None = None

    name = property(lambda self: self.record.name)
    shape = property(lambda self: self.record.shape)
    dtype = property(lambda self: self.record.dtype)
    codec = property(lambda self: self.record.codec)
    codec_version = property(lambda self: self.record.codec_version)
    params = property(lambda self: self.record.params)

    @property
    def quantized(self) -> bool:
        """False for a tensor stored as it is (its codec says so); UNKNOWN_CODEC when the codec is unknown."""
        return bool(codecs.get(self.record).quantized)

    @property
    def codec_params(self) -> dict[str, Any]:
        """The params as the codec checked them (version-aware; what decoders and kernels read), checked once.

        Never the raw header dict (:attr:`params`): a record may carry keys that only a
        later codec version defines, which its own version ignores (SPEC §4.2).
        """
        if self._codec_params is None:
            self._codec_params = dict(codecs.get(self.record).check_record(self.record))
        return dict(self._codec_params)

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
        buf = self._file._read(self._file._data_offset + s.offset, s.length)
        arr = np.frombuffer(buf, dtype=STORAGE[s.dtype], count=s.size).reshape(s.shape)
        arr.flags.writeable = False  # a pread copy is private, but callers get the same contract as the map
        return arr

    def _sections(self) -> dict[str, np.ndarray]:
        return {role: self._raw_section(role) for role in self.record.sections}

    def check(self) -> None:
        """Every rule for this tensor: codec known, params/sections, checksums, CSR/perm contents."""
        if not self._checked:
            self._check(None)

    def _check(self, arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        codec = codecs.get(self.record)
        self._codec_params = dict(codec.check_record(self.record))
        if arrays is None:
            arrays = self._sections()
        if self._file.verify_checksums:
            for role, s in self.record.sections.items():
                got = crc32(memoryview(arrays[role].reshape(-1).view(np.uint8)))
                if got != s.crc32:
                    raise fail(ErrorCode.SECTION_CHECKSUM,
                               f"section {role!r} CRC-32 is {got:#010x}, header says {s.crc32:#010x}", self.name)
        codec.check_content(self.record, arrays)
        self._checked = True
        return arrays

    def arrays(self) -> dict[str, np.ndarray]:
        """Validated, read-only section arrays (views into the map, or copies with mmap=False;
        bf16 as uint16 bit patterns). With mmap=False each section is read once per call."""
        arrays = self._sections()
        return arrays if self._checked else self._check(arrays)

    def decode(self, dtype: str | None = None) -> np.ndarray:
        """The decoded tensor (spec §6.4): f32 for quantized codecs, own dtype for ``raw`` (unquantized).

        ``dtype`` ('f32', 'f16' or 'bf16'; bf16 comes back as uint16 bit patterns)
        casts the decoded f32 array with round-to-nearest-even.
        """
        arrays = self.arrays()  # checks the record once, keeping its params
        out = codecs.get(self.record).decode(self.record, arrays, self.codec_params)
        if dtype is None:
            return out
        if self.dtype == "bf16" and out.dtype == np.uint16:  # an unquantized bf16 tensor: bit patterns
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

    def to_torch(self, device: Any = None, dtype: Any = None) -> Any:
        """This tensor as a ``torch.Tensor`` (torch is imported only here).

        A ``raw`` tensor in its own dtype comes zero-copy from the file: a private copy-on-write
        map of its pages, checked (CRC) first; writing to the tensor never changes the file.
        Quantized tensors are decoded (f32, bit-exact per spec). ``dtype``: 'f32', 'f16', 'bf16'
        or the torch dtype, as :meth:`decode` casts; ``device``: moved there after reading.
        Matrices listed in ``spqrfmt.transposed`` come as stored, like :meth:`decode`.
        """
        from .torch_io import tensor_to_torch

        return tensor_to_torch(self, device, dtype)

    def get_slice(self) -> TensorSlice:
        """Partial reads of a ``raw`` tensor, as safetensors' ``get_slice``: ``t.get_slice()[0:10]``.

        Only the rows of the first dimension that the index selects are read. The section CRC
        covers the whole section, so it is not checked on a partial read (``check()`` does).
        """
        if self.quantized:
            raise ValueError(f"tensor {self.name!r} is {self.codec}-coded: get_slice reads raw tensors only; "
                             "use decode() (quantized codecs decode whole matrices)")
        self._codec_params = dict(codecs.get(self.record).check_record(self.record))
        return TensorSlice(self)

    def __repr__(self) -> str:
        return f"<Tensor {self.name} {self.codec} {self.dtype}{list(self.shape)}>"


class TensorSlice:
    """Lazy view of a raw tensor: ``[...]`` with ints and slices (and one ``...``) reads only the selected rows."""

    def __init__(self, tensor: Tensor) -> None:
        self._tensor = tensor
        s = tensor.record.sections["data"]
        self._section = s
        self._storage = STORAGE[s.dtype]

    def get_shape(self) -> list[int]:
        return list(self._tensor.shape)

    def get_dtype(self) -> str:
        return self._tensor.dtype

    def _key(self, key: Any) -> tuple[Any, ...]:
        key = key if isinstance(key, tuple) else (key,)
        ndim = len(self._tensor.shape)
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
        if len(key) > ndim:
            raise IndexError(f"too many indices: tensor {self._tensor.name!r} has {ndim} dimensions")
        out = []
        for k in key:
            if isinstance(k, slice):
                out.append(k)
            elif isinstance(k, (bool, np.bool_)) or not hasattr(k, "__index__"):
                raise TypeError(f"get_slice takes ints, slices and '...', not {type(k).__name__}")
            else:
                out.append(int(k.__index__()))
        return tuple(out)

    def __getitem__(self, key: Any) -> np.ndarray:
        """The selected elements (bf16 as uint16 bit patterns, like ``decode``), a new array."""
        key = self._key(key)
        shape = tuple(self._tensor.shape)
        if not shape:
            return np.array(self._tensor.decode()[key])
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        n0 = shape[0]
        if isinstance(first, int):
            if not -n0 <= first < n0:
                raise IndexError(f"index {first} is out of bounds for dimension 0 of size {n0}")
            rows = range(first % n0, first % n0 + 1)
        else:
            rows = range(*first.indices(n0))
        inner = shape[1:]
        if len(rows) == 0:
            part = np.empty((0, *inner), dtype=self._storage)
        else:
            lo, hi = min(rows), max(rows) + 1
            row_bytes = math.prod(inner) * self._storage.itemsize
            f = self._tensor._file
            buf = f._read(f._data_offset + self._section.offset + lo * row_bytes, (hi - lo) * row_bytes)
            part = np.frombuffer(buf, dtype=self._storage).reshape((hi - lo, *inner))
            part = part[rows.start - lo::rows.step][:len(rows)]
        part = part[0] if isinstance(first, int) else part
        return np.array(part[(slice(None),) * (not isinstance(first, int)) + rest])


class SpqrFile(Mapping[str, Tensor]):
    """An open .spqr file: a read-only mapping from tensor name to :class:`Tensor`.

    ``mmap=True`` (default) maps the file: sections are zero-copy views, but a
    concurrent truncation of the file raises SIGBUS (see the module docstring).
    ``mmap=False`` reads every byte with ``pread``: sections are copies, and a
    file that shrinks while open gives SpqrFormatError(TRUNCATED). Only regular
    files are opened (a FIFO or device would block or never end): OSError otherwise.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify_checksums: bool = True,
                 max_header_length: int = MAX_HEADER_LENGTH, mmap: bool = True) -> None:
        self.path = Path(path)
        self.verify_checksums = verify_checksums
        self.mmap = mmap
        self._map: _mmap.mmap | None = None
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        self._fh: io.FileIO | None = io.FileIO(fd, "rb")  # closes itself if the SpqrFile is dropped unclosed
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{self.path}: not a regular file")
            size = st.st_size
            if size < PREAMBLE_SIZE:
                raise fail(ErrorCode.TRUNCATED, f"file has {size} bytes, the preamble alone needs {PREAMBLE_SIZE}")
            if mmap:  # the descriptor stays open for the private maps of Tensor.to_torch
                self._map = _mmap.mmap(fd, 0, access=_mmap.ACCESS_READ)
            self.preamble: Preamble = read_preamble(self._read(0, PREAMBLE_SIZE), size, max_header_length)
            header = bytes(self._read(PREAMBLE_SIZE, self.preamble.header_length))  # no export pins the map
            if crc32(header) != self.preamble.header_crc:
                raise fail(ErrorCode.HEADER_CHECKSUM, "header CRC-32 does not match the preamble: file is corrupt")
            self.header: dict[str, Any] = unpack_header(header)
            del header
            try:
                records, self.metadata = parse_records(self.header, self.preamble.data_length)
            except MemoryError:
                raise fail(ErrorCode.LIMIT_EXCEEDED, "not enough memory for the header's tensor records") from None
        except BaseException:
            self.close()
            raise
        self._data_offset = self.preamble.data_offset
        self.tensors: dict[str, Tensor] = {r.name: Tensor(self, r) for r in records}

    def _read(self, offset: int, length: int) -> memoryview | bytearray:
        """``length`` bytes at ``offset``: a view of the map, or a pread copy (TRUNCATED if the file shrank)."""
        if self._map is not None:
            return memoryview(self._map)[offset:offset + length]
        if self._fh is None:
            raise ValueError("I/O on a closed SpqrFile")
        fd = self._fh.fileno()
        buf = bytearray(length)
        view, done = memoryview(buf), 0
        while done < length:
            if hasattr(os, "preadv"):
                got = os.preadv(fd, [view[done:]], offset + done)
            else:
                chunk = os.pread(fd, min(length - done, 1 << 30), offset + done)
                view[done:done + len(chunk)] = chunk
                got = len(chunk)
            if got == 0:
                raise fail(ErrorCode.TRUNCATED, f"file ended at byte {offset + done} while reading "
                           f"[{offset}, {offset + length}): it was truncated after it was opened")
            done += got
        return buf

    def _private(self, offset: int, length: int) -> memoryview | bytearray:
        """``length`` bytes at ``offset`` that the caller may write: a copy-on-write (MAP_PRIVATE) map of just
        those pages, zero-copy until written and never written back, or a pread copy with mmap=False."""
        if self._map is None or length == 0:
            return self._read(offset, length) if length else bytearray()
        if self._fh is None:
            raise ValueError("I/O on a closed SpqrFile")
        start = offset - offset % _mmap.ALLOCATIONGRANULARITY
        view = _mmap.mmap(self._fh.fileno(), offset + length - start, offset=start, access=_mmap.ACCESS_COPY)
        return memoryview(view)[offset - start:offset - start + length]  # the view keeps its map alive

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

    def validate(self) -> None:
        """Every rule for every tensor (checksums as opened); raise the first SpqrFormatError."""
        for _name, err in self.check_all():
            if err is not None:
                raise err

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._map is not None:
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
              max_header_length: int = MAX_HEADER_LENGTH, mmap: bool = True) -> SpqrFile:
    """Open a .spqr file (lazy). Raises SpqrFormatError on a bad file.

    ``mmap=False`` reads with pread instead of mapping the file, so that a file truncated by another
    process while open is TRUNCATED instead of a SIGBUS crash (sections are then copies).
    """
    return SpqrFile(path, verify_checksums=verify_checksums, max_header_length=max_header_length, mmap=mmap)


def validate(path: str | os.PathLike[str], *, verify_checksums: bool = True,
             max_header_length: int = MAX_HEADER_LENGTH) -> None:
    """Check every rule of the spec for every tensor; raise the first SpqrFormatError.

    Reads with pread (never a memory map), one tensor's sections at a time, so a file
    truncated concurrently is reported as TRUNCATED rather than crashing the process.
    """
    with open_file(path, verify_checksums=verify_checksums, max_header_length=max_header_length, mmap=False) as f:
        f.validate()
