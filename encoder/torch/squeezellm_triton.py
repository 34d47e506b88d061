"""Triton kernels of the torch squeezellm encoder: the Lloyd iterations (a program per row runs all of its
iterations) and the nearest-entry assignment.

The batched torch loop (``squeezellm._lloyd_torch``) costs ~15 launches per
iteration and a host sync every few; here a row's k centroids live in
registers for the whole fit and the row stops at its own first iteration
without a change, exactly as ``encoder.squeezellm._lloyd``. The arithmetic is
the CPU encoder's, operation for operation: f64 midpoints ``0.5 * (c_j +
c_j+1)``, a branchless binary search for the count of values <= midpoint
(+inf pads the row), the quotient ``f64(pwx[b] - pwx[a]) / sw * scale`` (f64
division is IEEE ``div.rn`` in Triton; no multiply feeds an add, and FMA
fusion is off anyway) and the same clamps.

The assignment loads a row's table once per block of weights and keeps the
running minimum of the f32 distances |w - lut[c]| (strictly smaller wins: ties
to the lowest index), the ``_assign`` rule of the torch and Numba encoders. A
flush-to-zero of f32 subnormals could not change the winner: a table entry is
an f16 value, so a distance is subnormal only for a subnormal weight against a
zero entry, which then wins either way.

Runs on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _shift(v, j, by: tl.constexpr, fill):
    """v[j + by] per lane (``fill`` where j + by is outside): one exact select-and-max across the lanes."""
    take = j[None, :] == j[:, None] + by
    return tl.max(tl.where(take, v[None, :], fill), axis=1)


@triton.jit
def _count_le(row, n, t, LOGN: tl.constexpr):
    """Per lane, how many of the sorted row[0:n] are <= t (2**LOGN > n; +inf pads the row past its values)."""
    pos = tl.zeros(t.shape, dtype=tl.int64)
    for s in tl.static_range(LOGN):
        i = pos + ((1 << (LOGN - 1 - s)) - 1)
        v = tl.load(row + i, mask=i < n, other=float("inf"))
        pos = tl.where(v <= t, i + 1, pos)
    return pos


@triton.jit
def _lloyd_kernel(xs_ptr, pw_ptr, pwx_ptr, scale_ptr, cnt_ptr, cent_ptr, n, sx, sp, sq, max_iter,
                  K: tl.constexpr, LOGN: tl.constexpr, UNIFORM: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, K)
    xrow = xs_ptr + r * sx
    prow = pw_ptr + r * sp
    qrow = pwx_ptr + r * sq
    cnt = tl.load(cnt_ptr + r)
    scale = tl.load(scale_ptr + r)
    cent = tl.load(cent_ptr + r * K + j)
    ninf = float("-inf")
    it = 0
    go = cnt > 0
    while go & (it < max_iter):
        mid = 0.5 * (cent + _shift(cent, j, 1, ninf))
        b = tl.where(j < K - 1, _count_le(xrow, n, mid, LOGN), cnt)
        a = tl.where(j > 0, _shift(b, j, -1, -1), 0)
        b = tl.maximum(a, b)
        if UNIFORM:
            sw = (b - a).to(tl.float64)
        else:
            sw = tl.load(prow + b) - tl.load(prow + a)
        d = tl.load(qrow + b) - tl.load(qrow + a)
        c = d.to(tl.float64) / tl.where(sw > 0, sw, 1.0) * scale  # an empty cluster keeps its centroid
        lo = tl.load(xrow + a, mask=a < n, other=0.0)
        hi = tl.load(xrow + b - 1, mask=b > 0, other=0.0)
        c = tl.where(c < lo, lo, c)
        c = tl.where(c > hi, hi, c)
        upd = (sw > 0) & (c != cent)
        cent = tl.where(upd, c, cent)
        go = tl.max(upd.to(tl.int32), axis=0) > 0
        it += 1
    tl.store(cent_ptr + r * K + j, cent)


def lloyd(xs: torch.Tensor, pw: torch.Tensor, pwx: torch.Tensor, scale: torch.Tensor, cnt: torch.Tensor,
          cent: torch.Tensor, max_iter: int, uniform: bool) -> torch.Tensor:
    """``_lloyd_torch``'s result: xs [R, n] f64 sorted (+inf past cnt), pw [R, n+1] f64 (ignored when
    ``uniform``: the counts), pwx [R, n+1] int64 or f64, scale [R, 1] f64, cnt [R], cent [R, k] f64 init."""
    R, n = xs.shape
    k = cent.shape[1]
    if R == 0:
        return cent
    out = cent.contiguous().clone()
    xs = xs.contiguous()
    pwx = pwx.contiguous()
    pw = pwx if uniform else pw.contiguous()  # not read when uniform
    _lloyd_kernel[(R,)](xs, pw, pwx, scale.reshape(R).contiguous(), cnt.to(torch.int64).contiguous(), out, n,
                        xs.stride(0), pw.stride(0), pwx.stride(0), max_iter, K=k, LOGN=max(1, n.bit_length()),
                        UNIFORM=uniform, num_warps=1 if k <= 32 else 4, enable_fp_fusion=False)
    return out


@triton.jit
def _assign_kernel(w_ptr, lut_ptr, idx_ptr, n, K: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n
    x = tl.load(w_ptr + r * n + cols, mask=inside, other=0.0)
    bd = tl.abs(x - tl.load(lut_ptr + r * K))
    best = tl.zeros((BLOCK,), dtype=tl.int64)
    for c in tl.static_range(1, K):
        d = tl.abs(x - tl.load(lut_ptr + r * K + c))
        better = d < bd
        bd = tl.where(better, d, bd)
        best = tl.where(better, c, best)
    tl.store(idx_ptr + r * n + cols, best, mask=inside)


def assign(w: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """``squeezellm._assign``: w [R, n] f32, lut [R, k] f32 -> int64 [R, n] nearest-entry indices."""
    R, n = w.shape
    k = lut.shape[1]
    out = torch.empty((R, n), dtype=torch.int64, device=w.device)
    if R and n:
        block = 1024
        _assign_kernel[(R, triton.cdiv(n, block))](w.contiguous(), lut.contiguous(), out, n, K=k, BLOCK=block,
                                                   num_warps=4)
    return out
