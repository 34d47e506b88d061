"""Data-free SpQR encoder: bilevel round-to-nearest with leave-one-out outliers.

No calibration data is needed, so ``spqr convert`` works on any checkpoint.
It follows SpQR's structure with the Hessian replaced by the identity:

1. outliers: greedily take the weights whose removal from their group's
   min/max fit shrinks the group's squared range the most (the identity-H
   leave-one-out error of SpQR), up to ``outlier_fraction`` of the matrix;
2. first-level statistics: per (row, group of β1 columns) min/max fit over
   the non-outliers, the range widened to include 0 (as GPTQ does);
3. second-level statistics: those scales and zeros quantized to
   ``scale_bits``/``zero_bits`` in groups of β2 rows, f16 second-level
   scale/zero (spec/codecs/spqr.md);
4. codes chosen against the *reconstructed* statistics, so the encoder's own
   dequantized matrix is exactly what a conforming decoder produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .packing import pack_rows


@dataclass
class Encoded:
    """A codec tensor ready for ``Writer.add_encoded``: params + spec sections + own dequantization."""

    shape: tuple[int, ...]
    params: dict[str, Any]
    sections: dict[str, Any]
    dequantized: np.ndarray
    codec: str = "spqr"
    codec_version: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        total = 0
        for v in self.sections.values():
            arr = v[1] if isinstance(v, tuple) else v
            total += np.asarray(arr).nbytes
        return total

    @property
    def bits_per_param(self) -> float:
        return 8.0 * self.nbytes / float(np.prod(self.shape))


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def _grouped(x: np.ndarray, group_size: int) -> np.ndarray:
    """[m, n] -> [m, G, β1], padding the last group by repeating its last column (min/max unchanged)."""
    m, n = x.shape
    pad = _ceil_div(n, group_size) * group_size - n
    if pad:
        x = np.concatenate([x, np.repeat(x[:, -1:], pad, axis=1)], axis=1)
    return x.reshape(m, -1, group_size)


def _select_outliers(w: np.ndarray, group_size: int, budget: int, rounds: int = 4) -> np.ndarray:
    """Boolean mask of outliers (identity-Hessian leave-one-out on group min/max ranges)."""
    m, n = w.shape
    mask = np.zeros((m, n), dtype=bool)
    if budget <= 0:
        return mask
    G = _ceil_div(n, group_size)
    for _ in range(rounds):
        remaining = budget - int(mask.sum())
        if remaining <= 0:
            break
        hi = _grouped(np.where(mask, -np.inf, w), group_size)
        lo = _grouped(np.where(mask, np.inf, w), group_size)
        order_hi = np.argsort(-hi, axis=2, kind="stable")
        order_lo = np.argsort(lo, axis=2, kind="stable")
        h1 = np.take_along_axis(hi, order_hi[..., :2], axis=2)
        l1 = np.take_along_axis(lo, order_lo[..., :2], axis=2)
        if group_size == 1:  # removing the only element leaves the empty range [0, 0]
            h1 = np.concatenate([h1, np.full_like(h1, -np.inf)], axis=2)
            l1 = np.concatenate([l1, np.full_like(l1, np.inf)], axis=2)
        # Ranges include 0, as the statistics fit does.
        top, top2 = np.maximum(h1[..., 0], 0), np.maximum(h1[..., 1], 0)
        bot, bot2 = np.minimum(l1[..., 0], 0), np.minimum(l1[..., 1], 0)
        with np.errstate(invalid="ignore"):
            r_full = top - bot
            gain_hi = r_full**2 - (top2 - bot) ** 2
            gain_lo = r_full**2 - (top - bot2) ** 2
        gains = np.nan_to_num(np.stack([gain_hi, gain_lo], axis=-1), nan=0.0, posinf=0.0, neginf=0.0)
        cols = np.stack([order_hi[..., 0], order_lo[..., 0]], axis=-1) + (np.arange(G) * group_size)[None, :, None]
        flat = gains.reshape(-1)
        take = min(remaining, max(1, _ceil_div(budget, rounds)), int((flat > 0).sum()))
        if take <= 0:
            break
        best = np.argsort(-flat, kind="stable")[:take]
        rows = best // (G * 2)
        c = cols.reshape(-1)[best]
        ok = c < n
        mask[rows[ok], c[ok]] = True
    return mask


def quantize_stat(x: np.ndarray, bits: int, group: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Second level: x [G, m] -> (sections, reconstructed f32 [G, m]) per spqr.md §5 step 1.

    Public because the calibrated encoder (gptq.py) must rebuild statistics exactly as this one does.
    """
    Gn, m = x.shape
    K = _ceil_div(m, group)
    pad = K * group - m
    xp = np.concatenate([x, np.repeat(x[:, -1:], pad, axis=1)], axis=1) if pad else x
    xg = xp.reshape(Gn, K, group)
    lo, hi = xg.min(axis=2), xg.max(axis=2)
    qmax = (1 << bits) - 1
    scale2 = (hi - lo) / qmax
    scale2 = np.where(scale2 > 0, scale2, 1.0)
    s16 = scale2.astype(np.float16)
    s16 = np.where(np.isfinite(s16) & (s16 != 0), s16, np.float16(1.0)).astype(np.float16)
    z16 = np.clip(-lo / s16.astype(np.float32), -65504, 65504).astype(np.float16)
    k = np.arange(m) // group
    s_r = s16.astype(np.float32)[:, k]
    z_r = z16.astype(np.float32)[:, k]
    codes = np.clip(np.rint(x / s_r + z_r), 0, qmax).astype(np.int64)
    recon = ((codes.astype(np.float32) - z_r) * s_r).astype(np.float16).astype(np.float32)
    return {"codes": pack_rows(codes, bits), "scale": s16, "zero": z16}, recon


_quantize_stat = quantize_stat  # former private name, kept for existing callers


def quantize_spqr(
    weight: np.ndarray,
    bits: int = 3,
    group_size: int = 16,
    scale_bits: int = 3,
    zero_bits: int = 3,
    stat_group_size: int = 16,
    outlier_fraction: float = 0.01,
    perm: np.ndarray | None = None,
    outlier_mask: np.ndarray | None = None,
) -> Encoded:
    """Encode a 2-D weight [out_features, in_features] as codec ``spqr`` v1.

    ``perm`` (stored column j holds input feature perm[j]) is recorded as the
    ``perm`` section; ``outlier_mask`` (in stored column order) overrides the
    data-free outlier choice, e.g. for tests or a calibration-aware caller.
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 2 or min(w.shape) < 1:
        raise ValueError(f"weight must be 2-D and non-empty, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weight contains NaN or infinity; refusing to quantize")
    if not 1 <= bits <= 8 or not 1 <= group_size <= 65536:
        raise ValueError("bits must be 1..8 and group_size 1..65536")
    for b in (scale_bits, zero_bits):
        if not (1 <= b <= 8 or b == 16):
            raise ValueError("scale_bits/zero_bits must be 1..8 or 16")
    m, n = w.shape
    if perm is not None:
        perm = np.asarray(perm, dtype=np.int64)
        if sorted(perm.tolist()) != list(range(n)):
            raise ValueError("perm must be a permutation of range(in_features)")
        w = w[:, perm]
    G = _ceil_div(n, group_size)
    qmax = (1 << bits) - 1

    if outlier_mask is None:
        outlier_mask = _select_outliers(w, group_size, int(round(outlier_fraction * m * n)))
    outlier_mask = np.asarray(outlier_mask, dtype=bool)

    # First level: min/max over non-outliers (all-outlier groups fit to 0).
    lo = _grouped(np.where(outlier_mask, np.inf, w), group_size).min(axis=2)
    hi = _grouped(np.where(outlier_mask, -np.inf, w), group_size).max(axis=2)
    # The range always includes 0 (as in GPTQ), so every zero lies in [0, qmax]: that keeps
    # the second-level quantization of zeros well conditioned even for near-constant groups.
    lo = np.minimum(np.where(np.isfinite(lo), lo, 0.0), 0.0)
    hi = np.maximum(np.where(np.isfinite(hi), hi, 0.0), 0.0)
    scale = ((hi - lo) / qmax).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        zero = np.where(scale > 0, -lo / scale, 0.0).astype(np.float32)

    params: dict[str, Any] = {"bits": bits, "group_size": group_size, "scale_bits": scale_bits, "zero_bits": zero_bits}
    if scale_bits < 16 or zero_bits < 16:
        params["stat_group_size"] = stat_group_size
    sections: dict[str, Any] = {}
    recon: dict[str, np.ndarray] = {}
    for which, x, b in (("scale", scale.T, scale_bits), ("zero", zero.T, zero_bits)):
        x = np.ascontiguousarray(x, dtype=np.float32)  # [G, m]
        if b == 16:
            x16 = np.clip(x, -65504, 65504).astype(np.float16)
            sections[which] = x16
            recon[which] = x16.astype(np.float32)
        else:
            sec, recon[which] = quantize_stat(x, b, stat_group_size)
            sections[f"{which}_codes"] = sec["codes"]
            sections[f"{which}_scale"] = sec["scale"]
            sections[f"{which}_zero"] = sec["zero"]

    S = recon["scale"].T[:, np.arange(n) // group_size]  # [m, n] per-column view of stats
    Z = recon["zero"].T[:, np.arange(n) // group_size]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.rint(w / S + Z)
    q = np.clip(np.nan_to_num(q, nan=0.0, posinf=qmax, neginf=0.0), 0, qmax).astype(np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        deq = (q.astype(np.float32) - Z) * S  # spec step 2: one f32 subtract, one f32 multiply

    rows, cols = np.nonzero(outlier_mask)  # row-major order => CSR order, columns increasing
    vals = w[rows, cols].astype(np.float16)
    deq[rows, cols] = vals.astype(np.float32)  # spec step 3: replace
    row_ptr = np.zeros(m + 1, dtype=np.uint32)
    np.cumsum(np.bincount(rows, minlength=m), out=row_ptr[1:])
    sections["codes"] = pack_rows(q, bits)
    sections["outlier_row_ptr"] = row_ptr
    sections["outlier_col"] = cols.astype(np.uint16 if n <= 65536 else np.uint32)
    sections["outlier_val"] = vals

    if perm is not None:
        sections["perm"] = perm.astype(np.uint32)
        out = np.empty_like(deq)
        out[:, perm] = deq
        deq = out
    info = {"outliers": int(len(rows)), "groups": G}
    return Encoded((m, n), params, sections, np.ascontiguousarray(deq, dtype=np.float32), info=info)
