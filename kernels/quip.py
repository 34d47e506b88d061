"""Triton decoding of codec ``quip`` v1/v2: bit-exact dequantization, and the transform-the-activation matvec.

The decode of spec/codecs/quip.md §5 is a pipeline of small kernels, each one
literal f32 operation per element so that the result is bit-identical to the
Numba reference decoder (launched with ``enable_fp_fusion=False``):

1. ``_grid_kernel``: Qhat[r, j] = f32(2q - (2^b - 1)) * scale[r];
2. along n (each row), then along m (each column): the Walsh-Hadamard stages
   (half = 1, 2, 4, ...) and the c_k multiply -- ``_fwht_rows_kernel`` (all stages
   of a row block in registers, one launch) and ``_fwht_cols_kernel`` (4 stages per
   launch), or one ``_butterfly_kernel`` launch per stage as the fallback, the
   same f32 operations in the same order either way -- then ``_factor_kernel``
   (sequential f32 accumulation) when the dimension has an odd factor;
3. ``_sign_kernel``: times f32(sv[r] * su[c]).

Version 2 (quip.md §10): codebook "e8p12" replaces step 1 by ``_e8p_kernel``
(the 16-bit code's lattice coordinate ``t / 4``, from the 256-row table, times
the row scale), and f16/f32 diagonals replace step 3 by ``_diag_kernel``
(``(x * sv[r]) * su[c]``). The kernels dispatch on the section dtypes, which
validation ties to the version: e8p12 codes are the only 16-bit ``codes``, and
i8 signs give the same bits on either step-3 kernel. The residual codebooks
"e8p12_rvq4"/"e8p12_rvq3" (§10.11) replace step 1 by ``_rvq_kernel`` (both
stages, the IEEE division by ``resid_scale``); they dispatch on the checked
``codebook`` param, since their first plane is 16-bit like e8p12's.
:func:`matvec` has no fused kernel for them: it falls back to the exact
dequantize and a dense product.

:func:`matvec` computes ``y = W x`` the QuIP way without forming W:
``y = sv * D_m (scale * (Q (D_n^T (su * x)))) + bias`` (f32; the same linear map
as the decoded tensor, not bit-identical to ``dequantize(...) @ x``):

* ``_wht_kernel`` (the default at 1-4 rows, ``GemvConfig.transform``): the whole transform of one
  side, factor included, in one launch of ~64 programs per vector, each reading the whole vector;
* ``_had_kernel``: the block Hadamards of one side in one launch, each block of
  2^k <= 2^14 elements held in registers as V [R, C] and transformed as
  H_R V H_C (Sylvester H_h = H_R kron H_C) by two tensor-core dots with +-1
  matrices generated in registers ("tf32x3": f32-accurate), the diagonal
  (su) fused on the way in, sv / bias / the output cast on the way out;
  ``_mix_kernel``: the explicit factor F of a K * 2^k dimension (a second launch
  only when K > 1);
* ``_grid_gemv_kernel`` / ``_e8p_gemv2_kernel``: the GEMV over the load-time
  code layout (:func:`prepare`), row scale fused; batch 1 by FMAs, 2..16 rows by
  ``tl.dot`` on exactly decoded slices; column-split for small matrices. E8P12
  decodes one packed table row per code (``_e8p_gemv_kernel``, one table gather
  per weight, stays as ``GemvConfig(e8p="gather8")`` for comparison);
  ``_e8p_gemv_h2_kernel``: batch 1 with f16/bf16 x, the same row decode with f16x2 products on
  power-of-two-scaled f16 x pairs from the input transform.

Why this module is long: it holds the whole quip codec on the GPU (the spec-layout decode
pipeline, the transform matvec and its load-time code layout, for both codec versions), one codec
under one name; what other codecs share is in ``_common.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import triton
import triton.language as tl

from ..decoder.e8p import abs_table, odd_rows
from ..decoder.e81b import e81b_table
from ..decoder.quip import hadamard_constant
from ._common import (
    MAX_BATCH,
    NW_ALIGN,
    SplitWorkspace,
    check_launch,
    dot_dtype,
    f16_hi,
    f16_lo,
    f16_pack,
    finish,
    fused_rows,
    gemv_out,
    gemv_rows,
    gemv_tiles,
    h2_biased,
    h2_fma,
    h2_sum,
    inline_asm_ok,
    next_pow2,
    packed_code,
    repack_fields,
    split_for,
    to_device,
)

__all__ = ["GemvConfig", "PreparedQuip", "dequantize", "dequantize_prepared", "matvec", "prepare", "to_device",
           "transform", "transform_fast"]

_OPTS = {"enable_fp_fusion": False}


@triton.jit
def _grid_kernel(codes_ptr, scale_ptr, out_ptr, m, n, words,
                 BITS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    rmask = rows < m
    mask = rmask[:, None] & (cols < n)[None, :]
    rows64 = rows.to(tl.int64)
    code = packed_code(codes_ptr, rows64[:, None], cols[None, :], words, mask, BITS).to(tl.int32)
    g = (2 * code - ((1 << BITS) - 1)).to(tl.float32)
    sc = tl.load(scale_ptr + rows, mask=rmask, other=0.0)
    tl.store(out_ptr + rows64[:, None] * n + cols[None, :], g * sc[:, None], mask=mask)


@triton.jit
def _e8p_point(c, i, alpha_ptr, odd_ptr, mask):
    """t = 4 * coordinate i of the E8P12 point of 16-bit code c (int32 tensors; quip.md §10.4)."""
    a = c >> 8
    s = c & 255
    p = s ^ (s >> 4)
    p = p ^ (p >> 2)
    p = (p ^ (p >> 1)) & 1
    s2 = s ^ p
    neg = (s2 >> ((i >> 1) | ((i & 1) << 2))) & 1
    odd = tl.load(odd_ptr + a, mask=mask, other=0)
    neg = neg ^ tl.where(i == 7, odd, 0)
    al = tl.load(alpha_ptr + a * 8 + i, mask=mask, other=0)
    return tl.where(neg == 1, -2 * al, 2 * al) + 1 - 2 * p


@triton.jit
def _e8p_kernel(codes_ptr, alpha_ptr, odd_ptr, scale_ptr, out_ptr, m, n, groups,
                BR: tl.constexpr, BC: tl.constexpr):
    """X[r, j] = (f32(t) * 0.25) * scale[r], t from code (r, j // 8), coordinate j % 8."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    rmask = rows < m
    mask = rmask[:, None] & (cols < n)[None, :]
    rows64 = rows.to(tl.int64)
    c = tl.load(codes_ptr + rows64[:, None] * groups + (cols // 8)[None, :], mask=mask, other=0)
    c = c.to(tl.int32) & 0xFFFF
    t = _e8p_point(c, (cols % 8)[None, :], alpha_ptr, odd_ptr, mask)
    e = t.to(tl.float32) * 0.25
    sc = tl.load(scale_ptr + rows, mask=rmask, other=0.0)
    tl.store(out_ptr + rows64[:, None] * n + cols[None, :], e * sc[:, None], mask=mask)


@triton.jit
def _rvq_kernel(codes_ptr, codes2_ptr, alpha_ptr, odd_ptr, e81b_ptr, scale_ptr, out_ptr, m, n, groups, rho,
                SECOND_E8P: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """X[r, j] = ((f32(t) * 0.25) + div_rn(f32(u) * q, rho)) * scale[r] (quip.md §10.11).

    u is the E8P12 point of codes2 (q = 0.25) or the E81B row of the byte codes2 (q = 0.5);
    ``div_rn`` is the IEEE-rounded division (plain ``/`` may be approximate on a GPU).
    """
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    rmask = rows < m
    mask = rmask[:, None] & (cols < n)[None, :]
    rows64 = rows.to(tl.int64)
    off = rows64[:, None] * groups + (cols // 8)[None, :]
    i = (cols % 8)[None, :]
    c = tl.load(codes_ptr + off, mask=mask, other=0).to(tl.int32) & 0xFFFF
    e0 = _e8p_point(c, i, alpha_ptr, odd_ptr, mask).to(tl.float32) * 0.25
    if SECOND_E8P:
        c2 = tl.load(codes2_ptr + off, mask=mask, other=0).to(tl.int32) & 0xFFFF
        e1 = _e8p_point(c2, i, alpha_ptr, odd_ptr, mask).to(tl.float32) * 0.25
    else:
        c2 = tl.load(codes2_ptr + off, mask=mask, other=0).to(tl.int32) & 0xFF
        e1 = tl.load(e81b_ptr + c2 * 8 + i, mask=mask, other=0).to(tl.float32) * 0.5
    v = e0 + tl.math.div_rn(e1, tl.zeros_like(e1) + rho)
    sc = tl.load(scale_ptr + rows, mask=rmask, other=0.0)
    tl.store(out_ptr + rows64[:, None] * n + cols[None, :], v * sc[:, None], mask=mask)


@triton.jit
def _butterfly_kernel(x_ptr, nvec, npairs, stride_v, stride_e, half, c,
                      LAST: tl.constexpr, BV: tl.constexpr, BP: tl.constexpr):
    """One FWHT stage on every vector: (x[i], x[i+half]) <- (x[i]+x[i+half], x[i]-x[i+half]) [* c if LAST]."""
    vv = tl.program_id(0) * BV + tl.arange(0, BV)
    pp = tl.program_id(1) * BP + tl.arange(0, BP)
    mask = (vv < nvec)[:, None] & (pp < npairs)[None, :]
    i = (pp // half) * (2 * half) + pp % half
    a_ptr = x_ptr + vv.to(tl.int64)[:, None] * stride_v + i.to(tl.int64)[None, :] * stride_e
    b_ptr = a_ptr + half * stride_e
    u = tl.load(a_ptr, mask=mask, other=0.0)
    w = tl.load(b_ptr, mask=mask, other=0.0)
    s = u + w
    d = u - w
    if LAST:
        s = s * c
        d = d * c
    tl.store(a_ptr, s, mask=mask)
    tl.store(b_ptr, d, mask=mask)


@triton.jit(do_not_specialize=["nrows", "n"])
def _fwht_rows_kernel(x_ptr, nrows, n, c_k, H: tl.constexpr, K: tl.constexpr, BR: tl.constexpr):
    """All k stages of quip.md §5.2(a) and the c_k multiply (b) on blocks of H = 2^K along rows, in place.

    One program per (BR rows, block). Stage s pairs (i, i + 2^s) of the block viewed as
    [H / 2^(s+1), 2, 2^s]: u + v and u - v, each one f32 operation, in the spec's stage
    order, so the result is bit-identical to the staged kernels (launch without FMA
    contraction). The reshapes and splits only move data.
    """
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * H + tl.arange(0, H)
    mask = (rows < nrows)[:, None] & (cols < n)[None, :]
    ptr = x_ptr + rows.to(tl.int64)[:, None] * n + cols[None, :]
    x = tl.load(ptr, mask=mask, other=0.0)
    for s in tl.static_range(K):
        x4 = tl.permute(tl.reshape(x, (BR, H // (2 << s), 2, 1 << s)), (0, 1, 3, 2))
        u, v = tl.split(x4)
        x = tl.reshape(tl.permute(tl.join(u + v, u - v), (0, 1, 3, 2)), (BR, H))
    tl.store(ptr, x * c_k, mask=mask)


@triton.jit(do_not_specialize=["m", "n", "lo_mask"])
def _fwht_cols_kernel(x_ptr, m, n, c_k, lo_mask, S0: tl.constexpr, NS: tl.constexpr, LAST: tl.constexpr,
                      BC: tl.constexpr):
    """Stages S0 .. S0+NS-1 of quip.md §5.2(a) along columns (m = a * 2^k rows), in place; LAST: times c_k.

    A program holds the 2^NS rows that differ only in index bits S0 .. S0+NS-1 (one fixed
    value of the other bits, r = hi * 2^(S0+NS) + j * 2^S0 + lo) for BC contiguous columns,
    so every butterfly of those stages stays in registers; the stages run in the spec's
    order, each one f32 addition or subtraction per element.
    """
    NR: tl.constexpr = 1 << NS
    g = tl.program_id(0)
    lo = g & lo_mask
    hi = g >> S0
    jj = tl.arange(0, NR)
    r = (hi << (S0 + NS)) + (jj << S0) + lo
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = (r < m)[:, None] & (cols < n)[None, :]
    ptr = x_ptr + r.to(tl.int64)[:, None] * n + cols[None, :]
    x = tl.load(ptr, mask=mask, other=0.0)
    for t in tl.static_range(NS):
        x4 = tl.permute(tl.reshape(x, (NR // (2 << t), 2, 1 << t, BC)), (0, 2, 3, 1))
        u, v = tl.split(x4)
        x = tl.reshape(tl.permute(tl.join(u + v, u - v), (0, 3, 1, 2)), (NR, BC))
    if LAST:
        x = x * c_k
    tl.store(ptr, x, mask=mask)


@triton.jit
def _factor_kernel(x_ptr, y_ptr, f_ptr, nvec, a, h, stride_v, stride_e,
                   BV: tl.constexpr, BH: tl.constexpr):
    """y[v, al*h + be] = sum over al2 = 0..a-1, in order, of F[al, al2] * x[v, al2*h + be] (f32, no FMA)."""
    vv = tl.program_id(0) * BV + tl.arange(0, BV)
    be = tl.program_id(1) * BH + tl.arange(0, BH)
    mask = (vv < nvec)[:, None] & (be < h)[None, :]
    vbase = vv.to(tl.int64)[:, None] * stride_v
    for al in range(0, a):
        f0 = tl.load(f_ptr + al * a)
        acc = f0 * tl.load(x_ptr + vbase + be.to(tl.int64)[None, :] * stride_e, mask=mask, other=0.0)
        for al2 in range(1, a):
            f = tl.load(f_ptr + al * a + al2)
            xv = tl.load(x_ptr + vbase + (al2 * h + be).to(tl.int64)[None, :] * stride_e, mask=mask, other=0.0)
            acc = acc + f * xv
        tl.store(y_ptr + vbase + (al * h + be).to(tl.int64)[None, :] * stride_e, acc, mask=mask)


@triton.jit
def _sign_kernel(x_ptr, sv_ptr, su_ptr, m, n, BR: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = (rows < m)[:, None] & (cols < n)[None, :]
    sv = tl.load(sv_ptr + rows, mask=rows < m, other=1).to(tl.int32)
    su = tl.load(su_ptr + cols, mask=cols < n, other=1).to(tl.int32)
    p = x_ptr + rows.to(tl.int64)[:, None] * n + cols[None, :]
    x = tl.load(p, mask=mask, other=0.0)
    tl.store(p, x * (sv[:, None] * su[None, :]).to(tl.float32), mask=mask)


@triton.jit
def _diag_kernel(x_ptr, sv_ptr, su_ptr, m, n, BR: tl.constexpr, BC: tl.constexpr):
    """x[r, c] = (x[r, c] * f32(sv[r])) * f32(su[c]): two rounded f32 multiplies (v2 step 4)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = (rows < m)[:, None] & (cols < n)[None, :]
    sv = tl.load(sv_ptr + rows, mask=rows < m, other=1).to(tl.float32)
    su = tl.load(su_ptr + cols, mask=cols < n, other=1).to(tl.float32)
    p = x_ptr + rows.to(tl.int64)[:, None] * n + cols[None, :]
    x = tl.load(p, mask=mask, other=0.0)
    tl.store(p, (x * sv[:, None]) * su[None, :], mask=mask)

@triton.jit
def _parity_pm1(v):
    """(-1)^popcount(v) as f32 for 0 <= v < 2^16."""
    p = v ^ (v >> 8)
    p = p ^ (p >> 4)
    p = p ^ (p >> 2)
    p = (p ^ (p >> 1)) & 1
    return 1.0 - 2.0 * p.to(tl.float32)


@triton.jit(do_not_specialize=["x_sb", "o_sb"])
def _had_kernel(x_ptr, out_ptr, d_ptr, post_ptr, bias_ptr, x_sb, o_sb, c_k, gp,
                R: tl.constexpr, C: tl.constexpr, CB: tl.constexpr, RC: tl.constexpr, USE_DOT: tl.constexpr,
                PREC: tl.constexpr, HAS_D: tl.constexpr, HAS_POST: tl.constexpr, HAS_BIAS: tl.constexpr,
                E8ORD: tl.constexpr):
    """out[b, al*h + i] = post * (c_k * H_h (d * x[b, al*h : al*h + h]))[i] + bias, h = R * C, in f32.

    Grid (blocks al, batch rows b, column chunks of CB). The block, viewed as V [R, C]
    (element r*C + c), is transformed as H_R V H_C (H_h = H_R kron H_C, Sylvester), with
    +-1 matrices generated in registers, RC rows of V at a time (small register
    footprint): Y[:, chunk] += H_R[:, rows] (V[rows, :] H_C[:, chunk]). Tensor-core dots
    (PREC "tf32x3": f32-accurate) when R, C >= 16, broadcast sums below. Not the
    butterfly order of quip.md §5.2, so not bit-identical: only the matvec uses it.
    E8ORD: element j is stored at (j % 8) * gp + j // 8 (coordinate-major, for the E8P12 GEMV).
    """
    al = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pc = tl.program_id(2)
    H: tl.constexpr = R * C
    rr = tl.arange(0, R)
    cc = tl.arange(0, C)
    cb = pc * CB + tl.arange(0, CB)
    base = al.to(tl.int64) * H
    hc = _parity_pm1(cc[:, None] & cb[None, :])
    yv = tl.zeros((R, CB), dtype=tl.float32)
    for r0 in range(0, R, RC):
        rk = r0 + tl.arange(0, RC)
        idx = base + rk[:, None] * C + cc[None, :]
        v = tl.load(x_ptr + b * x_sb + idx).to(tl.float32)
        if HAS_D:
            v = v * tl.load(d_ptr + idx).to(tl.float32)
        hr = _parity_pm1(rr[:, None] & rk[None, :])
        if USE_DOT:
            z = tl.dot(v, hc, input_precision=PREC)
            yv = tl.dot(hr, z, yv, input_precision=PREC)
        else:
            z = tl.sum(v[:, :, None] * hc[None, :, :], axis=1)
            yv += tl.sum(hr[:, :, None] * z[None, :, :], axis=1)
    yv = yv * c_k
    oidx = base + rr[:, None] * C + cb[None, :]
    if HAS_POST:
        yv = yv * tl.load(post_ptr + oidx).to(tl.float32)
    if HAS_BIAS:
        yv = yv + tl.load(bias_ptr + oidx).to(tl.float32)
    if E8ORD:
        oidx = (oidx % 8) * gp + oidx // 8
    tl.store(out_ptr + b * o_sb + oidx, yv.to(out_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["x_sb", "o_sb", "gp"])
def _wht_kernel(x_ptr, out_ptr, d_ptr, f_ptr, post_ptr, bias_ptr, xsc_ptr, x_sb, o_sb, c_k, gp,
                A: tl.constexpr, NC: tl.constexpr, L1: tl.constexpr, L2: tl.constexpr, HAS_D: tl.constexpr,
                HAS_F: tl.constexpr, HAS_POST: tl.constexpr, HAS_BIAS: tl.constexpr, E8ORD: tl.constexpr,
                H2ORD: tl.constexpr = False):
    """The whole transform (F kron c_k H_h)(d * x) of one side in ONE launch, each program L = L1 * L2 outputs.

    Why: the matvec's transforms act on 1..16 vectors, so their cost is latency, not work; a few
    programs per 2^k block (``_had_kernel``) or per factor (``_mix_kernel``) leave the GPU idle.
    Here output chunk (j, hi) of block j, elements j*h + hi*L + lo, h = NC * L, is
    ``c_k H_L s`` with ``s = sum_{b, hp} F[j, b] (-1)^|hi & hp| (d x)[b*h + hp*L : +L]``
    (Sylvester H_h = H_NC kron H_L, and F kron H = (I kron H)(F kron I)): every program reads
    the whole vector once (f32 FMAs, no reduction until the end) and finishes with an L-point
    transform as two broadcast sums (H_L1 S H_L2). Not the butterfly order of quip.md §5.2: only
    the matvec uses it. E8ORD: element e is stored at (e % 8) * gp + e // 8. H2ORD (the f16x2 E8P12
    GEMV): f16 pairs, element e at f16 slot 2 * ((e % 8) // 2 * gp + e // 8) + e % 2, scaled by
    2^-s_b with 2^(s_b - 2) <= ||d x||_2 < 2^(s_b - 1) (the transform is orthogonal, so every scaled
    value is below 1/2 in magnitude and no f16 sum of products can overflow); every program computes
    the same s_b from the same reads and program 0 stores 2^s_b at ``xsc_ptr[b]``.
    """
    pid = tl.program_id(0)
    bt = tl.program_id(1).to(tl.int64)
    L: tl.constexpr = L1 * L2
    H: tl.constexpr = NC * L
    j = pid // NC
    hi = pid % NC
    hp = tl.arange(0, NC)
    lo = tl.arange(0, L)
    sg = _parity_pm1(hi & hp)
    idx = hp[:, None] * L + lo[None, :]
    acc = tl.zeros((NC, L), dtype=tl.float32)
    sq = tl.zeros((NC, L), dtype=tl.float32)
    for b in tl.static_range(A):
        col = b * H + idx
        v = tl.load(x_ptr + bt * x_sb + col).to(tl.float32)
        if HAS_D:
            v = v * tl.load(d_ptr + col).to(tl.float32)
        if H2ORD:
            sq += v * v
        if HAS_F:
            acc += tl.load(f_ptr + j * A + b) * v
        else:
            acc += v
    s = tl.reshape(tl.sum(acc * sg[:, None], axis=0), (L1, L2))
    c2 = tl.arange(0, L2)
    r1 = tl.arange(0, L1)
    z = tl.sum(s[:, :, None] * _parity_pm1(c2[:, None] & c2[None, :])[None, :, :], axis=1)
    y = tl.sum(_parity_pm1(r1[:, None] & r1[None, :])[:, :, None] * z[None, :, :], axis=1) * c_k
    oidx = j * H + hi * L + (r1[:, None] * L2 + c2[None, :])
    if HAS_POST:
        y = y * tl.load(post_ptr + oidx).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + oidx).to(tl.float32)
    if H2ORD:
        nrm = tl.sqrt(tl.sum(tl.sum(sq, axis=1), axis=0))
        e = tl.minimum(tl.maximum(((nrm.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -100), 100) + 2
        y = y * ((127 - e) << 23).to(tl.float32, bitcast=True)
        oidx = 2 * ((oidx % 8) // 2 * gp + oidx // 8) + oidx % 2
        if pid == 0:
            tl.store(xsc_ptr + bt, ((127 + e) << 23).to(tl.float32, bitcast=True))
    if E8ORD:
        oidx = (oidx % 8) * gp + oidx // 8
    tl.store(out_ptr + bt * o_sb + oidx, y.to(out_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["a", "h", "z_sb", "o_sb"])
def _mix_kernel(z_ptr, out_ptr, f_ptr, post_ptr, bias_ptr, a, h, z_sb, o_sb, gp,
                AB: tl.constexpr, BH: tl.constexpr, HAS_POST: tl.constexpr, HAS_BIAS: tl.constexpr,
                E8ORD: tl.constexpr):
    """out[b, al*h + be] = post * sum_al2 F[al, al2] z[b, al2*h + be] + bias (the explicit factor, f32 FMAs)."""
    be = tl.program_id(0) * BH + tl.arange(0, BH)
    b = tl.program_id(1).to(tl.int64)
    al = tl.program_id(2) * AB + tl.arange(0, AB)
    bm = be < h
    am = al < a
    acc = tl.zeros((AB, BH), dtype=tl.float32)
    for al2 in range(0, a):
        f = tl.load(f_ptr + al * a + al2, mask=am, other=0.0)
        zr = tl.load(z_ptr + b * z_sb + al2 * h + be, mask=bm, other=0.0)
        acc += f[:, None] * zr[None, :]
    oidx = al.to(tl.int64)[:, None] * h + be[None, :]
    mask = am[:, None] & bm[None, :]
    if HAS_POST:
        acc = acc * tl.load(post_ptr + oidx, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + oidx, mask=mask, other=0.0).to(tl.float32)
    if E8ORD:
        oidx = (oidx % 8) * gp + oidx // 8
    tl.store(out_ptr + b * o_sb + oidx, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grid_field(wd, wh, c: tl.constexpr, F: tl.constexpr, WST: tl.constexpr):
    """f32 q * 2^p of field c, p = (c mod F/2) * WST, in place: fields of the upper half come from wh = wd >> 16."""
    if c < F // 2:
        base = wd
    else:
        base = wh
    sel: tl.constexpr = ((1 << WST) - 1) << ((c % (F // 2)) * WST)
    return ((base & sel) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit(do_not_specialize=["m", "nb", "n_tiles", "tiles_per_split"])
def _grid_gemv_kernel(x_ptr, y_ptr, ws_ptr, wsi_ptr, cnt_ptr, w_ptr, scale_ptr, m, nw, nb, x_sb, n_tiles,
                      tiles_per_split, L,
                      WST: tl.constexpr, F: tl.constexpr, NU: tl.constexpr, BM: tl.constexpr, BB: tl.constexpr,
                      DOT: tl.constexpr, DOT_DT: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr):
    """y[b, r] = scale[r] * sum_j (2 q(r, j) - L) x[b, j] over the strided field layout (``_common``).

    Batch 1 reads x pre-scaled by 2^(1-p) for field offset p (written so by the input
    transform): field c is taken in place, ``(w & (MASK << p)) | 0x4B000000`` is the f32
    2^23 + q 2^p, one FADD gives q 2^p exactly, one FMA accumulates 2 q x; the -L sum x
    term is one FMA per column shared by the program's rows. 2..16 rows: exact (2q - L)
    slices and ``tl.dot`` on unscaled x. x has zeros past column n (no masks).
    """
    rows, rmask, rc64, bb, bmask = gemv_rows(m, nb, BM, BB)
    wrow = w_ptr + rc64[:, None] * nw
    uu = tl.arange(0, NU)
    MASK: tl.constexpr = (1 << WST) - 1
    if DOT:
        acc = tl.zeros((BM, BB), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, NU), dtype=tl.float32)
        sx = tl.zeros((NU,), dtype=tl.float32)
    t_lo, t_hi = gemv_tiles(n_tiles, tiles_per_split)
    for t in range(t_lo, t_hi):
        wi = t * NU + uu
        wd = tl.load(wrow + wi[None, :])
        if not DOT:
            wh = wd >> 16
        for c in tl.static_range(F):
            cols = c * nw + wi
            if DOT:
                q = ((wd >> (c * WST)) & MASK).to(tl.float32)
                v = 2.0 * q - L
                xt = tl.load(x_ptr + bb[None, :] * x_sb + cols[:, None], mask=bmask[None, :], other=0.0)
                if IEEE:
                    acc = tl.dot(v, xt.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(v.to(DOT_DT), xt.to(DOT_DT), acc)
            else:
                qf = _grid_field(wd, wh, c, F, WST)
                xv = tl.load(x_ptr + cols)
                acc += qf * xv[None, :]
                sx += xv * (0.5 * (1 << ((c % (F // 2)) * WST)))
    out, yoff, ymask = gemv_out(acc, rows, rmask, bb, bmask, m, DOT)
    if not DOT:
        out = out - L * tl.sum(sx, axis=0)
    finish(out, y_ptr, yoff, ymask, scale_ptr, rows, rmask, scale_ptr, ws_ptr, wsi_ptr, cnt_ptr, tl.program_id(0),
           SPLIT, False, True, not DOT)


@triton.jit(do_not_specialize=["m", "nb", "n_tiles", "tiles_per_split"])
def _e8p_gemv_kernel(x_ptr, y_ptr, ws_ptr, wsi_ptr, cnt_ptr, c_ptr, half_ptr, odd_ptr, scale_ptr, m, gp, nb, x_sb,
                     n_tiles, tiles_per_split,
                     NG: tl.constexpr, BM: tl.constexpr, BB: tl.constexpr, DOT: tl.constexpr,
                     DOT_DT: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr):
    """y[b, r] = scale[r] * sum_j (t(r, j) / 4) x[b, j] straight from the 16-bit E8P12 codes (quip.md §10.4).

    Per code (a [BM, NG] tile, one coordinate i at a time, all 2-D: no layout
    conversions): row a, sign byte s, parity p, s' = s ^ p with the odd-row flip of
    coordinate 7 folded in (odd_ptr holds odd[a] << 7). Per weight: the table value
    A[a][i] = alpha/2 (f32, 8 KiB, L1) and coordinate i's sign bit moved to bit 31 and
    XORed onto x (batch 1: one shift, one LOP3, one FMA), so t/4 . x = A . (+-x) +
    (1/4 - p/2) x, the shift term from the 8-column sums of x, shared by the rows.
    2..16 rows: exact t/4 slices [BM, NG] per coordinate and ``tl.dot`` (K = NG).
    x is coordinate-major (x[8g + i] at i * gp + g: contiguous per coordinate, written so
    by the input transform), zero past column n.
    """
    rows, rmask, rc64, bb, bmask = gemv_rows(m, nb, BM, BB)
    crow = c_ptr + rc64[:, None] * gp
    gg = tl.arange(0, NG)
    if DOT:
        acc = tl.zeros((BM, BB), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, NG), dtype=tl.float32)
    t_lo, t_hi = gemv_tiles(n_tiles, tiles_per_split)
    for t in range(t_lo, t_hi):
        g = t * NG + gg
        code = tl.load(crow + g[None, :]).to(tl.int32) & 0xFFFF
        a = code >> 8
        s = code & 255
        p = s ^ (s >> 4)
        p = p ^ (p >> 2)
        p = (p ^ (p >> 1)) & 1
        s2 = (s ^ p) ^ tl.load(odd_ptr + a)
        arow = half_ptr + a * 8
        sh = 0.25 - 0.5 * p.to(tl.float32)
        if not DOT:
            xsum = tl.zeros((NG,), dtype=tl.float32)
        for i in tl.static_range(8):
            # coordinate i's sign is bit (i >> 1) | ((i & 1) << 2) of s' (quip.md §10.4), moved to bit 31
            sgn = (s2 << (31 - ((i >> 1) | ((i & 1) << 2)))) & -2147483648
            av = tl.load(arow + i)
            cols = i * gp + g
            if DOT:
                wv = (av.to(tl.int32, bitcast=True) ^ sgn).to(tl.float32, bitcast=True) + sh
                xt = tl.load(x_ptr + bb[None, :] * x_sb + cols[:, None], mask=bmask[None, :], other=0.0)
                if IEEE:
                    acc = tl.dot(wv, xt, acc, input_precision="ieee")
                else:
                    acc = tl.dot(wv.to(DOT_DT), xt.to(DOT_DT), acc)
            else:
                xv = tl.load(x_ptr + cols)
                xsum += xv
                acc += av * (xv.to(tl.int32, bitcast=True)[None, :] ^ sgn).to(tl.float32, bitcast=True)
        if not DOT:
            acc += sh * xsum[None, :]
    out, yoff, ymask = gemv_out(acc, rows, rmask, bb, bmask, m, DOT)
    finish(out, y_ptr, yoff, ymask, scale_ptr, rows, rmask, scale_ptr, ws_ptr, wsi_ptr, cnt_ptr, tl.program_id(0),
           SPLIT, False, True, not DOT)


@triton.jit
def _e8p_packed(code, abs_ptr, sgn_ptr, SIGN_TAB: tl.constexpr):
    """Packed signed row of 16-bit codes (int32): nibble b = 7 + (+-alpha) of the coordinate with sign bit b.

    Coordinate i (sign bit b = (i >> 1) | ((i & 1) << 2) of s ^ p, quip.md §10.4) sits at
    bits 4b .. 4b+3; 7 - alpha = (7 + alpha) ^ 0xE, so a sign flip is an XOR. ``abs_ptr``
    holds 7 + alpha per row (odd rows: coordinate 7 flipped already), ``sgn_ptr`` (or the
    arithmetic spread, SIGN_TAB False) the 0xE nibbles of s' = s ^ p with p in bit 0.
    """
    a = code >> 8
    s = code & 255
    if SIGN_TAB:
        sm = tl.load(sgn_ptr + s)
    else:
        x = (s | (s << 12)) & 0x000F000F
        x = (x | (x << 6)) & 0x03030303
        x = (x | (x << 3)) & 0x11111111  # bit b of s at bit 4b
        p = ((x * 0x11111111) >> 28) & 1
        sm = (x * 14) ^ ((0 - p) & 15)  # s' = s ^ p flips bit 0 (nibble 0); p in bit 0
    return tl.load(abs_ptr + a) ^ sm


@triton.jit(do_not_specialize=["m", "nb", "n_tiles", "tiles_per_split"])
def _e8p_gemv2_kernel(x_ptr, y_ptr, ws_ptr, wsi_ptr, cnt_ptr, c_ptr, abs_ptr, sgn_ptr, scale_ptr, m, gp, nb, x_sb,
                      n_tiles, tiles_per_split,
                      NG: tl.constexpr, BM: tl.constexpr, BB: tl.constexpr, DOT: tl.constexpr,
                      DOT_DT: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr, SIGN_TAB: tl.constexpr):
    """y[b, r] = scale[r] * sum_j (t(r, j) / 4) x[b, j] from the 16-bit E8P12 codes, one table row per code.

    Per code one packed row (:func:`_e8p_packed`: two 1 KiB L1 tables, or one and the
    arithmetic sign spread) holds 7 + w_i, w_i = +-alpha_i, for the 8 coordinates, and p in
    bit 0; subtracting p * 0x11111112 (p from nibbles 1..7, 2p from nibble 0, which holds p;
    no borrows: every field is >= 2) leaves e_i = 7 + w_i - p, and t_i / 4 = w_i / 2 + 1/4 - p/2
    = e_i / 2 - 13/4. Batch 1, per weight: the field taken in place, ``(row & (0xF << 4k)) |
    0x4B000000`` = 2^23 + e_i 16^k as f32 (k = i >> 1; coordinates 4..7 from row >> 16), one
    FADD, one FMA with x_i / (2 * 16^k) (scaled so by the input transform); -13/4 sum x is
    shared by the rows. 2..16 rows: the exact t / 4 slices [BM, NG] per coordinate and ``tl.dot``
    (K = NG). x is coordinate-major
    (x[8g + i] at i * gp + g), zero past column n.
    """
    rows, rmask, rc64, bb, bmask = gemv_rows(m, nb, BM, BB)
    crow = c_ptr + rc64[:, None] * gp
    gg = tl.arange(0, NG)
    if DOT:
        acc = tl.zeros((BM, BB), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, NG), dtype=tl.float32)
        sx = tl.zeros((NG,), dtype=tl.float32)
    t_lo, t_hi = gemv_tiles(n_tiles, tiles_per_split)
    for t in range(t_lo, t_hi):
        g = t * NG + gg
        code = tl.load(crow + g[None, :]).to(tl.int32) & 0xFFFF
        row = _e8p_packed(code, abs_ptr, sgn_ptr, SIGN_TAB)
        row = row - (row & 1) * 0x11111112
        rh = row >> 16
        for i in tl.static_range(8):
            if i % 2 == 0:
                base = row
            else:
                base = rh
            f = ((base & (0xF << (4 * (i >> 1)))) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            cols = i * gp + g
            if DOT:
                wv = f * (1.0 / (2 << (4 * (i >> 1)))) - 3.25
                xt = tl.load(x_ptr + bb[None, :] * x_sb + cols[:, None], mask=bmask[None, :], other=0.0)
                if IEEE:
                    acc = tl.dot(wv, xt, acc, input_precision="ieee")
                else:
                    acc = tl.dot(wv.to(DOT_DT), xt.to(DOT_DT), acc)
            else:
                xv = tl.load(x_ptr + cols)  # x_i / (2 * 16^k), scaled so by the input transform
                sx += xv * (2 << (4 * (i >> 1)))
                acc += f * xv[None, :]
    out, yoff, ymask = gemv_out(acc, rows, rmask, bb, bmask, m, DOT)
    if not DOT:
        out = out - 3.25 * tl.sum(sx, axis=0)
    finish(out, y_ptr, yoff, ymask, scale_ptr, rows, rmask, scale_ptr, ws_ptr, wsi_ptr, cnt_ptr, tl.program_id(0),
           SPLIT, False, True, not DOT)

@triton.jit
def _e8p_quarter(v, ASM: tl.constexpr):
    """t/4 = e/2 - 13/4 as an f16 pair from ``h2_biased(w, ODD=True)``'s 1024 + 16 e: (1024 + 16 e) / 32 - 35.25,
    one exact FMA (35.25 = 1128 / 32 is an f16; the bias of a low-nibble field, 1030.5, is not)."""
    if ASM:
        q = tl.inline_asm_elementwise(
            "{.reg .b32 k, z; mov.b32 k, 0x28002800; mov.b32 z, 0xD068D068; fma.rn.f16x2 $0, $1, k, z;}",
            "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
    else:
        q = f16_pack((f16_lo(v) * 0.03125 - 35.25).to(tl.float16), (f16_hi(v) * 0.03125 - 35.25).to(tl.float16))
    return q


@triton.jit
def _e8p_code_h2(code, xp0, xp1, xp2, xp3, h, abs_ptr, sgn_ptr, SIGN_TAB: tl.constexpr, ASM: tl.constexpr):
    """h + sum of the code's 8 products t_i/4 * x_i as f16 pairs: per pair of coordinates (2p, 2p + 1), whose
    nibbles sit 4 bits apart in the two halves of the packed row, one shift, one LOP3, two exact FMAs."""
    row = _e8p_packed(code, abs_ptr, sgn_ptr, SIGN_TAB)
    row = row - (row & 1) * 0x11111112
    h = h2_fma(_e8p_quarter(h2_biased(row << 4, True, 4, ASM), ASM), xp0, h, ASM)
    h = h2_fma(_e8p_quarter(h2_biased(row, True, 4, ASM), ASM), xp1, h, ASM)
    h = h2_fma(_e8p_quarter(h2_biased(row >> 4, True, 4, ASM), ASM), xp2, h, ASM)
    return h2_fma(_e8p_quarter(h2_biased(row >> 8, True, 4, ASM), ASM), xp3, h, ASM)


@triton.jit(do_not_specialize=["m", "n_tiles", "tiles_per_split"])
def _e8p_gemv_h2_kernel(x_ptr, xsc_ptr, y_ptr, ws_ptr, wsi_ptr, cnt_ptr, c_ptr, abs_ptr, sgn_ptr, scale_ptr, m, gp,
                        n_tiles, tiles_per_split, NG: tl.constexpr, BM: tl.constexpr, SPLIT: tl.constexpr,
                        SIGN_TAB: tl.constexpr, ASM: tl.constexpr):
    """Batch-1 E8P12 GEMV in f16x2: per code one packed row (as :func:`_e8p_gemv2_kernel`), then per PAIR of
    weights one shift, one LOP3 (:func:`h2_biased`), one exact FMA (:func:`_e8p_quarter`, the weights t/4)
    and the product's FMA; two codes' 16 products (two tiles a loop step) summed in f16, then added to
    the f32 accumulator.

    x: f16 pairs from :func:`_wht_kernel` (H2ORD): pair p of group g (coordinates 2p, 2p + 1, scaled by
    1 / xsc, so below 1/2 in magnitude) at int32 word p * gp + g. y = scale * xsc * sum (t/4) x.
    """
    rows, rmask, rc64, bb, bmask = gemv_rows(m, 1, BM, 1)
    crow = c_ptr + rc64[:, None] * gp
    gg = tl.arange(0, NG)
    acc = tl.zeros((BM, NG), dtype=tl.float32)
    zero = tl.zeros((BM, NG), dtype=tl.int32)
    t_lo, t_hi = gemv_tiles(n_tiles, tiles_per_split)
    for t in range(t_lo, t_hi, 2):  # two tiles a step: each f16 sum takes two codes of a row
        g = t * NG + gg
        h = _e8p_code_h2(tl.load(crow + g[None, :]).to(tl.int32) & 0xFFFF,
                         tl.load(x_ptr + g)[None, :], tl.load(x_ptr + gp + g)[None, :],
                         tl.load(x_ptr + 2 * gp + g)[None, :], tl.load(x_ptr + 3 * gp + g)[None, :], zero,
                         abs_ptr, sgn_ptr, SIGN_TAB, ASM)
        g = g + NG
        gm = gg < (t_hi - t - 1) * NG  # an odd last tile: x reads 0, so its products are 0
        h = _e8p_code_h2(tl.load(crow + g[None, :], mask=gm[None, :], other=0).to(tl.int32) & 0xFFFF,
                         tl.load(x_ptr + g, mask=gm, other=0)[None, :],
                         tl.load(x_ptr + gp + g, mask=gm, other=0)[None, :],
                         tl.load(x_ptr + 2 * gp + g, mask=gm, other=0)[None, :],
                         tl.load(x_ptr + 3 * gp + g, mask=gm, other=0)[None, :], h, abs_ptr, sgn_ptr, SIGN_TAB, ASM)
        acc += h2_sum(h)
    out = tl.sum(acc, axis=1) * tl.load(xsc_ptr)
    finish(out, y_ptr, rows, rmask, scale_ptr, rows, rmask, scale_ptr, ws_ptr, wsi_ptr, cnt_ptr, tl.program_id(0),
           SPLIT, False, True, True)


_FWHT_ROWS_MAX_LOG2 = 14  # in-register row blocks up to 2^14 f32 (64 KiB per program)
_FWHT_RADIX_LOG2 = 4  # column stages per pass (16 rows in registers)


def transform_fast(x: torch.Tensor, along_rows: bool, log2_h: int, factor: torch.Tensor | None) -> torch.Tensor:
    """:func:`transform` with the same f32 operations in the same order (bit-identical), in fewer launches.

    Rows: one launch for all stages and c_k (blocks up to 2^14); columns: one launch per
    ``_FWHT_RADIX_LOG2`` stages. The factor step is :func:`transform`'s. Returns the result
    (``x`` is modified in place).
    """
    rows, cols = x.shape
    h = 1 << log2_h
    c = float(hadamard_constant(log2_h))
    if not (log2_h and x.is_contiguous() and rows * cols < 2**31):
        return transform(x, along_rows, log2_h, factor)
    if along_rows and log2_h <= _FWHT_ROWS_MAX_LOG2 and cols // h < 65536:
        br = max(1, min(64, 4096 // h))
        _fwht_rows_kernel[(triton.cdiv(rows, br), cols // h)](x, rows, cols, c, H=h, K=log2_h, BR=br,
                                                           num_warps=8 if h >= 8192 else 4, **_OPTS)
    elif not along_rows and triton.cdiv(cols, 128) < 65536:
        for s0 in range(0, log2_h, _FWHT_RADIX_LOG2):
            ns = min(_FWHT_RADIX_LOG2, log2_h - s0)
            _fwht_cols_kernel[(rows >> ns, triton.cdiv(cols, 128))](
                x, rows, cols, c, (1 << s0) - 1, S0=s0, NS=ns, LAST=s0 + ns == log2_h, BC=128, **_OPTS)
    else:
        return transform(x, along_rows, log2_h, factor)
    return _apply_factor(x, along_rows, log2_h, factor)


def transform(x: torch.Tensor, along_rows: bool, log2_h: int, factor: torch.Tensor | None) -> torch.Tensor:
    """Apply D = F kron H_norm (quip.md §5.2) to every row (or column) of the f32 matrix x; returns the result.

    ``x`` is modified in place when there is no factor; the factor step writes a new tensor.
    """
    rows, cols = x.shape
    nvec, length = (rows, cols) if along_rows else (cols, rows)
    sv_, se_ = (cols, 1) if along_rows else (1, cols)
    BV, BP = 16, 64
    for s in range(log2_h):
        last = s == log2_h - 1
        _butterfly_kernel[(triton.cdiv(nvec, BV), triton.cdiv(length // 2, BP))](
            x, nvec, length // 2, sv_, se_, 1 << s, float(hadamard_constant(log2_h)),
            LAST=last, BV=BV, BP=BP, **_OPTS)
    return _apply_factor(x, along_rows, log2_h, factor)


def _apply_factor(x: torch.Tensor, along_rows: bool, log2_h: int, factor: torch.Tensor | None) -> torch.Tensor:
    """quip.md §5.2(c): the explicit factor across the a = length / 2^log2_h blocks (a new tensor), if any."""
    rows, cols = x.shape
    nvec, length = (rows, cols) if along_rows else (cols, rows)
    sv_, se_ = (cols, 1) if along_rows else (1, cols)
    h = 1 << log2_h
    BV, BP = 16, 64
    if factor is not None and length // h > 1:
        y = torch.empty_like(x)
        _factor_kernel[(triton.cdiv(nvec, BV), triton.cdiv(h, BP))](
            x, y, factor.contiguous(), nvec, length // h, h, sv_, se_, BV=BV, BH=BP, **_OPTS)
        x = y
    return x


def _codes(secs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    c = secs["codes"]
    if c.dtype == torch.uint32:
        return c.view(torch.int32)
    return c.view(torch.int16) if c.dtype == torch.uint16 else c


def _is_e8p(secs: Mapping[str, torch.Tensor]) -> bool:
    """Validated sections: only the E8P12 codebooks (v2: "e8p12" and the residual ones) have 16-bit codes."""
    return secs["codes"].dtype in (torch.int16, torch.uint16)


_TABLES: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
_E81B: dict[str, torch.Tensor] = {}
RVQ_CODEBOOKS = ("e8p12_rvq4", "e8p12_rvq3")


def e81b_device_table(device: torch.device) -> torch.Tensor:
    """E81B ``w`` int32 [256 * 8] row-major (quip.md §10.11) on ``device``, built once per device."""
    key = str(device)
    if key not in _E81B:
        _E81B[key] = torch.from_numpy(e81b_table().astype("int32").reshape(-1).copy()).to(device)
    return _E81B[key]


def _codes2(secs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    c = secs["codes2"]
    return c.view(torch.int16) if c.dtype == torch.uint16 else c


def e8p_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha int32 [256 * 8] = 2A row-major, odd int32 [256]) on ``device``, built once per device."""
    key = str(device)
    if key not in _TABLES:
        alpha = torch.from_numpy(abs_table().astype("int32").reshape(-1).copy()).to(device)
        odd = torch.from_numpy(odd_rows().astype("int32").copy()).to(device)
        _TABLES[key] = (alpha, odd)
    return _TABLES[key]


_GEMV_TABLES: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def e8p_gemv_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(A = alpha / 2 as f32 [256 * 8], odd[a] << 7 as int32 [256]) for the fused GEMV, built once per device."""
    key = str(device)
    if key not in _GEMV_TABLES:
        half = torch.from_numpy((abs_table().astype("float32") * 0.5).reshape(-1).copy()).to(device)
        odd = torch.from_numpy(odd_rows().astype("int32") << 7).to(device)
        _GEMV_TABLES[key] = (half, odd)
    return _GEMV_TABLES[key]


_PACKED_TABLES: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _b(i: int) -> int:
    """The sign bit of coordinate i (quip.md §10.4), which is also its nibble in the packed row."""
    return (i >> 1) | ((i & 1) << 2)


def e8p_packed_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(abs int32 [256], sign int32 [256]) of :func:`_e8p_packed`, built once per device.

    abs[a]: nibble b(i) = 7 + alpha[a][i] (7 - alpha for coordinate 7 of an odd row);
    sign[s]: 0xE in nibble b for each set bit b of s' = s ^ p, p = parity(s) in bit 0.
    """
    key = str(device)
    if key not in _PACKED_TABLES:
        alpha = abs_table().astype("int64")
        odd = odd_rows().astype("int64")
        ab = torch.zeros(256, dtype=torch.int64)
        for a in range(256):
            for i in range(8):
                v = 7 + int(alpha[a, i])
                if i == 7 and odd[a]:
                    v ^= 0xE
                ab[a] |= v << (4 * _b(i))
        sg = torch.zeros(256, dtype=torch.int64)
        for s in range(256):
            p = bin(s).count("1") & 1
            s2 = s ^ p
            sg[s] = p | sum(0xE << (4 * b) for b in range(8) if (s2 >> b) & 1)
        as32 = [((t + 2**31) % 2**32 - 2**31).to(torch.int32).to(device) for t in (ab, sg)]
        _PACKED_TABLES[key] = (as32[0], as32[1])
    return _PACKED_TABLES[key]


def _is_real_diag(secs: Mapping[str, torch.Tensor]) -> bool:
    return secs["su"].is_floating_point() or secs["sv"].is_floating_point()


def dequantize(params: Mapping[str, Any], sections_on_device: Mapping[str, torch.Tensor], shape: tuple[int, int],
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decoded tensor [m, n] of a validated quip tensor (bit-exact f32, then an RNE cast)."""
    m, n = (int(v) for v in shape)
    secs = dict(sections_on_device)
    codes = _codes(secs)
    x = torch.empty((m, n), dtype=torch.float32, device=codes.device)
    BR, BC = 16, 64
    grid = (triton.cdiv(m, BR), triton.cdiv(n, BC))
    if params.get("codebook") in RVQ_CODEBOOKS:
        alpha, odd = e8p_tables(codes.device)
        second_e8p = params["codebook"] == "e8p12_rvq4"
        e81b = alpha if second_e8p else e81b_device_table(codes.device)
        _rvq_kernel[grid](codes, _codes2(secs), alpha, odd, e81b, secs["scale"], x, m, n, codes.shape[1],
                          float(params["resid_scale"]), SECOND_E8P=second_e8p, BR=BR, BC=BC, **_OPTS)
    elif _is_e8p(secs):
        alpha, odd = e8p_tables(codes.device)
        _e8p_kernel[grid](codes, alpha, odd, secs["scale"], x, m, n, codes.shape[1], BR=BR, BC=BC, **_OPTS)
    else:
        _grid_kernel[grid](codes, secs["scale"], x, m, n, codes.shape[1], BITS=int(params["bits"]), BR=BR, BC=BC,
                           **_OPTS)
    x = transform_fast(x, True, int(params["log2_hn"]), secs.get("factor_n"))
    x = transform_fast(x, False, int(params["log2_hm"]), secs.get("factor_m"))
    if _is_real_diag(secs):
        _diag_kernel[grid](x, secs["sv"], secs["su"], m, n, BR=BR, BC=BC, **_OPTS)
    else:
        _sign_kernel[grid](x, secs["sv"], secs["su"], m, n, BR=BR, BC=BC, **_OPTS)
    return x if out_dtype == torch.float32 else x.to(out_dtype)



_HAD_MAX_LOG2 = 14  # block Hadamards up to 2^14 in one program; larger blocks use the staged transform
_HAD_PREC = "tf32x3"


@dataclass
class GemvConfig:
    """Tile of the fused GEMV (BM rows x NU words or NG codes per step); split = column splits (None: auto)."""

    BM: int = 64
    NU: int = 32
    NG: int = 16
    num_warps: int = 4
    split: int | None = None
    # E8P12 decode: "sign_table" / "sign_arith" (one row per code, f32 FMAs), "h2" / "h2_arith" (the same row,
    # f16x2 products; batch 1 with f16/bf16 x, else the f32 kernel), "auto" (h2_arith above 2^26 weights, else
    # sign_table: H200, bench/profile_quip.py), "gather8" (one table gather per weight)
    e8p: str = "sign_table"
    # activation transforms: "wht" (one launch a side), "had" (block kernel + factor mix), "auto" (by rows and length)
    transform: str = "auto"


def default_config(e8p: bool, batch: int) -> GemvConfig:
    """Tiles chosen from the SASS of the sm_90 build (fewest instructions per weight at batch 1)."""
    if batch == 1:
        return GemvConfig(BM=128, NU=32, NG=16, num_warps=4, e8p="auto")
    return GemvConfig(BM=64, NU=32, NG=16, num_warps=4)


@dataclass
class PreparedQuip:
    """Spec sections on the device (the exact dequantization reads them) plus the GEMV's layout.

    ``words``: grid codes in the strided field layout of ``_common`` (int32 [m, nw],
    field width ``wst``), or the E8P12 codes padded to ``gp`` (a multiple of 64) codes
    per row (int16; the spec section itself when no padding is needed). ``lp``: the
    padded activation length the GEMV reads; ``prescale``: per column 2^(1-p) (grid).
    """

    params: dict[str, Any]
    shape: tuple[int, int]
    sections: dict[str, torch.Tensor]
    factor_nt: torch.Tensor | None
    e8p: bool = False
    words: torch.Tensor | None = None
    wst: int = 0
    lp: int = 0
    prescale: torch.Tensor | None = None
    split_ws: SplitWorkspace | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.sections["scale"].device

    def workspace(self) -> SplitWorkspace:
        if self.split_ws is None:
            self.split_ws = SplitWorkspace(self.shape[0], self.device)
        return self.split_ws


def prepare(params: Mapping[str, Any], sections: Mapping[str, Any], shape: tuple[int, int],
            device: str | torch.device = "cuda") -> PreparedQuip:
    """Move sections to ``device`` once and build the GEMV layout (the file layout is untouched)."""
    m, n = (int(v) for v in shape)
    secs = to_device(sections, device)
    for role, want in (("scale", m), ("su", n), ("sv", m)):
        check_launch("quip prepare", **{role: (secs[role], want)})
    fn = secs.get("factor_n")
    prep = PreparedQuip(dict(params), (m, n), secs, fn.T.contiguous() if fn is not None else None)
    codes = _codes(secs)
    if params.get("codebook") in RVQ_CODEBOOKS:  # matvec dequantizes (no GEMV layout); the kernel reads both planes
        check_launch("quip prepare", codes=(codes, m * (n // 8)), codes2=(secs.get("codes2"), m * (n // 8)))
        return prep
    if _is_e8p(secs):
        check_launch("quip prepare", codes=(codes, m * (n // 8)))
        g = n // 8
        gp = triton.cdiv(g, NW_ALIGN) * NW_ALIGN
        if gp != g:
            padded = torch.zeros((m, gp), dtype=torch.int16, device=codes.device)
            padded[:, :g] = codes.view(torch.int16)
            codes = padded
        prep.e8p, prep.words, prep.lp = True, codes.contiguous(), 8 * gp
        k = (torch.arange(n, device=codes.device) % 8) >> 1  # batch-1 x prescale of _e8p_gemv2_kernel
        prep.prescale = torch.exp2(-(4.0 * k + 1.0)).contiguous()
    else:
        bits = int(params["bits"])
        check_launch("quip prepare", codes=(codes, m * triton.cdiv(n * bits, 32)))
        prep.words, prep.wst = repack_fields(codes, n, bits)
        f = 32 // prep.wst
        nw = prep.words.shape[1]
        prep.lp = f * nw
        c = torch.arange(prep.lp, device=codes.device) // nw  # field of each column
        p = (c % (f // 2) if f > 1 else c * 0) * prep.wst
        prep.prescale = torch.exp2(1.0 - p.to(torch.float32)).contiguous()
    return prep


_WHT_MAX_A = 16  # _wht_kernel unrolls its loop over the a blocks of a K * 2^k dimension
_WHT_PROGRAMS = 64  # programs per vector it aims for (latency: the work is tiny)


def _wht_plan(log2_h: int, a: int) -> tuple[int, int, int, int]:
    """(L1, L2, NC, num_warps) of :func:`_wht_kernel`: L = L1 * L2 outputs per program, NC = h / L chunks."""
    h = 1 << log2_h
    L = max(16, min(256, next_pow2(max(1, h * a // _WHT_PROGRAMS))))
    L = min(L, h)
    L2 = min(L, 16)
    return L // L2, L2, h // L, max(4, min(16, h // 512))


def _blocks(log2_h: int) -> tuple[int, int, int, int, bool]:
    """(R, C, CB, RC, use_dot) of the in-register block Hadamard of size 2^log2_h = R * C."""
    r = 1 << (log2_h // 2)
    c = 1 << (log2_h - log2_h // 2)
    if r >= 16:
        return r, c, 16, 16, True
    return r, c, c, r, False


def _rotate(x2: torch.Tensor, out: torch.Tensor, d: int, log2_h: int, factor: torch.Tensor | None,
            pre: torch.Tensor | None, post: torch.Tensor | None, bias: torch.Tensor | None, e8_gp: int = 0,
            kernel: str = "wht", xsc: torch.Tensor | None = None) -> None:
    """out[:, :d] = post * ((F kron H_norm)(pre * x2[:, :d])) + bias, row by row, f32 arithmetic.

    ``kernel`` "wht": one launch, factor included (:func:`_wht_kernel`, a <= ``_WHT_MAX_A``);
    "had": one launch for the block Hadamards plus one for the explicit factor when a = d / h > 1.
    ``xsc`` (f32 [B]; "wht" only): the f16x2 E8P12 GEMV's operand: ``out`` is f16 in pair order, scaled
    per row by 1 / xsc (see :func:`_wht_kernel`'s H2ORD).
    ``out`` may have a longer row stride than d (the GEMV's padded activations); with
    ``e8_gp`` > 0 element j goes to (j % 8) * e8_gp + j // 8 (the E8P12 GEMV's order).
    """
    B = x2.shape[0]
    h = 1 << log2_h
    a = d // h
    if a * h != d or (a > 1 and (factor is None or factor.numel() != a * a)):
        raise ValueError(f"quip transform: length {d} is not {a} x 2^{log2_h} with an [{a}, {a}] factor")
    for name, t in (("pre", pre), ("post", post), ("bias", bias)):
        if t is not None and t.numel() < d:
            raise ValueError(f"quip transform: {name} has {t.numel()} elements, expected >= {d}")
    if x2.stride(1) != 1 or out.stride(1) != 1 or x2.shape[1] < d or out.shape[1] < max(d, 8 * e8_gp):
        raise ValueError("quip transform: rows must be contiguous and at least the transform length")
    if e8_gp and (d % 8 or 8 * e8_gp < d):
        raise ValueError(f"quip transform: E8P12 order needs 8 | {d} <= 8 * {e8_gp}")
    last = a == 1
    if xsc is not None and not (kernel in ("wht", "auto") and a <= _WHT_MAX_A and log2_h <= _HAD_MAX_LOG2 and e8_gp
                                and out.dtype == torch.float16 and xsc.numel() >= B):
        raise ValueError("quip transform: the f16x2 operand needs the one-launch kernel, f16 output and E8P12 order")
    if log2_h > _HAD_MAX_LOG2:  # staged exact kernels on a [B, d] f32 copy (rare: blocks > 16384)
        z = x2[:, :d].to(torch.float32, copy=True)  # transform() works in place: never on the caller's x
        if pre is not None:
            z = z * pre[:d].to(torch.float32)
        z = transform(z.contiguous(), True, log2_h, factor)
        if post is not None:
            z = z * post[:d].to(torch.float32)
        if bias is not None:
            z = z + bias[:d].to(torch.float32)
        if e8_gp:
            z = torch.nn.functional.pad(z, (0, 8 * e8_gp - d)).view(B, e8_gp, 8).transpose(1, 2).reshape(B, -1)
            d = 8 * e8_gp
        out[:, :d] = z.to(out.dtype)
        return
    if kernel == "auto":  # H200 (bench/profile_quip.py): the one-launch kernel's reads grow with rows x length
        kernel = "wht" if B <= 2 or (B <= 4 and d <= 16384) else "had"
    if kernel == "wht" and a <= _WHT_MAX_A:
        L1, L2, nc, warps = _wht_plan(log2_h, a)
        _wht_kernel[(a * nc, B)](
            x2, out, pre if pre is not None else x2, factor if a > 1 else x2, post if post is not None else x2,
            bias if bias is not None else x2, xsc if xsc is not None else x2, x2.stride(0), out.stride(0),
            float(hadamard_constant(log2_h)), e8_gp, A=a, NC=nc, L1=L1, L2=L2, HAS_D=pre is not None, HAS_F=a > 1,
            HAS_POST=post is not None, HAS_BIAS=bias is not None, E8ORD=e8_gp > 0 and xsc is None,
            H2ORD=xsc is not None, num_warps=warps)
        return
    if kernel not in ("wht", "had"):  # (a wht beyond its limits takes the block kernel)
        raise ValueError(f"quip transform: unknown kernel {kernel!r}")
    R, C, CB, RC, use_dot = _blocks(log2_h)
    tgt = out if last else torch.empty((B, d), dtype=torch.float32, device=x2.device)
    _had_kernel[(a, B, C // CB)](
        x2, tgt, pre if pre is not None else x2, post if (last and post is not None) else x2,
        bias if (last and bias is not None) else x2, x2.stride(0), tgt.stride(0), float(hadamard_constant(log2_h)),
        e8_gp, R=R, C=C, CB=CB, RC=RC, USE_DOT=use_dot, PREC=_HAD_PREC, HAS_D=pre is not None,
        HAS_POST=last and post is not None, HAS_BIAS=last and bias is not None, E8ORD=last and e8_gp > 0,
        num_warps=8 if R >= 128 else 4)
    if not last:
        AB = min(next_pow2(a), 64)
        BH = max(16, min(next_pow2(h), 4096 // AB))
        _mix_kernel[(triton.cdiv(h, BH), B, triton.cdiv(a, AB))](
            tgt, out, factor, post if post is not None else tgt, bias if bias is not None else tgt,
            a, h, tgt.stride(0), out.stride(0), e8_gp, AB=AB, BH=BH, HAS_POST=post is not None,
            HAS_BIAS=bias is not None, E8ORD=e8_gp > 0)


def _check_prepared(p: PreparedQuip) -> None:
    m, n = p.shape
    if p.words is None or p.words.dim() != 2 or p.words.shape[0] != m:
        raise ValueError("PreparedQuip has no GEMV layout for its shape")
    if p.e8p:
        gp = p.words.shape[1]
        ok = p.words.dtype == torch.int16 and gp % NW_ALIGN == 0 and 8 * gp == p.lp and p.lp >= n
    else:
        nw = p.words.shape[1]
        ok = (p.words.dtype == torch.int32 and nw % NW_ALIGN == 0 and (32 // max(p.wst, 1)) * nw == p.lp >= n
              and p.prescale is not None and p.prescale.numel() == p.lp)
    if not ok:
        raise ValueError(f"PreparedQuip layout {tuple(p.words.shape)} does not fit {m}x{n}")
    check_launch("quip matvec", words=(p.words, p.words.shape[0] * p.words.shape[1]), scale=(p.sections["scale"], m),
                 su=(p.sections["su"], n), sv=(p.sections["sv"], m))
    if MAX_BATCH * (max(m, p.lp) + 1) >= 2**31:
        raise ValueError(f"quip matvec: {m}x{n} exceeds 32-bit indices")


def matvec(prepared: PreparedQuip, x: torch.Tensor, bias: torch.Tensor | None = None,
           config: GemvConfig | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for x [B, n] or [n] via the incoherent basis (quip.md §5.3 remark), B > 16 in slices.

    ``y = sv * D_m (scale * (Q (D_n^T (su * x)))) + bias``: input transform (one or two
    launches), the fused GEMV over the codes, output transform with sv, bias and the cast
    fused (one or two launches). f32 throughout; output in x's dtype.
    """
    m, n = prepared.shape
    return fused_rows(lambda x2: _matvec(prepared, x2, bias, config), x, n, m, bias)


def _matvec(prepared: PreparedQuip, x2: torch.Tensor, bias: torch.Tensor | None,
            config: GemvConfig | None) -> torch.Tensor:
    """The launch sequence for 1..16 contiguous rows x2 [B, n]."""
    m, n = prepared.shape
    p, secs = prepared.params, prepared.sections
    if p.get("codebook") in RVQ_CODEBOOKS:  # no fused two-stage GEMV yet: exact dequantize, then a dense product
        y = x2.to(torch.float32) @ dequantize(p, secs, (m, n)).T
        if bias is not None:
            y = y + bias.to(torch.float32)
        return y.to(x2.dtype)
    B = x2.shape[0]
    _check_prepared(prepared)
    dev = x2.device
    lp = prepared.lp
    alloc = torch.empty if lp == n else torch.zeros  # columns past n must read as 0
    dot = B > 1
    cfg = config or default_config(prepared.e8p, B)
    if prepared.e8p and cfg.e8p == "auto":
        cfg = replace(cfg, e8p="h2_arith" if m * n > 1 << 26 else "sign_table")
    if prepared.e8p and cfg.e8p in ("h2", "h2_arith"):
        if not dot and x2.dtype != torch.float32 and cfg.transform in ("wht", "auto") and _h2_ok(p, n):
            return _matvec_h2(prepared, x2, bias, cfg, alloc)
        cfg = replace(cfg, e8p="sign_table" if cfg.e8p == "h2" else "sign_arith")
    xs = alloc((B, lp), dtype=torch.float32, device=dev)
    post = None if dot or (prepared.e8p and cfg.e8p == "gather8") else prepared.prescale
    if post is not None and post.numel() < n:
        raise ValueError(f"quip matvec: prescale has {post.numel()} elements, expected >= {n}")
    _rotate(x2, xs, n, int(p["log2_hn"]), prepared.factor_nt, secs["su"], post, None,
            prepared.lp // 8 if prepared.e8p else 0, cfg.transform)
    dt, ieee = dot_dtype(x2.dtype)
    width, tile, n_tiles, progs_m, split, tps, yq, wsargs = _gemv_grid(
        prepared, B, cfg.NG if prepared.e8p else cfg.NU, cfg, dev)
    common = dict(BM=cfg.BM, BB=16 if dot else 1, DOT=dot, DOT_DT=dt, IEEE=ieee, SPLIT=split > 1,
                  num_warps=cfg.num_warps)
    if prepared.e8p and cfg.e8p == "gather8":
        half, odd = e8p_gemv_tables(dev)
        _e8p_gemv_kernel[(progs_m, split)](xs, yq, *wsargs, prepared.words, half, odd, secs["scale"], m, width, B,
                                           lp, n_tiles, tps, NG=tile, **common)
    elif prepared.e8p:
        if cfg.e8p not in ("sign_table", "sign_arith"):
            raise ValueError(f"quip matvec: unknown E8P12 decode {cfg.e8p!r}")
        ab, sg = e8p_packed_tables(dev)
        _e8p_gemv2_kernel[(progs_m, split)](xs, yq, *wsargs, prepared.words, ab, sg, secs["scale"], m, width, B,
                                            lp, n_tiles, tps, NG=tile, SIGN_TAB=cfg.e8p == "sign_table", **common)
    else:
        f = 32 // prepared.wst
        _grid_gemv_kernel[(progs_m, split)](xs, yq, *wsargs, prepared.words, secs["scale"], m, width, B, lp, n_tiles,
                                            tps, float((1 << int(p["bits"])) - 1), WST=prepared.wst, F=f, NU=tile,
                                            **common)
    return _output(prepared, yq, x2.dtype, bias, cfg.transform)


def _gemv_grid(prepared: PreparedQuip, B: int, tile: int, cfg: GemvConfig, dev: torch.device) -> tuple[Any, ...]:
    """The GEMV launch geometry shared by every kernel: (width, tile, n_tiles, progs_m, split, tiles per split,
    the f32 output yq [B, m], the split-K workspace arguments: yq three times as placeholders without a split)."""
    m = prepared.shape[0]
    width = prepared.words.shape[1]
    tile = min(tile, width)
    n_tiles = width // tile
    progs_m = triton.cdiv(m, cfg.BM)
    split, tps = split_for(dev, progs_m, n_tiles, cfg.split)
    ws = prepared.workspace() if split > 1 else None
    yq = torch.empty((B, m), dtype=torch.float32, device=dev)
    wsargs = (ws.ws, ws.wsi, ws.cnt) if ws else (yq, yq, yq)
    return width, tile, n_tiles, progs_m, split, tps, yq, wsargs


def _output(prepared: PreparedQuip, yq: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None,
            transform: str) -> torch.Tensor:
    """y = sv ∘ D_m(yq) (+ bias) in ``dtype``: the output transform every GEMV ends with."""
    m = prepared.shape[0]
    y = torch.empty((yq.shape[0], m), dtype=dtype, device=yq.device)
    _rotate(yq, y, m, int(prepared.params["log2_hm"]), prepared.sections.get("factor_m"), None,
            prepared.sections["sv"], bias, 0, transform)
    return y


def _h2_ok(p: Mapping[str, Any], n: int) -> bool:
    """The f16x2 E8P12 GEMV's operand comes from the one-launch transform: its limits."""
    k = int(p["log2_hn"])
    return k <= _HAD_MAX_LOG2 and n >> k <= _WHT_MAX_A


def _matvec_h2(prepared: PreparedQuip, x2: torch.Tensor, bias: torch.Tensor | None, cfg: GemvConfig,
               alloc: Any) -> torch.Tensor:
    """Batch 1, E8P12: the input transform writes f16 pairs (and their scale), the f16x2 GEMV reads them."""
    m, n = prepared.shape
    p, secs = prepared.params, prepared.sections
    dev = x2.device
    lp = prepared.lp
    xs = alloc((1, lp), dtype=torch.float16, device=dev)
    xsc = torch.empty((1,), dtype=torch.float32, device=dev)
    _rotate(x2, xs, n, int(p["log2_hn"]), prepared.factor_nt, secs["su"], None, None, lp // 8, "wht", xsc)  # 1 row
    width, tile, n_tiles, progs_m, split, tps, yq, wsargs = _gemv_grid(prepared, 1, cfg.NG, cfg, dev)
    ab, sg = e8p_packed_tables(dev)
    _e8p_gemv_h2_kernel[(progs_m, split)](xs.view(torch.int32), xsc, yq, *wsargs, prepared.words, ab, sg,
                                          secs["scale"], m, width, n_tiles, tps, NG=tile, BM=cfg.BM,
                                          SPLIT=split > 1, SIGN_TAB=cfg.e8p == "h2", ASM=inline_asm_ok(dev),
                                          num_warps=cfg.num_warps)
    return _output(prepared, yq, x2.dtype, bias, cfg.transform)


def dequantize_prepared(prepared: PreparedQuip, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dense W of a prepared tensor, bit-identical to quip.md §5 / §10.5 (then RNE)."""
    return dequantize(prepared.params, prepared.sections, prepared.shape, out_dtype)
