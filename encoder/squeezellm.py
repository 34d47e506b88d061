"""SqueezeLLM encoder: per-row sensitivity-weighted 1-D k-means LUTs + sparse additive residuals.

SqueezeLLM (Kim et al. 2023) quantizes each output row with its own
non-uniform lookup table of 2^b values fitted by k-means weighted by a
sensitivity proxy (the diagonal of the Fisher information, or of the layer
Hessian ``X^T X``), and keeps a small "dense-and-sparse" set of outliers and
sensitive weights in 16 bit. Here:

1. outliers: the ``outlier_fraction`` largest |w| of the matrix, then the
   ``sensitive_fraction`` largest sensitivities among the rest (only when
   sensitivities are given); they are left out of the k-means fit;
2. per row: weighted 1-D Lloyd k-means on the sorted non-outlier values
   (prefix sums, so an iteration costs O(2^b log n)), initialised at the
   weighted quantiles (k + 1/2) / 2^b: deterministic, no RNG, no sklearn;
3. the LUT is rounded to f16 and every weight is assigned the nearest f16
   centroid (ties to the lower index); an outlier stores the f16 residual
   ``w - lut[idx]`` which the decoder *adds* (spec/codecs/squeezellm.md §5).

The encoder's ``dequantized`` matrix is computed with the spec's arithmetic
(lookup, then one f32 add per outlier), so it is bit-identical to decoding
the written file.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from ..threads import sized, weight_size
from .encoded import Encoded
from .packing import pack_rows

F16_MAX = 65504.0


@numba.njit(cache=True, nogil=True)
def _kmeans_row(xs: np.ndarray, ws: np.ndarray, k: int, max_iter: int) -> np.ndarray:
    """Weighted 1-D k-means of sorted values xs (weights ws >= 0) -> k sorted centroids (f64)."""
    cnt = xs.shape[0]
    cent = np.zeros(k, dtype=np.float64)
    if cnt == 0:
        return cent
    pw = np.zeros(cnt + 1, dtype=np.float64)
    pwx = np.zeros(cnt + 1, dtype=np.float64)
    for i in range(cnt):
        pw[i + 1] = pw[i] + ws[i]
        pwx[i + 1] = pwx[i] + ws[i] * xs[i]
    total = pw[cnt]
    # Deterministic init: weighted quantiles (j + 1/2) / k of the row's distribution.
    i = 0
    for j in range(k):
        target = (j + 0.5) / k * total
        while i < cnt - 1 and pw[i + 1] < target:
            i += 1
        cent[j] = xs[i]
    bounds = np.zeros(k + 1, dtype=np.int64)
    for _ in range(max_iter):
        bounds[0] = 0
        bounds[k] = cnt
        for j in range(k - 1):
            t = 0.5 * (cent[j] + cent[j + 1])
            bounds[j + 1] = np.searchsorted(xs, t, side="right")  # x <= midpoint goes to the lower centroid
        changed = False
        for j in range(k):
            a = bounds[j]
            b = max(a, bounds[j + 1])
            sw = pw[b] - pw[a]
            if sw > 0.0:
                c = (pwx[b] - pwx[a]) / sw
                # Keep the centroid inside its segment (guards prefix-sum cancellation).
                c = min(max(c, xs[a]), xs[b - 1])
                if c != cent[j]:
                    changed = True
                cent[j] = c
        cent.sort()
        if not changed:
            break
    return cent


@numba.njit(cache=True, nogil=True, parallel=True)
def _fit_luts(w: np.ndarray, sens: np.ndarray, excluded: np.ndarray, k: int, max_iter: int) -> np.ndarray:
    m, n = w.shape
    out = np.zeros((m, k), dtype=np.float64)
    for r in numba.prange(m):
        keep = np.nonzero(~excluded[r])[0]
        xs = w[r, keep].astype(np.float64)
        ws = sens[r, keep].astype(np.float64)
        order = np.argsort(xs, kind="mergesort")
        xs = xs[order]
        ws = ws[order]
        if ws.size and ws.sum() <= 0.0:  # all-zero sensitivities: plain k-means
            ws[:] = 1.0
        out[r] = _kmeans_row(xs, ws, k, max_iter)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _fit_luts_uniform(w: np.ndarray, excluded: np.ndarray, k: int, max_iter: int) -> np.ndarray:
    """:func:`_fit_luts` with all sensitivities 1, sorting values instead of (value, weight) pairs.

    Equal values are bitwise equal except 0.0 and -0.0, so only the zeros'
    order needs restoring to give the stable sort's exact array.
    """
    m, n = w.shape
    out = np.zeros((m, k), dtype=np.float64)
    for r in numba.prange(m):
        buf = np.empty(n, dtype=np.float64)
        cnt = 0
        for j in range(n):
            if not excluded[r, j]:
                buf[cnt] = w[r, j]
                cnt += 1
        xs = np.sort(buf[:cnt])
        z0 = np.searchsorted(xs, 0.0, side="left")
        z1 = np.searchsorted(xs, 0.0, side="right")
        if z1 - z0 > 1:  # signed zeros in their original order, as a stable sort leaves them
            e = z0
            for j in range(cnt):
                if buf[j] == 0.0:
                    xs[e] = buf[j]
                    e += 1
        out[r] = _kmeans_row(xs, np.ones(cnt, dtype=np.float64), k, max_iter)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _assign(w: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Index of the nearest LUT entry (f32 distance, ties to the lowest index)."""
    m, n = w.shape
    k = lut.shape[1]
    idx = np.empty((m, n), dtype=np.int64)
    for r in numba.prange(m):
        for j in range(n):
            best = 0
            bd = abs(w[r, j] - lut[r, 0])
            for c in range(1, k):
                d = abs(w[r, j] - lut[r, c])
                if d < bd:
                    bd = d
                    best = c
            idx[r, j] = best
    return idx


def _top_mask(score: np.ndarray, count: int, allowed: np.ndarray) -> np.ndarray:
    """Mask of the ``count`` largest scores among allowed positions (stable: ties by position).

    The set ``argsort(-score, stable)[:count]``, found in O(N): everything above
    the count-th largest value, then the first positions equal to it.
    """
    mask = np.zeros(score.shape, dtype=bool)
    count = min(count, int(allowed.sum()))
    if count <= 0:
        return mask
    flat = np.where(allowed, score, -np.inf).reshape(-1)
    t = np.partition(flat, flat.size - count)[flat.size - count]
    above = np.flatnonzero(flat > t)
    mask.reshape(-1)[above] = True
    mask.reshape(-1)[np.flatnonzero(flat == t)[: count - above.size]] = True
    return mask


@sized(weight_size)
def quantize_squeezellm(
    weight: np.ndarray,
    bits: int = 3,
    sensitivity: np.ndarray | None = None,
    outlier_fraction: float = 0.0045,
    sensitive_fraction: float = 0.0005,
    max_iter: int = 100,
    outlier_mask: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> Encoded:
    """Encode a 2-D weight [out_features, in_features] as codec ``squeezellm`` v1.

    ``sensitivity``: k-means weights, [m, n] (e.g. diagonal Fisher: summed
    squared gradients) or [n] (diagonal of the input Hessian X^T X, shared by
    all rows); None = plain k-means. ``outlier_mask`` overrides the choice of
    sparse residual positions (tests, calibration-aware callers).
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 2 or min(w.shape) < 1:
        raise ValueError(f"weight must be 2-D and non-empty, got shape {w.shape}")
    if not np.isfinite(w).all() or np.abs(w).max() > F16_MAX:
        raise ValueError("weight must be finite and within the f16 range")
    if not 1 <= bits <= 8:
        raise ValueError("bits must be 1..8")
    m, n = w.shape
    k = 1 << bits
    if sensitivity is not None:
        sens = np.asarray(sensitivity, dtype=np.float64)
        if sens.shape == (n,):
            sens = np.broadcast_to(sens, (m, n))
        if sens.shape != (m, n) or not np.isfinite(sens).all() or (sens < 0).any():
            raise ValueError("sensitivity must be finite, >= 0 and of shape [m, n] or [n]")
        sens = np.ascontiguousarray(sens)

    if outlier_mask is None:
        mask = _top_mask(np.abs(w), int(round(outlier_fraction * m * n)), np.ones((m, n), dtype=bool))
        if sensitivity is not None:
            mask |= _top_mask(sens, int(round(sensitive_fraction * m * n)), ~mask)
    else:
        mask = np.asarray(outlier_mask, dtype=bool)
        if mask.shape != (m, n):
            raise ValueError("outlier_mask must have the weight's shape")

    w = np.ascontiguousarray(w)
    mask = np.ascontiguousarray(mask)
    cent = _fit_luts_uniform(w, mask, k, max_iter) if sensitivity is None else _fit_luts(w, sens, mask, k, max_iter)
    lut16 = np.clip(cent, -F16_MAX, F16_MAX).astype(np.float16)
    lut32 = lut16.astype(np.float32)
    idx = _assign(w, lut32)
    deq = np.take_along_axis(lut32, idx, axis=1)  # spec step 1

    rows, cols = np.nonzero(mask)  # row-major => CSR order, columns increasing within a row
    vals = (w[rows, cols] - deq[rows, cols]).astype(np.float16)
    deq[rows, cols] = deq[rows, cols] + vals.astype(np.float32)  # spec step 2: one f32 add
    row_ptr = np.zeros(m + 1, dtype=np.uint32)
    np.cumsum(np.bincount(rows, minlength=m), out=row_ptr[1:])

    sections: dict[str, Any] = {
        "lut": lut16,
        "codes": pack_rows(idx, bits),
        "outlier_row_ptr": row_ptr,
        "outlier_col": cols.astype(np.uint16 if n <= 65536 else np.uint32),
        "outlier_val": vals,
    }
    if bias is not None:
        sections["bias"] = np.asarray(bias, dtype=np.float32).reshape(m)
    return Encoded((m, n), {"bits": bits}, sections, np.ascontiguousarray(deq, dtype=np.float32),
                   codec="squeezellm", info={"outliers": int(len(rows))})
