"""SqueezeLLM encoder in torch: ``encoder.squeezellm.quantize_squeezellm`` on any device, byte for byte.

The CPU encoder's steps as batched row operations:

* outliers: the same threshold set as ``_top_mask`` (everything above the
  count-th largest score, then the first positions equal to it);
* per row, the sorted non-outlier values (a stable sort: equal values, signed
  zeros included, keep their order, as numpy's stable argsort) with the
  excluded ones pushed to the end as +inf;
* the f64 prefix sums are SEQUENTIAL like the Numba loop: ``torch.cumsum``
  along a non-innermost dimension adds one element at a time on the CPU and
  on CUDA (one thread per column), so the sums are transposed to scan dim 0;
* Lloyd iterations for all rows at once (``searchsorted`` for the midpoints,
  the same f64 quotient and clamps), each row frozen after its first
  iteration without a change, as the CPU loop breaks; the centroid sort is
  torch's except for rows that mix +0.0 and -0.0 (rare), which Numba's
  quicksort orders on the host, as the CPU encoder's does;
* the f64 -> f16 LUT rounding goes through a round-to-odd f32 (exact: one
  rounding, as numpy's direct cast; torch's own cast rounds twice);
* nearest-entry assignment with f32 distances, ties to the lower index.

Rows are processed in chunks of ``chunk_elements`` weights (default 2^25,
about 2 GB of f64 temporaries per chunk: fewer chunks, fewer Lloyd loops).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch

from ..encoded import Encoded
from .device import as_tensor, host_empty
from .packing import as_i32, pack_rows

F16_MAX = 65504.0
_F64 = torch.float64
CHUNK_ELEMENTS = 1 << 25


def f64_to_f16(x: torch.Tensor) -> torch.Tensor:
    """f64 -> f16 with one round-to-nearest-even (f64 -> f32 rounded to odd first, then f32 -> f16)."""
    f = x.to(torch.float32)
    back = f.to(_F64)
    over = back.abs() > x.abs()
    f = torch.where(over, torch.nextafter(f, torch.zeros_like(f)), f)  # truncate toward zero
    inexact = f.to(_F64) != x
    bits = f.view(torch.int32)
    f = torch.where(inexact, (bits | 1).view(torch.float32), f)
    return f.to(torch.float16)


def _top_mask(score: torch.Tensor, count: int, allowed: torch.Tensor) -> torch.Tensor:
    """``squeezellm._top_mask``: the ``count`` largest allowed scores, ties by position."""
    count = min(count, int(allowed.sum()))
    if count <= 0:
        return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    flat = torch.where(allowed, score, torch.full_like(score, -float("inf"))).reshape(-1)
    t = torch.topk(flat, count, sorted=False).values.min()
    above = flat > t
    eq = flat == t
    return (above | (eq & (torch.cumsum(eq, 0) <= count - int(above.sum())))).view(score.shape)


def _seq_cumsum(x: torch.Tensor) -> torch.Tensor:
    """[R, C] -> [R, C + 1]: 0 then the running sums along each row, added one element at a time."""
    out = torch.zeros((x.shape[1] + 1, x.shape[0]), dtype=x.dtype, device=x.device)
    torch.cumsum(x.T.contiguous(), 0, out=out[1:])
    return out.T


def _pick(a: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    return a.gather(1, i.clamp(0, a.shape[1] - 1))


@numba.njit(cache=True, nogil=True)
def _numba_sort(a: np.ndarray) -> None:
    for r in range(a.shape[0]):
        a[r].sort()  # the very sort of ``squeezellm._kmeans_row``


def _sort_rows(cent: torch.Tensor) -> torch.Tensor:
    """Each row sorted as Numba's ``ndarray.sort`` leaves it: torch's sort, except rows mixing +0.0 and -0.0
    (their order of equal zeros is the quicksort's), which are sorted by Numba itself on the host."""
    out = cent.sort(1).values
    zero = cent == 0
    neg = torch.signbit(cent)
    mixed = torch.nonzero((zero & neg).any(1) & (zero & ~neg).any(1))[:, 0]
    if mixed.numel():
        host = cent[mixed].cpu().numpy().copy()
        _numba_sort(host)
        out[mixed] = torch.from_numpy(host).to(cent.device)
    return out


def _kmeans_rows(xs: torch.Tensor, ws: torch.Tensor, cnt: torch.Tensor, k: int, max_iter: int) -> torch.Tensor:
    """``squeezellm._kmeans_row`` for every row: xs [R, n] sorted (+inf after cnt), ws [R, n] (0 after cnt)."""
    R, n = xs.shape
    pw = _seq_cumsum(ws)
    pwx = _seq_cumsum(ws * xs.nan_to_num(posinf=0.0))
    total = pw[:, n:]
    frac = torch.tensor([(j + 0.5) / k for j in range(k)], dtype=_F64, device=xs.device)
    target = frac[None, :] * total
    i = torch.searchsorted(pw[:, 1:].contiguous(), target.contiguous(), right=False)
    i = torch.minimum(i, (cnt - 1).clamp_min(0)[:, None])
    cent = _pick(xs, i)
    xs_c = xs.contiguous()
    half = torch.tensor(0.5, dtype=_F64, device=xs.device)
    active = cnt > 0
    for _ in range(max_iter):
        mid = half * (cent[:, :-1] + cent[:, 1:])
        inner = torch.searchsorted(xs_c, mid.contiguous(), right=True)  # x <= midpoint: the lower centroid
        bounds = torch.cat([torch.zeros_like(inner[:, :1]), inner, cnt[:, None]], 1)
        a = bounds[:, :-1]
        b = torch.maximum(a, bounds[:, 1:])
        sw = pw.gather(1, b) - pw.gather(1, a)
        c = (pwx.gather(1, b) - pwx.gather(1, a)) / sw
        lo, hi = _pick(xs, a), _pick(xs, b - 1)
        c = torch.where(lo > c, lo, c)  # Python's max(c, lo) / min(c, hi): the first unless the second wins
        c = torch.where(hi < c, hi, c)
        upd = sw > 0
        changed = (upd & (c != cent)).any(1)
        cent = torch.where(active[:, None], _sort_rows(torch.where(upd, c, cent)), cent)
        active = active & changed  # the CPU loop stops here for this row (its sort might still swap signed zeros)
        if not bool(active.any()):
            break
    return torch.where(cnt[:, None] > 0, cent, torch.zeros_like(cent))


def _fit_luts(w: torch.Tensor, sens: torch.Tensor | None, mask: torch.Tensor, k: int, max_iter: int,
              chunk: int) -> torch.Tensor:
    """f64 centroids [m, k] of every row's non-outlier values (``_fit_luts`` / ``_fit_luts_uniform``)."""
    m, n = w.shape
    out = torch.empty((m, k), dtype=_F64, device=w.device)
    for r0 in range(0, m, chunk):
        r1 = min(m, r0 + chunk)
        mk = mask[r0:r1]
        x = torch.where(mk, torch.full_like(w[r0:r1], float("inf")), w[r0:r1]).to(_F64)
        xs, order = torch.sort(x, dim=1, stable=True)
        cnt = (~mk).sum(1)
        if sens is None:
            ws = (torch.arange(n, device=w.device)[None, :] < cnt[:, None]).to(_F64)
        else:
            s = torch.where(mk, torch.zeros_like(sens[r0:r1]), sens[r0:r1]).gather(1, order)
            valid = torch.arange(n, device=w.device)[None, :] < cnt[:, None]
            allzero = (s == 0).all(1, keepdim=True)  # a sum of non-negatives is <= 0 only when all are 0
            ws = torch.where(allzero & valid, torch.ones_like(s), s)
        out[r0:r1] = _kmeans_rows(xs, ws, cnt, k, max_iter)
    return out


def _assign(w: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Nearest LUT entry per weight (f32 distance, strictly smaller wins: ties to the lowest index)."""
    best = torch.zeros(w.shape, dtype=torch.int64, device=w.device)
    bd = (w - lut[:, :1]).abs()
    for c in range(1, lut.shape[1]):
        d = (w - lut[:, c:c + 1]).abs()
        better = d < bd
        bd = torch.where(better, d, bd)
        best = torch.where(better, torch.full_like(best, c), best)
    return best


def quantize_squeezellm(
    weight: np.ndarray | torch.Tensor,
    bits: int = 3,
    sensitivity: np.ndarray | None = None,
    outlier_fraction: float = 0.0045,
    sensitive_fraction: float = 0.0005,
    max_iter: int = 100,
    outlier_mask: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    device: str | torch.device = "cuda",
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Encoded:
    """``encoder.squeezellm.quantize_squeezellm`` computed on ``device``: the same sections, byte for byte."""
    w = as_tensor(weight, device).contiguous()
    if w.ndim != 2 or min(w.shape) < 1:
        raise ValueError(f"weight must be 2-D and non-empty, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or float(w.abs().max()) > F16_MAX:
        raise ValueError("weight must be finite and within the f16 range")
    if not 1 <= bits <= 8:
        raise ValueError("bits must be 1..8")
    m, n = w.shape
    k = 1 << bits
    sens = None
    if sensitivity is not None:
        s = np.asarray(sensitivity, dtype=np.float64)
        if s.shape == (n,):
            s = np.broadcast_to(s, (m, n))
        if s.shape != (m, n) or not np.isfinite(s).all() or (s < 0).any():
            raise ValueError("sensitivity must be finite, >= 0 and of shape [m, n] or [n]")
        sens = torch.from_numpy(np.array(s, dtype=np.float64)).to(w.device)

    if outlier_mask is None:
        mask = _top_mask(w.abs(), int(round(outlier_fraction * m * n)), torch.ones_like(w, dtype=torch.bool))
        if sens is not None:
            mask |= _top_mask(sens, int(round(sensitive_fraction * m * n)), ~mask)
    else:
        if np.shape(outlier_mask) != (m, n):
            raise ValueError("outlier_mask must have the weight's shape")
        mask = torch.from_numpy(np.ascontiguousarray(outlier_mask, dtype=bool)).to(w.device)

    chunk = max(1, chunk_elements // n)
    cent = _fit_luts(w, sens, mask, k, max_iter, chunk)
    lut16 = f64_to_f16(torch.clamp(cent, -F16_MAX, F16_MAX))
    lut32 = lut16.to(torch.float32)
    words_t = host_empty((m, (n * bits + 31) // 32), torch.int32, w.device)
    deq_t = host_empty((m, n), torch.float32, w.device)
    vals = []
    for r0 in range(0, m, chunk):
        r1 = min(m, r0 + chunk)
        v, mk = w[r0:r1], mask[r0:r1]
        idx = _assign(v, lut32[r0:r1])
        d = lut32[r0:r1].gather(1, idx)  # spec step 1
        res = (v[mk] - d[mk]).to(torch.float16)
        d[mk] = d[mk] + res.to(torch.float32)  # spec step 2: one f32 add
        vals.append(res)
        words_t[r0:r1].copy_(as_i32(pack_rows(idx, bits)))
        deq_t[r0:r1].copy_(d)

    nz = torch.nonzero(mask)  # row-major => CSR order
    row_ptr = torch.zeros(m + 1, dtype=torch.int64, device=w.device)
    torch.cumsum(mask.sum(1), 0, out=row_ptr[1:])
    cols = nz[:, 1].cpu().numpy()
    sections: dict[str, Any] = {
        "lut": lut16.cpu().numpy(),
        "codes": words_t.numpy().view(np.uint32),
        "outlier_row_ptr": row_ptr.cpu().numpy().astype(np.uint32),
        "outlier_col": cols.astype(np.uint16 if n <= 65536 else np.uint32),
        "outlier_val": torch.cat(vals).cpu().numpy(),
    }
    if bias is not None:
        sections["bias"] = np.asarray(bias, dtype=np.float32).reshape(m)
    return Encoded((m, n), {"bits": bits}, sections, deq_t.numpy(), codec="squeezellm",
                   info={"outliers": int(nz.shape[0])})
