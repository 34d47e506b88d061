"""Codec ``quip`` v1 and v2 (spec/codecs/quip.md): codes in an explicitly stored incoherent basis.

v1: uniform-grid codes, i8 sign vectors. v2 (§10): a ``codebook`` param
("grid" = the v1 grid, "e8p12" = QuIP#'s E8P lattice codebook, one u16 code
per 8 weights; "e8p12_rvq4"/"e8p12_rvq3" add a second-stage ``codes2`` plane
divided by ``resid_scale``, §10.11) and sign vectors that may also be real-valued f16/f32
diagonals (QuIP#'s fine-tuned SU/SV). Validation dispatches on
``codec_version``, so a v1 record never reads v2 keys.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..argtypes import int_in
from ..constants import QUIP_MAX_FACTOR
from ..errors import ErrorCode, fail
from ..format import ceil_div
from ..records import TensorRecord
from . import GpuBinding, SectionSpec, expect_sections, int_param
from .options import Flag, OptionsBase, given
from .sharding import Shard, ShardError, packed_columns, rows_of, shard_range, whole

MAX_LOG2_HADAMARD = 30
MAX_FACTOR = QUIP_MAX_FACTOR  # quip.md §2: a_n, a_m <= 256, so decoding costs at most ~2 * 256 f32 ops per weight
CODEBOOKS = ("grid", "e8p12", "e8p12_rvq4", "e8p12_rvq3")
ENCODER_CODEBOOKS = ("grid", "e8p12")  # the residual codebooks have no encoder: they are imported from QuIP#
E8P_CODEBOOKS = ("e8p12", "e8p12_rvq4", "e8p12_rvq3")  # one E8P12 code per 8 weights in ``codes``
RVQ_CODES2_DTYPE = {"e8p12_rvq4": "u16", "e8p12_rvq3": "u8"}  # second-stage code plane (§10.11)
RESID_SCALE_RANGE = (2.0**-16, 2.0**16)  # keeps e1 / rho normal and finite (§10.11)
E8P_DIM = 8  # weights per E8P12 code
DIAG_DTYPES = ("i8", "f16", "f32")  # v2 su/sv: i8 signs, or real-valued diagonals



def checked_params(rec: TensorRecord) -> dict[str, Any]:
    """Validated params with the factor sizes ``a_m``, ``a_n`` (<= MAX_FACTOR); raises BAD_SHAPE / BAD_PARAMS
    (quip.md §1, §2, §10.1).

    v1 yields ``bits`` (no ``codebook`` key, whatever the record holds: v1 ignores unknown keys);
    v2 yields ``codebook`` and, for "grid", ``bits``.
    """
    if len(rec.shape) != 2 or rec.shape[0] < 1 or rec.shape[1] < 1:
        raise fail(ErrorCode.BAD_SHAPE, f"quip tensors are 2-D [m>=1, n>=1], got {list(rec.shape)}", rec.name)
    if rec.dtype not in ("f16", "bf16", "f32"):
        raise fail(ErrorCode.BAD_PARAMS, f"quip tensor dtype must be f16, bf16 or f32, got {rec.dtype}", rec.name)
    m, n = rec.shape
    p: dict[str, Any] = {}
    if rec.codec_version >= 2:
        cb = rec.params.get("codebook")
        if not isinstance(cb, str) or cb not in CODEBOOKS:
            raise fail(ErrorCode.BAD_PARAMS, f"param 'codebook' = {cb!r} must be one of {list(CODEBOOKS)}", rec.name)
        p["codebook"] = cb
        if cb in E8P_CODEBOOKS:
            if "bits" in rec.params:
                raise fail(ErrorCode.BAD_PARAMS, f"param 'bits' must be absent with codebook {cb!r}", rec.name)
            if n % E8P_DIM:
                raise fail(ErrorCode.BAD_SHAPE, f"codebook {cb!r} needs n = {n} to be a multiple of 8", rec.name)
        if cb in RVQ_CODES2_DTYPE:
            p["resid_scale"] = resid_scale_param(rec)
    if p.get("codebook", "grid") == "grid":
        p["bits"] = int_param(rec, "bits", 1, 8)
    p["log2_hm"] = int_param(rec, "log2_hm", 0, MAX_LOG2_HADAMARD)
    p["log2_hn"] = int_param(rec, "log2_hn", 0, MAX_LOG2_HADAMARD)
    for key, dim in (("log2_hm", m), ("log2_hn", n)):
        if dim % (1 << p[key]):
            raise fail(ErrorCode.BAD_PARAMS, f"2**{key} = {1 << p[key]} does not divide {dim}", rec.name)
    p["a_m"] = m >> p["log2_hm"]
    p["a_n"] = n >> p["log2_hn"]
    if p["a_n"] > MAX_FACTOR or p["a_m"] > MAX_FACTOR:
        raise fail(ErrorCode.BAD_PARAMS,
                   f"explicit factor sizes a_n = n / 2**log2_hn = {p['a_n']}, a_m = m / 2**log2_hm = {p['a_m']}: "
                   f"at most {MAX_FACTOR} (quip.md §2 bounds the decode's factor work)", rec.name)
    return p


def resid_scale_param(rec: TensorRecord) -> np.float32:
    """``resid_scale``: a float holding a binary32 value in [2^-16, 2^16] exactly (quip.md §10.11), else BAD_PARAMS.

    Exactness matters because every decoder divides by this f32 value; a float64 that
    binary32 cannot hold would leave its rounding to each implementation.
    """
    v = rec.params.get("resid_scale")
    lo, hi = RESID_SCALE_RANGE
    if not isinstance(v, float) or not (lo <= v <= hi) or float(np.float32(v)) != v:
        raise fail(ErrorCode.BAD_PARAMS, f"param 'resid_scale' = {v!r} must be a float holding a binary32 value in "
                   f"[2^-16, 2^16] exactly", rec.name)
    return np.float32(v)


def section_layout(p: Mapping[str, Any], m: int, n: int) -> tuple[dict[str, SectionSpec], dict[str, SectionSpec]]:
    """(required, optional) section specs (quip.md §3; §10.2 when ``p`` has a ``codebook``)."""
    v2 = "codebook" in p
    diag = DIAG_DTYPES if v2 else ("i8",)
    if p.get("codebook") in E8P_CODEBOOKS:
        codes: SectionSpec = (("u16",), (m, n // E8P_DIM))
    else:
        codes = (("u32",), (m, ceil_div(n * p["bits"], 32)))
    req: dict[str, SectionSpec] = {
        "codes": codes,
        "scale": (("f32",), (m,)),
        "su": (diag, (n,)),
        "sv": (diag, (m,)),
    }
    if p.get("codebook") in RVQ_CODES2_DTYPE:
        req["codes2"] = ((RVQ_CODES2_DTYPE[p["codebook"]],), (m, n // E8P_DIM))
    if p["a_n"] > 1:
        req["factor_n"] = (("f32",), (p["a_n"], p["a_n"]))
    if p["a_m"] > 1:
        req["factor_m"] = (("f32",), (p["a_m"], p["a_m"]))
    opt: dict[str, SectionSpec] = {"bias": (("f16", "bf16", "f32"), (m,))}
    return req, opt


@dataclass
class Options(OptionsBase):
    """Encoder settings of codec quip: ``quip_codebook`` "grid" = codec_version 1 with ``bits`` grid bits,
    "e8p12" = codec_version 2's E8P12 lattice codebook (2 bits per weight, in_features a multiple of 8)."""

    bits: int = 4
    seed: int = 0
    quip_codebook: str = "grid"

    REFUSES: ClassVar[Mapping[str, str]] = {"outlier_fraction": "incoherence processing replaces outliers"}
    EXAMPLE: ClassVar[str] = "--quip-codebook e8p12"
    FLAGS: ClassVar[tuple[Flag, ...]] = (
        Flag("bits", dict(type=int, choices=range(1, 9), metavar="{1..8}"), "grid bits"),
        Flag("seed", dict(type=int_in(0, 2**63 - 1)),
             "seed of the random signs / orthogonal factors, which are stored in the file (default 0)"),
        Flag("quip_codebook", dict(choices=list(ENCODER_CODEBOOKS)),
             "grid = --bits-bit uniform grid (codec_version 1, default); e8p12 = QuIP#'s E8P12 lattice codebook, "
             "2 bits per weight, in_features a multiple of 8 (codec_version 2)"),
    )

    @classmethod
    def from_args(cls, args: argparse.Namespace, method: str) -> Options:
        g = given(args, [f.dest for f in cls.FLAGS])
        if g.get("quip_codebook") == "e8p12":
            if g.get("bits", 2) != 2:
                raise ValueError(f"--quip-codebook e8p12 stores 2 bits per weight; drop --bits {g['bits']} "
                                 "(or use --quip-codebook grid)")
            g["bits"] = 2
        return cls(**g)

    def check(self, method: str = "rtn") -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError("bits must be 1..8 (--bits)")
        if self.quip_codebook not in ENCODER_CODEBOOKS:
            raise ValueError(f"unknown quip codebook {self.quip_codebook!r}; choose one of "
                             f"{', '.join(ENCODER_CODEBOOKS)} "
                             "(--quip-codebook)")
        if self.quip_codebook == "e8p12" and self.bits != 2:
            raise ValueError(f"the e8p12 codebook stores 2 bits per weight; bits = {self.bits} is not possible")

    @property
    def in_features_multiple(self) -> tuple[int, str]:
        return (E8P_DIM, "the e8p12 codebook") if self.quip_codebook == "e8p12" else (1, "")

    def describe(self, method: str = "rtn") -> str:
        book = ("E8P12 lattice codebook (2 bits per weight, one 16-bit code per 8 weights; codec_version 2)"
                if self.quip_codebook == "e8p12" else f"{self.bits}-bit uniform grid")
        how = "data-free: round to nearest" if method == "rtn" else "calibrated: LDLQ on the layer's input Hessian"
        return f"quip: {book} after random-sign Hadamard incoherence, seed {self.seed} ({how})"


def _gpu() -> GpuBinding:
    from ..kernels import quip as K

    return GpuBinding(K.prepare, K.matvec, K.dequantize_prepared)


class QuipCodec:
    id = "quip"
    versions = (1, 2)
    quantized = True
    summary = ("random-sign Hadamard incoherence + uniform grid (--bits = grid bits), or --quip-codebook e8p12: "
               "QuIP#'s E8P12 lattice codebook at 2 bits per weight (codec_version 2)")
    methods = ("rtn", "ldlq")
    calibration = "LDLQ: the grid rounding in the incoherent basis, each column's error fed into the rest"
    Options = Options

    def check_record(self, rec: TensorRecord) -> dict[str, Any]:
        p = checked_params(rec)
        req, opt = section_layout(p, *rec.shape)
        expect_sections(rec, req, opt)
        return p

    def encode(self, weight: np.ndarray, options: Options, hessian: Any = None, device: str | None = None) -> Any:
        """Round to nearest in the incoherent basis; with ``hessian`` (the layer's input Hessian, numpy or
        torch) the encoder's LDLQ (float64, on the CPU whatever ``device``).

        ``device``: data-free grid encoding by the torch encoder on that device (the same bytes)."""
        if device is not None and hessian is None:
            if options.quip_codebook != "grid":
                raise ValueError(f"--device: no torch encoder for the {options.quip_codebook} codebook yet; "
                                 "drop --device to encode it on the CPU")
            from ..encoder.torch.quip import quantize_quip as quantize_on

            return quantize_on(weight, bits=options.bits, seed=options.seed, device=device)
        from ..encoder.hessian import as_numpy
        from ..encoder.quip import quantize_quip

        return quantize_quip(weight, bits=options.bits, hessian=None if hessian is None else as_numpy(hessian),
                             seed=options.seed, codebook=options.quip_codebook)

    @property
    def gpu(self) -> GpuBinding:
        return _gpu()

    def check_content(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> None:
        for role in ("su", "sv"):
            s = np.asarray(arrays[role])
            if s.dtype != np.int8:
                continue  # v2 f16/f32 diagonals: every value decodes (NaN/inf propagate)
            if s.size and not np.all((s == 1) | (s == -1)):
                raise fail(ErrorCode.BAD_VALUE, f"sign vector {role!r} has entries other than +1/-1", rec.name)

    def shard(self, rec: TensorRecord, sections: Mapping[str, Any], axis: int, index: int, count: int) -> Shard:
        """Part ``index`` of ``count`` along out (axis 0) or in (axis 1), only where that side's transform
        ``F ⊗ H`` stays inside the part: whole Hadamard blocks, and a factor with no entry coupling the
        part to the rest (a factor of one block must then be exactly [1]). spec/sharding.md §5."""
        p = checked_params(rec)
        m, n = rec.shape
        if axis not in (0, 1):
            raise ShardError(f"{rec.name}: quip tensors are cut along out (0) or in (1), not axis {axis}")
        side = "m" if axis == 0 else "n"
        h, a = 1 << p[f"log2_h{side}"], p[f"a_{side}"]
        multiple = int(np.lcm(h, E8P_DIM)) if axis == 1 and p.get("codebook") == "e8p12" else h
        lo, hi = shard_range(rec, axis, index, count, multiple,
                             f"the {2 ** p[f'log2_h{side}']}-point Hadamard of side {side} stays inside a shard")
        b0, b1 = lo // h, hi // h  # factor blocks of this part
        factor = f"factor_{side}"
        out: dict[str, np.ndarray] = {}
        if a > 1:
            F = np.asarray(sections[factor])
            if np.any(F[b0:b1, :b0] != 0) or np.any(F[b0:b1, b1:] != 0) or (b1 - b0 == 1 and F[b0, b0] != 1.0):
                raise ShardError(f"{rec.name}: quip {factor} couples factor blocks {b0}..{b1 - 1} with the rest "
                                 f"(or a one-block part's entry is not 1): side {side}'s transform does not stay "
                                 "inside the shard, so this tensor cannot be cut there (spec/sharding.md §5)")
            if b1 - b0 > 1:
                out[factor] = np.array(F[b0:b1, b0:b1])
        if axis == 0:
            out.update(rows_of(sections, lo, hi, "codes", "scale", "sv", "bias"))
            out.update(whole(sections, "su", "factor_n"))
            return Shard(dict(rec.params), out, (hi - lo, n), np.arange(lo, hi))
        if p.get("codebook") == "e8p12":
            out["codes"] = np.array(sections["codes"][:, lo // E8P_DIM:hi // E8P_DIM])
        else:
            out["codes"] = packed_columns(sections["codes"], p["bits"], lo, hi)
        out.update(rows_of(sections, lo, hi, "su"))
        out.update(whole(sections, "scale", "sv", "factor_m", "bias"))
        return Shard(dict(rec.params), out, (m, hi - lo), np.arange(lo, hi))

    def decode(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray],
               params: Mapping[str, Any] | None = None) -> np.ndarray:
        from ..decoder import quip as numba_quip

        return numba_quip.decode(checked_params(rec) if params is None else params, arrays, rec.shape)


CODEC = QuipCodec()
