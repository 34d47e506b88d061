"""Numba reference decoder for codec ``quip`` v1 and v2 (spec/codecs/quip.md §5, §10.5).

Every step is written as the literal f32 operations of the spec: grid values
(one multiplication), the fast Walsh-Hadamard butterflies stage by stage
(half = 1, 2, 4, ...), one multiplication by the exact constant c_k, the
orthogonal factor as sequential f32 accumulation (no FMA: Numba does not
contract without fastmath), then the sign flip. No BLAS, so the result does
not depend on the machine. Inputs must already be validated.

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
from .spqr import unpack_rows


def hadamard_constant(k: int) -> np.float32:
    """c_k = RNE_f32(2^(-k/2)) (quip.md §5.2), built from its exact bit pattern."""
    if k % 2 == 0:
        bits = 0x3F800000 - ((k // 2) << 23)
    else:
        bits = 0x3F3504F3 - (((k - 1) // 2) << 23)
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


@numba.njit(cache=True, nogil=True, parallel=True)
def _grid(codes: np.ndarray, bits: int, scale: np.ndarray, out: np.ndarray) -> None:
    """out[r, j] = f32(2 q - (2^b - 1)) * scale[r] (quip.md §5.1), q = unpacked codes."""
    m, n = codes.shape
    off = (1 << bits) - 1
    for r in numba.prange(m):
        s_ = scale[r]
        for j in range(n):
            out[r, j] = np.float32(2 * np.int64(codes[r, j]) - off) * s_


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
    """In place, each row x[r] <- (F kron H_norm) x[r] with the exact f32 steps of quip.md §5.2."""
    rows, length = x.shape
    h = 1 << log2_h
    a = length // h
    ck = c[0]
    for r in numba.prange(rows):
        v = x[r]
        if log2_h > 0:
            for blk in range(a):
                base = blk * h
                half = 1
                while half < h:  # stage s = log2(half): butterflies on pairs (i, i + half)
                    for i0 in range(base, base + h, 2 * half):
                        for i in range(i0, i0 + half):
                            u = v[i]
                            w = v[i + half]
                            v[i] = u + w
                            v[i + half] = u - w
                    half *= 2
                for i in range(base, base + h):
                    v[i] = v[i] * ck
        if a > 1:
            tmp = np.empty(a, dtype=np.float32)
            for beta in range(h):
                for al in range(a):
                    acc = factor[al, 0] * v[beta]
                    for al2 in range(1, a):
                        acc = acc + factor[al, al2] * v[al2 * h + beta]
                    tmp[al] = acc
                for al in range(a):
                    v[al * h + beta] = tmp[al]


@numba.njit(cache=True, nogil=True, parallel=True)
def transpose(x: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of x.T, in cache-sized tiles, rows of tiles in parallel (data movement only)."""
    m, n = x.shape
    out = np.empty((n, m), dtype=x.dtype)
    tile = 64
    for bi in numba.prange((m + tile - 1) // tile):
        i0 = bi * tile
        i1 = min(m, i0 + tile)
        for j0 in range(0, n, tile):
            j1 = min(n, j0 + tile)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    out[j, i] = x[i, j]
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _signs(x: np.ndarray, sv: np.ndarray, su: np.ndarray) -> None:
    m, n = x.shape
    for r in numba.prange(m):
        for j in range(n):
            x[r, j] = x[r, j] * np.float32(sv[r] * su[j])


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
    x = np.empty((c.shape[0], n), dtype=np.float32)
    _e8p_grid(c, abs_table(), odd_rows(), np.ascontiguousarray(scale, dtype=np.float32), x)
    return x


def rvq_values(codebook: str, codes: np.ndarray, codes2: np.ndarray, resid_scale: float, scale: np.ndarray,
               n: int) -> np.ndarray:
    """Step 1 for the residual codebooks "e8p12_rvq4" / "e8p12_rvq3" (quip.md §10.11): f32 [m, n]."""
    c = np.ascontiguousarray(codes, dtype=np.uint16)
    second_e8p = codebook == "e8p12_rvq4"
    c2 = np.ascontiguousarray(codes2, dtype=np.uint16 if second_e8p else np.uint8)
    x = np.empty((c.shape[0], n), dtype=np.float32)
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
    if params.get("codebook") == "e8p12":
        x = e8p_values(sections["codes"], sections["scale"], n)
    elif params.get("codebook") in ("e8p12_rvq4", "e8p12_rvq3"):
        x = rvq_values(params["codebook"], sections["codes"], sections["codes2"], float(params["resid_scale"]),
                       sections["scale"], n)
    else:
        x = np.empty((m, n), dtype=np.float32)
        bits = int(params["bits"])
        codes = unpack_rows(np.ascontiguousarray(sections["codes"]), n, bits)  # spqr.md §4
        _grid(codes, bits, np.ascontiguousarray(sections["scale"], dtype=np.float32), x)
    transform_rows(x, kn, np.array([hadamard_constant(kn)]), fn)  # step 2: along n, each row
    xt = transpose(x)  # data movement only
    transform_rows(xt, km, np.array([hadamard_constant(km)]), fm)  # step 3: along m, each column
    x = transpose(xt)
    if "codebook" in params:  # v2: i8 signs or f16/f32 diagonals, widened exactly to f32
        _diagonals(x, np.asarray(sections["sv"]).astype(np.float32), np.asarray(sections["su"]).astype(np.float32))
    else:
        _signs(x, np.asarray(sections["sv"]).astype(np.int32), np.asarray(sections["su"]).astype(np.int32))
    return x
