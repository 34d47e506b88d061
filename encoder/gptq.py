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
  cap on the outlier fraction; with ``outlier_rule = "loo"`` (the default) the
  weights left out of the fit are outliers too, with ``"error"`` (the SpQR
  authors' rule) only the ones that then fail this test.

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

__all__ = ["OUTLIER_RULES", "GPTQConfig", "HessianFactor", "factor_hessian", "hessian_error", "quantize_gptq",
           "release_buffers"]


OUTLIER_RULES = ("loo", "error")  # spqrfmt.codecs.spqr.OUTLIER_RULES (the CLI's choices) says the same


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
    # An f16 zero-point rounded to an integer, as GPTQ's quantizer does, so that 0 lies on the grid.
    # SmolLM2-135M, 3-bit, one group per row (bench/gptq_zero_point.py): the authors' GPTQ 157 ppl, 180
    # with our unrounded zero-point; ours 169 -> 150. Quantized zeros (zero_bits < 16) are never rounded.
    round_zero: bool = False
    # Which weights become outliers. "loo": the ones the leave-one-out pre-test leaves out of a group's fit,
    # plus those failing the per-column error test (budget split between the two before solving: the better
    # rule when the cap binds). "error": the SpQR authors' rule (spqr_engine.py): leave-one-out only shapes
    # the fit and the column test alone decides (the better rule when the threshold, not the cap, sets the
    # count; docs/quality.md has both at equal bits).
    outlier_rule: str = "loo"

    @classmethod
    def plain_gptq(cls, bits: int = 4, group_size: int = 128, **kw: Any) -> GPTQConfig:
        """GPTQ = the same solver with f16 statistics, integer zero-points and no outliers."""
        kw.setdefault("round_zero", True)
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


def _fit_minmax(wg: Any, excluded: Any, qmax: int, round_zero: bool = False) -> tuple[Any, Any]:
    """First-level min/max fit per row over non-excluded weights, range widened to include 0."""
    import torch

    inf = torch.full((), math.inf, dtype=wg.dtype, device=wg.device)
    lo = torch.where(excluded, inf, wg).amin(dim=1)
    hi = torch.where(excluded, -inf, wg).amax(dim=1)
    lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo)).clamp(max=0)
    hi = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi)).clamp(min=0)
    scale = (hi - lo) / qmax
    zero = torch.where(scale > 0, -lo / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(lo))
    return scale, (torch.round(zero) if round_zero else zero)


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


def _keep_largest(mask: Any, score: Any, room: Any, check: bool) -> Any:
    """``mask`` limited to its ``room`` (0-d device int, ≥ 0) largest ``score`` entries, ties to the lower index.

    Written without host syncs (a stable sort gives every entry its rank) so that it can run inside a CUDA
    graph; with ``check`` (eager, on a CPU) the sort is skipped when the mask already fits, which gives
    the same result.
    """
    import torch

    if check and int(mask.sum()) <= int(room):
        return mask
    flat = torch.where(mask, score, torch.full_like(score, -math.inf)).reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel(), device=flat.device)
    return mask & (rank.reshape(mask.shape) < room)


def _quantized_stat(x: Any, bits: int, stat_group_size: int) -> tuple[list[Any], Any]:
    """One group's first-level statistic [m] -> (its section parts on the device, reconstructed f32 [m])."""
    import torch

    from .torch.spqr import stat_codes

    if bits == 16:
        x16 = x.clamp(-65504, 65504).to(torch.float16)
        return [x16[None]], x16.to(torch.float32)
    t, s16, z16, recon = stat_codes(x[None], bits, stat_group_size)
    return [t.to(torch.int16), s16, z16], recon[0]


class _Counters:
    """The outlier budget spent so far in one layer (device ints: read by the blocks without host syncs)."""

    def __init__(self, dev: Any) -> None:
        import torch

        self.fit_used = torch.zeros((), dtype=torch.int64, device=dev)
        self.col_used = torch.zeros((), dtype=torch.int64, device=dev)

    def save(self, blk: _Block) -> None:
        self.fit_used.copy_(blk.fit_used)
        self.col_used.copy_(blk.col_used)


class _Block:
    """One lazy block of ``width`` columns of GPTQ/SpQR: fixed buffers, and a solve free of host syncs.

    Why fixed buffers: on a GPU the column loop is a few dozen tiny kernels per column, so its time is launch
    latency, not arithmetic. A solve that reads and writes only these buffers can be recorded once as a CUDA
    graph and replayed for every block of every layer with the same shape (on an H200 ~7x fewer microseconds per
    column); on a CPU the same code simply runs.
    """

    def __init__(self, m: int, width: int, gs: int, cfg: GPTQConfig, use_outliers: bool, dev: Any) -> None:
        import torch

        f32 = torch.float32
        self.cfg, self.use_outliers, self.qmax = cfg, use_outliers, (1 << cfg.bits) - 1
        self.groups = [(o, min(o + gs, width)) for o in range(0, width, gs)]
        self.W = torch.zeros((m, width), dtype=f32, device=dev)
        self.U = torch.eye(width, dtype=f32, device=dev)
        self.limit = torch.zeros(width, dtype=torch.int64, device=dev)
        self.thr = torch.zeros((), dtype=f32, device=dev)
        self.fit_thr = torch.zeros((), dtype=f32, device=dev)
        self.fit_pool = torch.zeros((), dtype=torch.int64, device=dev)
        self.fit_used = torch.zeros((), dtype=torch.int64, device=dev)
        self.col_used = torch.zeros((), dtype=torch.int64, device=dev)
        self.Q = torch.zeros((m, width), dtype=torch.int16, device=dev)
        self.O = torch.zeros((m, width), dtype=torch.bool, device=dev)
        self.E = torch.zeros((m, width), dtype=f32, device=dev)
        self.S = torch.zeros((len(self.groups), m), dtype=f32, device=dev)
        self.Z = torch.zeros((len(self.groups), m), dtype=f32, device=dev)
        self.stats: dict[str, list[Any]] = {}
        self.graph = None
        if dev.type == "cuda" and width <= _GRAPH_MAX_WIDTH:
            self._record()

    def _record(self) -> None:
        """Warm up once on a side stream (allocator and kernels), then record the solve as a CUDA graph."""
        import torch

        with torch.cuda.device(self.W.device):  # the buffers' GPU, whichever is current
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._solve(check=False)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._solve(check=False)
        self.graph = graph

    def load(self, W: Any, U: Any, limit: Any, thr: float, fit_thr: float, fit_pool: int, state: _Counters) -> None:
        """Copy one block's inputs (and the layer's budget state) into the buffers."""
        self.W.copy_(W)
        self.U.copy_(U)
        self.limit.copy_(limit)
        self.thr.fill_(thr)
        self.fit_thr.fill_(fit_thr)
        self.fit_pool.fill_(fit_pool)
        self.fit_used.copy_(state.fit_used)
        self.col_used.copy_(state.col_used)

    def solve(self) -> None:
        if self.graph is not None:
            import torch

            with torch.cuda.device(self.W.device):
                self.graph.replay()
        else:
            self._solve(check=self.W.device.type == "cpu")

    def _solve(self, check: bool) -> None:
        import torch

        cfg, qmax, W, U = self.cfg, self.qmax, self.W, self.U
        for gi, (o0, o1) in enumerate(self.groups):
            wg = W[:, o0:o1]
            d_g = torch.diagonal(U)[o0:o1]
            excluded = torch.zeros_like(wg, dtype=torch.bool)
            if self.use_outliers:
                red = _loo_reduction(wg, d_g, qmax)
                if cfg.outlier_rule == "loo":
                    room = (self.fit_pool - self.fit_used).clamp(min=0)
                    # Weights left out of the fit are outliers whatever their error: clamping them
                    # to a range fitted without them would be worse than any in-range weight.
                    excluded = _keep_largest(red > self.fit_thr, red, room, check)
                    self.fit_used += excluded.sum()
                else:  # left out of the fit only; the column test below decides (budget: the column pool)
                    excluded = red > self.fit_thr
            scale, zero = _fit_minmax(wg, excluded, qmax, cfg.round_zero and cfg.zero_bits == 16)
            for which, x, b, rec in (("scale", scale, cfg.scale_bits, self.S), ("zero", zero, cfg.zero_bits, self.Z)):
                parts, rec[gi] = _quantized_stat(x, b, cfg.stat_group_size)
                if gi == 0:
                    self.stats[which] = [torch.empty((len(self.groups),) + p.shape[1:], dtype=p.dtype,
                                                     device=p.device) for p in parts]
                for buf, p in zip(self.stats[which], parts, strict=True):
                    buf[gi] = p[0]
            s_col, z_col = self.S[gi], self.Z[gi]
            for j in range(o0, o1):
                w = W[:, j]
                q = torch.round(w / s_col + z_col)
                q = torch.nan_to_num(q, nan=0.0, posinf=float(qmax), neginf=0.0).clamp_(0, qmax)
                deq = (q - z_col) * s_col  # spec step 2: one f32 subtraction, one f32 multiplication
                d = U[j, j]
                final = deq
                if self.use_outliers:
                    e2 = ((w - deq) / d).square()
                    if cfg.outlier_rule == "loo":  # the left-out weights are outliers already: not tested again
                        pre = excluded[:, j - o0]
                        e2 = torch.where(pre, torch.full_like(w, -1.0), e2)
                    room = (self.limit[j] - self.col_used).clamp(min=0)
                    chosen = _keep_largest(e2 > self.thr, e2, room, check)
                    self.col_used += chosen.sum()
                    if cfg.outlier_rule == "loo":
                        chosen = chosen | pre
                    self.O[:, j] = chosen
                    final = torch.where(chosen, w.to(torch.float16).to(torch.float32), deq)
                self.Q[:, j] = q.to(torch.int16)
                e = (w - final) / d
                W[:, j] = final
                self.E[:, j] = e
                if j + 1 < W.shape[1]:
                    W[:, j + 1:] -= e[:, None] * U[j, j + 1:][None, :]


_BLOCKS: dict[tuple[Any, ...], _Block] = {}
# A block wider than this (one group spanning more than 1024 columns, e.g. per-channel statistics) runs
# eagerly: recording would take a graph node per operation of every column (seconds, and memory).
_GRAPH_MAX_WIDTH = 1024


_FACTORS: list[tuple[Any, tuple[Any, ...], HessianFactor]] = []  # the last (H, settings, factor)


def _shared_factor(hessian: Any, percdamp: float, act_order: bool, device: Any) -> HessianFactor:
    """:func:`factor_hessian`, computed once for layers fed the same input (q/k/v, gate/up): their
    Hessians are equal, so the last factorization is kept and an equal H reuses it."""
    import torch

    H = torch.as_tensor(hessian)
    key = (percdamp, act_order, str(device))
    for h2, k2, fac in _FACTORS:
        if k2 == key and h2.shape == H.shape and h2.dtype == H.dtype and h2.device == H.device and torch.equal(h2, H):
            return fac
    fac = factor_hessian(H, percdamp, act_order, device=device)
    _FACTORS.append((H, key, fac))
    del _FACTORS[:-1]  # q/k/v and gate/up come one after another: the last one is enough
    return fac


def release_buffers() -> None:
    """Drop the cached block buffers, CUDA graphs and Hessian factors (their memory), e.g. after calibrating."""
    _BLOCKS.clear()
    _FACTORS.clear()


def _block(m: int, width: int, gs: int, cfg: GPTQConfig, use_outliers: bool, dev: Any) -> _Block:
    """The cached :class:`_Block` of this shape and settings (its CUDA graph is recorded once)."""
    key = (str(dev), m, width, gs, cfg.bits, cfg.scale_bits, cfg.zero_bits, cfg.stat_group_size, cfg.round_zero,
           use_outliers, cfg.outlier_rule)
    blk = _BLOCKS.get(key)
    if blk is None:
        if len(_BLOCKS) >= 16:  # layers come in a few shapes; bound the buffers (and graphs) kept alive
            _BLOCKS.pop(next(iter(_BLOCKS)))
        blk = _BLOCKS[key] = _Block(m, width, gs, cfg, use_outliers, dev)
    return blk


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
    if cfg.outlier_rule not in OUTLIER_RULES:
        raise ValueError(f"outlier_rule must be one of {OUTLIER_RULES}, got {cfg.outlier_rule!r}")
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

    from .torch.device import to_host
    from .torch.packing import pack_rows, to_u32

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
        factor = _shared_factor(hessian, cfg.percdamp, cfg.act_order, device)
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
    # have been applied to the whole group when its statistics are fitted. A group wider than the
    # configured block is one block.
    bsz = max(cfg.blocksize, 1)
    bs = (bsz // gs) * gs if gs <= bsz else gs
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
        # With the "error" rule the exclusions are bounded the same way but reserve nothing: the whole budget
        # is the column pool.
        red_all = torch.cat([_loo_reduction(W[:, g0:g0 + gs], diag_u[g0:g0 + gs], qmax).reshape(-1)
                             for g0 in range(0, n, gs)])
        if int((red_all > threshold).sum()) > budget:
            fit_threshold = max(threshold, float(torch.topk(red_all, budget).values[-1]))
        if cfg.outlier_rule == "loo":
            fit_pool = min(budget, int((red_all > fit_threshold).sum()))
        del red_all
        col_pool = budget - fit_pool
    else:
        use_outliers = False
    # The column pool's cumulative cap by column j (host ints, exact): min(pool, ceil(pool·min(1, 2(j+1)/n))).
    limit = torch.tensor([min(col_pool, math.ceil(col_pool * min(1.0, 2.0 * (j + 1) / n))) for j in range(n)]
                         if use_outliers else [0] * n, dtype=torch.int64, device=dev)

    Q = torch.empty((m, n), dtype=torch.int16, device=dev)
    is_out = torch.zeros((m, n), dtype=torch.bool, device=dev)
    S_rec = torch.empty((G, m), dtype=torch.float32, device=dev)
    Z_rec = torch.empty((G, m), dtype=torch.float32, device=dev)
    stats = {which: [] for which in ("scale", "zero")}
    state = _Counters(dev)
    for b0 in range(0, n, bs):
        b1 = min(n, b0 + bs)
        blk = _block(m, b1 - b0, gs, cfg, use_outliers, dev)
        blk.load(W[:, b0:b1], U[b0:b1, b0:b1], limit[b0:b1], threshold, fit_threshold, fit_pool, state)
        blk.solve()
        state.save(blk)
        Q[:, b0:b1] = blk.Q
        is_out[:, b0:b1] = blk.O
        W[:, b0:b1] = blk.W
        g = b0 // gs
        S_rec[g:g + len(blk.groups)] = blk.S
        Z_rec[g:g + len(blk.groups)] = blk.Z
        for which in stats:
            stats[which].append([t.clone() for t in blk.stats[which]])
        if b1 < n:
            W[:, b1:] -= blk.E @ U[b0:b1, b1:]

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t_loop = time.perf_counter() - t_start
    # ---- the spec sections and the exact dequantization (spec arithmetic), on the solver's device ----
    params: dict[str, Any] = {"bits": cfg.bits, "group_size": gs, "scale_bits": cfg.scale_bits,
                              "zero_bits": cfg.zero_bits}
    if cfg.scale_bits < 16 or cfg.zero_bits < 16:
        params["stat_group_size"] = cfg.stat_group_size
    sections: dict[str, Any] = {"codes": to_u32(pack_rows(Q, cfg.bits))}
    for which, b in (("scale", cfg.scale_bits), ("zero", cfg.zero_bits)):
        parts = [torch.cat(p, 0) for p in zip(*stats[which], strict=True)]
        if b == 16:
            sections[which] = to_host(parts[0])
        else:
            sections[which + "_codes"] = to_u32(pack_rows(parts[0], b))
            sections[which + "_scale"] = to_host(parts[1])
            sections[which + "_zero"] = to_host(parts[2])
    cols = torch.arange(n, device=dev) // gs
    deq = Q.to(torch.float32) - Z_rec.T[:, cols]  # spec step 2: one f32 subtraction, then one multiplication
    deq *= S_rec.T[:, cols]
    rows, ocols = torch.nonzero(is_out, as_tuple=True)  # row-major => CSR order, increasing columns per row
    vals = W[rows, ocols].to(torch.float16)
    deq[rows, ocols] = vals.to(torch.float32)
    row_ptr = torch.zeros(m + 1, dtype=torch.int64, device=dev)
    torch.cumsum(torch.bincount(rows, minlength=m), 0, out=row_ptr[1:])
    sections["outlier_row_ptr"] = to_host(row_ptr).astype(np.uint32)
    sections["outlier_col"] = to_host(ocols).astype(np.uint16 if n <= 65536 else np.uint32)
    sections["outlier_val"] = to_host(vals)
    if cfg.act_order:
        sections["perm"] = to_host(perm).astype(np.uint32)
        full = torch.empty_like(deq)
        full[:, perm] = deq
        deq = full
    info = {"outliers": int(rows.numel()), "groups": G, "damp": factor.damp, "threshold": threshold,
            "dead_columns": int(factor.dead.sum()), "seconds": time.perf_counter() - t_start,
            "solve_seconds": t_loop}
    return Encoded((m, n), params, sections, to_host(deq), info=info)
