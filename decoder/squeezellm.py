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

from .spqr import unpack_rows


@numba.njit(cache=True, nogil=True, parallel=True)
def _lookup(idx: np.ndarray, lut: np.ndarray, out: np.ndarray) -> None:
    """out[r, j] = lut[r, idx[r, j]] (squeezellm.md §5 step 1, exact)."""
    m, n = idx.shape
    for r in numba.prange(m):
        for j in range(n):
            out[r, j] = lut[r, idx[r, j]]


@numba.njit(cache=True, nogil=True)
def _add_outliers(out: np.ndarray, row_ptr: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    for r in range(out.shape[0]):
        for e in range(row_ptr[r], row_ptr[r + 1]):
            c = cols[e]
            out[r, c] = out[r, c] + vals[e]  # one f32 addition (squeezellm.md §5 step 2)


def decode(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Decoded f32 [m, n] weight of a validated squeezellm tensor."""
    m, n = shape
    lut = np.ascontiguousarray(np.asarray(sections["lut"]).astype(np.float32))
    out = np.empty((m, n), dtype=np.float32)
    idx = unpack_rows(np.ascontiguousarray(sections["codes"]), n, int(params["bits"]))  # spqr.md §4
    _lookup(idx, lut, out)
    vals = np.asarray(sections["outlier_val"]).astype(np.float32)
    if vals.size:
        _add_outliers(out, np.ascontiguousarray(sections["outlier_row_ptr"]).astype(np.int64),
                      np.ascontiguousarray(sections["outlier_col"]).astype(np.int64), vals)
    return out
