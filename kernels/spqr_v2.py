"""GPU dequantization of codec ``spqr`` v2 (spec/codecs/spqr.md §8), bit-identical to the spec.

v2 adds ``arith = "f16"`` (round to f16 after every operation) and
``outlier_op = "add"`` (the outlier value is added to the dense value) to v1.
:func:`spqrfmt.kernels.spqr.dequantize` calls :func:`dequantize` here whenever
the params ask for either; v1 keeps its own kernel.

Two Triton kernels, launched with ``enable_fp_fusion=False`` and with every
f16 rounding an explicit round-to-nearest-even cast (``fp_downcast_rounding="rtne"``),
so the GPU and ``TRITON_INTERPRET=1`` give the same bits:

* v1's ``_spqr_planes.dequant_kernel`` with ``ARITH_F16`` -- step 2 for every
  element, scattered through ``perm`` (one dense kernel for both versions);
* :func:`outlier_kernel` -- step 3: recomputes the dense value at each outlier
  position with the same arithmetic, applies replace or add, and overwrites
  that element (so the output dtype never holds an intermediate).

The first-level statistics (step 1) are computed with torch ops, each a
separate IEEE kernel (nothing contracted), ``.half()`` being the RNE rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
import triton.language as tl

from . import _spqr_planes as KP
from ._common import packed_code
from ._spqr_sections import outlier_coo, stat_f32


@triton.jit
def _rne16(x):
    """f32 -> nearest-even f16 -> f32 (spec 'rne16')."""
    return x.to(tl.float16, fp_downcast_rounding="rtne").to(tl.float32)


@triton.jit
def _dense(code, zv, sv, ARITH_F16: tl.constexpr):
    """Step 2: t = f32(q) - Z; w = t * S; with ARITH_F16 each result rounded to f16."""
    t = code.to(tl.float32) - zv
    if ARITH_F16:
        t = _rne16(t)
    w = t * sv
    if ARITH_F16:
        w = _rne16(w)
    return w


@triton.jit
def _to_out(wv, OUT_BF16: tl.constexpr, OUT_F16: tl.constexpr):
    """The decoded f32 value in the output dtype; bf16 rounded with integer ops (the interpreter truncates)."""
    if OUT_BF16:
        b = wv.to(tl.uint32, bitcast=True)
        rb = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        rb = tl.where(wv != wv, (b >> 16) | 0x40, rb)
        res = rb.to(tl.uint16).to(tl.int16, bitcast=True)
    elif OUT_F16:
        res = wv.to(tl.float16, fp_downcast_rounding="rtne")
    else:
        res = wv
    return res


@triton.jit
def outlier_kernel(codes_ptr, s_ptr, z_ptr, perm_ptr, orow_ptr, ocol_ptr, oval_ptr, out_ptr, nnz, m, n, words, gs,
                   BITS: tl.constexpr, HAS_PERM: tl.constexpr, OUT_BF16: tl.constexpr, OUT_F16: tl.constexpr,
                   ARITH_F16: tl.constexpr, ADD: tl.constexpr, BE: tl.constexpr):
    """Step 3 for outliers e of one block: replace, or add to the recomputed dense value (rounded with ARITH_F16)."""
    e = tl.program_id(0) * BE + tl.arange(0, BE)
    emask = e < nnz
    r64 = tl.load(orow_ptr + e, mask=emask, other=0)
    c = tl.load(ocol_ptr + e, mask=emask, other=0)
    v = tl.load(oval_ptr + e, mask=emask, other=0.0).to(tl.float32)
    if ADD:
        code = packed_code(codes_ptr, r64, c, words, emask, BITS)
        sidx = (c // gs) * m + r64
        sv = tl.load(s_ptr + sidx, mask=emask, other=0.0).to(tl.float32)
        zv = tl.load(z_ptr + sidx, mask=emask, other=0.0).to(tl.float32)
        a = _dense(code, zv, sv, ARITH_F16) + v
        if ARITH_F16:
            a = _rne16(a)
    else:
        a = v
    if HAS_PERM:
        dst = tl.load(perm_ptr + c, mask=emask, other=0).to(tl.int64)
    else:
        dst = c
    tl.store(out_ptr + r64 * n + dst, _to_out(a, OUT_BF16, OUT_F16), mask=emask)



def dequantize(params: Mapping[str, Any], sections_on_gpu: Mapping[str, torch.Tensor], shape: tuple[int, int],
               out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Decoded tensor [m, n] of a validated spqr v2 tensor, bit-identical to spqr.md §8 (then RNE-cast).

    ``params`` are the record's checked params (with ``arith`` and ``outlier_op``);
    sections as :func:`spqrfmt.kernels.spqr.to_device` returns them, already validated.
    """
    m, n = (int(v) for v in shape)
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    secs = dict(sections_on_gpu)
    codes = secs["codes"]
    if codes.dtype == torch.uint32:
        codes = codes.view(torch.int32)
    dev = codes.device
    f16 = params.get("arith", "f32") == "f16"
    add = params.get("outlier_op", "replace") == "add"
    S = stat_f32(params, secs, "scale", m).half().contiguous()  # exact: f16 values
    Z = stat_f32(params, secs, "zero", m).half().contiguous()
    out = torch.empty((m, n), dtype=out_dtype, device=dev)
    perm = secs.get("perm")
    if perm is not None:
        perm = perm.view(torch.int32) if perm.dtype == torch.uint32 else perm
    bf16 = out_dtype == torch.bfloat16
    out_k = out.view(torch.int16) if bf16 else out
    common = {"BITS": int(params["bits"]), "HAS_PERM": perm is not None, "OUT_BF16": bf16, "ARITH_F16": f16,
              "enable_fp_fusion": False}
    BR, BC = 16, 128
    KP.dequant_kernel[(triton.cdiv(m, BR), triton.cdiv(n, BC))](
        codes, S, Z, perm if perm is not None else codes, out_k, m, n, codes.shape[1], int(params["group_size"]),
        BR=BR, BC=BC, **common)
    vals = secs["outlier_val"]
    if vals.numel():
        rows, cols = outlier_coo(secs, m)
        BE = 256
        outlier_kernel[(triton.cdiv(vals.numel(), BE),)](
            codes, S, Z, perm if perm is not None else codes, rows.contiguous(), cols.contiguous(), vals, out_k,
            vals.numel(), m, n, codes.shape[1], int(params["group_size"]), OUT_F16=out_dtype == torch.float16,
            ADD=add, BE=BE, **common)
    return out


__all__ = ["dequantize", "outlier_kernel", "stat_f32"]
