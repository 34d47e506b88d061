"""Bit packing of spec/codecs/spqr.md §4: k-bit codes -> little-endian bit stream per row of u32 words."""

from __future__ import annotations

import numba
import numpy as np


def words_per_row(cols: int, bits: int) -> int:
    return (cols * bits + 31) // 32


@numba.njit(cache=True, nogil=True)
def _pack(codes: np.ndarray, bits: int, out: np.ndarray) -> None:
    rows, cols = codes.shape
    mask = (1 << bits) - 1
    for r in range(rows):
        for i in range(cols):
            v = np.uint64(codes[r, i] & mask)
            p = i * bits
            q = p >> 5
            s = p & 31
            out[r, q] |= np.uint32((v << np.uint64(s)) & np.uint64(0xFFFFFFFF))
            if s + bits > 32:
                out[r, q + 1] |= np.uint32(v >> np.uint64(32 - s))


def pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack an integer matrix [R, C] of values < 2**bits into u32 [R, ceil(C*bits/32)] (padding bits zero)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    codes = np.ascontiguousarray(codes)
    if codes.ndim != 2:
        raise ValueError("codes must be 2-D")
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << bits)):
        raise ValueError(f"codes must lie in 0..{(1 << bits) - 1}")
    out = np.zeros((codes.shape[0], words_per_row(codes.shape[1], bits)), dtype=np.uint32)
    _pack(codes.astype(np.int64), bits, out)
    return out
