"""The E8P12 codebook of codec ``quip`` v2 (spec/codecs/quip.md §10.3-10.4): table and code -> lattice point.

E8P12 (QuIP#, Tseng et al. 2024) quantizes 8 weights jointly to one of 2^16
points of the E8 lattice shifted by 1/4 (16 bits = 2 bits per weight). A code
is an 8-bit row index into a 256-row table of non-negative half-integer
"absolute" vectors, 8 sign bits whose parity selects the +-1/4 shift (one
sign is implied by the lattice's even-sum rule). The table is kept here as
the spec prints it (rows of ``2A``, odd digits 1/3/5) and checked against the
spec's SHA-256 when this module is imported, so a transcription error can
never decode silently.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numba
import numpy as np

# spec/codecs/quip.md §10.3, Table E8P12: row a lists the 8 values 2*A[a][i], i = 0..7.
TABLE_TEXT = """
      0: 11111111 11111113 11111115 11111131 11111133 11111135 11111151 11111153
      8: 11111311 11111313 11111315 11111331 11111333 11111351 11111511 11111513
     16: 11111531 11113111 11113113 11113115 11113131 11113133 11113151 11113311
     24: 11113313 11113331 11113333 11113511 11115111 11115113 11115131 11115311
     32: 11131111 11131113 11131115 11131131 11131133 11131151 11131311 11131313
     40: 11131331 11131333 11131511 11133111 11133113 11133131 11133133 11133311
     48: 11133313 11133331 11135111 11151111 11151113 11151131 11151311 11153111
     56: 11311111 11311113 11311115 11311131 11311133 11311151 11311311 11311313
     64: 11311331 11311333 11311511 11313111 11313113 11313131 11313133 11313311
     72: 11313313 11313331 11315111 11331111 11331113 11331131 11331133 11331311
     80: 11331313 11331331 11333111 11333113 11333131 11333311 11351111 11511111
     88: 11511113 11511131 11511311 11513111 11531111 13111111 13111113 13111115
     96: 13111131 13111133 13111151 13111311 13111313 13111331 13111333 13111511
    104: 13113111 13113113 13113131 13113133 13113311 13113313 13113331 13115111
    112: 13131111 13131113 13131131 13131133 13131311 13131313 13131331 13133111
    120: 13133113 13133131 13133311 13151111 13311111 13311113 13311131 13311133
    128: 13311311 13311313 13311331 13313111 13313113 13313131 13313311 13331111
    136: 13331113 13331131 13331311 13333111 13511111 15111111 15111113 15111131
    144: 15111311 15113111 15131111 15311111 31111111 31111113 31111115 31111131
    152: 31111133 31111151 31111311 31111313 31111331 31111333 31111511 31113111
    160: 31113113 31113131 31113133 31113311 31113313 31113331 31115111 31131111
    168: 31131113 31131131 31131133 31131311 31131313 31131331 31133111 31133113
    176: 31133131 31133311 31151111 31311111 31311113 31311131 31311133 31311311
    184: 31311313 31311331 31313111 31313113 31313131 31313311 31331111 31331113
    192: 31331131 31331311 31333111 31511111 33111111 33111113 33111131 33111133
    200: 33111311 33111313 33111331 33113111 33113113 33113131 33113311 33131111
    208: 33131113 33131131 33131311 33133111 33311111 33311113 33311131 33311311
    216: 33313111 33331111 35111111 51111111 51111113 51111131 51111311 51113111
    224: 51131111 51311111 53111111 31113333 13113333 11313333 11133333 33313311
    232: 33313131 33311331 33313113 33311313 33311133 33133311 33133131 33131331
    240: 33133113 33131313 33131133 31333311 31333131 31331331 31333113 31331313
    248: 13331133 13333311 13333131 13331331 13333113 13331313 11331333 33113331
"""
TABLE_SHA256 = "4310f9ed6450a9f87bd51399a5e549b66d43ae0800cb3f7494aa7b94aa7c0db4"

# Code bit (of the sign byte) that holds the sign of column i: (i >> 1) | ((i & 1) << 2).
SIGN_BIT = (0, 4, 1, 5, 2, 6, 3, 7)


def parse_table(text: str) -> np.ndarray:
    """``"a: dddddddd ..."`` lines -> u8 [256, 8] of 2A (the spec's canonical bytes, row-major)."""
    rows: list[list[int]] = []
    for line in text.strip().splitlines():
        head, _, body = line.partition(":")
        if int(head) != len(rows):
            raise ValueError(f"table line for row {head.strip()} out of order")
        rows.extend([int(ch) for ch in word] for word in body.split())
    table = np.array(rows, dtype=np.uint8)
    if table.shape != (256, 8):
        raise ValueError(f"E8P12 table has shape {table.shape}, expected (256, 8)")
    return table


@lru_cache(maxsize=1)
def abs_table() -> np.ndarray:
    """u8 [256, 8]: ``2 A[a][i]`` (odd, 1..5), verified against the spec's SHA-256."""
    table = parse_table(TABLE_TEXT)
    digest = hashlib.sha256(table.tobytes()).hexdigest()
    if digest != TABLE_SHA256:  # pragma: no cover - guards the embedded constant
        raise RuntimeError(f"E8P12 table digest {digest} != spec {TABLE_SHA256}")
    table.setflags(write=False)
    return table


@lru_cache(maxsize=1)
def odd_rows() -> np.ndarray:
    """u8 [256]: 1 where sum_i A[a][i] is odd (column 7 then carries one extra negation, §10.4)."""
    t = abs_table().astype(np.int64)
    odd = ((t.sum(axis=1) // 2) & 1).astype(np.uint8)
    odd.setflags(write=False)
    return odd


def construction_rows() -> np.ndarray:
    """Rows 0..226 by the spec's construction rule: all of {1,3,5}^8 with sum of squares <= 40, lexicographic."""
    import itertools

    return np.array([v for v in itertools.product((1, 3, 5), repeat=8) if sum(x * x for x in v) <= 40],
                    dtype=np.uint8)


@numba.njit(cache=True, nogil=True, inline="always")
def code_point(code: int, alpha: np.ndarray, odd: np.ndarray, i: int) -> int:
    """t = 4 * (lattice coordinate i) of a 16-bit code, an odd integer in -11..11 (quip.md §10.4)."""
    a = (code >> 8) & 255
    s = code & 255
    p = s ^ (s >> 4)
    p = p ^ (p >> 2)
    p = (p ^ (p >> 1)) & 1  # parity of the sign byte: 0 -> shift +1/4, 1 -> shift -1/4
    s2 = s ^ p  # bit 0 flipped when p = 1: an even number of sign bits
    b = (i >> 1) | ((i & 1) << 2)
    neg = (s2 >> b) & 1
    if i == 7:
        neg ^= odd[a]
    t = 2 * np.int64(alpha[a, i])
    if neg:
        t = -t
    return t + 1 - 2 * p


def code_points(codes: np.ndarray) -> np.ndarray:
    """i8 [..., 8]: 4 * lattice point of each 16-bit code (vectorized numpy, same rule as :func:`code_point`)."""
    c = np.asarray(codes).astype(np.int64) & 0xFFFF
    a, s = c >> 8, c & 255
    p = s ^ (s >> 4)
    p ^= p >> 2
    p = (p ^ (p >> 1)) & 1
    s2 = s ^ p
    alpha = abs_table().astype(np.int64)[a]
    neg = np.stack([(s2 >> b) & 1 for b in SIGN_BIT], axis=-1)
    neg[..., 7] ^= odd_rows().astype(np.int64)[a]
    return (np.where(neg == 1, -2, 2) * alpha + (1 - 2 * p)[..., None]).astype(np.int8)


__all__ = ["SIGN_BIT", "TABLE_SHA256", "TABLE_TEXT", "abs_table", "code_point", "code_points",
           "construction_rows", "odd_rows", "parse_table"]
