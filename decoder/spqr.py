"""Numba reference decoder for codec ``spqr`` v1 (spec/codecs/spqr.md §5).

The arithmetic is spelled out operation by operation so that it matches the
spec (and the Triton and pure-numpy decoders) bit for bit: f32 subtract then
f32 multiply, no fused multiply-add (Numba does not contract without
fastmath), stats rounded through f16 by numpy's IEEE cast.

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


@numba.njit(cache=True, nogil=True)
def _replace_outliers(out: np.ndarray, row_ptr: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    for r in range(out.shape[0]):
        for e in range(row_ptr[r], row_ptr[r + 1]):
            out[r, cols[e]] = vals[e]


@numba.njit(cache=True, nogil=True)
def rne16(x: np.ndarray) -> np.ndarray:
    """f32 -> nearest-even f16 -> f32, elementwise, by integer arithmetic on the bits (spec 'rne16').

    numpy's f32->f16 cast is correct but slow; this is the same function
    (checked against it in tests, subnormals, ties and overflow included).
    """
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    bits = flat.view(np.uint32)
    obits = out.view(np.uint32)
    for i in range(flat.size):
        u = bits[i]
        sign = u & np.uint32(0x80000000)
        a = u & np.uint32(0x7FFFFFFF)
        if a >= np.uint32(0x7F800000):  # inf or NaN stay as they are
            obits[i] = u
        elif a >= np.uint32(0x477FF000):  # >= 65520 rounds to infinity
            obits[i] = sign | np.uint32(0x7F800000)
        elif a < np.uint32(0x38800000):  # below 2^-14: f16 subnormal grid of 2^-24, exact scaling
            out[i] = np.float32(np.rint(flat[i] * np.float32(16777216.0))) * np.float32(5.9604645e-08)
        else:  # normal: keep 10 mantissa bits, round to nearest even
            a = a + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))
            obits[i] = sign | (a & np.uint32(0xFFFFE000))
    return out.reshape(x.shape)


@numba.njit(cache=True, nogil=True)
def _stat2(words: np.ndarray, m: int, bits: int, group: int, zero2: np.ndarray, scale2: np.ndarray) -> np.ndarray:
    """Second-level dequantization before the f16 rounding: (f32(code) - zero2) * scale2."""
    G = words.shape[0]
    out = np.empty((G, m), dtype=np.float32)
    mask = np.uint32((1 << bits) - 1)
    for g in range(G):
        for r in range(m):
            k = r // group
            t = np.float32(_code(words, g, r, bits, mask)) - zero2[g, k]
            out[g, r] = t * scale2[g, k]
    return out


def stat(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], which: str, m: int) -> np.ndarray:
    """First-level statistic ``which`` ('scale' or 'zero') as f32 [G, m] (spqr.md §5 step 1)."""
    bits = params[f"{which}_bits"]
    if bits == 16:
        return np.asarray(sections[which]).astype(np.float32)
    t = _stat2(np.ascontiguousarray(sections[f"{which}_codes"]), m, bits, params["stat_group_size"],
               np.asarray(sections[f"{which}_zero"]).astype(np.float32),
               np.asarray(sections[f"{which}_scale"]).astype(np.float32))
    return rne16(t)


def decode(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Decoded f32 [m, n] weight of a validated spqr tensor."""
    m, n = shape
    S = np.ascontiguousarray(stat(params, sections, "scale", m))
    Z = np.ascontiguousarray(stat(params, sections, "zero", m))
    out = np.empty((m, n), dtype=np.float32)
    _dense(np.ascontiguousarray(sections["codes"]), params["bits"], n, params["group_size"], S, Z, out)
    vals = np.asarray(sections["outlier_val"]).astype(np.float32)
    if vals.size:
        _replace_outliers(out, np.ascontiguousarray(sections["outlier_row_ptr"]).astype(np.int64),
                          np.ascontiguousarray(sections["outlier_col"]).astype(np.int64), vals)
    perm = sections.get("perm")
    if perm is None:
        return out
    result = np.empty_like(out)
    result[:, np.asarray(perm).astype(np.int64)] = out
    return result
