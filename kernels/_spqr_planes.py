"""Triton kernels for codec ``spqr`` v1 (imported lazily by ``spqrfmt.kernels.spqr``).

Two kernels:

* ``dequant_kernel`` reads the spec layout (packed rows, spqr.md §4) and
  writes the dense matrix with the exact arithmetic of spqr.md §5 step 2
  (one f32 subtraction, one f32 multiplication, launched with
  ``enable_fp_fusion=False``), scattering columns through ``perm``; with
  ``ARITH_F16`` each result is rounded to f16 (v2 ``arith = "f16"``, §8.3).
* ``fused_kernel`` computes ``y = W x`` for 1..16 activation rows from the
  load-time repack (bit planes, compact stats, outlier add-deltas) without
  ever writing W to global memory. See ``spqr.py`` for the repacked layout.

Both also run under ``TRITON_INTERPRET=1`` on CPU tensors (the CI path).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import packed_code, round_out


@triton.jit
def dequant_kernel(codes_ptr, s_ptr, z_ptr, perm_ptr, out_ptr, m, n, words, gs,
                   BITS: tl.constexpr, HAS_PERM: tl.constexpr, OUT_BF16: tl.constexpr,
                   BR: tl.constexpr, BC: tl.constexpr, ARITH_F16: tl.constexpr = False):
    """out[r, perm[j]] = (f32(code[r, j]) - Z[g, r]) * S[g, r]; S, Z are f16 [G, m] (exact f32 values).

    ``ARITH_F16`` (codec spqr v2, spqr.md §8.3 step 2) rounds the difference and
    the product to f16 with explicit nearest-even casts; v1 and v2 ``arith = "f32"``
    leave it False, which compiles the roundings out.

    With OUT_BF16 the output pointer is an int16 view and the f32 -> bf16
    rounding (nearest even, NaN kept NaN) is done with integer ops, because the
    interpreter's own bf16 cast truncates.
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_c * BC + tl.arange(0, BC)
    rmask = rows < m
    cmask = cols < n
    mask = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)
    code = packed_code(codes_ptr, rows64[:, None], cols[None, :], words, mask, BITS)
    g = cols // gs
    sidx = g[None, :].to(tl.int64) * m + rows64[:, None]
    sv = tl.load(s_ptr + sidx, mask=mask, other=0.0).to(tl.float32)
    zv = tl.load(z_ptr + sidx, mask=mask, other=0.0).to(tl.float32)
    t = code.to(tl.float32) - zv
    if ARITH_F16:
        t = t.to(tl.float16, fp_downcast_rounding="rtne").to(tl.float32)
    wv = t * sv
    if ARITH_F16:
        wv = wv.to(tl.float16, fp_downcast_rounding="rtne").to(tl.float32)
    if HAS_PERM:
        dst = tl.load(perm_ptr + cols, mask=cmask, other=0).to(tl.int64)
    else:
        dst = cols.to(tl.int64)
    tl.store(out_ptr + rows64[:, None] * n + dst[None, :], round_out(wv, out_ptr, OUT_BF16), mask=mask)


@triton.jit
def _stats(rows, g, rmask, gmask, st_ptr, st2_ptr, s16_ptr, z16_ptr, G, K2, B2,
           SB: tl.constexpr, STATS_Q: tl.constexpr):
    """First-level (S, Z) as f32 for rows [BM] x groups [NH] (spqr.md §5 step 1, same rounding)."""
    mask = rmask[:, None] & gmask[None, :]
    idx = rows[:, None] * G + g[None, :]
    if STATS_Q:
        c = tl.load(st_ptr + idx, mask=mask, other=0).to(tl.int32)
        sc = (c & ((1 << SB) - 1)).to(tl.float32)
        zc = (c >> SB).to(tl.float32)
        b2 = (g[None, :] * K2 + rows[:, None] // B2) * 4
        s_zero = tl.load(st2_ptr + b2, mask=mask, other=0.0).to(tl.float32)
        s_scale = tl.load(st2_ptr + b2 + 1, mask=mask, other=0.0).to(tl.float32)
        z_zero = tl.load(st2_ptr + b2 + 2, mask=mask, other=0.0).to(tl.float32)
        z_scale = tl.load(st2_ptr + b2 + 3, mask=mask, other=0.0).to(tl.float32)
        S = ((sc - s_zero) * s_scale).to(tl.float16).to(tl.float32)
        Z = ((zc - z_zero) * z_scale).to(tl.float16).to(tl.float32)
    else:
        S = tl.load(s16_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        Z = tl.load(z16_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    return S, Z


@triton.jit
def _plane(acc, words, sh, c, W: tl.constexpr, O: tl.constexpr):
    """OR field c of a bit plane of width W (shifted to bit offset O) into the integer codes."""
    if W > 0:
        acc = acc | (((words >> (sh[None, :] + c * W)) & ((1 << W) - 1)) << O)
    return acc


@triton.jit
def fused_kernel(x_ptr, y_ptr, bias_ptr,
                 p0_ptr, p1_ptr, p2_ptr, wpr0, wpr1, wpr2,
                 st_ptr, st2_ptr, s16_ptr, z16_ptr,
                 orp_ptr, ocol_ptr, odelta_ptr,
                 m, n, G, K2, B2, nb, x_sb, n_units, n_tiles, tiles_per_split,
                 GS, SB: tl.constexpr,
                 W0: tl.constexpr, O0: tl.constexpr, W1: tl.constexpr, O1: tl.constexpr,
                 W2: tl.constexpr, O2: tl.constexpr,
                 U: tl.constexpr, NH: tl.constexpr, BM: tl.constexpr, BB: tl.constexpr, E: tl.constexpr,
                 STATS_Q: tl.constexpr, ALIGNED: tl.constexpr, USE_DOT: tl.constexpr,
                 ATOMIC: tl.constexpr, HAS_BIAS: tl.constexpr, COL16: tl.constexpr):
    """y[b, r] = sum_j W[r, j] x[b, j] for rows of this program over its share of column tiles.

    x_ptr holds x already permuted into stored column order and reordered per tile
    (tile t, lane c, unit h at t*BK + c*NH + h) so each step c reads NH contiguous values.
    A tile is NH units of U columns; unit u's codes are one 32-bit word per plane
    (or part of one), loaded as a [BM, NH] block with rows contiguous in memory.
    """
    BK: tl.constexpr = NH * U
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < m
    hh = tl.arange(0, NH)
    bb = tl.arange(0, BB)
    bmask = bb < nb
    zrow = tl.zeros((BM,), dtype=tl.int32)
    if USE_DOT:
        acc = tl.zeros((BM, BB), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, NH), dtype=tl.float32)
    t_lo = pid_k * tiles_per_split
    t_hi = tl.minimum(t_lo + tiles_per_split, n_tiles)
    for t in range(t_lo, t_hi):
        u = t * NH + hh
        umask = u < n_units
        lmask = rmask[:, None] & umask[None, :]
        bp0 = u * (U * W0)
        w0 = tl.load(p0_ptr + rows[:, None] * wpr0 + (bp0 >> 5)[None, :], mask=lmask, other=0).to(
            tl.uint32, bitcast=True)
        sh0 = (bp0 & 31).to(tl.uint32)
        if W1 > 0:
            bp1 = u * (U * W1)
            w1 = tl.load(p1_ptr + rows[:, None] * wpr1 + (bp1 >> 5)[None, :], mask=lmask, other=0).to(
                tl.uint32, bitcast=True)
            sh1 = (bp1 & 31).to(tl.uint32)
        else:
            w1 = w0
            sh1 = sh0
        if W2 > 0:
            bp2 = u * (U * W2)
            w2 = tl.load(p2_ptr + rows[:, None] * wpr2 + (bp2 >> 5)[None, :], mask=lmask, other=0).to(
                tl.uint32, bitcast=True)
            sh2 = (bp2 & 31).to(tl.uint32)
        else:
            w2 = w0
            sh2 = sh0
        if ALIGNED:
            S, Z = _stats(rows, (u * U) // GS, rmask, umask & ((u * U) // GS < G), st_ptr, st2_ptr, s16_ptr,
                          z16_ptr, G, K2, B2, SB, STATS_Q)
        xbase = x_ptr + t * BK
        if not USE_DOT:
            part = tl.zeros((BM, NH), dtype=tl.float32)
            if ALIGNED:
                # per-unit sums of x for the zero term, from one [U, NH] load of the tile
                cc = tl.arange(0, U)
                xtile = tl.load(xbase + cc[:, None] * NH + hh[None, :], mask=(u[None, :] * U + cc[:, None]) < n,
                                other=0.0).to(tl.float32)
                xs = tl.sum(xtile, axis=0)
        for c in tl.static_range(U):
            q = tl.zeros((BM, NH), dtype=tl.uint32)
            q = _plane(q, w0, sh0, c, W0, O0)
            q = _plane(q, w1, sh1, c, W1, O1)
            q = _plane(q, w2, sh2, c, W2, O2)
            # exact u32 -> f32 for q < 2^23 without an int->float conversion instruction
            qf = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            col = u * U + c
            cvalid = col < n
            if not ALIGNED:
                S, Z = _stats(rows, col // GS, rmask, cvalid, st_ptr, st2_ptr, s16_ptr, z16_ptr,
                              G, K2, B2, SB, STATS_Q)
            if USE_DOT:
                xc = tl.load(xbase + c * NH + hh[:, None] + bb[None, :] * x_sb,
                             mask=cvalid[:, None] & bmask[None, :], other=0.0)
                wv = ((qf - Z) * S).to(xc.dtype)
                acc = tl.dot(wv, xc, acc)
            else:
                # x loaded straight into the [BM, NH] layout (same address down a column: L1
                # broadcast), which avoids a register layout conversion for every c
                xc = tl.load(xbase + c * NH + hh[None, :] + zrow[:, None], mask=cvalid[None, :] & (zrow[:, None] == 0),
                             other=0.0).to(tl.float32)
                if ALIGNED:
                    part += qf * xc
                else:
                    acc += ((qf - Z) * S) * xc
        if not USE_DOT:
            if ALIGNED:
                acc += S * (part - Z * xs[None, :])

    if USE_DOT:
        out = acc
    else:
        out = tl.sum(acc, axis=1)

    # Outliers as add-deltas (f32(val) - dense), this program's share of its rows' entries.
    r_end = tl.minimum(pid_m * BM + BM, m)
    e_start = tl.load(orp_ptr + pid_m * BM)
    e_stop = tl.load(orp_ptr + r_end)
    nsplit = tl.num_programs(1)
    per = (e_stop - e_start + nsplit - 1) // nsplit
    e_lo = e_start + pid_k * per
    e_hi = tl.minimum(e_lo + per, e_stop)
    lo = tl.load(orp_ptr + rows, mask=rmask, other=0)
    hi = tl.load(orp_ptr + rows + 1, mask=rmask, other=0)
    for e0 in range(e_lo, e_hi, E):
        ee = e0 + tl.arange(0, E)
        emask = ee < e_hi
        col = tl.load(ocol_ptr + ee, mask=emask, other=0).to(tl.int32)
        if COL16:
            col = col & 0xFFFF
        d = tl.load(odelta_ptr + ee, mask=emask, other=0.0)
        pos = (col // BK) * BK + (col % U) * NH + (col % BK) // U
        onehot = ((ee[None, :] >= lo[:, None]) & (ee[None, :] < hi[:, None])).to(tl.float32)
        if USE_DOT:
            xv = tl.load(x_ptr + pos[:, None] + bb[None, :] * x_sb, mask=emask[:, None] & bmask[None, :],
                         other=0.0).to(tl.float32)
            out = tl.dot(onehot, d[:, None] * xv, out, input_precision="ieee")
        else:
            xv = tl.load(x_ptr + pos, mask=emask, other=0.0).to(tl.float32)
            out += tl.sum(onehot * (d * xv)[None, :], axis=1)

    if USE_DOT:
        yoff = bb[None, :] * m + rows[:, None]
        ymask = rmask[:, None] & bmask[None, :]
    else:
        yoff = rows
        ymask = rmask
    if ATOMIC:
        tl.atomic_add(y_ptr + yoff, out, mask=ymask)
    else:
        if HAS_BIAS:
            bias = tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
            if USE_DOT:
                out = out + bias[:, None]
            else:
                out = out + bias
        tl.store(y_ptr + yoff, out.to(y_ptr.dtype.element_ty), mask=ymask)
