"""Triton decoding of codec ``squeezellm`` v1: bit-exact dequantization and a LUT matvec.

Entry points:

* :func:`dequantize` — spec sections -> dense f32/f16/bf16 matrix, bit-identical to
  spec/codecs/squeezellm.md §5 (f16/bf16 are RNE casts of the f32 decoded tensor);
* :func:`prepare` + :func:`matvec` — ``y = x @ W.T (+ bias)`` straight from the
  packed indices and the per-row LUT (W is never materialised); outliers are
  added from the CSR as ``val * x[col]`` terms.

Everything runs under ``TRITON_INTERPRET=1`` on CPU tensors (the test path).
Sections are moved with :func:`spqrfmt.kernels.spqr.to_device` (u32 as int32 views).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from .spqr import _u32, _unsigned, to_device

__all__ = ["PreparedSqueezeLLM", "dequantize", "matvec", "prepare", "to_device"]


@triton.jit
def _dequant_kernel(codes_ptr, lut_ptr, out_ptr, m, n, words,
                    BITS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """out[r, j] = f32(lut[r, unpack(codes[r], j)]) (squeezellm.md §5 step 1)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = (rows < m)[:, None] & (cols < n)[None, :]
    rows64 = rows.to(tl.int64)
    bitpos = cols * BITS
    q = bitpos >> 5
    s = (bitpos & 31).to(tl.uint32)
    base = codes_ptr + rows64[:, None] * words + q[None, :]
    w0 = tl.load(base, mask=mask, other=0).to(tl.uint32, bitcast=True)
    straddle = (s + BITS) > 32
    w1 = tl.load(base + 1, mask=mask & straddle[None, :], other=0).to(tl.uint32, bitcast=True)
    v = (w0 >> s[None, :]) | tl.where(straddle[None, :], w1 << ((32 - s) & 31)[None, :], 0)
    code = (v & ((1 << BITS) - 1)).to(tl.int64)
    val = tl.load(lut_ptr + rows64[:, None] * (1 << BITS) + code, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows64[:, None] * n + cols[None, :], val, mask=mask)


@triton.jit
def _outlier_add_kernel(out_ptr, rows_ptr, cols_ptr, vals_ptr, nnz, n, BE: tl.constexpr):
    """out[row[e], col[e]] = out[...] + f32(val[e]): one f32 add per entry (step 2); positions are unique."""
    e = tl.program_id(0) * BE + tl.arange(0, BE)
    mask = e < nnz
    r = tl.load(rows_ptr + e, mask=mask, other=0)
    c = tl.load(cols_ptr + e, mask=mask, other=0)
    dst = out_ptr + r * n + c
    cur = tl.load(dst, mask=mask, other=0.0)
    v = tl.load(vals_ptr + e, mask=mask, other=0.0).to(tl.float32)
    tl.store(dst, cur + v, mask=mask)


@triton.jit
def _matvec_kernel(x_ptr, y_ptr, bias_ptr, codes_ptr, lut_ptr, orp_ptr, orow_ptr, ocol_ptr, oval_ptr,
                   m, n, words, HAS_BIAS: tl.constexpr, BITS: tl.constexpr,
                   BM: tl.constexpr, BK: tl.constexpr, E: tl.constexpr):
    """y[b, r] = sum_j lut[r, code[r, j]] * x[b, j] + sum_e val[e] * x[b, col[e]] (+ bias[r]).

    One program per (block of BM rows, activation row b).
    """
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
        code = (v & ((1 << BITS) - 1)).to(tl.int64)
        wv = tl.load(lut_ptr + rows64[:, None] * (1 << BITS) + code, mask=mask, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + b * n + cols, mask=cmask, other=0.0).to(tl.float32)
        acc += wv * xv[None, :]
    out = tl.sum(acc, axis=1)
    # Sparse residuals of this row block, E entries at a time (one-hot row match).
    r_end = tl.minimum(pid_m * BM + BM, m)
    e_lo = tl.load(orp_ptr + pid_m * BM)
    e_hi = tl.load(orp_ptr + r_end)
    for e0 in range(e_lo, e_hi, E):
        ee = e0 + tl.arange(0, E)
        emask = ee < e_hi
        er = tl.load(orow_ptr + ee, mask=emask, other=-1)
        ec = tl.load(ocol_ptr + ee, mask=emask, other=0).to(tl.int64)
        ev = tl.load(oval_ptr + ee, mask=emask, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + b * n + ec, mask=emask, other=0.0).to(tl.float32)
        hit = (er[None, :] == rows[:, None]).to(tl.float32)
        out += tl.sum(hit * (ev * xv)[None, :], axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + b * m + rows64, out.to(y_ptr.dtype.element_ty), mask=rmask)


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def _outlier_coo(secs: Mapping[str, torch.Tensor], m: int) -> tuple[torch.Tensor, torch.Tensor]:
    rp = _u32(secs["outlier_row_ptr"])
    rows = torch.repeat_interleave(torch.arange(m, device=rp.device), rp[1:] - rp[:-1])
    return rows, _unsigned(secs["outlier_col"])


def _codes(secs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    c = secs["codes"]
    return c.view(torch.int32) if c.dtype == torch.uint32 else c


def dequantize(params: Mapping[str, Any], sections_on_device: Mapping[str, torch.Tensor], shape: tuple[int, int],
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decoded tensor [m, n] of a validated squeezellm tensor (bit-exact f32, then an RNE cast)."""
    m, n = (int(v) for v in shape)
    secs = dict(sections_on_device)
    codes = _codes(secs)
    out = torch.empty((m, n), dtype=torch.float32, device=codes.device)
    BR, BC = 16, 64
    _dequant_kernel[(_ceil_div(m, BR), _ceil_div(n, BC))](
        codes, secs["lut"].contiguous(), out, m, n, codes.shape[1], BITS=int(params["bits"]), BR=BR, BC=BC,
        enable_fp_fusion=False)
    nnz = secs["outlier_val"].numel()
    if nnz:
        rows, cols = _outlier_coo(secs, m)
        BE = 128
        _outlier_add_kernel[(_ceil_div(nnz, BE),)](out, rows.contiguous(), cols.contiguous(), secs["outlier_val"],
                                                   nnz, n, BE=BE, enable_fp_fusion=False)
    return out if out_dtype == torch.float32 else out.to(out_dtype)


@dataclass
class PreparedSqueezeLLM:
    """Sections on the device plus the COO row index of the residuals (built once at load time)."""

    params: dict[str, Any]
    shape: tuple[int, int]
    sections: dict[str, torch.Tensor]
    o_row_ptr: torch.Tensor
    o_rows: torch.Tensor
    o_cols: torch.Tensor


def prepare(params: Mapping[str, Any], sections: Mapping[str, Any], shape: tuple[int, int],
            device: str | torch.device = "cuda") -> PreparedSqueezeLLM:
    """Move sections to ``device`` once and expand the CSR row index for the matvec."""
    m, n = (int(v) for v in shape)
    secs = to_device(sections, device)
    rows, cols = _outlier_coo(secs, m)
    return PreparedSqueezeLLM(dict(params), (m, n), secs, _u32(secs["outlier_row_ptr"]).to(torch.int32).contiguous(),
                              rows.to(torch.int32).contiguous(), cols.to(torch.int32).contiguous())


def matvec(prepared: PreparedSqueezeLLM, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for x [B, n] or [n]; f32 accumulation, output in x's dtype."""
    m, n = prepared.shape
    squeeze = x.dim() == 1
    x2 = (x.reshape(1, n) if squeeze else x).contiguous()
    if x2.shape[-1] != n:
        raise ValueError(f"x has {x2.shape[-1]} features, weight expects {n}")
    B = x2.shape[0]
    y = torch.empty((B, m), dtype=x.dtype, device=x.device)
    if B:
        codes = _codes(prepared.sections)
        BM, BK = 16, 64
        _matvec_kernel[(_ceil_div(m, BM), B)](
            x2, y, bias if bias is not None else y, codes, prepared.sections["lut"].contiguous(), prepared.o_row_ptr,
            prepared.o_rows, prepared.o_cols, prepared.sections["outlier_val"], m, n, codes.shape[1],
            HAS_BIAS=bias is not None, BITS=int(prepared.params["bits"]), BM=BM, BK=BK, E=32)
    return y.reshape(m) if squeeze else y
