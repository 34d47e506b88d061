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
   (a radix sort; prefix sums, so an iteration costs O(2^b log n), less with
   a galloping search from the last bounds), initialised at the weighted
   quantiles (k + 1/2) / 2^b: deterministic, no RNG, no sklearn. Without
   sensitivities the sums are exact: each value as an integer multiple of
   2^(e - fixed_bits) (2^e bounds the row), so the torch encoder may add them
   in any order and still match bit for bit;
3. the LUT is rounded to f16 and every weight is assigned the nearest f16
   centroid (ties to the lower index); an outlier stores the f16 residual
   ``w - lut[idx]`` which the decoder *adds* (spec/codecs/squeezellm.md §5).
   Codes, packing, the dequantized matrix and the residuals come from one
   parallel pass over the rows.

The encoder's ``dequantized`` matrix is computed with the spec's arithmetic
(lookup, then one f32 add per outlier), so it is bit-identical to decoding
the written file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from ..decoder.output import empty_f32
from ..threads import sized, weight_size
from .encoded import Encoded
from .packing import pack_row, words_per_row

F16_MAX = 65504.0
F16_MAX_BITS = int(np.float32(F16_MAX).view(np.uint32))


FIXED_BITS = 40  # uniform fit: values as integers of 2^-FIXED_BITS of the row's magnitude (exact sums)


def fixed_bits(n: int) -> int:
    """Bits below a row's magnitude kept by the fixed-point sums: the sum of n values stays below 2^62."""
    return min(FIXED_BITS, 62 - int(n).bit_length())


@numba.njit(cache=True, nogil=True, inline="always")
def _sort_key(b: np.uint32) -> np.uint32:
    """f32 bits -> u32 whose unsigned order is the value order, -0.0 just below +0.0 (the IEEE total order)."""
    return b ^ np.uint32(0xFFFFFFFF) if b >> np.uint32(31) else b | np.uint32(0x80000000)


@numba.njit(cache=True, nogil=True, inline="always")
def _key_bits(k: np.uint32) -> np.uint32:
    """The inverse of :func:`_sort_key`."""
    return k ^ np.uint32(0x80000000) if k >> np.uint32(31) else k ^ np.uint32(0xFFFFFFFF)


RADIX = 11  # three passes cover a 32-bit key


@numba.njit(cache=True, nogil=True)
def _radix_sort(keys: np.ndarray, pos: np.ndarray, cnt: int, with_pos: bool) -> None:
    """Stable LSD radix sort (3 passes of 11 bits) of keys[:cnt], carrying pos[:cnt] when ``with_pos``."""
    if cnt == 0:
        return
    nb = 1 << RADIX
    digit = np.uint32(nb - 1)
    hist = np.zeros((3, nb), dtype=np.int32)
    for i in range(cnt):
        k = keys[i]
        hist[0, k & digit] += 1
        hist[1, (k >> np.uint32(RADIX)) & digit] += 1
        hist[2, k >> np.uint32(2 * RADIX)] += 1
    tmp = np.empty_like(keys)
    tmp_pos = np.empty_like(pos) if with_pos else pos
    src, dst, psrc, pdst = keys, tmp, pos, tmp_pos
    off = np.empty(nb, dtype=np.int32)
    for d in range(3):
        sh = np.uint32(RADIX * d)
        if hist[d, (src[0] >> sh) & digit] == cnt:  # every key has this digit: the pass would be a copy
            continue
        acc = 0
        for v in range(nb):
            off[v] = acc
            acc += hist[d, v]
        for i in range(cnt):
            v = (src[i] >> sh) & digit
            dst[off[v]] = src[i]
            if with_pos:
                pdst[off[v]] = psrc[i]
            off[v] += 1
        src, dst, psrc, pdst = dst, src, pdst, psrc
    if src is not keys:
        keys[:cnt] = src[:cnt]
        if with_pos:
            pos[:cnt] = psrc[:cnt]


@numba.njit(cache=True, nogil=True, inline="always")
def _count_le(xs: np.ndarray, cnt: int, t: float, guess: int) -> int:
    """Number of xs[:cnt] (sorted) that are <= t: a galloping search from ``guess`` (the last iteration's)."""
    p = min(max(guess, 0), cnt)
    if p < cnt and xs[p] <= t:  # the answer is above p
        lo, hi, step = p + 1, cnt, 1
        while lo + step - 1 < cnt:
            q = lo + step - 1
            if xs[q] <= t:
                lo = q + 1
                step *= 2
            else:
                hi = q
                break
    else:  # the answer is at most p
        lo, hi, step = 0, p, 1
        while hi - step >= 0:
            q = hi - step
            if xs[q] > t:
                hi = q
                step *= 2
            else:
                lo = q + 1
                break
    while lo < hi:
        mid = (lo + hi) >> 1
        if xs[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def _lloyd(xs: np.ndarray, pw: np.ndarray, pwx: np.ndarray, scale: float, cnt: int, k: int, max_iter: int,
           uniform: bool, cent: np.ndarray) -> None:
    """Weighted 1-D Lloyd k-means of sorted xs[:cnt] into ``cent`` (k sorted f64 centroids).

    ``pwx``: prefix sums of weight * value, in units of ``scale``; ``pw``: of the weights (``uniform``: all 1,
    pw[i] = i, not read). Init: the weighted quantiles (j + 1/2) / k. An iteration assigns each value to the
    nearer centroid (x <= midpoint: the lower one) and moves every cluster with weight > 0 to its mean,
    clamped into the cluster's values; it stops after max_iter iterations or the first that moves nothing.
    Clusters are contiguous and each centroid stays inside its own, so the centroids stay sorted. A midpoint
    whose two centroids did not move, and a cluster whose two bounds did not move, are not recomputed: the
    same inputs give the same bits.
    """
    cent[:] = 0.0
    if cnt == 0:
        return
    total = np.float64(cnt) if uniform else pw[cnt]
    i = 0
    for j in range(k):
        target = (j + 0.5) / k * total
        while i < cnt - 1 and (np.float64(i + 1) if uniform else pw[i + 1]) < target:
            i += 1
        cent[j] = xs[i]
    bounds = np.empty(k + 1, dtype=np.int64)
    for j in range(k + 1):
        bounds[j] = (j * cnt) // k
    moved = np.ones(k, dtype=np.bool_)
    shifted = np.zeros(k + 1, dtype=np.bool_)
    for it in range(max_iter):
        for j in range(k - 1):
            shifted[j + 1] = False
            if moved[j] or moved[j + 1]:
                q = _count_le(xs, cnt, 0.5 * (cent[j] + cent[j + 1]), bounds[j + 1])
                shifted[j + 1] = q != bounds[j + 1]
                bounds[j + 1] = q
        bounds[0] = 0
        bounds[k] = cnt
        if it == 0:  # the initial bounds were guesses: every cluster is computed
            shifted[:] = True
        changed = False
        for j in range(k):
            moved[j] = False
            if not (shifted[j] or shifted[j + 1]):
                continue
            a = bounds[j]
            b = max(a, bounds[j + 1])
            sw = np.float64(b - a) if uniform else pw[b] - pw[a]
            if sw > 0.0:
                c = np.float64(pwx[b] - pwx[a]) / sw * scale
                if c < xs[a]:
                    c = xs[a]
                if c > xs[b - 1]:
                    c = xs[b - 1]
                if c != cent[j]:
                    changed = True
                    moved[j] = True
                    cent[j] = c
        if not changed:
            break


@numba.njit(cache=True, nogil=True, parallel=True)
def _fit_luts(wb: np.ndarray, sens: np.ndarray, excluded: np.ndarray, k: int, max_iter: int, uniform: bool,
              fbits: int) -> tuple[np.ndarray, np.ndarray]:
    """f64 centroids [m, k] of every row's non-excluded values (spec/codecs/squeezellm.md §9), and the
    number of excluded values per row.

    Values are sorted by :func:`_sort_key` (stably, so equal values keep their weights' column order).
    ``uniform`` (no sensitivities): the sums are exact integers, each value rounded to a multiple of
    2^(e - fbits) where 2^e bounds the row's magnitude, so any summation order gives the same bits.
    Otherwise (weights ``sens``) f64 prefix sums, added in order. ``wb``: the f32 weight's bits.
    """
    m, n = wb.shape
    out = np.zeros((m, k), dtype=np.float64)
    excluded_count = np.empty(m, dtype=np.int64)
    for r in numba.prange(m):
        keys = np.empty(n, dtype=np.uint32)
        pos = np.empty(n if not uniform else 1, dtype=np.int64)
        cnt = 0
        for j in range(n):
            if not excluded[r, j]:
                keys[cnt] = _sort_key(wb[r, j])
                if not uniform:
                    pos[cnt] = j
                cnt += 1
        excluded_count[r] = n - cnt
        _radix_sort(keys, pos, cnt, not uniform)
        for i in range(cnt):
            keys[i] = _key_bits(keys[i])
        vals = keys[:cnt].view(np.float32)
        xs = np.empty(cnt, dtype=np.float64)
        pwx = np.empty(cnt + 1, dtype=np.float64)
        pw = np.empty(cnt + 1, dtype=np.float64)
        if uniform:
            mag = max(abs(np.float64(vals[0])), abs(np.float64(vals[cnt - 1]))) if cnt else 0.0
            sh = fbits - math.frexp(mag)[1]
            up = math.ldexp(1.0, sh)
            pwi = np.empty(cnt + 1, dtype=np.int64)
            pwi[0] = 0
            for i in range(cnt):
                x = np.float64(vals[i])
                xs[i] = x
                pwi[i + 1] = pwi[i] + np.int64(np.rint(x * up))
            _lloyd(xs, pw, pwi, math.ldexp(1.0, -sh), cnt, k, max_iter, True, out[r])
        else:
            ws = np.empty(cnt, dtype=np.float64)
            tot = 0.0
            for i in range(cnt):
                xs[i] = np.float64(vals[i])
                ws[i] = sens[r, pos[i]]
                tot += ws[i]
            if tot <= 0.0:  # all-zero sensitivities: plain k-means
                ws[:] = 1.0
            pw[0] = 0.0
            pwx[0] = 0.0
            for i in range(cnt):
                pw[i + 1] = pw[i] + ws[i]
                pwx[i + 1] = pwx[i] + ws[i] * xs[i]
            _lloyd(xs, pw, pwx, 1.0, cnt, k, max_iter, False, out[r])
    return out, excluded_count


@numba.njit(cache=True, nogil=True, parallel=True)
def _emit(w: np.ndarray, mask: np.ndarray, lut: np.ndarray, bits: int, row_ptr: np.ndarray, words: np.ndarray,
          deq: np.ndarray, cols: np.ndarray, res: np.ndarray) -> None:
    """Per row: codes (nearest entry) packed into ``words`` (spec/codecs/spqr.md §4 bit order), the looked-up
    values into ``deq`` (spec step 1) and, at the masked positions, the column and the f32 residual."""
    m, n = w.shape
    k = lut.shape[1]
    for r in numba.prange(m):
        # Nearest entry: the smallest f32 distance, ties to the lowest index; one pass per entry over the row
        # (the loop over the row vectorises; a search per weight would not).
        best = np.zeros(n, dtype=np.uint8)
        bd = np.empty(n, dtype=np.float32)
        for j in range(n):
            bd[j] = abs(w[r, j] - lut[r, 0])
        for c in range(1, k):
            lc = lut[r, c]
            cc = np.uint8(c)
            for j in range(n):
                d = abs(w[r, j] - lc)
                if d < bd[j]:
                    bd[j] = d
                    best[j] = cc
        o = row_ptr[r]
        for j in range(n):
            v = lut[r, best[j]]
            deq[r, j] = v
            if mask[r, j]:
                cols[o] = j
                res[o] = w[r, j] - v
                o += 1
        pack_row(best, bits, words, r)


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


HIGH_SHIFT = 19  # |w|'s 31 bits: the top 12 index the first histogram (4096 bins: L1-resident)


@numba.njit(cache=True, nogil=True, parallel=True)
def _high_counts(wb: np.ndarray, blocks: int) -> np.ndarray:
    """Per block of rows, the counts of |w|'s top 12 bits."""
    m, n = wb.shape
    h = np.zeros((blocks, 1 << (31 - HIGH_SHIFT)), dtype=np.int64)
    for blk in numba.prange(blocks):
        for r in range(blk * m // blocks, (blk + 1) * m // blocks):
            for j in range(n):
                h[blk, (wb[r, j] & np.uint32(0x7FFFFFFF)) >> np.uint32(HIGH_SHIFT)] += 1
    return h


@numba.njit(cache=True, nogil=True, parallel=True)
def _gather_bin(wb: np.ndarray, blocks: int, hi: int, start: np.ndarray, out: np.ndarray) -> None:
    """|w|'s bits whose top 12 bits are ``hi``, block b's from out[start[b]] on."""
    m, n = wb.shape
    for blk in numba.prange(blocks):
        o = start[blk]
        for r in range(blk * m // blocks, (blk + 1) * m // blocks):
            for j in range(n):
                a = wb[r, j] & np.uint32(0x7FFFFFFF)
                if (a >> np.uint32(HIGH_SHIFT)) == hi:
                    out[o] = a
                    o += 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _mark(wb: np.ndarray, t: np.uint32, mask: np.ndarray, ties: np.ndarray) -> None:
    """mask = |w| > t (as bits); ties[r] = how many of row r equal t."""
    m, n = wb.shape
    for r in numba.prange(m):
        e = 0
        for j in range(n):
            a = wb[r, j] & np.uint32(0x7FFFFFFF)
            mask[r, j] = a > t
            e += a == t
        ties[r] = e


@numba.njit(cache=True, nogil=True, parallel=True)
def _mark_ties(wb: np.ndarray, t: np.uint32, quota: np.ndarray, mask: np.ndarray) -> None:
    """The first quota[r] positions of row r whose |w| equals t join the mask."""
    m, n = wb.shape
    for r in numba.prange(m):
        q = quota[r]
        j = 0
        while q > 0:
            if wb[r, j] & np.uint32(0x7FFFFFFF) == t:
                mask[r, j] = True
                q -= 1
            j += 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _max_abs_bits(wb: np.ndarray) -> int:
    """The largest |w| as bits (a NaN's bits exceed every finite value's, +inf's included)."""
    m = wb.shape[0]
    top = np.zeros(m, dtype=np.uint32)
    for r in numba.prange(m):
        t = np.uint32(0)
        for j in range(wb.shape[1]):
            t = max(t, wb[r, j] & np.uint32(0x7FFFFFFF))
        top[r] = t
    return int(top.max()) if m else 0


def _kth_from_top(counts: np.ndarray, count: int) -> tuple[int, int]:
    """(v, how many of value v are needed): the count-th largest of a histogram, v its bin."""
    above = np.cumsum(counts[::-1])
    i = int(np.searchsorted(above, count))  # first position (from the top) where the running count reaches it
    v = counts.size - 1 - i
    return v, count - (int(above[i - 1]) if i else 0)


def largest_abs_mask(w: np.ndarray, count: int) -> np.ndarray:
    """``_top_mask(abs(w), count, everywhere)`` of a C-contiguous f32 matrix in O(N) parallel passes.

    |w|'s bits order like its values, so the threshold (the count-th largest) lies in the bin of a histogram
    of their top bits found by counting from the top, and is selected among that bin's values alone; ties
    at it are taken in row-major order, as the stable sort would.
    """
    m, n = w.shape
    count = min(count, m * n)
    if count <= 0:
        return np.zeros((m, n), dtype=bool)
    mask = empty_f32((-(-m * n // 4),)).view(np.bool_)[: m * n].reshape(m, n)  # every byte written by _mark
    wb = w.view(np.uint32)
    blocks = min(m, 4 * numba.get_num_threads())
    per_block = _high_counts(wb, blocks)
    hi, need = _kth_from_top(per_block.sum(0), count)
    cand = np.empty(per_block[:, hi].sum(), dtype=np.uint32)
    _gather_bin(wb, blocks, hi, np.concatenate([[0], np.cumsum(per_block[:, hi])[:-1]]), cand)
    t = np.uint32(np.partition(cand, cand.size - need)[cand.size - need])  # the need-th largest of the bin
    need -= int(np.count_nonzero(cand > t))  # how many equal to t are taken
    ties = np.zeros(m, dtype=np.int64)
    _mark(wb, t, mask, ties)
    taken = np.minimum(np.cumsum(ties), need)
    _mark_ties(wb, t, np.diff(taken, prepend=0), mask)
    return mask


def checked_inputs(shape: tuple[int, ...], in_range: Callable[[], bool], bits: int,
                   sensitivity: np.ndarray | None) -> np.ndarray | None:
    """ValueError unless the weight (``in_range()``: finite and within f16, asked once the shape is good) and
    ``bits`` can be encoded; the sensitivities as a C-contiguous f64 [m, n] (None stays None)."""
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"weight must be 2-D and non-empty, got shape {tuple(shape)}")
    if not in_range():
        raise ValueError("weight must be finite and within the f16 range")
    if not 1 <= bits <= 8:
        raise ValueError("bits must be 1..8")
    if sensitivity is None:
        return None
    m, n = shape
    sens = np.asarray(sensitivity, dtype=np.float64)
    if sens.shape == (n,):
        sens = np.broadcast_to(sens, (m, n))
    if sens.shape != (m, n) or not np.isfinite(sens).all() or (sens < 0).any():
        raise ValueError("sensitivity must be finite, >= 0 and of shape [m, n] or [n]")
    return np.ascontiguousarray(sens)


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
    w = np.ascontiguousarray(w)
    sens = checked_inputs(w.shape, lambda: _max_abs_bits(w.view(np.uint32)) <= F16_MAX_BITS, bits, sensitivity)
    m, n = w.shape
    k = 1 << bits

    if outlier_mask is None:
        mask = largest_abs_mask(w, int(round(outlier_fraction * m * n)))
        if sensitivity is not None:
            mask |= _top_mask(sens, int(round(sensitive_fraction * m * n)), ~mask)
    else:
        mask = np.asarray(outlier_mask, dtype=bool)
        if mask.shape != (m, n):
            raise ValueError("outlier_mask must have the weight's shape")
    mask = np.ascontiguousarray(mask)

    uniform = sensitivity is None
    cent, excluded = _fit_luts(w.view(np.uint32), np.zeros((1, 1)) if uniform else sens, mask, k, max_iter,
                               uniform, fixed_bits(n))
    lut16 = np.clip(cent, -F16_MAX, F16_MAX).astype(np.float16)
    lut32 = lut16.astype(np.float32)

    row_ptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(excluded, out=row_ptr[1:])
    words = np.empty((m, words_per_row(n, bits)), dtype=np.uint32)
    deq = empty_f32((m, n))  # huge pages: a 235 MB matrix is otherwise ~57 000 page faults
    cols = np.empty(row_ptr[m], dtype=np.int64)
    res = np.empty(row_ptr[m], dtype=np.float32)
    _emit(w, mask, lut32, bits, row_ptr, words, deq, cols, res)
    rows = np.repeat(np.arange(m), np.diff(row_ptr))  # row-major => CSR order, columns increasing within a row
    vals = res.astype(np.float16)
    deq[rows, cols] += vals.astype(np.float32)  # spec step 2: one f32 add

    sections: dict[str, Any] = {
        "lut": lut16,
        "codes": words,
        "outlier_row_ptr": row_ptr.astype(np.uint32),
        "outlier_col": cols.astype(np.uint16 if n <= 65536 else np.uint32),
        "outlier_val": vals,
    }
    if bias is not None:
        sections["bias"] = np.asarray(bias, dtype=np.float32).reshape(m)
    return Encoded((m, n), {"bits": bits}, sections, np.ascontiguousarray(deq, dtype=np.float32),
                   codec="squeezellm", info={"outliers": int(len(rows))})
