"""Calibration-aware SpQR encoder (and plain GPTQ as its special case), in torch.

Why a second encoder next to the data-free RTN one: with a Hessian
``H = 2 X Xᵀ`` of a layer's inputs, the quantization error of each column can
be pushed onto the not-yet-quantized columns (GPTQ's optimal brain update), and
outliers can be chosen by their effect on the layer's *output* rather than on
the weights. That is what SpQR does; this module implements it for codec
``spqr`` v1 (spec/codecs/spqr.md):

* act-order: columns are processed in order of decreasing ``diag(H)``; the order
  is recorded in the ``perm`` section (stored column j holds input feature
  ``perm[j]``), so the file decodes to the original column order;
* dampening ``percdamp · mean(diag H)`` and the upper Cholesky factor of
  ``H⁻¹``, lazy block updates (``blocksize`` columns at a time);
* when the solver reaches the first column of a group of β1 columns, the group's
  first-level min/max statistics are fitted on the *updated* weights, leaving
  out the weights whose leave-one-out (LOO) error reduction exceeds the outlier
  threshold; the statistics are then quantized to ``scale_bits``/``zero_bits``
  in groups of β2 rows (f16 second-level scale/zero) **before** any code of the
  group is chosen, so codes are chosen against exactly what a decoder rebuilds;
* a weight whose Hessian-weighted error ``((w - ŵ) / Hinv_cho[j, j])²`` still
  exceeds the threshold becomes an fp16 outlier (replace semantics), within a
  cap on the outlier fraction.

``scale_bits = zero_bits = 16`` with ``outlier_relative_threshold = inf`` is
plain group-wise GPTQ. Everything the solver computes in torch is re-derived in
numpy with the spec's arithmetic for the returned ``dequantized`` matrix, which
is therefore bit-identical to what ``spqrfmt.decoder.spqr.decode`` produces.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..format import ceil_div
from .encoded import Encoded
from .packing import pack_rows
from .spqr import quantize_stat

__all__ = ["GPTQConfig", "HessianFactor", "factor_hessian", "hessian_error", "quantize_gptq"]


@dataclass
class GPTQConfig:
    """Encoder settings. Defaults follow the SpQR paper's LLaMA recipe (3-bit, β1=β2=16, 3-bit stats)."""

    bits: int = 3
    group_size: int = 16
    scale_bits: int = 3
    zero_bits: int = 3
    stat_group_size: int = 16
    outlier_relative_threshold: float = 0.2
    max_outlier_fraction: float = 0.01
    percdamp: float = 0.01
    act_order: bool = True
    blocksize: int = 128

    @classmethod
    def plain_gptq(cls, bits: int = 4, group_size: int = 128, **kw: Any) -> GPTQConfig:
        """GPTQ = the same solver with f16 statistics and no outliers."""
        return cls(bits=bits, group_size=group_size, scale_bits=16, zero_bits=16,
                   outlier_relative_threshold=math.inf, max_outlier_fraction=0.0, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HessianFactor:
    """What the solver needs from H, computed once and shared by layers with the same input (q/k/v)."""

    perm: Any  # torch.LongTensor [n]: stored column j <- input feature perm[j]
    hinv_cho: Any  # torch f32 [n, n]: upper Cholesky factor of (H[perm][:, perm] + damp I)^-1
    dead: Any  # torch bool [n] (original order): features that never fired in calibration
    damp: float


def factor_hessian(hessian: Any, percdamp: float = 0.01, act_order: bool = True, device: Any = None) -> HessianFactor:
    """Dampen, permute and invert H; retries with 10x dampening if H is not positive definite."""
    import torch

    H = torch.as_tensor(hessian).to(device=device, dtype=torch.float64).clone()
    n = H.shape[0]
    if H.shape != (n, n):
        raise ValueError(f"hessian must be square, got {tuple(H.shape)}")
    if not torch.isfinite(H).all():
        raise ValueError("hessian contains NaN or infinity")
    diag = torch.diagonal(H)
    dead = diag <= 0
    H[dead, dead] = 1.0
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if act_order else torch.arange(
        n, device=H.device)
    H = H[perm][:, perm]
    mean_diag = float(torch.diagonal(H).mean())
    damp = percdamp * mean_diag if percdamp > 0 else 0.0
    eye = torch.eye(n, dtype=H.dtype, device=H.device)
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info2) == 0:
                return HessianFactor(perm, U.to(torch.float32), dead, damp)
        damp = max(damp * 10.0, 1e-8 * max(mean_diag, 1e-30))
    raise ValueError("hessian is not positive definite even after dampening")


def _fit_minmax(wg: Any, excluded: Any, qmax: int) -> tuple[Any, Any]:
    """First-level min/max fit per row over non-excluded weights, range widened to include 0."""
    import torch

    inf = torch.tensor(math.inf, dtype=wg.dtype, device=wg.device)
    lo = torch.where(excluded, inf, wg).amin(dim=1)
    hi = torch.where(excluded, -inf, wg).amax(dim=1)
    lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo)).clamp(max=0)
    hi = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi)).clamp(min=0)
    scale = (hi - lo) / qmax
    zero = torch.where(scale > 0, -lo / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(lo))
    return scale, zero


def _loo_reduction(wg: Any, d: Any, qmax: int) -> Any:
    """[m, g]: how much the group's H-weighted error shrinks if weight (r, k) is left out of the fit.

    Each leave-one-out fit uses the other g-1 weights of the row (SpQR's LOO
    criterion, with the plain min/max quantizer, statistics unquantized).
    """
    import torch

    m, g = wg.shape
    if g < 2:
        return torch.zeros_like(wg)

    def err(x: Any, dd: Any) -> Any:  # x [..., k], dd broadcastable: H-weighted error of a min/max fit
        lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = -lo / safe
        q = torch.clamp(torch.round(x / safe + zero), 0, qmax)
        return (((q - zero) * safe - x) / dd).square().sum(dim=-1)

    idx = torch.arange(g, device=wg.device)
    others = idx[1:] - (idx[:, None] >= idx[1:]).to(idx.dtype)  # [g, g-1]: row k lists all columns but k
    loo = err(wg[:, others], d[others])  # [m, g]
    base = err(wg, d)[:, None]  # [m, 1]
    return base - loo


def _stat_sections(x: np.ndarray, bits: int, stat_group_size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One group's first-level statistic [m] -> (spec sections for that group, reconstructed f32 [m])."""
    x = np.ascontiguousarray(x, dtype=np.float32)[None, :]
    if bits == 16:
        x16 = np.clip(x, -65504, 65504).astype(np.float16)
        return {"": x16}, x16.astype(np.float32)[0]
    sec, recon = quantize_stat(x, bits, stat_group_size)
    return {"_codes": sec["codes"], "_scale": sec["scale"], "_zero": sec["zero"]}, recon[0]


def hessian_error(weight: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W - Ŵ) H (W - Ŵ)ᵀ): the layer-output squared error GPTQ minimizes (in f64)."""
    d = np.asarray(weight, dtype=np.float64) - np.asarray(approx, dtype=np.float64)
    return float(np.einsum("ij,jk,ik->", d, np.asarray(hessian, dtype=np.float64), d))


def quantize_gptq(
    weight: np.ndarray,
    hessian: np.ndarray | None = None,
    config: GPTQConfig | None = None,
    *,
    factor: HessianFactor | None = None,
    device: Any = None,
) -> Encoded:
    """Encode ``weight`` [out_features, in_features] as codec ``spqr`` v1 using the input Hessian.

    ``hessian`` is ``2/N Σ x xᵀ`` over N calibration inputs ([in, in]); pass a
    precomputed ``factor`` (from :func:`factor_hessian`) instead to share the
    factorization between layers that see the same input. Returns the lead's
    :class:`~spqrfmt.encoder.encoded.Encoded` (params, sections, dequantized f32,
    info with ``outliers``, ``seconds``).
    """
    import torch

    cfg = config or GPTQConfig()
    dev = factor.hinv_cho.device if factor is not None else torch.device(device or "cpu")
    if dev.type != "cpu":
        return _quantize_gptq(weight, hessian, cfg, factor, device)
    # The column loop is hundreds of tiny tensor ops: extra intra-op threads only add overhead
    # (measured 4-7x slower with 2 threads on a busy 2-core machine), so it runs on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _quantize_gptq(weight, hessian, cfg, factor, device)
    finally:
        torch.set_num_threads(threads)


def _quantize_gptq(weight: np.ndarray, hessian: np.ndarray | None, cfg: GPTQConfig,
                   factor: HessianFactor | None, device: Any) -> Encoded:
    import torch

    t_start = time.perf_counter()
    w_np = np.asarray(weight, dtype=np.float32)
    if w_np.ndim != 2 or min(w_np.shape) < 1:
        raise ValueError(f"weight must be 2-D and non-empty, got shape {w_np.shape}")
    if not np.isfinite(w_np).all():
        raise ValueError("weight contains NaN or infinity; refusing to quantize")
    if not 1 <= cfg.bits <= 8 or not 1 <= cfg.group_size <= 65536 or not 1 <= cfg.stat_group_size <= 65536:
        raise ValueError("bits must be 1..8, group_size and stat_group_size 1..65536")
    for b in (cfg.scale_bits, cfg.zero_bits):
        if not (1 <= b <= 8 or b == 16):
            raise ValueError("scale_bits/zero_bits must be 1..8 or 16")
    m, n = w_np.shape
    if factor is None:
        if hessian is None:
            raise ValueError("need a hessian or a factor")
        factor = factor_hessian(hessian, cfg.percdamp, cfg.act_order, device=device)
    if factor.hinv_cho.shape != (n, n):
        raise ValueError(f"hessian is {tuple(factor.hinv_cho.shape)}, weight has {n} input features")
    dev = factor.hinv_cho.device
    perm = factor.perm
    U = factor.hinv_cho
    W = torch.from_numpy(w_np).to(dev).clone()
    W[:, factor.dead] = 0.0  # inputs that were always zero: any value is exact on the data; 0 is cheapest
    W = W[:, perm].contiguous()

    gs, qmax = cfg.group_size, (1 << cfg.bits) - 1
    G = ceil_div(n, gs)
    # Every group must start at a block start: then all pending (lazy) updates of earlier columns
    # have been applied to the whole group when its statistics are fitted.
    bsz = max(cfg.blocksize, 1)
    if gs <= bsz:
        bs = (bsz // gs) * gs
    else:
        bs = bsz if gs % bsz == 0 else gs
    use_outliers = math.isfinite(cfg.outlier_relative_threshold) and cfg.max_outlier_fraction > 0
    budget = int(math.floor(cfg.max_outlier_fraction * m * n)) if use_outliers else 0
    diag_u = torch.diagonal(U).clone()
    threshold = fit_threshold = math.inf
    fit_pool = col_pool = 0
    if use_outliers and budget > 0:
        # SpQR's scale for the relative threshold: mean over columns of Var_rows(W[:, j]) / Hinv_cho[j, j]².
        scale_ref = float((W.var(dim=0, unbiased=False) / diag_u.square()).mean())
        threshold = fit_threshold = cfg.outlier_relative_threshold * scale_ref
        # SpQR has no cap. With one, a first-come policy would spend the budget on the first
        # columns. So the budget is split before solving: a pre-pass over the weights (before any
        # update) finds the LOO candidates; the threshold for leaving weights out of a group's fit
        # is raised until they fit the budget, and their count is reserved as the "fit pool". The
        # rest ("column pool") goes to weights whose per-column error exceeds the relative
        # threshold, at most budget·min(1, 2(j+1)/n) of it spent by column j.
        red_all = torch.cat([_loo_reduction(W[:, g0:g0 + gs], diag_u[g0:g0 + gs], qmax).reshape(-1)
                             for g0 in range(0, n, gs)])
        if int((red_all > threshold).sum()) > budget:
            fit_threshold = max(threshold, float(torch.topk(red_all, budget).values[-1]))
        fit_pool = min(budget, int((red_all > fit_threshold).sum()))
        col_pool = budget - fit_pool
        del red_all
    else:
        use_outliers = False

    Q = torch.zeros((m, n), dtype=torch.int16, device=dev)
    is_out = torch.zeros((m, n), dtype=torch.bool, device=dev)
    S_rec = np.zeros((G, m), dtype=np.float32)
    Z_rec = np.zeros((G, m), dtype=np.float32)
    stat_secs: dict[str, list[np.ndarray]] = {}
    fit_used = col_used = 0
    s_col = z_col = excluded = None
    g0 = 0
    for b0 in range(0, n, bs):
        b1 = min(n, b0 + bs)
        Err = torch.zeros((m, b1 - b0), dtype=torch.float32, device=dev)
        for j in range(b0, b1):
            if j % gs == 0:
                g = j // gs
                g0, g1 = j, min(n, j + gs)
                wg = W[:, g0:g1]
                excluded = torch.zeros_like(wg, dtype=torch.bool)
                if use_outliers and fit_used < fit_pool:
                    red = _loo_reduction(wg, diag_u[g0:g1], qmax)
                    excluded = red > fit_threshold
                    room = fit_pool - fit_used
                    if int(excluded.sum()) > room:  # keep the strongest candidates the pool still admits
                        flat = torch.where(excluded, red, torch.full_like(red, -math.inf)).reshape(-1)
                        keep = torch.topk(flat, room).indices
                        excluded = torch.zeros_like(flat, dtype=torch.bool)
                        excluded[keep] = True
                        excluded = excluded.reshape(wg.shape)
                    # Weights left out of the fit are outliers whatever their error: clamping them
                    # to a range fitted without them would be worse than any in-range weight.
                    fit_used += int(excluded.sum())
                scale, zero = _fit_minmax(wg, excluded, qmax)
                for which, x, b in (("scale", scale, cfg.scale_bits), ("zero", zero, cfg.zero_bits)):
                    secs, rec = _stat_sections(x.cpu().numpy(), b, cfg.stat_group_size)
                    for suffix, arr in secs.items():
                        stat_secs.setdefault(which + suffix, []).append(arr)
                    (S_rec if which == "scale" else Z_rec)[g] = rec
                s_col = torch.from_numpy(S_rec[g]).to(dev)
                z_col = torch.from_numpy(Z_rec[g]).to(dev)
            w = W[:, j]
            q = torch.round(w / s_col + z_col)
            q = torch.nan_to_num(q, nan=0.0, posinf=float(qmax), neginf=0.0).clamp_(0, qmax)
            deq = (q - z_col) * s_col  # spec step 2: one f32 subtraction, one f32 multiplication
            d = U[j, j]
            final = deq
            if use_outliers:
                chosen = excluded[:, j - g0].clone()
                room = min(col_pool, int(math.ceil(col_pool * min(1.0, 2.0 * (j + 1) / n)))) - col_used
                if room > 0:
                    e2 = torch.where(chosen, torch.full_like(w, -1.0), ((w - deq) / d).square())
                    extra = e2 > threshold
                    count = int(extra.sum())  # the column loop's one host sync (the budget is a host int)
                    if count > room:
                        top = torch.topk(e2, room).indices
                        extra = torch.zeros_like(extra)
                        extra[top] = True
                    col_used += min(count, room)
                    chosen |= extra
                # no test for "any chosen" first: on a GPU each such test is a host sync per column
                is_out[:, j] = chosen
                final = torch.where(chosen, w.to(torch.float16).to(torch.float32), deq)
            Q[:, j] = q.to(torch.int16)
            e = (w - final) / d
            W[:, j] = final
            Err[:, j - b0] = e
            if j + 1 < b1:
                W[:, j + 1:b1] -= e[:, None] * U[j, j + 1:b1][None, :]
        if b1 < n:
            W[:, b1:] -= Err @ U[b0:b1, b1:]

    # ---- assemble the spec sections and the exact (numpy, spec-arithmetic) dequantization ----
    q_np = Q.cpu().numpy().astype(np.int64)
    out_np = is_out.cpu().numpy()
    w_fin = W.cpu().numpy()
    perm_np = perm.cpu().numpy().astype(np.int64)
    params: dict[str, Any] = {"bits": cfg.bits, "group_size": gs, "scale_bits": cfg.scale_bits,
                              "zero_bits": cfg.zero_bits}
    if cfg.scale_bits < 16 or cfg.zero_bits < 16:
        params["stat_group_size"] = cfg.stat_group_size
    sections: dict[str, Any] = {"codes": pack_rows(q_np, cfg.bits)}
    for role, parts in stat_secs.items():
        sections[role] = np.ascontiguousarray(np.concatenate(parts, axis=0))
    cols = np.arange(n) // gs
    S = S_rec.T[:, cols]
    Z = Z_rec.T[:, cols]
    with np.errstate(invalid="ignore", over="ignore"):
        deq = (q_np.astype(np.float32) - Z) * S
    rows, ocols = np.nonzero(out_np)  # row-major => CSR order, strictly increasing columns per row
    vals = w_fin[rows, ocols].astype(np.float16)
    deq[rows, ocols] = vals.astype(np.float32)
    row_ptr = np.zeros(m + 1, dtype=np.uint32)
    np.cumsum(np.bincount(rows, minlength=m), out=row_ptr[1:])
    sections["outlier_row_ptr"] = row_ptr
    sections["outlier_col"] = ocols.astype(np.uint16 if n <= 65536 else np.uint32)
    sections["outlier_val"] = vals
    if cfg.act_order:
        sections["perm"] = perm_np.astype(np.uint32)
        full = np.empty_like(deq)
        full[:, perm_np] = deq
        deq = full
    info = {"outliers": int(len(rows)), "groups": G, "damp": factor.damp, "threshold": threshold,
            "dead_columns": int(factor.dead.sum()), "seconds": time.perf_counter() - t_start}
    return Encoded((m, n), params, sections, np.ascontiguousarray(deq, dtype=np.float32), info=info)
