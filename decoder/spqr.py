"""Numba reference decoder for codec ``spqr`` v1 and v2 (spec/codecs/spqr.md §5, §8).

The arithmetic is spelled out operation by operation so that it matches the
spec (and the Triton and pure-numpy decoders) bit for bit: f32 subtract then
f32 multiply, no fused multiply-add (Numba does not contract without
fastmath), f16 roundings by integer arithmetic on the f32 bits (:func:`rne16`).
v2's ``arith = "f16"`` rounds after every operation and ``outlier_op = "add"``
adds the outlier value; v1 (and v2 with ``f32``/``replace``) runs the v1 loops.

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


@numba.njit(cache=True, nogil=True)
def unpack_rows(words: np.ndarray, cols: int, bits: int) -> np.ndarray:
    """[R, W] u32 packed rows -> [R, cols] u32 codes."""
    rows = words.shape[0]
    out = np.empty((rows, cols), dtype=np.uint32)
    mask = np.uint32((1 << bits) - 1)
    for r in range(rows):
        for i in range(cols):
            out[r, i] = _code(words, r, i, bits, mask)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _dense(codes: np.ndarray, bits: int, n: int, group_size: int, S: np.ndarray, Z: np.ndarray,
           out: np.ndarray) -> None:
    m = codes.shape[0]
    mask = np.uint32((1 << bits) - 1)
    ngroups = (n + group_size - 1) // group_size
    for r in numba.prange(m):
        for g in range(ngroups):
            s_ = S[g, r]
            z_ = Z[g, r]
            j0 = g * group_size
            j1 = min(n, j0 + group_size)
            for j in range(j0, j1):
                t = np.float32(_code(codes, r, j, bits, mask)) - z_
                out[r, j] = t * s_


@numba.njit(cache=True, nogil=True, parallel=True)
def _dense_f16(codes: np.ndarray, bits: int, n: int, group_size: int, S: np.ndarray, Z: np.ndarray,
               out: np.ndarray) -> None:
    """v2 ``arith = "f16"`` step 2: the same two operations as :func:`_dense`, each rounded to f16."""
    m = codes.shape[0]
    mask = np.uint32((1 << bits) - 1)
    ngroups = (n + group_size - 1) // group_size
    for r in numba.prange(m):
        for g in range(ngroups):
            s_ = S[g, r]
            z_ = Z[g, r]
            j0 = g * group_size
            j1 = min(n, j0 + group_size)
            for j in range(j0, j1):
                t = _rne16(np.float32(_code(codes, r, j, bits, mask)) - z_)
                out[r, j] = _rne16(t * s_)


@numba.njit(cache=True, nogil=True)
def _replace_outliers(out: np.ndarray, row_ptr: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    for r in range(out.shape[0]):
        for e in range(row_ptr[r], row_ptr[r + 1]):
            out[r, cols[e]] = vals[e]


@numba.njit(cache=True, nogil=True)
def _add_outliers(out: np.ndarray, row_ptr: np.ndarray, cols: np.ndarray, vals: np.ndarray, f16: bool) -> None:
    """v2 ``outlier_op = "add"`` step 3: one f32 addition, rounded to f16 when ``arith = "f16"``."""
    for r in range(out.shape[0]):
        for e in range(row_ptr[r], row_ptr[r + 1]):
            a = out[r, cols[e]] + vals[e]
            out[r, cols[e]] = _rne16(a) if f16 else a


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


@numba.njit(cache=True, nogil=True)
def _stat2(words: np.ndarray, m: int, bits: int, group: int, zero2: np.ndarray, scale2: np.ndarray,
           f16: bool) -> np.ndarray:
    """Second-level dequantization before the final f16 rounding: (f32(code) - zero2) * scale2.

    ``f16`` (v2 ``arith = "f16"``) rounds the difference to f16 before the multiplication.
    """
    G = words.shape[0]
    out = np.empty((G, m), dtype=np.float32)
    mask = np.uint32((1 << bits) - 1)
    for g in range(G):
        for r in range(m):
            k = r // group
            t = np.float32(_code(words, g, r, bits, mask)) - zero2[g, k]
            if f16:
                t = _rne16(t)
            out[g, r] = t * scale2[g, k]
    return out


def stat(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], which: str, m: int) -> np.ndarray:
    """First-level statistic ``which`` ('scale' or 'zero') as f32 [G, m] (spqr.md §5 step 1, §8)."""
    bits = params[f"{which}_bits"]
    if bits == 16:
        return np.asarray(sections[which]).astype(np.float32)
    t = _stat2(np.ascontiguousarray(sections[f"{which}_codes"]), m, bits, params["stat_group_size"],
               np.asarray(sections[f"{which}_zero"]).astype(np.float32),
               np.asarray(sections[f"{which}_scale"]).astype(np.float32), params.get("arith", "f32") == "f16")
    return rne16(t)


def decode(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Decoded f32 [m, n] weight of a validated spqr tensor (v1, or v2 when params hold ``arith``)."""
    m, n = shape
    f16 = params.get("arith", "f32") == "f16"
    S = np.ascontiguousarray(stat(params, sections, "scale", m))
    Z = np.ascontiguousarray(stat(params, sections, "zero", m))
    out = np.empty((m, n), dtype=np.float32)
    dense = _dense_f16 if f16 else _dense
    dense(np.ascontiguousarray(sections["codes"]), params["bits"], n, params["group_size"], S, Z, out)
    vals = np.asarray(sections["outlier_val"]).astype(np.float32)
    if vals.size:
        row_ptr = np.ascontiguousarray(sections["outlier_row_ptr"]).astype(np.int64)
        cols = np.ascontiguousarray(sections["outlier_col"]).astype(np.int64)
        if params.get("outlier_op", "replace") == "add":
            _add_outliers(out, row_ptr, cols, vals, f16)
        else:
            _replace_outliers(out, row_ptr, cols, vals)
    perm = sections.get("perm")
    if perm is None:
        return out
    result = np.empty_like(out)
    result[:, np.asarray(perm).astype(np.int64)] = out
    return result
