"""Numba reference decoder for codec ``squeezellm`` v1 (spec/codecs/squeezellm.md §5).

Step 1 is a table lookup (exact: f16 -> f32), step 2 one f32 addition per
outlier. Inputs must already be validated (spqrfmt.codecs.squeezellm checks
the section layout and the CSR): these loops do no bounds checking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numba
import numpy as np

from ..threads import shape_size, sized


@numba.njit(cache=True, nogil=True, parallel=True)
def _lookup(codes: np.ndarray, bits: int, lut: np.ndarray, out: np.ndarray) -> None:
    """out[r, j] = lut[r, code j of packed row r] (squeezellm.md §5 step 1, exact; codes per spqr.md §4)."""
    m, n = out.shape
    mask = np.uint64((1 << bits) - 1)
    ub = np.uint64(bits)
    for r in numba.prange(m):
        acc = np.uint64(0)  # the row's codes as one little-endian bit stream
        nacc = 0
        wi = 0
        for j in range(n):
            if nacc < bits:
                acc |= np.uint64(codes[r, wi]) << np.uint64(nacc)
                wi += 1
                nacc += 32
            out[r, j] = lut[r, acc & mask]
            acc >>= ub
            nacc -= bits


@numba.njit(cache=True, nogil=True)
def _add_outliers(out: np.ndarray, row_ptr: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    for r in range(out.shape[0]):
        for e in range(row_ptr[r], row_ptr[r + 1]):
            c = cols[e]
            out[r, c] = out[r, c] + vals[e]  # one f32 addition (squeezellm.md §5 step 2)


@sized(shape_size)
def decode(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Decoded f32 [m, n] weight of a validated squeezellm tensor."""
    m, n = shape
    lut = np.ascontiguousarray(np.asarray(sections["lut"]).astype(np.float32))
    out = np.empty((m, n), dtype=np.float32)
    _lookup(np.ascontiguousarray(sections["codes"]), int(params["bits"]), lut, out)
    vals = np.asarray(sections["outlier_val"]).astype(np.float32)
    if vals.size:
        _add_outliers(out, np.ascontiguousarray(sections["outlier_row_ptr"]).astype(np.int64),
                      np.ascontiguousarray(sections["outlier_col"]).astype(np.int64), vals)
    return out
