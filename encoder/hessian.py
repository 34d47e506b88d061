"""Layer-input Hessians ``H = 2/N Σ x xᵀ``, summed exactly so the sum does not depend on how batches are split.

Why not a float64 running sum: floating-point addition is not associative, so
ranks that each sum their own batches and then all-reduce would get other bits
than one process summing every batch in turn, and the solver (Cholesky, the
act-order sort, f32 rounding) can turn one bit into another file. Here each
batch's Gram matrix ``xᵀx`` (float64) is rounded once onto a fixed grid of
``2^-k`` and summed as int64: integer sums are exact, so one process, N ranks
and any order give the same ``H``.

The grid comes from a bound on every entry over all batches (``input_bound``:
``max_i Σ_t x_ti²`` ≥ ``|(xᵀx)_ij|`` by Cauchy–Schwarz; the max over batches is
exact, so ranks agree on it): ``k`` leaves one bit of headroom after adding
``nbatches`` terms into int64. The rounding error is at most ``nbatches · 2^-k-1``
per entry, about ``2^-57`` of the largest entry for 16 batches: finer than the
float64 running sum's accumulated error, and far below the solver's dampening.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["as_numpy", "diagonal", "fixed_gram", "from_fixed", "grid_exponent", "hessian", "input_bound",
           "relative_output_error"]


def input_bound(x: Any) -> float:
    """``max_i Σ_t x_ti²`` of one batch's inputs ``x`` [..., n] (float64): bounds every entry of ``xᵀx``."""
    import torch

    x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
    b = float(x.square().sum(0).max()) if x.numel() else 0.0
    if not math.isfinite(b):
        raise ValueError("calibration activations are not finite (inf or NaN) or overflow float64")
    return b


def grid_exponent(bound: float, nbatches: int) -> int:
    """``k`` such that ``nbatches`` terms of magnitude at most ``bound``, times ``2^k``, sum below ``2^62``."""
    if bound <= 0:
        return 0
    e = math.frexp(bound)[1]  # bound < 2^e
    return 61 - e - max(nbatches - 1, 0).bit_length()


def fixed_gram(x: Any, k: int) -> Any:
    """``round(xᵀx · 2^k)`` as int64 (x [..., n] -> [n, n]); ValueError if the bound ``k`` came from was wrong."""
    import torch

    x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
    g = torch.round((x.T @ x) * math.ldexp(1.0, k))
    if g.numel() and float(g.abs().max()) >= 2.0**62:
        raise ValueError("a Hessian term exceeds the grid chosen from its bound (internal error)")
    return g.to(torch.int64)


def from_fixed(total: Any, k: int, count: int) -> Any:
    """The normalised float64 Hessian ``2/count · Σ xᵀx`` from the int64 sum on the ``2^-k`` grid."""
    import torch

    return (total.to(torch.float64) * math.ldexp(1.0, -k)) * (2.0 / max(count, 1))


def hessian(batches: Sequence[Any]) -> Any:
    """``2/N Σ x xᵀ`` over every row of every batch, exactly as calibration sums it (one call, one process)."""
    k = grid_exponent(max((input_bound(x) for x in batches), default=0.0), len(batches))
    total = sum(fixed_gram(x, k) for x in batches)
    return from_fixed(total, k, sum(x.reshape(-1, x.shape[-1]).shape[0] for x in batches))


def as_numpy(h: Any) -> Any:
    """A Hessian (numpy array, or torch tensor on any device) as a float64 numpy array."""
    import numpy as np

    if hasattr(h, "detach"):  # a torch tensor
        h = h.detach().cpu().numpy()
    return np.asarray(h, dtype=np.float64)


def diagonal(h: Any) -> Any:
    """diag(H) as a float64 numpy array, without copying a device Hessian to the host whole."""
    import numpy as np

    if hasattr(h, "detach"):  # a torch tensor
        return h.detach().diagonal().cpu().numpy().astype(np.float64)
    return np.ascontiguousarray(np.diagonal(np.asarray(h, dtype=np.float64)))


def relative_output_error(weight: Any, approx: Any, h: Any) -> float:
    """``tr(D H Dᵀ) / tr(W H Wᵀ)`` with ``D = W - Ŵ``: the layer-output error on the calibration data, relative.

    Why: a calibrated solver (GPTQ, LDLQ) minimises this, not the weight error. Where a few input channels
    carry massive activations, its error feedback can move weights of quiet channels far from their values
    (weight-space error above 1) while the layer's outputs stay close; this is the figure that says whether
    the encoding is no better than zeros. Computed in float64 on ``h``'s device (numpy or torch).
    """
    import numpy as np

    weight, approx = np.asarray(weight), np.asarray(approx)
    on_device = hasattr(h, "detach")
    if on_device:
        import torch

        hh = h.detach().to(torch.float64)
    else:
        hh = np.asarray(h, dtype=np.float64)
    num = den = 0.0
    for r0 in range(0, weight.shape[0], 2048):  # row slabs: a few [2048, n] float64 temporaries at a time
        w = weight[r0:r0 + 2048].astype(np.float64)
        d = w - approx[r0:r0 + 2048].astype(np.float64)
        if on_device:
            w, d = torch.from_numpy(w).to(hh.device), torch.from_numpy(d).to(hh.device)
        num += float(((d @ hh) * d).sum())
        den += float(((w @ hh) * w).sum())
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf
