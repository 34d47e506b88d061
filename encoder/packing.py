"""Bit packing of spec/codecs/spqr.md §4: k-bit codes -> little-endian bit stream per row of u32 words."""

from __future__ import annotations

import numba
import numpy as np


def words_per_row(cols: int, bits: int) -> int:
    return (cols * bits + 31) // 32


@numba.njit(cache=True, nogil=True, inline="always")
def pack_row(q: np.ndarray, bits: int, words: np.ndarray, r: int) -> None:
    """Codes ``q`` (integers, or integral floats, < 2**bits) as row ``r`` of ``words``: one little-endian bit stream.

    Writes every word of the row (the padding bits after the last code are zero).
    """
    acc = np.uint64(0)
    nacc = 0
    wi = 0
    for j in range(q.size):
        acc |= np.uint64(np.int64(q[j])) << np.uint64(nacc)
        nacc += bits
        if nacc >= 32:  # flush a whole u32 word
            words[r, wi] = np.uint32(acc & np.uint64(0xFFFFFFFF))
            wi += 1
            acc >>= np.uint64(32)
            nacc -= 32
    if nacc > 0:
        words[r, wi] = np.uint32(acc)


@numba.njit(cache=True, nogil=True)
def _pack(codes: np.ndarray, bits: int, out: np.ndarray) -> None:
    for r in range(codes.shape[0]):
        pack_row(codes[r], bits, out, r)


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
