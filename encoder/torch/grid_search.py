"""The QuIP grid-scale search in torch: ``encoder.grid_search.best_candidates``'s choice, bounded then exact.

Each row's 48 candidate scales are first bracketed, all rows and candidates
at once, from a histogram of the row (n bins: counts, sums, sums of squares,
prefix-summed; module ``encoder.grid_search`` explains the bins, the cells
between the grid's decision points, the +-4 s delta slack of a bin holding
one decision point and the float-rounding tolerance). Only the candidates
whose lower bound does not exceed the row's least upper bound can be the
argmin; those (about one per row for Gaussian-like rows) get their exact
error with the CPU encoder's operations (numpy's pairwise f64 sum), and the
first of least error wins: the CPU encoder's scale, bit for bit, because the
bounds are valid whatever order the histogram and prefix sums add in (the
tolerance covers any order). Passes over the [m, n] data: the bins and three
scatter-adds, then ~25 elementwise f64 passes per surviving candidate.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .device import const

_F64 = torch.float64
_EPS = float(np.finfo(np.float64).eps)


@functools.lru_cache(maxsize=64)
def _tree(n: int) -> tuple[dict[int, list[tuple[int, int]]], list[list[tuple[int, int, int]]], int]:
    """numpy's pairwise-sum tree of n elements: leaves by size {size: [(start, node)]}, internal nodes by
    height [[(node, left, right)]], and the root node."""
    leaves: dict[int, list[tuple[int, int]]] = {}
    levels: list[list[tuple[int, int, int]]] = []
    count = [0]

    def build(lo: int, k: int) -> tuple[int, int]:  # (node, height)
        node = count[0]
        count[0] += 1
        if k <= 128:
            leaves.setdefault(k, []).append((lo, node))
            return node, 0
        k2 = k // 2
        k2 -= k2 % 8
        left, hl = build(lo, k2)
        right, hr = build(lo + k2, k - k2)
        height = max(hl, hr) + 1
        while len(levels) < height:
            levels.append([])
        levels[height - 1].append((node, left, right))
        return node, height

    root, _ = build(0, n)
    return leaves, levels, root


def _leaf_sum(a: torch.Tensor) -> torch.Tensor:
    """``grid_search._block_sum`` of every leaf a [..., k] at once (k <= 128)."""
    k = a.shape[-1]
    if k < 8:
        res = torch.zeros(a.shape[:-1], dtype=a.dtype, device=a.device)
        for i in range(k):
            res = res + a[..., i]
        return res
    r = a[..., 0:8]
    for i in range(8, k - k % 8, 8):
        r = r + a[..., i:i + 8]
    res = ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7]))
    for i in range(k - k % 8, k):
        res = res + a[..., i]
    return res


@functools.lru_cache(maxsize=64)
def _tree_tensors(n: int, device: torch.device) -> tuple[list[tuple[int, torch.Tensor | None, torch.Tensor]],
                                                        list[tuple[torch.Tensor, ...]], int, int]:
    """:func:`_tree` as index tensors on ``device`` (built once per length); no gather index when the leaves all
    have one size (then they tile 0 .. n in order)."""
    leaves, levels, root = _tree(n)
    leaf_idx = [(k, None if len(leaves) == 1 else torch.tensor([lo + t for lo, _ in items for t in range(k)],
                                                               device=device),
                 torch.tensor([node for _, node in items], device=device)) for k, items in leaves.items()]
    level_idx = [tuple(torch.tensor(c, device=device) for c in zip(*level, strict=True)) for level in levels]
    nodes = sum(len(v) for v in leaves.values()) + sum(len(v) for v in levels)
    return leaf_idx, level_idx, root, nodes


def pairwise_sum(a: torch.Tensor) -> torch.Tensor:
    """numpy's pairwise f64 sum along the last axis (``grid_search.pairwise_sum``), for every leading index."""
    leaf_idx, level_idx, root, nodes = _tree_tensors(a.shape[-1], a.device)
    vals = torch.empty((*a.shape[:-1], nodes), dtype=a.dtype, device=a.device)
    for k, idx, ids in leaf_idx:
        leaf = a if idx is None else a.index_select(-1, idx)
        vals[..., ids] = _leaf_sum(leaf.reshape(*a.shape[:-1], len(ids), k))
    for node, left, right in level_idx:
        vals[..., node] = vals[..., left] + vals[..., right]
    return vals[..., root]


def row_errors(w: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
    """``grid_search.row_error`` of each row of w [P, n] (f64) at its scale s [P]: the squared round-to-nearest
    error on the grid (2q - L) s, with the CPU's operations (true divisions, Python's min/max clip, no FMA)."""
    L = torch.tensor(float((1 << bits) - 1), dtype=_F64, device=w.device)
    two = torch.tensor(2.0, dtype=_F64, device=w.device)
    zero = torch.zeros((), dtype=_F64, device=w.device)
    sc = s[:, None]
    q = torch.round((w / sc + L) / two)
    q = torch.where(zero > q, zero, q)  # Python's min(max(q, 0.0), L)
    q = torch.where(L < q, L, q)
    d = (two * q - L) * sc - w
    return pairwise_sum(d * d)


def _prefix(values: torch.Tensor) -> torch.Tensor:
    """[R, bins] -> [R, bins + 1]: index b holds the sum over the bins below b."""
    out = torch.zeros((values.shape[0], values.shape[1] + 1), dtype=values.dtype, device=values.device)
    torch.cumsum(values, 1, out=out[:, 1:])
    return out


def _bounds(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, inv: torch.Tensor, s: torch.Tensor,
            bits: int, triton: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower [R, C], upper [R]): every candidate's error E(c) >= lower[:, c], and the least E <= upper.

    w [R, n] f64 rows with minima lo, maxima hi (lo < hi, finite), inv = bins / (hi - lo); s [R, C] the
    candidate scales. bin(x) = min(bins - 1, trunc((x - lo) inv)) is monotone in x, so a bin strictly between
    the bins of two consecutive decision points t_(q-1) < t_q holds only values of code q. ``triton``: the
    histogram by one kernel (f64 atomics) instead of bincount and two index_add.
    """
    R, n = w.shape
    bins = n
    dev = w.device
    nq = (1 << bits) - 1
    L = float(nq)
    if triton:
        from .quip_triton import histogram_prefix

        cnt, p1, p2 = histogram_prefix(w, lo, inv)
    else:
        b = ((w - lo[:, None]) * inv[:, None]).clamp_(max=bins - 1).to(torch.int64)
        flat = (b + torch.arange(R, device=dev)[:, None] * bins).reshape(-1)
        del b
        hist = (torch.bincount(flat, minlength=R * bins).to(_F64),
                torch.zeros(R * bins, dtype=_F64, device=dev).index_add_(0, flat, w.reshape(-1)),
                torch.zeros(R * bins, dtype=_F64, device=dev).index_add_(0, flat, (w * w).reshape(-1)))
        del flat
        cnt, p1, p2 = (_prefix(h.reshape(R, bins)) for h in hist)
        del hist
    q = torch.arange(nq + 1, dtype=_F64, device=dev)
    t = (2.0 * q[:nq] + (1.0 - L)) * s[:, :, None]  # [R, C, nq]: the decision point between codes q and q + 1
    v = (2.0 * q - L) * s[:, :, None]  # [R, C, nq + 1]: the grid value of code q
    lo3, hi3, inv3 = lo[:, None, None], hi[:, None, None], inv[:, None, None]
    beta = ((t - lo3) * inv3).clamp_(0, bins - 1).to(torch.int64)  # t's bin; -1: every value above, bins: below
    beta = torch.where(t <= lo3, -1, torch.where(t > hi3, bins, beta))
    C = s.shape[1]
    edge = torch.full((R, C, 1), -1, dtype=torch.int64, device=dev)
    prev = torch.cat([edge, beta], 2)  # beta_(q-1), q = 0 .. nq
    nxt = torch.cat([beta, edge.fill_(bins)], 2)  # beta_q, q = 0 .. nq

    def cell(b0: torch.Tensor, b1: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        """Sum of (x - val)^2 over the values of bins b0 .. b1 - 1 (0 for an empty range)."""
        i0, i1 = b0.reshape(R, -1), b1.reshape(R, -1)

        def diff(p: torch.Tensor) -> torch.Tensor:
            return (p.gather(1, i1) - p.gather(1, i0)).reshape(b0.shape)

        return diff(p2) - 2.0 * val * diff(p1) + val * val * diff(cnt)

    b0 = torch.clamp(prev + 1, max=bins)
    inner = cell(b0, torch.maximum(nxt, b0), v).sum(2)  # the bins strictly inside each code's cell
    inside = (beta >= 0) & (beta < bins)
    one = inside & (prev[:, :, :nq] != beta) & (nxt[:, :, 1:] != beta)  # t's bin holds no other decision point
    bb = beta.clamp(0, bins - 1)
    part = torch.where(one, cell(bb, bb + 1, v[:, :, 1:]), 0.0)  # counted in the upper cell (code q + 1)
    delta = (hi - lo) / bins * 1.0001 + 8.0 * _EPS * (lo.abs() + hi.abs())  # |x - t| within one bin
    nb = (cnt.gather(1, (bb + 1).reshape(R, -1)) - cnt.gather(1, bb.reshape(R, -1))).reshape(bb.shape)
    slack = torch.where(one, 4.0 * s[:, :, None] * delta[:, None, None] * nb, 0.0).sum(2)
    part = part.sum(2)
    # float rounding of any summation order (bins, prefixes, 2 (nq + 1) cells), the exact errors' own rounding
    # and values within a few ulps of a decision point: relative to W2 + (L s)^2 n
    tol = (1e-9 + 8.0 * (n + 64) * (nq + 2) * _EPS) * (p2[:, -1:] + (L * s) * (L * s) * n)
    lower = inner + part - slack - tol
    high = torch.where((inside & ~one).any(2), torch.inf, inner + part + slack + tol)
    return lower, high.amin(1)


def best_candidates(wt: torch.Tensor, rms: torch.Tensor, mults: torch.Tensor, bits: int,
                    chunk_elements: int, triton: bool = False, lo: torch.Tensor | None = None,
                    hi: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of the C-ordered f64 wt [m, n], the index of the first of ``mults`` whose scale rms[r] * mults[c]
    has the least round-to-nearest error (``encoder.grid_search.best_candidates``), in row chunks of about
    ``chunk_elements`` f64 temporaries; ``triton``: the histograms and the exact errors' elements by Triton
    kernels (``quip_triton``). ``lo``/``hi``: each row's minimum and maximum when already known."""
    m, n = wt.shape
    dev = wt.device
    C = mults.numel()
    nq = (1 << bits) - 1
    scales = rms[:, None] * mults[None, :]  # [m, C], the CPU's s = rms * mults[c]
    if lo is None or hi is None:
        lo, hi = torch.aminmax(wt, dim=1)
    width = hi - lo
    inv = const(float(n), width) / width
    exhaustive = ~((width > 0) & torch.isfinite(inv) & torch.isfinite(width))
    inv = torch.where(exhaustive, 0.0, inv)
    keep = torch.empty((m, C), dtype=torch.bool, device=dev)
    rows = max(1, chunk_elements // (4 * max(n, C * (nq + 1))))
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        lower, upper = _bounds(wt[r0:r1], lo[r0:r1], hi[r0:r1], inv[r0:r1], scales[r0:r1], bits, triton)
        keep[r0:r1] = (lower <= upper[:, None]) | exhaustive[r0:r1, None]
    pairs = keep.nonzero()  # the candidates that can still win (one host sync)
    errs = torch.full((m, C), torch.inf, dtype=_F64, device=dev)
    step = max(1, chunk_elements // max(n, 1))
    for p0 in range(0, pairs.shape[0], step):
        r, c = pairs[p0:p0 + step].unbind(1)
        if triton:
            from .quip_triton import squared_errors

            errs[r, c] = pairwise_sum(squared_errors(wt, r, scales[r, c], bits))
        else:
            errs[r, c] = row_errors(wt.index_select(0, r), scales[r, c], bits)
    return errs.argmin(1)  # the first candidate of least error, as the strict < loop
