"""E8P12 encoding for codec ``quip`` v2: nearest lattice point per 8-vector, row scales, block LDLQ.

The codebook (spec/codecs/quip.md §10.3) is 2 x 256 x 128 points: a shift
(+1/4 or -1/4), a row ``A`` of non-negative half-integers, and signs with a
fixed parity (an even-sum rule of E8). So the nearest point to ``y`` is found
without enumerating 65536 points: for each shift and row, take every sign
from ``y - shift`` and, when the parity is wrong, flip the coordinate whose
flip costs least (``4 |u_i| A_i``). 2 x 256 candidates per vector, exact.
"""

from __future__ import annotations

import numba
import numpy as np

from ..decoder.e8p import SIGN_BIT, abs_table, code_points, odd_rows

# QuIP#'s E8P12 setting: weights scaled to RMS 1.03 before rounding (its ``opt_scale``); the
# per-row search below tries multiples of that.
TARGET_RMS = 1.03
SCALE_MULTIPLIERS = tuple(float(v) for v in np.geomspace(0.8, 1.25, 7))


@numba.njit(cache=True, nogil=True, parallel=True)
def _nearest(y: np.ndarray, half: np.ndarray, odd: np.ndarray, sign_bit: np.ndarray, out: np.ndarray) -> None:
    nvec = y.shape[0]
    for v in numba.prange(nvec):
        best = np.inf
        bp, ba, bflip = 0, 0, -1
        u = np.empty(8)
        for p in range(2):
            shift = 0.25 - 0.5 * p
            npar = 0
            for i in range(8):
                u[i] = abs(y[v, i] - shift)
                if y[v, i] - shift < 0:
                    npar ^= 1
            for a in range(256):
                d = 0.0
                cheapest = np.inf
                fi = 0
                for i in range(8):
                    diff = u[i] - half[a, i]
                    d += diff * diff
                    f = u[i] * half[a, i]
                    if f < cheapest:
                        cheapest = f
                        fi = i
                flip = -1
                if npar != odd[a]:
                    d += 4.0 * cheapest
                    flip = fi
                if d < best:
                    best = d
                    bp, ba, bflip = p, a, flip
        shift = 0.25 - 0.5 * bp
        s2 = 0
        for i in range(8):
            neg = 1 if y[v, i] - shift < 0 else 0
            if i == bflip:
                neg ^= 1
            if i == 7:
                neg ^= odd[ba]
            s2 |= neg << sign_bit[i]
        out[v] = (ba << 8) | (s2 ^ bp)


def nearest_codes(y: np.ndarray) -> np.ndarray:
    """u16 codes [...] of the E8P12 points nearest (Euclidean) to each 8-vector of y [..., 8]."""
    y = np.asarray(y, dtype=np.float64)
    if y.shape[-1] != 8:
        raise ValueError(f"last axis must be 8, got {y.shape}")
    flat = np.ascontiguousarray(y.reshape(-1, 8))
    out = np.empty(flat.shape[0], dtype=np.uint16)
    _nearest(flat, abs_table().astype(np.float64) / 2.0, odd_rows(), np.array(SIGN_BIT, dtype=np.int64), out)
    return out.reshape(y.shape[:-1])


def points(codes: np.ndarray) -> np.ndarray:
    """float64 [..., 8]: the lattice points of u16 codes (t / 4, exact)."""
    return code_points(codes).astype(np.float64) / 4.0


def round_rows(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Nearest codes u16 [m, n/8] of w [m, n] on the grid ``scale[r] * E8P12``."""
    m, n = w.shape
    return nearest_codes((w / np.asarray(scale, np.float64)[:, None]).reshape(m, n // 8, 8))


def row_scales(w: np.ndarray) -> np.ndarray:
    """Per-row f32 scale minimizing the nearest-point error among multiples of RMS / 1.03."""
    m, n = w.shape
    base = np.sqrt(np.mean(w * w, axis=1)) / TARGET_RMS + 1e-30
    best = np.full(m, np.inf)
    out = base.astype(np.float32)
    for mult in SCALE_MULTIPLIERS:
        s = (base * mult).astype(np.float32)
        q = points(round_rows(w, s)).reshape(m, n) * s.astype(np.float64)[:, None]
        e = np.sum((q - w) ** 2, axis=1)
        better = e < best
        best = np.where(better, e, best)
        out = np.where(better, s, out)
    return out


def ldlq(w: np.ndarray, hess: np.ndarray, scale: np.ndarray, block: int = 128) -> np.ndarray:
    """Codes u16 [m, n/8] by block LDLQ (8 columns rounded jointly) against hess [n, n], float64.

    GPTQ's form with U the upper Cholesky factor of H^-1: after the 8 columns B
    are rounded to Q_B, the remaining columns move by ``-(W_B - Q_B) U_BB^-1 U_B,rest``
    (the optimal update for the not-yet-rounded columns); with H = I this is
    plain nearest rounding.
    """
    m, n = w.shape
    s = np.asarray(scale, np.float64)[:, None]
    u = np.linalg.cholesky(np.linalg.inv(hess)).T
    w = w.copy()
    codes = np.empty((m, n // 8), dtype=np.uint16)
    block = max(8, block - block % 8)
    for i1 in range(0, n, block):
        i2 = min(n, i1 + block)
        err = np.zeros((m, i2 - i1))
        for j in range(i1, i2, 8):
            c = nearest_codes((w[:, j:j + 8] / s)[:, None, :])[:, 0]
            codes[:, j // 8] = c
            e = (w[:, j:j + 8] - points(c) * s) @ np.linalg.inv(u[j:j + 8, j:j + 8])
            w[:, j + 8:i2] -= e @ u[j:j + 8, j + 8:i2]
            err[:, j - i1:j - i1 + 8] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return codes


__all__ = ["TARGET_RMS", "ldlq", "nearest_codes", "points", "round_rows", "row_scales"]
