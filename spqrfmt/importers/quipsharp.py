"""Import QuIP# Hugging Face-style checkpoints into codec ``quip`` (v1 where it fits, v2 for E8P12 and real SU/SV).

Source format (facts read from Cornell-RelaxML/quip-sharp ``lib/linear/quantized_linear.py``,
``lib/codebook/latticee8_padded12.py``, ``quiptools/quiptools_e8p_gemv.cu``, ``lib/algo/quip.py``,
``lib/utils/matmul_had.py``, ``quantize_llama/hfize_llama.py``; re-implemented from those facts).
Per quantized layer ``P`` (``in`` = n, ``out`` = m):

* ``P.Qidxs``: codebook indices; ``P.codebook_id`` (0 = D4, 7 = E8P12, 10 = HI4B1C,
  17/18 = E8P12 + residual 4/3-bit);
* ``P.SU`` ``[n]``, ``P.SV`` ``[m]`` (f16): input/output scalings, +-1 at quantization
  (``SV`` then carries the fused ``Wscale``), arbitrary reals after QuIP#'s fine-tuning;
* ``P.Wscale`` (scalar; QuIP# multiplies it into ``SV`` at load; current files store 1);
* forward: ``y = SV * Had_m( Wscale * G @ Had_n(SU * x) )`` with ``G[o, i]`` the
  codebook value of ``Qidxs`` (QuIP# divides by 32 before and multiplies by 32 after
  the product, exactly cancelling) and ``Had_d = (H_K kron H_{d/K}) / sqrt(d)``
  (a hard-coded +-1 Hadamard matrix ``H_K``, K = 4 * odd part of d in {12, 20, ..., 172},
  on the slow index when ``d`` is not a power of two; Sylvester ``H`` in natural order
  on the fast index); the input side uses ``H_K^T`` (``had_left_T``): ``Had_n^T`` there;
* HF-style Llama files fuse q/k/v into ``self_attn.qkv_proj`` (rows q, k, v) and up/gate
  into ``mlp.upgate_proj`` (rows up, then gate), one ``Qidxs``/``SU``/``SV``/``Wscale``
  for the whole fused matrix, each output part then multiplied by ``fuse_scales[i]``;
  ``P.scaleWH`` (``rescale_WH``) divides the input; ``P.A``/``P.B`` add a low-rank term.

E8P12 (codebook 7, codebook version 1): one 16-bit code per 8 consecutive inputs, exactly
the code of spec/codecs/quip.md §10.4 (table row ``code >> 8``, sign byte ``code & 255``).
``Qidxs`` is int64 ``[m, n/32]``; read as a flat sequence of 64-bit words, word ``w`` of
tile ``(a, c, b, d)`` (``w = ((a * n/64 + c) * 8 + b) * 4 + d``; ``a < m/16``, ``c < n/64``,
``b < 8``, ``d < 4``) holds four codes ``k = 0..3`` of row ``16a + 2b + (k & 1)`` and
8-column group ``8c + 2d + (k >> 1)``: bits ``8k .. 8k+7`` are the code's table row and
bit ``32 + 4j + k`` is bit ``j`` of its sign byte.

HI4B1C (codebook 10): ``G = idx - 7.5`` for 4-bit ``idx``, packed 8 per int32
``[m, n/8]`` with nibble order (from the top nibble down) 0, 2, 4, 6, 1, 3, 5, 7.

Mapping (``Wd = diag(sv) D_m X D_n^T diag(su)``, ``D = F kron Hhat``): ``F = H_K / sqrt(K)``
(f32, sections ``factor_n``/``factor_m``) from a user-supplied table (``--hadamard``; QuIP#'s
code holds it, the checkpoint does not), absent for power-of-two sizes. Fused layers stay
one quip tensor ``<fused>.weight`` (the output Hadamard mixes the parts) with
``fuse_scales`` multiplied into ``sv`` per part (f32-rounded unless all are 1); metadata
``spqrfmt.fused`` lists ``[[part weight name, rows], ...]`` for the loader to slice.

* E8P12 -> ``quip`` v2, codebook "e8p12": ``codes`` = the 16-bit codes (bit for bit),
  ``scale[r] = Wscale`` (exact in f32), ``su = SU``, ``sv = SV`` (i8 when every entry is
  +-1, else the source's f16/f32 values unchanged).
* E8P12RVQ4B / E8P12RVQ3B (codebook versions 1 / 0) -> ``quip`` v2, codebook "e8p12_rvq4" /
  "e8p12_rvq3" (quip.md §10.11): ``Qidxs`` int64 ``[m, n/16]`` is two E8P12-tiled planes side by
  side (first stage, then residual); ``[m, 3n/64]`` is an E8P12-tiled plane then ``n/64`` words
  whose little-endian bytes are the E81B codes of the 8-column groups in order.
  ``W = Wscale * (G0 + G1 / rho)``, ``rho`` = 3.45 / 2.04 (``opt_resid_scale``) unless the config's
  ``quip_params.resid_scale_override`` is positive; stored as ``resid_scale`` rounded to binary32.
* HI4B1C with +-1 ``SU`` and equal ``|SV|`` -> ``quip`` v1 as before: ``L = 15``,
  ``scale[r] = |SV| * Wscale / 2``, ``su = sign(SU)``, ``sv = sign(SV)``; otherwise (fine-tuned)
  -> ``quip`` v2 codebook "grid": ``scale[r] = Wscale / 2``, ``su = SU``, ``sv = SV``.

Equal to the source's effective weight in exact arithmetic; the decoded f32 tensor follows
the quip spec's rounding (QuIP# never materialises W: it transforms activations in f16/f32
with cuBLAS, which defines no bit pattern to match).

Not representable (the importer stops and names the field): codebook ids other than 7, 10,
17 and 18; E8P12/RVQ of another codebook version; ``n`` or ``m`` = K * 2^k without a ``--hadamard``
table of order K (the message names K and where QuIP#'s table is); a fused layer whose
split the config does not give; ``scaleWH`` other than 1; a non-empty low-rank ``A``/``B``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..hf.checkpoint import base_model_metadata, read_config
from ..paths import display_name
from ..writer import Writer
from .common import NotRepresentable, load_state

D4, E8P12, HI4B1C, E8P12_RVQ4B, E8P12_RVQ3B = 0, 7, 10, 17, 18
CODEBOOK_NAMES = {D4: "D4", E8P12: "E8P12", HI4B1C: "HI4B1C", E8P12_RVQ4B: "E8P12RVQ4B",
                  E8P12_RVQ3B: "E8P12RVQ3B"}
E8P_CODEBOOK_VERSION = 1  # QuIP#'s ``codebook_version`` of the packed int64 Qidxs layout above
# The ``codebook_version`` QuIP#'s code expects for each codebook id whose Qidxs layout is read here.
CODEBOOK_VERSIONS = {E8P12: E8P_CODEBOOK_VERSION, E8P12_RVQ4B: 1, E8P12_RVQ3B: 0}
# QuIP#'s default residual scales (``opt_resid_scale``) and the quip v2 codebook of each RVQ id (quip.md §10.11).
RESID_SCALE_DEFAULT = {E8P12_RVQ4B: 3.45, E8P12_RVQ3B: 2.04}
RVQ_CODEBOOK = {E8P12_RVQ4B: "e8p12_rvq4", E8P12_RVQ3B: "e8p12_rvq3"}
ROLES = ("Qidxs", "SU", "SV", "Wscale", "codebook_id")
# Nibble position (bit shift) of the j-th index of a packed group of 8.
NIBBLE_SHIFT = (28, 12, 24, 8, 20, 4, 16, 0)


@dataclass
class QuipImportReport:
    output: Path
    quantized: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)


@dataclass
class QuipTensor:
    """One layer as codec ``quip``: what ``Writer.add`` needs."""

    params: dict[str, Any]
    sections: dict[str, Any]
    shape: tuple[int, int]
    codec_version: int


def unpack_hi4b1c(qidxs: np.ndarray, n: int) -> np.ndarray:
    """Packed HI4B1C indices int32 [m, n/8] -> uint8 [m, n]."""
    q = np.ascontiguousarray(qidxs).view(np.uint32)
    if q.shape[1] * 8 != n:
        raise ValueError(f"Qidxs has {q.shape[1]} words per row, {n} inputs need {n // 8}")
    out = np.empty((q.shape[0], n), dtype=np.uint8)
    for j, s in enumerate(NIBBLE_SHIFT):
        out[:, j::8] = (q >> np.uint32(s)) & np.uint32(15)
    return out


def untile_e8p(qidxs: np.ndarray, m: int, n: int, *, name: str = "") -> np.ndarray:
    """QuIP#'s tiled int64 E8P12 ``Qidxs`` [m, n/32] -> u16 codes [m, n/8] in row order (lossless)."""
    q = np.asarray(qidxs)
    if q.dtype != np.int64 or q.shape != (m, n // 32) or m % 16 or n % 64:
        raise NotRepresentable(
            f"{name}.Qidxs: {q.dtype}{list(q.shape)} is not E8P12 codebook version {E8P_CODEBOOK_VERSION}'s "
            f"packed layout (int64 [m, n/32] = [{m}, {n // 32}], m % 16 == 0, n % 64 == 0)")
    w = np.ascontiguousarray(q).view(np.uint64).reshape(m // 16, n // 64, 8, 4)  # [a, c, b, d]
    lo, hi = w & np.uint64(0xFFFFFFFF), w >> np.uint64(32)
    out = np.empty((m // 16, 8, 2, n // 64, 4, 2), dtype=np.uint16)  # [a, b, row&1, c, d, group&1]
    for k in range(4):
        row = (lo >> np.uint64(8 * k)) & np.uint64(255)
        signs = np.zeros_like(row)
        for j in range(8):
            signs |= ((hi >> np.uint64(4 * j + k)) & np.uint64(1)) << np.uint64(j)
        out[:, :, k & 1, :, :, k >> 1] = ((row << np.uint64(8)) | signs).astype(np.uint16).transpose(0, 2, 1, 3)
    return out.reshape(m, n // 8)


def split_rvq(qidxs: np.ndarray, codebook_id: int, m: int, n: int, *, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """QuIP#'s RVQ ``Qidxs`` -> (u16 first-stage codes [m, n/8], second-stage codes [m, n/8]) (quip.md §10.11).

    E8P12RVQ4B: int64 [m, n/16] = two tiled E8P12 planes side by side (second one u16 after untiling);
    E8P12RVQ3B: int64 [m, 3n/64] = a tiled E8P12 plane, then n/64 words of little-endian E81B bytes (u8).
    """
    q = np.asarray(qidxs)
    words = n // 16 if codebook_id == E8P12_RVQ4B else 3 * n // 64
    if q.dtype != np.int64 or q.shape != (m, words) or m % 16 or n % 64:
        raise NotRepresentable(
            f"{name}.Qidxs: {q.dtype}{list(q.shape)} is not {CODEBOOK_NAMES[codebook_id]}'s packed layout "
            f"(int64 [m, {'n/16' if codebook_id == E8P12_RVQ4B else '3n/64'}] = [{m}, {words}], "
            "m % 16 == 0, n % 64 == 0)")
    q = np.ascontiguousarray(q)
    first = untile_e8p(np.ascontiguousarray(q[:, : n // 32]), m, n, name=name)
    rest = np.ascontiguousarray(q[:, n // 32:])
    if codebook_id == E8P12_RVQ4B:
        return first, untile_e8p(rest, m, n, name=name)
    return first, rest.astype("<i8").view(np.uint8).reshape(m, n // 8).copy()


def quip_hadamard_order(d: int) -> int:
    """The order K of QuIP#'s Hadamard table for a dimension d (1 for a power of two).

    QuIP#'s tables have orders 4 * q for odd q (12, 20, 28, ..., 172), one per odd part q,
    and it requires d / K to be a power of two.
    """
    q = d // (d & -d) if d > 0 else 0
    return 1 if q == 1 else 4 * q


def read_hadamard(path: str | os.PathLike[str]) -> np.ndarray:
    """A +-1 Hadamard matrix from text (Sloane's rows of '+'/'-', or +-1 integers) as int8 [K, K].

    Checked exactly: square, entries +-1, ``H Hᵀ = K I`` in integer arithmetic.
    """
    rows: list[list[int]] = []
    for ln, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        t = line.strip()
        if not t:
            continue
        if set(t) <= set("+- \t"):
            vals = [1 if c == "+" else -1 for c in t if c in "+-"]
        else:
            try:
                vals = [int(v) for v in t.replace(",", " ").split()]
            except ValueError:
                raise ValueError(f"{path}:{ln}: not a row of '+'/'-' characters or +-1 integers") from None
        if any(v not in (1, -1) for v in vals):
            raise ValueError(f"{path}:{ln}: entries must be +1 or -1")
        rows.append(vals)
    k = len(rows)
    if k == 0 or any(len(r) != k for r in rows):
        raise ValueError(f"{path}: not a square matrix ({k} rows, lengths {sorted({len(r) for r in rows})})")
    h = np.array(rows, dtype=np.int8)
    g = h.astype(np.int64) @ h.astype(np.int64).T
    if not np.array_equal(g, k * np.eye(k, dtype=np.int64)):
        raise ValueError(f"{path}: not a Hadamard matrix (H Hᵀ != {k} I)")
    return h


# SHA-256 of QuIP#'s own +-1 tables (row-major bytes, 1 for +1 and 0 for -1), read from quip-sharp's
# lib/utils/matmul_had.py (get_had12 .. get_had172, commit 1d8f873). Only the digests are kept: they let the
# importer tell QuIP#'s matrix from any other Hadamard matrix of the same order, which would pass every
# structural check and silently decode to different weights.
QUIPSHARP_HADAMARD_SHA256: dict[int, str] = {
    12: "c1be30fecbc13e7e475b0deabb92352b7210407fe494be276878be3e43ba69bb",
    20: "cff143e84622972bf8fffa0759340640c046ec5879deeb8d95d038282ef1cdda",
    28: "90e9b61e93164eb5aede6c0a5f5539ba418b69484589748c7c3119b351cd0d85",
    36: "147097e41d5a37076143c1be0f028b10754a72ad3f1f7f72c81b5f8aa76342f7",
    52: "9aa6bec96394cfca64f56aaacdc9378beb57da5512e3a80713465e68b63ad5ce",
    60: "e0d3fe922af47d1e588204a355745f282f46828441471a07ec961431c76d2403",
    108: "f2515b85a3163765111b92720629458e3f38e241dd83224b10852eed89535b1f",
    116: "54ed86047196455deda5bd65f93394d3060263e5f659c3e4c8d8d3ce68770e9a",
    124: "d8b24cc196d0c5a6469ad9a2728aa88f921fe16bd464c3d345285dae817e12fb",
    140: "2b20c54cd8c49cdc0a36c9d323380c5c9c95c16538d7c9eeb7e69b23f1ab944d",
    156: "1f9950c8e2e00ddc521f8b7ac6d6e559bf3da8036b7fdaefba3d4a22b6a6acf6",
    172: "ac825f9b6bbb0ae4f90e3b3578efc414c6ade55231ec45839f25e124446dd6ac",
}


def hadamard_sha256(h: np.ndarray) -> str:
    """Digest of a +-1 matrix: SHA-256 of its row-major bytes, 1 for +1 and 0 for -1."""
    return hashlib.sha256(np.where(np.asarray(h) > 0, 1, 0).astype(np.uint8).tobytes()).hexdigest()


def read_hadamard_py(path: str | os.PathLike[str]) -> dict[int, np.ndarray]:
    """The +-1 tables of quip-sharp's ``lib/utils/matmul_had.py`` (``get_had<K>()`` functions), by order K.

    The file is parsed, never executed: each function's first list literal is read with
    ``ast.literal_eval`` and checked like :func:`read_hadamard`. So a user can point the importer
    at their own quip-sharp checkout instead of transcribing the tables.
    """
    import ast

    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    out: dict[int, np.ndarray] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.FunctionDef) and re.fullmatch(r"get_had\d+", node.name)):
            continue
        lit = next((n for n in ast.walk(node) if isinstance(n, ast.List)), None)
        if lit is None:
            continue
        try:
            h = np.array(ast.literal_eval(lit), dtype=np.int64)
        except (ValueError, TypeError, SyntaxError):
            raise ValueError(f"{path}: {node.name}() does not hold a literal +-1 matrix") from None
        k = h.shape[0] if h.ndim == 2 else 0
        if h.ndim != 2 or h.shape[1] != k or not np.isin(h, (-1, 1)).all() or not np.array_equal(
                h @ h.T, k * np.eye(k, dtype=np.int64)):
            raise ValueError(f"{path}: {node.name}() is not a +-1 Hadamard matrix")
        out[k] = h.astype(np.int8)
    if not out:
        raise ValueError(f"{path}: no get_had<K>() tables found")
    return out


def hadamard_factor(h: np.ndarray) -> np.ndarray:
    """The explicit quip factor F = H_K / sqrt(K) (f32 rounding of the f64 quotient)."""
    return (np.asarray(h, np.float64) / np.sqrt(h.shape[0])).astype(np.float32)


def _side(d: int, what: str, hadamards: Mapping[int, np.ndarray]) -> tuple[int, np.ndarray | None]:
    """(log2 of the Sylvester part, explicit factor or None) for one dimension, as QuIP# transforms it."""
    k = quip_hadamard_order(d)
    if d < 1 or d % k or (d // k) & (d // k - 1):
        raise NotRepresentable(f"{what} = {d}: QuIP# has no Hadamard transform of this size "
                               f"(it needs d = K * 2^k with K = 4 * odd part = {k})")
    if k == 1:
        return d.bit_length() - 1, None
    h = hadamards.get(k)
    if h is None:
        raise NotRepresentable(
            f"{what} = {d} = {k} * {d // k}: QuIP# multiplies by a hard-coded Hadamard matrix H_{k} of order "
            f"K = {k}, which is not in the checkpoint; pass it with --hadamard FILE (a +-1 matrix of order {k}: "
            f"get_had{k}() in quip-sharp's lib/utils/matmul_had.py, taken from N. J. A. Sloane's Hadamard library, "
            f"file had.{k}.*.txt; it must be the very matrix QuIP# used)")
    return (d // k).bit_length() - 1, hadamard_factor(h)


def diagonal_section(x: np.ndarray, what: str) -> np.ndarray:
    """A v2 ``su``/``sv`` section holding x exactly: i8 if all +-1, else f16/f32 (the narrowest exact one)."""
    x = np.asarray(x).reshape(-1)
    if x.size and np.all((x == 1) | (x == -1)):
        return np.where(x < 0, -1, 1).astype(np.int8)
    if x.dtype in (np.float16, np.float32):
        return np.ascontiguousarray(x)
    x32 = x.astype(np.float32)
    if not np.array_equal(x32.astype(x.dtype), x, equal_nan=True):
        raise NotRepresentable(f"{what}: {x.dtype} values that are not f32 values")
    return x32


def _f32_exact(v: np.ndarray | float, what: str) -> np.float32:
    a = np.asarray(v).reshape(-1)
    if a.size != 1:
        raise ValueError(f"{what}: expected a scalar, got shape {list(np.asarray(v).shape)}")
    f = np.float32(a[0])
    if not (np.float64(f) == np.float64(a[0]) or (np.isnan(f) and np.isnan(a[0]))):
        raise NotRepresentable(f"{what} = {a[0]!r} is not an f32 value")
    return f


def to_quip_sections(qidxs: np.ndarray, su: np.ndarray, sv: np.ndarray, wscale: np.ndarray | float,
                     codebook_id: int, n: int, *, name: str = "",
                     hadamards: Mapping[int, np.ndarray] | None = None,
                     resid_scale: float | None = None) -> QuipTensor:
    """Codec ``quip`` tensor for one QuIP# layer (E8P12, E8P12RVQ4B/3B or HI4B1C), or NotRepresentable naming the field.

    ``hadamards``: QuIP#'s +-1 tables by order K, needed when n or m is K * 2^k with K > 1.
    ``resid_scale``: the RVQ codebooks' residual scale (QuIP#'s ``resid_scale_override`` when positive;
    default its ``opt_resid_scale``), stored rounded to binary32.
    """
    if codebook_id not in (E8P12, HI4B1C, E8P12_RVQ4B, E8P12_RVQ3B):
        raise NotRepresentable(
            f"{name}.codebook_id = {codebook_id} ({CODEBOOK_NAMES.get(codebook_id, 'unknown')}): codec quip holds "
            "E8P12, E8P12RVQ4B, E8P12RVQ3B (v2) and HI4B1C; D4 has no quip codebook")
    su, sv = np.asarray(su).reshape(-1), np.asarray(sv).reshape(-1)
    m = sv.size
    if su.size != n:
        raise ValueError(f"{name}: SU has {su.size} entries, n = {n}")
    kn, fn = _side(n, f"{name} in_features", hadamards or {})
    km, fm = _side(m, f"{name} out_features", hadamards or {})
    factors = {r: f for r, f in (("factor_n", fn), ("factor_m", fm)) if f is not None}
    if codebook_id in RVQ_CODEBOOK:
        qt = _rvq_sections(qidxs, su, sv, wscale, codebook_id, n, m, kn, km, name, resid_scale)
    else:
        qt = _quip_sections(qidxs, su, sv, wscale, codebook_id, n, m, kn, km, name)
    qt.sections.update(factors)
    return qt


def _rvq_sections(qidxs: np.ndarray, su: np.ndarray, sv: np.ndarray, wscale: np.ndarray | float, codebook_id: int,
                  n: int, m: int, kn: int, km: int, name: str, resid_scale: float | None) -> QuipTensor:
    ws = _f32_exact(wscale, f"{name}.Wscale")
    rho = float(RESID_SCALE_DEFAULT[codebook_id] if resid_scale is None else resid_scale)
    rho32 = float(np.float32(rho))
    if not (2.0**-16 <= rho32 <= 2.0**16):
        raise NotRepresentable(f"{name}: residual scale {rho!r} is outside quip's [2^-16, 2^16] (quip.md §10.11)")
    codes, codes2 = split_rvq(qidxs, codebook_id, m, n, name=name)
    sections = {"codes": codes, "codes2": codes2, "scale": np.full(m, ws, dtype=np.float32),
                "su": diagonal_section(su, f"{name}.SU"), "sv": diagonal_section(sv, f"{name}.SV")}
    params = {"codebook": RVQ_CODEBOOK[codebook_id], "resid_scale": rho32, "log2_hn": kn, "log2_hm": km}
    return QuipTensor(params, sections, (m, n), 2)


def _quip_sections(qidxs: np.ndarray, su: np.ndarray, sv: np.ndarray, wscale: np.ndarray | float,
                   codebook_id: int, n: int, m: int, kn: int, km: int, name: str) -> QuipTensor:
    ws = _f32_exact(wscale, f"{name}.Wscale")
    if codebook_id == E8P12:
        codes = untile_e8p(qidxs, m, n, name=name)
        sections = {"codes": codes, "scale": np.full(m, ws, dtype=np.float32),
                    "su": diagonal_section(su, f"{name}.SU"), "sv": diagonal_section(sv, f"{name}.SV")}
        return QuipTensor({"codebook": "e8p12", "log2_hn": kn, "log2_hm": km}, sections, (m, n), 2)
    from ..encoder.packing import pack_rows

    idx = unpack_hi4b1c(qidxs, n)
    if idx.shape[0] != m:
        raise ValueError(f"{name}: Qidxs has {idx.shape[0]} rows, SV {m}")
    codes = pack_rows(idx.astype(np.int64), 4)
    mag = np.abs(sv.astype(np.float64))
    if np.all(np.abs(su) == 1) and np.all(mag == mag[0]) and mag[0] != 0:
        scale = np.full(m, np.float32(mag[0] * np.float64(ws) / 2.0), dtype=np.float32)
        sections = {"codes": codes, "scale": scale, "su": np.where(su < 0, -1, 1).astype(np.int8),
                    "sv": np.where(sv < 0, -1, 1).astype(np.int8)}
        return QuipTensor({"bits": 4, "log2_hn": kn, "log2_hm": km}, sections, (m, n), 1)
    sections = {"codes": codes, "scale": np.full(m, np.float32(np.float64(ws) / 2.0), dtype=np.float32),
                "su": diagonal_section(su, f"{name}.SU"), "sv": diagonal_section(sv, f"{name}.SV")}
    return QuipTensor({"codebook": "grid", "bits": 4, "log2_hn": kn, "log2_hm": km}, sections, (m, n), 2)


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


def _refuse_extras(state: dict[str, np.ndarray], pr: str) -> None:
    """Fields of layer ``pr`` that change its weight but have no place in codec quip."""
    wh = state.get(f"{pr}.scaleWH")
    if wh is not None and not np.all(np.asarray(wh) == 1):
        raise NotRepresentable(f"{pr}.scaleWH: input rescaling (rescale_WH) other than 1 has no quip section")
    for k in ("A", "B"):
        a = state.get(f"{pr}.{k}")
        if a is not None and np.asarray(a).size:
            raise NotRepresentable(f"{pr}.{k}: low-rank correction term has no quip section")


def fused_parts(pr: str, m: int, nparts: int, cfg: Mapping[str, Any] | None) -> list[tuple[str, int]]:
    """(part weight name, rows) of a fused QuIP# layer, in QuIP#'s output order (q, k, v; up, gate)."""
    base, _, leaf = pr.rpartition(".")
    base = f"{base}." if base else ""
    cfg = cfg or {}
    if leaf == "qkv_proj" and "num_attention_heads" in cfg and "hidden_size" in cfg:
        heads = int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        hd = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
        parts = [(f"{base}q_proj.weight", heads * hd), (f"{base}k_proj.weight", kv * hd),
                 (f"{base}v_proj.weight", kv * hd)]
    elif leaf == "upgate_proj" and "intermediate_size" in cfg:
        i = int(cfg["intermediate_size"])
        parts = [(f"{base}up_proj.weight", i), (f"{base}gate_proj.weight", i)]
    else:
        raise NotRepresentable(
            f"{pr}.fuse_scales: fused layer of {nparts} parts, but its split is unknown (QuIP# fuses "
            "self_attn.qkv_proj = q, k, v and mlp.upgate_proj = up, gate; sizes come from config.json)")
    if len(parts) != nparts or sum(r for _, r in parts) != m:
        raise NotRepresentable(
            f"{pr}: fused layer with {nparts} fuse_scales and {m} output rows does not split as the config "
            f"says ({[(p, r) for p, r in parts]})")
    return parts


def _fold_fuse_scales(sv: np.ndarray, fs: np.ndarray, parts: list[tuple[str, int]], name: str) -> np.ndarray:
    """SV with each part's fuse scale multiplied in (unchanged when every scale is 1; else f32-rounded)."""
    sv = np.asarray(sv).reshape(-1)
    fs = np.asarray(fs).reshape(-1).astype(np.float64)
    if np.all(fs == 1):
        return sv
    rows = np.repeat(fs, [r for _, r in parts])
    out = (sv.astype(np.float64) * rows).astype(np.float32)
    if not np.all(np.isfinite(out) | ~np.isfinite(sv.astype(np.float64) * rows)):
        raise NotRepresentable(f"{name}.fuse_scales: SV * fuse_scales overflows f32")
    return out


def import_quipsharp(src: str | os.PathLike[str], output: str | os.PathLike[str], *,
                     config_dir: str | os.PathLike[str] | None = None,
                     hadamard_files: list[str | os.PathLike[str]] | tuple[()] = (),
                     allow_unverified_hadamard: bool = False,
                     log: Callable[[str], None] | None = None) -> QuipImportReport:
    """QuIP# HF-style folder (``*.safetensors`` + config.json) or a single state-dict file -> ``.spqr``.

    ``hadamard_files``: QuIP#'s +-1 Hadamard tables (one order each, or quip-sharp's ``matmul_had.py``
    holding all of them) for dimensions K * 2^k. Each must be
    QuIP#'s own matrix (checked against :data:`QUIPSHARP_HADAMARD_SHA256`) unless
    ``allow_unverified_hadamard``: another Hadamard matrix of the same order decodes to different weights.
    """
    hadamards: dict[int, np.ndarray] = {}
    supplied = [(hf, h) for hf in hadamard_files
                for h in (read_hadamard_py(hf).values() if str(hf).endswith(".py") else [read_hadamard(hf)])]
    for hf, h in supplied:
        k = h.shape[0]
        if k in hadamards and not np.array_equal(hadamards[k], h):
            raise ValueError(f"{hf}: a second, different Hadamard matrix of order {k}")
        digest = hadamard_sha256(h)
        if QUIPSHARP_HADAMARD_SHA256.get(k) != digest and not allow_unverified_hadamard:
            known = "QuIP# has no table of this order" if k not in QUIPSHARP_HADAMARD_SHA256 else (
                f"QuIP#'s H_{k} has sha256 {QUIPSHARP_HADAMARD_SHA256[k]}")
            raise ValueError(f"{hf}: a Hadamard matrix of order {k} (sha256 {digest}) that is not the one QuIP# "
                             f"used ({known}); any other matrix decodes to different weights. Take get_had{k}() "
                             "from quip-sharp's lib/utils/matmul_had.py (rows of +1/-1), or pass "
                             "--allow-unverified-hadamard if the checkpoint was made with this matrix")
        hadamards[k] = h
    p = Path(src)
    state = load_state(p)
    cdir = Path(config_dir) if config_dir else (p if p.is_dir() else None)
    meta: dict[str, Any] = {"source.model": display_name(src), "source.format": "quipsharp"}
    qp: dict[str, Any] | None = None
    cfg = read_config(cdir) if cdir is not None else None
    if cfg is not None:
        qp = cfg.pop("quip_params", None)
        if qp is not None:
            meta["source.quip_params"] = json.dumps(qp)
        meta.update(base_model_metadata(cdir, cfg))
    prefixes = sorted(k[: -len(".Qidxs")] for k in state if k.endswith(".Qidxs"))
    if not prefixes:
        raise ValueError(f"{src}: no QuIP# layers (*.Qidxs) found; an unquantized checkpoint is converted with "
                         "spqr convert")
    cids = {pr: int(np.asarray(state.get(f"{pr}.codebook_id", np.array(HI4B1C))).reshape(-1)[0]) for pr in prefixes}
    for pr in prefixes:
        _refuse_extras(state, pr)
    resid_scale: float | None = None
    if isinstance(qp, dict):
        ver = qp.get("codebook_version", 0)
        for cid in sorted(set(cids.values()) & set(CODEBOOK_VERSIONS)):
            if ver != CODEBOOK_VERSIONS[cid]:
                raise NotRepresentable(
                    f"config quip_params.codebook_version = {ver!r}: only {CODEBOOK_NAMES[cid]} codebook version "
                    f"{CODEBOOK_VERSIONS[cid]} (QuIP#'s packed int64 Qidxs) is read")
        override = qp.get("resid_scale_override", -1)
        if isinstance(override, (int, float)) and not isinstance(override, bool) and override > 0:
            resid_scale = float(override)
    fused: dict[str, list[tuple[str, int]]] = {}
    for pr in prefixes:
        if f"{pr}.fuse_scales" in state:
            fused[pr] = fused_parts(pr, int(np.asarray(state[f"{pr}.SV"]).size),
                                    int(np.asarray(state[f"{pr}.fuse_scales"]).size), cfg)
    if fused:
        meta["spqrfmt.fused"] = {f"{pr}.weight": [[p, r] for p, r in parts] for pr, parts in fused.items()}
    used = sorted({quip_hadamard_order(int(np.asarray(state[f"{pr}.{r}"]).size)) for pr in prefixes
                   for r in ("SU", "SV")} - {1})
    if used and all(k in hadamards for k in used):
        meta["source.hadamard_sha256"] = {
            str(k): hadamard_sha256(hadamards[k])
            for k in used}
    consumed = {f"{pr}.{r}" for pr in prefixes for r in (*ROLES, "scaleWH", "A", "B", "fuse_scales")}
    report = QuipImportReport(Path(output))
    with Writer(output, metadata=meta) as w:
        for name in sorted(state):
            if name in consumed or name.endswith((".had_left", ".had_right", ".had_left_T")):
                continue
            w.add_raw(name, np.ascontiguousarray(state[name]))
            report.raw.append(name)
        for pr in prefixes:
            su, sv = state[f"{pr}.SU"], state[f"{pr}.SV"]
            if pr in fused:
                sv = _fold_fuse_scales(sv, state[f"{pr}.fuse_scales"], fused[pr], pr)
            qt = to_quip_sections(state[f"{pr}.Qidxs"], su, sv,
                                  np.asarray(state.get(f"{pr}.Wscale", np.array(1.0, np.float32))), cids[pr],
                                  int(np.asarray(su).size), name=pr, hadamards=hadamards,
                                  resid_scale=resid_scale)
            w.add(f"{pr}.weight", shape=qt.shape, dtype="f16", codec="quip", params=qt.params,
                  sections=qt.sections, codec_version=qt.codec_version)
            report.quantized.append(f"{pr}.weight")
            report.versions[f"{pr}.weight"] = qt.codec_version
            if log:
                cb = qt.params.get("codebook", "grid")
                log(f"  {pr}.weight {list(qt.shape)} {CODEBOOK_NAMES[cids[pr]]} -> quip v{qt.codec_version} {cb}")
    return report


def cli_import(args: Any) -> int:
    rep = import_quipsharp(args.src, args.output, config_dir=getattr(args, "config", None),
                           hadamard_files=getattr(args, "hadamard", None) or (),
                           allow_unverified_hadamard=bool(getattr(args, "allow_unverified_hadamard", False)),
                           log=(lambda s: print(s, file=sys.stderr)) if getattr(args, "verbose", False) else None)
    v2 = sum(1 for v in rep.versions.values() if v == 2)
    print(f"{rep.output}: {len(rep.quantized)} quip layers ({v2} codec_version 2), {len(rep.raw)} raw tensors "
          "(exact in exact arithmetic; decoded with codec quip's f32 rounding)")
    return 0


__all__ = ["QUIPSHARP_HADAMARD_SHA256", "NotRepresentable", "QuipImportReport", "QuipTensor", "diagonal_section",
           "fused_parts", "hadamard_factor", "hadamard_sha256", "read_hadamard_py",
           "import_quipsharp", "quip_hadamard_order", "read_hadamard", "reference_weight", "to_quip_sections",
           "unpack_hi4b1c", "untile_e8p"]
