"""Triton decoding of codec ``quip`` v1/v2: bit-exact dequantization, and the transform-the-activation matvec.

The decode of spec/codecs/quip.md §5 is a pipeline of small kernels, each one
literal f32 operation per element so that the result is bit-identical to the
Numba reference decoder (launched with ``enable_fp_fusion=False``):

1. ``_grid_kernel``: Qhat[r, j] = f32(2q - (2^b - 1)) * scale[r];
2. along n (each row), then along m (each column): one ``_butterfly_kernel``
   launch per Walsh-Hadamard stage (half = 1, 2, 4, ...; the last stage also
   multiplies by c_k), then ``_factor_kernel`` (sequential f32 accumulation)
   when the dimension has an odd factor; the same kernels serve rows and
   columns through (vector stride, element stride);
3. ``_sign_kernel``: times f32(sv[r] * su[c]).

Version 2 (quip.md §10): codebook "e8p12" replaces step 1 by ``_e8p_kernel``
(the 16-bit code's lattice coordinate ``t / 4``, from the 256-row table, times
the row scale), and f16/f32 diagonals replace step 3 by ``_diag_kernel``
(``(x * sv[r]) * su[c]``). The kernels dispatch on the section dtypes, which
validation ties to the version: e8p12 codes are the only 16-bit ``codes``, and
i8 signs give the same bits on either step-3 kernel.

:func:`matvec` computes ``y = W x`` the QuIP way without forming W:
``y = sv * D_m (scale * (Qint (D_n^T (su * x))))`` (f32, not bit-identical to
``dequantize(...) @ x``, but the same linear map): two transforms of the
activations and a GEMV over the packed codes (``_grid_matvec_kernel``). On a
GPU the per-stage launches should be fused into one shared-memory FWHT per
vector; the interpreter path here is for correctness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from ..decoder.e8p import abs_table, odd_rows
from ..decoder.quip import hadamard_constant
from .spqr import to_device

__all__ = ["PreparedQuip", "dequantize", "matvec", "prepare", "to_device", "transform"]

_OPTS = {"enable_fp_fusion": False}


@triton.jit
def _grid_kernel(codes_ptr, scale_ptr, out_ptr, m, n, words,
                 BITS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    rmask = rows < m
    mask = rmask[:, None] & (cols < n)[None, :]
    rows64 = rows.to(tl.int64)
    bitpos = cols * BITS
    q = bitpos >> 5
    s = (bitpos & 31).to(tl.uint32)
    base = codes_ptr + rows64[:, None] * words + q[None, :]
    w0 = tl.load(base, mask=mask, other=0).to(tl.uint32, bitcast=True)
    straddle = (s + BITS) > 32
    w1 = tl.load(base + 1, mask=mask & straddle[None, :], other=0).to(tl.uint32, bitcast=True)
    v = (w0 >> s[None, :]) | tl.where(straddle[None, :], w1 << ((32 - s) & 31)[None, :], 0)
    code = (v & ((1 << BITS) - 1)).to(tl.int32)
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
def _e8p_matvec_kernel(x_ptr, y_ptr, codes_ptr, alpha_ptr, odd_ptr, scale_ptr, m, n, groups,
                       BM: tl.constexpr, BK: tl.constexpr):
    """y[b, r] = scale[r] * sum_j (t(r, j) / 4) * x[b, j], straight from the 16-bit codes."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < m
    rows64 = rows.to(tl.int64)
    acc = tl.zeros((BM, BK), dtype=tl.float32)
    for k0 in range(0, n, BK):
        cols = k0 + tl.arange(0, BK)
        cmask = cols < n
        mask = rmask[:, None] & cmask[None, :]
        c = tl.load(codes_ptr + rows64[:, None] * groups + (cols // 8)[None, :], mask=mask, other=0)
        t = _e8p_point(c.to(tl.int32) & 0xFFFF, (cols % 8)[None, :], alpha_ptr, odd_ptr, mask)
        xv = tl.load(x_ptr + b * n + cols, mask=cmask, other=0.0)
        acc += tl.where(mask, t.to(tl.float32) * 0.25, 0.0) * xv[None, :]
    sc = tl.load(scale_ptr + rows, mask=rmask, other=0.0)
    tl.store(y_ptr + b * m + rows64, tl.sum(acc, axis=1) * sc, mask=rmask)


@triton.jit
def _grid_matvec_kernel(x_ptr, y_ptr, codes_ptr, scale_ptr, m, n, words,
                        BITS: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """y[b, r] = scale[r] * sum_j f32(2 code[r, j] - (2^b - 1)) * x[b, j], straight from packed codes."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < m
    rows64 = rows.to(tl.int64)
    acc = tl.zeros((BM, BK), dtype=tl.float32)
    for k0 in range(0, n, BK):
        cols = k0 + tl.arange(0, BK)
        cmask = cols < n
        mask = rmask[:, None] & cmask[None, :]
        bitpos = cols * BITS
        q = bitpos >> 5
        s = (bitpos & 31).to(tl.uint32)
        base = codes_ptr + rows64[:, None] * words + q[None, :]
        w0 = tl.load(base, mask=mask, other=0).to(tl.uint32, bitcast=True)
        straddle = (s + BITS) > 32
        w1 = tl.load(base + 1, mask=mask & straddle[None, :], other=0).to(tl.uint32, bitcast=True)
        v = (w0 >> s[None, :]) | tl.where(straddle[None, :], w1 << ((32 - s) & 31)[None, :], 0)
        g = (2 * (v & ((1 << BITS) - 1)).to(tl.int32) - ((1 << BITS) - 1)).to(tl.float32)
        xv = tl.load(x_ptr + b * n + cols, mask=cmask, other=0.0)
        acc += tl.where(mask, g, 0.0) * xv[None, :]
    sc = tl.load(scale_ptr + rows, mask=rmask, other=0.0)
    tl.store(y_ptr + b * m + rows64, tl.sum(acc, axis=1) * sc, mask=rmask)


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def transform(x: torch.Tensor, along_rows: bool, log2_h: int, factor: torch.Tensor | None) -> torch.Tensor:
    """Apply D = F kron H_norm (quip.md §5.2) to every row (or column) of the f32 matrix x; returns the result.

    ``x`` is modified in place when there is no factor; the factor step writes a new tensor.
    """
    rows, cols = x.shape
    nvec, length = (rows, cols) if along_rows else (cols, rows)
    sv_, se_ = (cols, 1) if along_rows else (1, cols)
    h = 1 << log2_h
    BV, BP = 16, 64
    for s in range(log2_h):
        last = s == log2_h - 1
        _butterfly_kernel[(_ceil_div(nvec, BV), _ceil_div(length // 2, BP))](
            x, nvec, length // 2, sv_, se_, 1 << s, float(hadamard_constant(log2_h)),
            LAST=last, BV=BV, BP=BP, **_OPTS)
    if factor is not None and length // h > 1:
        y = torch.empty_like(x)
        _factor_kernel[(_ceil_div(nvec, BV), _ceil_div(h, BP))](
            x, y, factor.contiguous(), nvec, length // h, h, sv_, se_, BV=BV, BH=BP, **_OPTS)
        x = y
    return x


def _codes(secs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    c = secs["codes"]
    if c.dtype == torch.uint32:
        return c.view(torch.int32)
    return c.view(torch.int16) if c.dtype == torch.uint16 else c


def _is_e8p(secs: Mapping[str, torch.Tensor]) -> bool:
    """Validated sections: only codebook "e8p12" (v2) has 16-bit codes."""
    return secs["codes"].dtype in (torch.int16, torch.uint16)


_TABLES: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def e8p_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha int32 [256 * 8] = 2A row-major, odd int32 [256]) on ``device``, built once per device."""
    key = str(device)
    if key not in _TABLES:
        alpha = torch.from_numpy(abs_table().astype("int32").reshape(-1).copy()).to(device)
        odd = torch.from_numpy(odd_rows().astype("int32").copy()).to(device)
        _TABLES[key] = (alpha, odd)
    return _TABLES[key]


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
    grid = (_ceil_div(m, BR), _ceil_div(n, BC))
    if _is_e8p(secs):
        alpha, odd = e8p_tables(codes.device)
        _e8p_kernel[grid](codes, alpha, odd, secs["scale"], x, m, n, codes.shape[1], BR=BR, BC=BC, **_OPTS)
    else:
        _grid_kernel[grid](codes, secs["scale"], x, m, n, codes.shape[1], BITS=int(params["bits"]), BR=BR, BC=BC,
                           **_OPTS)
    x = transform(x, True, int(params["log2_hn"]), secs.get("factor_n"))
    x = transform(x, False, int(params["log2_hm"]), secs.get("factor_m"))
    if _is_real_diag(secs):
        _diag_kernel[grid](x, secs["sv"], secs["su"], m, n, BR=BR, BC=BC, **_OPTS)
    else:
        _sign_kernel[grid](x, secs["sv"], secs["su"], m, n, BR=BR, BC=BC, **_OPTS)
    return x if out_dtype == torch.float32 else x.to(out_dtype)


@dataclass
class PreparedQuip:
    """Sections on the device and F_n^T (the factor of D_n^T), built once."""

    params: dict[str, Any]
    shape: tuple[int, int]
    sections: dict[str, torch.Tensor]
    factor_nt: torch.Tensor | None


def prepare(params: Mapping[str, Any], sections: Mapping[str, Any], shape: tuple[int, int],
            device: str | torch.device = "cuda") -> PreparedQuip:
    """Move sections to ``device`` once (the codes stay packed; the matvec reads them directly)."""
    m, n = (int(v) for v in shape)
    secs = to_device(sections, device)
    fn = secs.get("factor_n")
    return PreparedQuip(dict(params), (m, n), secs, fn.T.contiguous() if fn is not None else None)


def matvec(prepared: PreparedQuip, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for x [B, n] or [n] via the incoherent basis: two FWHTs instead of a dense W."""
    m, n = prepared.shape
    p, secs = prepared.params, prepared.sections
    squeeze = x.dim() == 1
    x2 = x.reshape(1, n) if squeeze else x
    if x2.shape[-1] != n:
        raise ValueError(f"x has {x2.shape[-1]} features, weight expects {n}")
    xs = (x2.to(torch.float32) * secs["su"].to(torch.float32)[None, :]).contiguous()
    xs = transform(xs, True, int(p["log2_hn"]), prepared.factor_nt)  # rows of xs <- D_n^T x
    B = xs.shape[0]
    y = torch.empty((B, m), dtype=torch.float32, device=xs.device)
    if B:
        codes = _codes(secs)
        BM, BK = 16, 64
        if _is_e8p(secs):
            alpha, odd = e8p_tables(codes.device)
            _e8p_matvec_kernel[(_ceil_div(m, BM), B)](xs, y, codes, alpha, odd, secs["scale"], m, n, codes.shape[1],
                                                      BM=BM, BK=BK)
        else:
            _grid_matvec_kernel[(_ceil_div(m, BM), B)](xs, y, codes, secs["scale"], m, n, codes.shape[1],
                                                       BITS=int(p["bits"]), BM=BM, BK=BK)
    y = transform(y.contiguous(), True, int(p["log2_hm"]), secs.get("factor_m"))  # rows <- D_m y
    y = y * secs["sv"].to(torch.float32)[None, :]
    if bias is not None:
        y = y + bias.to(torch.float32)
    y = y.to(x.dtype)
    return y.reshape(m) if squeeze else y
