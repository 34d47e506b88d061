"""Data-free QuIP encoder in torch: ``encoder.quip.quantize_quip`` (grid codebook) on any device, byte for byte.

The signs and odd-part factors come from the same numpy RNG on the host (tiny);
everything of size [m, n] runs on the device with the CPU encoder's order of
f64 operations:

* Hadamard butterflies stage by stage (half = 1, 2, 4, ...: elementwise, exact),
  then a true division by sqrt(h) (a tensor divisor: CUDA turns ``x / scalar``
  into a reciprocal multiply);
* the odd-part factor as numpy's ``einsum`` adds it: a zero output plus one
  product per source block, in order (checked: no FMA, sequential);
* the row RMS as numpy's ``mean`` over the rows of the transposed (F-ordered)
  matrix: a sequential sum along each row (a pairwise one for a single row);
* the grid scale by the bounded search of ``grid_search`` (histogram bounds for
  every row and candidate at once, then numpy's pairwise f64 error of the few
  candidates that can still win: the CPU's choice);
* the returned ``dequantized`` is the spec's f32 decode (quip.md §5) in torch,
  elementwise operations in the Numba decoder's order.

``kernels="auto"`` on CUDA (or ``"triton"``) runs the passes over the matrix as
Triton kernels (``quip_triton``): each transform side's butterflies with its
signs and normalisation in one kernel, the sequential sums of squares, the
search's histograms and exact errors, the codes packed straight into the
file's words, the decode starting from the codes; ``"torch"`` uses torch
operations only. The grid search holds row chunks of about ``chunk_elements``
f64 temporaries (default 2^26: 512 MB each); the transforms hold ~3 f64 copies
of the matrix (24 B/param). ``codebook="e8p12"`` and a ``hessian`` (LDLQ, not
data-free) run the CPU encoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...decoder.quip import hadamard_constant
from .. import quip as cpu
from ..encoded import Encoded
from .device import as_tensor, const, to_host
from .grid_search import best_candidates, pairwise_sum
from .packing import pack_rows, to_u32

_F64 = torch.float64
CHUNK_ELEMENTS = 1 << 26


def _fwht_(y: torch.Tensor, h: int, start: int = 1) -> torch.Tensor:
    """Sylvester butterflies along the last axis (length h), stages half = start, 2 start, ..., out of place: each
    stage two kernels writing its sums and differences straight into the halves of the next buffer (48 B/param
    in f64)."""
    shape = y.shape
    if start >= h:
        return y
    bufs = [torch.empty_like(y), torch.empty_like(y) if h > 2 * start else None]
    half = start
    while half < h:
        v = y.reshape(-1, h // (2 * half), 2, half)
        out = bufs[0]
        o = out.view(-1, h // (2 * half), 2, half)
        torch.add(v[:, :, 0], v[:, :, 1], out=o[:, :, 0])
        torch.sub(v[:, :, 0], v[:, :, 1], out=o[:, :, 1])
        y = out
        bufs = [bufs[1], out]
        half *= 2
    return y.reshape(shape)


def _hadamard(x: torch.Tensor, log2_h: int, triton: bool, f64: bool = False, pre: torch.Tensor | None = None,
              post: torch.Tensor | None = None, divide: torch.Tensor | None = None,
              multiply: torch.Tensor | None = None) -> torch.Tensor:
    """The butterflies over each block of h = 2^log2_h of the rows of x [rows, length], in this order: (as f64)
    times the sign vector ``pre`` [length], the stages, / ``divide`` or * ``multiply`` (0-d), times the row
    signs ``post`` [rows]: in one Triton kernel (``triton``, up to 2^12 stages in registers) or torch kernels."""
    rows, length = x.shape
    h = 1 << log2_h
    if triton and log2_h > 0:
        from .quip_triton import MAX_STAGES, butterflies

        st = min(log2_h, MAX_STAGES)
        if st == log2_h:
            return butterflies(x.contiguous(), st, f64, pre, post, divide, multiply)
        y = butterflies(x.contiguous(), st, f64, pre)
        y = _fwht_(y.reshape(rows, length // h, h), h, 1 << st).reshape(rows, length)
    else:
        y = x.to(_F64) if f64 else x
        if pre is not None:
            y = y * pre[None, :]
        y = _fwht_(y.reshape(rows, length // h, h), h).reshape(rows, length)
    if divide is not None:
        y = y / divide
    if multiply is not None:
        y = y * multiply
    if post is not None:
        y = y * post[:, None]
    return y


def _apply_dt_rows(x: torch.Tensor, log2_h: int, factor: np.ndarray | None, triton: bool,
                   pre: torch.Tensor | None = None, post: torch.Tensor | None = None) -> torch.Tensor:
    """``quip.apply_dt_rows`` (f64) of x [rows, d] times the column signs ``pre``, times the row signs ``post``
    (exact, so applied before the odd factor when there is none): each row x[r] -> D^T x[r]."""
    rows, d = x.shape
    h = 1 << log2_h
    norm = torch.tensor(float(np.sqrt(h)), dtype=_F64, device=x.device)
    y = _hadamard(x, log2_h, triton, True, pre, post if factor is None else None, norm)
    if factor is not None:
        f = torch.from_numpy(np.asarray(factor, dtype=np.float64)).to(x.device)  # [b, a]
        y = y.reshape(rows, d // h, h)
        out = torch.zeros_like(y)
        for b in range(f.shape[0]):
            out = out + f[b][None, :, None] * y[:, b:b + 1, :]
        y = out.reshape(rows, d)
        if post is not None:
            y = y * post[:, None]
    return y


def _row_sums_sq(wtt: torch.Tensor, triton: bool) -> torch.Tensor:
    """The sums of squares of W~'s rows, from W~^T [n, m] (contiguous), as numpy adds them in
    ``encoder.quip``: one element at a time in column order (pairwise for a single row).

    ``torch.cumsum`` along dim 0 runs one thread per column sequentially on CUDA
    (and sequentially on the CPU; a single column is pairwise instead); the
    Triton kernel keeps many loads per column in flight and stores only the sums.
    """
    if wtt.shape[1] == 1:
        return pairwise_sum((wtt * wtt).T)
    if triton:
        from .quip_triton import column_sums_sq

        return column_sums_sq(wtt)
    return torch.cumsum(wtt * wtt, 0)[-1]


def _grid_scales(wt: torch.Tensor, sums: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
                 chunk_elements: int, triton: bool) -> torch.Tensor:
    """``quip._grid_scales`` of the C-ordered f64 wt [m, n] with its rows' sums of squares, minima and maxima:
    f32 scales."""
    rms = torch.sqrt(sums / const(float(wt.shape[1]), sums)) + 1e-30
    mults = torch.from_numpy(cpu.grid_mults(bits)).to(wt.device)
    best = best_candidates(wt, rms, mults, bits, chunk_elements, triton, lo, hi)
    return (rms * mults[best]).to(torch.float32)


def _factor_f32(x: torch.Tensor, log2_h: int, factor: torch.Tensor | None) -> torch.Tensor:
    """``decoder.quip.transform_rows``'s odd factor of x [rows, length] (after the butterflies): sequential f32
    sums, one product per source block."""
    rows, length = x.shape
    h = 1 << log2_h
    a = length // h
    if a == 1 or factor is None:
        return x
    v = x.reshape(rows, a, h)
    acc = factor[:, 0][None, :, None] * v[:, 0:1, :]
    for al2 in range(1, a):
        acc = acc + factor[:, al2][None, :, None] * v[:, al2:al2 + 1, :]
    return acc.reshape(rows, length)


def decode_grid(codes: torch.Tensor, bits: int, scale: torch.Tensor, su: np.ndarray, sv: np.ndarray, km: int,
                kn: int, fm: np.ndarray | None, fn: np.ndarray | None, triton: bool = False) -> torch.Tensor:
    """The spec's f32 decode of a v1 (grid) quip tensor (``decoder.quip.decode``'s operations) on codes' device:
    (2q - L) * scale, the butterflies and c_k along n, the odd factor, the same along m, times sv[i] su[j].
    ``triton``: the first step and (without factor_m) the signs inside the butterfly kernels."""
    if triton:
        from .quip_triton import MAX_STAGES, butterflies
    dev = codes.device
    f = [None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float32)).to(dev) for a in (fn, fm)]
    c = [torch.tensor(float(hadamard_constant(k)), dtype=torch.float32, device=dev) for k in (kn, km)]
    if triton and 0 < kn <= MAX_STAGES:
        x = butterflies(codes, kn, multiply=c[0], codes_of=(bits, scale))
    else:
        x = (2 * codes.to(torch.int64) - ((1 << bits) - 1)).to(torch.float32) * scale[:, None]
        x = _hadamard(x, kn, triton, multiply=c[0] if kn > 0 else None)
    x = _factor_f32(x, kn, f[0]).T.contiguous()  # [n, m]: the m side along rows
    su32 = torch.from_numpy(su.astype(np.float32)).to(dev)
    sv32 = torch.from_numpy(sv.astype(np.float32)).to(dev)
    if triton and 0 < km <= MAX_STAGES and fm is None:
        return butterflies(x, km, multiply=c[1], post=su32, postv=sv32).T  # (x sv[i]) su[j]: +-1, exact
    x = _factor_f32(_hadamard(x, km, triton, multiply=c[1] if km > 0 else None), km, f[1]).T
    return x * (sv32[:, None] * su32[None, :])


def quantize_quip(
    weight: np.ndarray | torch.Tensor,
    bits: int = 2,
    hessian: np.ndarray | None = None,
    seed: int = 0,
    damp: float = 0.01,
    bias: np.ndarray | None = None,
    codebook: str = "grid",
    device: str | torch.device = "cuda",
    chunk_elements: int = CHUNK_ELEMENTS,
    kernels: str = "auto",
) -> Encoded:
    """``encoder.quip.quantize_quip`` computed on ``device``: the same sections, byte for byte.

    Only the data-free grid path (``hessian=None``, ``codebook="grid"``) runs on the device. ``kernels``:
    ``"triton"`` (on CPU tensors under TRITON_INTERPRET=1): the Hadamard butterflies as one kernel per side,
    the rows' sums of squares, the grid search's histograms and exact errors and the codes by Triton
    kernels (``quip_triton``);
    ``"torch"``: torch operations only (the butterflies stage by stage); ``"auto"``: Triton on CUDA.
    """
    if kernels not in ("auto", "triton", "torch"):
        raise ValueError(f"kernels must be 'auto', 'triton' or 'torch', got {kernels!r}")
    if hessian is not None or codebook != "grid":
        w_host = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else weight
        return cpu.quantize_quip(w_host, bits=bits, hessian=hessian, seed=seed, damp=damp, bias=bias,
                                 codebook=codebook)
    w32 = as_tensor(weight, device)
    if w32.ndim != 2 or min(w32.shape) < 1:
        raise ValueError(f"weight must be 2-D and non-empty, got shape {tuple(w32.shape)}")
    if not 1 <= bits <= 8:
        raise ValueError("bits must be 1..8")
    m, n = w32.shape
    su, sv, km, kn, fm, fn = cpu.incoherence(m, n, seed)
    dev = w32.device
    su_t = torch.from_numpy(su.astype(np.float64)).to(dev)
    sv_t = torch.from_numpy(sv.astype(np.float64)).to(dev)

    tri = kernels == "triton" or (kernels == "auto" and dev.type == "cuda")
    y = _apply_dt_rows(w32, kn, fn, tri, pre=su_t, post=sv_t)
    wtt = _apply_dt_rows(y.T.contiguous(), km, fm, tri)  # W~^T [n, m]: the CPU's F-ordered W~
    del y
    sums = _row_sums_sq(wtt, tri)
    wt = wtt.T.contiguous()
    del wtt
    lo, hi = torch.aminmax(wt, dim=1)
    # Every entry of W~ adds every weight of its row and column blocks (+-1 butterflies, a nonzero factor
    # column): a NaN or infinity in the weight leaves one in each of its rows' extremes, found at no extra pass.
    if not bool((torch.isfinite(lo) & torch.isfinite(hi)).all()):
        raise ValueError("weight contains NaN or infinity; refusing to quantize")
    scale = _grid_scales(wt, sums, lo, hi, bits, chunk_elements, tri)
    if tri:
        from .quip_triton import grid_codes

        codes, words = grid_codes(wt, scale, bits)
        packed = to_host(words).view(np.uint32)
    else:
        L = torch.tensor(float((1 << bits) - 1), dtype=_F64, device=dev)
        codes = torch.round((wt / scale[:, None].to(_F64) + L) / torch.tensor(2.0, dtype=_F64, device=dev))
        codes = torch.clamp(codes, 0, (1 << bits) - 1).to(torch.int64)
        packed = to_u32(pack_rows(codes, bits))
    del wt
    params: dict[str, Any] = {"bits": bits, "log2_hm": km, "log2_hn": kn}
    sections: dict[str, Any] = {"codes": packed, "scale": scale.cpu().numpy(), "su": su, "sv": sv}
    if fn is not None:
        sections["factor_n"] = fn
    if fm is not None:
        sections["factor_m"] = fm
    if bias is not None:
        sections["bias"] = np.asarray(bias, dtype=np.float32).reshape(m)
    deq = to_host(decode_grid(codes, bits, scale, su, sv, km, kn, fm, fn, tri))
    return Encoded((m, n), params, sections, np.ascontiguousarray(deq), codec="quip", codec_version=1,
                   info={"seed": seed, "ldlq": False, "codebook": codebook})
