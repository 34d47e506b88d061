"""Numba reference decoder for codec ``spqr`` v1 and v2 (spec/codecs/spqr.md §5, §8).

The arithmetic is spelled out operation by operation so that it matches the
spec (and the Triton and pure-numpy decoders) bit for bit: f32 subtract then
f32 multiply, no fused multiply-add (Numba does not contract without
fastmath), f16 roundings by integer arithmetic on the f32 bits (:func:`rne16`).
v2's ``arith = "f16"`` rounds after every operation and ``outlier_op = "add"``
adds the outlier value; v1 is v2 with ``f32``/``replace``. One parallel pass
does all four steps a block of rows at a time (statistics, codes, outliers,
permutation), so nothing of size [m, n] but the output is ever written.

``params`` are a record's checked params (``spqrfmt.codecs.spqr.checked_params``):
they hold ``arith``/``outlier_op`` only for v2, so their absence means v1.

Inputs must already be validated (spqrfmt.codecs.spqr checks shapes, CSR and
perm): these loops do no bounds checking of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numba
import numpy as np

from ..threads import shape_size, sized
from .output import empty_f32
from .vector import STAT_LANES, dequant_chunk, dequant_word


@numba.njit(cache=True, nogil=True, inline="always")
def _code(words: np.ndarray, r: int, i: int, bits: int, mask: np.uint32) -> np.uint32:
    """Code ``i`` of packed row ``r`` (spqr.md §4): one place for the straddling-word rule."""
    p = i * bits
    q = p >> 5
    s = p & 31
    v = words[r, q] >> np.uint32(s)
    if s + bits > 32:
        v |= words[r, q + 1] << np.uint32(32 - s)
    return v & mask


@numba.njit(cache=True, nogil=True, parallel=True)
def unpack_rows(words: np.ndarray, cols: int, bits: int) -> np.ndarray:
    """[R, W] u32 packed rows -> [R, cols] u32 codes."""
    rows = words.shape[0]
    out = np.empty((rows, cols), dtype=np.uint32)
    mask = np.uint32((1 << bits) - 1)
    for r in numba.prange(rows):
        for i in range(cols):
            out[r, i] = _code(words, r, i, bits, mask)
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _rne16(x: np.float32) -> np.float32:
    """One f32 -> nearest-even f16 -> f32 rounding (spec 'rne16'), by integer arithmetic on the bits."""
    u = np.float32(x).view(np.uint32)
    sign = u & np.uint32(0x80000000)
    a = u & np.uint32(0x7FFFFFFF)
    if a >= np.uint32(0x7F800000):  # inf or NaN stay as they are
        return x
    if a >= np.uint32(0x477FF000):  # >= 65520 rounds to infinity
        return np.uint32(sign | np.uint32(0x7F800000)).view(np.float32)
    if a < np.uint32(0x38800000):  # below 2^-14: f16 subnormal grid of 2^-24, exact scaling
        return np.float32(np.rint(x * np.float32(16777216.0))) * np.float32(5.9604645e-08)
    a = np.uint32(a + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1)))  # normal: 10 mantissa bits, RNE
    return np.uint32(sign | (a & np.uint32(0xFFFFE000))).view(np.float32)


@numba.njit(cache=True, nogil=True)
def rne16(x: np.ndarray) -> np.ndarray:
    """f32 -> nearest-even f16 -> f32, elementwise (spec 'rne16').

    numpy's f32->f16 cast is correct but slow; this is the same function
    (checked against it in tests, subnormals, ties and overflow included).
    """
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    for i in range(flat.size):
        out[i] = _rne16(flat[i])
    return out.reshape(x.shape)


@numba.njit(cache=True, nogil=True, inline="always")
def _bits64(words: np.ndarray, r: int, p: int) -> np.uint64:
    """64 bits of packed row ``r``'s bit stream (spqr.md §4) from bit ``p``: zeros past the row's last word."""
    W = words.shape[1]
    wi = p >> 5
    sh = np.uint64(p & 31)
    lo = np.uint64(words[r, wi])
    if wi + 1 < W:
        lo |= np.uint64(words[r, wi + 1]) << np.uint64(32)
    c = lo >> sh
    if wi + 2 < W and sh > 0:
        c |= np.uint64(words[r, wi + 2]) << (np.uint64(64) - sh)
    return c


@numba.njit(cache=True, nogil=True, inline="always")
def _stat_block(words: np.ndarray, bits: int, group: int, zero2: np.ndarray, scale2: np.ndarray, full: np.ndarray,
                f16: bool, r0: int, r1: int, out: np.ndarray) -> None:
    """Rows r0..r1 of a first-level statistic as out[:, :r1 - r0] (spqr.md §5 step 1, §8); out is [G, >= r1 - r0 + 16].

    ``bits == 16``: ``full`` [G, m] holds the f16 values as f32; else the
    second-level dequantization rne16((f32(code) - zero2) * scale2), the difference
    rounded to f16 first when ``f16`` (v2 ``arith = "f16"``), up to 16 rows of one
    second-level group per vector (:func:`~spqrfmt.decoder.vector.dequant_chunk`),
    their codes cut from the row's bit stream (§4) as one u64. The vector's lanes past
    the run are written too, then overwritten by the next run or left in the padding.
    """
    G = out.shape[0]
    if bits == 16:
        for g in range(G):
            for r in range(r0, r1):
                out[g, r - r0] = full[g, r]
        return
    step = min(STAT_LANES, 64 // bits)  # codes per u64 chunk
    for g in range(G):
        row = out[g]
        for k in range(r0 // group, (r1 - 1) // group + 1):
            z_ = zero2[g, k]
            s_ = scale2[g, k]
            for ra in range(max(r0, k * group), min(r1, (k + 1) * group), step):
                dequant_chunk(row, ra - r0, _bits64(words, g, ra * bits), bits, z_, s_, f16, True)


@numba.njit(cache=True, nogil=True, inline="always")
def _words(codes: np.ndarray, r: int, row: np.ndarray, q0: int, q1: int, per: int, bits: int, z_: np.float32,
           s_: np.float32) -> None:
    """Words q0..q1 of packed row ``r``, ``per`` codes of ``bits`` each (32 = per * bits), as (f32(code) - z) * s.

    Inlined with literal ``per``/``bits``, so each word is one explicit vector operation
    (:func:`~spqrfmt.decoder.vector.dequant_word`: the same IEEE operations, element by element).
    """
    for q in range(q0, q1):
        dequant_word(row, q * per, codes[r, q], bits, z_, s_)


@numba.njit(cache=True, nogil=True)
def _whole_words_row(codes: np.ndarray, r: int, row: np.ndarray, S: np.ndarray, Z: np.ndarray, bits: int,
                     group_size: int, n: int) -> None:
    """Step 2 of row ``r`` for 1, 2, 4 or 8 bits and groups of whole words: each word decodes on its own.

    One branch per bit width around the group loop, so :func:`_words` inlines with literal sizes.
    """
    per = 32 // bits
    mask = np.uint32((1 << bits) - 1)
    for g in range(S.size):
        s_ = S[g]
        z_ = Z[g]
        j1 = min(n, (g + 1) * group_size)
        q0 = (g * group_size) // per
        q1 = j1 // per
        if bits == 4:
            _words(codes, r, row, q0, q1, 8, 4, z_, s_)
        elif bits == 2:
            _words(codes, r, row, q0, q1, 16, 2, z_, s_)
        elif bits == 8:
            _words(codes, r, row, q0, q1, 4, 8, z_, s_)
        else:
            _words(codes, r, row, q0, q1, 32, 1, z_, s_)
        for j in range(q1 * per, j1):  # a last partial word
            row[j] = (np.float32((codes[r, j // per] >> np.uint32((j % per) * bits)) & mask) - z_) * s_


@numba.njit(cache=True, nogil=True)
def _chunked_row(codes: np.ndarray, r: int, row: np.ndarray, S: np.ndarray, Z: np.ndarray, bits: int,
                 group_size: int, n: int, f16: bool) -> None:
    """Step 2 of row ``r`` for any width (and v2 f16 arithmetic): up to 16 codes at a time, cut from the bit
    stream as one u64, as one vector (:func:`~spqrfmt.decoder.vector.dequant_chunk`).

    A vector's lanes past its group are rewritten by the next group; the last codes of the row, where 16 lanes
    would pass its end, one at a time.
    """
    step = min(STAT_LANES, 64 // bits)
    mask = np.uint32((1 << bits) - 1)
    for g in range(S.size):
        s_ = S[g]
        z_ = Z[g]
        j = g * group_size
        j1 = min(n, j + group_size)
        while j < j1 and j + STAT_LANES <= n:
            if f16:
                dequant_chunk(row, j, _bits64(codes, r, j * bits), bits, z_, s_, True, True)
            else:
                dequant_chunk(row, j, _bits64(codes, r, j * bits), bits, z_, s_, False, False)
            j += step
        for jj in range(j, j1):
            t = np.float32(_code(codes, r, jj, bits, mask)) - z_
            row[jj] = _rne16(_rne16(t) * s_) if f16 else t * s_


_ROWS = 32  # rows per block: the block's statistics stay in L1/L2 while its rows decode


@numba.njit(cache=True, nogil=True, parallel=True)
def _decode_rows(codes: np.ndarray, bits: int, n: int, group_size: int,
                 s_words: np.ndarray, s_bits: int, s_group: int, s_zero2: np.ndarray, s_scale2: np.ndarray,
                 s_full: np.ndarray, z_words: np.ndarray, z_bits: int, z_group: int, z_zero2: np.ndarray,
                 z_scale2: np.ndarray, z_full: np.ndarray, row_ptr: np.ndarray, ocols: np.ndarray,
                 ovals: np.ndarray, add: bool, f16: bool, perm: np.ndarray, out: np.ndarray) -> None:
    """spqr.md §5 steps 1-4 for all rows, in blocks of rows in parallel, with the spec's operations in order.

    Per block: its rows' statistics (step 1); per row: codes read from the
    little-endian bit stream (§4), (f32(code) - z) * s (step 2; rne16 after each
    operation when ``f16``), whole words or u64 chunks as vectors, the row's outliers
    replaced or added (step 3), and the row scattered through ``perm`` when it is
    non-empty (step 4).
    """
    m = codes.shape[0]
    G = (n + group_size - 1) // group_size
    nblk = (m + _ROWS - 1) // _ROWS
    has_perm = perm.size > 0
    per = 32 // bits
    # 1, 2, 4 or 8 bits with groups of whole words: each word decodes on its own (vectorisable, see _words)
    whole = not f16 and 32 % bits == 0 and group_size % per == 0
    for b in numba.prange(nblk):
        r0 = b * _ROWS
        r1 = min(m, r0 + _ROWS)
        # [group, row]: the second level writes it contiguously; + STAT_LANES: room for a vector's spare lanes
        S = np.empty((G, r1 - r0 + STAT_LANES), dtype=np.float32)
        Z = np.empty((G, r1 - r0 + STAT_LANES), dtype=np.float32)
        _stat_block(s_words, s_bits, s_group, s_zero2, s_scale2, s_full, f16, r0, r1, S)
        _stat_block(z_words, z_bits, z_group, z_zero2, z_scale2, z_full, f16, r0, r1, Z)
        buf = np.empty(n, dtype=np.float32)
        for r in range(r0, r1):
            row = buf if has_perm else out[r]
            if whole:
                _whole_words_row(codes, r, row, S[:, r - r0], Z[:, r - r0], bits, group_size, n)
            else:
                _chunked_row(codes, r, row, S[:, r - r0], Z[:, r - r0], bits, group_size, n, f16)
            for e in range(row_ptr[r], row_ptr[r + 1]):
                if add:
                    a = row[ocols[e]] + ovals[e]
                    row[ocols[e]] = _rne16(a) if f16 else a
                else:
                    row[ocols[e]] = ovals[e]
            if has_perm:
                for j in range(n):
                    out[r, perm[j]] = buf[j]


def _stat_args(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], which: str) -> tuple:
    """The :func:`_stat_block` inputs of statistic ``which`` (unused ones as empty arrays)."""
    bits = int(params[f"{which}_bits"])
    none2 = np.zeros((0, 0), dtype=np.float32)
    if bits == 16:
        return np.zeros((0, 0), dtype=np.uint32), 16, 1, none2, none2, np.ascontiguousarray(
            np.asarray(sections[which]).astype(np.float32))
    return (np.ascontiguousarray(sections[f"{which}_codes"]), bits, int(params["stat_group_size"]),
            np.ascontiguousarray(np.asarray(sections[f"{which}_zero"]).astype(np.float32)),
            np.ascontiguousarray(np.asarray(sections[f"{which}_scale"]).astype(np.float32)), none2)


@sized(shape_size)
def decode(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Decoded f32 [m, n] weight of a validated spqr tensor (v1, or v2 when params hold ``arith``)."""
    m, n = shape
    out = empty_f32((m, n))
    perm = sections.get("perm")
    _decode_rows(np.ascontiguousarray(sections["codes"]), int(params["bits"]), n, int(params["group_size"]),
                 *_stat_args(params, sections, "scale"), *_stat_args(params, sections, "zero"),
                 np.ascontiguousarray(sections["outlier_row_ptr"]).astype(np.int64),
                 np.ascontiguousarray(sections["outlier_col"]).astype(np.int64),
                 np.asarray(sections["outlier_val"]).astype(np.float32),
                 params.get("outlier_op", "replace") == "add", params.get("arith", "f32") == "f16",
                 np.zeros(0, dtype=np.int64) if perm is None else np.asarray(perm).astype(np.int64), out)
    return out
