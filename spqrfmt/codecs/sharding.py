"""Pieces shared by the codecs' ``shard`` methods (spec/sharding.md: tensor-parallel sharding).

A codec's ``shard(rec, sections, axis, index, count) -> Shard`` cuts its tensor into ``count`` equal
parts along ``axis`` (0 = out, 1 = in) and returns part ``index`` as a valid record of the same codec
and version. ``sections`` maps roles to arrays or to lazy sections (``spqrfmt.shard.LazySection``):
anything sliced with ``[a:b]`` / ``[:, a:b]`` and read whole with ``np.asarray``, so a codec slices
before it reads and a lazy section reads only the bytes of its slice. Index-bearing sections a codec
uses to address others (CSR row pointers, permutations) are checked here before use; the shard record
itself is checked again (check_record + check_content) before anything decodes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from ..errors import ErrorCode, fail
from ..format import ceil_div
from ..records import TensorRecord
from . import check_csr


class ShardError(ValueError):
    """A tensor that its codec's sharding rule (spec/sharding.md) cannot cut as asked; the message names the rule."""


class Shard(NamedTuple):
    """Part of a tensor: header ``params``, section arrays, ``shape``, and ``index``: the positions of the
    unsharded tensor along the cut axis it holds, so that ``decode(shard) == decode(tensor).take(index, axis)``."""

    params: dict[str, Any]
    sections: dict[str, np.ndarray]
    shape: tuple[int, ...]
    index: np.ndarray


AXES = ("out", "in")


def shard_range(rec: TensorRecord, axis: int, index: int, count: int, multiple: int, rule: str) -> tuple[int, int]:
    """[lo, hi) of part ``index`` of ``count`` equal parts of ``rec.shape[axis]``; ShardError unless the size
    divides evenly and every boundary falls on a multiple of ``multiple`` (``rule`` says why, for the message)."""
    if not 0 <= axis < len(rec.shape):
        raise ShardError(f"{rec.name}: axis {axis} is out of range for shape {list(rec.shape)}")
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise ShardError(f"{rec.name}: shard {index} of {count} is not a part (need 0 <= index < count)")
    size = rec.shape[axis]
    what = AXES[axis] if len(rec.shape) == 2 else f"dimension {axis}"
    if size % count:
        raise ShardError(f"{rec.name}: {rec.codec} cannot cut {what} = {size} into {count} equal parts "
                         "(spec/sharding.md §1)")
    chunk = size // count
    if count > 1 and chunk % multiple:
        raise ShardError(f"{rec.name}: {rec.codec} shards along {what} must be multiples of {multiple} ({rule}; "
                         f"spec/sharding.md); {size} / {count} = {chunk} is not")
    return index * chunk, (index + 1) * chunk


def packed_columns(words: Any, bits: int, lo: int, hi: int) -> np.ndarray:
    """Codes ``lo..hi-1`` of every packed row (spqr.md §4) as new packed rows; reads only the words holding them."""
    w0, w1 = lo * bits // 32, ceil_div(hi * bits, 32)
    sub = np.asarray(words[:, w0:w1], dtype=np.uint32)
    if (lo * bits) % 32 == 0 and (hi * bits) % 32 == 0:
        return np.array(sub)  # word-aligned: the words themselves, padding-free
    rows = sub.shape[0]
    wide = np.concatenate([sub, np.zeros((rows, 1), np.uint32)], axis=1).astype(np.uint64)
    pos = (lo * bits - w0 * 32) + np.arange(hi - lo, dtype=np.int64) * bits
    q, s = pos >> 5, (pos & 31).astype(np.uint64)
    codes = ((wide[:, q] | (wide[:, q + 1] << np.uint64(32))) >> s) & np.uint64((1 << bits) - 1)
    from ..encoder.packing import pack_rows

    return pack_rows(codes.astype(np.int64), bits)


def csr_rows(rec: TensorRecord, sections: Mapping[str, Any], lo: int, hi: int) -> dict[str, np.ndarray]:
    """The outlier CSR of rows ``lo..hi-1`` with its row pointer re-based to 0; reads only those rows' entries.

    The row-pointer slice is checked (monotone, inside ``outlier_col``) before it addresses anything (BAD_CSR).
    """
    rp = np.asarray(sections["outlier_row_ptr"][lo:hi + 1]).astype(np.int64)
    nnz = sections["outlier_col"].shape[0]
    if np.any(np.diff(rp) < 0) or rp[0] < 0 or rp[-1] > nnz or (lo == 0 and rp[0] != 0):
        raise fail(ErrorCode.BAD_CSR, f"outlier row pointer of rows {lo}..{hi - 1} decreases or leaves 0..{nnz}",
                   rec.name)
    a, b = int(rp[0]), int(rp[-1])
    return {"outlier_row_ptr": (rp - a).astype(np.uint32),
            "outlier_col": np.array(sections["outlier_col"][a:b]),
            "outlier_val": np.array(sections["outlier_val"][a:b])}


def csr_columns(rec: TensorRecord, sections: Mapping[str, Any], lo: int, hi: int) -> dict[str, np.ndarray]:
    """The outlier CSR restricted to columns ``lo..hi-1``, columns re-based to 0 (the whole CSR is read:
    a row's entries for a column range are not locatable without it). Checked first (BAD_CSR / BAD_INDEX)."""
    rp = np.asarray(sections["outlier_row_ptr"])
    col = np.asarray(sections["outlier_col"])
    val = np.asarray(sections["outlier_val"])
    check_csr(rec, rp, col, rec.shape[1])
    c = col.astype(np.int64)
    keep = (c >= lo) & (c < hi)
    rows = np.repeat(np.arange(rp.shape[0] - 1), np.diff(rp.astype(np.int64)))
    counts = np.bincount(rows[keep], minlength=rp.shape[0] - 1)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint32)
    return {"outlier_row_ptr": ptr, "outlier_col": (c[keep] - lo).astype(col.dtype), "outlier_val": val[keep].copy()}


def whole(sections: Mapping[str, Any], *roles: str) -> dict[str, np.ndarray]:
    """Copies of the sections ``roles`` that are present, read whole."""
    return {r: np.array(sections[r]) for r in roles if r in sections}


def rows_of(sections: Mapping[str, Any], lo: int, hi: int, *roles: str) -> dict[str, np.ndarray]:
    """``[lo:hi]`` along the first dimension of the sections ``roles`` that are present."""
    return {r: np.array(sections[r][lo:hi]) for r in roles if r in sections}


def cols_of(sections: Mapping[str, Any], lo: int, hi: int, *roles: str) -> dict[str, np.ndarray]:
    """``[:, lo:hi]`` of the sections ``roles`` that are present."""
    return {r: np.array(sections[r][:, lo:hi]) for r in roles if r in sections}
