"""Numba reference decoder for codec ``squeezellm`` v1 (spec/codecs/squeezellm.md §5).

Step 1 is a table lookup (exact: f16 -> f32), step 2 one f32 addition per
outlier, both in one parallel pass over the rows. Inputs must already be
validated (spqrfmt.codecs.squeezellm checks the section layout and the CSR):
these loops do no bounds checking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numba
import numpy as np

from ..threads import shape_size, sized
from .output import empty_f32


@numba.njit(cache=True, nogil=True, inline="always")
def _lookup_words(codes: np.ndarray, r: int, lut: np.ndarray, row: np.ndarray, per: int, bits: int, n: int) -> None:
    """Row ``r``'s whole words, ``per`` codes of ``bits`` each (32 = per * bits): literal sizes when inlined."""
    mask = np.uint32((1 << bits) - 1)
    for q in range(n // per):
        wd = codes[r, q]
        for t in range(per):
            row[q * per + t] = lut[r, (wd >> np.uint32(t * bits)) & mask]


@numba.njit(cache=True, nogil=True, parallel=True)
def _decode_rows(codes: np.ndarray, bits: int, lut: np.ndarray, row_ptr: np.ndarray, cols: np.ndarray,
                 vals: np.ndarray, out: np.ndarray) -> None:
    """Per row, in parallel: out[r, j] = lut[r, code j of packed row r] (squeezellm.md §5 step 1, exact; codes per
    spqr.md §4), then the row's outliers, one f32 addition each (step 2) -- one pass over the output."""
    m, n = out.shape
    mask = np.uint64((1 << bits) - 1)
    ub = np.uint64(bits)
    whole = 32 % bits == 0  # 1, 2, 4, 8 bits: no code straddles a word, each word decodes on its own
    per = 32 // bits
    for r in numba.prange(m):
        row = out[r]
        j0 = 0
        if whole:
            if bits == 4:
                _lookup_words(codes, r, lut, row, 8, 4, n)
            elif bits == 2:
                _lookup_words(codes, r, lut, row, 16, 2, n)
            elif bits == 8:
                _lookup_words(codes, r, lut, row, 4, 8, n)
            else:
                _lookup_words(codes, r, lut, row, 32, 1, n)
            j0 = (n // per) * per
        acc = np.uint64(0)  # the rest of the row's codes as one little-endian bit stream, from bit j0 * bits
        nacc = 0
        wi = j0 // per if whole else 0
        for j in range(j0, n):
            if nacc < bits:
                acc |= np.uint64(codes[r, wi]) << np.uint64(nacc)
                wi += 1
                nacc += 32
            row[j] = lut[r, acc & mask]
            acc >>= ub
            nacc -= bits
        for e in range(row_ptr[r], row_ptr[r + 1]):
            c = cols[e]
            row[c] = row[c] + vals[e]  # one f32 addition (squeezellm.md §5 step 2)


@sized(shape_size)
def decode(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Decoded f32 [m, n] weight of a validated squeezellm tensor."""
    lut = np.ascontiguousarray(np.asarray(sections["lut"]).astype(np.float32))
    out = empty_f32(tuple(shape))
    _decode_rows(np.ascontiguousarray(sections["codes"]), int(params["bits"]), lut,
                 np.ascontiguousarray(sections["outlier_row_ptr"]).astype(np.int64),
                 np.ascontiguousarray(sections["outlier_col"]).astype(np.int64),
                 np.asarray(sections["outlier_val"]).astype(np.float32), out)
    return out
