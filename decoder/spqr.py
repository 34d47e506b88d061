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


@numba.njit(cache=True, nogil=True)
def unpack_rows(words: np.ndarray, cols: int, bits: int) -> np.ndarray:
    """[R, W] u32 packed rows -> [R, cols] u32 codes."""
    rows = words.shape[0]
    out = np.empty((rows, cols), dtype=np.uint32)
    mask = np.uint32((1 << bits) - 1)
    for r in range(rows):
        for i in range(cols):
            p = i * bits
            q = p >> 5
            s = p & 31
            v = words[r, q] >> np.uint32(s)
            if s + bits > 32:
                v |= words[r, q + 1] << np.uint32(32 - s)
            out[r, i] = v & mask
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
                p = j * bits
                q = p >> 5
                sh = p & 31
                v = codes[r, q] >> np.uint32(sh)
                if sh + bits > 32:
                    v |= codes[r, q + 1] << np.uint32(32 - sh)
                t = np.float32(v & mask) - z_
                out[r, j] = t * s_


@numba.njit(cache=True, nogil=True)
def _replace_outliers(out: np.ndarray, row_ptr: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    for r in range(out.shape[0]):
        for e in range(row_ptr[r], row_ptr[r + 1]):
            out[r, cols[e]] = vals[e]


def stat(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], which: str, m: int) -> np.ndarray:
    """First-level statistic ``which`` ('scale' or 'zero') as f32 [G, m] (spqr.md §5 step 1)."""
    bits = params[f"{which}_bits"]
    if bits == 16:
        return np.asarray(sections[which]).astype(np.float32)
    codes = unpack_rows(np.ascontiguousarray(sections[f"{which}_codes"]), m, bits)
    k = np.arange(m) // params["stat_group_size"]
    zero2 = np.asarray(sections[f"{which}_zero"]).astype(np.float32)[:, k]
    scale2 = np.asarray(sections[f"{which}_scale"]).astype(np.float32)[:, k]
    t = codes.astype(np.float32) - zero2
    return (t * scale2).astype(np.float16).astype(np.float32)


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
