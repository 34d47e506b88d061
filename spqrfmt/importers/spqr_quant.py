"""Import checkpoints of the SpQR authors' inference library (``spqr_quant``) into codec ``spqr``.

Source format (as loaded by transformers' ``quant_method: "spqr"`` integration;
facts read from Vahe1994/SpQR ``inference_lib`` and transformers
``integrations/spqr.py``, re-implemented here from those facts):

* ``config.json`` carries ``quantization_config = {quant_method: "spqr", bits: 3,
  beta1: 16, beta2: 16, shapes: {...}, modules_to_not_convert: [...]}``. The
  library supports exactly 3-bit codes, 3-bit statistics and 16x16 tiles, and
  ``m``, ``n`` multiples of 16.
* per quantized linear layer ``P`` (weight ``[m, n]``) four tensors:

  - ``P.dense_weights`` int64 ``[m*n/16]``: one 64-bit word per (tile row
    ``k = r // 16``, tile column ``g = j // 16``, row ``r % 16``), in that
    order. Word bits: ``0..2`` first-level scale code, ``3..5`` zero code,
    ``6 + 3l .. 8 + 3l`` the code of column ``16g + l`` (l = 0..15),
    ``54..61`` one byte of the tile's second-order word, ``62..63`` zero.
  - the tile's 64-bit second-order word is the OR of ``(word >> 54) << (8 * (i // 2))``
    over the tile's 16 rows ``i``; read as four f16 (little-endian):
    scale's scale, zero's scale, scale's zero, zero's zero.
  - ``P.row_offsets`` int32: CSR row pointer ``[m + 1]``, or the "PTCSR"
    block pointer ``[m/16 + 1]`` whose entry ``e`` of block ``b`` belongs to
    row ``16b + e % 16`` (zero words are padding);
  - ``P.col_vals`` int32: low 16 bits column (stored order), high 16 bits f16 value;
  - ``P.in_perm`` int32 ``[n/2]``: u16 pairs, stored column ``j`` reads input ``in_perm[j]``.

* Dequantization (``QuantizedLinear.dequantize`` -> the library's host
  function ``dequantize_compressed``): half-precision host arithmetic, i.e.
  each operation computed in f32 and rounded to f16 (nearest even); outliers
  accumulated in an f32 copy of the dense matrix, which is rounded to f16 once
  at the end::

      S = f16(ss * f16(cs - sz));  Z = f16(zs * f16(cz - zz))
      W = f16(S * f16(q - Z))                 # dense weight, f16
      W[r, c] = f16(f32(W[r, c]) + f32(v))     # every col_vals entry ADDED, PTCSR padding words included

Mapping to codec ``spqr`` **v2** (spec/codecs/spqr.md §8) with ``arith = "f16"``,
``outlier_op = "add"``, bits 3, group_size 16, scale/zero_bits 3, stat_group_size
16: codes, first-level codes, the four second-order f16 values, the outlier
addends ``v`` and the permutation are copied bit for bit (:func:`to_dense_weights`
rebuilds the source words exactly), and v2's arithmetic is the source's
operation for operation, so ``decode("f16")`` equals the source's dequantized
matrix in every bit. Two things are folded, exactly:

* entries at the same position (the source adds them one after another in
  f32, rounding once): one addend that gives the same f16 result;
* PTCSR padding words (column 0, value +0.0, which the source adds too): dropped,
  except where the dense weight is -0.0 and the +0.0 makes it +0.0.

When several entries at one position have no single f16 addend with the same
result (rare: it takes an f32 sum that cancels most of the dense weight; the search,
:func:`spqrfmt.encoder.spqr_v2.outlier_addend`, tries every f16 value) the
importer raises :class:`~spqrfmt.importers.common.NotRepresentable`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..encoder.packing import pack_rows
from ..hf.checkpoint import base_model_metadata, checkpoint_entries, read_config
from ..paths import display_name
from ..writer import Writer

ROLES = ("dense_weights", "row_offsets", "col_vals", "in_perm")
TILE = 16
BITS = 3


@dataclass
class SpqrQuantLayer:
    """One layer of the source format, unpacked: every field the source stores, as numpy arrays."""

    m: int
    n: int
    codes: np.ndarray          # [m, n] uint8, stored column order
    scale_codes: np.ndarray    # [G, m] uint8 (G = n/16)
    zero_codes: np.ndarray     # [G, m] uint8
    second: np.ndarray         # [G, K, 4] uint16: scale's scale, zero's scale, scale's zero, zero's zero
    rows: np.ndarray           # [E] int64 outlier rows, every col_vals entry in source order (PTCSR padding too)
    cols: np.ndarray           # [E] int64 outlier columns
    vals: np.ndarray           # [E] float16 outlier addends
    perm: np.ndarray | None    # [n] int64 or None
    pad: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # [E] PTCSR padding words
    info: dict[str, Any] = field(default_factory=dict)


def _u64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint64)


def infer_shape(dense_len: int, row_offsets_len: int, in_perm_len: int) -> tuple[int, int] | None:
    """(m, n) from tensor lengths when unambiguous (in_perm gives n; else CSR vs PTCSR must agree)."""
    if in_perm_len > 0:
        n = 2 * in_perm_len
        if (dense_len * TILE) % n == 0:
            return (dense_len * TILE) // n, n
        return None
    cands = set()
    for m in (row_offsets_len - 1, TILE * (row_offsets_len - 1)):
        if m > 0 and m % TILE == 0 and (dense_len * TILE) % m == 0:
            n = dense_len * TILE // m
            if n % TILE == 0:
                cands.add((m, n))
    return cands.pop() if len(cands) == 1 else None


def unpack_layer(dense_weights: np.ndarray, row_offsets: np.ndarray, col_vals: np.ndarray,
                 in_perm: np.ndarray | None, m: int, n: int) -> SpqrQuantLayer:
    """Source tensors -> :class:`SpqrQuantLayer` (checks lengths; no value is changed)."""
    if m % TILE or n % TILE:
        raise ValueError(f"spqr_quant needs m and n multiples of 16, got [{m}, {n}]")
    K, G = m // TILE, n // TILE
    w = _u64(dense_weights)
    if w.size != K * G * TILE:
        raise ValueError(f"dense_weights has {w.size} words, [{m}, {n}] needs {K * G * TILE}")
    t = w.reshape(K, G, TILE)  # [tile row, tile col, row in tile]
    shifts = (6 + 3 * np.arange(TILE, dtype=np.uint64)).astype(np.uint64)
    q = ((t[..., None] >> shifts) & np.uint64(7)).astype(np.uint8)  # [K, G, 16 rows, 16 cols]
    codes = q.transpose(0, 2, 1, 3).reshape(m, n)
    s = (t & np.uint64(7)).astype(np.uint8)                          # [K, G, 16]
    z = ((t >> np.uint64(3)) & np.uint64(7)).astype(np.uint8)
    scale_codes = s.transpose(1, 0, 2).reshape(G, m)
    zero_codes = z.transpose(1, 0, 2).reshape(G, m)
    # Second-order word: OR over the tile's rows of (word >> 54) << (8 * (row // 2)), mod 2^64.
    part = t >> np.uint64(9 * BITS * 2)  # 54
    v = np.zeros((K, G), dtype=np.uint64)
    for i in range(TILE):
        v |= part[..., i] << np.uint64(8 * (i // 2))
    second = np.stack([(v >> np.uint64(16 * h)) & np.uint64(0xFFFF) for h in range(4)], axis=-1)
    second = second.astype(np.uint16).transpose(1, 0, 2)  # [G, K, 4]

    ro = np.asarray(row_offsets).reshape(-1).astype(np.int64)
    cv = np.ascontiguousarray(col_vals).reshape(-1).view(np.uint32)
    if ro.size == m + 1:
        layout = "csr"
        counts = np.diff(ro)
        if ro[0] != 0 or np.any(counts < 0) or ro[-1] > cv.size:
            raise ValueError("row_offsets is not a valid CSR row pointer")
        rows = np.repeat(np.arange(m, dtype=np.int64), counts)
        ent = cv[: int(ro[-1])]
        pad = np.zeros(ent.size, dtype=bool)
    elif ro.size == K + 1:
        layout = "ptcsr"
        if ro[0] != 0 or np.any(np.diff(ro) < 0) or ro[-1] > cv.size:
            raise ValueError("row_offsets is not a valid PTCSR block pointer")
        idx = np.arange(int(ro[-1]), dtype=np.int64)
        block = np.repeat(np.arange(K, dtype=np.int64), np.diff(ro))
        rows = block * TILE + idx % TILE
        ent = cv[: int(ro[-1])]
        pad = ent == 0  # zero words pad the interleaved blocks (the source adds them: +0.0 at column 0)
    else:
        raise ValueError(f"row_offsets has {ro.size} entries; expected {m + 1} (CSR) or {K + 1} (PTCSR)")
    cols = (ent & np.uint32(0xFFFF)).astype(np.int64)
    vals = (ent >> np.uint32(16)).astype(np.uint16).view(np.float16)
    if cols.size and cols.max() >= n:
        raise ValueError(f"outlier column {int(cols.max())} >= n = {n}")
    perm = None
    if in_perm is not None and np.asarray(in_perm).size:
        p = np.ascontiguousarray(in_perm).reshape(-1).view(np.uint16).astype(np.int64)
        if p.size != n:
            raise ValueError(f"in_perm holds {p.size} entries, n = {n}")
        perm = p
    info = {"sparse_layout": layout, "padding_entries": int(pad.sum())}
    return SpqrQuantLayer(m, n, codes, scale_codes, zero_codes, second, rows, cols, vals, perm, pad, info)


def _f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def _half_dequant(q: np.ndarray, s16: np.ndarray, z16: np.ndarray) -> np.ndarray:
    """spqr_quant's ``s * (q - z)`` in f16: each operation in f32, rounded to f16 (inf/NaN propagate)."""
    with np.errstate(over="ignore", invalid="ignore"):
        t = _f16(q.astype(np.float32) - z16.astype(np.float32))
        return _f16(s16.astype(np.float32) * t.astype(np.float32))


def reference_stats(layer: SpqrQuantLayer) -> tuple[np.ndarray, np.ndarray]:
    """The source's first-level scale and zero, f16 [G, m], per its f16 arithmetic."""
    k = np.arange(layer.m) // TILE
    sec = layer.second.view(np.float16)  # [G, K, 4]
    S = _half_dequant(layer.scale_codes, sec[:, k, 0], sec[:, k, 2])
    Z = _half_dequant(layer.zero_codes, sec[:, k, 1], sec[:, k, 3])
    return S, Z


def reference_dense(layer: SpqrQuantLayer) -> np.ndarray:
    """The source's dense f16 matrix [m, n] (stored column order, no outliers), per its f16 arithmetic."""
    S, Z = reference_stats(layer)
    g = np.arange(layer.n) // TILE
    return _half_dequant(layer.codes, S.T[:, g], Z.T[:, g])


def reference_dequantize(layer: SpqrQuantLayer, apply_perm: bool = True) -> np.ndarray:
    """The source library's dequantized f16 matrix (every entry added in f32); ``apply_perm`` -> input order."""
    out = reference_dense(layer).astype(np.float32)
    for r, c, v in zip(layer.rows.tolist(), layer.cols.tolist(), layer.vals.astype(np.float32).tolist(), strict=True):
        out[r, c] = np.float32(out[r, c] + np.float32(v))  # sequential f32 adds, as the source does
    out16 = out.astype(np.float16)
    if apply_perm and layer.perm is not None:
        res = np.empty_like(out16)
        res[:, layer.perm] = out16
        return res
    return out16


PARAMS = {"bits": BITS, "group_size": TILE, "scale_bits": BITS, "zero_bits": BITS, "stat_group_size": TILE,
          "arith": "f16", "outlier_op": "add"}
"""Codec ``spqr`` v2 params of every imported layer."""
CODEC_VERSION = 2


def fold_outliers(layer: SpqrQuantLayer, name: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, f16 addends) with one entry per position, row-major, decoding as the source's entries do.

    A position with one real entry keeps its addend ``v``; several entries, or
    PTCSR padding, become the one f16 addend that reproduces the source's
    result (padding that changes nothing is dropped).
    """
    from ..encoder.spqr_v2 import add_outlier, outlier_addend, same_bits
    from .common import NotRepresentable

    n = layer.n
    if layer.rows.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float16)
    pad = layer.pad if layer.pad.size else np.zeros(layer.rows.size, dtype=bool)
    key = layer.rows * n + layer.cols
    order = np.argsort(key, kind="stable")  # file order within a position, as the source adds them
    uniq, first, counts = np.unique(key[order], return_index=True, return_counts=True)
    vals = layer.vals[order]
    pads = pad[order]
    dense = reference_dense(layer).reshape(-1)[uniq]  # f16
    out = vals[first].copy()
    keep = np.ones(uniq.size, dtype=bool)
    lone_pad = (counts == 1) & pads[first]
    # +0.0 added to -0.0 gives +0.0; to anything else it changes nothing.
    keep[lone_pad] = dense[lone_pad].view(np.uint16) == 0x8000
    for i in np.nonzero(counts > 1)[0]:
        group = slice(first[i], first[i] + counts[i])
        acc = np.float32(dense[i])
        for v in vals[group]:  # the source's f32 accumulation, then one rounding
            acc = np.float32(acc + np.float32(v))
        d = np.array([dense[i]], dtype=np.float32)
        with np.errstate(over="ignore"):
            target = np.array([acc], dtype=np.float32).astype(np.float16).astype(np.float32)
        real = vals[group][~pads[group]]
        if real.size == 0 and same_bits(target, d)[0]:
            keep[i] = False  # padding only, and it changes nothing
        elif real.size == 1 and same_bits(add_outlier(d, real, "f16"), target)[0]:
            out[i] = real[0]  # one entry plus padding: its own addend still gives the result
        else:
            v, exact = outlier_addend(d, target, "f16", exhaustive=True)
            if not exact[0]:
                r, c = divmod(int(uniq[i]), n)
                raise NotRepresentable(f"{name}.col_vals: {int(counts[i])} entries at ({r}, {c}) have no single "
                                       "f16 addend giving the source's result")
            out[i] = v[0]
    uniq = uniq[keep]
    return uniq // n, uniq % n, out[keep].astype(np.float16)


def to_spqr_sections(layer: SpqrQuantLayer, name: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, sections) of codec ``spqr`` v2 carrying every source field (see module doc)."""
    m, n = layer.m, layer.n
    sec = layer.second  # [G, K, 4] uint16
    rows, cols, vals = fold_outliers(layer, name)
    row_ptr = np.zeros(m + 1, dtype=np.uint32)
    np.cumsum(np.bincount(rows, minlength=m), out=row_ptr[1:])
    params = dict(PARAMS)
    sections: dict[str, Any] = {
        "codes": pack_rows(layer.codes.astype(np.int64), BITS),
        "scale_codes": pack_rows(layer.scale_codes.astype(np.int64), BITS),
        "scale_scale": np.ascontiguousarray(sec[..., 0]).view(np.float16),
        "scale_zero": np.ascontiguousarray(sec[..., 2]).view(np.float16),
        "zero_codes": pack_rows(layer.zero_codes.astype(np.int64), BITS),
        "zero_scale": np.ascontiguousarray(sec[..., 1]).view(np.float16),
        "zero_zero": np.ascontiguousarray(sec[..., 3]).view(np.float16),
        "outlier_row_ptr": row_ptr,
        "outlier_col": cols.astype(np.uint16 if n <= 65536 else np.uint32),
        "outlier_val": vals,
    }
    if layer.perm is not None:
        sections["perm"] = layer.perm.astype(np.uint32)
    return params, sections


def to_dense_weights(codes: np.ndarray, scale_codes: np.ndarray, zero_codes: np.ndarray,
                     second: np.ndarray) -> np.ndarray:
    """Inverse of the dense part of :func:`unpack_layer`: the source's int64 ``dense_weights`` words.

    ``codes`` [m, n], ``scale_codes``/``zero_codes`` [G, m], ``second`` [G, K, 4] uint16.
    Used to show that the import keeps every dense bit (tests), and by an exporter.
    """
    m, n = codes.shape
    K, G = m // TILE, n // TILE
    q = codes.astype(np.uint64).reshape(K, TILE, G, TILE).transpose(0, 2, 1, 3)  # [K, G, rows, cols]
    shifts = (6 + 3 * np.arange(TILE, dtype=np.uint64)).astype(np.uint64)
    w = np.bitwise_or.reduce(q << shifts, axis=-1)
    w |= scale_codes.astype(np.uint64).reshape(G, K, TILE).transpose(1, 0, 2)
    w |= zero_codes.astype(np.uint64).reshape(G, K, TILE).transpose(1, 0, 2) << np.uint64(3)
    sec = second.astype(np.uint64).transpose(1, 0, 2)  # [K, G, 4]
    v = sec[..., 0] | (sec[..., 1] << np.uint64(16)) | (sec[..., 2] << np.uint64(32)) | (sec[..., 3] << np.uint64(48))
    for i in range(TILE):
        w[..., i] |= ((v >> np.uint64(8 * (i // 2))) & np.uint64(0xFF)) << np.uint64(54)
    return w.reshape(-1).view(np.int64)


# ---- whole checkpoints ------------------------------------------------------------------


@dataclass
class ImportReport:
    output: Path
    quantized: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    outliers: int = 0
    checked: int = 0      # weights whose decode("f16") was compared with the source's dequantization


def _meta_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Linear layer shapes [out, in] of the architecture (built on the meta device; needs transformers)."""
    import tempfile

    import torch
    from transformers import AutoConfig

    from ..model import build_empty_model

    cfg = dict(config)
    cfg.pop("quantization_config", None)
    with tempfile.TemporaryDirectory() as d:
        Path(d, "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        hf = AutoConfig.from_pretrained(d)
    model = build_empty_model(hf, torch.float16)
    return {n: (mod.out_features, mod.in_features) for n, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear)}


def import_spqr_quant(src: str | os.PathLike[str], output: str | os.PathLike[str], *,
                      shapes: Mapping[str, tuple[int, int]] | None = None,
                      check: bool = True, log: Callable[[str], None] | None = None) -> ImportReport:
    """Convert a spqr_quant Hugging Face folder to one ``.spqr`` file (codec ``spqr`` for quantized layers).

    ``shapes`` maps a layer prefix to ``(out, in)`` when the tensors alone are ambiguous
    (no ``in_perm``); otherwise the shapes come from the tensors or the architecture.
    ``check`` decodes each imported layer with the reference decoder and raises
    ``RuntimeError`` (writing nothing) unless it equals the source's dequantization
    (:func:`reference_dequantize`) in every bit.
    """
    folder = Path(src)
    config = read_config(folder)
    if config is None:
        raise ValueError(f"{folder} has no config.json (its quantization_config says how the layers are stored)")
    qc = config.get("quantization_config") or {}
    if not isinstance(qc, dict):
        raise ValueError(f"{folder}: quantization_config is not a JSON object")
    if qc.get("quant_method") not in (None, "spqr"):
        raise ValueError(f"{folder}: quant_method is {qc.get('quant_method')!r}, not 'spqr'")
    for key, want in (("bits", 3), ("beta1", 16), ("beta2", 16)):
        if key in qc and qc[key] != want:
            raise ValueError(f"{folder}: spqr_quant supports only {key}={want}, config has {qc[key]}")
    where = {name: sf for sf, name in checkpoint_entries(folder)}
    prefixes = sorted({n[: -len(".dense_weights")] for n in where if n.endswith(".dense_weights")})
    if not prefixes:
        raise ValueError(f"{folder}: no spqr_quant layers (*.dense_weights) found; an unquantized checkpoint is "
                         "converted with spqr convert")
    consumed = {f"{p}.{r}" for p in prefixes for r in ROLES}
    meta: dict[str, Any] = {
        "source.model": display_name(folder),
        "source.format": "spqr_quant",
        "source.quantization_config": json.dumps(qc),
        **base_model_metadata(folder, config),
    }
    report = ImportReport(Path(output))
    arch_shapes: dict[str, tuple[int, int]] | None = None
    with Writer(output, metadata=meta) as w:
        for name in sorted(where):
            if name in consumed:
                continue
            dtype, arr = where[name][name]
            w.add_raw(name, arr, dtype)
            report.raw.append(name)
        for p in prefixes:
            def get(role: str, p: str = p) -> np.ndarray | None:
                key = f"{p}.{role}"
                return where[key][key][1] if key in where else None

            dw, ro, cv, ip = get("dense_weights"), get("row_offsets"), get("col_vals"), get("in_perm")
            if ro is None or cv is None:
                raise ValueError(f"{p}: row_offsets/col_vals missing")
            shape = (shapes or {}).get(p) or infer_shape(dw.size, ro.size, 0 if ip is None else ip.size)
            if shape is None:
                if arch_shapes is None:
                    arch_shapes = _meta_shapes(config)
                shape = arch_shapes.get(p)
            if shape is None:
                raise ValueError(f"{p}: cannot tell the layer's [out, in] shape; pass shapes=")
            layer = unpack_layer(dw, ro, cv, ip, *shape)
            params, sections = to_spqr_sections(layer, p)
            w.add(f"{p}.weight", shape=shape, dtype="f16", codec="spqr", params=params, sections=sections,
                  codec_version=CODEC_VERSION)
            report.quantized.append(f"{p}.weight")
            report.outliers += int(sections["outlier_val"].size)
            if check:
                from ..codecs.spqr import checked_params
                from ..decoder import spqr as ref_decoder
                from ..records import TensorRecord

                rec = TensorRecord(f"{p}.weight", shape, "f16", "spqr", CODEC_VERSION, params, {})
                ours = ref_decoder.decode(checked_params(rec), sections, shape).astype(np.float16)
                ref = reference_dequantize(layer)
                same = (ours.view(np.uint16) == ref.view(np.uint16)) | (np.isnan(ours) & np.isnan(ref))
                if not same.all():
                    raise RuntimeError(f"{p}: {int((~same).sum())} weights decode differently from spqr_quant's "
                                       "dequantization (importer bug)")
                report.checked += ours.size
            if log:
                log(f"  {p}.weight {list(shape)} outliers {sections['outlier_val'].size} {layer.info['sparse_layout']}")
    return report


def cli_import(args: Any) -> int:
    rep = import_spqr_quant(args.src, args.output, log=(lambda s: print(s, file=sys.stderr)) if args.verbose else None)
    print(f"{rep.output}: {len(rep.quantized)} spqr v2 layers, {len(rep.raw)} raw tensors, {rep.outliers} outliers; "
          f"decode equals spqr_quant's f16 dequantization in every bit ({rep.checked} weights checked)")
    return 0


__all__ = ["CODEC_VERSION", "PARAMS", "ImportReport", "SpqrQuantLayer", "fold_outliers", "import_spqr_quant",
           "infer_shape", "reference_dequantize", "reference_dense", "reference_stats", "to_dense_weights",
           "to_spqr_sections", "unpack_layer"]
