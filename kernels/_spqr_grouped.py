"""Triton kernels over the *group-major* repack of codec ``spqr`` (imported lazily by ``spqr.py``).

The repack (built once by ``spqr.prepare``) stores, for every row, the codes
of each β1-group in ``WPG`` whole 32-bit words of ``F = 32 / WST`` fields of a
power-of-two width ``WST`` (2, 4 or 8 bits; a 3-bit code sits in a 4-bit
field), word-slot major: ``gw[r, s, g]`` holds columns ``g·β1 + s·F + c``,
``c = 0..F-1``, field ``c`` at bits ``c·WST``. Because a field never straddles a
word and every shift is a compile-time constant, extracting a code costs one
logical op: fields ``c < F/2`` are read from the word ``w`` and the others from
``w >> 16`` (one shift per word), *in place*: ``(w & (MASK << p)) | 0x4B000000``
is the f32 ``2^23 + q·2^p``, so one FADD gives ``q·2^p`` exactly and the
activation is pre-scaled by ``2^-p`` per column (``xprep_kernel``).

* ``xprep_kernel``: x (original feature order) -> ``xq[b, jj, g]`` (stored
  column ``g·β1 + jj``, through ``perm``, optionally pre-scaled) and
  ``xsum[b, g]`` (unscaled group sums for the folded zero term) and ``xo`` (x in
  stored column order, for outliers).
* ``gemv_kernel``: ``y = W x``; one activation row by FMAs with the zero folded
  out of the group (``S·(Σ q·x − Z·Σ x)``), 2..16 rows by ``tl.dot`` on decoded
  ``[BM, NG]`` slices. Outliers are CSR add-deltas, gathered row by row.
* ``dequant_grouped_kernel``: the dense matrix, bit-identical to spqr.md §5
  (launch with ``enable_fp_fusion=False``), in output column order (gathers
  through the inverse permutation, contiguous stores).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import round_out, store_rows


@triton.jit
def xprep_kernel(x_ptr, idx_ptr, xq_ptr, xsum_ptr, xo_ptr, n, G, x_sb,
                 GS: tl.constexpr, GSP: tl.constexpr, F: tl.constexpr, WST: tl.constexpr,
                 PRESCALE: tl.constexpr, BG: tl.constexpr):
    """One program per (block of BG groups, batch row b); idx maps stored column -> feature (-1: padding)."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    g = pid * BG + tl.arange(0, BG)
    jj = tl.arange(0, GSP)
    gmask = g < G
    col = g[:, None] * GS + jj[None, :]
    cmask = gmask[:, None] & (jj[None, :] < GS) & (col < n)
    src = tl.load(idx_ptr + col, mask=cmask, other=0)
    xv = tl.load(x_ptr + b * x_sb + src, mask=cmask, other=0.0).to(tl.float32)
    tl.store(xo_ptr + b * n + col, xv, mask=cmask)
    tl.store(xsum_ptr + b * G + g, tl.sum(xv, axis=1), mask=gmask)
    if PRESCALE:
        p = ((jj % F) % (F // 2)) * WST
        xv = xv * tl.exp2(-p.to(tl.float32))[None, :]
    tl.store(xq_ptr + b * (GS * G) + jj[None, :] * G + g[:, None], xv, mask=gmask[:, None] & (jj[None, :] < GS))


@triton.jit
def _field(w, wh, c: tl.constexpr, F: tl.constexpr, WST: tl.constexpr):
    """f32 q·2^p of field c of words w (wh = w >> 16), exact: one LOP3 and one FADD."""
    if c < F // 2:
        base = w
        p: tl.constexpr = c * WST
    else:
        base = wh
        p: tl.constexpr = (c - F // 2) * WST
    return ((base & (((1 << WST) - 1) << p)) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _f16_at(v, shift: tl.constexpr):
    """f32 value of the f16 whose bits are (v >> shift) & 0xFFFF (v: int32 or int64)."""
    return ((v >> shift) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _group_stats(rows, g, lmask, st_ptr, st2_ptr, sz_ptr, G, K2, B2, SB: tl.constexpr, PACKED: tl.constexpr):
    """(S, Z) as f32 for [BM rows, NG groups], rounded exactly as spqr.md §5 step 1.

    PACKED: S|Z f16 bits in one int32 per (row, group), precomputed at load time.
    Otherwise one byte of scale|zero codes per (row, group) and the four second-level
    f16 values of the (group, row block) in one int64 (one load instead of four).
    """
    idx = rows[:, None] * G + g[None, :]
    if PACKED:
        v = tl.load(sz_ptr + idx, mask=lmask, other=0)
        S = _f16_at(v, 0)
        Z = _f16_at(v, 16)
    else:
        c = tl.load(st_ptr + idx, mask=lmask, other=0).to(tl.int32)
        sc = (c & ((1 << SB) - 1)).to(tl.float32)
        zc = (c >> SB).to(tl.float32)
        v = tl.load(st2_ptr + g[None, :] * K2 + rows[:, None] // B2, mask=lmask, other=0)
        S = ((sc - _f16_at(v, 0)) * _f16_at(v, 16)).to(tl.float16).to(tl.float32)
        Z = ((zc - _f16_at(v, 32)) * _f16_at(v, 48)).to(tl.float16).to(tl.float32)
    return S, Z


@triton.jit
def _outliers(out, rows, rmask, pid_k, orp_ptr, ocol_ptr, odelta_ptr, xo_ptr, idx_ptr, n, bb, bmask,
              EPR: tl.constexpr, COL16: tl.constexpr, BATCHED: tl.constexpr, XIN: tl.constexpr,
              HAS_PERM: tl.constexpr, XT: tl.constexpr):
    """Add this program's share of each row's outlier add-deltas (f32(val) − dense) times x, row-wise.

    Each row's CSR range is split evenly over the column-split programs; entries are
    gathered EPR at a time per row, so the work is one FMA per entry and batch row.
    XT (BATCHED): xo is x transposed, ``xo[col, b]`` with row stride BB (zero padded), so one outlier's
    batch values are one vector load: ``[b, col]`` gathers needed a 64-bit address per (row, entry, b)
    and pushed the tiled dot kernel to 255 registers and 2 programs per SM.
    """
    lo = tl.load(orp_ptr + rows, mask=rmask, other=0)
    hi = tl.load(orp_ptr + rows + 1, mask=rmask, other=0)
    nsplit = tl.num_programs(1)
    per = (hi - lo + nsplit - 1) // nsplit
    my_lo = lo + pid_k * per
    my_hi = tl.minimum(my_lo + per, hi)
    cnt = tl.maximum(my_hi - my_lo, 0)
    ke = tl.arange(0, EPR)
    for e0 in range(0, tl.max(cnt, axis=0), EPR):
        ee = my_lo[:, None] + e0 + ke[None, :]
        em = rmask[:, None] & (ee < my_hi[:, None])
        col = tl.load(ocol_ptr + ee, mask=em, other=0).to(tl.int32)
        if COL16:
            col = col & 0xFFFF
        d = tl.load(odelta_ptr + ee, mask=em, other=0.0)
        if BATCHED and XT:
            xv = tl.load(xo_ptr + col[:, :, None] * bb.shape[0] + bb[None, None, :], mask=em[:, :, None], other=0.0)
            out += tl.sum(d[:, :, None] * xv, axis=1)
        elif BATCHED:
            xv = tl.load(xo_ptr + col[:, :, None] + bb[None, None, :] * n,
                         mask=em[:, :, None] & bmask[None, None, :], other=0.0)
            out += tl.sum(d[:, :, None] * xv, axis=1)
        else:
            if XIN:  # xo_ptr is x itself, in feature order
                if HAS_PERM:
                    col = tl.load(idx_ptr + col, mask=em, other=0)
                xv = tl.load(xo_ptr + col, mask=em, other=0.0).to(tl.float32)
            else:
                xv = tl.load(xo_ptr + col, mask=em, other=0.0)
            out += tl.sum(d * xv, axis=1)
    return out


@triton.jit
def gemv_kernel(xq_ptr, xsum_ptr, xo_ptr, idx_ptr, y_ptr, bias_ptr, ws_ptr, cnt_ptr, w_ptr,
                st_ptr, st2_ptr, sz_ptr, orp_ptr, ocol_ptr, odelta_ptr,
                m, n, G, K2, B2, nb, n_gt, tiles_per_split,
                GS: tl.constexpr, SB: tl.constexpr, WST: tl.constexpr, F: tl.constexpr, WPG: tl.constexpr,
                NG: tl.constexpr, BM: tl.constexpr, BB: tl.constexpr, EPR: tl.constexpr,
                PACKED: tl.constexpr, MODE: tl.constexpr, ATOMIC: tl.constexpr, FINISH: tl.constexpr,
                HAS_BIAS: tl.constexpr,
                COL16: tl.constexpr, DOT_DT: tl.constexpr, XIN: tl.constexpr, HAS_PERM: tl.constexpr):
    """y[b, r] = Σ_j W[r, j] x[b, j] over this program's rows and its share of group tiles (NG groups each).

    MODE 0: one activation row, FMAs on pre-scaled x with the zero folded out of each group
    (``S·(Σ q·x − Z·Σ x)``). MODE 2: 2..16 rows; decoded [BM, NG] slices rounded to DOT_DT (the
    activation dtype, as cuBLAS would see an fp16/bf16 weight) and ``tl.dot`` with unscaled x.
    XIN (MODE 0): x is read in feature order straight from the caller's tensor (``xq_ptr`` = ``xo_ptr``
    = x, through ``idx`` = perm) and pre-scaled and summed in the kernel, so no ``xprep_kernel``
    launch is needed; each program re-reads its columns' x (1/BM of the weight traffic).
    MODE 3: 2..16 rows; one [BM, NG·β1] tile in stored column order per step (codes and stats
    gathered per element, cache hits) and a single ``tl.dot`` with K = NG·β1.
    (A MODE 1 with [BM, BB, NG] FMAs sharing the decode was measured slower on the H100:
    the 3-D broadcasts cost a layout conversion per step.)
    """
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < m
    rbase = rows.to(tl.int64) * (WPG * G)
    gg = tl.arange(0, NG)
    bb = tl.arange(0, BB)
    bmask = bb < nb
    if MODE == 0:
        acc = tl.zeros((BM, NG), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, BB), dtype=tl.float32)
    t_lo = pid_k * tiles_per_split
    t_hi = tl.minimum(t_lo + tiles_per_split, n_gt)
    for t in range(t_lo, t_hi):
        if MODE == 3:
            # one [BM, NG·β1] tile in stored column order, codes and stats gathered per element, one dot
            cols = t * (NG * GS) + tl.arange(0, NG * GS)
            cmask = cols < n
            cm2 = rmask[:, None] & cmask[None, :]
            gc = cols // GS
            jc = cols % GS
            wt = tl.load(w_ptr + rbase[:, None] + ((jc // F) * G + gc)[None, :], mask=cm2, other=0).to(
                tl.uint32, bitcast=True)
            qt = ((wt >> ((jc % F) * WST).to(tl.uint32)[None, :]) & ((1 << WST) - 1)).to(tl.float32)
            St, Zt = _group_stats(rows, gc, cm2, st_ptr, st2_ptr, sz_ptr, G, K2, B2, SB, PACKED)
            xt = tl.load(xo_ptr + bb[None, :] * n + cols[:, None], mask=cmask[:, None] & bmask[None, :], other=0.0)
            acc = tl.dot(((qt - Zt) * St).to(DOT_DT), xt.to(DOT_DT), acc)
        else:
            g = t * NG + gg
            gmask = g < G
            lmask = rmask[:, None] & gmask[None, :]
            S, Z = _group_stats(rows, g, lmask, st_ptr, st2_ptr, sz_ptr, G, K2, B2, SB, PACKED)
            if MODE == 0:
                part = tl.zeros((BM, NG), dtype=tl.float32)
                if XIN:
                    xs = tl.zeros((NG,), dtype=tl.float32)
            else:
                nzs = -(Z * S)
            for s in tl.static_range(WPG):
                w = tl.load(w_ptr + rbase[:, None] + (s * G + g)[None, :], mask=lmask, other=0).to(tl.uint32,
                                                                                                  bitcast=True)
                wh = w >> 16
                for c in tl.static_range(F):
                    jj = s * F + c
                    v = _field(w, wh, c, F, WST)
                    if MODE == 0:
                        if XIN:
                            col = g * GS + jj
                            cm = gmask & (col < n)
                            if HAS_PERM:
                                col = tl.load(idx_ptr + col, mask=cm, other=0)
                            xr = tl.load(xq_ptr + col, mask=cm, other=0.0).to(tl.float32)
                            xs += xr
                            xv = xr * (1.0 / (1 << ((c % (F // 2)) * WST)))
                        else:
                            xv = tl.load(xq_ptr + jj * G + g, mask=gmask, other=0.0)
                        part += v * xv[None, :]
                    else:
                        # x is unscaled here: undo the field's 2^p in S (an exact power of two)
                        xv = tl.load(xq_ptr + bb[None, :] * (GS * G) + jj * G + g[:, None],
                                     mask=gmask[:, None] & bmask[None, :], other=0.0)
                        wv = (v * (S * (1.0 / (1 << ((c % (F // 2)) * WST)))) + nzs).to(DOT_DT)
                        acc = tl.dot(wv, xv.to(DOT_DT), acc)
            if MODE == 0:
                if not XIN:
                    xs = tl.load(xsum_ptr + g, mask=gmask, other=0.0)
                acc += S * (part - Z * xs[None, :])

    if MODE == 0:
        out = tl.sum(acc, axis=1)
    else:
        out = acc

    out = _outliers(out, rows, rmask, pid_k, orp_ptr, ocol_ptr, odelta_ptr, xo_ptr, idx_ptr, n, bb, bmask,
                    EPR, COL16, MODE != 0, XIN, HAS_PERM, False)

    yoff, ymask = _y_offsets(rows, rmask, bb, bmask, m, MODE == 0)
    if ATOMIC and not FINISH:
        tl.atomic_add(y_ptr + yoff, out, mask=ymask)  # y: zeroed f32; bias and cast by the caller
    elif ATOMIC:
        # Column-split: partial sums go to an f32 workspace that is zero at rest; the last program of
        # this row block (counted with an acq_rel atomic) reads the total, resets the workspace and its
        # counter, and writes y, so the split needs no memset or finishing launch.
        _split_finish(out, y_ptr, yoff, ymask, bias_ptr, rows, rmask, ws_ptr, cnt_ptr, pid_m, HAS_BIAS, MODE == 0)
    else:
        store_rows(out, y_ptr, yoff, ymask, bias_ptr, rows, rmask, bias_ptr, HAS_BIAS, False, MODE == 0)


@triton.jit
def _split_finish(out, y_ptr, yoff, ymask, bias_ptr, rows, rmask, ws_ptr, cnt_ptr, pid_m,
                  HAS_BIAS: tl.constexpr, ONE_ROW: tl.constexpr):
    """Add this program's column-split partial to the f32 workspace (zero at rest); the last program of
    the row block (an acq_rel counter) takes the total, resets workspace and counter, and writes y.

    The counter's atomic runs on one thread: the barrier orders every thread's adds before its release
    (without it batch 4 read partial sums on the H200); the total is read past L1 after the acquire.
    """
    tl.atomic_add(ws_ptr + yoff, out, mask=ymask)
    tl.debug_barrier()
    done = tl.atomic_add(cnt_ptr + pid_m, 1)
    if done == tl.num_programs(1) - 1:
        tl.debug_barrier()
        out = tl.load(ws_ptr + yoff, mask=ymask, other=0.0, cache_modifier=".cg")
        tl.store(ws_ptr + yoff, tl.zeros_like(out), mask=ymask)
        tl.atomic_xchg(cnt_ptr + pid_m, 0)
        store_rows(out, y_ptr, yoff, ymask, bias_ptr, rows, rmask, bias_ptr, HAS_BIAS, False, ONE_ROW)


@triton.jit
def _y_offsets(rows, rmask, bb, bmask, m, ONE_ROW: tl.constexpr):
    """Offsets and mask of this program's outputs in y [B, m]: [BM] (ONE_ROW) or [BM, BB]."""
    if ONE_ROW:
        yoff = rows
        ymask = rmask
    else:
        yoff = bb[None, :] * m + rows[:, None]
        ymask = rmask[:, None] & bmask[None, :]
    return yoff, ymask


@triton.jit
def dequant_grouped_kernel(w_ptr, st_ptr, st2_ptr, sz_ptr, iperm_ptr, out_ptr, m, n, G, K2, B2,
                           GS: tl.constexpr, SB: tl.constexpr, WST: tl.constexpr, F: tl.constexpr,
                           WPG: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr,
                           PACKED: tl.constexpr, HAS_PERM: tl.constexpr, OUT_BF16: tl.constexpr):
    """out[r, j] = (f32(q) - Z) * S over a [BM, BC] tile of *output* columns (spqr.md §5 step 2, no contraction).

    Each output column j reads its stored column ``iperm[j]`` (the inverse of ``perm``),
    so codes and statistics are gathered (cache hits) and every row's stores are contiguous.
    """
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < m
    rows64 = rows.to(tl.int64)
    cols = pid_c * BC + tl.arange(0, BC)
    cmask = cols < n
    mask = rmask[:, None] & cmask[None, :]
    if HAS_PERM:
        sc = tl.load(iperm_ptr + cols, mask=cmask, other=0)
    else:
        sc = cols
    g = sc // GS
    jj = sc % GS
    w = tl.load(w_ptr + rows64[:, None] * (WPG * G) + ((jj // F) * G + g)[None, :], mask=mask, other=0).to(
        tl.uint32, bitcast=True)
    q = ((w >> ((jj % F) * WST).to(tl.uint32)[None, :]) & ((1 << WST) - 1)).to(tl.float32)
    S, Z = _group_stats(rows, g, mask, st_ptr, st2_ptr, sz_ptr, G, K2, B2, SB, PACKED)
    t = q - Z
    wv = t * S
    tl.store(out_ptr + rows64[:, None] * n + cols[None, :], round_out(wv, out_ptr, OUT_BF16), mask=mask)


@triton.jit
def outlier_store_kernel(orp_ptr, ocol_ptr, oval_ptr, perm_ptr, out_ptr, m, n, BM: tl.constexpr,
                         EPR: tl.constexpr, COL16: tl.constexpr, HAS_PERM: tl.constexpr, OUT_BF16: tl.constexpr):
    """out[r, perm[col]] = f32(val) for every outlier of BM rows (replace semantics, spqr.md §5 step 3)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    store_outliers(out_ptr, orp_ptr, ocol_ptr, oval_ptr, perm_ptr, rows, rows < m, n, 0, n, EPR, COL16, HAS_PERM,
                   OUT_BF16)


@triton.jit
def store_outliers(out_ptr, orp_ptr, ocol_ptr, oval_ptr, perm_ptr, rows, rmask, n, c0, c1, EPR: tl.constexpr,
                   COL16: tl.constexpr, HAS_PERM: tl.constexpr, OUT_BF16: tl.constexpr):
    """out[r, perm[col]] = f32(val) for the outliers of ``rows`` whose stored column is in [c0, c1); each row's
    CSR range is scanned EPR entries at a time (also the tiled dequantization's fused outliers)."""
    lo = tl.load(orp_ptr + rows, mask=rmask, other=0)
    hi = tl.load(orp_ptr + rows + 1, mask=rmask, other=0)
    ke = tl.arange(0, EPR)
    for e0 in range(0, tl.max(hi - lo, axis=0), EPR):
        ee = lo[:, None] + e0 + ke[None, :]
        em = rmask[:, None] & (ee < hi[:, None])
        col = tl.load(ocol_ptr + ee, mask=em, other=0).to(tl.int32)
        if COL16:
            col = col & 0xFFFF
        em = em & (col >= c0) & (col < c1)
        if HAS_PERM:
            col = tl.load(perm_ptr + col, mask=em, other=0)
        v = tl.load(oval_ptr + ee, mask=em, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * n + col, round_out(v, out_ptr, OUT_BF16), mask=em)
