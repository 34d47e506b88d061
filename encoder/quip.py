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
from .grid_search import best_candidates, row_stats
from .packing import pack_row, pack_rows, words_per_row
from .quip_transform import incoherent, supported


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


def grid_mults(bits: int, candidates: int = 48) -> np.ndarray:
    """The candidate scales' multiples of the row RMS (the search's geometric grid)."""
    L = (1 << bits) - 1
    return np.geomspace(0.05, 2.0, candidates) * (2.0 / (L + 1))


@numba.njit(cache=True, nogil=True, parallel=True)
def _grid_codes(wt: np.ndarray, scale: np.ndarray, bits: int, words: np.ndarray) -> None:
    """words[r] = the packed codes clip(rint((wt[r] / scale[r] + L) / 2), 0, L) of each row (f64 arithmetic)."""
    m, n = wt.shape
    L = np.float64((1 << bits) - 1)
    for r in numba.prange(m):
        q = np.empty(n, dtype=np.int64)
        s = np.float64(scale[r])
        for j in range(n):
            q[j] = np.int64(min(max(np.rint((wt[r, j] / s + L) / 2.0), 0.0), L))
        pack_row(q, bits, words, r)


def _grid_scales(w: np.ndarray, bits: int, rms: np.ndarray | None = None, lo: np.ndarray | None = None,
                 hi: np.ndarray | None = None) -> np.ndarray:
    """Per-row f32 scale minimizing the round-to-nearest error on the grid (2q - (2^b-1)) * s: the first of the
    candidates of least error (``grid_search``). ``rms`` defaults to numpy's RMS of each row of ``w``; ``lo``,
    ``hi`` (the rows' extremes) are found when not given."""
    if rms is None:
        rms = np.sqrt(np.mean(w * w, axis=1)) + 1e-30
    mults = grid_mults(bits)
    best = best_candidates(w, rms, mults, bits, lo, hi)
    return (rms * mults[best]).astype(np.float32)


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


def incoherence(m: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray | None,
                                                     np.ndarray | None]:
    """(su, sv, log2_hm, log2_hn, factor_m, factor_n) of an [m, n] weight, drawn from ``default_rng(seed)``
    in this order (the f32 factors absent for power-of-two dimensions); ValueError for too large odd parts."""
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
    return su, sv, km, kn, fm, fn


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
    w = np.asarray(weight)
    if w.dtype.kind != "f":
        w = w.astype(np.float64)
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
    su, sv, km, kn, fm, fn = incoherence(m, n, seed)
    if hessian is None and codebook == "grid" and supported(m, n, kn):  # data-free: the vectorised path
        wt = incoherent(w, su, sv, km, kn, fm, fn)  # the same f64 values as below, C-ordered
        sums, lo, hi = row_stats(wt)
        rms = np.sqrt(sums / n) + 1e-30  # numpy's mean, in the F-ordered rows' order
        scale = _grid_scales(wt, bits, rms, lo, hi)
        words = np.zeros((m, words_per_row(n, bits)), dtype=np.uint32)
        _grid_codes(wt, scale, bits, words)
        del wt
        return _encoded(m, n, {"bits": bits, "log2_hm": km, "log2_hn": kn},
                        {"codes": words, "scale": scale, "su": su, "sv": sv}, fm, fn, bias, seed, hessian, codebook)

    # W~ = D_m^T diag(sv) W diag(su) D_n, with the f32 factors actually stored.
    w = np.asarray(w, dtype=np.float64)
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
    return _encoded(m, n, params, sections, fm, fn, bias, seed, hessian, codebook)


def _encoded(m: int, n: int, params: dict[str, Any], sections: dict[str, Any], fm: np.ndarray | None,
             fn: np.ndarray | None, bias: np.ndarray | None, seed: int, hessian: np.ndarray | None,
             codebook: str) -> Encoded:
    """The Encoded of the sections (factors and bias added) with the spec's decode as its dequantized matrix."""
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
