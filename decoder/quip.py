"""Numba reference decoder for codec ``quip`` v1 and v2 (spec/codecs/quip.md §5, §10.5).

Every step is written as the literal f32 operations of the spec: grid values
(one multiplication), the fast Walsh-Hadamard butterflies (each element gets
the spec's stage-by-stage sums, half = 1, 2, 4, ...; three stages are done at a
time in registers, which changes the order of independent operations only),
one multiplication by the exact constant c_k, the orthogonal factor as
sequential f32 accumulation (no FMA: Numba does not contract without
fastmath), then the sign flip. No BLAS, so the result does not depend on the
machine. Inputs must already be validated.

Speed (issue 15): the spec fixes every rounding, not the order of independent
operations, so the work is vectorised across independent elements with the
exact vector intrinsics of ``simd.py`` (LANES = 16 f32 per instruction):
step 2 runs row by row, the grid values of the row decoded 16 codes per vector
straight into it (in cache), then each Hadamard block in L1: the first four
stages inside each 16-element vector and four more between 16 vectors in one
pass, the rest three at a time, the factor in registers; steps 3 and 4 copy
slabs of SLAB columns to a contiguous buffer (prefetched, the rows are n
apart), run the butterflies with 16 columns per vector in two L1-sized halves
and store with the signs applied. Short rows (h_n < 16) and narrow matrices
(n < SLAB) take the scalar loops.

v2 changes only the ends of the pipeline: codebook "e8p12" replaces the
grid step by the E8P lattice point of each 16-bit code times the row scale
(the residual codebooks add a second-stage point divided by ``resid_scale``),
and the last step multiplies by the two diagonals one after the other
(``(x * sv[r]) * su[c]``), which for i8 +-1 signs gives the v1 bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numba
import numpy as np

from ..threads import shape_size, sized
from .e8p import abs_table, code_point, odd_rows
from .e81b import e81b_table
from .output import empty_f32
from .simd import (
    LANES,
    bfly2,
    bfly4,
    bfly8,
    block1,
    block2,
    block3,
    block4,
    copy_lanes,
    dot_lanes,
    grid1,
    grid2,
    grid4,
    grid8,
    in_vector,
    mix_lanes,
    mul_lanes,
    prefetch_read,
    prefetch_write,
)


def hadamard_constant(k: int) -> np.float32:
    """c_k = RNE_f32(2^(-k/2)) (quip.md §5.2), built from its exact bit pattern."""
    if k % 2 == 0:
        bits = 0x3F800000 - ((k // 2) << 23)
    else:
        bits = 0x3F3504F3 - (((k - 1) // 2) << 23)
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


@numba.njit(cache=True, nogil=True, parallel=True)
def _e8p_grid(codes: np.ndarray, alpha: np.ndarray, odd: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """out[r, 8g + i] = (f32(t_i) * 0.25) * scale[r], t = 4 * E8P12 point of codes[r, g] (quip.md §10.5)."""
    m, groups = codes.shape
    quarter = np.float32(0.25)
    for r in numba.prange(m):
        s_ = scale[r]
        for g in range(groups):
            c = np.int64(codes[r, g])
            for i in range(8):
                e = np.float32(code_point(c, alpha, odd, i)) * quarter  # exact: t / 4
                out[r, 8 * g + i] = e * s_


@numba.njit(cache=True, nogil=True, inline="always")
def _radix8(v: np.ndarray, i: int, d: int) -> None:
    """Butterfly stages half = d, 2d, 4d on v[i + k d] (k = 0..7), kept in registers between the stages."""
    a0, a1, a2, a3 = v[i], v[i + d], v[i + 2 * d], v[i + 3 * d]
    a4, a5, a6, a7 = v[i + 4 * d], v[i + 5 * d], v[i + 6 * d], v[i + 7 * d]
    b0, b1, b2, b3 = a0 + a1, a0 - a1, a2 + a3, a2 - a3  # half = d
    b4, b5, b6, b7 = a4 + a5, a4 - a5, a6 + a7, a6 - a7
    c0, c2, c1, c3 = b0 + b2, b0 - b2, b1 + b3, b1 - b3  # half = 2d
    c4, c6, c5, c7 = b4 + b6, b4 - b6, b5 + b7, b5 - b7
    v[i], v[i + 4 * d] = c0 + c4, c0 - c4  # half = 4d
    v[i + d], v[i + 5 * d] = c1 + c5, c1 - c5
    v[i + 2 * d], v[i + 6 * d] = c2 + c6, c2 - c6
    v[i + 3 * d], v[i + 7 * d] = c3 + c7, c3 - c7


@numba.njit(cache=True, nogil=True, inline="always")
def _fwht_block(v: np.ndarray, base: int, h: int) -> None:
    """In place, the Sylvester butterflies of v[base:base + h] (h a power of two), the same per-element operations
    as the stage-by-stage loop of the spec (half = 1, 2, 4, ...).

    Each element's value after stage s depends only on its pair's values after stage s - 1, so doing stages
    half = 1, 2, 4 on each run of 8 elements in registers and then the wider stages (inner loops over
    contiguous elements: vectorised) gives the very same roundings.
    """
    if h >= 8:
        for i0 in range(base, base + h, 8):
            _radix8(v, i0, 1)
        half = 8
        while 8 * half <= h:  # then three stages at a time, vectorised over the 8 runs' positions
            for i0 in range(base, base + h, 8 * half):
                for i in range(i0, i0 + half):
                    _radix8(v, i, half)
            half *= 8
    else:
        half = 1
    while half < h:
        for i0 in range(base, base + h, 2 * half):
            for i in range(i0, i0 + half):
                u = v[i]
                w = v[i + half]
                v[i] = u + w
                v[i + half] = u - w
        half *= 2


@numba.njit(cache=True, nogil=True, parallel=True)
def _rvq_grid(codes: np.ndarray, codes2: np.ndarray, second_e8p: bool, alpha: np.ndarray, odd: np.ndarray,
              e81b: np.ndarray, rho: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """out[r, 8g + i] = ((t/4) + (u q) / rho) * scale[r] with the f32 steps of quip.md §10.11.

    ``u`` is the E8P12 point of codes2 (q = 1/4, "e8p12_rvq4") or the E81B row (q = 1/2, "e8p12_rvq3").
    """
    m, groups = codes.shape
    quarter = np.float32(0.25)
    half = np.float32(0.5)
    rh = rho[0]
    for r in numba.prange(m):
        s_ = scale[r]
        for g in range(groups):
            c = np.int64(codes[r, g])
            c2 = np.int64(codes2[r, g])
            for i in range(8):
                e0 = np.float32(code_point(c, alpha, odd, i)) * quarter  # exact: t / 4
                if second_e8p:
                    e1 = np.float32(code_point(c2, alpha, odd, i)) * quarter  # exact: u / 4
                else:
                    e1 = np.float32(e81b[c2, i]) * half  # exact: w / 2
                d = e1 / rh  # IEEE f32 division (Numba: no fastmath, no reciprocal)
                v = e0 + d
                out[r, 8 * g + i] = v * s_


@numba.njit(cache=True, nogil=True, parallel=True)
def transform_rows(x: np.ndarray, log2_h: int, c: np.ndarray, factor: np.ndarray) -> None:
    """In place, each row x[r] <- (F kron H_norm) x[r] with the exact f32 steps of quip.md §5.2: the butterflies
    (:func:`_fwht_block`), one multiplication by c_k = c[0], then for each output the factor's products added
    one after the other (acc = F[al, 0] v_0, acc = acc + F[al, al2] v_al2), for all beta at once."""
    rows, length = x.shape
    h = 1 << log2_h
    a = length // h
    ck = c[0]
    for r in numba.prange(rows):
        v = x[r]
        if log2_h > 0:
            for blk in range(a):
                _fwht_block(v, blk * h, h)
            for i in range(length):
                v[i] = v[i] * ck
        if a > 1:
            tmp = np.empty((a, h), dtype=np.float32)
            for al in range(a):
                f0 = factor[al, 0]
                for beta in range(h):
                    tmp[al, beta] = f0 * v[beta]
                for al2 in range(1, a):
                    f = factor[al, al2]
                    for beta in range(h):
                        tmp[al, beta] = tmp[al, beta] + f * v[al2 * h + beta]
            for al in range(a):
                for beta in range(h):
                    v[al * h + beta] = tmp[al, beta]


@numba.njit(cache=True, nogil=True, inline="always")
def _radix8_rows(x: np.ndarray, i: int, d: int, c0: int, c1: int) -> None:
    """Butterfly stages half = d, 2d, 4d on rows i + k d (k = 0..7) of x, columns c0..c1: the same three
    radix-2 stages (each element's pair partner per stage unchanged), kept in registers between stages."""
    for j in range(c0, c1):
        a0, a1, a2, a3 = x[i, j], x[i + d, j], x[i + 2 * d, j], x[i + 3 * d, j]
        a4, a5, a6, a7 = x[i + 4 * d, j], x[i + 5 * d, j], x[i + 6 * d, j], x[i + 7 * d, j]
        b0, b1, b2, b3 = a0 + a1, a0 - a1, a2 + a3, a2 - a3  # half = d
        b4, b5, b6, b7 = a4 + a5, a4 - a5, a6 + a7, a6 - a7
        c_0, c_2, c_1, c_3 = b0 + b2, b0 - b2, b1 + b3, b1 - b3  # half = 2d
        c_4, c_6, c_5, c_7 = b4 + b6, b4 - b6, b5 + b7, b5 - b7
        x[i, j], x[i + 4 * d, j] = c_0 + c_4, c_0 - c_4  # half = 4d
        x[i + d, j], x[i + 5 * d, j] = c_1 + c_5, c_1 - c_5
        x[i + 2 * d, j], x[i + 6 * d, j] = c_2 + c_6, c_2 - c_6
        x[i + 3 * d, j], x[i + 7 * d, j] = c_3 + c_7, c_3 - c_7


_COLS = 64  # columns per task of the column transform: a [m, 64] slab stays in cache through its stages


@numba.njit(cache=True, nogil=True, parallel=True)
def _transform_cols(x: np.ndarray, log2_h: int, c: np.ndarray, factor: np.ndarray) -> None:
    """In place, each column x[:, j] <- (F kron H_norm) x[:, j]: :func:`transform_rows` of the transpose, the same
    f32 operations per element, done on whole row segments (contiguous, vectorised) without a transpose."""
    m, n = x.shape
    h = 1 << log2_h
    a = m // h
    ck = c[0]
    for cb in numba.prange((n + _COLS - 1) // _COLS):
        c0 = cb * _COLS
        c1 = min(n, c0 + _COLS)
        if log2_h > 0:
            for blk in range(a):
                base = blk * h
                half = 1
                while 8 * half <= h:  # three stages at a time on 8 rows (fewer passes over the slab)
                    for i0 in range(base, base + h, 8 * half):
                        for i in range(i0, i0 + half):
                            _radix8_rows(x, i, half, c0, c1)
                    half *= 8
                while half < h:
                    for i0 in range(base, base + h, 2 * half):
                        for i in range(i0, i0 + half):
                            for j in range(c0, c1):
                                u = x[i, j]
                                w = x[i + half, j]
                                x[i, j] = u + w
                                x[i + half, j] = u - w
                    half *= 2
            for i in range(m):
                for j in range(c0, c1):
                    x[i, j] = x[i, j] * ck
        if a > 1:
            tmp = np.empty((a, c1 - c0), dtype=np.float32)
            for beta in range(h):
                for al in range(a):
                    f0 = factor[al, 0]
                    for j in range(c0, c1):
                        tmp[al, j - c0] = f0 * x[beta, j]
                    for al2 in range(1, a):
                        f = factor[al, al2]
                        for j in range(c0, c1):
                            tmp[al, j - c0] = tmp[al, j - c0] + f * x[al2 * h + beta, j]
                for al in range(a):
                    for j in range(c0, c1):
                        x[al * h + beta, j] = tmp[al, j - c0]


@numba.njit(cache=True, nogil=True)
def fwht_lanes(v: np.ndarray, base: int, d: int, stride: int, log2_h: int, ck: float, scale: bool = True,
               done: int = 0) -> None:
    """Stages half = 2^done .. 2^(log2_h - 1) of quip.md §5.2 (a) on d vectors at base + i * stride (i < d, blocks
    of h = 2^log2_h along i), the lanes of one register each, three stages at a time, in place; with ``scale``
    the last stage's outputs are multiplied by ck (§5.2 (b); f64, for the encoder: divided by ck, its numpy
    path's y / sqrt(h)). The caller has run stages half < 2^done, or runs the rest later."""
    k = log2_h - done
    half = 1 << done
    while k > 0:
        r = 3 if k >= 3 else k
        last = scale and k == r
        for i0 in range(0, d, half << r):
            for i in range(i0, i0 + half):
                p = base + i * stride
                if r == 3:
                    bfly8(v, v, p, half * stride, ck, last)
                elif r == 2:
                    bfly4(v, v, p, half * stride, ck, last)
                else:
                    bfly2(v, v, p, half * stride, ck, last)
        half <<= r
        k -= r


@numba.njit(cache=True, nogil=True)
def _row_block(v: np.ndarray, base: int, h: int, log2_h: int, ck: np.float32) -> None:
    """The butterflies and c_k of one block of h = 2^log2_h >= LANES elements at v[base] (quip.md §5.2 (a)-(b)):
    the 4 stages inside each vector and up to 4 more between vectors in one pass (:data:`simd.block4`), then
    the rest three at a time; the block (16 KB at h = 4096) stays in L1 throughout."""
    t = min(log2_h - 4, 4)
    last = log2_h == 4 + t
    step = LANES << t
    for p in range(base, base + h, step):
        if t == 4:
            block4(v, p, ck, last)
        elif t == 3:
            block3(v, p, ck, last)
        elif t == 2:
            block2(v, p, ck, last)
        elif t == 1:
            block1(v, p, ck, last)
        else:
            in_vector(v, p, ck, last)
    fwht_lanes(v, base, h // LANES, LANES, log2_h - 4, ck, True, t)


@numba.njit(cache=True, nogil=True)
def _mix(v: np.ndarray, base: int, h: int, a: int, factor: np.ndarray, tmp: np.ndarray) -> None:
    """quip.md §5.2 (c) in place on v[base : base + a h]: for each LANES-wide beta, the a vectors h apart mixed
    by the factor (in registers for a <= MIX_MAX, else through ``tmp`` of a * LANES)."""
    for beta in range(0, h, LANES):
        if not mix_lanes(v, base + beta, h, a, factor, 0):
            for al in range(a):
                dot_lanes(v, base + beta, h, a, factor, al * a, 1, tmp, al * LANES)
            for al in range(a):
                copy_lanes(tmp, al * LANES, v, base + al * h + beta)


@numba.njit(cache=True, nogil=True, parallel=True)
def _rows_vec(x: np.ndarray, log2_h: int, ck: np.float32, factor: np.ndarray, words: np.ndarray, bits: int,
              scale: np.ndarray, threads: int) -> None:
    """Step 2 in place, each row on its own with LANES consecutive elements per vector (needs h >= LANES):
    each block of h through :func:`_row_block`, then the factor (:func:`_mix`). With ``bits`` > 0 each row
    first gets its grid values (step 1) from ``words``, so it is transformed in cache."""
    m, n = x.shape
    h = 1 << log2_h
    a = n // h
    xf = x.reshape(m * n)
    chunks = min(m, threads)
    for ch in numba.prange(chunks):
        tmp = np.empty(a * LANES, dtype=np.float32)
        for r in range(ch * m // chunks, (ch + 1) * m // chunks):
            base = r * n
            if bits > 0:
                _grid_row(words, r, bits, scale[r], xf, base, n)
            for blk in range(a):
                _row_block(xf, base + blk * h, h, log2_h, ck)
            if a > 1:
                _mix(xf, base, h, a, factor, tmp)


SLAB = 4 * LANES  # columns per task of step 3: 256 B of each row (fewer would read too little per strided row)
AHEAD = 64  # rows between a prefetch of step 3's strided rows and their use


@numba.njit(cache=True, nogil=True, parallel=True)
def _cols_vec(x: np.ndarray, log2_h: int, ck: np.float32, factor: np.ndarray, sv: np.ndarray, su: np.ndarray,
              threads: int) -> None:
    """Steps 3 and 4 in place: every column of x [m, n] through T(k_m, F_m), then x[r, c] = (x[r, c] * sv[r]) *
    su[c] (f32 diagonals; +-1 signs flip exactly), on slabs of SLAB columns, LANES columns per vector.

    Rows of a slab are n apart in x (a strided read), so each slab is copied to a contiguous buffer, and its
    butterflies run in two cache-sized halves (h = 2^k1 * 2^k2): stages half < 2^k1 on each chunk of 2^k1
    consecutive rows right after the chunk is copied in, then stages half >= 2^k1 on each set of rows
    r + j 2^k1 (j < 2^k2): each half runs on data in L1 (a slab at m = 4096 is 1 MB, on the edge of L2). Every
    element still goes through the stages in the spec's order. Chunks are one vector apart in the buffer, so
    a set's rows (2^k1 rows apart) do not all fall into the same cache sets. Step 4 then stores in row order."""
    m, n = x.shape
    h = 1 << log2_h
    a = m // h
    k1 = (log2_h + 1) // 2
    k2 = log2_h - k1
    c1 = 1 << k1
    gap = c1 * SLAB + LANES  # buffer distance of rows c1 apart (one set's stride)
    xf = x.reshape(m * n)
    tiles = (n + SLAB - 1) // SLAB
    chunks = min(tiles, threads)
    for ch in numba.prange(chunks):
        buf = np.zeros((m >> k1) * gap, dtype=np.float32)  # row i at (i >> k1) * gap + (i & (c1 - 1)) * SLAB
        tmp = np.empty(m * SLAB if a > 1 else 0, dtype=np.float32)
        for t in range(ch * tiles // chunks, (ch + 1) * tiles // chunks):
            c0 = t * SLAB
            width = min(SLAB, n - c0)
            full = width // LANES  # whole vectors; a last partial one is copied element by element
            groups = (width + LANES - 1) // LANES
            for q in range(m >> k1):  # copy a chunk of c1 rows in, then its first k1 stages
                for i in range(q * c1, (q + 1) * c1):
                    ip, cp = (i + AHEAD, c0) if i + AHEAD < m else (i + AHEAD - m, c0 + SLAB)  # then the next slab's
                    if cp < n:
                        for g in range(0, min(SLAB, n - cp), LANES):
                            prefetch_read(xf, ip * n + cp + g)
                    o = q * gap + (i - q * c1) * SLAB
                    for g in range(full):
                        copy_lanes(xf, i * n + c0 + g * LANES, buf, o + g * LANES)
                    for c in range(full * LANES, width):
                        buf[o + c] = x[i, c0 + c]
                for g in range(groups):
                    fwht_lanes(buf, q * gap + g * LANES, c1, SLAB, k1, ck, k2 == 0)
            for blk in range(a):  # the last k2 stages on each set of rows r + j c1 of the block
                for r in range(c1):
                    b0 = blk * (h >> k1) * gap + r * SLAB
                    for g in range(groups):
                        fwht_lanes(buf, b0 + g * LANES, 1 << k2, gap, k2, ck, True)
            res = buf
            if a > 1:  # the factor over the blocks' rows al * h + beta (buffer distance h / c1 * gap)
                for g in range(groups):
                    for beta in range(h):
                        ob = (beta >> k1) * gap + (beta & (c1 - 1)) * SLAB + g * LANES
                        for al in range(a):
                            dot_lanes(buf, ob, (h >> k1) * gap, a, factor, al * a, 1, tmp,
                                      (al * h + beta) * SLAB + g * LANES)
                res = tmp
            for i in range(m):  # step 4, in row order
                if i + AHEAD < m:
                    for g in range(0, width, LANES):
                        prefetch_write(xf, (i + AHEAD) * n + c0 + g)
                o = i * SLAB if a > 1 else (i >> k1) * gap + (i & (c1 - 1)) * SLAB
                for g in range(full):
                    mul_lanes(res, o + g * LANES, sv[i], su, c0 + g * LANES, xf, i * n + c0 + g * LANES)
                for c in range(full * LANES, width):
                    x[i, c0 + c] = (res[o + c] * sv[i]) * su[c0 + c]


@numba.njit(cache=True, nogil=True)
def _grid_vec(wf: np.ndarray, wbase: int, bits: int, s_: np.float32, out: np.ndarray, base: int, n: int) -> bool:
    """:func:`_grid_row` LANES codes per vector for b in 1, 2, 4, 8 and n a multiple of LANES (the row's words
    start at wf[wbase]); False (nothing written) for other widths."""
    off = (1 << bits) - 1
    if n % LANES or bits not in (1, 2, 4, 8):
        return False
    for v in range(n // LANES):
        w0 = wbase + (v * LANES * bits) // 32
        sh = (v * LANES * bits) % 32
        if bits == 4:
            grid4(wf, w0, sh, off, s_, out, base + v * LANES)
        elif bits == 2:
            grid2(wf, w0, sh, off, s_, out, base + v * LANES)
        elif bits == 8:
            grid8(wf, w0, sh, off, s_, out, base + v * LANES)
        else:
            grid1(wf, w0, sh, off, s_, out, base + v * LANES)
    return True


@numba.njit(cache=True, nogil=True)
def _grid_row(words: np.ndarray, r: int, bits: int, s_: np.float32, out: np.ndarray, base: int, n: int) -> None:
    """out[base + j] = f32(2 q_j - (2^b - 1)) * s_ for the n codes of row r (quip.md §5.1), read from the packed
    rows (spqr.md §4): LANES codes per vector where :func:`_grid_vec` applies, else as a bit stream."""
    wc = words.shape[1]
    if _grid_vec(words.reshape(words.size), r * wc, bits, s_, out, base, n):
        return
    off = (1 << bits) - 1
    mask = np.uint64(off)
    ub = np.uint64(bits)
    acc = np.uint64(0)
    nacc = 0
    wi = 0
    for j in range(n):
        if nacc < bits:
            acc |= np.uint64(words[r, wi]) << np.uint64(nacc)
            wi += 1
            nacc += 32
        out[base + j] = np.float32(2 * np.int64(acc & mask) - off) * s_
        acc >>= ub
        nacc -= bits


@numba.njit(cache=True, nogil=True, parallel=True)
def _grid_words(words: np.ndarray, bits: int, scale: np.ndarray, out: np.ndarray) -> None:
    """out[r, j] = f32(2 q - (2^b - 1)) * scale[r] (quip.md §5.1) for every row."""
    m, n = out.shape
    of = out.reshape(m * n)
    for r in numba.prange(m):
        _grid_row(words, r, bits, scale[r], of, r * n, n)


@numba.njit(cache=True, nogil=True, parallel=True)
def _diagonals(x: np.ndarray, sv: np.ndarray, su: np.ndarray) -> None:
    """x[r, j] = (x[r, j] * sv[r]) * su[j]: two f32 multiplies in this order (quip.md §10.5 step 4)."""
    m, n = x.shape
    for r in numba.prange(m):
        v = sv[r]
        for j in range(n):
            x[r, j] = (x[r, j] * v) * su[j]


def e8p_values(codes: np.ndarray, scale: np.ndarray, n: int) -> np.ndarray:
    """Step 1 for codebook "e8p12": f32 [m, n] lattice values times the row scale."""
    c = np.ascontiguousarray(codes, dtype=np.uint16)
    x = empty_f32((c.shape[0], n))
    _e8p_grid(c, abs_table(), odd_rows(), np.ascontiguousarray(scale, dtype=np.float32), x)
    return x


def rvq_values(codebook: str, codes: np.ndarray, codes2: np.ndarray, resid_scale: float, scale: np.ndarray,
               n: int) -> np.ndarray:
    """Step 1 for the residual codebooks "e8p12_rvq4" / "e8p12_rvq3" (quip.md §10.11): f32 [m, n]."""
    c = np.ascontiguousarray(codes, dtype=np.uint16)
    second_e8p = codebook == "e8p12_rvq4"
    c2 = np.ascontiguousarray(codes2, dtype=np.uint16 if second_e8p else np.uint8)
    x = empty_f32((c.shape[0], n))
    rho = np.array([resid_scale], dtype=np.float32)
    _rvq_grid(c, c2, second_e8p, abs_table(), odd_rows(), e81b_table(), rho,
              np.ascontiguousarray(scale, dtype=np.float32), x)
    return x


@sized(shape_size)
def decode(params: Mapping[str, Any], sections: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Decoded f32 [m, n] weight of a validated quip tensor: diag(sv) D_m Qhat D_n^T diag(su).

    ``params`` are the codec's checked params: a ``codebook`` key means codec_version 2.
    """
    m, n = shape
    kn, km = int(params["log2_hn"]), int(params["log2_hm"])
    empty = np.zeros((1, 1), dtype=np.float32)
    fn = np.ascontiguousarray(sections["factor_n"], dtype=np.float32) if "factor_n" in sections else empty
    fm = np.ascontiguousarray(sections["factor_m"], dtype=np.float32) if "factor_m" in sections else empty
    for f, d, k in ((fn, n, kn), (fm, m, km)):  # the vector kernels index without bounds checks
        if d % (1 << k) or (d >> k > 1 and f.shape != (d >> k, d >> k)):
            raise ValueError(f"quip decode: factor {f.shape} does not fit dimension {d} with log2_h = {k}")
    words = np.zeros((1, 1), dtype=np.uint32)
    bits = 0  # > 0: step 1 from the grid words, inside step 2's row loop
    if params.get("codebook") == "e8p12":
        x = e8p_values(sections["codes"], sections["scale"], n)
    elif params.get("codebook") in ("e8p12_rvq4", "e8p12_rvq3"):
        x = rvq_values(params["codebook"], sections["codes"], sections["codes2"], float(params["resid_scale"]),
                       sections["scale"], n)
    else:
        x = empty_f32((m, n))
        words = np.ascontiguousarray(sections["codes"])  # spqr.md §4 bit streams
        bits = int(params["bits"])
    scale = np.ascontiguousarray(sections["scale"], dtype=np.float32)
    threads = numba.get_num_threads()
    if kn >= 4:  # step 2: along n, each row (with step 1 first, for the grid)
        _rows_vec(x, kn, hadamard_constant(kn), fn.reshape(-1), words, bits, scale, threads)
    else:  # h_n < LANES: the scalar rows (short vectors)
        if bits:
            _grid_words(words, bits, scale, x)
        transform_rows(x, kn, np.array([hadamard_constant(kn)]), fn)
    sv = np.asarray(sections["sv"]).astype(np.float32)  # i8 signs or f16/f32 diagonals, widened exactly
    su = np.asarray(sections["su"]).astype(np.float32)
    if n >= SLAB:  # steps 3 and 4: along m, each column, then the diagonals
        _cols_vec(x, km, hadamard_constant(km), fm.reshape(-1), sv, su, threads)
    else:  # narrow: the scalar columns (a SLAB-wide buffer would outgrow the matrix)
        _transform_cols(x, km, np.array([hadamard_constant(km)]), fm)
        _diagonals(x, sv, su)
    return x
