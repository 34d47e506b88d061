"""GPU decoding of codec ``spqr`` v1: bit-exact dequantization and a fused SpQR matvec.

Entry points:

* :func:`to_device` — spec sections (numpy or torch) as torch tensors on a device, once.
* :func:`dequantize` — spec sections -> dense f32/f16/bf16 matrix, bit-identical to
  spec/codecs/spqr.md §5 (the f32 decoded tensor; f16/bf16 are its RNE casts).
* :func:`prepare` — the load-time repack the fused kernel reads (cached in a
  :class:`PreparedSpQR`); the file layout is untouched.
* :func:`matvec` — ``y = x @ W.T`` for 1..16 activation rows straight from the
  repacked form (W is never written to global memory).

Repacked layout (all built on the device by :func:`prepare`):

* codes as 1..3 *bit planes* (b = 3 -> a 2-bit plane + a 1-bit plane, 4 -> one
  4-bit plane, ...). Each plane is an ordinary packed row (spqr.md §4) of a
  power-of-two width, so a code field never straddles a word and a block of
  ``U = 32 / widest`` columns of one row sits in one word of every plane;
* stats: for two-level stats with ``scale_bits + zero_bits <= 8`` one byte per
  (row, group) holding both codes, plus the four f16 second-level values per
  (group, row block); otherwise S and Z as f16 [m, G] (exact: they are f16 values);
* outliers as CSR add-deltas ``f32(val) - dense(r, c)`` (f32), so the dense
  pass needs no replacement test;
* the permutation is applied by gathering x once per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import _triton as K

# Sections whose file dtype is unsigned: moved as same-width signed tensors (bit-identical views).
_SIGNED_VIEW = {np.dtype(np.uint32): np.int32, np.dtype(np.uint16): np.int16, np.dtype(np.uint64): np.int64}

MAX_FUSED_BATCH = 16


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def to_device(sections: Mapping[str, Any], device: str | torch.device) -> dict[str, torch.Tensor]:
    """Spec sections as torch tensors on ``device`` (u32/u16 become int32/int16 views of the same bits)."""
    out: dict[str, torch.Tensor] = {}
    for role, arr in sections.items():
        if isinstance(arr, torch.Tensor):
            t = arr
            if t.dtype == torch.uint32:
                t = t.view(torch.int32)
            elif t.dtype == torch.uint16:
                t = t.view(torch.int16)
        else:
            a = np.ascontiguousarray(arr)
            if a.dtype in _SIGNED_VIEW:
                a = a.view(_SIGNED_VIEW[a.dtype])
            t = torch.from_numpy(a)
        out[role] = t.to(device).contiguous()
    return out


def _u32(t: torch.Tensor) -> torch.Tensor:
    """int32/uint32 tensor -> int64 holding the unsigned 32-bit values."""
    if t.dtype == torch.uint32:
        t = t.view(torch.int32)
    return t.to(torch.int64) & 0xFFFFFFFF


def _unsigned(t: torch.Tensor) -> torch.Tensor:
    """Index section (u16/u32 stored as int16/int32 views) -> int64 values."""
    if t.dtype in (torch.int16, torch.uint16):
        return t.view(torch.int16).to(torch.int64) & 0xFFFF
    return _u32(t)


def unpack_rows(words: torch.Tensor, cols: int, bits: int) -> torch.Tensor:
    """Packed rows [R, W] (spqr.md §4) -> int64 codes [R, cols]."""
    w = _u32(words)
    w = torch.cat([w, torch.zeros_like(w[:, :1])], dim=1)  # a zero word so q + 1 is always in range
    p = torch.arange(cols, device=w.device, dtype=torch.int64) * bits
    q = p >> 5
    s = p & 31
    v = (w[:, q] >> s) | ((w[:, q + 1] << (32 - s)) & 0xFFFFFFFF)
    return v & ((1 << bits) - 1)


def stat_f32(params: Mapping[str, Any], secs: Mapping[str, torch.Tensor], which: str, m: int) -> torch.Tensor:
    """First-level statistic S or Z as f32 [G, m], exactly spqr.md §5 step 1.

    torch runs the subtraction and the multiplication as separate IEEE f32
    kernels, so nothing is contracted; ``.half()`` is the RNE rounding.
    """
    bits = int(params[f"{which}_bits"])
    if bits == 16:
        return secs[which].to(torch.float32)
    c = unpack_rows(secs[f"{which}_codes"], m, bits)
    k = torch.arange(m, device=c.device) // int(params["stat_group_size"])
    zz = secs[f"{which}_zero"].to(torch.float32)[:, k]
    ss = secs[f"{which}_scale"].to(torch.float32)[:, k]
    t = c.to(torch.float32) - zz
    return (t * ss).half().float()


def _outlier_coo(secs: Mapping[str, torch.Tensor], m: int) -> tuple[torch.Tensor, torch.Tensor]:
    rp = _u32(secs["outlier_row_ptr"])
    cols = _unsigned(secs["outlier_col"])
    # output_size known from the section shape: no device sync, so this is CUDA-graph capturable
    rows = torch.repeat_interleave(torch.arange(m, device=rp.device), rp[1:] - rp[:-1], output_size=cols.numel())
    return rows, cols


def _launch_opts() -> dict[str, Any]:
    return {"enable_fp_fusion": False}


def _is_v2_arith(params: Mapping[str, Any]) -> bool:
    """True for codec v2 params whose arithmetic differs from v1 (f16 rounding or additive outliers)."""
    return params.get("arith", "f32") != "f32" or params.get("outlier_op", "replace") != "replace"


def dequantize(params: Mapping[str, Any], sections_on_gpu: Mapping[str, torch.Tensor], shape: tuple[int, int],
               out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Decoded tensor [m, n] of a validated spqr tensor, bit-identical to spqr.md §5 (then RNE-cast).

    Sections must already be validated (spqrfmt.codecs.spqr checks CSR and perm)
    and on one device (see :func:`to_device`). ``params`` are the checked params
    (``spqrfmt.codecs.spqr.checked_params``): v2's ``arith = "f16"`` or
    ``outlier_op = "add"`` go to :func:`spqrfmt.kernels.spqr_v2.dequantize` (spqr.md §8).
    """
    if _is_v2_arith(params):
        from . import spqr_v2

        return spqr_v2.dequantize(params, sections_on_gpu, shape, out_dtype)
    m, n = (int(v) for v in shape)
    secs = {k: v for k, v in sections_on_gpu.items()}
    codes = secs["codes"]
    if codes.dtype == torch.uint32:
        codes = codes.view(torch.int32)
    dev = codes.device
    S = stat_f32(params, secs, "scale", m).half().contiguous()  # exact: f16 values
    Z = stat_f32(params, secs, "zero", m).half().contiguous()
    out = torch.empty((m, n), dtype=out_dtype, device=dev)
    perm = secs.get("perm")
    if perm is not None:
        perm = perm.view(torch.int32) if perm.dtype == torch.uint32 else perm
    BR, BC = 16, 128
    grid = (_ceil_div(m, BR), _ceil_div(n, BC))
    bf16 = out_dtype == torch.bfloat16
    K.dequant_kernel[grid](codes, S, Z, perm if perm is not None else codes, out.view(torch.int16) if bf16 else out,
                           m, n, codes.shape[1], int(params["group_size"]), BITS=int(params["bits"]),
                           HAS_PERM=perm is not None, OUT_BF16=bf16, BR=BR, BC=BC, **_launch_opts())
    vals = secs["outlier_val"]
    if vals.numel():
        rows, cols = _outlier_coo(secs, m)
        if perm is not None:
            cols = _u32(perm)[cols]
        out.view(-1)[rows * n + cols] = vals.to(torch.float32).to(out_dtype)
    return out


@dataclass
class MatvecConfig:
    """Tile shape of the fused kernel: BM rows x (NH units of U columns); split = column-range programs."""

    BM: int = 32
    NH: int = 16
    num_warps: int = 4
    split: int | None = None
    num_stages: int = 1


def _plane_widths(bits: int) -> list[tuple[int, int]]:
    """(width, bit offset) of each bit plane; widths are powers of two so fields never straddle words."""
    if bits == 8:
        return [(8, 0)]
    out, off = [], 0
    for w in (4, 2, 1):
        if bits - off >= w:
            out.append((w, off))
            off += w
    return out


@dataclass
class PreparedSpQR:
    """A spqr tensor repacked once for the fused kernel, plus its spec sections for dequantization."""

    params: dict[str, Any]
    shape: tuple[int, int]
    sections: dict[str, torch.Tensor]
    planes: list[tuple[int, int, torch.Tensor]]
    unit: int
    stats_q: bool
    st_codes: torch.Tensor
    st2: torch.Tensor
    s16: torch.Tensor
    z16: torch.Tensor
    o_row_ptr: torch.Tensor
    o_col: torch.Tensor
    o_delta: torch.Tensor
    perm: torch.Tensor | None
    _xidx: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.o_row_ptr.device

    @property
    def fused_nbytes(self) -> int:
        """Bytes the fused kernel streams from memory per call (weights side)."""
        ts = [p for _, _, p in self.planes] + [self.o_row_ptr, self.o_col, self.o_delta]
        ts += [self.st_codes, self.st2] if self.stats_q else [self.s16, self.z16]
        return sum(t.numel() * t.element_size() for t in ts)

    def x_index(self, bk: int) -> torch.Tensor:
        """Gather index mapping x (original feature order) to the kernel's per-tile order, cached per tile width."""
        idx = self._xidx.get(bk)
        if idx is None:
            m, n = self.shape
            U = self.unit
            nh = bk // U
            L = _ceil_div(n, bk) * bk
            pos = torch.arange(L, device=self.device)
            t, rem = pos // bk, pos % bk
            c, h = rem // nh, rem % nh
            j = t * bk + h * U + c  # stored column held at kernel position pos
            valid = j < n
            jc = torch.where(valid, j, torch.zeros_like(j))
            src = _u32(self.perm)[jc] if self.perm is not None else jc
            idx = torch.where(valid, src, torch.zeros_like(src)).contiguous()
            self._xidx[bk] = idx
        return idx


def prepare(params: Mapping[str, Any], sections: Mapping[str, Any], shape: tuple[int, int],
            device: str | torch.device = "cuda") -> PreparedSpQR:
    """Move sections to ``device`` once and build the fused kernel's layout there (see module doc)."""
    if _is_v2_arith(params):  # the fused kernel implements v1 arithmetic only (spqr.md §5)
        raise NotImplementedError("spqr v2 with arith='f16' or outlier_op='add': no fused matvec yet; "
                                  "use dequantize()")
    m, n = (int(v) for v in shape)
    params = dict(params)
    secs = to_device(sections, device)
    bits = int(params["bits"])
    gs = int(params["group_size"])
    widths = _plane_widths(bits)
    U = 32 // max(w for w, _ in widths)
    n_pad = _ceil_div(n, 32) * 32
    dev = secs["codes"].device

    # Bit planes, built in row chunks to bound the int64 temporaries.
    planes = [(w, o, torch.empty((m, n_pad * w // 32), dtype=torch.int32, device=dev)) for w, o in widths]
    chunk = max(1, (1 << 24) // max(n_pad, 1))
    for r0 in range(0, m, chunk):
        q = unpack_rows(secs["codes"][r0:r0 + chunk], n, bits)
        if n_pad != n:
            q = torch.cat([q, torch.zeros((q.shape[0], n_pad - n), dtype=q.dtype, device=dev)], dim=1)
        for w, o, dst in planes:
            f = ((q >> o) & ((1 << w) - 1)).view(q.shape[0], -1, 32 // w)
            word = (f << (torch.arange(32 // w, device=dev) * w)).sum(dim=2)
            dst[r0:r0 + chunk] = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)

    S = stat_f32(params, secs, "scale", m)
    Z = stat_f32(params, secs, "zero", m)
    sb, zb = int(params["scale_bits"]), int(params["zero_bits"])
    stats_q = sb < 16 and zb < 16 and sb + zb <= 8
    empty16 = torch.empty(0, dtype=torch.float16, device=dev)
    if stats_q:
        sc = unpack_rows(secs["scale_codes"], m, sb)
        zc = unpack_rows(secs["zero_codes"], m, zb)
        st_codes = (sc | (zc << sb)).T.contiguous().to(torch.uint8)  # [m, G]
        st2 = torch.stack([secs["scale_zero"], secs["scale_scale"], secs["zero_zero"], secs["zero_scale"]],
                          dim=2).contiguous()  # [G, K, 4] f16
        s16 = z16 = empty16
    else:
        st_codes = torch.empty(0, dtype=torch.uint8, device=dev)
        st2 = empty16
        s16 = S.T.contiguous().half()
        z16 = Z.T.contiguous().half()

    # Outliers: add-deltas against the dense value the kernel computes at that position.
    rows, cols = _outlier_coo(secs, m)
    if cols.numel():
        qv = _codes_at(secs["codes"], rows, cols, bits)
        g = cols // gs
        dense = (qv.to(torch.float32) - Z[g, rows]) * S[g, rows]
        delta = secs["outlier_val"].to(torch.float32) - dense
    else:
        delta = torch.empty(0, dtype=torch.float32, device=dev)
    col16 = n <= 65536
    o_col = torch.where(cols >= 32768, cols - 65536, cols).to(torch.int16) if col16 else cols.to(torch.int32)
    perm = secs.get("perm")
    return PreparedSpQR(params=params, shape=(m, n), sections=secs, planes=planes, unit=U, stats_q=stats_q,
                        st_codes=st_codes, st2=st2, s16=s16, z16=z16,
                        o_row_ptr=_u32(secs["outlier_row_ptr"]).to(torch.int32).contiguous(),
                        o_col=o_col.contiguous(), o_delta=delta.contiguous(), perm=perm)


def _codes_at(codes: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes at (rows[e], cols[e]) of packed rows, int64."""
    w = _u32(codes)
    W = w.shape[1]
    p = cols * bits
    q = p >> 5
    s = p & 31
    lo = w[rows, q] >> s
    hi = (w[rows, torch.clamp(q + 1, max=W - 1)] << (32 - s)) & 0xFFFFFFFF
    v = torch.where(s + bits > 32, lo | hi, lo)
    return v & ((1 << bits) - 1)


def default_config(prepared: PreparedSpQR, batch: int) -> MatvecConfig:
    """Tile shape the H100 sweep of bench/bench_kernels.py favoured (small tiles, many programs)."""
    if batch == 1:
        return MatvecConfig(BM=16, NH=16, num_warps=4)
    return MatvecConfig(BM=16, NH=16, num_warps=2)


def _auto_split(prepared: PreparedSpQR, cfg: MatvecConfig) -> int:
    m, n = prepared.shape
    n_tiles = _ceil_div(n, cfg.NH * prepared.unit)
    progs_m = _ceil_div(m, cfg.BM)
    if prepared.device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(prepared.device).multi_processor_count
    want = 32 * sms  # many small programs: the loop is latency-bound, not pipelined
    return max(1, min(n_tiles, _ceil_div(want, progs_m)))


def matvec(prepared: PreparedSpQR, x: torch.Tensor, bias: torch.Tensor | None = None,
           config: MatvecConfig | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for x of shape [B, n] or [n] (B <= 16 per launch), from the packed form.

    Output dtype is x's dtype; accumulation is f32. Batches over 16 rows are
    processed in slices of 16.
    """
    m, n = prepared.shape
    squeeze = x.dim() == 1
    x2 = x.reshape(1, n) if squeeze else x
    if x2.shape[-1] != n:
        raise ValueError(f"x has {x2.shape[-1]} features, weight expects {n}")
    B = x2.shape[0]
    if B == 0:
        return x2.new_empty((0, m))
    if B > MAX_FUSED_BATCH:
        ys = [matvec(prepared, x2[i:i + MAX_FUSED_BATCH], bias, config) for i in range(0, B, MAX_FUSED_BATCH)]
        return torch.cat(ys, dim=0)
    cfg = config or default_config(prepared, B)
    p = prepared.params
    U = prepared.unit
    bk = cfg.NH * U
    idx = prepared.x_index(bk)
    xt = x2.index_select(1, idx).contiguous()  # [B, L]
    n_tiles = _ceil_div(n, bk)
    split = cfg.split or _auto_split(prepared, cfg)
    split = max(1, min(split, n_tiles))
    tps = _ceil_div(n_tiles, split)
    split = _ceil_div(n_tiles, tps)
    use_dot = B > 1
    atomic = split > 1
    if atomic:
        y = torch.zeros((B, m), dtype=torch.float32, device=x.device)
    else:
        y = torch.empty((B, m), dtype=x.dtype, device=x.device)
    planes = prepared.planes + [(0, 0, prepared.planes[0][2])] * (3 - len(prepared.planes))
    gs = int(p["group_size"])
    G = _ceil_div(n, gs)
    b2 = int(p.get("stat_group_size", 1) or 1)
    K2 = _ceil_div(m, b2)
    has_bias = bias is not None and not atomic
    grid = (_ceil_div(m, cfg.BM), split)
    K.fused_kernel[grid](
        xt, y, bias if has_bias else y,
        planes[0][2], planes[1][2], planes[2][2],
        planes[0][2].shape[1], planes[1][2].shape[1], planes[2][2].shape[1],
        prepared.st_codes, prepared.st2, prepared.s16, prepared.z16,
        prepared.o_row_ptr, prepared.o_col, prepared.o_delta,
        m, n, G, K2, b2, B, xt.shape[1], _ceil_div(n, 32) * 32 // U, n_tiles, tps,
        GS=gs, SB=int(p["scale_bits"]) if prepared.stats_q else 0,
        W0=planes[0][0], O0=planes[0][1], W1=planes[1][0], O1=planes[1][1], W2=planes[2][0], O2=planes[2][1],
        U=U, NH=cfg.NH, BM=cfg.BM, BB=16 if use_dot else 1, E=64 if use_dot else 128,
        STATS_Q=prepared.stats_q, ALIGNED=gs % U == 0, USE_DOT=use_dot, ATOMIC=atomic, HAS_BIAS=has_bias,
        COL16=prepared.o_col.dtype == torch.int16,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if atomic:
        if bias is not None:
            y = y + bias.to(torch.float32)
        y = y.to(x.dtype)
    return y.reshape(m) if squeeze else y


def dequantize_prepared(prepared: PreparedSpQR, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dense W of a prepared tensor (bit-exact; used by SpQRLinear for large batches)."""
    return dequantize(prepared.params, prepared.sections, prepared.shape, out_dtype)


def bytes_of(sections: Mapping[str, Any]) -> int:
    """Total bytes of spec sections (the compressed size of spqr.md §7)."""
    total = 0
    for v in sections.values():
        total += v.numel() * v.element_size() if isinstance(v, torch.Tensor) else np.asarray(v).nbytes
    return total


__all__ = ["MatvecConfig", "PreparedSpQR", "bytes_of", "default_config", "dequantize", "dequantize_prepared",
           "matvec", "prepare", "stat_f32", "to_device", "unpack_rows"]
