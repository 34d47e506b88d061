"""QuIP encoder: random-sign + Hadamard incoherence processing, per-row uniform grid or E8P12, LDLQ rounding.

QuIP (Chee et al. 2023) / QuIP# (Tseng et al. 2024) make a weight matrix
"incoherent" by multiplying it on both sides with random orthogonal
matrices, which spreads outliers over all entries so that a plain uniform
grid quantizes it well; LDLQ then rounds column by column feeding the
rounding error forward through the (transformed) Hessian. Here:

* the orthogonal matrices are ``D = F kron H_norm`` with H_norm the
  normalized Sylvester Hadamard of the largest power of two dividing the
  dimension and F a random orthogonal matrix of the odd remainder (stored
  as f32; absent when the dimension is a power of two);
* signs ``su``, ``sv`` and F come from ``numpy.random.default_rng(seed)``
  *at encode time* and are stored explicitly in the file: decoding never
  depends on an RNG (spec/codecs/quip.md);
* ``W~ = D_m^T diag(sv) W diag(su) D_n`` is quantized to the grid
  ``(2q - (2^b - 1)) * scale[r]`` with a per-row f32 scale (grid search);
* LDLQ (equivalently GPTQ's Cholesky form) against the transformed Hessian
  ``H~ = D_n^T diag(su) H diag(su) D_n``; without H (data-free) it is H = I,
  where LDLQ is exactly round-to-nearest.
* ``codebook="e8p12"`` (codec_version 2, quip.md §10): instead of the grid,
  each run of 8 incoherent weights of a row becomes the nearest point of
  QuIP#'s E8P12 lattice codebook times a per-row scale (2 bits per weight),
  with block LDLQ (8 columns rounded jointly) when H is given (``e8p.py``).

The transforms here are float64 numpy (speed); the encoder's ``dequantized``
matrix is then produced by the spec's exact f32 decoder, so decoding the
written file reproduces it bit for bit.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from ..constants import QUIP_MAX_FACTOR as MAX_FACTOR
from . import e8p
from .encoded import Encoded
from .packing import pack_rows


def split_pow2(d: int) -> tuple[int, int]:
    """(log2 h, a) with d = a * 2^log2_h and a odd: the Hadamard part and the explicit-factor part."""
    k = (d & -d).bit_length() - 1
    return k, d >> k


def random_orthogonal(a: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-random orthogonal [a, a] (QR of a Gaussian with the sign of R's diagonal fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((a, a)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


@numba.njit(cache=True, nogil=True, parallel=True)
def _fwht_rows(y: np.ndarray, norm: float) -> None:
    """In place, each row of y [R, h] (float64): Sylvester butterflies stage by stage, then one division by norm."""
    rows, h = y.shape
    for r in numba.prange(rows):
        half = 1
        while half < h:
            for i0 in range(0, h, 2 * half):
                for i in range(i0, i0 + half):
                    u = y[r, i]
                    v = y[r, i + half]
                    y[r, i] = u + v
                    y[r, i + half] = u - v
            half *= 2
        for i in range(h):
            y[r, i] = y[r, i] / norm


def _fwht_last(x: np.ndarray) -> np.ndarray:
    """Normalized Sylvester Hadamard along the last axis (float64, length a power of two)."""
    h = x.shape[-1]
    y = np.array(x, dtype=np.float64, order="C")  # a copy: the transform runs in place
    _fwht_rows(y.reshape(-1, h), float(np.sqrt(h)))
    return y


def apply_dt_rows(x: np.ndarray, log2_h: int, factor: np.ndarray | None) -> np.ndarray:
    """Each row x[r] -> D^T x[r] with D = F kron H_norm (float64), i.e. returns X D."""
    rows, d = x.shape
    h = 1 << log2_h
    y = _fwht_last(np.asarray(x, dtype=np.float64).reshape(rows, d // h, h))
    if factor is not None:
        y = np.einsum("ba,rbh->rah", np.asarray(factor, dtype=np.float64), y)
    return y.reshape(rows, d)


@numba.njit(cache=True, nogil=True, inline="always")
def _block_sum(a: np.ndarray, lo: int, n: int) -> float:
    """numpy's pairwise-sum leaf (n <= 128): sequential below 8, else 8 accumulators combined as a tree."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - (n % 8):
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@numba.njit(cache=True, nogil=True)
def _pairwise_sum(a: np.ndarray, nodes: np.ndarray, vals: np.ndarray) -> float:
    """numpy's pairwise float64 sum of a (leaves of <= 128, longer runs halved at a multiple of 8), iteratively.

    Reproduces ``x.sum(axis=-1)`` of a contiguous row bit for bit, so the Numba
    grid search picks the very scales the numpy one did. ``nodes`` [3, 128]
    int64 and ``vals`` [128] f64 are scratch (a post-order walk of the split tree;
    recursion is avoided because Numba cannot cache recursive functions safely).
    """
    nodes[0, 0] = 0
    nodes[1, 0] = a.size
    nodes[2, 0] = 0
    sp = 1
    vp = 0
    while sp > 0:
        t = sp - 1
        lo = nodes[0, t]
        n = nodes[1, t]
        if n <= 128:
            vals[vp] = _block_sum(a, lo, n)
            vp += 1
            sp -= 1
        elif nodes[2, t] == 0:  # first visit: push the right half, then the left (which runs first)
            nodes[2, t] = 1
            n2 = n // 2
            n2 -= n2 % 8
            nodes[0, sp], nodes[1, sp], nodes[2, sp] = lo + n2, n - n2, 0
            nodes[0, sp + 1], nodes[1, sp + 1], nodes[2, sp + 1] = lo, n2, 0
            sp += 2
        else:  # both halves done: left + right
            vals[vp - 2] = vals[vp - 2] + vals[vp - 1]
            vp -= 1
            sp -= 1
    return vals[0]


@numba.njit(cache=True, nogil=True, parallel=True)
def _grid_errors(w: np.ndarray, rms: np.ndarray, mults: np.ndarray, bits: int) -> np.ndarray:
    """e[r, c]: squared round-to-nearest error of row r on the grid (2q - L) * s, s = rms[r] * mults[c] (f64)."""
    m, n = w.shape
    L = np.float64((1 << bits) - 1)
    e = np.empty((m, mults.size), dtype=np.float64)
    for r in numba.prange(m):
        err = np.empty(n, dtype=np.float64)
        nodes = np.empty((3, 128), dtype=np.int64)
        vals = np.empty(128, dtype=np.float64)
        for c in range(mults.size):
            s = rms[r] * mults[c]
            for j in range(n):
                q = np.rint((w[r, j] / s + L) / 2.0)
                q = min(max(q, 0.0), L)
                d = (2.0 * q - L) * s - w[r, j]
                err[j] = d * d
            e[r, c] = _pairwise_sum(err, nodes, vals)
    return e


def _grid_scales(w: np.ndarray, bits: int, candidates: int = 48) -> np.ndarray:
    """Per-row f32 scale minimizing the round-to-nearest error on the grid (2q - (2^b-1)) * s."""
    L = (1 << bits) - 1
    rms = np.sqrt(np.mean(w * w, axis=1)) + 1e-30
    mults = np.geomspace(0.05, 2.0, candidates) * (2.0 / (L + 1))
    errs = _grid_errors(np.ascontiguousarray(w, dtype=np.float64), rms, mults, bits)
    best = np.full(w.shape[0], np.inf)
    out = rms * mults[0]
    for c, mult in enumerate(mults):  # the first candidate of least error wins
        better = errs[:, c] < best
        best = np.where(better, errs[:, c], best)
        out = np.where(better, rms * mult, out)
    return out.astype(np.float32)


def _ldlq(w: np.ndarray, hess: np.ndarray, scale: np.ndarray, bits: int, block: int = 128) -> np.ndarray:
    """Codes of w [m, n] by LDLQ against hess [n, n] (GPTQ's blocked Cholesky form, float64)."""
    m, n = w.shape
    L = (1 << bits) - 1
    s = scale.astype(np.float64)[:, None]
    hinv = np.linalg.inv(hess)
    u = np.linalg.cholesky(hinv).T  # upper: hinv = u^T u
    w = w.copy()
    codes = np.empty((m, n), dtype=np.int64)
    for i1 in range(0, n, block):
        i2 = min(n, i1 + block)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            q = np.clip(np.rint((col[:, None] / s + L) / 2), 0, L)[:, 0]
            codes[:, i1 + i] = q
            e = (col - (2 * q - L) * s[:, 0]) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes


def quantize_quip(
    weight: np.ndarray,
    bits: int = 2,
    hessian: np.ndarray | None = None,
    seed: int = 0,
    damp: float = 0.01,
    bias: np.ndarray | None = None,
    codebook: str = "grid",
) -> Encoded:
    """Encode a 2-D weight [out_features, in_features] as codec ``quip``.

    ``codebook="grid"``: v1, ``bits``-bit uniform grid. ``codebook="e8p12"``:
    v2, the E8P12 lattice codebook (2 bits per weight, ``bits`` must be 2,
    in_features a multiple of 8).
    ``hessian``: the layer's input second moment ``X^T X`` [n, n] for LDLQ;
    None = data-free (identity, i.e. round to nearest in the incoherent basis).
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2 or min(w.shape) < 1:
        raise ValueError(f"weight must be 2-D and non-empty, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weight contains NaN or infinity; refusing to quantize")
    if not 1 <= bits <= 8:
        raise ValueError("bits must be 1..8")
    if codebook not in ("grid", "e8p12"):
        raise ValueError(f"codebook must be 'grid' or 'e8p12', got {codebook!r}")
    m, n = w.shape
    if codebook == "e8p12" and (bits != 2 or n % 8):
        raise ValueError(f"codebook 'e8p12' is 2 bits per weight over 8 columns: bits=2 and n % 8 == 0 (n = {n})")
    rng = np.random.default_rng(seed)
    su = rng.choice(np.array([-1, 1], dtype=np.int8), size=n)
    sv = rng.choice(np.array([-1, 1], dtype=np.int8), size=m)
    km, am = split_pow2(m)
    kn, an = split_pow2(n)
    if max(am, an) > MAX_FACTOR:
        raise ValueError(f"quip needs each dimension to be a * 2^k with an odd a <= {MAX_FACTOR} (quip.md §2); "
                         f"[{m}, {n}] has odd parts {am}, {an}: keep this tensor unquantized or use another codec")
    fm = random_orthogonal(am, rng).astype(np.float32) if am > 1 else None
    fn = random_orthogonal(an, rng).astype(np.float32) if an > 1 else None

    # W~ = D_m^T diag(sv) W diag(su) D_n, with the f32 factors actually stored.
    y = apply_dt_rows(w * su[None, :], kn, fn)
    wt = apply_dt_rows(np.ascontiguousarray((y * sv[:, None]).T), km, fm).T
    ht = None
    if hessian is not None:
        hs = np.asarray(hessian, dtype=np.float64) * su[:, None] * su[None, :]
        if hs.shape != (n, n) or not np.isfinite(hs).all():
            raise ValueError("hessian must be a finite [n, n] matrix")
        ht = apply_dt_rows(apply_dt_rows(hs, kn, fn).T, kn, fn).T
        ht = 0.5 * (ht + ht.T)
        ht += np.eye(n) * damp * max(float(np.mean(np.diag(ht))), 1e-12)
    params: dict[str, Any]
    if codebook == "e8p12":
        scale = e8p.row_scales(wt)
        codes16 = e8p.round_rows(wt, scale) if ht is None else e8p.ldlq(wt, ht, scale)
        params = {"codebook": "e8p12", "log2_hm": km, "log2_hn": kn}
        sections: dict[str, Any] = {"codes": codes16, "scale": scale, "su": su, "sv": sv}
    else:
        scale = _grid_scales(wt, bits)
        if ht is None:
            L = (1 << bits) - 1
            codes = np.clip(np.rint((wt / scale[:, None].astype(np.float64) + L) / 2), 0, L).astype(np.int64)
        else:
            codes = _ldlq(wt, ht, scale, bits)
        params = {"bits": bits, "log2_hm": km, "log2_hn": kn}
        sections = {"codes": pack_rows(codes, bits), "scale": scale, "su": su, "sv": sv}
    if fn is not None:
        sections["factor_n"] = fn
    if fm is not None:
        sections["factor_m"] = fm
    if bias is not None:
        sections["bias"] = np.asarray(bias, dtype=np.float32).reshape(m)
    from ..decoder.quip import decode

    deq = decode(params, sections, (m, n))
    return Encoded((m, n), params, sections, deq, codec="quip", codec_version=2 if codebook == "e8p12" else 1,
                   info={"seed": seed, "ldlq": hessian is not None, "codebook": codebook})
