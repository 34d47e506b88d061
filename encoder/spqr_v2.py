"""Codec ``spqr`` v2 on the writing side (spec/codecs/spqr.md §8): only when asked, v1 stays the default.

The encoders (``rtn``, ``gptq``) produce v1. :func:`to_v2` relabels such an
encoding as v2 with the chosen ``arith`` / ``outlier_op`` -- the codes and
statistics stay, the outlier values become addends when ``outlier_op = "add"``
-- and recomputes ``dequantized`` with the v2 reference decoder, so the
result still decodes exactly to its own ``dequantized``. :func:`outlier_addend`
is the search both this and the spqr_quant importer use to find an f16 addend
that reproduces a wanted decoded value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .encoded import Encoded

ARITH = ("f32", "f16")
OUTLIER_OPS = ("replace", "add")


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise: same f32 bits, any NaN matching any NaN."""
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def add_outlier(dense: np.ndarray, val16: np.ndarray, arith: str) -> np.ndarray:
    """Step 3 with ``outlier_op = "add"``: one f32 addition, then rne16 when ``arith = "f16"`` (spqr.md §8)."""
    with np.errstate(over="ignore", invalid="ignore"):
        a = (np.asarray(dense, dtype=np.float32) + np.asarray(val16, dtype=np.float16).astype(np.float32))
        a = a.astype(np.float32)
        if arith == "f16":
            a = a.astype(np.float16).astype(np.float32)
    return a


def _f16_step(v: np.ndarray, k: int) -> np.ndarray:
    """The f16 value ``k`` places away from ``v`` on the ordered number line (NaN stays NaN)."""
    u = v.view(np.uint16).astype(np.int32)
    key = np.where(u & 0x8000, 0x8000 - u, u) + k  # sign-magnitude -> ordered integers
    key = np.clip(key, -0x7C00, 0x7C00)  # stay within -inf..+inf
    out = np.where(key < 0, 0x8000 - key, key).astype(np.uint16).view(np.float16)
    return np.where(np.isnan(v), v, out)


_ALL_F16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
_SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], dtype=np.float16)


def outlier_addend(dense: np.ndarray, target: np.ndarray, arith: str, reach: int = 4,
                   exhaustive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """f16 addends ``v`` with ``add_outlier(dense, v, arith) == target`` bit for bit, where one exists.

    Tries the f16 value nearest ``target - dense``, its ``reach`` neighbours on
    each side, and ±0, ±inf, NaN; with ``exhaustive`` every f16 value for the
    elements still unmatched (65536 additions each: for rare cases only).
    Returns ``(v, exact)``; where nothing is exact ``v`` is the nearest candidate
    (decoding then gives a value close to, not equal to, ``target``).
    """
    d = np.asarray(dense, dtype=np.float32).reshape(-1)
    t = np.asarray(target, dtype=np.float32).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        c0 = (t - d).astype(np.float16)
    best = c0.copy()
    exact = np.zeros(d.shape, dtype=bool)
    cands = [c0] + [_f16_step(c0, s * i) for i in range(1, reach + 1) for s in (1, -1)]
    cands += [np.full(d.shape, v, dtype=np.float16) for v in _SPECIAL]
    for cand in cands:
        hit = ~exact & same_bits(add_outlier(d, cand, arith), t)
        best[hit] = cand[hit]
        exact |= hit
    if exhaustive:
        for i in np.nonzero(~exact)[0]:
            ok = np.nonzero(same_bits(add_outlier(np.full(_ALL_F16.size, d[i]), _ALL_F16, arith),
                                        np.full(_ALL_F16.size, t[i])))[0]
            if ok.size:
                best[i], exact[i] = _ALL_F16[ok[0]], True
    shape = np.shape(dense)
    return best.reshape(shape), exact.reshape(shape)


def to_v2(enc: Encoded, arith: str = "f16", outlier_op: str = "replace") -> Encoded:
    """The same spqr encoding as codec_version 2 (see module doc); ``enc`` is left unchanged."""
    from ..decoder.spqr import decode

    if enc.codec != "spqr" or enc.codec_version != 1:
        raise ValueError(f"to_v2 takes a codec spqr v1 encoding, got {enc.codec} v{enc.codec_version}")
    if arith not in ARITH or outlier_op not in OUTLIER_OPS:
        raise ValueError(f"arith must be one of {ARITH} and outlier_op one of {OUTLIER_OPS}")
    params: dict[str, Any] = dict(enc.params, arith=arith, outlier_op=outlier_op)
    sections = dict(enc.sections)
    m, n = enc.shape
    info = dict(enc.info)
    vals = np.asarray(sections["outlier_val"], dtype=np.float16)
    if outlier_op == "add" and vals.size:
        # The dense value under v2 arithmetic at each outlier, in stored column order.
        bare = {k: v for k, v in sections.items() if k not in ("perm", "bias")}
        bare.update(outlier_row_ptr=np.zeros(m + 1, np.uint32), outlier_col=np.zeros(0, np.uint32),
                    outlier_val=np.zeros(0, np.float16))
        dense = decode(params, bare, (m, n))
        rp = np.asarray(sections["outlier_row_ptr"]).astype(np.int64)
        rows = np.repeat(np.arange(m), np.diff(rp))
        cols = np.asarray(sections["outlier_col"]).astype(np.int64)
        addend, exact = outlier_addend(dense[rows, cols], vals.astype(np.float32), arith)
        sections["outlier_val"] = addend
        info["outliers_exact"] = int(exact.sum())
    deq = decode(params, sections, (m, n))
    return dataclasses.replace(enc, params=params, sections=sections, dequantized=deq, codec_version=2, info=info)


__all__ = ["ARITH", "OUTLIER_OPS", "add_outlier", "outlier_addend", "same_bits", "to_v2"]
