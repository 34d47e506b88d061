"""Import SqueezeLLM packed checkpoints into codec ``squeezellm``.

Source format (facts read from SqueezeAILab/SqueezeLLM ``squeezellm/quant.py``,
``QuantLinearLUT``; re-implemented from those facts): a PyTorch state dict
(``torch.save``; read here only with ``torch.load(weights_only=True)``) or a
safetensors file. Per quantized linear layer ``P`` with ``in`` inputs and
``out`` outputs:

* ``P.qweight`` int32 ``[in * b / 32, out]``: column ``o`` holds output row
  ``o``'s ``in`` indices as one little-endian bit stream of ``b``-bit codes
  (``b`` = 3 or 4; for 3 bits, 32 indices per 3 words, index 10 straddling
  words 0/1 and index 21 words 1/2). That is exactly a packed row of
  spec/codecs/spqr.md §4, so ``codes = qweight.T`` bit for bit.
* ``P.lookup_table`` ``[out, 2^b]`` (float32 in the module, often f16 in
  published files): the per-row non-uniform table.
* dense-and-sparse models: ``P.rows`` int32 ``[out + 1]``, ``P.cols`` int32,
  ``P.vals`` float32: a CSR matrix *added* to the table lookup
  (``vals`` = outlier minus the centroid nearest zero, the index stored there).
* optional ``P.bias`` float32; hybrid models also carry ``P.full_rows`` /
  ``P.full_row_indices`` (dense fp32 output rows), which this importer rejects.

The dequantized weight the source's kernels use is
``W[o, i] = lut[o, idx(o, i)] (+ vals at the CSR positions)``, accumulated in f32
(the sparse product is a separate f32 sum, so the pair is never rounded).

Mapping to codec ``squeezellm`` v1 (``lut`` f16 ``[m, 2^b]``, ``codes``,
CSR ``outlier_*`` with f16 values, add semantics): ``codes`` are copied bit for
bit, the CSR structure is copied, the bias is stored as a raw tensor. Exact iff
every ``lookup_table`` entry and every ``vals`` entry is representable in f16
(the codec's ``lut`` and ``outlier_val`` sections are f16 only). Then the
decoded tensor equals ``f32(lut) + f32(val)`` rounded once to f32, the
source's effective weight up to that single f32 rounding at residual positions
(exact elsewhere). If any entry is not f16-representable the importer stops,
naming the field, unless ``allow_lossy=True`` (then it rounds to nearest f16 and
reports the largest change).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..hf.checkpoint import base_model_metadata
from ..paths import display_name
from ..writer import Writer
from .common import NotRepresentable, load_state

ROLES = ("qweight", "lookup_table", "rows", "cols", "vals")


@dataclass
class SqueezeImportReport:
    output: Path
    quantized: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    residuals: int = 0
    max_lut_change: float = 0.0   # |f16(x) - x| over lookup_table entries (0 when lossless)
    max_val_change: float = 0.0   # same for sparse vals

    @property
    def lossless(self) -> bool:
        return self.max_lut_change == 0.0 and self.max_val_change == 0.0


def _to_f16_exact(x: np.ndarray, what: str, allow_lossy: bool) -> tuple[np.ndarray, float]:
    x32 = np.asarray(x, dtype=np.float32) if x.dtype != np.float64 else np.asarray(x)
    h = x32.astype(np.float16)
    back = h.astype(x32.dtype)
    same = (back == x32) | (np.isnan(back) & np.isnan(x32))
    if same.all():
        return h, 0.0
    change = float(np.nanmax(np.abs(back.astype(np.float64) - x32.astype(np.float64))))
    if not allow_lossy:
        raise NotRepresentable(
            f"{what}: {int((~same).sum())} of {x32.size} values are not representable in f16 (largest change "
            f"{change:.3g}); codec squeezellm v1 stores this field as f16. Pass allow_lossy=True (--allow-lossy) "
            "to round to nearest f16.")
    return h, change


def unpack_codes(qweight: np.ndarray, bits: int, n: int) -> np.ndarray:
    """qweight [n*b/32, m] -> codes u32 [m, n*b/32]: each column is already a spec packed row."""
    q = np.ascontiguousarray(np.asarray(qweight).view(np.uint32).T)
    if q.shape[1] * 32 != n * bits:
        raise ValueError(f"qweight has {q.shape[1]} words per column, {n} inputs x {bits} bits need {n * bits // 32}")
    return q


def to_squeezellm_sections(qweight: np.ndarray, lut: np.ndarray, rows: np.ndarray | None, cols: np.ndarray | None,
                           vals: np.ndarray | None, *, name: str = "", allow_lossy: bool = False,
                           ) -> tuple[dict[str, Any], dict[str, Any], tuple[int, int], float, float]:
    """(params, sections, shape, lut change, val change) for one layer."""
    if np.ndim(lut) != 2 or np.ndim(qweight) != 2:
        raise ValueError(f"{name}: lookup_table and qweight must be 2-D, got shapes {list(np.shape(lut))} and "
                         f"{list(np.shape(qweight))}")
    m, K = lut.shape
    bits = int(K).bit_length() - 1
    if (1 << bits) != K or bits not in range(1, 9):
        raise ValueError(f"{name}: lookup_table has {K} entries per row, not a power of two <= 256")
    words = np.asarray(qweight).shape[0]
    if np.asarray(qweight).shape[1] != m:
        raise ValueError(f"{name}: qweight has {np.asarray(qweight).shape[1]} columns, lookup_table {m} rows")
    if (words * 32) % bits:
        raise ValueError(f"{name}: {words} words per column is not a whole number of {bits}-bit codes")
    n = words * 32 // bits
    codes = unpack_codes(qweight, bits, n)
    lut16, dl = _to_f16_exact(np.asarray(lut), f"{name}.lookup_table", allow_lossy)
    if rows is not None and cols is not None and vals is not None and np.asarray(vals).size:
        rp = np.asarray(rows).astype(np.int64)
        if rp.size != m + 1:
            raise ValueError(f"{name}: rows has {rp.size} entries, expected {m + 1}")
        c = np.asarray(cols).astype(np.int64)
        if c.size and (c.min() < 0 or c.max() >= n):
            raise ValueError(f"{name}: a sparse column is outside 0..{n - 1}")
        v16, dv = _to_f16_exact(np.asarray(vals).reshape(-1), f"{name}.vals", allow_lossy)
        row_ptr = rp.astype(np.uint32)
        col = c.astype(np.uint16 if n <= 65536 else np.uint32)
    else:
        row_ptr = np.zeros(m + 1, np.uint32)
        col = np.zeros(0, np.uint16 if n <= 65536 else np.uint32)
        v16, dv = np.zeros(0, np.float16), 0.0
    sections = {"lut": lut16, "codes": codes, "outlier_row_ptr": row_ptr, "outlier_col": col, "outlier_val": v16}
    return {"bits": bits}, sections, (m, n), dl, dv


def reference_dequantize(qweight: np.ndarray, lut: np.ndarray, rows: np.ndarray | None = None,
                         cols: np.ndarray | None = None, vals: np.ndarray | None = None) -> np.ndarray:
    """The source's effective f32 weight [out, in]: table lookup, plus the CSR values (one f32 add each)."""
    m, K = lut.shape
    bits = int(K).bit_length() - 1
    q = np.asarray(qweight).view(np.uint32).T.astype(np.uint64)  # [m, words]
    n = q.shape[1] * 32 // bits
    stream = np.zeros((m, n), dtype=np.int64)
    for j in range(n):
        p = j * bits
        w0 = q[:, p // 32] >> np.uint64(p % 32)
        if p % 32 + bits > 32:
            w0 = w0 | (q[:, p // 32 + 1] << np.uint64(32 - p % 32))
        stream[:, j] = (w0 & np.uint64(K - 1)).astype(np.int64)
    out = np.take_along_axis(np.asarray(lut, dtype=np.float32), stream, axis=1)
    if rows is not None and vals is not None and np.asarray(vals).size:
        rp = np.asarray(rows).astype(np.int64)
        for r in range(m):
            for e in range(rp[r], rp[r + 1]):
                c = int(cols[e])
                out[r, c] = np.float32(out[r, c] + np.float32(vals[e]))
    return out


def import_squeezellm(src: str | os.PathLike[str], output: str | os.PathLike[str], *,
                      config_dir: str | os.PathLike[str] | None = None, allow_lossy: bool = False,
                      log: Callable[[str], None] | None = None) -> SqueezeImportReport:
    """SqueezeLLM packed checkpoint (+ the base model's folder for config.json/tokenizer) -> ``.spqr``."""
    state = load_state(src)
    prefixes = sorted({k[: -len(".qweight")] for k in state if k.endswith(".qweight")
                       and f"{k[: -len('.qweight')]}.lookup_table" in state})
    for p in prefixes:
        if f"{p}.full_rows" in state:
            raise NotRepresentable(f"{p}: hybrid 'full_rows' (dense fp32 output rows) have no mapping in codec "
                                   "squeezellm v1; convert a non-hybrid checkpoint")
    if not prefixes:
        raise ValueError(f"{src}: no SqueezeLLM layers (a qweight with its lookup_table) found; an unquantized "
                         "checkpoint is converted with spqr convert")
    consumed = {f"{p}.{r}" for p in prefixes for r in ROLES} | {f"{p}.startrows" for p in prefixes}
    meta: dict[str, Any] = {"source.model": display_name(src), "source.format": "squeezellm"}
    if config_dir is not None:
        meta.update(base_model_metadata(Path(config_dir)))
    report = SqueezeImportReport(Path(output))
    with Writer(output, metadata=meta) as w:
        for name in sorted(state):
            if name in consumed:
                continue
            arr = np.ascontiguousarray(state[name])
            w.add_raw(name, arr)
            report.raw.append(name)
        for p in prefixes:
            params, sections, shape, dl, dv = to_squeezellm_sections(
                state[f"{p}.qweight"], state[f"{p}.lookup_table"], state.get(f"{p}.rows"), state.get(f"{p}.cols"),
                state.get(f"{p}.vals"), name=p, allow_lossy=allow_lossy)
            w.add(f"{p}.weight", shape=shape, dtype="f16", codec="squeezellm", params=params, sections=sections)
            report.quantized.append(f"{p}.weight")
            report.residuals += int(sections["outlier_val"].size)
            report.max_lut_change = max(report.max_lut_change, dl)
            report.max_val_change = max(report.max_val_change, dv)
            if log:
                log(f"  {p}.weight {list(shape)} {params['bits']}-bit, {sections['outlier_val'].size} residuals")
    return report


def cli_import(args: Any) -> int:
    rep = import_squeezellm(args.src, args.output, config_dir=getattr(args, "config", None),
                            allow_lossy=getattr(args, "allow_lossy", False),
                            log=(lambda s: print(s, file=sys.stderr)) if getattr(args, "verbose", False) else None)
    state = "lossless" if rep.lossless else (f"LOSSY: lut changed by up to {rep.max_lut_change:.3g}, "
                                             f"vals by up to {rep.max_val_change:.3g}")
    print(f"{rep.output}: {len(rep.quantized)} squeezellm layers, {len(rep.raw)} raw tensors, "
          f"{rep.residuals} residuals; {state}")
    return 0


__all__ = ["NotRepresentable", "SqueezeImportReport", "import_squeezellm", "load_state", "reference_dequantize",
           "to_squeezellm_sections", "unpack_codes"]
