"""The QuIP encoder's per-row grid scale search, exact but without evaluating every candidate in full.

``encoder.quip._grid_scales`` picks, per row, the first of 48 candidate scales
``s_c`` whose round-to-nearest error ``E(c)`` (f64, numpy's pairwise sum) is
least. Evaluating all 48 costs 48 passes over the matrix. Here each row is
counting-sorted once into ``n`` bins; then for every candidate the grid's
decision points ``(2q + 1 - L) s`` split the sorted values into cells, and the
error follows from per-bin counts, sums and sums of squares (prefix sums over
n bins; the values of the bin holding a decision point counted in one cell,
with a slack of 4 s x bin width each): bounds ``low(c) <= E(c) <= high(c)``,
widened by ``tol(c) = TOL (W2 + (L s)^2 n)`` for float rounding (W2 = sum of
squares of the row; it covers the prefix sums' cancellation, the pairwise
sum's own rounding and values within a few ulps of a decision point). Only
candidates whose ``low - tol`` does not exceed the least ``high + tol`` can be
the argmin; those (usually one or two)
are evaluated exactly with the old operations, and the first least wins, so
the chosen scale is the old one, bit for bit (measured: one exact evaluation
per row for Gaussian 4096-wide rows instead of 48). A row whose values are all
equal evaluates every candidate.
"""

from __future__ import annotations

import numba
import numpy as np

_EPS = float(np.finfo(np.float64).eps)
BINS_PER_VALUE = 1  # n bins: a few values per bin near the middle of a Gaussian-like row


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


@numba.njit(cache=True, nogil=True, inline="always")
def _cell(cnt: np.ndarray, p1: np.ndarray, p2: np.ndarray, b0: int, b1: int, v: float) -> float:
    """Sum of (x - v)^2 over the values of bins b0 .. b1 - 1, from the prefix sums (0 for an empty range)."""
    if b1 <= b0:
        return 0.0
    return (p2[b1] - p2[b0]) - 2.0 * v * (p1[b1] - p1[b0]) + v * v * float(cnt[b1] - cnt[b0])


@numba.njit(cache=True, nogil=True)
def _best(w: np.ndarray, lo: float, hi: float, rms: float, mults: np.ndarray, L: float, cnt: np.ndarray,
          p1: np.ndarray, p2: np.ndarray, lower: np.ndarray, err: np.ndarray, nodes: np.ndarray,
          vals: np.ndarray) -> int:
    """Index of the first candidate of least E for row w, whose values lie in [lo, hi] (module docstring).

    The values are binned by bin(x) = min(bins - 1, int((x - lo) * inv)), monotone in x, so every value of a
    bin below (above) the bin of a decision point t is below (above) t. A bin holding one decision point
    is counted in the upper cell, with +-4 s delta per value (moving a value at distance <= delta from t to
    the other cell changes its squared error by at most 2 s * 2 delta); a bin holding two or more (cells
    narrower than a bin) counts >= 0 and leaves the candidate without an upper bound.
    """
    n = w.size
    cands = mults.size
    bins = cnt.size - 1
    width = hi - lo
    inv = bins / width if width > 0 else 0.0
    upper = np.inf
    exhaustive = not (width > 0 and np.isfinite(inv) and np.isfinite(width))
    if not exhaustive:
        cnt[:] = 0
        p1[:] = 0.0
        p2[:] = 0.0
        for j in range(n):
            x = w[j]
            b = min(bins - 1, int((x - lo) * inv)) + 1
            cnt[b] += 1
            p1[b] += x
            p2[b] += x * x
        c0, a1, a2 = 0, 0.0, 0.0
        for b in range(1, bins + 1):  # prefix sums, running in registers: index b holds the values of bins < b
            c0 += cnt[b]
            a1 += p1[b]
            a2 += p2[b]
            cnt[b], p1[b], p2[b] = c0, a1, a2
        w2 = p2[bins]
        delta = width / bins * 1.0001 + 8.0 * _EPS * (abs(lo) + abs(hi))  # |x - t| within one bin, rounding incl.
        tolrel = 1e-9 + 8.0 * (n + 64) * _EPS
        nq = int(L)
        for c in range(cands):
            s = rms * mults[c]
            low = 0.0
            high = 0.0
            bounded = True
            done = 0  # bins below this one are accounted for
            q = 0
            while q < nq:  # decision point q separates codes q and q + 1
                t = (2.0 * q + 1.0 - L) * s
                if t <= lo:
                    q += 1
                    continue  # every value is above t: cell q is empty
                if t > hi:
                    break  # every remaining value is below t: the rest goes to cell q (below)
                b = min(bins - 1, int((t - lo) * inv))
                part = _cell(cnt, p1, p2, done, b, (2.0 * q - L) * s)  # cell q: the bins below t's bin
                low += part
                high += part
                q2 = q  # the decision points sharing t's bin
                while q2 + 1 < nq and (2.0 * (q2 + 1) + 1.0 - L) * s <= hi and \
                        min(bins - 1, int(((2.0 * (q2 + 1) + 1.0 - L) * s - lo) * inv)) == b:
                    q2 += 1
                if q2 == q:
                    part = _cell(cnt, p1, p2, b, b + 1, (2.0 * (q + 1) - L) * s)
                    slack = 4.0 * s * delta * float(cnt[b + 1] - cnt[b])
                    low += part - slack
                    high += part + slack
                else:
                    bounded = False
                done = b + 1
                q = q2 + 1
            low += _cell(cnt, p1, p2, done, bins, (2.0 * q - L) * s)  # the last cell reached: all above
            high += _cell(cnt, p1, p2, done, bins, (2.0 * q - L) * s)
            tol = tolrel * (w2 + (L * s) * (L * s) * n)
            lower[c] = low - tol
            if bounded:
                upper = min(upper, high + tol)
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
def _search(wt: np.ndarray, lo: np.ndarray, hi: np.ndarray, rms: np.ndarray, mults: np.ndarray, bits: int,
            threads: int) -> np.ndarray:
    m, n = wt.shape
    L = np.float64((1 << bits) - 1)
    out = np.empty(m, dtype=np.int64)
    chunks = min(m, threads)
    for ch in numba.prange(chunks):
        cnt = np.empty(BINS_PER_VALUE * n + 1, dtype=np.int64)
        p1 = np.empty(BINS_PER_VALUE * n + 1, dtype=np.float64)
        p2 = np.empty(BINS_PER_VALUE * n + 1, dtype=np.float64)
        lower = np.empty(mults.size, dtype=np.float64)
        err = np.empty(n, dtype=np.float64)
        nodes = np.empty((3, 128), dtype=np.int64)
        vals = np.empty(128, dtype=np.float64)
        for r in range(ch * m // chunks, (ch + 1) * m // chunks):
            out[r] = _best(wt[r], lo[r], hi[r], rms[r], mults, L, cnt, p1, p2, lower, err, nodes, vals)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _stats_seq(wt: np.ndarray, sums: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """sums[r] = sum of wt[r, j]^2 added one column at a time (j increasing), eight rows side by side; lo, hi
    the rows' minima and maxima."""
    m, n = wt.shape
    for g in numba.prange((m + 7) // 8):
        r0 = 8 * g
        k = min(8, m - r0)
        acc = np.zeros(8, dtype=np.float64)
        mn = np.full(8, np.inf)
        mx = np.full(8, -np.inf)
        for j in range(n):
            for i in range(k):
                v = wt[r0 + i, j]
                acc[i] += v * v
                mn[i] = min(mn[i], v)
                mx[i] = max(mx[i], v)
        sums[r0:r0 + k] = acc[:k]
        lo[r0:r0 + k] = mn[:k]
        hi[r0:r0 + k] = mx[:k]


def row_stats(wt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sums of squares, minima, maxima) of the rows of W~. The sums are ``np.sum(w * w, axis=1)`` as numpy
    computes it on the F-ordered matrix of ``encoder.quip``'s numpy path: sequential along each row (numpy
    adds column after column), pairwise for a single row."""
    m = wt.shape[0]
    wt = np.ascontiguousarray(wt, dtype=np.float64)
    if m == 1:
        sums = np.array([pairwise_sum(wt[0] * wt[0], np.empty((3, 128), dtype=np.int64), np.empty(128))])
        return sums, wt.min(axis=1), wt.max(axis=1)
    sums, lo, hi = np.empty(m), np.empty(m), np.empty(m)
    _stats_seq(wt, sums, lo, hi)
    return sums, lo, hi


def best_candidates(wt: np.ndarray, rms: np.ndarray, mults: np.ndarray, bits: int,
                    lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> np.ndarray:
    """Per row of the f64 wt [m, n], the index of the first of ``mults`` whose scale rms[r] * mults[c] has the
    least round-to-nearest error: the choice of ``encoder.quip._grid_scales``. ``lo``/``hi``: each row's
    minimum and maximum when already known."""
    wt = np.ascontiguousarray(wt, dtype=np.float64)
    if lo is None or hi is None:
        lo, hi = wt.min(axis=1), wt.max(axis=1)
    return _search(wt, lo, hi, rms, mults, bits, numba.get_num_threads())
