"""Import QuIP# Hugging Face-style checkpoints into codec ``quip`` -- the subset codec ``quip`` v1 can hold.

Source format (facts read from Cornell-RelaxML/quip-sharp ``lib/linear/quantized_linear.py``,
``lib/codebook/*.py``, ``lib/utils/matmul_had.py``, ``quantize_llama/hfize_llama.py``;
re-implemented from those facts). Per quantized layer ``P`` (``in`` = n, ``out`` = m):

* ``P.Qidxs``: codebook indices; ``P.codebook_id`` (0 = D4, 7 = E8P12, 10 = HI4B1C);
* ``P.SU`` ``[n]``, ``P.SV`` ``[m]`` (f16): input/output scalings, +-1 before
  fine-tuning, arbitrary reals after QuIP#'s fine-tuning step;
* ``P.Wscale`` (scalar; newer files fuse it into ``SV`` and store 1);
* forward: ``y = SV * Had_m( Wscale * G @ Had_n(SU * x) )`` with ``G[o, i]`` the
  codebook value of ``Qidxs`` and ``Had_d = (H_K kron H_{d/K}) / sqrt(d)`` (a
  hard-coded Hadamard matrix ``H_K`` of order K in {12, 20, ..., 172} on the
  slow index when ``d`` is not a power of two, Sylvester ``H`` on the fast index);
* HF-style Llama files fuse q/k/v into ``self_attn.qkv_proj`` and gate/up into
  ``mlp.upgate_proj``, each output part multiplied by ``fuse_scales.<i>``.

HI4B1C (codebook 10): ``G = idx - 7.5`` for 4-bit ``idx``, packed 8 per int32
``[m, n/8]`` with nibble order (from the top nibble down) 0, 2, 4, 6, 1, 3, 5, 7.

Mapping to codec ``quip`` v1 (``X = (2q - L) * scale[r]``, ``Wd = diag(sv) D_m X D_n^T diag(su)``,
``D = F kron Hhat``): ``codes`` = the HI4B1C indices (bit for bit), ``L = 15``,
``scale[r] = c * Wscale / 2`` where ``|SV| = c`` for every row, ``su = sign(SU)``,
``sv = sign(SV)``, ``log2_hn = log2 n``, ``log2_hm = log2 m``. Equal to the source's
effective weight in exact arithmetic; the decoded f32 tensor follows the quip
spec's rounding (the source never materialises W: it transforms activations in
f16/f32 with cuBLAS, which defines no bit pattern to match).

What codec ``quip`` v1 cannot hold (the importer stops and names it):

* ``codebook_id`` 7 (E8P12, QuIP#'s default 2-bit lattice codebook, and its
  RVQ 3/4-bit variants) and 0 (D4): v1 has only the uniform grid (quip.md §10);
* ``SU`` with an entry of magnitude != 1, or ``SV`` whose magnitudes differ
  between rows (fine-tuned models): ``su``/``sv`` are i8 signs, and a per-row
  factor after the output Hadamard cannot move into the per-row ``scale``;
* ``n`` or ``m`` not a power of two: the factor ``H_K / sqrt(K)`` would go into
  ``factor_n``/``factor_m`` (rounded to f32 per entry, not the source's single
  1/sqrt(d)), and ``H_K`` itself is a table in QuIP#'s source code, not in the
  checkpoint;
* fused layers with unequal ``fuse_scales`` (a per-part factor after the output
  Hadamard); fused layers are also not the per-projection names transformers' models use.
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

from ..writer import Writer
from .spqr_quant import EXTRA_FILES
from .squeezellm import NotRepresentable, load_state

HI4B1C = 10
CODEBOOK_NAMES = {0: "D4", 7: "E8P12", 10: "HI4B1C"}
ROLES = ("Qidxs", "SU", "SV", "Wscale", "codebook_id")
# Nibble position (bit shift) of the j-th index of a packed group of 8.
NIBBLE_SHIFT = (28, 12, 24, 8, 20, 4, 16, 0)


@dataclass
class QuipImportReport:
    output: Path
    quantized: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)


def unpack_hi4b1c(qidxs: np.ndarray, n: int) -> np.ndarray:
    """Packed HI4B1C indices int32 [m, n/8] -> uint8 [m, n]."""
    q = np.ascontiguousarray(qidxs).view(np.uint32)
    if q.shape[1] * 8 != n:
        raise ValueError(f"Qidxs has {q.shape[1]} words per row, {n} inputs need {n // 8}")
    out = np.empty((q.shape[0], n), dtype=np.uint8)
    for j, s in enumerate(NIBBLE_SHIFT):
        out[:, j::8] = (q >> np.uint32(s)) & np.uint32(15)
    return out


def _log2_exact(d: int, what: str) -> int:
    if d < 1 or d & (d - 1):
        raise NotRepresentable(
            f"{what} = {d} is not a power of two: QuIP# uses a Hadamard table H_K of order K = "
            f"{d // (d & -d)} there, which is part of QuIP#'s source code, not of the checkpoint")
    return d.bit_length() - 1


def to_quip_sections(qidxs: np.ndarray, su: np.ndarray, sv: np.ndarray, wscale: float, codebook_id: int,
                     n: int, *, name: str = "") -> tuple[dict[str, Any], dict[str, Any], tuple[int, int]]:
    """(params, sections, shape) of codec ``quip`` v1 for one HI4B1C layer (or NotRepresentable)."""
    if codebook_id != HI4B1C:
        raise NotRepresentable(
            f"{name}.codebook_id = {codebook_id} ({CODEBOOK_NAMES.get(codebook_id, 'unknown')}): codec quip v1 "
            "has only the uniform grid; lattice codebooks (E8P12, D4, RVQ) need a future quip version")
    su = np.asarray(su, dtype=np.float32).reshape(-1)
    sv = np.asarray(sv, dtype=np.float32).reshape(-1)
    m = sv.size
    if su.size != n:
        raise ValueError(f"{name}: SU has {su.size} entries, n = {n}")
    kn, km = _log2_exact(n, f"{name} in_features"), _log2_exact(m, f"{name} out_features")
    if not np.all(np.abs(su) == 1):
        raise NotRepresentable(f"{name}.SU: entries of magnitude != 1 (fine-tuned); codec quip v1 su is i8 +-1")
    mag = np.abs(sv)
    if not np.all(mag == mag[0]) or mag[0] == 0:
        raise NotRepresentable(f"{name}.SV: magnitudes differ between rows (fine-tuned); codec quip v1 sv is i8 "
                               "+-1 and a per-row factor after the output Hadamard has no place in it")
    codes = unpack_hi4b1c(qidxs, n)
    if codes.shape[0] != m:
        raise ValueError(f"{name}: Qidxs has {codes.shape[0]} rows, SV {m}")
    from ..encoder.packing import pack_rows

    scale = np.full(m, np.float32(np.float64(mag[0]) * np.float64(wscale) / 2.0), dtype=np.float32)
    sections = {
        "codes": pack_rows(codes.astype(np.int64), 4),
        "scale": scale,
        "su": np.where(su < 0, -1, 1).astype(np.int8),
        "sv": np.where(sv < 0, -1, 1).astype(np.int8),
    }
    return {"bits": 4, "log2_hn": kn, "log2_hm": km}, sections, (m, n)


def reference_weight(qidxs: np.ndarray, su: np.ndarray, sv: np.ndarray, wscale: float) -> np.ndarray:
    """QuIP#'s effective HI4B1C weight in float64 (power-of-two dims): diag(SV) Had_m (Wscale G) Had_n diag(SU)."""
    su = np.asarray(su, np.float64).reshape(-1)
    sv = np.asarray(sv, np.float64).reshape(-1)
    n, m = su.size, sv.size
    G = unpack_hi4b1c(qidxs, n).astype(np.float64) - 7.5

    def had(d: int) -> np.ndarray:
        h = np.ones((1, 1))
        while h.shape[0] < d:
            h = np.block([[h, h], [h, -h]])
        return h / np.sqrt(d)

    return sv[:, None] * (had(m) @ (wscale * G) @ had(n)) * su[None, :]


def import_quipsharp(src: str | os.PathLike[str], output: str | os.PathLike[str], *,
                     config_dir: str | os.PathLike[str] | None = None,
                     log: Callable[[str], None] | None = None) -> QuipImportReport:
    """QuIP# HF-style folder (``*.safetensors`` + config.json) or a single state-dict file -> ``.spqr``."""
    p = Path(src)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {p}")
    state: dict[str, np.ndarray] = {}
    for f in files:
        state.update(load_state(f))
    cdir = Path(config_dir) if config_dir else (p if p.is_dir() else None)
    meta: dict[str, Any] = {"source.model": str(src), "source.format": "quipsharp"}
    if cdir is not None and (cdir / "config.json").is_file():
        cfg = json.loads((cdir / "config.json").read_text(encoding="utf-8"))
        qp = cfg.pop("quip_params", None)
        cfg.pop("quantization_config", None)
        if qp is not None:
            meta["source.quip_params"] = json.dumps(qp)
        meta["hf.config"] = json.dumps(cfg, indent=2)
        for name in EXTRA_FILES:
            if (cdir / name).is_file():
                meta[f"hf.files/{name}"] = (cdir / name).read_bytes()
    prefixes = sorted(k[: -len(".Qidxs")] for k in state if k.endswith(".Qidxs"))
    for pr in prefixes:
        fs = sorted(k for k in state if k.startswith(f"{pr}.fuse_scales"))
        if fs:
            vals = np.concatenate([np.asarray(state[k], np.float32).reshape(-1) for k in fs])
            raise NotRepresentable(
                f"{pr}: fused layer ({len(fs)} parts, fuse_scales {vals.tolist()}); its output Hadamard mixes the "
                "parts, so they cannot become separate q/k/v (gate/up) tensors, and unequal part scales have no "
                "place in codec quip v1")
    consumed = {f"{pr}.{r}" for pr in prefixes for r in ROLES}
    report = QuipImportReport(Path(output))
    with Writer(output, metadata=meta) as w:
        for name in sorted(state):
            if name in consumed or name.endswith((".had_left", ".had_right", ".had_left_T")):
                continue
            w.add_raw(name, np.ascontiguousarray(state[name]))
            report.raw.append(name)
        for pr in prefixes:
            su = state[f"{pr}.SU"]
            cid = int(np.asarray(state.get(f"{pr}.codebook_id", np.array(HI4B1C))).reshape(-1)[0])
            wscale = float(np.asarray(state.get(f"{pr}.Wscale", np.array(1.0)), np.float64).reshape(-1)[0])
            params, sections, shape = to_quip_sections(state[f"{pr}.Qidxs"], su, state[f"{pr}.SV"], wscale, cid,
                                                       int(np.asarray(su).size), name=pr)
            w.add(f"{pr}.weight", shape=shape, dtype="f16", codec="quip", params=params, sections=sections)
            report.quantized.append(f"{pr}.weight")
            if log:
                log(f"  {pr}.weight {list(shape)} HI4B1C -> quip 4-bit")
    return report


def cli_import(args: Any) -> int:
    rep = import_quipsharp(args.src, args.output, config_dir=getattr(args, "config", None),
                           log=(lambda s: print(s, file=sys.stderr)) if getattr(args, "verbose", False) else None)
    print(f"{rep.output}: {len(rep.quantized)} quip layers, {len(rep.raw)} raw tensors (exact in exact arithmetic; "
          "decoded with codec quip v1's f32 rounding)")
    return 0


__all__ = ["NotRepresentable", "QuipImportReport", "import_quipsharp", "reference_weight", "to_quip_sections",
           "unpack_hi4b1c"]
