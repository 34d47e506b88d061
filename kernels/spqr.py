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

* codes, *grouped* (the fast path, whenever ``β1 · field width`` is a multiple
  of 32): each β1-group's codes in whole 32-bit words of power-of-two fields
  (2, 4 or 8 bits; 3-bit codes in 4-bit fields), word-slot major per row, so
  every extraction shift is a compile-time constant (layout in ``_spqr_grouped.py``).
  The spec ``codes`` section is then dropped from the device: dequantization
  reads the repack, so the codes are held once;
* otherwise codes as 1..3 *bit planes* (b = 3 -> a 2-bit plane + a 1-bit plane,
  4 -> one 4-bit plane, ...). Each plane is an ordinary packed row (spqr.md §4)
  of a power-of-two width, so a code field never straddles a word and a block of
  ``U = 32 / widest`` columns of one row sits in one word of every plane;
* stats: for two-level stats with ``scale_bits + zero_bits <= 8`` one byte per
  (row, group) holding both codes, plus the four f16 second-level values per
  (group, row block); otherwise S and Z as f16 [m, G] (exact: they are f16 values);
* outliers as CSR add-deltas ``f32(val) - dense(r, c)`` (f32), so the dense
  pass needs no replacement test;
* the permutation is applied by gathering x once per call (grouped: one
  ``xprep_kernel`` launch that also pre-scales x and sums it per group).

Why this module is long: it is the host side of all three spqr layouts (planes, grouped, tiled:
repack, checks, launch parameters) behind one ``prepare`` / ``matvec`` / ``dequantize``; their Triton
code lives in ``_spqr_planes.py``, ``_spqr_grouped.py`` and ``_spqr_tiled.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from . import _spqr_planes as KP
from ._common import inline_asm_ok as _inline_asm_ok
from ._common import next_pow2, to_device, u32_values, unpack_rows
from ._launch import Launch, cdiv
from ._spqr_sections import outlier_coo, stat_f32
from ._spqr_tiled_host import MAX_FUSED_BATCH, _check_sizes, _check_tiled, _row_blocks, plan_current, plan_src

_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


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
    grid = (triton.cdiv(m, BR), triton.cdiv(n, BC))
    bf16 = out_dtype == torch.bfloat16
    KP.dequant_kernel[grid](codes, S, Z, perm if perm is not None else codes, out.view(torch.int16) if bf16 else out,
                           m, n, codes.shape[1], int(params["group_size"]), BITS=int(params["bits"]),
                           HAS_PERM=perm is not None, OUT_BF16=bf16, BR=BR, BC=BC, **_launch_opts())
    vals = secs["outlier_val"]
    if vals.numel():
        rows, cols = outlier_coo(secs, m)
        if perm is not None:
            cols = u32_values(perm)[cols]
        out.view(-1)[rows * n + cols] = vals.to(torch.float32).to(out_dtype)
    return out


@dataclass
class MatvecConfig:
    """Tile of the fused kernel: BM rows x NH column blocks; split = column-range programs (f32 atomics).

    A column block is one β1-group in the grouped layout and a unit of U columns in the planes layout.
    """

    BM: int = 32
    NH: int = 16
    num_warps: int = 4
    split: int | None = None
    num_stages: int = 1
    tile_dot: bool = False  # grouped layout, 2..16 rows: one dot per [BM, NH·β1] gathered tile (MODE 3)
    x_inline: bool = False  # 1 row: the kernel builds x's operands itself (no xprep launch). Grouped layout: its
    # strided x loads measured slower than the xprep launch on the H100 at 11008x4096 and 8192x28672.
    # Tiled layout (f16x2 path): per tile, from x through the permutation (bench/bench_spqr_b1.py)
    half2: bool = True  # tiled layout, batch 1, 3/4-bit, f16/bf16 x: f16x2 products of per-unit-scaled x;
    # the dot path (batch >= dot_min_batch), f16 x: its tile decoded by f16x2 FMAs (K in pair order)
    dot_min_batch: int = 3  # tiled layout: batches from this size take the tensor-core dot path (below: f16x2 FMAs)
    prefetch: bool = True  # tiled layout, the dot path: the next tile's loads issued a step ahead (registers)
    maxnreg: int | None = None  # tiled layout: a register cap per thread (ptxas .maxnreg), so more programs fit an SM
    epr: int | None = None  # tiled layout: outlier entries gathered per row and step (None: 16 / 4 / 8 for batch
    # 1 / the dot path / the FMA path at 2..4); the dot path's [BM, EPR, 16] gather sets its register count
    # (sm_90, BM 64: EPR 8 168 registers, 4 96)
    fused_finish: bool = False  # grouped layout, split > 1: the last program of a row block writes y from a
    # self-resetting workspace (no memset/cast launches); measured only together with x_inline


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
    """A spqr tensor repacked once for the fused kernel.

    ``layout`` is ``"grouped"`` (the fast path, see ``_spqr_grouped.py``: whole words per
    β1-group, used when ``β1 · field width`` is a multiple of 32) or ``"planes"``
    (the general fallback). In the grouped layout the spec ``codes`` section is
    dropped from ``sections`` after the repack, so the codes are held on the
    device once; dequantization then reads the repack.
    """

    params: dict[str, Any]
    shape: tuple[int, int]
    sections: dict[str, torch.Tensor]
    layout: str
    planes: list[tuple[int, int, torch.Tensor]]
    unit: int
    grouped: torch.Tensor | None
    wst: int
    packed_stats: bool
    sz32: torch.Tensor
    st2_64: torch.Tensor
    stats_q: bool
    st_codes: torch.Tensor
    st2: torch.Tensor
    s16: torch.Tensor
    z16: torch.Tensor
    o_row_ptr: torch.Tensor
    o_col: torch.Tensor
    o_delta: torch.Tensor
    perm: torch.Tensor | None
    tiled: torch.Tensor | None = None
    _xidx: dict[int, torch.Tensor] = field(default_factory=dict)
    _ws: dict[str, torch.Tensor] = field(default_factory=dict)
    _plans: dict[Any, Any] = field(default_factory=dict, repr=False)

    def split_workspace(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(f32 [16·m] partial sums, i32 [m] counters), zero at rest: the column-split matvec resets them.

        Shared by the calls on this tensor, so one matvec per prepared tensor may run at a time
        (the usual case: a layer runs on one stream; a CUDA graph replays in order).
        """
        if "acc" not in self._ws:
            m = self.shape[0]
            self._ws["acc"] = torch.zeros(MAX_FUSED_BATCH * m, dtype=torch.float32, device=self.device)
            self._ws["cnt"] = torch.zeros(m + 1, dtype=torch.int32, device=self.device)
        return self._ws["acc"], self._ws["cnt"]

    def scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A buffer of this tensor's kernels kept between calls (no allocation per call; same sharing rule
        as :meth:`split_workspace`)."""
        key = f"{name}:{dtype}:{shape}"
        t = self._ws.get(key)
        if t is None:
            self._ws[key] = t = torch.empty(shape, dtype=dtype, device=self.device)
        return t

    @property
    def device(self) -> torch.device:
        return self.o_row_ptr.device

    @property
    def resident_nbytes(self) -> int:
        """Every byte this tensor keeps on the device (the layout, statistics, outliers, kept sections)."""
        seen: set[int] = set()
        total = 0
        ts = [self.tiled, self.grouped, self.sz32, self.st2_64, self.st_codes, self.st2, self.s16, self.z16,
              self.o_row_ptr, self.o_col, self.o_delta, self.perm, *[p for _, _, p in self.planes],
              *self.sections.values()]
        for t in ts:
            if t is None or t.numel() == 0 or t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
        return total

    @property
    def fused_nbytes(self) -> int:
        """Bytes the fused kernel streams from memory per call (weights side)."""
        if self.tiled is not None:
            ts = [self.tiled]
        else:
            ts = [p for _, _, p in self.planes] if self.grouped is None else [self.grouped]
        ts += [self.o_row_ptr, self.o_col, self.o_delta]
        if self.tiled is not None:
            ts += [self.st_codes, self.st2_64] if self.stats_q else [self.sz32]
        elif self.grouped is not None and self.packed_stats:
            ts += [self.sz32]
        else:
            ts += [self.st_codes, self.st2] if self.stats_q else [self.s16, self.z16]
        return sum(t.numel() * t.element_size() for t in ts)

    def x_index(self, bk: int) -> torch.Tensor:
        """Gather index mapping x (original feature order) to the kernel's per-tile order, cached per tile width.

        ``bk = 0`` is the grouped layout's index: stored column -> feature (``perm`` or the identity);
        ``bk = -1`` its inverse (feature -> stored column), for dequantization in output order.
        """
        idx = self._xidx.get(bk)
        if idx is None:
            m, n = self.shape
            if bk <= 0:
                idx = (u32_values(self.perm) if self.perm is not None else torch.arange(n, device=self.device))
                if bk < 0:  # the inverse: feature -> stored column
                    idx = torch.empty_like(idx).scatter_(0, idx, torch.arange(n, device=self.device))
                self._xidx[bk] = idx = idx.to(torch.int32).contiguous()
                return idx
            U = self.unit
            nh = bk // U
            L = triton.cdiv(n, bk) * bk
            pos = torch.arange(L, device=self.device)
            t, rem = pos // bk, pos % bk
            c, h = rem // nh, rem % nh
            j = t * bk + h * U + c  # stored column held at kernel position pos
            valid = j < n
            jc = torch.where(valid, j, torch.zeros_like(j))
            src = u32_values(self.perm)[jc] if self.perm is not None else jc
            idx = torch.where(valid, src, torch.zeros_like(src)).contiguous()
            self._xidx[bk] = idx
        return idx


def _field_width(bits: int) -> int:
    """Power-of-two field width of the grouped repack (3-bit codes sit in 4-bit fields)."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


# The grouped kernels unroll β1 · width / 32 words per group: larger groups (per-channel β1 = n is legal)
# would compile for minutes, so they take the planes kernel, whose β1 is a runtime value.
GROUPED_MAX_GROUP = 128


def _grouped_ok(params: Mapping[str, Any]) -> bool:
    gs = int(params["group_size"])
    return gs <= GROUPED_MAX_GROUP and (gs * _field_width(int(params["bits"]))) % 32 == 0


def _to_i32(word: torch.Tensor) -> torch.Tensor:
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def _repack_grouped(codes: torch.Tensor, m: int, n: int, bits: int, gs: int) -> torch.Tensor:
    """Spec packed rows -> gw[r, s, g] (see _spqr_grouped.py), built in row chunks to bound int64 temporaries."""
    wst = _field_width(bits)
    F = 32 // wst
    wpg = gs * wst // 32
    G = triton.cdiv(n, gs)
    dev = codes.device
    out = torch.empty((m, wpg, G), dtype=torch.int32, device=dev)
    shifts = torch.arange(F, device=dev) * wst
    chunk = max(1, (1 << 24) // max(G * gs, 1))
    for r0 in range(0, m, chunk):
        q = unpack_rows(codes[r0:r0 + chunk], n, bits)
        if G * gs != n:
            q = torch.cat([q, torch.zeros((q.shape[0], G * gs - n), dtype=q.dtype, device=dev)], dim=1)
        word = (q.view(q.shape[0], G, wpg, F) << shifts).sum(dim=3)
        out[r0:r0 + chunk] = _to_i32(word).permute(0, 2, 1)
    return out


def _tiled_ok(params: Mapping[str, Any]) -> bool:
    """The tiled layout (``_spqr_tiled.py``): 2-4-bit codes, β1 a multiple of 16 (each half-unit in one group)."""
    return int(params["bits"]) in (2, 3, 4) and int(params["group_size"]) % 16 == 0


def _repack_tiled(codes: torch.Tensor, m: int, n: int, bits: int) -> torch.Tensor:
    """Spec packed rows -> tw[s, u, r] (``bits`` words per 32-column unit, layout in _spqr_tiled.py)."""
    nut = triton.cdiv(n, 32)
    dev = codes.device
    out = torch.empty((bits, nut, m), dtype=torch.int32, device=dev)
    chunk = max(1, (1 << 23) // max(nut * 32, 1))
    c8 = torch.arange(8, device=dev)
    for r0 in range(0, m, chunk):
        q = unpack_rows(codes[r0:r0 + chunk], n, bits)
        if nut * 32 != n:
            q = torch.cat([q, torch.zeros((q.shape[0], nut * 32 - n), dtype=q.dtype, device=dev)], dim=1)
        q = q.view(q.shape[0], nut, 32)
        if bits == 4:
            words = [(q[..., 8 * s:8 * s + 8] << (4 * c8)).sum(-1) for s in range(4)]
        elif bits == 2:
            c16 = torch.arange(16, device=dev)
            words = [(q[..., 16 * s:16 * s + 16] << (2 * c16)).sum(-1) for s in range(2)]
        else:
            lo, hi = q & 3, q >> 2
            words = [((lo[..., 16 * h:16 * h + 8] << (4 * c8))
                      + (lo[..., 16 * h + 8:16 * h + 16] << (4 * c8 + 2))).sum(-1) for h in range(2)]
            words.append(sum((hi[..., 8 * t:8 * t + 8] << (4 * c8 + t)).sum(-1) for t in range(4)))
        out[:, :, r0:r0 + chunk] = _to_i32(torch.stack(words, dim=0)).permute(0, 2, 1)
    return out


# Grouped layout: per (row, group) S|Z as one f16 pair (4 bytes) instead of the 3+3-bit code byte plus a
# shared second-level table. More bytes (2 bits/weight at β1 = 16 instead of 0.5), fewer instructions.
PACKED_STATS_DEFAULT = True


def prepare(params: Mapping[str, Any], sections: Mapping[str, Any], shape: tuple[int, int],
            device: str | torch.device = "cuda", layout: str | None = None,
            packed_stats: bool | None = None) -> PreparedSpQR:
    """Move sections to ``device`` once and build the fused kernel's layout there (see module doc).

    By default the *tiled* layout (``_spqr_tiled.py``: exactly ``bits`` bits per code and the
    statistics as their codes) is used for 2-4-bit codes with β1 a multiple of 16, else the grouped
    repack when β1 fills whole words, else bit planes; ``layout`` forces ``"grouped"`` or ``"planes"``
    for comparison. ``packed_stats`` picks the
    grouped layout's statistics form (default :data:`PACKED_STATS_DEFAULT`; always
    packed when the statistics are not 3+3-bit codes).
    """
    # v2 (f16 arithmetic / additive outliers, spqr.md §8): the fused kernel computes the dense part with
    # v1's f32 arithmetic (within its relative-error contract) and the outlier deltas are taken against
    # the exact v2 matrix, so outlier positions are exact; dequantize_prepared stays bit-exact through
    # the spec sections, which are kept.
    v2 = _is_v2_arith(params)
    m, n = (int(v) for v in shape)
    params = dict(params)
    secs = to_device(sections, device)
    bits = int(params["bits"])
    gs = int(params["group_size"])
    dev = secs["codes"].device
    if layout not in (None, "tiled", "grouped", "planes"):
        raise ValueError(f"layout must be 'tiled', 'grouped' or 'planes', not {layout!r}")
    # The tiled layout holds ~1.07x the spec bytes (the grouped one ~1.6x) and measured faster at every
    # batch on the H200 (docs/kernels.md): the default wherever it applies.
    tiled_ok = _tiled_ok(params) and layout in (None, "tiled")
    if layout == "tiled" and not tiled_ok:
        raise ValueError(f"the tiled layout needs 2-4-bit codes and a group size that is a multiple of 16, "
                         f"not {bits} bits and group_size {gs}")
    grouped_ok = not tiled_ok and _grouped_ok(params) and layout != "planes"
    if layout == "grouped" and not grouped_ok:
        raise ValueError(f"group_size {gs} with {bits}-bit codes does not fill whole words: use the planes layout")
    planes: list[tuple[int, int, torch.Tensor]] = []
    grouped = tiled = None
    U = 32
    if tiled_ok:
        tiled = _repack_tiled(secs["codes"], m, n, bits)
    elif grouped_ok:
        grouped = _repack_grouped(secs["codes"], m, n, bits, gs)
    else:
        widths = _plane_widths(bits)
        U = 32 // max(w for w, _ in widths)
        n_pad = triton.cdiv(n, 32) * 32
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
                dst[r0:r0 + chunk] = _to_i32(word)

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
    rows, cols = outlier_coo(secs, m)
    if cols.numel():
        qv = _codes_at(secs["codes"], rows, cols, bits)
        g = cols // gs
        dense = (qv.to(torch.float32) - Z[g, rows]) * S[g, rows]
        if v2:
            exact = dequantize(params, secs, (m, n), torch.float32)
            pcols = u32_values(secs["perm"])[cols] if "perm" in secs else cols
            delta = exact[rows, pcols] - dense
            del exact
        else:
            delta = secs["outlier_val"].to(torch.float32) - dense
    else:
        delta = torch.empty(0, dtype=torch.float32, device=dev)
    col16 = n <= 65536
    o_col = torch.where(cols >= 32768, cols - 65536, cols).to(torch.int16) if col16 else cols.to(torch.int32)
    perm = secs.get("perm")
    packed = (PACKED_STATS_DEFAULT if packed_stats is None else bool(packed_stats)) or not stats_q
    if tiled is not None:
        packed = not stats_q
    empty32 = torch.empty(0, dtype=torch.int32, device=dev)
    sz32 = st2_64 = empty32
    if grouped is not None:
        if not v2:
            del secs["codes"]  # held once, as the repack
        if packed:
            s_bits = S.half().view(torch.int16).to(torch.int32) & 0xFFFF
            z_bits = Z.half().view(torch.int16).to(torch.int32)
            sz32 = (s_bits | (z_bits << 16)).T.contiguous()  # [m, G]
            st_codes, st2 = st_codes[:0], st2[:0]
        else:
            st2_64 = st2.view(torch.int64).reshape(st2.shape[0], st2.shape[1]).contiguous()  # [G, K]
    if tiled is not None:  # statistics group-major [G, m], as the kernels read them
        s16 = z16 = empty16
        if stats_q:
            st_codes = st_codes.T.contiguous()
            st2_64 = st2.view(torch.int64).reshape(st2.shape[0], st2.shape[1]).contiguous()  # [G, K]
            st2 = st2[:0]
        else:
            s_bits = S.half().view(torch.int16).to(torch.int32) & 0xFFFF
            z_bits = Z.half().view(torch.int16).to(torch.int32)
            sz32 = (s_bits | (z_bits << 16)).contiguous()  # [G, m]
        if not v2:
            # held once, in the tiled form: dequantization reads it (outlier values and perm stay)
            for role in ("codes", "scale", "zero", "scale_codes", "zero_codes", "scale_scale", "scale_zero",
                         "zero_scale", "zero_zero", "outlier_col"):
                secs.pop(role, None)
    if grouped is not None:
        s16 = z16 = empty16
    layout_name = "tiled" if tiled is not None else "grouped" if grouped_ok else "planes"
    return PreparedSpQR(params=params, shape=(m, n), sections=secs, layout=layout_name,
                        planes=planes, unit=U, grouped=grouped, wst=_field_width(bits),
                        packed_stats=grouped is not None and packed, sz32=sz32, st2_64=st2_64, stats_q=stats_q,
                        st_codes=st_codes, st2=st2, s16=s16, z16=z16,
                        o_row_ptr=u32_values(secs["outlier_row_ptr"]).to(torch.int32).contiguous(),
                        o_col=o_col.contiguous(), o_delta=delta.contiguous(), perm=perm, tiled=tiled)


def _codes_at(codes: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes at (rows[e], cols[e]) of packed rows, int64."""
    w = u32_values(codes)
    W = w.shape[1]
    p = cols * bits
    q = p >> 5
    s = p & 31
    lo = w[rows, q] >> s
    hi = (w[rows, torch.clamp(q + 1, max=W - 1)] << (32 - s)) & 0xFFFFFFFF
    v = torch.where(s + bits > 32, lo | hi, lo)
    return v & ((1 << bits) - 1)


def default_config(prepared: PreparedSpQR, batch: int) -> MatvecConfig:
    """Tile shape favoured by the H100 sweep of bench/bench_kernels.py (``NH`` is NG, groups per tile, when grouped)."""
    if prepared.layout == "tiled":  # NH = 32-column units per tile; within 6 % of the best of the H200 sweep
        m, n = prepared.shape
        if batch == 1:  # by shape, from bench/bench_spqr_b1.py on the H200 (docs/kernels.md, 3-bit, 2026-12-03)
            # x_inline (one launch) only where it measured faster: n = 4096 at BM <= 64 (it builds x per tile).
            # Splits and the register cap fill whole waves: BM 64 at split 8 on 8192x28672 ran 1,024 programs
            # at 5 per SM (95 registers, ncu), 1.55 waves
            if m <= 2048:  # 1024x4096: 7.8 us vs 9.7 two-launch
                return MatvecConfig(BM=32, NH=8, num_warps=4, split=16, x_inline=True)
            if m >= 8192 and n <= 4096:  # 14336x4096: 21.0 us vs 27.4 at split 4
                return MatvecConfig(BM=128, NH=8, num_warps=4, split=3)
            if m <= 4096 and n >= 8192:  # 4096x14336: 21.1 us (x_inline 25.6)
                return MatvecConfig(BM=32, NH=8, num_warps=2, split=16)
            if n <= 4096:  # 4096x4096: 11.4 us vs 12.5 two-launch
                return MatvecConfig(BM=64, NH=8, num_warps=4, split=8, x_inline=True)
            if m >= 16384:  # 28672x8192: 58.1 us vs 64.6 uncapped, 68.4 at BM 64 / split 8
                return MatvecConfig(BM=128, NH=8, num_warps=4, split=4, maxnreg=96)
            return MatvecConfig(BM=64, NH=8, num_warps=4, split=5)  # 8192x28672: 55.6 us vs 60.9 at split 8
        if batch < MatvecConfig.dot_min_batch:  # the f16x2 FMA path (2 rows share each weight's decode)
            return MatvecConfig(BM=64, NH=8, num_warps=4, split=8)
        # the dot path: about 512 programs, at least 4 per row block (H200 sweep of bench_kernels.py, 3-bit:
        # split 4 best at m >= 8192, 8 at m = 4096, the auto split's 32 at m = 1024; docs/kernels.md). From
        # batch 3: at batch 4 it beat the FMA path on all six shapes (8192x28672: 123 vs 151 us), at 2 it lost
        # on all six (122 vs 92)
        return MatvecConfig(BM=64, NH=4, num_warps=4, split=max(4, triton.cdiv(512, triton.cdiv(m, 64))))
    if prepared.layout == "grouped":
        if batch == 1:
            return MatvecConfig(BM=16, NH=32, num_warps=4)
        return MatvecConfig(BM=64, NH=16, num_warps=4)
    if batch == 1:
        return MatvecConfig(BM=16, NH=16, num_warps=4)
    return MatvecConfig(BM=16, NH=16, num_warps=2)


def _auto_split(prepared: PreparedSpQR, cfg: MatvecConfig) -> int:
    m, n = prepared.shape
    if prepared.layout == "tiled":
        n_tiles = triton.cdiv(triton.cdiv(n, 32), cfg.NH)
    elif prepared.layout == "grouped":
        n_tiles = triton.cdiv(triton.cdiv(n, int(prepared.params["group_size"])), cfg.NH)
    else:
        n_tiles = triton.cdiv(n, cfg.NH * prepared.unit)
    progs_m = triton.cdiv(m, cfg.BM)
    if prepared.device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(prepared.device).multi_processor_count
    want = 32 * sms  # many small programs: the loop is latency-bound, not pipelined
    return max(1, min(n_tiles, triton.cdiv(want, progs_m)))


def _split(prepared: PreparedSpQR, cfg: MatvecConfig, n_tiles: int) -> tuple[int, int]:
    """(programs per row block, column tiles per program), no program left without a tile."""
    split = max(1, min(cfg.split or _auto_split(prepared, cfg), n_tiles))
    tps = triton.cdiv(n_tiles, split)
    return triton.cdiv(n_tiles, tps), tps


def _check_grouped(prepared: PreparedSpQR) -> None:
    """Sizes the grouped kernels index without bounds checks (a PreparedSpQR is a plain, mutable dataclass)."""
    m, n = prepared.shape
    p = prepared.params
    gs = int(p["group_size"])
    G = triton.cdiv(n, gs)
    K2 = triton.cdiv(m, int(p.get("stat_group_size", 1) or 1))
    need = {"grouped": (prepared.grouped, m * G * gs * prepared.wst // 32),
            "o_row_ptr": (prepared.o_row_ptr, m + 1)}
    if prepared.packed_stats:
        need["sz32"] = (prepared.sz32, m * G)
    else:
        need.update(st_codes=(prepared.st_codes, m * G), st2_64=(prepared.st2_64, G * K2))
    if m * G >= 2**31 or n >= 2**31 or MAX_FUSED_BATCH * m >= 2**31:
        raise ValueError(f"{m}x{n} is too large for the kernels' 32-bit (row, group) and column indices")
    _check_sizes(prepared, need)


def _reg_cap(cfg: MatvecConfig, dev: torch.device) -> dict[str, int]:
    """The launch option of ``cfg.maxnreg`` (compiled kernels only: the interpreter has no registers)."""
    return {"maxnreg": cfg.maxnreg} if cfg.maxnreg and _inline_asm_ok(dev) else {}


def _tiled_consts(prepared: PreparedSpQR, bm: int) -> dict[str, Any]:
    p = prepared.params
    hpg = int(p["group_size"]) // 16
    b2 = int(p.get("stat_group_size", 1) or 1)
    return {"BITS": int(p["bits"]), "SB": int(p["scale_bits"]) if prepared.stats_q else 0,
            "STQ": prepared.stats_q, "SAME": hpg % 2 == 0, "R2": _row_blocks(b2, bm)}


def _matvec_tiled(prepared: PreparedSpQR, x2: torch.Tensor, bias: torch.Tensor | None,
                  cfg: MatvecConfig | None) -> torch.Tensor:
    """The tiled layout's launches for 1..16 rows; with the default config their plan is kept per
    (batch, dtype, bias) on the tensor, so a repeated call costs two fast launches of host time."""
    key = (x2.shape[0], x2.dtype, bias is not None)
    cached = cfg is None
    plan = prepared._plans.get(key) if cached else None
    if plan is None or not plan_current(plan.src, prepared):
        if cached:  # this GPU's autotuned config where the cache has one (kernels/tune.py), else the rules
            from ._tune_cache import lookup

            tuned = lookup(prepared, x2.shape[0], x2.dtype)
            cfg = MatvecConfig(**tuned) if tuned else default_config(prepared, x2.shape[0])
        plan = _TiledPlan(prepared, x2.shape[0], x2.dtype, bias is not None, cfg, x2.device)
        if cached:
            prepared._plans[key] = plan
    return plan(x2.contiguous(), bias)


class _TiledPlan:
    """The launches of one (batch, dtype, bias) call of the tiled matvec, checked and bound once.

    Only the activations, the output and the bias change between calls (:class:`~._launch.Launch`);
    everything else -- the sizes ``_check_tiled`` validated, the grids, the constexprs, the scratch
    buffers -- is fixed by the tensor and the config.
    """

    def __init__(self, prepared: PreparedSpQR, B: int, dtype: torch.dtype, has_bias_arg: bool,
                 cfg: MatvecConfig, dev: torch.device) -> None:
        from . import _spqr_tiled as KT

        _check_tiled(prepared)
        self.src = plan_src(prepared)
        m, n = prepared.shape
        p = prepared.params
        bits = int(p["bits"])
        gs = int(p["group_size"])
        G = cdiv(n, gs)
        nut = cdiv(n, 32)
        idx = prepared.x_index(0)
        F = 16 if bits == 2 else 8
        # f16x2 FMAs (f32 callers keep f32): batch 1, and 2..4 below dot_min_batch
        h2 = B <= 4 and B < max(2, cfg.dot_min_batch) and bits in (3, 4) and cfg.half2 and dtype != torch.float32
        mode = (0 if B == 1 else 2) if h2 else (0 if B == 1 else 1)
        if mode == 1:  # the dot path decodes f16 pairs with f16x2 FMAs when x is f16 (bf16/f32: the f32 decode)
            h2 = bits in (3, 4) and cfg.half2 and dtype == torch.float16
        self.xin = xin = mode == 0 and h2 and cfg.x_inline  # one launch: the GEMV builds x's operands itself
        scratch = prepared.scratch
        self.pre: list[Launch] = []  # the x preparation launches, x2 their only per-call tensor
        if xin:
            xq = xe = xs = xo = None
        elif h2 and mode != 1:
            xo = scratch("xo", (B, n), torch.float32)
            xq = xe = xs = scratch("xr", (B, nut, KT.XR_WORDS), torch.int32)  # one record per unit
            self.pre.append(Launch(KT.xprep_h2_kernel, (cdiv(nut, 32), B), (None, idx, xq, xo, n, nut, n),
                                   {"BU": 32}, (0,)))
        elif mode == 0:
            xo = xe = scratch("xo", (B, n), torch.float32)
            xq = scratch("xq", (32, nut), torch.float32)
            xs = scratch("xs", (2 * nut,), torch.float32)
            self.pre.append(Launch(KT.xprep_kernel, (cdiv(nut, 32), 1), (None, idx, xq, xs, xo, n, nut, n),
                                   {"F": F, "WST": 32 // F, "BU": 32}, (0,)))
        else:
            xq = xs = scratch("xd", (B, 32 * nut), dtype)  # the dot's operand type: x's
            self.pre.append(Launch(KT.xdot_kernel, (cdiv(32 * nut, 1024), B), (None, idx, xq, n, 32 * nut, n),
                                   {"BC": 1024, "PAIR": h2}, (0,)))
            xo = xe = xq
            if prepared.o_col.numel():  # x transposed, [n, 16] f32: one vector load per outlier
                xo = xe = scratch("xot", (n, 16), torch.float32)
                self.pre.append(Launch(KT.xot_kernel, (cdiv(n, 128),), (None, idx, xo, n, B, n),
                                       {"BC": 128, "BB": 16}, (0,)))
        NU, BM = cfg.NH, cfg.BM
        n_tiles = cdiv(nut, NU)
        split, tps = _split(prepared, cfg, n_tiles)
        atomic = split > 1
        self.plain_atomic = plain_atomic = atomic and mode == 1  # the dot path: zeroed f32 y, bias and cast after
        self.y_shape, self.dtype = (B, m), dtype
        self.y_dtype = torch.float32 if plain_atomic else dtype
        ws, cnt = prepared.split_workspace() if atomic and not plain_atomic else (None, None)
        b2 = int(p.get("stat_group_size", 1) or 1)
        self.bias_in_kernel = has_bias = has_bias_arg and not plain_atomic
        dot_dt = _TL_DTYPE[dtype] if mode == 1 else tl.float16
        args = (xq, xs, xe, xo, idx, None, None, ws, cnt, prepared.tiled, prepared.st_codes, prepared.st2_64,
                prepared.sz32, prepared.o_row_ptr, prepared.o_col, prepared.o_delta,
                m, n, nut, G, cdiv(m, b2), b2, gs // 16, B, n_tiles, tps)
        kw = dict(NU=NU, BM=BM, BB={0: 1, 1: 16, 2: next_pow2(B)}[mode], NBC=B,
                  EPR=cfg.epr or {0: 16, 1: 4, 2: 8}[mode], MODE=mode, ATOMIC=atomic,
                  HAS_BIAS=has_bias, COL16=prepared.o_col.dtype == torch.int16, DOT_DT=dot_dt, H2=h2,
                  ASM=h2 and _inline_asm_ok(dev), EXACT_STATS=dtype == torch.float32, XIN=xin,
                  HAS_PERM=prepared.perm is not None, PF=mode == 1 and cfg.prefetch,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_tiled_consts(prepared, BM),
                  **_reg_cap(cfg, dev))
        # per call: x's four operands when inline, y, the bias (y where there is none), and the split
        # workspace's place holders (y when there is no split)
        self.gemv = Launch(KT.gemv_kernel, (cdiv(m, BM), split), args, kw,
                           (0, 1, 2, 3, 5, 6, 7, 8) if xin else (5, 6, 7, 8))
        self.ws = (ws, cnt) if ws is not None else None

    def __call__(self, x2: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        for launch in self.pre:
            launch(x2)
        if self.plain_atomic:
            y = torch.zeros(self.y_shape, dtype=torch.float32, device=x2.device)
        else:
            y = torch.empty(self.y_shape, dtype=self.y_dtype, device=x2.device)
        b = bias if self.bias_in_kernel else y
        ws, cnt = self.ws if self.ws is not None else (y, y)
        if self.xin:
            self.gemv(x2, x2, x2, x2, y, b, ws, cnt)
        else:
            self.gemv(y, b, ws, cnt)
        if self.plain_atomic:
            if bias is not None:
                y = y + bias.to(torch.float32)
            y = y.to(self.dtype)
        return y


def dequantize_stored(prepared: PreparedSpQR, out_dtype: torch.dtype = torch.float16,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Dense ``Wp`` in *stored* column order (no permutation), bit-identical to spqr.md §5 steps 1-3.

    For large batches: ``x @ Wd.T == x[:, perm] @ Wp.T``, so the prefill GEMM reads x through ``perm``
    (cheap) instead of scattering W's columns; ``out`` lets callers reuse one scratch buffer.
    """
    if prepared.layout == "tiled" and "codes" not in prepared.sections:
        from . import _spqr_dot

        return _spqr_dot.dequantize_tiled(prepared, out_dtype, True, out)
    w = dequantize_prepared(prepared, out_dtype)
    if prepared.perm is not None:
        w = w[:, u32_values(prepared.perm)]
    if out is not None:
        out.copy_(w)
        return out
    return w.contiguous()


def _matvec_grouped(prepared: PreparedSpQR, x2: torch.Tensor, bias: torch.Tensor | None,
                    cfg: MatvecConfig) -> torch.Tensor:
    from . import _spqr_grouped as KG

    _check_grouped(prepared)
    m, n = prepared.shape
    p = prepared.params
    B = x2.shape[0]
    gs = int(p["group_size"])
    G = triton.cdiv(n, gs)
    wst = prepared.wst
    F = 32 // wst
    mode = 0 if B == 1 else (3 if cfg.tile_dot and gs == next_pow2(gs) else 2)
    x2 = x2.contiguous()
    dev = x2.device
    idx = prepared.x_index(0)
    xin = mode == 0 and cfg.x_inline
    if xin:  # the kernel reads x itself (no xprep launch)
        xq = xo = x2
        xsum = x2
    else:
        xq = torch.empty((B, gs * G), dtype=torch.float32, device=dev)
        xsum = torch.empty((B, G), dtype=torch.float32, device=dev)
        xo = torch.empty((B, n), dtype=torch.float32, device=dev)
        gsp = next_pow2(gs)
        bg = max(1, min(next_pow2(G), 4096 // gsp))
        KG.xprep_kernel[(triton.cdiv(G, bg), B)](x2, idx, xq, xsum, xo, n, G, x2.stride(0),
                                               GS=gs, GSP=gsp, F=F, WST=wst, PRESCALE=mode != 2, BG=bg)
    NG = cfg.NH
    n_gt = triton.cdiv(G, NG)
    split, tps = _split(prepared, cfg, n_gt)
    atomic = split > 1
    finish = atomic and cfg.fused_finish
    if atomic and not finish:
        y = torch.zeros((B, m), dtype=torch.float32, device=dev)
    else:
        y = torch.empty((B, m), dtype=x2.dtype, device=dev)
    ws, cnt = prepared.split_workspace() if finish else (y, y)
    b2 = int(p.get("stat_group_size", 1) or 1)
    has_bias = bias is not None and (finish or not atomic)
    KG.gemv_kernel[(triton.cdiv(m, cfg.BM), split)](
        xq, xsum, xo, idx, y, bias if has_bias else y, ws, cnt, prepared.grouped,
        prepared.st_codes, prepared.st2_64, prepared.sz32,
        prepared.o_row_ptr, prepared.o_col, prepared.o_delta,
        m, n, G, triton.cdiv(m, b2), b2, B, n_gt, tps,
        GS=gs, SB=int(p["scale_bits"]) if prepared.stats_q else 0, WST=wst, F=F, WPG=gs * wst // 32,
        NG=NG, BM=cfg.BM, BB=1 if mode == 0 else 16, EPR=16 if mode == 0 else 8,
        PACKED=prepared.packed_stats, MODE=mode, ATOMIC=atomic, FINISH=finish, HAS_BIAS=has_bias,
        COL16=prepared.o_col.dtype == torch.int16, DOT_DT=_TL_DTYPE[x2.dtype], XIN=xin,
        HAS_PERM=prepared.perm is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if atomic and not finish:
        if bias is not None:
            y = y + bias.to(torch.float32)
        y = y.to(x2.dtype)
    return y


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
    if B > MAX_FUSED_BATCH and prepared.layout == "tiled" and config is None:
        from . import _spqr_dot  # up to 64 rows per launch, each weight decoded once (H200: b64 < 4 x b16)

        y = _spqr_dot.matmul(prepared, x2, bias)
        return y.reshape(m) if squeeze else y
    if B > MAX_FUSED_BATCH:
        ys = [matvec(prepared, x2[i:i + MAX_FUSED_BATCH], bias, config) for i in range(0, B, MAX_FUSED_BATCH)]
        return torch.cat(ys, dim=0)
    if prepared.layout == "tiled":
        y = _matvec_tiled(prepared, x2, bias, config)
        return y.reshape(m) if squeeze else y
    cfg = config or default_config(prepared, B)
    if prepared.layout == "grouped":
        y = _matvec_grouped(prepared, x2, bias, cfg)
        return y.reshape(m) if squeeze else y
    p = prepared.params
    U = prepared.unit
    bk = cfg.NH * U
    idx = prepared.x_index(bk)
    xt = x2.index_select(1, idx).contiguous()  # [B, L]
    n_tiles = triton.cdiv(n, bk)
    split, tps = _split(prepared, cfg, n_tiles)
    use_dot = B > 1
    atomic = split > 1
    if atomic:
        y = torch.zeros((B, m), dtype=torch.float32, device=x.device)
    else:
        y = torch.empty((B, m), dtype=x.dtype, device=x.device)
    planes = prepared.planes + [(0, 0, prepared.planes[0][2])] * (3 - len(prepared.planes))
    gs = int(p["group_size"])
    G = triton.cdiv(n, gs)
    b2 = int(p.get("stat_group_size", 1) or 1)
    K2 = triton.cdiv(m, b2)
    has_bias = bias is not None and not atomic
    grid = (triton.cdiv(m, cfg.BM), split)
    KP.fused_kernel[grid](
        xt, y, bias if has_bias else y,
        planes[0][2], planes[1][2], planes[2][2],
        planes[0][2].shape[1], planes[1][2].shape[1], planes[2][2].shape[1],
        prepared.st_codes, prepared.st2, prepared.s16, prepared.z16,
        prepared.o_row_ptr, prepared.o_col, prepared.o_delta,
        m, n, G, K2, b2, B, xt.shape[1], triton.cdiv(n, 32) * 32 // U, n_tiles, tps,
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
    """Dense W of a prepared tensor, bit-identical to spqr.md §5 (used by SpQRLinear for large batches).

    The grouped layout is decoded from the repack (the spec ``codes`` are not
    kept on the device); outliers are then written over it (replace semantics).
    """
    if prepared.layout == "tiled" and "codes" not in prepared.sections:
        from . import _spqr_dot

        return _spqr_dot.dequantize_tiled(prepared, out_dtype, False)
    if prepared.layout != "grouped" or "codes" in prepared.sections:  # planes layout, or v2 (kept sections)
        return dequantize(prepared.params, prepared.sections, prepared.shape, out_dtype)
    from . import _spqr_grouped as KG

    _check_grouped(prepared)
    m, n = prepared.shape
    p = prepared.params
    gs = int(p["group_size"])
    G = triton.cdiv(n, gs)
    secs = prepared.sections
    out = torch.empty((m, n), dtype=out_dtype, device=prepared.device)
    perm = prepared.perm
    if perm is not None:
        perm = perm.view(torch.int32) if perm.dtype == torch.uint32 else perm
    bf16 = out_dtype == torch.bfloat16
    b2 = int(p.get("stat_group_size", 1) or 1)
    BM, BC = 16, 256
    iperm = prepared.x_index(-1) if perm is not None else None
    KG.dequant_grouped_kernel[(triton.cdiv(m, BM), triton.cdiv(n, BC))](
        prepared.grouped, prepared.st_codes, prepared.st2_64, prepared.sz32,
        iperm if iperm is not None else prepared.grouped, out.view(torch.int16) if bf16 else out,
        m, n, G, triton.cdiv(m, b2), b2,
        GS=gs, SB=int(p["scale_bits"]) if prepared.stats_q else 0, WST=prepared.wst, F=32 // prepared.wst,
        WPG=gs * prepared.wst // 32, BM=BM, BC=BC, PACKED=prepared.packed_stats,
        HAS_PERM=iperm is not None, OUT_BF16=bf16, **_launch_opts())
    vals = secs["outlier_val"]
    if vals.numel():
        KG.outlier_store_kernel[(triton.cdiv(m, 16),)](
            prepared.o_row_ptr, prepared.o_col, vals, perm if perm is not None else prepared.o_row_ptr,
            out.view(torch.int16) if bf16 else out, m, n, BM=16, EPR=16,
            COL16=prepared.o_col.dtype == torch.int16, HAS_PERM=perm is not None, OUT_BF16=bf16)
    return out


def bytes_of(sections: Mapping[str, Any]) -> int:
    """Total bytes of spec sections (the compressed size of spqr.md §7)."""
    total = 0
    for v in sections.values():
        total += v.numel() * v.element_size() if isinstance(v, torch.Tensor) else np.asarray(v).nbytes
    return total


__all__ = ["MatvecConfig", "PreparedSpQR", "bytes_of", "default_config", "dequantize", "dequantize_prepared",
           "dequantize_stored",
           "matvec", "prepare", "stat_f32", "to_device", "unpack_rows"]
