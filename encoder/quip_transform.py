"""The QuIP encoder's incoherent matrix W~ = D_m^T diag(sv) W diag(su) D_n in float64, vectorised, bit for bit.

``encoder.quip`` computes W~ with numpy: the rows of ``W * su`` through the
Sylvester butterflies stage by stage, one true division by sqrt(h), the odd
factor as ``einsum`` adds it (from +0.0, one rounded product per source block,
in order), times ``sv``; then the same along m on the transpose. Here the same
f64 operations run in one pass per side without copies or transposes, eight
independent elements per instruction (``decoder/simd.py``): along n each row
with the first three stages inside a vector; along m on slabs of SLAB64
columns copied to a contiguous buffer. Needs h_n >= 8 and n >= SLAB64 (the
caller falls back to the numpy path otherwise).
"""

from __future__ import annotations

import numba
import numpy as np

from ..decoder.output import empty
from ..decoder.quip import fwht_lanes
from ..decoder.simd import LANES64, copy_lanes, dot_lanes_f64, in_vector

SLAB64 = 2 * LANES64  # columns per task along m: a [4096, 16] f64 buffer is 512 KB (fits L2)


@numba.njit(cache=True, nogil=True, parallel=True)
def _rows(w: np.ndarray, su: np.ndarray, sv: np.ndarray, log2_h: int, norm: float, factor: np.ndarray,
          out: np.ndarray, threads: int) -> None:
    """out[r] = sv[r] * (D_n^T (w[r] * su)) for every row (f64; the +-1 products are exact)."""
    m, n = w.shape
    h = 1 << log2_h
    a = n // h
    of = out.reshape(m * n)
    chunks = min(m, threads)
    for ch in numba.prange(chunks):
        tmp = np.empty(n, dtype=np.float64)
        for r in range(ch * m // chunks, (ch + 1) * m // chunks):
            base = r * n
            for j in range(n):
                of[base + j] = np.float64(w[r, j]) * su[j]
            for p in range(base, base + n, LANES64):
                in_vector(of, p, norm, log2_h == 3)
            fwht_lanes(of, base, n // LANES64, LANES64, log2_h - 3, norm)
            if a > 1:  # out[al h + beta] = sum over b of F[b, al] y[b h + beta], as einsum("ba,rbh->rah")
                for beta in range(0, h, LANES64):
                    for al in range(a):
                        dot_lanes_f64(of, base + beta, h, a, factor, al, a, tmp, al * h + beta)
                for p in range(0, n, LANES64):
                    copy_lanes(tmp, p, of, base + p)
            s = sv[r]
            for j in range(n):
                of[base + j] = of[base + j] * s


@numba.njit(cache=True, nogil=True, parallel=True)
def _cols(x: np.ndarray, log2_h: int, norm: float, factor: np.ndarray, threads: int) -> None:
    """x[:, c] = D_m^T x[:, c] for every column, in place (f64), SLAB64 columns per task."""
    m, n = x.shape
    h = 1 << log2_h
    a = m // h
    xf = x.reshape(m * n)
    tiles = (n + SLAB64 - 1) // SLAB64
    chunks = min(tiles, threads)
    for ch in numba.prange(chunks):
        buf = np.zeros(m * SLAB64, dtype=np.float64)
        tmp = np.empty(m * SLAB64, dtype=np.float64)
        for t in range(ch * tiles // chunks, (ch + 1) * tiles // chunks):
            c0 = t * SLAB64
            width = min(SLAB64, n - c0)
            full = width // LANES64
            for i in range(m):
                for g in range(full):
                    copy_lanes(xf, i * n + c0 + g * LANES64, buf, i * SLAB64 + g * LANES64)
                for c in range(full * LANES64, width):
                    buf[i * SLAB64 + c] = x[i, c0 + c]
            groups = (width + LANES64 - 1) // LANES64
            for g in range(groups):
                fwht_lanes(buf, g * LANES64, m, SLAB64, log2_h, norm)
            res = buf
            if a > 1:
                for g in range(groups):
                    for beta in range(h):
                        for al in range(a):
                            dot_lanes_f64(buf, beta * SLAB64 + g * LANES64, h * SLAB64, a, factor, al, a, tmp,
                                          (al * h + beta) * SLAB64 + g * LANES64)
                res = tmp
            for i in range(m):
                for g in range(full):
                    copy_lanes(res, i * SLAB64 + g * LANES64, xf, i * n + c0 + g * LANES64)
                for c in range(full * LANES64, width):
                    x[i, c0 + c] = res[i * SLAB64 + c]


def supported(m: int, n: int, log2_hn: int) -> bool:
    """Whether :func:`incoherent` handles this shape (h_n >= 8 for the in-vector stages, n >= SLAB64)."""
    return log2_hn >= 3 and n >= SLAB64


def incoherent(weight: np.ndarray, su: np.ndarray, sv: np.ndarray, km: int, kn: int, fm: np.ndarray | None,
               fn: np.ndarray | None) -> np.ndarray:
    """W~ [m, n] (C-ordered f64) with the values of ``encoder.quip``'s numpy path; see :func:`supported`."""
    w = np.asarray(weight)
    w = np.ascontiguousarray(w if w.dtype in (np.float32, np.float64) else w.astype(np.float64))  # exact widening
    m, n = w.shape
    threads = numba.get_num_threads()
    none = np.zeros(1, dtype=np.float64)
    out = empty((m, n), np.float64)  # huge pages: a 4096 x 4096 W~ is 128 MB of first touches
    fnf = none if fn is None else np.asarray(fn, dtype=np.float64).reshape(-1)
    fmf = none if fm is None else np.asarray(fm, dtype=np.float64).reshape(-1)
    _rows(w, su.astype(np.float64), sv.astype(np.float64), kn, float(np.sqrt(1 << kn)), fnf, out, threads)
    if km > 0 or fm is not None:  # km = 0 without a factor: the numpy path divides by sqrt(1) = 1 (exact)
        _cols(out, km, float(np.sqrt(1 << km)), fmf, threads)
    return out
