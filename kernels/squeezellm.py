"""Triton decoding of codec ``squeezellm`` v1: bit-exact dequantization and a fused LUT matvec.

Entry points:

* :func:`dequantize` — spec sections -> dense f32/f16/bf16 matrix, bit-identical to
  spec/codecs/squeezellm.md §5 (f16/bf16 are RNE casts of the f32 decoded tensor);
* :func:`prepare` — the load-time layout the fused kernel reads (the file is untouched):
  codes in the strided field layout of ``_common`` (3-bit codes in 4-bit fields,
  5..7-bit in 8-bit fields: one shift and one mask per code, never a straddling
  field), the row tables widened to f32 ``[m, 2^b]`` (exact; 32..1024 bytes per row,
  L1-resident while a row block is processed), residual CSR kept as is;
* :func:`matvec` — ``y = x @ W.T (+ bias)`` for 1..16 activation rows; W is never
  written to memory. Batch 1: per weight one field extract, one table gather
  ``lut[r, code]`` (L1) and one FMA against an activation slice loaded once per tile
  and shared by the program's rows. Batch 2..16: each weight is looked up once into
  a ``[BM, NU]`` slice (exact in f16: the table is f16) and multiplied by ``tl.dot``.
  Residuals are added from the CSR in the same launch (``val * x[col]``, each row's
  entries shared among the column-split programs). Small matrices are split along
  the columns so every SM has work (partials summed in a zero-at-rest workspace);
* :func:`dequantize_prepared` — the dense matrix from the load-time layout (bit-exact).

Everything also runs under ``TRITON_INTERPRET=1`` on CPU tensors (the CI path).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import triton
import triton.language as tl

from ._common import (
    MAX_BATCH,
    SplitWorkspace,
    check_launch,
    dot_dtype,
    finish,
    fused_rows,
    gemv_out,
    gemv_rows,
    gemv_tiles,
    packed_code,
    repack_fields,
    round_out,
    split_for,
    to_device,
)
from ._common import inline_asm_ok as _inline_asm_ok

__all__ = ["GemvConfig", "PreparedSqueezeLLM", "dequantize", "dequantize_prepared", "matvec", "prepare",
           "to_device"]

_OPTS = {"enable_fp_fusion": False}


@triton.jit
def _dequant_kernel(codes_ptr, lut_ptr, out_ptr, m, n, words,
                    BITS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """out[r, j] = f32(lut[r, unpack(codes[r], j)]) from the spec layout (squeezellm.md §5 step 1)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = (rows < m)[:, None] & (cols < n)[None, :]
    rows64 = rows.to(tl.int64)
    code = packed_code(codes_ptr, rows64[:, None], cols[None, :], words, mask, BITS).to(tl.int64)
    val = tl.load(lut_ptr + rows64[:, None] * (1 << BITS) + code, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows64[:, None] * n + cols[None, :], val, mask=mask)


@triton.jit
def _residual_add_kernel(out_ptr, orp_ptr, ocol_ptr, oval_ptr, m, n, BM: tl.constexpr, EPR: tl.constexpr,
                         COL16: tl.constexpr):
    """out[r, col[e]] += f32(val[e]) for the CSR entries of BM rows: one f32 add each (§5 step 2)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < m
    lo = tl.load(orp_ptr + rows, mask=rmask, other=0)
    hi = tl.load(orp_ptr + rows + 1, mask=rmask, other=0)
    for e0 in range(0, tl.max(hi - lo, axis=0), EPR):
        ee, em, col = _csr_chunk(ocol_ptr, lo, hi, e0, EPR, COL16)
        dst = out_ptr + rows.to(tl.int64)[:, None] * n + col
        cur = tl.load(dst, mask=em, other=0.0)
        v = tl.load(oval_ptr + ee, mask=em, other=0.0).to(tl.float32)
        tl.store(dst, cur + v, mask=em)


@triton.jit
def _lut_tree(code, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, K: tl.constexpr):
    """``lut[code]`` for K = 2..16 entries held in registers (``l0 .. l{K-1}``, one per row, broadcast over the
    columns): a binary tree of selects on the code's bits. Exact (a select copies a value), and no memory
    access per weight: the table gather it replaces serialises in L1 when a warp's lanes span rows."""
    b0 = (code & 1) != 0
    v = tl.where(b0, l1, l0)
    if K >= 4:
        b1 = (code & 2) != 0
        v = tl.where(b1, tl.where(b0, l3, l2), v)
        if K >= 8:
            b2 = (code & 4) != 0
            v = tl.where(b2, tl.where(b1, tl.where(b0, l7, l6), tl.where(b0, l5, l4)), v)
            if K >= 16:
                hi = tl.where(b1, tl.where(b0, l11, l10), tl.where(b0, l9, l8))
                hi = tl.where((code & 4) != 0, tl.where(b1, tl.where(b0, l15, l14), tl.where(b0, l13, l12)), hi)
                v = tl.where((code & 8) != 0, hi, v)
    return v


@triton.jit
def _lut_entry(lrow, k: tl.constexpr, K: tl.constexpr):
    """Entry k of each row's table (entry K-1 past the table: never selected)."""
    return tl.load(lrow + min(k, K - 1))


_PRMT_HALF = """
prmt.b32 lo, {a0}, {a1}, {s};
prmt.b32 hi, {a2}, {a3}, {s};
prmt.b32 p, lo, hi, 0x5140;
prmt.b32 q, lo, hi, 0x7362;
mov.b32 {{{o0}, {o1}}}, p;
mov.b32 {{{o2}, {o3}}}, q;
"""
# 16 entries: bytes of entries 0-7 by the code's low 3 bits (bit 3 set: a sign-replicated byte, dropped), of 8-15
# by the code ^ 8 (t), then per byte the right one by a selector 0x3210 + 4 * bit 3 (u), lo and hi byte tables alike
_PRMT_HALF16 = """
prmt.b32 la, {a0}, {a1}, {s};
prmt.b32 lb, {a2}, {a3}, {t};
prmt.b32 lo, la, lb, {u};
prmt.b32 la, {a4}, {a5}, {s};
prmt.b32 lb, {a6}, {a7}, {t};
prmt.b32 hi, la, lb, {u};
prmt.b32 p, lo, hi, 0x5140;
prmt.b32 q, lo, hi, 0x7362;
mov.b32 {{{o0}, {o1}}}, p;
mov.b32 {{{o2}, {o3}}}, q;
"""
_ASM8 = tl.constexpr("{\n.reg .b32 s, lo, hi, p, q;\n"
                     + _PRMT_HALF.format(a0="$9", a1="$10", a2="$11", a3="$12", s="$8", o0="$0", o1="$1", o2="$2",
                                         o3="$3")
                     + "shr.u32 s, $8, 16;\n"
                     + _PRMT_HALF.format(a0="$9", a1="$10", a2="$11", a3="$12", s="s", o0="$4", o1="$5", o2="$6",
                                         o3="$7")
                     + "}")
# Two adjacent words A, B (pack=2: the (k, k + 1) pair of a tl.dot operand register) -> for each field c one
# register holding (A's weight, B's weight): selector words of interleaved nibbles (A.c, B.c, A.c+2, B.c+2, ...),
# so each prmt pair yields a finished f16x2 (22 instructions per 16 weights, no repacking after the asm)
_PAIR_HALF = """
prmt.b32 lo, $10, $12, {s};
prmt.b32 hi, $14, $16, {s};
prmt.b32 {o0}, lo, hi, 0x5140;
prmt.b32 {o1}, lo, hi, 0x7362;
"""
_ASM8P = tl.constexpr("{\n.reg .b32 s0, s1, sh, lo, hi;\n"
                      "shl.b32 sh, $9, 4;\nlop3.b32 s0, $8, sh, 0x0F0F0F0F, 0xE4;\n"
                      "shr.u32 sh, $8, 4;\nlop3.b32 s1, sh, $9, 0x0F0F0F0F, 0xE4;\n"
                      + _PAIR_HALF.format(s="s0", o0="$0", o1="$2") + _PAIR_HALF.format(s="s1", o0="$1", o1="$3")
                      + "shr.u32 s0, s0, 16;\nshr.u32 s1, s1, 16;\n"
                      + _PAIR_HALF.format(s="s0", o0="$4", o1="$6") + _PAIR_HALF.format(s="s1", o0="$5", o1="$7")
                      + "}")
_T16 = dict(a0="$9", a1="$10", a2="$11", a3="$12", a4="$13", a5="$14", a6="$15", a7="$16")
_ASM16 = tl.constexpr("{\n.reg .b32 s, t, u, t2, u2, la, lb, lo, hi, p, q;\n"
                      "xor.b32 t, $8, 0x88888888;\nshr.u32 u, $8, 1;\n"
                      "and.b32 u, u, 0x44444444;\nor.b32 u, u, 0x32103210;\n"
                      + _PRMT_HALF16.format(**_T16, s="$8", t="t", u="u", o0="$0", o1="$1", o2="$2", o3="$3")
                      + "shr.u32 s, $8, 16;\nshr.u32 t2, t, 16;\nshr.u32 u2, u, 16;\n"
                      + _PRMT_HALF16.format(**_T16, s="s", t="t2", u="u2", o0="$4", o1="$5", o2="$6", o3="$7")
                      + "}")


@triton.jit
def _prmt(a, b, sel):
    """PTX ``prmt.b32`` (default mode) on uint32: byte i = byte ``sel[4i..4i+2]`` of the 8 bytes {b, a},
    sign-replicated when bit 4i+3 is set. The interpreter's stand-in for the instruction, same bits."""
    out = tl.zeros_like(a)
    for i in tl.static_range(4):
        nib = (sel >> (4 * i)) & 0xF
        idx = nib & 7
        byte = (tl.where(idx < 4, a, b) >> ((idx & 3) * 8)) & 0xFF
        byte = tl.where((nib & 8) != 0, tl.where((byte & 0x80) != 0, 0xFF, 0), byte)
        out = out | (byte << (8 * i))
    return out


@triton.jit
def _prmt_quad(s, a0, a1, a2, a3, a4, a5, a6, a7, K: tl.constexpr):
    """f16 pairs (codes 0, 1) and (2, 3) of the 4 codes in the low nibbles of s, as two uint32 (as _ASM8/_ASM16)."""
    if K == 8:
        lo = _prmt(a0, a1, s)
        hi = _prmt(a2, a3, s)
    else:
        t = s ^ 0x8888
        u = ((s >> 1) & 0x4444) | 0x3210
        lo = _prmt(_prmt(a0, a1, s), _prmt(a2, a3, t), u)
        hi = _prmt(_prmt(a4, a5, s), _prmt(a6, a7, t), u)
    return _prmt(lo, hi, 0x5140), _prmt(lo, hi, 0x7362)


@triton.jit
def _half(p, SHIFT: tl.constexpr):
    return ((p >> SHIFT) & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)


@triton.jit
def _prmt_decode(wd, a0, a1, a2, a3, a4, a5, a6, a7, K: tl.constexpr, ASM: tl.constexpr, PAIR: tl.constexpr):
    """The 8 f16 weights ``lut[code]`` of the 8 nibble fields of each word of wd (K = 8 or 16 entries), as a tuple
    (field 0 first). The row table is held as byte planes (``a*``: the entries' low bytes 4 per word, then their
    high bytes): one ``prmt`` looks up 4 bytes, so 8 weights cost 9 instructions at K = 8 and 23 at K = 16 (the
    select tree: ~7 and ~15 per weight). Exact: bytes are copied."""
    if ASM:
        if K == 8 and PAIR:
            return tl.inline_asm_elementwise(_ASM8P, "=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r,r,r,r,r,r,r",
                                             [wd, a0, a1, a2, a3], dtype=(tl.float16,) * 8, is_pure=True, pack=2)
        if K == 8:
            return tl.inline_asm_elementwise(_ASM8, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r,r,r", [wd, a0, a1, a2, a3],
                                             dtype=(tl.float16,) * 8, is_pure=True, pack=1)
        return tl.inline_asm_elementwise(_ASM16, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r,r,r,r,r,r,r",
                                         [wd, a0, a1, a2, a3, a4, a5, a6, a7], dtype=(tl.float16,) * 8,
                                         is_pure=True, pack=1)
    w = wd.to(tl.uint32, bitcast=True)
    b0 = a0.to(tl.uint32, bitcast=True)
    b1 = a1.to(tl.uint32, bitcast=True)
    b2 = a2.to(tl.uint32, bitcast=True)
    b3 = a3.to(tl.uint32, bitcast=True)
    b4 = a4.to(tl.uint32, bitcast=True)
    b5 = a5.to(tl.uint32, bitcast=True)
    b6 = a6.to(tl.uint32, bitcast=True)
    b7 = a7.to(tl.uint32, bitcast=True)
    p0, p1 = _prmt_quad(w, b0, b1, b2, b3, b4, b5, b6, b7, K)
    p2, p3 = _prmt_quad(w >> 16, b0, b1, b2, b3, b4, b5, b6, b7, K)
    return (_half(p0, 0), _half(p0, 16), _half(p1, 0), _half(p1, 16), _half(p2, 0), _half(p2, 16), _half(p3, 0),
            _half(p3, 16))


@triton.jit
def _dequant_fields_kernel(w_ptr, lut_ptr, orp_ptr, ocol_ptr, oval_ptr, out_ptr, m, n, nw,
                           K: tl.constexpr, WST: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr,
                           EPR: tl.constexpr, COL16: tl.constexpr, OUT_BF16: tl.constexpr, TREE: tl.constexpr):
    """Dense W from the load-time layout, in the output dtype, bit-identical to §5.

    Each column j reads field j // nw of word j % nw. Residual positions are then
    rewritten by this program (it owns whole rows of its column tile): the f32 sum
    lut + val, rounded once to the output dtype.
    """
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    rmask = rows < m
    cmask = cols < n
    mask = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)
    wd = tl.load(w_ptr + rows64[:, None] * nw + (cols % nw)[None, :], mask=mask, other=0)
    code = (wd >> ((cols // nw) * WST)[None, :]) & (K - 1)
    if TREE:  # each row's table in registers (rows past m read row m - 1: never stored)
        lrow = lut_ptr + tl.minimum(rows64, m - 1)[:, None] * K
        v = _lut_tree(code, _lut_entry(lrow, 0, K), _lut_entry(lrow, 1, K), _lut_entry(lrow, 2, K),
                      _lut_entry(lrow, 3, K), _lut_entry(lrow, 4, K), _lut_entry(lrow, 5, K), _lut_entry(lrow, 6, K),
                      _lut_entry(lrow, 7, K), _lut_entry(lrow, 8, K), _lut_entry(lrow, 9, K),
                      _lut_entry(lrow, 10, K), _lut_entry(lrow, 11, K), _lut_entry(lrow, 12, K),
                      _lut_entry(lrow, 13, K), _lut_entry(lrow, 14, K), _lut_entry(lrow, 15, K), K)
    else:
        v = tl.load(lut_ptr + rows64[:, None] * K + code, mask=mask, other=0.0)
    tl.store(out_ptr + rows64[:, None] * n + cols[None, :], round_out(v, out_ptr, OUT_BF16), mask=mask)
    tl.debug_barrier()  # the dense stores above are visible before residual positions are rewritten
    # residuals falling in this column tile (scanning each row's CSR; entries are few)
    lo = tl.load(orp_ptr + rows, mask=rmask, other=0)
    hi = tl.load(orp_ptr + rows + 1, mask=rmask, other=0)
    c_lo = tl.program_id(1) * BC
    for e0 in range(0, tl.max(hi - lo, axis=0), EPR):
        ee, em, col = _csr_chunk(ocol_ptr, lo, hi, e0, EPR, COL16)
        em = em & (col >= c_lo) & (col < c_lo + BC)
        wo = tl.load(w_ptr + rows64[:, None] * nw + col % nw, mask=em, other=0)
        co = (wo >> ((col // nw) * WST)) & (K - 1)
        d = tl.load(lut_ptr + rows64[:, None] * K + co, mask=em, other=0.0)
        d = d + tl.load(oval_ptr + ee, mask=em, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows64[:, None] * n + col, round_out(d, out_ptr, OUT_BF16), mask=em)


@triton.jit
def _csr_chunk(ocol_ptr, lo, hi, e0, EPR: tl.constexpr, COL16: tl.constexpr):
    """Entries lo + e0 .. lo + e0 + EPR - 1 of each row's CSR range [lo, hi): (indices, mask, columns)."""
    ee = lo[:, None] + e0 + tl.arange(0, EPR)[None, :]
    em = ee < hi[:, None]
    col = tl.load(ocol_ptr + ee, mask=em, other=0).to(tl.int32)
    if COL16:
        col = col & 0xFFFF
    return ee, em, col


@triton.jit
def _residuals(out, rc, rmask, orp_ptr, ocol_ptr, oval_ptr, x_ptr, x_sb, bb, bmask,
               EPR: tl.constexpr, COL16: tl.constexpr, BATCHED: tl.constexpr):
    """out += sum over this program's share of each row's CSR entries of f32(val) * x[col]."""
    lo = tl.load(orp_ptr + rc)
    hi = tl.where(rmask, tl.load(orp_ptr + rc + 1), lo)
    nsplit = tl.num_programs(1)
    per = (hi - lo + nsplit - 1) // nsplit
    my_lo = lo + tl.program_id(1) * per
    my_hi = tl.minimum(my_lo + per, hi)
    cnt = tl.maximum(my_hi - my_lo, 0)
    for e0 in range(0, tl.max(cnt, axis=0), EPR):
        ee, em, col = _csr_chunk(ocol_ptr, my_lo, my_hi, e0, EPR, COL16)
        val = tl.load(oval_ptr + ee, mask=em, other=0.0).to(tl.float32)
        if BATCHED:
            xv = tl.load(x_ptr + col[:, :, None] + bb[None, None, :] * x_sb,
                         mask=em[:, :, None] & bmask[None, None, :], other=0.0).to(tl.float32)
            out += tl.sum(val[:, :, None] * xv, axis=1)
        else:
            xv = tl.load(x_ptr + col, mask=em, other=0.0).to(tl.float32)
            out += tl.sum(val * xv, axis=1)
    return out


@triton.jit(do_not_specialize=["m", "n", "nb", "n_tiles", "tiles_per_split"])
def _lut_gemv_kernel(x_ptr, y_ptr, bias_ptr, ws_ptr, wsi_ptr, cnt_ptr, w_ptr, lut_ptr, ptab_ptr, orp_ptr, ocol_ptr,
                     oval_ptr,
                     m, n, nw, nb, x_sb, n_tiles, tiles_per_split,
                     K: tl.constexpr, WST: tl.constexpr, F: tl.constexpr, NU: tl.constexpr, BM: tl.constexpr,
                     BB: tl.constexpr, EPR: tl.constexpr, DOT: tl.constexpr, DOT_DT: tl.constexpr,
                     IEEE: tl.constexpr, EVEN: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
                     COL16: tl.constexpr, TREE: tl.constexpr, PRMT: tl.constexpr, ASM: tl.constexpr,
                     PAIR: tl.constexpr):
    """y[b, r] = sum_j lut[r, code(r, j)] x[b, j] + sum_e val[e] x[b, col[e]] (+ bias[r]).

    Grid (row blocks of BM, column splits). A tile is NU words of BM rows; field c of
    the tile covers columns c*nw + (t*NU .. t*NU+NU-1), contiguous in x. Rows past m
    are clamped for loads (codes and tables are always valid) and never stored. PRMT (K = 8 / 16, WST = 4):
    the weights of a word come from ``_prmt_decode`` on the row's byte-plane table (``ptab``), in f16.
    """
    rows, rmask, rc64, bb, bmask = gemv_rows(m, nb, BM, BB)
    wrow = w_ptr + rc64[:, None] * nw
    lrow = lut_ptr + rc64[:, None] * K
    uu = tl.arange(0, NU)
    if DOT:
        acc = tl.zeros((BM, BB), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, NU), dtype=tl.float32)
    if PRMT:  # the byte-plane tables in registers: K / 2 words per row, loaded once
        prow = ptab_ptr + rc64[:, None] * (K // 2)
        a0, a1, a2, a3 = (_lut_entry(prow, 0, K // 2), _lut_entry(prow, 1, K // 2), _lut_entry(prow, 2, K // 2),
                          _lut_entry(prow, 3, K // 2))
        a4, a5, a6, a7 = (_lut_entry(prow, 4, K // 2), _lut_entry(prow, 5, K // 2), _lut_entry(prow, 6, K // 2),
                          _lut_entry(prow, 7, K // 2))
    elif TREE:  # the row tables in registers (K <= 16), loaded once
        l0, l1, l2, l3 = (_lut_entry(lrow, 0, K), _lut_entry(lrow, 1, K), _lut_entry(lrow, 2, K),
                          _lut_entry(lrow, 3, K))
        l4, l5, l6, l7 = (_lut_entry(lrow, 4, K), _lut_entry(lrow, 5, K), _lut_entry(lrow, 6, K),
                          _lut_entry(lrow, 7, K))
        l8, l9, l10, l11 = (_lut_entry(lrow, 8, K), _lut_entry(lrow, 9, K), _lut_entry(lrow, 10, K),
                            _lut_entry(lrow, 11, K))
        l12, l13, l14, l15 = (_lut_entry(lrow, 12, K), _lut_entry(lrow, 13, K), _lut_entry(lrow, 14, K),
                              _lut_entry(lrow, 15, K))
    t_lo, t_hi = gemv_tiles(n_tiles, tiles_per_split)
    for t in range(t_lo, t_hi):
        wi = t * NU + uu
        wd = tl.load(wrow + wi[None, :])
        if PRMT:
            hs = _prmt_decode(wd, a0, a1, a2, a3, a4, a5, a6, a7, K, ASM, PAIR)
        for c in tl.static_range(F):
            if PRMT:
                v = hs[c]
            elif TREE:
                code = (wd >> (c * WST)) & (K - 1)
                v = _lut_tree(code, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, K)
            else:
                v = tl.load(lrow + ((wd >> (c * WST)) & (K - 1)))
            cols = c * nw + wi
            if DOT:
                if EVEN:
                    xt = tl.load(x_ptr + bb[None, :] * x_sb + cols[:, None], mask=bmask[None, :], other=0.0)
                else:
                    xt = tl.load(x_ptr + bb[None, :] * x_sb + cols[:, None],
                                 mask=(cols < n)[:, None] & bmask[None, :], other=0.0)
                if IEEE:
                    acc = tl.dot(v.to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(v.to(DOT_DT), xt.to(DOT_DT), acc)
            else:
                if EVEN:
                    xv = tl.load(x_ptr + cols).to(tl.float32)
                else:
                    xv = tl.load(x_ptr + cols, mask=cols < n, other=0.0).to(tl.float32)
                acc += v.to(tl.float32) * xv[None, :]
    out, yoff, ymask = gemv_out(acc, rows, rmask, bb, bmask, m, DOT)
    out = _residuals(out, rc64, rmask, orp_ptr, ocol_ptr, oval_ptr, x_ptr, x_sb, bb, bmask, EPR, COL16, DOT)
    finish(out, y_ptr, yoff, ymask, bias_ptr, rows, rmask, bias_ptr, ws_ptr, wsi_ptr, cnt_ptr, tl.program_id(0),
           SPLIT, HAS_BIAS, False, not DOT)


def _codes(secs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    c = secs["codes"]
    return c.view(torch.int32) if c.dtype == torch.uint32 else c


def _i32(t: torch.Tensor) -> torch.Tensor:
    """u32/u16 index sections as same-width signed views the kernels mask back to unsigned."""
    if t.dtype == torch.uint32:
        return t.view(torch.int32)
    if t.dtype == torch.uint16:
        return t.view(torch.int16)
    return t


def _residual_sizes(secs: Mapping[str, torch.Tensor], m: int) -> None:
    nnz = secs["outlier_val"].numel()
    check_launch("squeezellm residuals", outlier_row_ptr=(secs["outlier_row_ptr"], m + 1),
                 outlier_col=(secs["outlier_col"], nnz))


def dequantize(params: Mapping[str, Any], sections_on_device: Mapping[str, torch.Tensor], shape: tuple[int, int],
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decoded tensor [m, n] of a validated squeezellm tensor (bit-exact f32, then an RNE cast).

    No host synchronisation (the residuals are added row block by row block from the
    CSR), so this is CUDA-graph capturable.
    """
    m, n = (int(v) for v in shape)
    secs = dict(sections_on_device)
    codes = _codes(secs)
    bits = int(params["bits"])
    check_launch("squeezellm dequantize", codes=(codes, m * triton.cdiv(n * bits, 32)), lut=(secs["lut"], m << bits))
    _residual_sizes(secs, m)
    if m * n >= 2**31:
        raise ValueError(f"squeezellm dequantize: {m}x{n} exceeds 32-bit element indices")
    out = torch.empty((m, n), dtype=torch.float32, device=codes.device)
    BR, BC = 16, 128
    _dequant_kernel[(triton.cdiv(m, BR), triton.cdiv(n, BC))](
        codes, secs["lut"].contiguous(), out, m, n, codes.shape[1], BITS=bits, BR=BR, BC=BC, **_OPTS)
    if secs["outlier_val"].numel():
        col = _i32(secs["outlier_col"])
        _residual_add_kernel[(triton.cdiv(m, 16),)](out, _i32(secs["outlier_row_ptr"]), col, secs["outlier_val"], m, n,
                                                 BM=16, EPR=16, COL16=col.dtype == torch.int16, **_OPTS)
    return out if out_dtype == torch.float32 else out.to(out_dtype)


@dataclass
class GemvConfig:
    """Tile of the fused matvec: BM rows x NU words (x F fields) per step; split = column splits (None: auto)."""

    BM: int = 64
    NU: int = 32
    num_warps: int = 4
    split: int | None = None
    tree: bool = True  # tables of <= 16 entries as register select trees (else a per-weight L1 gather)
    prmt: bool = True  # 3/4-bit: byte-plane tables looked up 4 bytes per prmt instruction (over tree)
    dot1: bool = False  # batch 1 through tl.dot as well (x padded to 16 rows) instead of FMAs
    pair: bool = False  # 3-bit prmt on word pairs, f16x2 results as a tl.dot operand holds them
    epr: int = 0  # residual entries per row per step (0: 16 at batch 1, 8 on the tl.dot path; H200: 2 was 1.7x slower)
    per_sm: int = 8  # column splits aim at this many programs per SM (split = None)
    num_stages: int = 0  # software pipelining depth (0: Triton's default)


def default_config(batch: int) -> GemvConfig:
    """Tiles chosen from the sm_90 build (bench/compile_check_codecs.py). The tl.dot path decodes each weight in
    the MMA operand layout, once per warp column: with BM = 32 and 4 warps (2 x 2 warps) every weight was decoded
    twice (19 SASS instructions per weight with the select tree); 2 warps of 16 rows decode it once (tree 9.6,
    prmt 2.68); BM = 64 spills. H200: batch 1 prmt 21.4 us at 14336 x 4096, 3 bits (tree 42.7, fp16 30.2).
    Batch 2-16 splits the columns for ~2 programs per SM, not 8: the split-K epilogue costs more than the extra
    programs give (H200 sweep, 14336 x 4096, 3-bit, batch 16: 38.2 us at per_sm 2 vs 52.6 at 8; docs/codecs.md)."""
    if batch == 1:
        return GemvConfig(BM=64, NU=32, num_warps=4)
    return GemvConfig(BM=32, NU=32, num_warps=2, per_sm=2)


@dataclass
class PreparedSqueezeLLM:
    """Load-time layout: strided field words, f32 tables, byte-plane tables (3/4 bits, else empty), residual
    CSR; ``sections`` keeps bias-free spec sections other than ``codes`` (the words replace them on the device)."""

    params: dict[str, Any]
    shape: tuple[int, int]
    sections: dict[str, torch.Tensor]
    words: torch.Tensor
    wst: int
    lut32: torch.Tensor
    ptab: torch.Tensor
    o_row_ptr: torch.Tensor
    o_col: torch.Tensor
    o_val: torch.Tensor
    split_ws: SplitWorkspace | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.words.device

    def workspace(self) -> SplitWorkspace:
        if self.split_ws is None:
            self.split_ws = SplitWorkspace(self.shape[0], self.device)
        return self.split_ws


def prepare(params: Mapping[str, Any], sections: Mapping[str, Any], shape: tuple[int, int],
            device: str | torch.device = "cuda") -> PreparedSqueezeLLM:
    """Move sections to ``device`` once and build the fused kernel's layout (the file layout is untouched)."""
    m, n = (int(v) for v in shape)
    bits = int(params["bits"])
    secs = to_device(sections, device)
    codes = _codes(secs)
    check_launch("squeezellm prepare", codes=(codes, m * triton.cdiv(n * bits, 32)), lut=(secs["lut"], m << bits))
    _residual_sizes(secs, m)
    words, wst = repack_fields(codes, n, bits)
    kept = {k: v for k, v in secs.items() if k != "codes"}
    ptab = byte_planes(secs["lut"]) if bits in (3, 4) else torch.zeros(0, dtype=torch.int32, device=codes.device)
    return PreparedSqueezeLLM(dict(params), (m, n), kept, words, wst, secs["lut"].to(torch.float32).contiguous(), ptab,
                              _i32(secs["outlier_row_ptr"]).contiguous(), _i32(secs["outlier_col"]).contiguous(),
                              secs["outlier_val"].contiguous())


def byte_planes(lut: torch.Tensor) -> torch.Tensor:
    """f16 tables [m, K] (K = 8 or 16) -> int32 [m, K / 2]: the entries' low bytes, 4 per word (entry 4i + j in
    byte j of word i), then their high bytes likewise: what one ``prmt`` indexes by 3-bit selectors."""
    m, k = lut.shape
    v = lut.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    planes = torch.cat([v & 0xFF, v >> 8], dim=1).view(m, k // 2, 4)
    words = (planes << (8 * torch.arange(4, device=lut.device))).sum(dim=2)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()


def _use_prmt(p: PreparedSqueezeLLM, cfg: GemvConfig) -> bool:
    return cfg.prmt and p.wst == 4 and int(p.params["bits"]) in (3, 4)


def _check_prepared(p: PreparedSqueezeLLM) -> None:
    m, n = p.shape
    bits = int(p.params["bits"])
    nw = p.words.shape[1] if p.words.dim() == 2 else -1
    if nw <= 0 or nw % 64 or (32 // p.wst) * nw < n or p.wst < bits:
        raise ValueError(f"PreparedSqueezeLLM words {tuple(p.words.shape)} do not fit {m}x{n} at {bits} bits")
    check_launch("squeezellm matvec", words=(p.words, m * nw), lut32=(p.lut32, m << bits),
                 ptab=(p.ptab, (m << bits) // 2 if bits in (3, 4) else 0), o_row_ptr=(p.o_row_ptr, m + 1),
                 o_col=(p.o_col, p.o_val.numel()))
    if MAX_BATCH * (max(m, (32 // p.wst) * nw) + 1) >= 2**31:
        raise ValueError(f"squeezellm matvec: {m}x{n} exceeds 32-bit indices")


def matvec(prepared: PreparedSqueezeLLM, x: torch.Tensor, bias: torch.Tensor | None = None,
           config: GemvConfig | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for x [B, n] or [n]; f32 accumulation, output in x's dtype (B > 16: slices of 16)."""
    m, n = prepared.shape
    return fused_rows(lambda x2: _matvec(prepared, x2, bias, config), x, n, m, bias)


def _matvec(prepared: PreparedSqueezeLLM, x2: torch.Tensor, bias: torch.Tensor | None,
            config: GemvConfig | None) -> torch.Tensor:
    """One launch for 1..16 contiguous rows x2 [B, n]."""
    m, n = prepared.shape
    B = x2.shape[0]
    _check_prepared(prepared)
    cfg = config or default_config(B)
    bits = int(prepared.params["bits"])
    nw = prepared.words.shape[1]
    wst = prepared.wst
    F = 32 // wst
    dot = B > 1 or cfg.dot1
    prmt = _use_prmt(prepared, cfg)
    nu = min(cfg.NU, nw)
    n_tiles = nw // nu
    progs_m = triton.cdiv(m, cfg.BM)
    split, tps = split_for(prepared.device, progs_m, n_tiles, cfg.split, per_sm=cfg.per_sm)
    y = torch.empty((B, m), dtype=x2.dtype, device=x2.device)
    ws = prepared.workspace() if split > 1 else None
    dt, ieee = dot_dtype(x2.dtype)
    _lut_gemv_kernel[(progs_m, split)](
        x2, y, bias if bias is not None else y, ws.ws if ws else y, ws.wsi if ws else y, ws.cnt if ws else y,
        prepared.words, prepared.lut32, prepared.ptab if prmt else prepared.lut32, prepared.o_row_ptr,
        prepared.o_col, prepared.o_val, m, n, nw, B, x2.stride(0), n_tiles, tps,
        K=1 << bits, WST=wst, F=F, NU=nu, BM=cfg.BM, BB=16 if dot else 1, EPR=cfg.epr or (8 if dot else 16), DOT=dot,
        DOT_DT=dt, IEEE=ieee, EVEN=F * nw == n, SPLIT=split > 1, HAS_BIAS=bias is not None,
        COL16=prepared.o_col.dtype == torch.int16, TREE=cfg.tree and bits <= 4, PRMT=prmt,
        ASM=prmt and _inline_asm_ok(prepared.device), PAIR=cfg.pair, num_warps=cfg.num_warps,
        **({"num_stages": cfg.num_stages} if cfg.num_stages else {}))
    return y


def dequantize_prepared(prepared: PreparedSqueezeLLM, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dense W [m, n] in ``out_dtype`` from the load-time layout, bit-identical to §5 (then RNE)."""
    _check_prepared(prepared)
    m, n = prepared.shape
    if m * n >= 2**31:
        raise ValueError(f"squeezellm dequantize: {m}x{n} exceeds 32-bit element indices")
    bits = int(prepared.params["bits"])
    out = torch.empty((m, n), dtype=out_dtype, device=prepared.device)
    bf16 = out_dtype == torch.bfloat16
    BM, BC = 16, 256
    _dequant_fields_kernel[(triton.cdiv(m, BM), triton.cdiv(n, BC))](
        prepared.words, prepared.lut32, prepared.o_row_ptr, prepared.o_col, prepared.o_val,
        out.view(torch.int16) if bf16 else out, m, n, prepared.words.shape[1],
        K=1 << bits, WST=prepared.wst, BM=BM, BC=BC, EPR=16, COL16=prepared.o_col.dtype == torch.int16,
        OUT_BF16=bf16, TREE=bits <= 4, **_OPTS)
    return out
