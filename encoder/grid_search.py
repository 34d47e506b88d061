"""The QuIP encoder's per-row grid scale search, exact but without evaluating every candidate in full.

``encoder.quip._grid_scales`` picks, per row, the first of 48 candidate scales
``s_c`` whose round-to-nearest error ``E(c)`` (f64, numpy's pairwise sum) is
least. Evaluating all 48 costs 48 passes over the matrix. Here each row is
counting-sorted once into ``n`` bins; then for every candidate the grid's
decision points ``(2q + 1 - L) s`` split the sorted values into cells, and the
error follows from per-cell counts, sums and sums of squares (prefix sums,
plus the few values in the bin holding each decision point): ``A(c)``. ``A``
equals ``E`` up to float rounding, bounded by ``tol(c) = TOL (W2 + (L s)^2 n)``
(W2 = sum of squares of the row; the bound covers the prefix sums'
cancellation, the pairwise sum's own rounding and values within a few ulps of a
decision point). Only candidates whose lower bound ``A - tol`` does not exceed
the least upper bound ``A + tol`` can be the argmin; those (usually one or two)
are evaluated exactly with the old operations, and the first least wins, so
the chosen scale is the old one, bit for bit. A row whose values are all
equal, or whose bins would need long scans, evaluates every candidate.
"""

from __future__ import annotations

import numba
import numpy as np

_EPS = float(np.finfo(np.float64).eps)


@numba.njit(cache=True, nogil=True, inline="always")
def _block_sum(a: np.ndarray, lo: int, n: int) -> float:
    """numpy's pairwise-sum leaf (n <= 128): sequential below 8, else 8 accumulators combined as a tree."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - (n % 8):
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@numba.njit(cache=True, nogil=True)
def pairwise_sum(a: np.ndarray, nodes: np.ndarray, vals: np.ndarray) -> float:
    """numpy's pairwise float64 sum of a (leaves of <= 128, longer runs halved at a multiple of 8), iteratively.

    Reproduces ``x.sum(axis=-1)`` of a contiguous row bit for bit. ``nodes`` [3, 128]
    int64 and ``vals`` [128] f64 are scratch (a post-order walk of the split tree;
    recursion is avoided because Numba cannot cache recursive functions safely).
    """
    nodes[0, 0] = 0
    nodes[1, 0] = a.size
    nodes[2, 0] = 0
    sp = 1
    vp = 0
    while sp > 0:
        t = sp - 1
        lo = nodes[0, t]
        n = nodes[1, t]
        if n <= 128:
            vals[vp] = _block_sum(a, lo, n)
            vp += 1
            sp -= 1
        elif nodes[2, t] == 0:  # first visit: push the right half, then the left (which runs first)
            nodes[2, t] = 1
            n2 = n // 2
            n2 -= n2 % 8
            nodes[0, sp], nodes[1, sp], nodes[2, sp] = lo + n2, n - n2, 0
            nodes[0, sp + 1], nodes[1, sp + 1], nodes[2, sp + 1] = lo, n2, 0
            sp += 2
        else:  # both halves done: left + right
            vals[vp - 2] = vals[vp - 2] + vals[vp - 1]
            vp -= 1
            sp -= 1
    return vals[0]


@numba.njit(cache=True, nogil=True)
def row_error(w: np.ndarray, s: float, L: float, err: np.ndarray, nodes: np.ndarray, vals: np.ndarray) -> float:
    """E: the squared round-to-nearest error of the row w on the grid (2q - L) s, numpy's pairwise sum (f64)."""
    for j in range(w.size):
        q = np.rint((w[j] / s + L) / 2.0)
        q = min(max(q, 0.0), L)
        d = (2.0 * q - L) * s - w[j]
        err[j] = d * d
    return pairwise_sum(err, nodes, vals)


@numba.njit(cache=True, nogil=True)
def _best(w: np.ndarray, rms: float, mults: np.ndarray, L: float, start: np.ndarray, srt: np.ndarray,
          p1: np.ndarray, p2: np.ndarray, lower: np.ndarray, err: np.ndarray, nodes: np.ndarray,
          vals: np.ndarray) -> int:
    """Index of the first candidate of least E for row w (see the module docstring)."""
    n = w.size
    cands = mults.size
    lo = w[0]
    hi = w[0]
    for j in range(n):
        lo = min(lo, w[j])
        hi = max(hi, w[j])
    bins = n
    inv = bins / (hi - lo) if hi > lo else 0.0
    exhaustive = not (hi > lo) or not np.isfinite(inv)
    if not exhaustive:
        start[:bins + 1] = 0
        for j in range(n):  # counting sort by bin(x) = min(bins - 1, int((x - lo) * inv)): monotone in x
            start[min(bins - 1, int((w[j] - lo) * inv)) + 1] += 1
        for b in range(bins):
            start[b + 1] += start[b]
        for j in range(n):  # p1 as the fill pointers first
            b = min(bins - 1, int((w[j] - lo) * inv))
            srt[start[b] + int(p1[b])] = w[j]
            p1[b] += 1.0
        acc1 = 0.0
        acc2 = 0.0
        for b in range(bins):
            p1[b] = acc1
            p2[b] = acc2
            for i in range(start[b], start[b + 1]):
                acc1 += srt[i]
                acc2 += srt[i] * srt[i]
        p1[bins] = acc1
        p2[bins] = acc2
        w1 = acc1
        w2 = acc2
        tolrel = 1e-9 + 8.0 * (n + 64) * _EPS
        upper = np.inf
        nq = int(L)
        for c in range(cands):
            s = rms * mults[c]
            total = 0.0
            g0 = 0.0
            g1 = 0.0
            g2 = 0.0
            scanned = 0
            for q in range(nq + 1):
                if q < nq:  # the values below the decision point between codes q and q + 1
                    t = (2.0 * q + 1.0 - L) * s
                    if t <= lo:
                        h0, h1, h2 = 0.0, 0.0, 0.0
                    elif t > hi:
                        h0, h1, h2 = float(n), w1, w2
                    else:
                        b = min(bins - 1, int((t - lo) * inv))
                        h0, h1, h2 = float(start[b]), p1[b], p2[b]
                        for i in range(start[b], start[b + 1]):
                            if srt[i] < t:
                                h0 += 1.0
                                h1 += srt[i]
                                h2 += srt[i] * srt[i]
                        scanned += start[b + 1] - start[b]
                else:
                    h0, h1, h2 = float(n), w1, w2
                v = (2.0 * q - L) * s
                total += (h2 - g2) - 2.0 * v * (h1 - g1) + v * v * (h0 - g0)
                g0, g1, g2 = h0, h1, h2
            tol = tolrel * (w2 + (L * s) * (L * s) * n)
            if scanned > 4 * n:  # a crowded bin (a very uneven row): no bound for this candidate
                lower[c] = -np.inf
            else:
                lower[c] = total - tol
                upper = min(upper, total + tol)
    best = -1
    best_e = np.inf
    for c in range(cands):
        if exhaustive or lower[c] <= upper:
            e = row_error(w, rms * mults[c], L, err, nodes, vals)
            if e < best_e or best < 0:
                best_e = e
                best = c
    return best


@numba.njit(cache=True, nogil=True, parallel=True)
def _search(wt: np.ndarray, rms: np.ndarray, mults: np.ndarray, bits: int, threads: int) -> np.ndarray:
    m, n = wt.shape
    L = np.float64((1 << bits) - 1)
    out = np.empty(m, dtype=np.int64)
    chunks = min(m, threads)
    for ch in numba.prange(chunks):
        start = np.empty(n + 1, dtype=np.int64)
        srt = np.empty(n, dtype=np.float64)
        p1 = np.zeros(n + 1, dtype=np.float64)
        p2 = np.empty(n + 1, dtype=np.float64)
        lower = np.empty(mults.size, dtype=np.float64)
        err = np.empty(n, dtype=np.float64)
        nodes = np.empty((3, 128), dtype=np.int64)
        vals = np.empty(128, dtype=np.float64)
        for r in range(ch * m // chunks, (ch + 1) * m // chunks):
            p1[:] = 0.0
            out[r] = _best(wt[r], rms[r], mults, L, start, srt, p1, p2, lower, err, nodes, vals)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _sums_seq(wt: np.ndarray, out: np.ndarray) -> None:
    """out[r] = sum of wt[r, j]^2 added one column at a time (j increasing), eight rows side by side."""
    m, n = wt.shape
    for g in numba.prange((m + 7) // 8):
        r0 = 8 * g
        k = min(8, m - r0)
        acc = np.zeros(8, dtype=np.float64)
        for j in range(n):
            for i in range(k):
                v = wt[r0 + i, j]
                acc[i] += v * v
        out[r0:r0 + k] = acc[:k]


def row_sums_of_squares(wt: np.ndarray) -> np.ndarray:
    """``np.sum(w * w, axis=1)`` of W~ as numpy computes it on the F-ordered matrix of ``encoder.quip``'s
    numpy path: a sequential sum along each row (numpy adds column after column), pairwise for one row."""
    m = wt.shape[0]
    if m == 1:
        return np.array([pairwise_sum(wt[0] * wt[0], np.empty((3, 128), dtype=np.int64), np.empty(128))])
    out = np.empty(m, dtype=np.float64)
    _sums_seq(np.ascontiguousarray(wt, dtype=np.float64), out)
    return out


def best_candidates(wt: np.ndarray, rms: np.ndarray, mults: np.ndarray, bits: int) -> np.ndarray:
    """Per row of the C-ordered f64 wt [m, n], the index of the first of ``mults`` whose scale rms[r] * mults[c]
    has the least round-to-nearest error: the choice of ``encoder.quip._grid_scales``."""
    return _search(np.ascontiguousarray(wt, dtype=np.float64), rms, mults, bits, numba.get_num_threads())
