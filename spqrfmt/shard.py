"""Read one shard of a tensor (spec/sharding.md): only the byte ranges the shard needs.

:func:`read_shard` hands the tensor's codec (through the registry) lazy sections that read
on slicing, so a rank of a tensor-parallel load reads its rows or its column range of each
section, never the whole tensor (the few sections a codec needs whole, listed there,
are read whole). The shard is a record of the same codec: it is checked like any tensor
(``check_record``, then ``check_content`` on its CSR / permutation) before it is decoded.

Section CRCs cover whole sections, so a partial read cannot check them (as with
``Tensor.get_slice``); run ``spqr validate`` (or ``SpqrFile.validate``) once per file for that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import codecs
from .codecs.sharding import Shard, ShardError
from .dtypes import STORAGE
from .reader import SpqrFile, Tensor
from .records import SectionRecord, TensorRecord


class ReadCounter:
    """Bytes read by lazy sections (what a test or a loader reports)."""

    def __init__(self) -> None:
        self.nbytes = 0


class LazySection:
    """A section of an open file that reads only what ``[...]`` selects (basic slices, step 1).

    The counter adds the bytes requested from the file: the slice's own bytes, read as one range per
    row for a column slice of a matrix. Memory-mapped files serve them from a view of the map (the
    kernel pages in whole pages); ``mmap=False`` preads them. ``np.asarray(s)`` reads it whole.
    """

    def __init__(self, file: SpqrFile, section: SectionRecord, counter: ReadCounter) -> None:
        self._file, self._s, self._counter = file, section, counter
        self.shape = tuple(section.shape)
        self.dtype = STORAGE[section.dtype]

    def _elements(self, start: int, count: int) -> np.ndarray:
        """``count`` elements from element ``start`` of the section (one read)."""
        size = self.dtype.itemsize
        buf = self._file._read(self._file._data_offset + self._s.offset + start * size, count * size)
        self._counter.nbytes += count * size
        return np.frombuffer(buf, dtype=self.dtype, count=count)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if not key or len(key) > max(1, len(self.shape)) or not all(
                isinstance(k, slice) and k.step in (None, 1) for k in key):
            raise TypeError("a lazy section takes basic slices with step 1, at most one per dimension")
        if not self.shape:
            return self.__array__()
        bounds = [k.indices(d)[:2] for k, d in zip(key, self.shape, strict=False)]
        (lo, hi), inner = bounds[0], self.shape[1:]
        hi, row = max(lo, hi), int(np.prod(inner, dtype=np.int64))
        if len(self.shape) == 2 and len(key) == 2 and bounds[1] != (0, self.shape[1]):
            c0, c1 = bounds[1][0], max(bounds[1])
            rows = [self._elements(r * row + c0, c1 - c0) for r in range(lo, hi)]
            return np.array(rows, dtype=self.dtype).reshape(hi - lo, c1 - c0)
        part = self._elements(lo * row, (hi - lo) * row).reshape(hi - lo, *inner)
        return np.array(part[(slice(None), *key[1:])])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:] if self.shape else np.array(self._elements(0, 1).reshape(()))
        return whole if dtype is None else whole.astype(dtype)


@dataclass
class TensorShard:
    """A checked shard: its record (sections without file offsets), arrays, checked params, and ``index``
    (the unsharded tensor's positions along the cut axis that it holds)."""

    record: TensorRecord
    arrays: dict[str, np.ndarray]
    params: dict[str, Any]
    index: np.ndarray
    axis: int

    def decode(self) -> np.ndarray:
        """The shard's decoded tensor (spec §6.4 of its codec) = the unsharded decode taken at ``index``."""
        return codecs.get(self.record).decode(self.record, self.arrays, self.params)


def shard_arrays(rec: TensorRecord, sections: Mapping[str, Any], axis: int, index: int, count: int) -> TensorShard:
    """Cut ``rec`` (its ``sections``: arrays or lazy sections) through its codec and check the result."""
    codec = codecs.get(rec)
    cut = getattr(codec, "shard", None)
    if cut is None:
        raise ShardError(f"{rec.name}: codec {rec.codec!r} defines no sharding (no 'shard' method)")
    codec.check_record(rec)
    part: Shard = cut(rec, sections, axis, index, count)
    secs = {role: SectionRecord(rec.sections[role].dtype, tuple(a.shape), 0, a.nbytes, 0)
            for role, a in part.sections.items()}
    srec = TensorRecord(f"{rec.name}[shard {index}/{count} axis {axis}]", tuple(part.shape), rec.dtype, rec.codec,
                        rec.codec_version, part.params, secs)
    arrays = {role: np.ascontiguousarray(a, dtype=STORAGE[secs[role].dtype]) for role, a in part.sections.items()}
    params = dict(codec.check_record(srec))
    codec.check_content(srec, arrays)
    return TensorShard(srec, arrays, params, np.asarray(part.index, dtype=np.int64), axis)


def read_shard(tensor: Tensor, axis: int, index: int, count: int,
               counter: ReadCounter | None = None) -> TensorShard:
    """Part ``index`` of ``count`` of ``tensor`` along ``axis``, reading only its byte ranges (module docstring).

    ShardError (a ValueError) when the codec's rule (spec/sharding.md) cannot cut it so;
    SpqrFormatError for bad content met on the way.
    """
    counter = counter or ReadCounter()
    lazy = {role: LazySection(tensor._file, s, counter) for role, s in tensor.record.sections.items()}
    return shard_arrays(tensor.record, lazy, axis, index, count)


__all__ = ["LazySection", "ReadCounter", "ShardError", "TensorShard", "read_shard", "shard_arrays"]
