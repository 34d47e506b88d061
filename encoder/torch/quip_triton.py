"""Triton kernels of the torch quip encoder: Sylvester butterflies of contiguous blocks, all stages in registers.

``quip._fwht_`` runs each butterfly stage as two torch kernels over the whole
matrix (48 B/param per f64 stage, 12 stages for h = 4096); here a program
loads one block of 2^STAGES values, optionally widens it to f64 and
multiplies it by +-1 signs (exact), runs stages half = 1, 2, ..., 2^(STAGES-1)
with the same additions in the same order (the partners of a stage are split
off a reshaped view, summed and differenced, and joined back: pure data
movement around the same IEEE adds), then, when asked, divides by a norm
(f64 ``div.rn``) or multiplies by a constant, and multiplies by a per-row sign
and a sign per position: one read and one write of the matrix for a whole
transform side. For the decode the block can also start as grid codes
(their f32 values (2q - L) * scale). Further kernels: the rows' sequential
sums of squares, the grid search's histograms and exact errors, the codes.

Runs on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_STAGES = 12  # 4096 values per program: 32 KB of f64 in registers over 8 warps


def _check_f64(w: torch.Tensor) -> None:
    """The kernels below index w as a contiguous 2-D f64 matrix."""
    if w.ndim != 2 or w.dtype != torch.float64 or not w.is_contiguous():
        raise ValueError(f"expected a contiguous 2-D f64 matrix, got {w.dtype} {tuple(w.shape)}")


@triton.jit
def _fwht_kernel(x_ptr, y_ptr, pre_ptr, post_ptr, postv_ptr, k_ptr, scale_ptr, blocks_per_row, pre_len,
                 STAGES: tl.constexpr, F64: tl.constexpr, PRE: tl.constexpr, POST: tl.constexpr,
                 POSTV: tl.constexpr, EPILOGUE: tl.constexpr, CODES: tl.constexpr):
    B: tl.constexpr = 1 << STAGES
    blk = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, B)
    x = tl.load(x_ptr + blk * B + offs)
    if CODES > 0:  # grid codes of L = CODES: (2q - L) as f32 times the row's f32 scale (quip.md §5)
        x = (2 * x.to(tl.int32) - CODES).to(tl.float32) * tl.load(scale_ptr + blk // blocks_per_row)
    if F64:
        x = x.to(tl.float64)
    if PRE:  # +-1 signs along the row (exact)
        x = x * tl.load(pre_ptr + (blk * B) % pre_len + offs)
    for k in tl.static_range(STAGES):
        v = tl.permute(tl.reshape(x, (B >> (k + 1), 2, 1 << k)), (0, 2, 1))
        u, w = tl.split(v)
        x = tl.reshape(tl.permute(tl.join(u + w, u - w), (0, 2, 1)), (B,))
    if EPILOGUE == 1:
        x = x / tl.load(k_ptr)  # a true division (div.rn.f64), as numpy's y / sqrt(h)
    elif EPILOGUE == 2:
        x = x * tl.load(k_ptr)
    if POST:  # a sign per row (exact)
        x = x * tl.load(post_ptr + blk // blocks_per_row)
    if POSTV:  # +-1 signs along the row (exact)
        x = x * tl.load(postv_ptr + (blk * B) % pre_len + offs)
    tl.store(y_ptr + blk * B + offs, x)


def butterflies(x: torch.Tensor, stages: int, f64: bool = False, pre: torch.Tensor | None = None,
                post: torch.Tensor | None = None, divide: torch.Tensor | None = None,
                multiply: torch.Tensor | None = None, postv: torch.Tensor | None = None,
                codes_of: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Stages half = 1 .. 2^(stages-1) of the butterflies over each block of 2^stages values of the contiguous
    x [rows, length] (length a multiple of 2^stages), in a new tensor; before them (x as f64 if ``f64``) * pre
    (a [length] sign vector), after them / divide or * multiply (0-d, the output's dtype), * post[row], then
    * postv (a [length] sign vector). ``codes_of`` = (bits, scale [rows] f32): x holds integer grid codes, the
    f32 values (2q - L) * scale[row] go in."""
    rows, length = x.shape
    B = 1 << stages
    if not 1 <= stages <= MAX_STAGES or length % B or not x.is_contiguous():
        raise ValueError(f"butterflies: {tuple(x.shape)} in blocks of 2^{stages}")
    sizes = [(pre, length), (postv, length), (post, rows), (None if codes_of is None else codes_of[1], rows)]
    if any(t is not None and t.numel() != size for t, size in sizes):
        raise ValueError("butterflies: a sign or scale vector of the wrong length")
    dtype = torch.float64 if f64 else (torch.float32 if codes_of is not None else x.dtype)
    out = torch.empty((rows, length), dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    k = divide if divide is not None else multiply

    def arg(t: torch.Tensor | None) -> torch.Tensor:
        return out if t is None else t.contiguous()  # ``out`` is never read when its flag is off

    _fwht_kernel[(rows * (length // B),)](
        x, out, arg(pre), arg(post), arg(postv), arg(None if k is None else k.reshape(1)),
        arg(None if codes_of is None else codes_of[1]), length // B, length,
        STAGES=stages, F64=f64, PRE=pre is not None, POST=post is not None, POSTV=postv is not None,
        EPILOGUE=1 if divide is not None else (2 if multiply is not None else 0),
        CODES=0 if codes_of is None else (1 << codes_of[0]) - 1, num_warps=8 if stages >= 11 else 4,
        enable_fp_fusion=False)
    return out


@triton.jit
def _col_sumsq_kernel(x_ptr, out_ptr, rows, cols, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """out[c] = x[0, c]^2 + x[1, c]^2 + ... added one row at a time (f64 products rounded, then added)."""
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = c < cols
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    full = rows - rows % UNROLL
    base = x_ptr + c  # moved down UNROLL rows at a time: no int32 row * cols product
    for _ in range(0, full, UNROLL):
        for u in tl.static_range(UNROLL):  # independent loads in flight, the adds in order
            v = tl.load(base + u * cols, mask=mask, other=0.0)
            acc = acc + v * v
        base += UNROLL * cols
    for _ in range(full, rows):
        v = tl.load(base, mask=mask, other=0.0)
        acc = acc + v * v
        base += cols
    tl.store(out_ptr + c, acc, mask=mask)


def column_sums_sq(x: torch.Tensor) -> torch.Tensor:
    """Per column of the contiguous f64 x [rows, cols], the sum of squares added sequentially down the column
    (numpy's sum along the rows of the F-ordered W~, ``encoder.quip``)."""
    _check_f64(x)
    rows, cols = x.shape
    out = torch.empty(cols, dtype=torch.float64, device=x.device)
    block = 32
    _col_sumsq_kernel[(triton.cdiv(cols, block),)](x, out, rows, cols, BLOCK=block, UNROLL=16, num_warps=1,
                                                   enable_fp_fusion=False)
    return out


@triton.jit
def _grid_code(x, s, L):
    """clip(rint((x / s + L) / 2), 0, L) in f64, Python's min(max(q, 0.0), L): the CPU encoder's code of x."""
    t = (x / s + L) / 2.0
    big = 4503599627370496.0  # 2^52: (t + 2^52) - 2^52 is rint(t), half to even, for 0 <= t < 2^52
    q = tl.where(t >= big, t, (t + big) - big)
    q = tl.where(0.0 > q, 0.0, q)  # t < 0 gives q <= 0, clipped to 0 either way
    return tl.where(L < q, L, q)


@triton.jit
def _sq_err_kernel(w_ptr, rows_ptr, s_ptr, out_ptr, n, NQ: tl.constexpr, BLOCK: tl.constexpr):
    """out[p, j] = ((2q - L) s_p - x)^2 with x = w[rows[p], j] and q its code at scale s_p (f64)."""
    p = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = j < n
    r = tl.load(rows_ptr + p)
    s = tl.load(s_ptr + p)
    x = tl.load(w_ptr + r * n + j, mask=mask, other=0.0)
    L = NQ * 1.0
    d = (2.0 * _grid_code(x, s, L) - L) * s - x
    tl.store(out_ptr + p.to(tl.int64) * n + j, d * d, mask=mask)


def squared_errors(w: torch.Tensor, rows: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
    """[P, n] f64: the squared round-to-nearest error of each w[rows[p]] on the grid (2q - L) s[p] (the
    elements ``grid_search.row_error`` sums), for the contiguous f64 w [m, n]."""
    _check_f64(w)
    n = w.shape[1]
    out = torch.empty((rows.numel(), n), dtype=torch.float64, device=w.device)
    if out.numel():
        block = 1024
        _sq_err_kernel[(rows.numel(), triton.cdiv(n, block))](w, rows.contiguous(), s.contiguous(), out, n,
                                                              NQ=(1 << bits) - 1, BLOCK=block, num_warps=4,
                                                              enable_fp_fusion=False)
    return out


@triton.jit
def _codes_kernel(w_ptr, scale_ptr, codes_ptr, words_ptr, n, wpr, BITS: tl.constexpr, UNITS: tl.constexpr):
    """The codes of row r of w at the f32 scale[r] (as f64): as u8 and packed (spqr.md §4: a little-endian bit
    stream, code t of a 32-code unit at bit t * BITS of the unit's BITS words, zero padding)."""
    r = tl.program_id(0).to(tl.int64)
    u = tl.program_id(1) * UNITS + tl.arange(0, UNITS)
    t = tl.arange(0, 32)
    j = u[:, None] * 32 + t[None, :]
    mask = j < n
    x = tl.load(w_ptr + r * n + j, mask=mask, other=0.0)
    s = tl.load(scale_ptr + r).to(tl.float64)
    q = tl.where(mask, _grid_code(x, s, ((1 << BITS) - 1) * 1.0).to(tl.int64), 0)
    tl.store(codes_ptr + r * n + j, q.to(tl.uint8), mask=mask)
    pos = t * BITS
    word = (pos >> 5)[None, :]
    shift = (pos & 31).to(tl.int64)[None, :]
    low = (q << shift) & 0xFFFFFFFF  # the code's bits in its word
    high = q >> (32 - shift)  # its bits past the word's end (0 unless it straddles)
    for k in tl.static_range(BITS):  # the pieces never overlap: their sum is their OR
        wk = tl.sum(tl.where(word == k, low, 0), axis=1) + tl.sum(tl.where(word + 1 == k, high, 0), axis=1)
        at = u * BITS + k
        tl.store(words_ptr + r * wpr + at, wk.to(tl.int32), mask=at < wpr)


def grid_codes(w: torch.Tensor, scale: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u8 codes [m, n], their packed words [m, ceil(n bits / 32)] as int32 holding the u32 bits): the codes
    clip(rint((w / scale[r] + L) / 2), 0, L) of the contiguous f64 w (f32 scales)."""
    _check_f64(w)
    m, n = w.shape
    wpr = (n * bits + 31) // 32
    codes = torch.empty((m, n), dtype=torch.uint8, device=w.device)
    words = torch.empty((m, wpr), dtype=torch.int32, device=w.device)
    units = 16
    _codes_kernel[(m, triton.cdiv(triton.cdiv(n, 32), units))](w, scale.contiguous(), codes, words, n, wpr,
                                                               BITS=bits, UNITS=units, num_warps=4,
                                                               enable_fp_fusion=False)
    return codes, words


@triton.jit
def _hist_kernel(w_ptr, lo_ptr, inv_ptr, cnt_ptr, p1_ptr, p2_ptr, n, BLOCK: tl.constexpr):
    """Each value x of row r into bin b = min(n - 1, trunc((x - lo[r]) inv[r])) of the row's n: count, x and x^2
    added at index b + 1 of the row's n + 1 (index 0 stays 0 for the prefix sums)."""
    r = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = j < n
    x = tl.load(w_ptr + r * n + j, mask=mask, other=0.0)
    y = (x - tl.load(lo_ptr + r)) * tl.load(inv_ptr + r)
    # = trunc(min(y, n - 1)) for 0 <= y <= ~n, as torch computes it; the floor at 0 only guards the atomics
    b = tl.maximum(tl.minimum(y.to(tl.int64), n - 1), 0)
    at = r * (n + 1) + b + 1
    tl.atomic_add(cnt_ptr + at, tl.full(x.shape, 1.0, tl.float64), mask=mask, sem="relaxed")
    tl.atomic_add(p1_ptr + at, x, mask=mask, sem="relaxed")
    tl.atomic_add(p2_ptr + at, x * x, mask=mask, sem="relaxed")


def histogram_prefix(w: torch.Tensor, lo: torch.Tensor, inv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The prefix sums [R, n + 1] f64 (index b: the bins below b) of the counts, sums and sums of squares of the
    contiguous f64 rows w [R, n] in n bins each (``grid_search._bounds``'s bin function; sums in any order)."""
    _check_f64(w)
    R, n = w.shape
    out = torch.zeros((3, R, n + 1), dtype=torch.float64, device=w.device)
    block = 1024
    _hist_kernel[(R, triton.cdiv(n, block))](w, lo.contiguous(), inv.contiguous(), out[0], out[1], out[2], n,
                                             BLOCK=block, num_warps=4, enable_fp_fusion=False)
    out.cumsum_(2)
    return out[0], out[1], out[2]
