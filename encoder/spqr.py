"""Data-free SpQR encoder: bilevel round-to-nearest with leave-one-out outliers.

No calibration data is needed, so ``spqr convert`` works on any checkpoint.
It follows SpQR's structure with the Hessian replaced by the identity:

1. outliers: greedily take the weights whose removal from their group's
   min/max fit shrinks the group's squared range the most (the identity-H
   leave-one-out error of SpQR), up to ``outlier_fraction`` of the matrix;
2. first-level statistics: per (row, group of β1 columns) min/max fit over
   the non-outliers, the range widened to include 0 (as GPTQ does);
3. second-level statistics: those scales and zeros quantized to
   ``scale_bits``/``zero_bits`` in groups of β2 rows, f16 second-level
   scale/zero (spec/codecs/spqr.md);
4. codes chosen against the *reconstructed* statistics, so the encoder's own
   dequantized matrix is exactly what a conforming decoder produces.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from ..decoder.spqr import _rne16
from ..decoder.vector import pack_word
from ..format import ceil_div
from ..threads import sized, weight_size
from .encoded import Encoded
from .packing import pack_row, words_per_row


@numba.njit(cache=True, nogil=True, inline="always")
def _scan_group(w: np.ndarray, mask: np.ndarray, r: int, g: int, group_size: int, gains: np.ndarray,
                cols: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Group ``g`` of row ``r``: non-outlier min/max and the leave-one-out gains of dropping them.

    The group is padded to β1 columns by repeating the last column (its outlier
    status included), so the runner-up value of a short last group counts the
    repeats, as the layout [m, G, β1] does. ``gains[r, g, 0]`` / ``[.., 1]``:
    squared-range shrink from removing the first maximum / minimum (column
    ``cols[r, g, 0]`` / ``[.., 1]``), f32, non-finite -> 0. ``lo``/``hi``: group
    min/max over non-outliers (+inf/-inf when all are outliers).
    """
    n = w.shape[1]
    ninf = np.float32(-np.inf)
    pinf = np.float32(np.inf)
    zero = np.float32(0.0)
    j0 = g * group_size
    h1 = ninf
    h2 = ninf
    l1 = pinf
    l2 = pinf
    ih = 0
    il = 0
    for t in range(group_size):
        c = min(j0 + t, n - 1)
        masked = mask[r, c]
        vh = ninf if masked else w[r, c]
        vl = pinf if masked else w[r, c]
        # Running first maximum (ties keep the lower column) and runner-up, branch-free.
        mh = vh if vh < h1 else h1
        h2 = mh if mh > h2 else h2
        ih = t if vh > h1 else ih
        h1 = vh if vh > h1 else h1
        ml = vl if vl > l1 else l1
        l2 = ml if ml < l2 else l2
        il = t if vl < l1 else il
        l1 = vl if vl < l1 else l1
    lo[r, g] = l1
    hi[r, g] = h1
    # Ranges include 0, as the statistics fit does.
    top = h1 if h1 > zero else zero
    top2 = h2 if h2 > zero else zero
    bot = l1 if l1 < zero else zero
    bot2 = l2 if l2 < zero else zero
    r_full = top - bot
    d_hi = top2 - bot
    d_lo = top - bot2
    g_hi = r_full * r_full - d_hi * d_hi
    g_lo = r_full * r_full - d_lo * d_lo
    gains[r, g, 0] = g_hi if np.isfinite(g_hi) else zero
    gains[r, g, 1] = g_lo if np.isfinite(g_lo) else zero
    cols[r, g, 0] = j0 + ih
    cols[r, g, 1] = j0 + il


@numba.njit(cache=True, nogil=True, parallel=True)
def _scan_all(w: np.ndarray, mask: np.ndarray, group_size: int, gains: np.ndarray, cols: np.ndarray,
              lo: np.ndarray, hi: np.ndarray) -> None:
    """:func:`_scan_group` for every group, rows in parallel."""
    for r in numba.prange(w.shape[0]):
        for g in range(lo.shape[1]):
            _scan_group(w, mask, r, g, group_size, gains, cols, lo, hi)


@numba.njit(cache=True, nogil=True, parallel=True)
def _mark_and_rescan(w: np.ndarray, mask: np.ndarray, group_size: int, chosen: np.ndarray, gains: np.ndarray,
                     cols: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
    """Mark each chosen gain's column (increasing flat indices into gains [m, G, 2]) as an outlier, rescan its group.

    Only those groups' statistics change, so the rest of the scan stays valid.
    Returns how many weights became outliers (a max and a min may be the same one).
    """
    n = w.shape[1]
    G = lo.shape[1]
    flat_cols = cols.reshape(-1)
    new = 0
    for i in range(chosen.size):
        c = flat_cols[chosen[i]]
        r = chosen[i] // (2 * G)
        if c < n and not mask[r, c]:
            mask[r, c] = True
            new += 1
    for i in numba.prange(chosen.size):
        rg = chosen[i] // 2
        if i == 0 or chosen[i - 1] // 2 != rg:  # a group's max and min are adjacent: scan it once
            _scan_group(w, mask, rg // G, rg % G, group_size, gains, cols, lo, hi)
    return new


@numba.njit(cache=True, nogil=True)
def _largest(gains: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``min(limit, #positive)`` largest positive gains, ties to the lower index, increasing.

    The same set as ``argsort(-gains, kind="stable")[:k]``, found in O(N) by a
    two-level radix select on the f32 bits (monotone for positive floats).
    """
    bits = gains.view(np.uint32)
    npos = 0
    hist = np.zeros(65536, dtype=np.int64)
    for i in range(bits.size):
        if gains[i] > np.float32(0.0):
            npos += 1
            hist[bits[i] >> 16] += 1
    k = min(limit, npos)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    above = 0
    hb = 65535
    while above + hist[hb] < k:
        above += hist[hb]
        hb -= 1
    hist[:] = 0
    for i in range(bits.size):
        if gains[i] > np.float32(0.0) and (bits[i] >> 16) == hb:
            hist[bits[i] & 0xFFFF] += 1
    lb = 65535
    while above + hist[lb] < k:
        above += hist[lb]
        lb -= 1
    t = np.uint32((hb << 16) | lb)  # bits of the k-th largest gain; ``above`` gains exceed it
    ties = k - above
    out = np.empty(k, dtype=np.int64)
    e = 0
    for i in range(bits.size):
        if gains[i] > np.float32(0.0):
            if bits[i] > t:
                out[e] = i
                e += 1
            elif bits[i] == t and ties > 0:
                out[e] = i
                e += 1
                ties -= 1
    return out


def _fit_groups(w: np.ndarray, group_size: int, budget: int, mask: np.ndarray | None = None,
                rounds: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(outlier mask, group min, group max over non-outliers), [m, n] and [m, G].

    Without ``mask``, outliers are chosen by identity-Hessian leave-one-out on the
    group min/max ranges: each of ``rounds`` rounds takes up to
    ``ceil(budget / rounds)`` of the largest positive gains over all groups (ties
    to the lower row, group, max before min; at most one max and one min per
    group), then those groups are rescanned, so a group's next outlier is judged
    against its range without the previous one.
    """
    m, n = w.shape
    G = ceil_div(n, group_size)
    given = mask is not None
    mask = np.ascontiguousarray(mask, dtype=bool) if given else np.zeros((m, n), dtype=bool)
    gains = np.empty((m, G, 2), dtype=np.float32)
    cols = np.empty((m, G, 2), dtype=np.int64)
    lo = np.empty((m, G), dtype=np.float32)
    hi = np.empty((m, G), dtype=np.float32)
    _scan_all(w, mask, group_size, gains, cols, lo, hi)
    taken = 0
    for _ in range(rounds if budget > 0 and not given else 0):
        remaining = budget - taken
        if remaining <= 0:
            break
        chosen = _largest(gains.reshape(-1), min(remaining, max(1, ceil_div(budget, rounds))))
        if chosen.size == 0:
            break
        taken += _mark_and_rescan(w, mask, group_size, chosen, gains, cols, lo, hi)
    return mask, lo, hi


@numba.njit(cache=True, nogil=True, inline="always")
def _clamp_code(t: np.float32, fq: np.float32) -> np.float32:
    """A rounded code clipped to [0, qmax]: NaN and -inf -> 0, +inf -> qmax."""
    zero = np.float32(0.0)
    t = t if t > zero else zero
    return t if t < fq else fq


@numba.njit(cache=True, nogil=True, parallel=True)
def _stat_codes(x: np.ndarray, s2: np.ndarray, z2: np.ndarray, group: int, bits: int, words: np.ndarray,
                recon: np.ndarray) -> None:
    """Second-level codes of x [G, m] against f16-valued s2, z2 [G, K], packed, and their rne16 decode."""
    Gn, m = x.shape
    fq = np.float32((1 << bits) - 1)
    for g in numba.prange(Gn):
        qf = np.empty(m, dtype=np.float32)
        for r in range(m):
            s_ = s2[g, r // group]
            z_ = z2[g, r // group]
            t = _clamp_code(np.rint(x[g, r] / s_ + z_), fq)
            qf[r] = t
            recon[g, r] = _rne16((t - z_) * s_)
        pack_row(qf, bits, words, g)


@numba.njit(cache=True, nogil=True, inline="always")
def _pack_whole(qf: np.ndarray, bits: int, words: np.ndarray, r: int) -> None:
    """``pack_row`` for 1, 2, 4 or 8 bits: each full word as one vector (:func:`pack_word`), the last one by bits."""
    per = 32 // bits
    full = qf.size // per
    for q in range(full):
        if bits == 4:
            words[r, q] = pack_word(qf, q * per, 4)
        elif bits == 2:
            words[r, q] = pack_word(qf, q * per, 2)
        elif bits == 8:
            words[r, q] = pack_word(qf, q * per, 8)
        else:
            words[r, q] = pack_word(qf, q * per, 1)
    if full * per < qf.size:
        last = np.uint32(0)
        for j in range(full * per, qf.size):
            last |= np.uint32(qf[j]) << np.uint32((j - full * per) * bits)
        words[r, full] = last


@numba.njit(cache=True, nogil=True, parallel=True)
def _codes(w: np.ndarray, S: np.ndarray, Z: np.ndarray, group_size: int, bits: int, words: np.ndarray,
           deq: np.ndarray) -> None:
    """Codes against the reconstructed statistics S, Z [G, m], packed per spqr.md §4, and their step-2 decode.

    q = clip(rint(w / s + z), 0, qmax) in f32 (NaN -> 0, +inf -> qmax, -inf -> 0);
    deq = (f32(q) - z) * s: one f32 subtract, one f32 multiply (spqr.md §5).
    """
    m, n = w.shape
    G = S.shape[0]
    fq = np.float32((1 << bits) - 1)
    whole = 32 % bits == 0
    for r in numba.prange(m):
        qf = np.empty(n, dtype=np.float32)
        for g in range(G):
            s_ = S[g, r]
            z_ = Z[g, r]
            for j in range(g * group_size, min(n, (g + 1) * group_size)):
                t = _clamp_code(np.rint(w[r, j] / s_ + z_), fq)
                qf[j] = t
                deq[r, j] = (t - z_) * s_
        if whole:
            _pack_whole(qf, bits, words, r)
        else:
            pack_row(qf, bits, words, r)


@numba.njit(cache=True, nogil=True, parallel=True)
def _row_counts(mask: np.ndarray) -> np.ndarray:
    m, n = mask.shape
    out = np.zeros(m, dtype=np.int64)
    for r in numba.prange(m):
        c = 0
        for j in range(n):
            if mask[r, j]:
                c += 1
        out[r] = c
    return out


@numba.njit(cache=True, nogil=True)
def _csr_fill(mask8: np.ndarray, mask: np.ndarray, w: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    """Outlier columns and f32 values in row-major (= CSR) order, columns increasing within a row.

    ``mask8`` is the flat [m * n] mask's first bytes read 8 at a time (u64): a word of 8 non-outliers,
    nearly all of them at 1 % outliers, is skipped in one test; the last m * n % 8 bytes are read one by one.
    """
    n = w.shape[1]
    flat_w = w.reshape(-1)
    flat = mask.reshape(-1)
    e = 0
    for q in range(mask8.size):
        x = mask8[q]
        if x != 0:
            for b in range(8):
                if (x >> np.uint64(8 * b)) & np.uint64(0xFF):
                    i = 8 * q + b
                    cols[e] = i % n
                    vals[e] = flat_w[i]
                    e += 1
    for i in range(8 * mask8.size, flat.size):
        if flat[i]:
            cols[e] = i % n
            vals[e] = flat_w[i]
            e += 1


def quantize_stat(x: np.ndarray, bits: int, group: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Second level: x [G, m] -> (sections, reconstructed f32 [G, m]) per spqr.md §5 step 1.

    Public because the calibrated encoder (gptq.py) must rebuild statistics exactly as this one does.
    The arithmetic is f32 (x is taken as f32).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    Gn, m = x.shape
    K = ceil_div(m, group)
    pad = K * group - m
    xp = np.concatenate([x, np.repeat(x[:, -1:], pad, axis=1)], axis=1) if pad else x
    xg = xp.reshape(Gn, K, group)
    lo, hi = xg.min(axis=2), xg.max(axis=2)
    qmax = (1 << bits) - 1
    scale2 = (hi - lo) / qmax
    scale2 = np.where(scale2 > 0, scale2, 1.0)
    s16 = scale2.astype(np.float16)
    s16 = np.where(np.isfinite(s16) & (s16 != 0), s16, np.float16(1.0)).astype(np.float16)
    z16 = np.clip(-lo / s16.astype(np.float32), -65504, 65504).astype(np.float16)
    words = np.zeros((Gn, words_per_row(m, bits)), dtype=np.uint32)
    recon = np.empty((Gn, m), dtype=np.float32)
    _stat_codes(x, s16.astype(np.float32), z16.astype(np.float32), group,
                bits, words, recon)
    return {"codes": words, "scale": s16, "zero": z16}, recon


_quantize_stat = quantize_stat  # former private name, kept for existing callers


def check_settings(shape: tuple[int, ...], finite: bool, bits: int, group_size: int, scale_bits: int,
                   zero_bits: int) -> None:
    """ValueError unless the weight (its shape, whether all finite) and the settings can be encoded."""
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"weight must be 2-D and non-empty, got shape {tuple(shape)}")
    if not finite:
        raise ValueError("weight contains NaN or infinity; refusing to quantize")
    if not 1 <= bits <= 8 or not 1 <= group_size <= 65536:
        raise ValueError("bits must be 1..8 and group_size 1..65536")
    for b in (scale_bits, zero_bits):
        if not (1 <= b <= 8 or b == 16):
            raise ValueError("scale_bits/zero_bits must be 1..8 or 16")


def checked_perm(perm: np.ndarray | None, n: int) -> np.ndarray | None:
    """``perm`` as int64, or ValueError unless it is a permutation of range(n)."""
    if perm is None:
        return None
    perm = np.asarray(perm, dtype=np.int64)
    if sorted(perm.tolist()) != list(range(n)):
        raise ValueError("perm must be a permutation of range(in_features)")
    return perm


@sized(weight_size)
def quantize_spqr(
    weight: np.ndarray,
    bits: int = 3,
    group_size: int = 16,
    scale_bits: int = 3,
    zero_bits: int = 3,
    stat_group_size: int = 16,
    outlier_fraction: float = 0.01,
    perm: np.ndarray | None = None,
    outlier_mask: np.ndarray | None = None,
) -> Encoded:
    """Encode a 2-D weight [out_features, in_features] as codec ``spqr`` v1.

    ``perm`` (stored column j holds input feature perm[j]) is recorded as the
    ``perm`` section; ``outlier_mask`` (in stored column order) overrides the
    data-free outlier choice, e.g. for tests or a calibration-aware caller.
    """
    w = np.asarray(weight, dtype=np.float32)
    check_settings(w.shape, bool(np.isfinite(w).all()), bits, group_size, scale_bits, zero_bits)
    m, n = w.shape
    perm = checked_perm(perm, n)
    if perm is not None:
        w = w[:, perm]
    w = np.ascontiguousarray(w)
    G = ceil_div(n, group_size)
    qmax = (1 << bits) - 1

    if outlier_mask is not None and np.shape(outlier_mask) != (m, n):
        raise ValueError(f"outlier_mask must have the weight's shape {(m, n)}, got {np.shape(outlier_mask)}")
    # Outliers, then the first level: min/max over non-outliers (all-outlier groups fit to 0).
    outlier_mask, lo, hi = _fit_groups(w, group_size, int(round(outlier_fraction * m * n)), outlier_mask)
    lo = np.minimum(np.where(np.isfinite(lo), lo, 0.0), 0.0)
    hi = np.maximum(np.where(np.isfinite(hi), hi, 0.0), 0.0)
    scale = ((hi - lo) / qmax).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        zero = np.where(scale > 0, -lo / scale, 0.0).astype(np.float32)

    params: dict[str, Any] = {"bits": bits, "group_size": group_size, "scale_bits": scale_bits, "zero_bits": zero_bits}
    if scale_bits < 16 or zero_bits < 16:
        params["stat_group_size"] = stat_group_size
    sections: dict[str, Any] = {}
    recon: dict[str, np.ndarray] = {}
    for which, x, b in (("scale", scale.T, scale_bits), ("zero", zero.T, zero_bits)):
        x = np.ascontiguousarray(x, dtype=np.float32)  # [G, m]
        if b == 16:
            x16 = np.clip(x, -65504, 65504).astype(np.float16)
            sections[which] = x16
            recon[which] = x16.astype(np.float32)
        else:
            sec, recon[which] = quantize_stat(x, b, stat_group_size)
            sections[f"{which}_codes"] = sec["codes"]
            sections[f"{which}_scale"] = sec["scale"]
            sections[f"{which}_zero"] = sec["zero"]

    words = np.zeros((m, words_per_row(n, bits)), dtype=np.uint32)
    deq = np.empty((m, n), dtype=np.float32)
    _codes(w, np.ascontiguousarray(recon["scale"]), np.ascontiguousarray(recon["zero"]), group_size, bits, words, deq)

    row_ptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(_row_counts(outlier_mask), out=row_ptr[1:])
    cols = np.empty(row_ptr[-1], dtype=np.int64)
    vals32 = np.empty(row_ptr[-1], dtype=np.float32)
    flat = outlier_mask.reshape(-1)
    _csr_fill(flat[: flat.size // 8 * 8].view(np.uint64), outlier_mask, w, cols, vals32)
    vals = vals32.astype(np.float16)
    rows = np.repeat(np.arange(m), np.diff(row_ptr))
    deq[rows, cols] = vals.astype(np.float32)  # spec step 3: replace
    sections["codes"] = words
    sections["outlier_row_ptr"] = row_ptr.astype(np.uint32)
    sections["outlier_col"] = cols.astype(np.uint16 if n <= 65536 else np.uint32)
    sections["outlier_val"] = vals

    if perm is not None:
        sections["perm"] = perm.astype(np.uint32)
        out = np.empty_like(deq)
        out[:, perm] = deq
        deq = out
    info = {"outliers": int(len(rows)), "groups": G}
    return Encoded((m, n), params, sections, np.ascontiguousarray(deq, dtype=np.float32), info=info)
