"""Data-free SpQR encoder in torch: ``encoder.spqr.quantize_spqr`` on any device, byte for byte.

Every step is the CPU encoder's, as whole-tensor operations:

* the group scan (min/max over non-outliers, the runner-ups, the leave-one-out
  gains) uses only max/min/argmax (exact; torch's argmax returns the first
  maximum, as the Numba loop's strict ``>`` keeps the lower column) and the
  same f32 products and differences, kept as separate operations (no FMA);
* each of the 4 outlier rounds takes the same set as the radix select: all
  gains above the k-th largest positive gain, then the first gains equal to
  it by flat index (an integer cumulative count), and rescans only the groups
  it touched;
* statistics and codes are f32 divisions by tensors (never a Python scalar:
  CUDA turns ``x / scalar`` into ``x * (1 / scalar)``), ``torch.round`` (half to
  even, as ``np.rint``), f16 casts (round to nearest even, as numpy's);
* codes are packed by integer shifts (``packing.py``).

Memory on the device: the weight (4 B/param), the outlier mask (1 B/param)
and the scan state (~0.9 B/param at β1 = 16); the group scan and the code step
run over row chunks of ``chunk_elements`` weights (default 2^24: about
0.4 GB of temporaries), each chunk's codes and dequantization copied to the
host as soon as they are done.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...format import ceil_div
from ..encoded import Encoded
from ..spqr import check_settings, checked_perm
from .device import as_tensor, const, host_empty
from .packing import as_i32, pack_rows, to_u32

CHUNK_ELEMENTS = 1 << 24
_F32 = torch.float32



def _scan(v: torch.Tensor, msk: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Groups v [N, β1] (f32, padded by repeating the last column) with outlier mask msk -> the scan state.

    (lo, hi, gain of dropping the max, gain of dropping the min, argmax, argmin), as ``encoder.spqr._scan_group``.
    """
    vh = v.masked_fill(msk, -math.inf)
    vl = v.masked_fill(msk, math.inf)
    ih = vh.argmax(1, keepdim=True)
    il = vl.argmin(1, keepdim=True)
    h1 = vh.gather(1, ih)[:, 0]
    l1 = vl.gather(1, il)[:, 0]
    h2 = vh.scatter(1, ih, -math.inf).amax(1)  # the runner-up counts a repeated maximum
    l2 = vl.scatter(1, il, math.inf).amin(1)
    zero = torch.zeros((), dtype=_F32, device=v.device)
    top = torch.where(h1 > 0, h1, zero)
    top2 = torch.where(h2 > 0, h2, zero)
    bot = torch.where(l1 < 0, l1, zero)
    bot2 = torch.where(l2 < 0, l2, zero)
    r_full = top - bot
    d_hi = top2 - bot
    d_lo = top - bot2
    rr = r_full * r_full
    g_hi = rr - d_hi * d_hi
    g_lo = rr - d_lo * d_lo
    g_hi = torch.where(torch.isfinite(g_hi), g_hi, zero)
    g_lo = torch.where(torch.isfinite(g_lo), g_lo, zero)
    return l1, h1, g_hi, g_lo, ih[:, 0], il[:, 0]


class _State:
    """The scan state of every group: lo/hi [m, G], gains [m, G, 2] (max, min), their columns."""

    def __init__(self, w: torch.Tensor, mask: torch.Tensor, group_size: int, chunk: int) -> None:
        m, n = w.shape
        self.w, self.mask, self.b1 = w, mask, group_size
        self.G = G = ceil_div(n, group_size)
        dev = w.device
        self.lo = torch.empty((m, G), dtype=_F32, device=dev)
        self.hi = torch.empty((m, G), dtype=_F32, device=dev)
        self.gains = torch.empty((m, G, 2), dtype=_F32, device=dev)
        self.cols = torch.empty((m, G, 2), dtype=torch.int64, device=dev)
        pad = G * group_size - n
        j0 = torch.arange(G, device=dev) * group_size
        for r0 in range(0, m, chunk):
            r1 = min(m, r0 + chunk)
            v, mk = w[r0:r1], mask[r0:r1]
            if pad:
                v = torch.cat([v, v[:, -1:].expand(-1, pad)], 1)
                mk = torch.cat([mk, mk[:, -1:].expand(-1, pad)], 1)
            lo, hi, gh, gl, ih, il = _scan(v.reshape(-1, group_size), mk.reshape(-1, group_size))
            self.lo[r0:r1] = lo.view(-1, G)
            self.hi[r0:r1] = hi.view(-1, G)
            self.gains[r0:r1] = torch.stack([gh, gl], 1).view(-1, G, 2)
            self.cols[r0:r1] = (torch.stack([ih, il], 1).view(-1, G, 2) + j0[None, :, None])

    def rescan(self, rg: torch.Tensor) -> None:
        """Rescan the groups with flat ids rg = r * G + g (``encoder.spqr._mark_and_rescan``'s second loop)."""
        n = self.w.shape[1]
        r, g = rg // self.G, rg % self.G
        t = torch.arange(self.b1, device=rg.device)
        c = torch.clamp_max(g[:, None] * self.b1 + t[None, :], n - 1)
        lo, hi, gh, gl, ih, il = _scan(self.w[r[:, None], c], self.mask[r[:, None], c])
        self.lo[r, g] = lo
        self.hi[r, g] = hi
        self.gains[r, g] = torch.stack([gh, gl], 1)
        self.cols[r, g] = torch.stack([ih, il], 1) + (g * self.b1)[:, None]


def _largest(gains: torch.Tensor, limit: int) -> torch.Tensor:
    """Flat indices (increasing) of the ``min(limit, #positive)`` largest positive gains, ties to the lower index.

    ``encoder.spqr._largest``'s set: every gain above the k-th largest, then the first gains equal to it.
    """
    pos = gains > 0
    k = min(limit, int(pos.sum()))
    if k <= 0:
        return torch.zeros(0, dtype=torch.int64, device=gains.device)
    t = torch.topk(gains, k, sorted=False).values.min()
    above = gains > t
    eq = gains == t
    take = above | (eq & (torch.cumsum(eq, 0) <= k - int(above.sum())))
    return torch.nonzero(take)[:, 0]


def _fit_groups(st: _State, budget: int, rounds: int = 4) -> None:
    """``encoder.spqr._fit_groups``'s outlier rounds on ``st`` (its mask and scan state updated in place)."""
    m, n = st.w.shape
    flat_gains = st.gains.view(-1)
    flat_cols = st.cols.view(-1)
    taken = 0
    for _ in range(rounds if budget > 0 else 0):
        remaining = budget - taken
        if remaining <= 0:
            break
        chosen = _largest(flat_gains, min(remaining, max(1, ceil_div(budget, rounds))))
        if chosen.numel() == 0:
            break
        c = flat_cols[chosen]
        r = chosen // (2 * st.G)
        ok = c < n
        r, c = r[ok], c[ok]
        fresh = ~st.mask[r, c]
        taken += int(torch.unique(r[fresh] * n + c[fresh]).numel())  # a max and a min may be one weight
        st.mask[r, c] = True
        st.rescan(torch.unique_consecutive(chosen // 2))


def _clamp_code(t: torch.Tensor, fq: torch.Tensor) -> torch.Tensor:
    """``encoder.spqr._clamp_code``: NaN and -inf -> 0, +inf -> qmax."""
    t = torch.where(t > 0, t, torch.zeros_like(fq))
    return torch.where(t < fq, t, fq)


def stat_codes(x: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, ...]:
    """``encoder.spqr.quantize_stat``'s arithmetic on x [G, m] f32, all on x's device and free of host syncs
    (the calibrated solver runs it inside a CUDA graph): (codes f32 [G, m], s16 [G, K], z16 [G, K], recon [G, m])."""
    Gn, m = x.shape
    K = ceil_div(m, group)
    pad = K * group - m
    xp = torch.cat([x, x[:, -1:].expand(-1, pad)], 1) if pad else x
    xg = xp.reshape(Gn, K, group)
    lo, hi = xg.amin(2), xg.amax(2)
    one = const(1.0, x)
    fq = const(float((1 << bits) - 1), x)
    scale2 = (hi - lo) / fq
    scale2 = torch.where(scale2 > 0, scale2, one)
    s16 = scale2.to(torch.float16)
    s16 = torch.where(torch.isfinite(s16) & (s16 != 0), s16, one.to(torch.float16))
    z16 = torch.clamp(-lo / s16.to(_F32), -65504, 65504).to(torch.float16)
    s_ = s16.to(_F32)[:, :, None].expand(Gn, K, group).reshape(Gn, K * group)[:, :m]
    z_ = z16.to(_F32)[:, :, None].expand(Gn, K, group).reshape(Gn, K * group)[:, :m]
    t = _clamp_code(torch.round(x / s_ + z_), fq)
    return t, s16, z16, ((t - z_) * s_).to(torch.float16).to(_F32)


def quantize_stat(x: torch.Tensor, bits: int, group: int) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """``encoder.spqr.quantize_stat`` on x [G, m] f32: (host sections, reconstructed f32 [G, m] on x's device)."""
    t, s16, z16, recon = stat_codes(x, bits, group)
    return {"codes": to_u32(pack_rows(t.to(torch.int64), bits)), "scale": s16.cpu().numpy(),
            "zero": z16.cpu().numpy()}, recon


def quantize_spqr(
    weight: np.ndarray | torch.Tensor,
    bits: int = 3,
    group_size: int = 16,
    scale_bits: int = 3,
    zero_bits: int = 3,
    stat_group_size: int = 16,
    outlier_fraction: float = 0.01,
    perm: np.ndarray | None = None,
    outlier_mask: np.ndarray | None = None,
    device: str | torch.device = "cuda",
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Encoded:
    """``encoder.spqr.quantize_spqr`` computed on ``device``: the same sections, byte for byte.

    ``weight`` may already be a tensor on the device (no host copy then).
    """
    w = as_tensor(weight, device)
    check_settings(tuple(w.shape), w.numel() > 0 and bool(torch.isfinite(w).all()), bits, group_size, scale_bits,
                   zero_bits)
    m, n = w.shape
    perm = checked_perm(perm, n)
    if perm is not None:
        w = w[:, torch.from_numpy(perm).to(w.device)]
    w = w.contiguous()
    G = ceil_div(n, group_size)
    qmax = (1 << bits) - 1
    chunk = max(1, chunk_elements // (G * group_size))

    if outlier_mask is not None and np.shape(outlier_mask) != (m, n):
        raise ValueError(f"outlier_mask must have the weight's shape {(m, n)}, got {np.shape(outlier_mask)}")
    given = outlier_mask is not None
    mask = (torch.from_numpy(np.ascontiguousarray(outlier_mask, dtype=bool)).to(w.device) if given
            else torch.zeros((m, n), dtype=torch.bool, device=w.device))
    st = _State(w, mask, group_size, chunk)
    if not given:
        _fit_groups(st, int(round(outlier_fraction * m * n)))
    zero_t = const(0.0, w)
    lo = torch.where(torch.isfinite(st.lo), st.lo, zero_t)
    lo = torch.where(lo < 0, lo, zero_t)  # np.minimum(x, 0.0): x if x < 0 else 0.0
    hi = torch.where(torch.isfinite(st.hi), st.hi, zero_t)
    hi = torch.where(hi > 0, hi, zero_t)
    del st
    scale = (hi - lo) / const(float(qmax), w)
    zero = torch.where(scale > 0, -lo / scale, zero_t)

    params: dict[str, Any] = {"bits": bits, "group_size": group_size, "scale_bits": scale_bits, "zero_bits": zero_bits}
    if scale_bits < 16 or zero_bits < 16:
        params["stat_group_size"] = stat_group_size
    sections: dict[str, Any] = {}
    recon: dict[str, torch.Tensor] = {}
    for which, x, b in (("scale", scale.T, scale_bits), ("zero", zero.T, zero_bits)):
        x = x.contiguous()  # [G, m]
        if b == 16:
            x16 = torch.clamp(x, -65504, 65504).to(torch.float16)
            sections[which] = x16.cpu().numpy()
            recon[which] = x16.to(_F32)
        else:
            sec, recon[which] = quantize_stat(x, b, stat_group_size)
            sections[f"{which}_codes"] = sec["codes"]
            sections[f"{which}_scale"] = sec["scale"]
            sections[f"{which}_zero"] = sec["zero"]

    # Codes against the reconstructed statistics (spqr.md §5 step 2), then step 3's outlier replacement.
    S = recon["scale"].T.contiguous()  # [m, G]
    Z = recon["zero"].T.contiguous()
    fq = const(float(qmax), w)
    words_t = host_empty((m, (n * bits + 31) // 32), torch.int32, w.device)
    deq_t = host_empty((m, n), torch.float32, w.device)
    pad = G * group_size - n
    for r0 in range(0, m, chunk):
        r1 = min(m, r0 + chunk)
        v = w[r0:r1]
        if pad:
            v = torch.cat([v, v[:, -1:].expand(-1, pad)], 1)
        v = v.view(r1 - r0, G, group_size)
        s_ = S[r0:r1, :, None]
        z_ = Z[r0:r1, :, None]
        q = _clamp_code(torch.round(v / s_ + z_), fq)
        d = ((q - z_) * s_).view(r1 - r0, -1)[:, :n]
        mk = mask[r0:r1]
        d = torch.where(mk, w[r0:r1].to(torch.float16).to(_F32), d)
        words_t[r0:r1].copy_(as_i32(pack_rows(q.view(r1 - r0, -1)[:, :n], bits)))
        deq_t[r0:r1].copy_(d)

    counts = mask.sum(1)
    nz = torch.nonzero(mask)  # row-major: CSR order, columns increasing within a row
    row_ptr = torch.zeros(m + 1, dtype=torch.int64, device=w.device)
    torch.cumsum(counts, 0, out=row_ptr[1:])
    sections["codes"] = words_t.numpy().view(np.uint32)
    deq = deq_t.numpy()
    sections["outlier_row_ptr"] = row_ptr.cpu().numpy().astype(np.uint32)
    col_t = torch.int16 if n <= 65536 else torch.int32
    cols = nz[:, 1]
    sections["outlier_col"] = (torch.where(cols >= 1 << 15, cols - (1 << 16), cols) if n <= 65536 else cols).to(
        col_t).cpu().numpy().view(np.uint16 if n <= 65536 else np.uint32)
    sections["outlier_val"] = w[nz[:, 0], nz[:, 1]].to(torch.float16).cpu().numpy()  # = w[mask], no second nonzero

    if perm is not None:
        sections["perm"] = perm.astype(np.uint32)
        out = np.empty_like(deq)
        out[:, perm] = deq
        deq = out
    info = {"outliers": int(nz.shape[0]), "groups": G}
    return Encoded((m, n), params, sections, deq, info=info)
