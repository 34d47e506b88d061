"""Pieces shared by the kernels of every codec: sections on the device, packed-row reading (host and
``@triton.jit``), the strided field repack, launch checks, split-K finish.

Strided field layout (built once at load time; the file keeps the spec's packed
rows): a row's ``b``-bit codes are re-packed into ``nw`` 32-bit words of
``F = 32 / WST`` fields of a power-of-two width ``WST >= b`` (3-bit codes sit in
4-bit fields, 5..7-bit codes in 8-bit fields), and field ``c`` of word ``w``
holds column ``c * nw + w``. A tile of NU consecutive words therefore covers,
for each field ``c`` (a compile-time constant in the kernels), NU *contiguous*
columns: the activation slice of a field is one wide load, every shift is a
constant, and a code never straddles a word. ``nw`` is padded to a multiple of
``NW_ALIGN`` so tiles never need a mask on the weight loads (padding codes are
0 and meet zero activations).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

NW_ALIGN = 64  # words per row are padded to this (the largest tile width NU)
MAX_BATCH = 16  # rows of x one fused launch handles (tl.dot N = 16)
_INT32_MAX = 2**31 - 1
# Sections whose file dtype is unsigned: moved as same-width signed tensors (bit-identical views).
_SIGNED_VIEW = {np.dtype(np.uint32): np.int32, np.dtype(np.uint16): np.int16, np.dtype(np.uint64): np.int64}


def to_device(sections: Mapping[str, Any], device: str | torch.device) -> dict[str, torch.Tensor]:
    """Spec sections as torch tensors on ``device`` (u32/u16 become int32/int16 views of the same bits)."""
    out: dict[str, torch.Tensor] = {}
    for role, arr in sections.items():
        if isinstance(arr, torch.Tensor):
            t = arr
            if t.dtype == torch.uint32:
                t = t.view(torch.int32)
            elif t.dtype == torch.uint16:
                t = t.view(torch.int16)
        else:
            a = np.ascontiguousarray(arr)
            if a.dtype in _SIGNED_VIEW:
                a = a.view(_SIGNED_VIEW[a.dtype])
            t = torch.from_numpy(a)
        out[role] = t.to(device).contiguous()
    return out


def u32_values(t: torch.Tensor) -> torch.Tensor:
    """int32/uint32 tensor -> int64 holding the unsigned 32-bit values."""
    if t.dtype == torch.uint32:
        t = t.view(torch.int32)
    return t.to(torch.int64) & 0xFFFFFFFF


def unsigned_values(t: torch.Tensor) -> torch.Tensor:
    """Index section (u16/u32 stored as int16/int32 views) -> int64 values."""
    if t.dtype in (torch.int16, torch.uint16):
        return t.view(torch.int16).to(torch.int64) & 0xFFFF
    return u32_values(t)


def unpack_rows(words: torch.Tensor, cols: int, bits: int) -> torch.Tensor:
    """Packed rows [R, W] (spqr.md §4) -> int64 codes [R, cols]."""
    w = u32_values(words)
    w = torch.cat([w, torch.zeros_like(w[:, :1])], dim=1)  # a zero word so q + 1 is always in range
    p = torch.arange(cols, device=w.device, dtype=torch.int64) * bits
    q = p >> 5
    s = p & 31
    v = (w[:, q] >> s) | ((w[:, q + 1] << (32 - s)) & 0xFFFFFFFF)
    return v & ((1 << bits) - 1)


@triton.jit
def packed_code(codes_ptr, rows64, cols, words, mask, BITS: tl.constexpr):
    """Code (rows64, cols) of packed rows (spqr.md §4: one little-endian bit stream of BITS-bit codes per row,
    ``words`` int32 words a row), as uint32; rows64 / cols broadcast (e.g. rows64[:, None], cols[None, :])."""
    bitpos = cols * BITS
    q = bitpos >> 5
    s = (bitpos & 31).to(tl.uint32)
    base = codes_ptr + rows64 * words + q
    w0 = tl.load(base, mask=mask, other=0).to(tl.uint32, bitcast=True)
    straddle = (s + BITS) > 32
    w1 = tl.load(base + 1, mask=mask & straddle, other=0).to(tl.uint32, bitcast=True)
    v = (w0 >> s) | tl.where(straddle, w1 << ((32 - s) & 31), 0)
    return v & ((1 << BITS) - 1)


def next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def field_width(bits: int) -> int:
    """Power-of-two field width holding a ``bits``-bit code (1, 2, 4 or 8)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"code width {bits} outside 1..8")
    return next_pow2(bits)


def words_per_row(n: int, wst: int) -> int:
    return triton.cdiv(triton.cdiv(n, 32 // wst), NW_ALIGN) * NW_ALIGN


def repack_fields(codes: torch.Tensor, n: int, bits: int) -> tuple[torch.Tensor, int]:
    """Spec packed rows [m, W] (u32 bits) -> (int32 words [m, nw] in the strided field layout, WST)."""
    wst = field_width(bits)
    f = 32 // wst
    nw = words_per_row(n, wst)
    m = codes.shape[0]
    q = unpack_rows(codes, n, bits)  # int64 [m, n]
    full = torch.zeros((m, f * nw), dtype=torch.int64, device=codes.device)
    full[:, :n] = q
    fields = full.view(m, f, nw)  # column c * nw + w -> fields[:, c, w]
    words = torch.zeros((m, nw), dtype=torch.int64, device=codes.device)
    for c in range(f):
        words |= fields[:, c, :] << (c * wst)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).contiguous(), wst


def check_launch(what: str, **sizes: tuple[torch.Tensor | None, int]) -> None:
    """Every tensor a kernel indexes without bounds checks has exactly the expected number of elements."""
    for name, (t, want) in sizes.items():
        if t is None or t.numel() != want:
            got = None if t is None else t.numel()
            raise ValueError(f"{what}: {name} has {got} elements, expected {want}")
        if want > _INT32_MAX:
            raise ValueError(f"{what}: {name} has {want} elements, too many for 32-bit kernel indices")


def fused_rows(call: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int, m: int,
               bias: torch.Tensor | None) -> torch.Tensor:
    """The matvec contract shared by the codecs: x [B, n] or [n] -> y [B, m] or [m] in x's dtype.

    Checks the feature count and the bias length, returns an empty [0, m] for B = 0 and
    runs ``call`` (one fused launch sequence) on contiguous slices of at most MAX_BATCH rows.
    """
    squeeze = x.dim() == 1
    x2 = x.reshape(1, n) if squeeze else x
    if x2.dim() != 2 or x2.shape[-1] != n:
        raise ValueError(f"x has shape {tuple(x.shape)}, weight expects [..., {n}]")
    if bias is not None and bias.numel() != m:
        raise ValueError(f"bias has {bias.numel()} elements, expected {m}")
    B = x2.shape[0]
    if B == 0:
        y = x2.new_empty((0, m))
    elif B > MAX_BATCH:
        y = torch.cat([call(x2[i:i + MAX_BATCH].contiguous()) for i in range(0, B, MAX_BATCH)])
    else:
        y = call(x2.contiguous())
    return y.reshape(m) if squeeze else y


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_for(device: torch.device, progs_m: int, n_tiles: int, forced: int | None, per_sm: int = 8) -> tuple[int, int]:
    """(programs per row block, tiles per program): ~per_sm programs per SM, none left without a tile."""
    if forced:
        want = forced
    elif device.type != "cuda":
        want = 1
    else:
        want = triton.cdiv(per_sm * sm_count(device), max(progs_m, 1))
    split = max(1, min(want, n_tiles))
    tps = triton.cdiv(n_tiles, split)
    return triton.cdiv(n_tiles, tps), tps


class SplitWorkspace:
    """f32 partial sums [MAX_BATCH * m] and per-row-block arrival counters, zero at rest (see ``finish``)."""

    def __init__(self, m: int, device: torch.device) -> None:
        self.ws = torch.zeros(MAX_BATCH * m, dtype=torch.float32, device=device)
        self.wsi = self.ws.view(torch.int32)  # the same memory, for the exchange (int32 atomics everywhere)
        self.cnt = torch.zeros(triton.cdiv(m, 4) + 1, dtype=torch.int32, device=device)


@triton.jit
def gemv_rows(m, nb, BM: tl.constexpr, BB: tl.constexpr):
    """Rows of this program (clamped to m - 1 for loads: rows past m are computed, never stored) and batch lanes."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    bb = tl.arange(0, BB)
    return rows, rows < m, tl.minimum(rows, m - 1).to(tl.int64), bb, bb < nb


@triton.jit
def gemv_tiles(n_tiles, tiles_per_split):
    """[lo, hi) of the column tiles of this program's split (program axis 1)."""
    t_lo = tl.program_id(1) * tiles_per_split
    return t_lo, tl.minimum(t_lo + tiles_per_split, n_tiles)


@triton.jit
def gemv_out(acc, rows, rmask, bb, bmask, m, DOT: tl.constexpr):
    """(result, y offsets, y mask): [BM, BB] for the tl.dot path (y is [B, m]), row sums of acc otherwise."""
    if DOT:
        out = acc
        yoff = bb[None, :] * m + rows[:, None]
        ymask = rmask[:, None] & bmask[None, :]
    else:
        out = tl.sum(acc, axis=1)
        yoff = rows
        ymask = rmask
    return out, yoff, ymask


@triton.jit
def store_rows(out, y_ptr, yoff, ymask, bias_ptr, rows, rmask, scale_ptr, HAS_BIAS: tl.constexpr,
               HAS_SCALE: tl.constexpr, ONE_ROW: tl.constexpr):
    """y = out * scale[row] (+ bias[row]) cast to y's dtype; out is [BM] (ONE_ROW) or [BM, BB]."""
    if HAS_SCALE:
        sc = tl.load(scale_ptr + rows, mask=rmask, other=0.0)
        if ONE_ROW:
            out = out * sc
        else:
            out = out * sc[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        if ONE_ROW:
            out = out + bias
        else:
            out = out + bias[:, None]
    tl.store(y_ptr + yoff, out.to(y_ptr.dtype.element_ty), mask=ymask)


@triton.jit
def finish(out, y_ptr, yoff, ymask, bias_ptr, rows, rmask, scale_ptr, ws_ptr, wsi_ptr, cnt_ptr, pid_m,
           SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, ONE_ROW: tl.constexpr):
    """Write this program's result; with SPLIT, sum the column-split partials without a memset or extra launch.

    Partials go to an f32 workspace that is zero at rest; the last program of the row
    block to arrive (an acq_rel counter) takes the total, re-zeroes the workspace and
    its counter, and writes y (scaled, biased, cast).
    """
    if SPLIT:
        tl.atomic_add(ws_ptr + yoff, out, mask=ymask)
        tl.debug_barrier()  # every thread's partials are issued before the (releasing) counter increment
        done = tl.atomic_add(cnt_ptr + pid_m, 1)
        if done == tl.num_programs(1) - 1:
            total = tl.atomic_xchg(wsi_ptr + yoff, tl.zeros_like(out).to(tl.int32, bitcast=True), mask=ymask)
            total = tl.where(ymask, total.to(tl.float32, bitcast=True), 0.0)  # masked lanes: undefined
            tl.atomic_xchg(cnt_ptr + pid_m, 0)
            store_rows(total, y_ptr, yoff, ymask, bias_ptr, rows, rmask, scale_ptr, HAS_BIAS, HAS_SCALE, ONE_ROW)
    else:
        store_rows(out, y_ptr, yoff, ymask, bias_ptr, rows, rmask, scale_ptr, HAS_BIAS, HAS_SCALE, ONE_ROW)


@triton.jit
def round_out(v, out_ptr, OUT_BF16: tl.constexpr):
    """f32 -> the output dtype by RNE; bf16 with integer ops (NaN stays NaN; the interpreter's cast truncates)."""
    if OUT_BF16:
        b = v.to(tl.uint32, bitcast=True)
        rb = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        rb = tl.where(v != v, (b >> 16) | 0x40, rb)
        return rb.to(tl.uint16).to(tl.int16, bitcast=True)
    return v.to(out_ptr.dtype.element_ty)


def dot_dtype(dt: torch.dtype) -> tuple[tl.dtype, bool]:
    """(tl.dot operand dtype, exact f32) for activations of dtype dt: f16 stays f16 (the decoded weights
    are exact in f16), bf16 and f32 use f32 IEEE dots so no activation is rounded."""
    if dt == torch.float16:
        return tl.float16, False
    return tl.float32, True


__all__ = ["MAX_BATCH", "NW_ALIGN", "SplitWorkspace", "check_launch", "dot_dtype", "field_width",
           "finish", "fused_rows", "gemv_out", "gemv_rows", "gemv_tiles", "next_pow2", "repack_fields", "round_out",
           "sm_count", "split_for", "store_rows", "to_device", "unpack_rows", "words_per_row"]


# ---------------------------------------------------------------- f16x2 arithmetic (spqr and quip GEMVs)


@triton.jit
def f16_lo(v):
    return (v & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def f16_hi(v):
    return ((v >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def f16_pack(lo, hi):
    return (lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) | (hi.to(tl.int16, bitcast=True).to(tl.int32) << 16)


@triton.jit
def h2_fma(a, b, c, ASM: tl.constexpr):
    """a·b + c on f16 pairs held in int32 (PTX ``fma.rn.f16x2``; else the same f16 arithmetic)."""
    if ASM:
        out = tl.inline_asm_elementwise("fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                        dtype=tl.int32, is_pure=True, pack=1)
    else:
        out = f16_pack((f16_lo(a) * f16_lo(b) + f16_lo(c)).to(tl.float16),
                        (f16_hi(a) * f16_hi(b) + f16_hi(c)).to(tl.float16))
    return out


@triton.jit
def h2_sum(a):
    """f32 sum of the two f16 halves of a."""
    return f16_lo(a).to(tl.float32) + f16_hi(a).to(tl.float32)


@triton.jit
def h2_biased(w, ODD: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """``(w & mask) | 0x64006400``: the field pair of int32 w (bits 0.. / 16.., or 4.. / 20.. when ODD; BITS
    of each field, so 3-bit words may carry junk in bit 3) as the f16 pair 1024 + q (1024 + 16q when ODD).

    ASM: one LOP3 (as two PTX ops ptxas emits two LOP3s, each taking one of the two immediates)."""
    if BITS == 3:
        msk = tl.full(w.shape, 0x00700070 if ODD else 0x00070007, tl.int32)
    else:
        msk = tl.full(w.shape, 0x00F000F0 if ODD else 0x000F000F, tl.int32)
    if ASM:
        v = tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, 0x64006400, 0xEA;", "=r,r,r", [w, msk],
                                      dtype=tl.int32, is_pure=True, pack=1)
    else:
        v = (w & msk) | 0x64006400
    return v


def inline_asm_ok(dev: torch.device) -> bool:
    """PTX inline assembly runs on CUDA devices, not in Triton's interpreter (TRITON_INTERPRET=1)."""
    import os

    return dev.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
