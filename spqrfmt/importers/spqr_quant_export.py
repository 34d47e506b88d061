"""Export codec ``spqr`` v2 tensors to the SpQR authors' inference format (``spqr_quant``), as a transformers folder.

The inverse of :mod:`.spqr_quant`: the folder (``config.json`` with
``quantization_config = {quant_method: "spqr", bits: 3, beta1: 16, beta2: 16, shapes, modules_to_not_convert}``,
one ``model.safetensors``, the tokenizer/generation files of the metadata) is what
stock transformers' SpQR integration loads, and what ``spqr import spqr_quant`` reads.

Only what the source format holds exactly is exported; everything else is refused
with :class:`~spqrfmt.importers.common.NotRepresentable` naming the field:

* every quantized tensor is codec ``spqr`` version 2 with ``arith = "f16"``, bits,
  scale/zero bits 3 and group/stat group size 16 (the library's only layout), dtype
  f16, ``m``, ``n`` multiples of 16, ``n`` <= 32768 (the source reads columns as signed 16-bit), no bias;
* ``outlier_op = "add"`` is copied bit for bit; ``"replace"`` is converted, per
  position, to the f16 addend whose f16 sum with the dense weight is the replacement
  value, and refused where no f16 addend gives exactly that value;
* other tensors must be ``raw`` (copied as they are).

The sparse layout is CSR (``row_offsets`` [m + 1]) unless the file's
``source.quantization_config`` (kept by the importer) says the layer was PTCSR
(``row_offsets`` [m/16 + 1]): then it is PTCSR again. So import -> export -> import
gives the same ``.spqr`` bytes, provided the exported folder has the source folder's
name (the importer records it as ``source.model``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..reader import SpqrFile, Tensor
from .common import NotRepresentable
from .spqr_quant import (
    BITS,
    ROLES,
    TILE,
    SpqrQuantLayer,
    reference_dense,
    reference_dequantize,
    to_dense_weights,
    unpack_layer,
)

WEIGHTS = "model.safetensors"
WANT = {"bits": BITS, "group_size": TILE, "scale_bits": BITS, "zero_bits": BITS, "stat_group_size": TILE,
        "arith": "f16"}
"""Params every exported tensor must have (``outlier_op`` may be either)."""


def check_tensor(t: Tensor) -> None:
    """Raise NotRepresentable naming the first field of ``t`` spqr_quant cannot hold."""
    name = t.name
    if t.codec != "spqr":
        raise NotRepresentable(f"{name}: codec {t.codec!r}; spqr_quant holds codec 'spqr' tensors (and raw ones)")
    if t.codec_version != 2:
        raise NotRepresentable(f"{name}: codec_version {t.codec_version}; spqr_quant's f16 arithmetic is "
                               "codec spqr version 2 with arith = 'f16' (version 1 computes in f32)")
    if not name.endswith(".weight"):
        raise NotRepresentable(f"{name}: name does not end in '.weight' (spqr_quant stores a linear layer's weight)")
    if t.dtype != "f16":
        raise NotRepresentable(f"{name}: dtype {t.dtype!r}; spqr_quant layers are f16")
    for key, want in WANT.items():
        if t.params.get(key) != want:
            raise NotRepresentable(f"{name}: param {key} = {t.params.get(key)!r}; spqr_quant supports only {want!r}")
    m, n = t.shape
    if m % TILE or n % TILE:
        raise NotRepresentable(f"{name}: shape [{m}, {n}]; spqr_quant needs multiples of 16")
    if n > 1 << 15:  # the library's host code reads col_vals' column as a signed short
        raise NotRepresentable(f"{name}: shape [{m}, {n}]; spqr_quant's 16-bit (signed) columns need n <= 32768")
    if "bias" in t.record.sections:
        raise NotRepresentable(f"{name}: section 'bias'; spqr_quant layers carry no bias")


def to_layer(t: Tensor) -> SpqrQuantLayer:
    """The fields of a checked (:func:`check_tensor`) tensor as a :class:`SpqrQuantLayer`, outliers additive."""
    from ..decoder.spqr import unpack_rows
    from ..encoder.spqr_v2 import outlier_addend

    m, n = t.shape
    a = t.arrays()
    G = n // TILE
    second = np.stack([np.asarray(a[r]).view(np.uint16) for r in ("scale_scale", "zero_scale", "scale_zero",
                                                                   "zero_zero")], axis=-1)  # [G, K, 4]
    ptr = np.asarray(a["outlier_row_ptr"]).astype(np.int64)
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(ptr))
    cols = np.asarray(a["outlier_col"]).astype(np.int64)
    vals = np.asarray(a["outlier_val"]).copy()
    perm = np.asarray(a["perm"]).astype(np.int64) if "perm" in a else None
    layer = SpqrQuantLayer(m, n, unpack_rows(a["codes"], n, BITS).astype(np.uint8),
                           unpack_rows(a["scale_codes"], m, BITS).astype(np.uint8).reshape(G, m),
                           unpack_rows(a["zero_codes"], m, BITS).astype(np.uint8).reshape(G, m),
                           second, rows, cols, vals, perm)
    if t.params.get("outlier_op") == "replace" and vals.size:
        dense = reference_dense(layer)[rows, cols]
        v, exact = outlier_addend(dense, vals, "f16", exhaustive=True)
        if not exact.all():
            e = int(np.nonzero(~exact)[0][0])
            raise NotRepresentable(f"{t.name}: outlier_val[{e}] = {float(vals[e])!r} replaces the weight at "
                                   f"({int(rows[e])}, {int(cols[e])}); no f16 addend to its dense value "
                                   f"{float(dense[e])!r} gives it (outlier_op 'replace' -> spqr_quant's addition)")
        layer.vals = v.astype(np.float16)
    return layer


def source_tensors(layer: SpqrQuantLayer, ptcsr: bool) -> dict[str, np.ndarray]:
    """The layer's spqr_quant tensors: int64 dense_weights, int32 row_offsets/col_vals(/in_perm)."""
    m = layer.m
    words = (layer.vals.view(np.uint16).astype(np.uint32) << np.uint32(16)) | layer.cols.astype(np.uint32)
    counts = np.bincount(layer.rows, minlength=m)
    if not ptcsr:
        row_offsets = np.zeros(m + 1, dtype=np.int32)
        np.cumsum(counts, out=row_offsets[1:])
        col_vals = words
    else:  # block b of 16 rows: [depth, 16] words, column i row 16b + i, zero words pad
        start = np.concatenate([[0], np.cumsum(counts)])
        ro, blocks = [0], []
        for b in range(m // TILE):
            depth = int(counts[TILE * b:TILE * b + TILE].max())
            blk = np.zeros((depth, TILE), dtype=np.uint32)
            for i in range(TILE):
                r = TILE * b + i
                blk[: counts[r], i] = words[start[r]:start[r + 1]]
            blocks.append(blk.reshape(-1))
            ro.append(ro[-1] + blk.size)
        row_offsets = np.array(ro, dtype=np.int32)
        col_vals = np.concatenate(blocks) if blocks else np.zeros(0, np.uint32)
    out = {"dense_weights": to_dense_weights(layer.codes, layer.scale_codes, layer.zero_codes, layer.second),
           "row_offsets": row_offsets, "col_vals": np.ascontiguousarray(col_vals, dtype=np.uint32).view(np.int32)}
    if layer.perm is not None:
        out["in_perm"] = layer.perm.astype(np.uint16).view(np.int32)
    return out


def _source_config(f: SpqrFile) -> dict[str, Any]:
    """The importer's kept ``quantization_config`` (a spqr one), else an empty dict."""
    if f.metadata.get("source.format") != "spqr_quant":
        return {}
    try:
        qc = json.loads(f.metadata.get("source.quantization_config") or "{}")
    except (TypeError, ValueError):
        return {}
    return qc if isinstance(qc, dict) and qc.get("quant_method") == "spqr" else {}


@dataclass
class ExportReport:
    output: Path
    files: list[str] = field(default_factory=list)
    quantized: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    checked: int = 0  # weights whose spqr_quant dequantization was compared with the file's decode("f16")


def export_spqr_quant(f: SpqrFile, output: str | os.PathLike[str], *, check: bool = True,
                      warn: Callable[[str], None] | None = None) -> ExportReport:
    """Write ``output`` (a new or empty folder): the spqr_quant transformers folder of ``f``.

    Raises NotRepresentable (nothing written) for a field the format cannot hold; with
    ``check`` every layer's spqr_quant dequantization (:func:`reference_dequantize`) must
    equal ``decode("f16")`` in every bit, else RuntimeError.
    """
    from ..hf.export import _build_folder, _new_folder, side_files
    from ..safetensors_io import write_safetensors
    from ..transposed import stored_transposed

    out = Path(output)
    _new_folder(out)
    f.validate()
    flipped = stored_transposed(f)
    quantized = [t for t in f.values() if t.codec != "raw"]
    if not quantized:
        raise NotRepresentable(f"{f.path}: no quantized tensor (codec 'spqr'); an unquantized model is exported "
                               "with spqr decode --hf")
    for t in quantized:
        check_tensor(t)
        if t.name in flipped:
            raise NotRepresentable(f"{t.name}: listed in spqrfmt.transposed (a Conv1D weight); spqr_quant layers "
                                   "are nn.Linear weights")
    files = side_files(f, warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr)))
    qc = _source_config(f)
    old_shapes = qc.get("shapes") if isinstance(qc.get("shapes"), dict) else {}
    report = ExportReport(out)
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    shapes: dict[str, list[int]] = {}
    for t in quantized:
        p = t.name.removesuffix(".weight")
        layer = to_layer(t)
        ptcsr = old_shapes.get(f"{p}.row_offsets.shape") == [t.shape[0] // TILE + 1]
        src = source_tensors(layer, ptcsr)
        if check:
            back = unpack_layer(src["dense_weights"], src["row_offsets"], src["col_vals"], src.get("in_perm"),
                                *t.shape)
            ours, ref = t.decode("f16"), reference_dequantize(back)
            same = (ours.view(np.uint16) == ref.view(np.uint16)) | (np.isnan(ours) & np.isnan(ref))
            if not same.all():
                raise RuntimeError(f"{p}: {int((~same).sum())} weights of the export dequantize differently from "
                                   "the file's decode (exporter bug)")
            report.checked += ours.size
        for role in ROLES:
            if role in src:
                tensors[f"{p}.{role}"] = ("i64" if role == "dense_weights" else "i32", src[role])
                shapes[f"{p}.{role}.shape"] = list(src[role].shape)
        report.quantized.append(t.name)
    for t in f.values():
        if t.codec != "raw":
            continue
        if t.name in tensors:
            raise NotRepresentable(f"{t.name}: a raw tensor with the name of an exported spqr_quant tensor")
        tensors[t.name] = (t.dtype, np.asarray(t.arrays()["data"]))
        report.raw.append(t.name)
    kept = {"quant_method": "spqr", "bits": BITS, "beta1": TILE, "beta2": TILE, "shapes": {},
            "modules_to_not_convert": sorted(n.removesuffix(".weight") for n in report.raw
                                             if n.endswith(".weight") and len(f[n].shape) == 2)}
    qc = {**kept, **qc} if qc else kept
    # the source's key order first (a byte-identical round trip), then any new layer's keys
    qc["shapes"] = {**{k: shapes[k] for k in old_shapes if k in shapes}, **shapes}
    cfg = json.loads(files["config.json"])
    cfg["quantization_config"] = qc
    files["config.json"] = (json.dumps(cfg, indent=2) + "\n").encode("utf-8")

    def fill(tmp: Path) -> list[str]:
        write_safetensors(tmp / WEIGHTS, tensors, {"format": "pt"})
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        return [WEIGHTS, *files]

    report.files = _build_folder(out, fill)
    return report


__all__ = ["ExportReport", "check_tensor", "export_spqr_quant", "source_tensors", "to_layer"]
