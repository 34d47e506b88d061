"""Triton kernels over the *tiled* resident layout of codec ``spqr`` (built by ``spqr.prepare``).

Why a second layout: the grouped repack (``_spqr_grouped.py``) keeps 3-bit codes in 4-bit fields and the
statistics as f16 pairs, so it streams ~6.4 bits per weight for a 3.95-bit tensor. This one holds
exactly ``bits`` bits per code and the statistics as their codes, so the bytes streamed per call are
about the spec's (spqr.md §7).

Layout, per row ``r`` and *unit* ``u`` of 32 consecutive stored columns, ``bits`` 32-bit words stored
``tw[s, u, r]`` (rows fastest, as the spec's statistics are): a warp's loads of one slot of one unit
for consecutive rows are contiguous, and each thread holds several rows of the same unit, so one
load of an activation serves all of them (register blocking along rows).

* bits 4: slot ``s`` (0..3) holds columns ``32u + 8s + c`` in 4-bit fields ``c = 0..7`` at bits ``4c``;
* bits 2: slot ``s`` (0..1) holds columns ``32u + 16s + c`` in 2-bit fields ``c = 0..15`` at bits ``2c``;
* bits 3 (a 2-bit plane and a 1-bit plane, 3 = 2 + 1): slot ``h`` (0, 1) holds the low two bits of
  *half* ``h`` (columns ``32u + 16h + …``): bits ``4c, 4c+1`` = lo(16h + c), bits ``4c+2, 4c+3`` =
  lo(16h + 8 + c); slot 2 holds the high bits: bit ``4c + t`` = hi(8t + c). Two shifts and two LOP3
  per half rebuild the bits-4 words of slots ``2h`` and ``2h+1`` (:func:`_nibble_words`), so the
  rest of every kernel sees 4-bit fields.

A field never straddles a word and every shift is a compile-time constant. A field is extracted *in
place*: ``(w & (MASK << p)) | 0x4B000000`` is the f32 ``2^23 + q·2^p``, so one FADD gives ``q·2^p``
exactly; the batch-1 kernel pre-scales x by ``2^-p`` instead of shifting the field back.

Statistics are per (row, β1-group) with β1 a multiple of 16, so each half (16 columns) of a unit
lies in one group: ``g = (2u + h) // (β1 / 16)``. They are read as the spec's codes (one byte of
scale|zero codes per (row, group) and the four second-level f16 values per (group, row block)) or,
when they are not 3+3-bit codes, as an f16 S|Z pair per (row, group).

Statistics are stored group-major ``[G, m]`` like the spec's, for the same reason.

* ``xprep_kernel``: x -> the batch-1 operands (slot-major ``xq[i, u]``, pre-scaled, half sums, stored order).
* ``gemv_kernel``: ``y = W x``; one or two activation rows by FMAs with the zero folded out of each half
  (``S·(Σ q·x − Z·Σ x)``), 3..16 rows (``MatvecConfig.dot_min_batch``) by one ``tl.dot`` per tile of f16
  weights decoded by f16x2 FMAs in *pair order* (:func:`_tile_h2`; x in the same order from
  ``xdot_kernel(PAIR=True)``, the outliers' x transposed by ``xot_kernel``).
* the dense matrix (bit-exact, stored or output column order) is ``_spqr_dot.dequant_kernel``'s: one
  dequantization of the tiled layout, shared by the prefill and ``dequantize_prepared``.

Why this module is long: the kernels share one word/statistics decode (``_load_words``, ``_half_stats``)
that a split into modules would have to export; the batch-1 f16x2 path carries both x forms (xprep's
buffers, or built in the GEMV for the one-launch ``x_inline`` variant).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import f16_hi as _f16_hi
from ._common import f16_lo as _f16_lo
from ._common import f16_pack as _f16_pack
from ._common import h2_biased as _biased
from ._common import h2_fma as _h2_fma
from ._common import h2_sum as _h2_sum
from ._common import store_rows
from ._spqr_grouped import _f16_at, _field, _outliers, _split_finish, _y_offsets


@triton.jit
def xprep_kernel(x_ptr, idx_ptr, xq_ptr, xs_ptr, xo_ptr, n, NUT, x_sb,
                 F: tl.constexpr, WST: tl.constexpr, BU: tl.constexpr):
    """Batch-1 operands for BU units: xq[i, u] = x[32u + i]·2^-p, xs[2u + h] half sums, xo in stored order."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    u = pid * BU + tl.arange(0, BU)
    i = tl.arange(0, 32)
    col = u[:, None] * 32 + i[None, :]
    cm = (u[:, None] < NUT) & (col < n)
    src = tl.load(idx_ptr + col, mask=cm, other=0)
    xv = tl.load(x_ptr + b * x_sb + src, mask=cm, other=0.0).to(tl.float32)
    tl.store(xo_ptr + b * n + col, xv, mask=cm)
    h0 = tl.sum(tl.where(i[None, :] < 16, xv, 0.0), axis=1)
    h1 = tl.sum(tl.where(i[None, :] >= 16, xv, 0.0), axis=1)
    um = u < NUT
    tl.store(xs_ptr + b * (2 * NUT) + 2 * u, h0, mask=um)
    tl.store(xs_ptr + b * (2 * NUT) + 2 * u + 1, h1, mask=um)
    p = ((i % F) % (F // 2)) * WST
    xs = xv * tl.exp2(-p.to(tl.float32))[None, :]
    tl.store(xq_ptr + b * (32 * NUT) + i[None, :] * NUT + u[:, None], xs, mask=u[:, None] < NUT)


XR_WORDS = 20  # int32 words per unit in xprep_h2_kernel's record (19 used; 80 bytes, 16-byte aligned)
XR = tl.constexpr(XR_WORDS)


@triton.jit
def xprep_h2_kernel(x_ptr, idx_ptr, xr_ptr, xo_ptr, n, NUT, x_sb, BU: tl.constexpr):
    """Batch-1 operands of the f16x2 kernel for BU units: one record of XR int32 words per unit.

    Why a record: the GEMV reads a unit's 19 values at constant offsets from one address (slot-major
    buffers cost it an address computation per load). [j = 4s + c, j < 16]: the f16 pair
    (x[32u + 8s + c], x[32u + 8s + c + 4])·2^-e_u (the two fields one mask of a bits-4 word puts into the
    halves of a register; e_u the unit's exponent, so every scaled x is below 1 in magnitude and a
    half's f16 sum of 16 code·x products stays far from the f16 range); [16]: 2^e_u (f32 bits);
    [17], [18]: the unscaled half sums (f32 bits). xo: x in stored order (f32) for the outliers.
    """
    pid = tl.program_id(0)
    b = tl.program_id(1)
    x_ptr += b * x_sb
    xr_ptr += b * (XR * NUT)
    xo_ptr += b * n
    u = pid * BU + tl.arange(0, BU)
    j = tl.arange(0, 16)
    um = u < NUT
    col_lo = u[:, None] * 32 + (j // 4 * 8 + j % 4)[None, :]
    col_hi = col_lo + 4
    m_lo = um[:, None] & (col_lo < n)
    m_hi = um[:, None] & (col_hi < n)
    lo = tl.load(x_ptr + tl.load(idx_ptr + col_lo, mask=m_lo, other=0), mask=m_lo, other=0.0).to(tl.float32)
    hi = tl.load(x_ptr + tl.load(idx_ptr + col_hi, mask=m_hi, other=0), mask=m_hi, other=0.0).to(tl.float32)
    tl.store(xo_ptr + col_lo, lo, mask=m_lo)
    tl.store(xo_ptr + col_hi, hi, mask=m_hi)
    first = (j < 8)[None, :]
    rec = xr_ptr + u * XR
    tl.store(rec + 17, tl.sum(tl.where(first, lo + hi, 0.0), axis=1).to(tl.int32, bitcast=True), mask=um)
    tl.store(rec + 18, tl.sum(tl.where(first, 0.0, lo + hi), axis=1).to(tl.int32, bitcast=True), mask=um)
    mx = tl.maximum(tl.max(tl.abs(lo), axis=1), tl.max(tl.abs(hi), axis=1))
    e = ((mx.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 126  # 2^(e-1) <= mx < 2^e
    e = tl.minimum(tl.maximum(e, -100), 100)
    tl.store(rec + 16, (e + 127) << 23, mask=um)
    inv = ((127 - e) << 23).to(tl.float32, bitcast=True)[:, None]
    hl = (lo * inv).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hh = (hi * inv).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    tl.store(rec[:, None] + j[None, :], hl | (hh << 16), mask=um[:, None])


@triton.jit
def xdot_kernel(x_ptr, idx_ptr, xn_ptr, n, NP, x_sb, BC: tl.constexpr, PAIR: tl.constexpr = False):
    """x (feature order, any float dtype) -> xn[b, j] = x[b, idx[j]] in stored order, zero padded to NP.

    PAIR: position j holds stored column ``pair_order_col(j)`` instead (the f16x2 dot's K order), so the
    GEMV reads its x tile with contiguous vector loads.
    """
    j = tl.program_id(0) * BC + tl.arange(0, BC)
    b = tl.program_id(1)
    col = pair_order_col(j) if PAIR else j
    cm = col < n
    src = tl.load(idx_ptr + col, mask=cm, other=0)
    xv = tl.load(x_ptr + b * x_sb + src, mask=cm, other=0.0)
    tl.store(xn_ptr + b * NP + j, xv.to(xn_ptr.dtype.element_ty), mask=j < NP)


@triton.jit
def xot_kernel(x_ptr, idx_ptr, xt_ptr, n, nb, x_sb, BC: tl.constexpr, BB: tl.constexpr):
    """x (feature order) -> xt[j, b] = f32 x[b, idx[j]], stored order, BB columns (zero past nb): the dot
    path's outlier operand (one vector load per outlier for all batch rows)."""
    j = tl.program_id(0) * BC + tl.arange(0, BC)
    bb = tl.arange(0, BB)
    cm = j < n
    src = tl.load(idx_ptr + j, mask=cm, other=0)
    xv = tl.load(x_ptr + bb[None, :] * x_sb + src[:, None], mask=cm[:, None] & (bb < nb)[None, :], other=0.0)
    tl.store(xt_ptr + j[:, None] * BB + bb[None, :], xv.to(tl.float32), mask=cm[:, None])


@triton.jit
def _row_block(pid_m, m, B2, R2: tl.constexpr, BM: tl.constexpr):
    """(rows, rmask, k2) of program ``pid_m``'s BM rows: k2 is the first of the R2 β2 row blocks they lie in
    (R2 > 0: the rows and the blocks nest, one scalar), else each row's own block."""
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < m
    if R2 > 0:
        k2 = (pid_m * BM) // B2
    else:
        k2 = rows // B2
    return rows, rmask, k2


@triton.jit
def _load_words(w_ptr, off, SS, lmask, BITS: tl.constexpr, SEL3: tl.constexpr = False):
    """The words at off (+ SS per slot) as uint32, rebuilt into bits-4 words for BITS = 3 (BITS = 2: two)."""
    a0, a1, a2, a3 = _raw_words(w_ptr, off, SS, lmask, BITS)
    return _words(a0, a1, a2, a3, BITS, SEL3)


@triton.jit
def _raw_words(w_ptr, off, SS, lmask, BITS: tl.constexpr):
    """The stored words of one tile (loads only: a prefetch carries them to the next step undecoded)."""
    w0 = tl.load(w_ptr + off, mask=lmask, other=0).to(tl.uint32, bitcast=True)
    w1 = tl.load(w_ptr + off + SS, mask=lmask, other=0).to(tl.uint32, bitcast=True)
    if BITS == 2:
        return w0, w1, w0, w1
    w2 = tl.load(w_ptr + off + 2 * SS, mask=lmask, other=0).to(tl.uint32, bitcast=True)
    if BITS == 3:
        return w0, w1, w2, w2
    w3 = tl.load(w_ptr + off + 3 * SS, mask=lmask, other=0).to(tl.uint32, bitcast=True)
    return w0, w1, w2, w3


@triton.jit
def _words(w0, w1, w2, w3, BITS: tl.constexpr, SEL3: tl.constexpr = False):
    """:func:`_raw_words`' words as bits-4 words (BITS = 3: rebuilt from the two planes; SEL3: with junk in
    each field's bit 3, :func:`_nibble_sel`)."""
    if BITS == 3:
        if SEL3:
            return _nibble_sel(w0, w1, w2)
        return _nibble_words(w0, w1, w2)
    return w0, w1, w2, w3


@triton.jit
def _nibble_words(a0, a1, hi):
    """Low-bit words of the two halves + the high-bit word -> the four bits-4 words (3-bit codes)."""
    lo_m = 0x33333333
    hi_m = 0x44444444
    n0 = (a0 & lo_m) | ((hi << 2) & hi_m)
    n1 = ((a0 >> 2) & lo_m) | ((hi << 1) & hi_m)
    n2 = (a1 & lo_m) | (hi & hi_m)
    n3 = ((a1 >> 2) & lo_m) | ((hi >> 1) & hi_m)
    return n0, n1, n2, n3


@triton.jit
def _nibble_sel(a0, a1, hi):
    """:func:`_nibble_words` for readers that mask 3 bits per field (the f16x2 GEMV's :func:`_biased`): bit 3
    of each field is left as junk, so each word is one bit-select LOP3 (plus its shift) instead of a mask, a
    shift-mask and an OR."""
    m = 0xCCCCCCCC
    s0 = a0 >> 2
    s1 = a1 >> 2
    n0 = a0 ^ ((a0 ^ (hi << 2)) & m)
    n1 = s0 ^ ((s0 ^ (hi << 1)) & m)
    n2 = a1 ^ ((a1 ^ hi) & m)
    n3 = s1 ^ ((s1 ^ (hi >> 1)) & m)
    return n0, n1, n2, n3


@triton.jit
def _pscale(c: tl.constexpr, F: tl.constexpr, WST: tl.constexpr):
    """2^-p of field c (exact power of two)."""
    return 1.0 / (1 << ((c % (F // 2)) * WST))


@triton.jit
def _per_row(v, R2: tl.constexpr, BM: tl.constexpr, NU: tl.constexpr):
    """[R2, NU] values of the program's R2 row blocks -> [BM, NU] (each repeated over its BM / R2 rows)."""
    if R2 == 1:
        out = v
    else:
        out = tl.reshape(tl.broadcast_to(v[:, None, :], (R2, BM // R2, NU)), (BM, NU))
    return out


@triton.jit
def _stats(rows, k2, g, gmask, lmask, st_ptr, st2_ptr, sz_ptr, m, K2, SB: tl.constexpr, STQ: tl.constexpr,
           R2: tl.constexpr, EXACT: tl.constexpr, BM: tl.constexpr, NU: tl.constexpr):
    """(S, Z) f32 [BM, NU] of groups g [NU] (spqr.md §5 step 1; EXACT rounds through f16 as the spec does).

    STQ: one byte of scale|zero codes per (row, group), [G, m], and the four second-level f16 values
    of (group, row block) in one int64, [G, K2]. When the program's rows and the β2 row blocks nest
    (R2 > 0: its BM rows are in one block, or are R2 whole blocks starting at block k2), the
    second-level values are one [R2, NU] load decoded once and repeated over the rows: a per-row
    gather (R2 = 0, the general case) is uncoalesced and pulls every tensor of the loop into its
    layout (a shared-memory round trip per tensor and step).
    Otherwise (16-bit statistics) S|Z f16 bits in one int32 per (row, group), [G, m].
    """
    c, v = _stats_raw(rows, k2, g, gmask, lmask, st_ptr, st2_ptr, sz_ptr, m, K2, STQ, R2)
    return _stats_dec(c, v, SB, STQ, R2, EXACT, BM, NU)


@triton.jit
def _stats_raw(rows, k2, g, gmask, lmask, st_ptr, st2_ptr, sz_ptr, m, K2, STQ: tl.constexpr, R2: tl.constexpr):
    """:func:`_stats`' loads only: (codes, second-level values), or (S|Z pairs, same) when not STQ."""
    idx = g[None, :] * m + rows[:, None]
    if STQ:
        c = tl.load(st_ptr + idx, mask=lmask, other=0)
        if R2 > 0:
            kb = k2 + tl.arange(0, R2)
            v = tl.load(st2_ptr + g[None, :] * K2 + kb[:, None], mask=(kb < K2)[:, None] & gmask[None, :], other=0)
        else:
            v = tl.load(st2_ptr + g[None, :] * K2 + k2[:, None], mask=lmask, other=0)
    else:
        c = tl.load(sz_ptr + idx, mask=lmask, other=0)
        v = c
    return c, v


@triton.jit
def _stats_dec(c, v, SB: tl.constexpr, STQ: tl.constexpr, R2: tl.constexpr, EXACT: tl.constexpr,
               BM: tl.constexpr, NU: tl.constexpr):
    """(S, Z) from :func:`_stats_raw`' values."""
    if STQ:
        c = c.to(tl.int32)
        sc = (c & ((1 << SB) - 1)).to(tl.float32)
        zc = ((c >> SB) & 0xFF).to(tl.float32)
        if EXACT:
            sz = _f16_at(v, 0)
            ss = _f16_at(v, 16)
            zz = _f16_at(v, 32)
            zs = _f16_at(v, 48)
            if R2 > 0:
                sz = _per_row(sz, R2, BM, NU)
                ss = _per_row(ss, R2, BM, NU)
                zz = _per_row(zz, R2, BM, NU)
                zs = _per_row(zs, R2, BM, NU)
            S = ((sc - sz) * ss).to(tl.float16).to(tl.float32)
            Z = ((zc - zz) * zs).to(tl.float16).to(tl.float32)
        else:  # the matvec: c·s − z·s (one FMA, no f16 rounding; within its error contract)
            ss = _f16_at(v, 16)
            zs = _f16_at(v, 48)
            szs = _f16_at(v, 0) * ss
            zzs = _f16_at(v, 32) * zs
            if R2 > 0:
                ss = _per_row(ss, R2, BM, NU)
                zs = _per_row(zs, R2, BM, NU)
                szs = _per_row(szs, R2, BM, NU)
                zzs = _per_row(zzs, R2, BM, NU)
            S = sc * ss - szs
            Z = zc * zs - zzs
    else:
        S = _f16_at(c, 0)
        Z = _f16_at(c, 16)
    return S, Z


@triton.jit
def _half_stats(rows, k2, u, rmask, umask, hpg, st_ptr, st2_ptr, sz_ptr, m, G, K2,
                SB: tl.constexpr, STQ: tl.constexpr, SAME: tl.constexpr, R2: tl.constexpr,
                EXACT: tl.constexpr, BM: tl.constexpr, NU: tl.constexpr):
    """(S0, Z0, S1, Z1): the statistics of the two halves of each unit (SAME: one group covers both)."""
    c0, v0, c1, v1 = _half_stats_raw(rows, k2, u, rmask, umask, hpg, st_ptr, st2_ptr, sz_ptr, m, G, K2, STQ, SAME,
                                     R2)
    return _half_stats_dec(c0, v0, c1, v1, SB, STQ, SAME, R2, EXACT, BM, NU)


@triton.jit
def _half_stats_raw(rows, k2, u, rmask, umask, hpg, st_ptr, st2_ptr, sz_ptr, m, G, K2,
                    STQ: tl.constexpr, SAME: tl.constexpr, R2: tl.constexpr):
    """:func:`_half_stats`' loads only (SAME: the second half's are the first's)."""
    g0 = (2 * u) // hpg
    gm0 = umask & (g0 < G)
    c0, v0 = _stats_raw(rows, k2, g0, gm0, rmask[:, None] & gm0[None, :], st_ptr, st2_ptr, sz_ptr, m, K2, STQ, R2)
    if SAME:
        c1 = c0
        v1 = v0
    else:
        g1 = (2 * u + 1) // hpg
        gm1 = umask & (g1 < G)
        c1, v1 = _stats_raw(rows, k2, g1, gm1, rmask[:, None] & gm1[None, :], st_ptr, st2_ptr, sz_ptr, m, K2, STQ,
                            R2)
    return c0, v0, c1, v1


@triton.jit
def _half_stats_dec(c0, v0, c1, v1, SB: tl.constexpr, STQ: tl.constexpr, SAME: tl.constexpr, R2: tl.constexpr,
                    EXACT: tl.constexpr, BM: tl.constexpr, NU: tl.constexpr):
    """(S0, Z0, S1, Z1) from :func:`_half_stats_raw`' values."""
    S0, Z0 = _stats_dec(c0, v0, SB, STQ, R2, EXACT, BM, NU)
    if SAME:
        S1 = S0
        Z1 = Z0
    else:
        S1, Z1 = _stats_dec(c1, v1, SB, STQ, R2, EXACT, BM, NU)
    return S0, Z0, S1, Z1


@triton.jit
def _word_dot(w, xq_ptr, slot0: tl.constexpr, u, umask, NUT, F: tl.constexpr, WST: tl.constexpr):
    """Σ_c q_c·x_c over the F fields of words w [BM, NU] (x pre-scaled, slot-major xq[i, u]).

    Slot-major so that the threads of a warp, which hold consecutive units, read consecutive x values
    (one sector per load; unit-major x made each load touch one cache line per unit and the L1 the
    bottleneck: ncu showed 71 % L1 busy at 23 % DRAM throughput).
    """
    wh = w >> 16
    xb = xq_ptr + u
    part = _field(w, wh, 0, F, WST) * tl.load(xb + slot0 * NUT, mask=umask, other=0.0)[None, :]
    for c in tl.static_range(1, F):
        xv = tl.load(xb + (slot0 + c) * NUT, mask=umask, other=0.0)
        part += _field(w, wh, c, F, WST) * xv[None, :]
    return part


@triton.jit
def _unbias(v, ODD: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr):
    """The f16 pair q - C from v = :func:`_biased`'s f16 pair 1024 + q (or 1024 + 16q when ODD).

    One exact FMA removes the bias and the
    centre C (an integer, 2^(bits-1)): the sums of (q - C)·x are smaller than those of q·x, so less f16
    rounding is left in S·(Σ(q - C)·x − (Z - C)·Σx) when Z is near the middle of the code range.
    ASM: PTX ``fma.rn.f16x2`` (GPU; pure, so the batch rows of one weight share it); otherwise the same
    f16 arithmetic in Triton ops (the interpreter has no inline assembly).
    """
    tl.static_assert((C == 4) | (C == 8), "the f16x2 path is for bits 3 and 4")
    if ASM:  # (1024 + 16q) / 16 - (64 + C), 64 + C = f16 0x5400 + 16 C; (1024 + q) - (1024 + C), 0x6400 + C
        if ODD:
            if C == 4:
                q = tl.inline_asm_elementwise(
                    "{.reg .b32 k, z; mov.b32 k, 0x2C002C00; mov.b32 z, 0xD440D440; fma.rn.f16x2 $0, $1, k, z;}",
                    "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
            else:
                q = tl.inline_asm_elementwise(
                    "{.reg .b32 k, z; mov.b32 k, 0x2C002C00; mov.b32 z, 0xD480D480; fma.rn.f16x2 $0, $1, k, z;}",
                    "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
        else:
            if C == 4:
                q = tl.inline_asm_elementwise(
                    "{.reg .b32 k, z; mov.b32 k, 0x3C003C00; mov.b32 z, 0xE404E404; fma.rn.f16x2 $0, $1, k, z;}",
                    "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
            else:
                q = tl.inline_asm_elementwise(
                    "{.reg .b32 k, z; mov.b32 k, 0x3C003C00; mov.b32 z, 0xE408E408; fma.rn.f16x2 $0, $1, k, z;}",
                    "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
    else:
        if ODD:
            q = _f16_pack((_f16_lo(v) * 0.0625 - (64.0 + C)).to(tl.float16),
                          (_f16_hi(v) * 0.0625 - (64.0 + C)).to(tl.float16))
        else:
            q = _f16_pack((_f16_lo(v) - (1024.0 + C)).to(tl.float16), (_f16_hi(v) - (1024.0 + C)).to(tl.float16))
    return q


@triton.jit
def _xval(x_ptr, idx_ptr, col, cm, HAS_PERM: tl.constexpr):
    """x at stored columns col [NU] (f32), read from the caller's x through the permutation."""
    if HAS_PERM:
        col = tl.load(idx_ptr + col, mask=cm, other=0)
    return tl.load(x_ptr + col, mask=cm, other=0.0).to(tl.float32)


@triton.jit
def _x_unit(x_ptr, idx_ptr, u, umask, n, HAS_PERM: tl.constexpr):
    """(2^-e_u, 2^e_u, half sums) of units u straight from x: xprep_h2_kernel's per-unit values, in the GEMV.

    Elementwise over 32 [NU] vectors, so the values stay in the layout the products use (no shuffles).
    """
    mx = tl.zeros(u.shape, dtype=tl.float32)
    s0 = tl.zeros(u.shape, dtype=tl.float32)
    s1 = tl.zeros(u.shape, dtype=tl.float32)
    for i in tl.static_range(32):
        col = u * 32 + i
        v = _xval(x_ptr, idx_ptr, col, umask & (col < n), HAS_PERM)
        mx = tl.maximum(mx, tl.abs(v))
        if i < 16:
            s0 += v
        else:
            s1 += v
    e = ((mx.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 126
    e = tl.minimum(tl.maximum(e, -100), 100)
    return ((127 - e) << 23).to(tl.float32, bitcast=True), ((e + 127) << 23).to(tl.float32, bitcast=True), s0, s1


@triton.jit
def _x_pair(xr, j: tl.constexpr, u, umask, x_ptr, idx_ptr, inv, n, XIN: tl.constexpr, HAS_PERM: tl.constexpr):
    """Record word j [1, NU] of units u (xr: their records): from xprep_h2_kernel, or (XIN) built from x
    with the unit scale inv."""
    if XIN:
        c_lo = u * 32 + (j // 4 * 8 + j % 4)
        lo = _xval(x_ptr, idx_ptr, c_lo, umask & (c_lo < n), HAS_PERM) * inv
        hi = _xval(x_ptr, idx_ptr, c_lo + 4, umask & (c_lo + 4 < n), HAS_PERM) * inv
        v = _f16_pack(lo.to(tl.float16), hi.to(tl.float16))
    else:
        v = tl.load(xr + j, mask=umask, other=0)
    return v[None, :]


@triton.jit
def _word_h2(w, xr, j0: tl.constexpr, u, umask, acc, C: tl.constexpr, ASM: tl.constexpr, x_ptr, idx_ptr,
             inv, n, XIN: tl.constexpr, HAS_PERM: tl.constexpr, BITS: tl.constexpr):
    """acc + Σ (q - C)·x over the 8 fields of bits-4 words w [BM, NU], as four f16x2 pairs: per pair one
    LOP3 (:func:`_biased`), one exact FMA (:func:`_unbias`) and the product's FMA."""
    wi = w.to(tl.int32, bitcast=True)
    w8 = (w >> 8).to(tl.int32, bitcast=True)
    acc = _h2_fma(_unbias(_biased(wi, False, BITS, ASM), False, C, ASM),
                  _x_pair(xr, j0, u, umask, x_ptr, idx_ptr, inv, n, XIN, HAS_PERM), acc, ASM)
    acc = _h2_fma(_unbias(_biased(wi, True, BITS, ASM), True, C, ASM),
                  _x_pair(xr, j0 + 1, u, umask, x_ptr, idx_ptr, inv, n, XIN, HAS_PERM), acc, ASM)
    acc = _h2_fma(_unbias(_biased(w8, False, BITS, ASM), False, C, ASM),
                  _x_pair(xr, j0 + 2, u, umask, x_ptr, idx_ptr, inv, n, XIN, HAS_PERM), acc, ASM)
    acc = _h2_fma(_unbias(_biased(w8, True, BITS, ASM), True, C, ASM),
                  _x_pair(xr, j0 + 3, u, umask, x_ptr, idx_ptr, inv, n, XIN, HAS_PERM), acc, ASM)
    return acc


@triton.jit
def _unit_dot_h2(w0, w1, w2, w3, S0, Z0, S1, Z1, xr_ptr, u, umask, ASM: tl.constexpr,
                 x_ptr, idx_ptr, n, XIN: tl.constexpr, HAS_PERM: tl.constexpr, BITS: tl.constexpr):
    """_unit_dot with f16x2 products and per-half f16 sums (x scaled per unit by 2^-e_u).

    The codes are centred (q - C, C = 2^(BITS-1), see :func:`_unbias`) and the zeros with them: a
    subnormal-code variant (one mask per pair, no unbias, the centring as the sums' start) doubled the
    relative error (max 4.6e-3 vs 2.0e-3 over 60 random tensors), as the f16 sums then pass through C·Σx.

    XIN: the per-unit x operands are built here from x (``x_ptr``, feature order, through ``idx_ptr``)
    instead of read from xprep_h2_kernel's records, so batch 1 is a single launch.
    """
    zero = tl.zeros(w0.shape, dtype=tl.int32)
    C: tl.constexpr = 1 << (BITS - 1)
    xr = xr_ptr + u * XR
    if XIN:
        inv, xe, xs0, xs1 = _x_unit(x_ptr, idx_ptr, u, umask, n, HAS_PERM)  # inv [NU]: _x_pair's scale
    else:
        inv = 1.0
        xe = tl.load(xr + 16, mask=umask, other=0).to(tl.float32, bitcast=True)
        xs0 = tl.load(xr + 17, mask=umask, other=0).to(tl.float32, bitcast=True)
        xs1 = tl.load(xr + 18, mask=umask, other=0).to(tl.float32, bitcast=True)
    a0 = _word_h2(w1, xr, 4, u, umask,
                  _word_h2(w0, xr, 0, u, umask, zero, C, ASM, x_ptr, idx_ptr, inv, n, XIN, HAS_PERM, BITS),
                  C, ASM, x_ptr, idx_ptr, inv, n, XIN, HAS_PERM, BITS)
    a1 = _word_h2(w3, xr, 12, u, umask,
                  _word_h2(w2, xr, 8, u, umask, zero, C, ASM, x_ptr, idx_ptr, inv, n, XIN, HAS_PERM, BITS),
                  C, ASM, x_ptr, idx_ptr, inv, n, XIN, HAS_PERM, BITS)
    xe = xe[None, :]
    return S0 * (_h2_sum(a0) * xe - (Z0 - C) * xs0[None, :]) + S1 * (_h2_sum(a1) * xe - (Z1 - C) * xs1[None, :])


@triton.jit
def _unit_dot(w0, w1, w2, w3, S0, Z0, S1, Z1, xq_ptr, xs_ptr, u, umask, NUT, BITS: tl.constexpr):
    """Σ over each unit's 32 columns of W·x for [BM, NU] units: S·(Σ q·x − Z·Σ x) per half."""
    if BITS == 2:
        p0 = _word_dot(w0, xq_ptr, 0, u, umask, NUT, 16, 2)
        p1 = _word_dot(w1, xq_ptr, 16, u, umask, NUT, 16, 2)
    else:
        p0 = _word_dot(w0, xq_ptr, 0, u, umask, NUT, 8, 4) + _word_dot(w1, xq_ptr, 8, u, umask, NUT, 8, 4)
        p1 = _word_dot(w2, xq_ptr, 16, u, umask, NUT, 8, 4) + _word_dot(w3, xq_ptr, 24, u, umask, NUT, 8, 4)
    xs0 = tl.load(xs_ptr + 2 * u, mask=umask, other=0.0)
    xs1 = tl.load(xs_ptr + 2 * u + 1, mask=umask, other=0.0)
    return S0 * (p0 - Z0 * xs0[None, :]) + S1 * (p1 - Z1 * xs1[None, :])


@triton.jit
def _join4(a, b, c, d):
    """[.., 2, 2] with [.., i, j] = (a, b, c, d)[2i + j]."""
    return tl.join(tl.join(a, c), tl.join(b, d))


@triton.jit
def _tile(w0, w1, w2, w3, S0, Z0, S1, Z1, BITS: tl.constexpr, EXACT: tl.constexpr, BM: tl.constexpr,
          NU: tl.constexpr):
    """Decoded weights [BM, NU·32] in stored column order (column 32u + i).

    EXACT: ``(f32(q) − Z)·S`` as two f32 operations (spqr.md §5 step 2; launch without fp fusion).
    Otherwise ``q·S − Z·S`` in f32 for the dot (rounded by the caller).
    """
    if BITS == 2:
        F: tl.constexpr = 16
        WST: tl.constexpr = 2
        y = tl.join(w0, w1)            # [BM, NU, 2]: half
        ys = tl.join(S0, S1)
        yz = tl.join(Z0, Z1)
    else:
        F: tl.constexpr = 8
        WST: tl.constexpr = 4
        y = _join4(w0, w1, w2, w3)     # [BM, NU, 2, 2]: slot = 2·half + j
        ys = _join4(S0, S0, S1, S1)
        yz = _join4(Z0, Z0, Z1, Z1)
    yh = y >> 16
    if not EXACT:
        yz = -(yz * ys)  # the dot's form: q·S − Z·S
    # fields, then a join tree over the field index (its high bit first) so the result is in column order
    if BITS == 2:
        z0 = tl.join(_fv(y, yh, ys, yz, 0, F, WST, EXACT), _fv(y, yh, ys, yz, 8, F, WST, EXACT))
        z1 = tl.join(_fv(y, yh, ys, yz, 1, F, WST, EXACT), _fv(y, yh, ys, yz, 9, F, WST, EXACT))
        z2 = tl.join(_fv(y, yh, ys, yz, 2, F, WST, EXACT), _fv(y, yh, ys, yz, 10, F, WST, EXACT))
        z3 = tl.join(_fv(y, yh, ys, yz, 3, F, WST, EXACT), _fv(y, yh, ys, yz, 11, F, WST, EXACT))
        z4 = tl.join(_fv(y, yh, ys, yz, 4, F, WST, EXACT), _fv(y, yh, ys, yz, 12, F, WST, EXACT))
        z5 = tl.join(_fv(y, yh, ys, yz, 5, F, WST, EXACT), _fv(y, yh, ys, yz, 13, F, WST, EXACT))
        z6 = tl.join(_fv(y, yh, ys, yz, 6, F, WST, EXACT), _fv(y, yh, ys, yz, 14, F, WST, EXACT))
        z7 = tl.join(_fv(y, yh, ys, yz, 7, F, WST, EXACT), _fv(y, yh, ys, yz, 15, F, WST, EXACT))
        z0 = tl.join(z0, z4)
        z1 = tl.join(z1, z5)
        z2 = tl.join(z2, z6)
        z3 = tl.join(z3, z7)
    else:
        z0 = _fv(y, yh, ys, yz, 0, F, WST, EXACT)
        z1 = _fv(y, yh, ys, yz, 1, F, WST, EXACT)
        z2 = _fv(y, yh, ys, yz, 2, F, WST, EXACT)
        z3 = _fv(y, yh, ys, yz, 3, F, WST, EXACT)
        z0 = tl.join(z0, _fv(y, yh, ys, yz, 4, F, WST, EXACT))
        z1 = tl.join(z1, _fv(y, yh, ys, yz, 5, F, WST, EXACT))
        z2 = tl.join(z2, _fv(y, yh, ys, yz, 6, F, WST, EXACT))
        z3 = tl.join(z3, _fv(y, yh, ys, yz, 7, F, WST, EXACT))
    t = tl.join(tl.join(z0, z2), tl.join(z1, z3))
    return tl.reshape(t, (BM, NU * 32))


@triton.jit
def _f16_halves(v, ASM: tl.constexpr):
    """The two f16 halves of int32 v (lo, hi): register renames on the GPU (PTX ``mov.b32 {lo, hi}``)."""
    if ASM:
        lo, hi = tl.inline_asm_elementwise("mov.b32 {$0, $1}, $2;", "=h,=h,r", [v],
                                           dtype=(tl.float16, tl.float16), is_pure=True, pack=1)
    else:
        lo = _f16_lo(v)
        hi = _f16_hi(v)
    return lo, hi


@triton.jit
def _word_pairs_h2(w, S2, B2, C: tl.constexpr, ASM: tl.constexpr):
    """[BM, NU, 2, 2] f16 pairs (int32) of bits-4 words w: [.., i, j] holds fields k and k + 4, k = 2i + j,
    as ``(q − C)·S + (C − Z)·S``.

    Each pair costs one LOP3 (field pair | 0x6400 bias), one exact FMA (:func:`_unbias`) and one FMA
    with the statistics: ~1.6 instructions per weight instead of the f32 decode's ~4 plus a cast.
    """
    wi = w.to(tl.int32, bitcast=True)
    w8 = (w >> 8).to(tl.int32, bitcast=True)
    p0 = _h2_fma(_unbias(_biased(wi, False, 4, ASM), False, C, ASM), S2, B2, ASM)
    p1 = _h2_fma(_unbias(_biased(wi, True, 4, ASM), True, C, ASM), S2, B2, ASM)
    p2 = _h2_fma(_unbias(_biased(w8, False, 4, ASM), False, C, ASM), S2, B2, ASM)
    p3 = _h2_fma(_unbias(_biased(w8, True, 4, ASM), True, C, ASM), S2, B2, ASM)
    return _join4(p0, p1, p2, p3)


@triton.jit
def _stat_pairs(S, Z, C: tl.constexpr):
    """(S, S) and ((C − Z)·S, same) as f16 pairs in int32: the f16x2 decode's multiplier and addend."""
    s = S.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    b = ((C - Z) * S).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return s | (s << 16), b | (b << 16)


@triton.jit
def _tile_h2(w0, w1, w2, w3, S0, Z0, S1, Z1, BITS: tl.constexpr, ASM: tl.constexpr, BM: tl.constexpr,
             NU: tl.constexpr):
    """Decoded f16 weights [BM, NU·32] in *pair order*: column ``32u + 8k + 2s + h`` holds stored column
    ``32u + 8s + k + 4h`` (slot s, field k + 4h of its word; :func:`pair_order_col` maps it back).

    Why not stored order: the f16x2 decode yields fields k and k + 4 of a word as one register, and the
    dot's K order is free as long as x follows it (xdot_kernel's PAIR), so no join tree or shuffle puts
    the weights back into column order; the two halves of a register are adjacent in K, so the tile
    goes to shared memory without re-pairing (``tl.join`` appends its axis last: h is the fastest).
    """
    C: tl.constexpr = 1 << (BITS - 1)
    sa, ba = _stat_pairs(S0, Z0, C)
    sb, bb = _stat_pairs(S1, Z1, C)
    t = _join4(_word_pairs_h2(w0, sa, ba, C, ASM), _word_pairs_h2(w1, sa, ba, C, ASM),
               _word_pairs_h2(w2, sb, bb, C, ASM), _word_pairs_h2(w3, sb, bb, C, ASM))  # [BM, NU, ki, kj, si, sj]
    lo, hi = _f16_halves(t, ASM)
    return tl.reshape(tl.join(lo, hi), (BM, NU * 32))


@triton.jit
def pair_order_col(kk):
    """Stored column of pair-order position kk (:func:`_tile_h2`; both within the same 32-column unit)."""
    return (kk // 32) * 32 + 8 * ((kk // 2) % 4) + (kk // 8) % 4 + 4 * (kk % 2)


@triton.jit
def _fv(y, yh, ys, yz, c: tl.constexpr, F: tl.constexpr, WST: tl.constexpr, EXACT: tl.constexpr):
    """Field c's weights: (q − Z)·S exactly (EXACT), or q·S + yz with yz = −Z·S."""
    f = _field(y, yh, c, F, WST)
    if EXACT:
        return (f * _pscale(c, F, WST) - yz) * ys
    return f * (ys * _pscale(c, F, WST)) + yz


@triton.jit
def _tile_raw(t, t_hi, rows, rmask, k2, uu, kk, bb, bmask, SS, xq_ptr, w_ptr, st_ptr, st2_ptr, sz_ptr, m, NUT, G,
              K2, hpg, BITS: tl.constexpr, STQ: tl.constexpr, SAME: tl.constexpr, R2: tl.constexpr,
              NU: tl.constexpr):
    """Tile t's loads for the dot path, undecoded: its words, statistics and x tile (nothing past t_hi)."""
    u = t * NU + uu
    um = (u < NUT) & (u < t_hi * NU)
    a0, a1, a2, a3 = _raw_words(w_ptr, u[None, :] * m + rows[:, None], SS, rmask[:, None] & um[None, :], BITS)
    c0, v0, c1, v1 = _half_stats_raw(rows, k2, u, rmask, um, hpg, st_ptr, st2_ptr, sz_ptr, m, G, K2, STQ, SAME, R2)
    cols = t * (NU * 32) + kk
    xt = tl.load(xq_ptr + bb[None, :] * (NUT * 32) + cols[:, None],
                 mask=((cols < NUT * 32) & (cols < t_hi * (NU * 32)))[:, None] & bmask[None, :], other=0.0)
    return a0, a1, a2, a3, c0, v0, c1, v1, xt


@triton.jit
def _dot_tiles(acc, t_lo, t_hi, rows, rmask, k2, uu, kk, bb, bmask, SS, xq_ptr, w_ptr, st_ptr, st2_ptr, sz_ptr,
               m, NUT, G, K2, hpg, BITS: tl.constexpr, SB: tl.constexpr, STQ: tl.constexpr, SAME: tl.constexpr,
               R2: tl.constexpr, NU: tl.constexpr, BM: tl.constexpr, DOT_DT: tl.constexpr, H2: tl.constexpr,
               ASM: tl.constexpr, EXACT: tl.constexpr, PF: tl.constexpr):
    """MODE 1's tile loop: one ``tl.dot`` per tile of decoded weights (H2: :func:`_tile_h2`, pair order).

    PF: the next tile's words, statistics and x are loaded before this one is decoded. Why: launched with
    one stage (Triton's shared-memory pipelining measured slower on most shapes), each step otherwise waits
    a full DRAM latency for its words before any decode or MMA can start; carried in registers, the loads
    of step t + 1 are in flight while step t decodes (a few registers per thread).
    """
    if PF:
        a0, a1, a2, a3, c0, v0, c1, v1, xt = _tile_raw(t_lo, t_hi, rows, rmask, k2, uu, kk, bb, bmask, SS, xq_ptr,
                                                       w_ptr, st_ptr, st2_ptr, sz_ptr, m, NUT, G, K2, hpg, BITS,
                                                       STQ, SAME, R2, NU)
    for t in range(t_lo, t_hi):
        if PF:
            n0, n1, n2, n3, d0, e0, d1, e1, xn = _tile_raw(t + 1, t_hi, rows, rmask, k2, uu, kk, bb, bmask, SS,
                                                           xq_ptr, w_ptr, st_ptr, st2_ptr, sz_ptr, m, NUT, G, K2,
                                                           hpg, BITS, STQ, SAME, R2, NU)
        else:
            a0, a1, a2, a3, c0, v0, c1, v1, xt = _tile_raw(t, t_hi, rows, rmask, k2, uu, kk, bb, bmask, SS,
                                                           xq_ptr, w_ptr, st_ptr, st2_ptr, sz_ptr, m, NUT, G, K2,
                                                           hpg, BITS, STQ, SAME, R2, NU)
        w0, w1, w2, w3 = _words(a0, a1, a2, a3, BITS)
        S0, Z0, S1, Z1 = _half_stats_dec(c0, v0, c1, v1, SB, STQ, SAME, R2, EXACT, BM, NU)
        if H2:
            wt = _tile_h2(w0, w1, w2, w3, S0, Z0, S1, Z1, BITS, ASM, BM, NU)
        else:
            wt = _tile(w0, w1, w2, w3, S0, Z0, S1, Z1, BITS, False, BM, NU).to(DOT_DT)
        acc = tl.dot(wt, xt, acc)
        if PF:
            xt = xn
            a0, a1, a2, a3 = n0, n1, n2, n3
            c0, v0, c1, v1 = d0, e0, d1, e1
    return acc


@triton.jit
def gemv_kernel(xq_ptr, xs_ptr, xe_ptr, xo_ptr, idx_ptr, y_ptr, bias_ptr, ws_ptr, cnt_ptr, w_ptr, st_ptr, st2_ptr,
                sz_ptr, orp_ptr, ocol_ptr, odelta_ptr,
                m, n, NUT, G, K2, B2, hpg, nb, n_tiles, tiles_per_split,
                BITS: tl.constexpr, SB: tl.constexpr, STQ: tl.constexpr, SAME: tl.constexpr,
                R2: tl.constexpr, NU: tl.constexpr, BM: tl.constexpr,
                BB: tl.constexpr, NBC: tl.constexpr, EPR: tl.constexpr,
                MODE: tl.constexpr, ATOMIC: tl.constexpr, HAS_BIAS: tl.constexpr, COL16: tl.constexpr,
                DOT_DT: tl.constexpr, H2: tl.constexpr, ASM: tl.constexpr, EXACT_STATS: tl.constexpr,
                XIN: tl.constexpr, HAS_PERM: tl.constexpr, PF: tl.constexpr):
    """y[b, r] = Σ_j W[r, j] x[b, j] over BM rows and this program's share of tiles (NU units each).

    MODE 2 (2..4 rows, H2 only): MODE 0's f16x2 path once per row with the weight decode shared
    (BB = the number of rows). MODE 0 (one activation row): xq/xs are xprep_kernel's operands; per half
    ``S·(Σ q·x·2^-p·2^p − Z·Σ x)``; H2 (bits 3/4): xq is xprep_h2_kernel's records (xs, xe unused) and
    the products f16x2 (ASM: PTX; else the same f16 arithmetic in Triton ops). MODE 1 (2..16 rows):
    xq is x in stored order (DOT_DT, zero padded to NUT·32 columns, [BB rows]), one ``tl.dot`` per
    tile of decoded weights rounded to DOT_DT; H2 (f16 x, bits 3/4): the tile decoded by f16x2 FMAs
    in pair order and xq in that order (:func:`_tile_h2`); xo is x transposed, [n, BB] f32.
    Outliers are add-deltas (f32(val) − dense) gathered row-wise from xo (stored order, f32).
    XIN (MODE 0, H2): one launch: x (feature order, the caller's tensor) is ``xo_ptr`` and the per-unit
    operands are built per tile (:func:`_x_unit`) instead of by xprep_h2_kernel; ``idx_ptr`` maps stored
    columns to features (HAS_PERM).
    EXACT_STATS (f32 activations): the statistics rounded through f16 as the spec does, so the
    product is the spec's matrix times x up to f32 summation order.
    PF (MODE 1): :func:`_dot_tiles` with a one-step register prefetch.
    """
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows, rmask, k2 = _row_block(pid_m, m, B2, R2, BM)
    SS = NUT * m  # words per slot
    uu = tl.arange(0, NU)
    bb = tl.arange(0, BB)
    bmask = bb < nb
    if MODE == 1:
        acc = tl.zeros((BM, BB), dtype=tl.float32)
        kk = tl.arange(0, NU * 32)
    else:
        acc = tl.zeros((BM, NU), dtype=tl.float32)
        if MODE == 2:
            acc1 = tl.zeros((BM, NU), dtype=tl.float32)
            acc2 = tl.zeros((BM, NU), dtype=tl.float32)
            acc3 = tl.zeros((BM, NU), dtype=tl.float32)
    t_lo = pid_k * tiles_per_split
    t_hi = tl.minimum(t_lo + tiles_per_split, n_tiles)
    if MODE == 1:
        acc = _dot_tiles(acc, t_lo, t_hi, rows, rmask, k2, uu, kk, bb, bmask, SS, xq_ptr, w_ptr, st_ptr, st2_ptr,
                         sz_ptr, m, NUT, G, K2, hpg, BITS, SB, STQ, SAME, R2, NU, BM, DOT_DT, H2, ASM, EXACT_STATS, PF)
    else:
        for t in range(t_lo, t_hi):
            u = t * NU + uu
            umask = u < NUT
            lmask = rmask[:, None] & umask[None, :]
            # H2: _biased's masks read 3 bits per field, so the cheaper 3-bit rebuild
            w0, w1, w2, w3 = _load_words(w_ptr, u[None, :] * m + rows[:, None], SS, lmask, BITS, H2)
            S0, Z0, S1, Z1 = _half_stats(rows, k2, u, rmask, umask, hpg, st_ptr, st2_ptr, sz_ptr, m, G, K2,
                                         SB, STQ, SAME, R2, EXACT_STATS, BM, NU)
            if MODE == 0:
                if H2:
                    acc += _unit_dot_h2(w0, w1, w2, w3, S0, Z0, S1, Z1, xq_ptr, u, umask, ASM,
                                        xo_ptr, idx_ptr, n, XIN, HAS_PERM, BITS)
                else:
                    acc += _unit_dot(w0, w1, w2, w3, S0, Z0, S1, Z1, xq_ptr, xs_ptr, u, umask, NUT, BITS)
            elif MODE == 2:  # 2..4 rows, one decode per weight, f16x2 products per row (one record per row)
                acc += _unit_dot_h2(w0, w1, w2, w3, S0, Z0, S1, Z1, xq_ptr, u, umask, ASM,
                                    xo_ptr, idx_ptr, n, False, False, BITS)
                acc1 += _unit_dot_h2(w0, w1, w2, w3, S0, Z0, S1, Z1, xq_ptr + XR * NUT, u, umask, ASM,
                                     xo_ptr, idx_ptr, n, False, False, BITS)
                if NBC > 2:
                    acc2 += _unit_dot_h2(w0, w1, w2, w3, S0, Z0, S1, Z1, xq_ptr + 2 * XR * NUT, u, umask, ASM,
                                         xo_ptr, idx_ptr, n, False, False, BITS)
                if NBC > 3:
                    acc3 += _unit_dot_h2(w0, w1, w2, w3, S0, Z0, S1, Z1, xq_ptr + 3 * XR * NUT, u, umask, ASM,
                                         xo_ptr, idx_ptr, n, False, False, BITS)
    if MODE == 0:
        out = tl.sum(acc, axis=1)
    elif MODE == 2:  # the rows' sums as a [BM, BB] tile (BB = the batch, 2..4)
        out = tl.where(bb[None, :] == 0, tl.sum(acc, axis=1)[:, None], 0.0)
        out = tl.where(bb[None, :] == 1, tl.sum(acc1, axis=1)[:, None], out)
        out = tl.where(bb[None, :] == 2, tl.sum(acc2, axis=1)[:, None], out)
        out = tl.where(bb[None, :] == 3, tl.sum(acc3, axis=1)[:, None], out)
    else:
        out = acc
    out = _outliers(out, rows, rmask, pid_k, orp_ptr, ocol_ptr, odelta_ptr, xo_ptr, idx_ptr, n, bb, bmask,
                    EPR, COL16, MODE != 0, XIN, HAS_PERM, MODE == 1)
    yoff, ymask = _y_offsets(rows, rmask, bb, bmask, m, MODE == 0)
    if ATOMIC and MODE == 1:
        tl.atomic_add(y_ptr + yoff, out, mask=ymask)  # y: zeroed f32; bias and cast by the caller
    elif ATOMIC:  # in-kernel finish; MODE 1 (the dot path) read wrong sums with it on the H200
        _split_finish(out, y_ptr, yoff, ymask, bias_ptr, rows, rmask, ws_ptr, cnt_ptr, pid_m, HAS_BIAS, MODE == 0)
    else:
        store_rows(out, y_ptr, yoff, ymask, bias_ptr, rows, rmask, bias_ptr, HAS_BIAS, False, MODE == 0)


__all__ = ["gemv_kernel", "xdot_kernel", "xot_kernel", "xprep_kernel", "triton"]
