"""SqueezeLLM encoder in torch: ``encoder.squeezellm.quantize_squeezellm`` on any device, byte for byte.

The CPU encoder's steps as batched row operations:

* outliers: the same threshold set as ``_top_mask`` (everything above the
  count-th largest score, then the first positions equal to it);
* per row, the non-outlier values stably sorted by ``squeezellm._sort_key``
  (as int32: -0.0 below +0.0; the excluded ones pushed to the end as +inf);
* uniform fit (no sensitivities): the values as fixed-point integers of
  2^(e - fixed_bits) and their int64 prefix sums, exact in any order; with
  sensitivities the f64 prefix sums are SEQUENTIAL like the Numba loop:
  ``torch.cumsum`` along a non-innermost dimension adds one element at a time
  on the CPU and on CUDA (one thread per column), so the sums are transposed
  to scan dim 0;
* Lloyd iterations: on CUDA one Triton kernel (``squeezellm_triton``: a program
  per row runs all its iterations), elsewhere batched torch ops
  (``searchsorted`` for the midpoints, the same f64 quotient and clamps);
* the f64 -> f16 LUT rounding goes through a round-to-odd f32 (exact: one
  rounding, as numpy's direct cast; torch's own cast rounds twice);
* nearest-entry assignment with f32 distances, ties to the lower index.

Rows are processed in chunks of ``chunk_elements`` weights (default 2^25,
about 2 GB of f64 temporaries per chunk: fewer chunks, fewer Lloyd loops).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..encoded import Encoded
from ..squeezellm import checked_inputs, fixed_bits
from .device import as_tensor, host_empty
from .packing import as_i32, pack_rows

F16_MAX = 65504.0
_F64 = torch.float64
CHUNK_ELEMENTS = 1 << 25
ASSIGN_ELEMENTS = 1 << 26  # f32 distances per block of the assignment (256 MB)


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


def _top_mask(score: torch.Tensor, count: int, allowed: torch.Tensor | None) -> torch.Tensor:
    """``squeezellm._top_mask``: the ``count`` largest allowed scores (None: all), ties by position."""
    count = min(count, score.numel() if allowed is None else int(allowed.sum()))
    if count <= 0:
        return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    if allowed is not None:
        score = torch.where(allowed, score, torch.full_like(score, -float("inf")))
    flat = score.reshape(-1)
    t = torch.topk(flat, count, sorted=False).values.min()
    above = flat > t
    eq = flat == t
    return (above | (eq & (torch.cumsum(eq, 0) <= count - int(above.sum())))).view(score.shape)


def _seq_cumsum(x: torch.Tensor) -> torch.Tensor:
    """[R, C] -> [R, C + 1]: 0 then the running sums along each row, added one element at a time.

    The scan runs along dim 0 of the transpose (one CUDA thread per column, sequential); a single row gets a
    zero companion, since a 1-D CUDA scan is a parallel one.
    """
    R = x.shape[0]
    xt = x.T if R > 1 else torch.cat([x, torch.zeros_like(x)]).T
    out = torch.zeros((x.shape[1] + 1, xt.shape[1]), dtype=x.dtype, device=x.device)
    torch.cumsum(xt.contiguous(), 0, out=out[1:])
    return out.T[:R]


def _pick(a: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    return a.gather(1, i.clamp(0, a.shape[1] - 1))


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2.0 ** e (integer e in the normal f64 range) as f64, exactly: built from the exponent bits."""
    return ((e.to(torch.int64) + 1023) << 52).view(_F64)


def _lloyd_torch(xs: torch.Tensor, pw: torch.Tensor, pwx: torch.Tensor, scale: torch.Tensor, cnt: torch.Tensor,
                 cent: torch.Tensor, max_iter: int, check_every: int = 8) -> torch.Tensor:
    """``squeezellm._lloyd`` for every row at once (any device): the same midpoints, searches, quotients, clamps.

    A row past its first iteration without a change would change nothing again, so all rows run until none
    changed (checked every ``check_every`` iterations: one host sync each) or max_iter.
    """
    xs_c = xs.contiguous()
    half = torch.tensor(0.5, dtype=_F64, device=xs.device)
    zero = torch.zeros_like(cnt[:, None])
    moved = torch.zeros((), dtype=torch.bool, device=xs.device)
    for it in range(max_iter):
        mid = half * (cent[:, :-1] + cent[:, 1:])
        inner = torch.searchsorted(xs_c, mid.contiguous(), right=True)  # x <= midpoint: the lower centroid
        bounds = torch.cat([zero, inner, cnt[:, None]], 1)
        a = bounds[:, :-1]
        b = torch.maximum(a, bounds[:, 1:])
        sw = pw.gather(1, b) - pw.gather(1, a)
        c = (pwx.gather(1, b) - pwx.gather(1, a)).to(_F64) / torch.where(sw > 0, sw, 1.0) * scale
        lo, hi = _pick(xs, a), _pick(xs, b - 1)
        c = torch.where(c < lo, lo, c)
        c = torch.where(c > hi, hi, c)
        upd = (sw > 0) & (c != cent)
        cent = torch.where(upd, c, cent)
        moved = moved | upd.any()
        if (it + 1) % check_every == 0 or it + 1 == max_iter:
            if not bool(moved):
                break
            moved = torch.zeros((), dtype=torch.bool, device=xs.device)
    return cent


def _fit_luts(w: torch.Tensor, sens: torch.Tensor | None, mask: torch.Tensor, k: int, max_iter: int,
              chunk: int, lloyd: str = "auto") -> torch.Tensor:
    """f64 centroids [m, k] of every row's non-outlier values (``squeezellm._fit_luts``).

    ``lloyd``: "triton" (one kernel for all iterations of all rows), "torch" (batched torch ops), or "auto"
    (Triton on CUDA).
    """
    m, n = w.shape
    out = torch.empty((m, k), dtype=_F64, device=w.device)
    use_triton = lloyd == "triton" or (lloyd == "auto" and w.is_cuda)
    fbits = fixed_bits(n)
    cols = torch.arange(n, device=w.device)
    frac = torch.tensor([(j + 0.5) / k for j in range(k)], dtype=_F64, device=w.device)
    for r0 in range(0, m, chunk):
        r1 = min(m, r0 + chunk)
        mk = mask[r0:r1]
        bits = w[r0:r1].view(torch.int32)
        key = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # squeezellm._sort_key as signed int32
        key = torch.where(mk, torch.full_like(key, 0x7FFFFFFF), key)  # excluded: after every finite value
        order = torch.sort(key, dim=1, stable=True).indices
        cnt = (~mk).sum(1)
        valid = cols[None, :] < cnt[:, None]
        inf = torch.full(order.shape, float("inf"), dtype=_F64, device=w.device)
        xs = torch.where(valid, w[r0:r1].gather(1, order).to(_F64), inf)
        if sens is None:
            first = xs[:, :1].abs()
            last = _pick(xs, (cnt - 1)[:, None]).abs()
            mag = torch.where(cnt[:, None] > 0, torch.maximum(first, last), torch.zeros_like(first))
            sh = fbits - torch.frexp(mag).exponent.to(torch.int64)
            fixed = torch.where(valid, torch.round(xs * pow2(sh)), torch.zeros_like(xs)).to(torch.int64)
            pwx = torch.nn.functional.pad(torch.cumsum(fixed, 1), (1, 0))
            pw = torch.arange(n + 1, device=w.device, dtype=_F64).expand(r1 - r0, n + 1)
            scale = pow2(-sh)
        else:
            s = torch.where(mk, torch.zeros_like(sens[r0:r1]), sens[r0:r1]).gather(1, order)
            allzero = (s == 0).all(1, keepdim=True)  # a sum of non-negatives is <= 0 only when all are 0
            ws = torch.where(allzero & valid, torch.ones_like(s), s)
            pw = _seq_cumsum(ws)
            pwx = _seq_cumsum(ws * torch.where(valid, xs, torch.zeros_like(xs)))
            scale = torch.ones((r1 - r0, 1), dtype=_F64, device=w.device)
        target = frac[None, :] * pw.gather(1, cnt[:, None])  # the weighted quantiles (j + 1/2) / k
        i = torch.searchsorted(pw[:, 1:].contiguous(), target.contiguous(), right=False)
        cent = _pick(xs, torch.minimum(i, (cnt - 1).clamp_min(0)[:, None]))
        cent = torch.where(cnt[:, None] > 0, cent, torch.zeros_like(cent))
        if use_triton:
            from .squeezellm_triton import lloyd

            cent = lloyd(xs, pw, pwx, scale, cnt, cent, max_iter, uniform=sens is None)
        else:
            cent = _lloyd_torch(xs, pw, pwx, scale, cnt, cent, max_iter)
        out[r0:r1] = cent
    return out


def _assign(w: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Nearest LUT entry per weight: the smallest f32 distance, ties to the lowest index (``argmin`` returns the
    first minimum), over row blocks of ASSIGN_ELEMENTS distances."""
    R, n = w.shape
    k = lut.shape[1]
    best = torch.empty(w.shape, dtype=torch.int64, device=w.device)
    rows = max(1, ASSIGN_ELEMENTS // (n * k))
    for r0 in range(0, R, rows):
        r1 = min(R, r0 + rows)
        best[r0:r1] = (w[r0:r1, :, None] - lut[r0:r1, None, :]).abs().argmin(2)
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
    lloyd: str = "auto",
    assign: str = "auto",
) -> Encoded:
    """``encoder.squeezellm.quantize_squeezellm`` computed on ``device``: the same sections, byte for byte.

    ``lloyd``: how the k-means iterations run: "triton" (one kernel), "torch" (batched ops), "auto" (Triton
    on CUDA); ``assign``: the nearest-entry search, "torch" (a blocked argmin), "triton" (one kernel) or "auto"
    (Triton on CUDA: identical bytes and 1.5-1.6x the whole encode's speed on an H200,
    docs/results/gpu_check_encoders.json); all give the same bytes."""
    w = as_tensor(weight, device).contiguous()
    s = checked_inputs(tuple(w.shape), lambda: bool(torch.isfinite(w).all()) and float(w.abs().max()) <= F16_MAX,
                       bits, sensitivity)
    m, n = w.shape
    k = 1 << bits
    sens = None if s is None else torch.from_numpy(s).to(w.device)

    if outlier_mask is None:
        mask = _top_mask(w.abs(), int(round(outlier_fraction * m * n)), None)
        if sens is not None:
            mask |= _top_mask(sens, int(round(sensitive_fraction * m * n)), ~mask)
    else:
        if np.shape(outlier_mask) != (m, n):
            raise ValueError("outlier_mask must have the weight's shape")
        mask = torch.from_numpy(np.ascontiguousarray(outlier_mask, dtype=bool)).to(w.device)

    chunk = max(1, chunk_elements // n)
    cent = _fit_luts(w, sens, mask, k, max_iter, chunk, lloyd)
    lut16 = f64_to_f16(torch.clamp(cent, -F16_MAX, F16_MAX))
    lut32 = lut16.to(torch.float32)
    words_t = host_empty((m, (n * bits + 31) // 32), torch.int32, w.device)
    deq_t = host_empty((m, n), torch.float32, w.device)
    nearest = _assign
    if assign == "triton" or (assign == "auto" and w.is_cuda):
        from .squeezellm_triton import assign as nearest
    vals = []
    for r0 in range(0, m, chunk):
        r1 = min(m, r0 + chunk)
        v, mk = w[r0:r1], mask[r0:r1]
        idx = nearest(v, lut32[r0:r1])
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
