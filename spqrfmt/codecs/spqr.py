"""Codec ``spqr`` v1 and v2 (spec/codecs/spqr.md): checks from the header, content checks, reference decode.

v2 (spqr.md §8) is v1 plus two required params, ``arith`` and ``outlier_op``;
:func:`checked_params` puts them into the params dict only for v2, so code
downstream (Numba decoder, kernels) can read them with v1 defaults and a v1
tensor carrying stray keys of those names still decodes as v1.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..argtypes import flag, float_in, int_in, stat_bits
from ..errors import ErrorCode, fail
from ..format import ceil_div
from ..records import TensorRecord
from . import (
    GpuBinding,
    SectionSpec,
    bias_section,
    check_csr,
    check_permutation,
    expect_sections,
    int_param,
    matrix_shape,
    outlier_sections,
)
from .options import Flag, OptionsBase, given
from .sharding import Shard, ShardError, cols_of, csr_columns, csr_rows, packed_columns, rows_of, shard_range, whole

ARITH = ("f32", "f16")
OUTLIER_OPS = ("replace", "add")
V1_DEFAULTS = {"arith": "f32", "outlier_op": "replace"}  # what v1 means, in v2's terms


def _str_param(rec: TensorRecord, key: str, allowed: tuple[str, ...]) -> str:
    v = rec.params.get(key)
    if not isinstance(v, str) or v not in allowed:
        raise fail(ErrorCode.BAD_PARAMS, f"param {key!r} = {v!r} must be one of {list(allowed)}", rec.name)
    return v


def checked_params(rec: TensorRecord) -> dict[str, Any]:
    """Validated params of a v1 or v2 record; raises BAD_SHAPE / BAD_PARAMS.

    For v2 the result also holds ``arith`` and ``outlier_op``; for v1 it never
    does (v1 ignores unknown keys, spqr.md §2).
    """
    matrix_shape(rec)
    p: dict[str, Any] = {
        "bits": int_param(rec, "bits", 1, 8),
        "group_size": int_param(rec, "group_size", 1, 65536),
        "scale_bits": int_param(rec, "scale_bits", 1, 8, allowed=(16,)),
        "zero_bits": int_param(rec, "zero_bits", 1, 8, allowed=(16,)),
    }
    if p["scale_bits"] < 16 or p["zero_bits"] < 16:
        p["stat_group_size"] = int_param(rec, "stat_group_size", 1, 65536)
    if rec.codec_version == 2:
        p["arith"] = _str_param(rec, "arith", ARITH)
        p["outlier_op"] = _str_param(rec, "outlier_op", OUTLIER_OPS)
    return p


def section_layout(rec: TensorRecord, p: Mapping[str, Any]) -> tuple[dict[str, SectionSpec], dict[str, SectionSpec]]:
    """(required, optional) section specs for checked params ``p`` (spqr.md §3)."""
    m, n = rec.shape
    G = ceil_div(n, p["group_size"])
    req: dict[str, SectionSpec] = {
        "codes": (("u32",), (m, ceil_div(n * p["bits"], 32))),
        **outlier_sections(rec, m, n),
    }
    for which in ("scale", "zero"):
        bits = p[f"{which}_bits"]
        if bits == 16:
            req[which] = (("f16",), (G, m))
        else:
            K = ceil_div(m, p["stat_group_size"])
            req[f"{which}_codes"] = (("u32",), (G, ceil_div(m * bits, 32)))
            req[f"{which}_scale"] = (("f16",), (G, K))
            req[f"{which}_zero"] = (("f16",), (G, K))
    opt: dict[str, SectionSpec] = {"perm": (("u32",), (n,)), **bias_section(m)}
    return req, opt


_GROUP_WHY = "codec {codec} has no group statistics"
# The calibrated solver's outlier rules (encoder/gptq.py's OUTLIER_RULES; the encoder is imported lazily).
OUTLIER_RULES = ("loo", "error")
_STATS = ("stat_bits", "scale_bits", "zero_bits", "stat_group_size", "outlier_fraction", "outlier_threshold",
          "outlier_rule")


@dataclass
class Options(OptionsBase):
    """Encoder settings of codec spqr; defaults: SpQR's near-lossless 4-bit / β1=16 / 3-bit stats / 1 % outliers.

    Method ``rtn`` is data-free; ``gptq`` and ``spqr`` are the calibrated solver
    (:meth:`gptq_config`): GPTQ is the same solver with one level of f16
    statistics and no outliers.
    """

    bits: int = 4
    group_size: int = 16
    scale_bits: int = 3
    zero_bits: int = 3
    stat_group_size: int = 16
    outlier_fraction: float = 0.01
    outlier_threshold: float = 0.2
    outlier_rule: str = "loo"
    percdamp: float = 0.01
    act_order: bool = True

    F16_STATISTICS: ClassVar[bool] = True
    EXAMPLE: ClassVar[str] = "--bits 3 --group-size 16"
    FLAGS: ClassVar[tuple[Flag, ...]] = (
        Flag("bits", dict(type=int, choices=range(1, 9), metavar="{1..8}"), "bits per weight code (default 4)"),
        Flag("group_size", dict(type=int_in(1, 65536)),
             "β1: input columns sharing one scale/zero (default 16; 128 with --method gptq)", _GROUP_WHY),
        Flag("stat_bits", dict(type=stat_bits), "bits of the quantized first-level scales and zeros, 16 = plain "
             "fp16 (default 3; gptq: always 16)", _GROUP_WHY),
        Flag("scale_bits", dict(type=stat_bits), "override --stat-bits for scales", _GROUP_WHY),
        Flag("zero_bits", dict(type=stat_bits), "override --stat-bits for zeros", _GROUP_WHY),
        Flag("stat_group_size", dict(type=int_in(1, 65536)), "β2: rows sharing second-level stats (default 16)",
             _GROUP_WHY),
        Flag("outlier_fraction", dict(type=float_in(0.0, 1.0, hi_open=True)),
             "fraction of weights kept as fp16 outliers: exact for rtn, a cap for calibrated spqr "
             "(default 0.01 = 1%%; gptq: none)"),
        Flag("outlier_threshold", dict(type=float_in(0.0)),
             "with --calibrate: SpQR's relative outlier threshold T: a weight becomes an fp16 outlier when its "
             "Hessian-weighted error ((w - ŵ) / U_jj)² exceeds T · mean_j(Var W[:, j] / U_jj²), U the "
             "Cholesky factor of H^-1 (default 0.2; lower = more outliers, up to --outlier-fraction)",
             calibrated=True),
        Flag("outlier_rule", dict(choices=OUTLIER_RULES),
             "with --calibrate: which weights become outliers. loo (default): the ones a leave-one-out test "
             "leaves out of their group's scale/zero fit, plus those failing the error test of "
             "--outlier-threshold; best when --outlier-fraction caps the count. error: the SpQR authors' rule, "
             "only weights failing the error test (leave-one-out just shapes the fit); best with a higher "
             "threshold and no binding cap (docs/quality.md compares both at equal bits)", calibrated=True),
        Flag("damp", dict(type=float_in(0.0)), "with --calibrate: Hessian dampening, a fraction of mean(diag H) "
             "(default 0.01)", calibrated=True),
        Flag("act_order", dict(action=argparse.BooleanOptionalAction, default=None),
             "with --calibrate: process columns by decreasing diag(H), recorded in the perm section (default on)",
             calibrated=True),
    )

    @classmethod
    def gptq(cls, bits: int = 4, group_size: int = 128, **kw: Any) -> Options:
        """Plain GPTQ: f16 first-level statistics, no outliers."""
        return cls(bits=bits, group_size=group_size, scale_bits=16, zero_bits=16, outlier_fraction=0.0, **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace, method: str) -> Options:
        g = given(args, [f.dest for f in cls.FLAGS])
        if method == "gptq":
            for k in _STATS:
                if k in g:
                    raise ValueError(f"GPTQ keeps one level of f16 statistics and no outliers, so {flag(k)} does not "
                                     "apply; use --method spqr for quantized statistics and outliers")
        solver = dict(outlier_threshold=g.get("outlier_threshold", 0.2), percdamp=g.get("damp", 0.01),
                      act_order=g.get("act_order", True), outlier_rule=g.get("outlier_rule", "loo"))
        if method == "gptq":
            return cls.gptq(bits=g.get("bits", 4), group_size=g.get("group_size", 128), **solver)
        stat = g.get("stat_bits", 3)
        return cls(bits=g.get("bits", 4), group_size=g.get("group_size", 16), scale_bits=g.get("scale_bits", stat),
                   zero_bits=g.get("zero_bits", stat), stat_group_size=g.get("stat_group_size", 16),
                   outlier_fraction=g.get("outlier_fraction", 0.01), **solver)

    def check(self, method: str = "rtn") -> None:
        if method == "gptq" and (self.scale_bits != 16 or self.zero_bits != 16 or self.outlier_fraction):
            raise ValueError("GPTQ has one level of f16 statistics and no outliers; "
                             "use method spqr for quantized statistics or outliers")
        if not 1 <= self.bits <= 8:
            raise ValueError("bits must be 1..8 (--bits)")
        if not 0.0 <= self.outlier_fraction < 1.0:
            raise ValueError("outlier_fraction must be in [0, 1) (--outlier-fraction)")
        if not (1 <= self.group_size <= 65536 and 1 <= self.stat_group_size <= 65536):
            raise ValueError("group_size and stat_group_size must be 1..65536 (--group-size, --stat-group-size)")
        if not all(1 <= b <= 8 or b == 16 for b in (self.scale_bits, self.zero_bits)):
            raise ValueError("scale_bits and zero_bits must be 1..8 or 16 (--scale-bits, --zero-bits)")
        if self.outlier_rule not in OUTLIER_RULES:
            raise ValueError("outlier_rule must be loo or error (--outlier-rule)")
        if not (math.isfinite(self.outlier_threshold) and self.outlier_threshold >= 0
                and math.isfinite(self.percdamp) and self.percdamp >= 0):
            raise ValueError("outlier_threshold and percdamp must be finite and >= 0 (--outlier-threshold, --damp)")

    def describe(self, method: str = "rtn") -> str:
        name = {"rtn": "data-free SpQR (round-to-nearest)", "gptq": "calibrated GPTQ",
                "spqr": "calibrated SpQR"}[method]
        stats = "f16 statistics" if self.scale_bits == 16 and self.zero_bits == 16 else \
            f"stats {self.scale_bits}/{self.zero_bits}-bit β2={self.stat_group_size}"
        out = f"outliers {self.outlier_fraction:.2%}" if method == "rtn" else (
            f"outliers ≤{self.outlier_fraction:.2%} (threshold {self.outlier_threshold:g}"
            f"{', error rule' if self.outlier_rule == 'error' else ''})" if self.outlier_fraction
            else "no outliers")
        solver = f", damp {self.percdamp:g}, {'act-order' if self.act_order else 'natural order'}" \
            if method != "rtn" else ""
        return f"spqr, {name}: w{self.bits} β1={self.group_size} {stats} {out}{solver}"

    def gptq_config(self) -> Any:
        """The calibrated solver's settings (``spqrfmt.encoder.gptq.GPTQConfig``), derived from these options."""
        from ..encoder.gptq import GPTQConfig

        outliers = self.outlier_fraction > 0
        return GPTQConfig(bits=self.bits, group_size=self.group_size, scale_bits=self.scale_bits,
                          zero_bits=self.zero_bits, stat_group_size=self.stat_group_size,
                          outlier_relative_threshold=self.outlier_threshold if outliers else math.inf,
                          max_outlier_fraction=self.outlier_fraction if outliers else 0.0,
                          percdamp=self.percdamp, act_order=self.act_order, round_zero=self.zero_bits == 16,
                          outlier_rule=self.outlier_rule)


def _gpu() -> GpuBinding:
    from ..kernels import spqr as K
    from ..kernels.linear import SpQRLinear

    return GpuBinding(K.prepare, K.matvec, K.dequantize_prepared, linear=SpQRLinear)


class SpqrCodec:
    id = "spqr"
    versions = (1, 2)
    quantized = True
    summary = "bilevel groups + CSR outliers; data-free or calibrated (GPTQ / SpQR)"
    methods = ("rtn", "spqr", "gptq")  # data-free first, then the calibrated ones, the default first
    calibration = ("columns in act-order, each column's error fed into the rest (GPTQ), small-group statistics "
                   "fitted on the updated weights, high-sensitivity weights kept as fp16 outliers (SpQR); "
                   "--method gptq = one level of f16 statistics, no outliers")
    Options = Options

    def check_record(self, rec: TensorRecord) -> dict[str, Any]:
        p = checked_params(rec)
        req, opt = section_layout(rec, p)
        expect_sections(rec, req, opt)
        return p

    def encode(self, weight: np.ndarray, options: Options, hessian: np.ndarray | None = None,
               device: str | None = None) -> Any:
        """Data-free round-to-nearest, or (``hessian`` = the layer's X^T X, numpy or torch) the GPTQ/SpQR solver.

        ``device``: where either runs (data-free: the torch encoder, the same bytes; fast on a GPU)."""
        if hessian is not None:
            from ..encoder.gptq import quantize_gptq

            return quantize_gptq(weight, hessian, options.gptq_config(), device=device)
        kw = dict(bits=options.bits, group_size=options.group_size, scale_bits=options.scale_bits,
                  zero_bits=options.zero_bits, stat_group_size=options.stat_group_size,
                  outlier_fraction=options.outlier_fraction)
        if device is not None:
            from ..encoder.torch.spqr import quantize_spqr as quantize_on

            return quantize_on(weight, device=device, **kw)
        from ..encoder.spqr import quantize_spqr

        return quantize_spqr(weight, **kw)

    @property
    def gpu(self) -> GpuBinding:
        return _gpu()

    def check_content(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> None:
        m, n = rec.shape
        check_csr(rec, arrays["outlier_row_ptr"], arrays["outlier_col"], n)
        if "perm" in arrays:
            check_permutation(rec, arrays["perm"], n)

    def shard(self, rec: TensorRecord, sections: Mapping[str, Any], axis: int, index: int, count: int) -> Shard:
        """Part ``index`` of ``count`` along out (axis 0, boundaries at multiples of β2 when a statistic is
        quantized) or along stored input columns (axis 1, multiples of β1; with ``perm`` the part holds the
        input features ``perm[lo:hi]``, its own perm re-ranked). spec/sharding.md §3."""
        p = checked_params(rec)
        m, n = rec.shape
        stats = [w for w in ("scale", "zero") if p[f"{w}_bits"] < 16]
        out: dict[str, np.ndarray] = {}
        if axis == 0:
            b2 = p.get("stat_group_size", 1) if stats else 1
            lo, hi = shard_range(rec, 0, index, count, b2, "β2: rows sharing second-level statistics")
            out.update(rows_of(sections, lo, hi, "codes", "bias"))
            out.update(csr_rows(rec, sections, lo, hi))
            out.update(cols_of(sections, lo, hi, *(w for w in ("scale", "zero") if w not in stats)))
            for w in stats:
                out[f"{w}_codes"] = packed_columns(sections[f"{w}_codes"], p[f"{w}_bits"], lo, hi)
                out.update(cols_of(sections, lo // b2, ceil_div(hi, b2), f"{w}_scale", f"{w}_zero"))
            out.update(whole(sections, "perm"))
            return Shard(dict(rec.params), out, (hi - lo, n), np.arange(lo, hi))
        if axis != 1:
            raise ShardError(f"{rec.name}: spqr tensors are cut along out (0) or in (1), not axis {axis}")
        b1 = p["group_size"]
        lo, hi = shard_range(rec, 1, index, count, b1, "β1: stored columns sharing first-level statistics")
        out["codes"] = packed_columns(sections["codes"], p["bits"], lo, hi)
        roles = [w for w in ("scale", "zero") if w not in stats] + [f"{w}_{k}" for w in stats
                                                                     for k in ("codes", "scale", "zero")]
        out.update(rows_of(sections, lo // b1, ceil_div(hi, b1), *roles))
        out.update(csr_columns(rec, sections, lo, hi))
        out.update(whole(sections, "bias"))
        features = np.arange(lo, hi)
        if "perm" in sections:
            perm = np.asarray(sections["perm"])
            check_permutation(rec, perm, n)
            held = perm[lo:hi].astype(np.int64)
            features = np.sort(held)
            out["perm"] = np.searchsorted(features, held).astype(np.uint32)  # stored column j -> its rank in features
        return Shard(dict(rec.params), out, (m, hi - lo), features)

    def decode(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray],
               params: Mapping[str, Any] | None = None) -> np.ndarray:
        from ..decoder import spqr as numba_spqr

        return numba_spqr.decode(checked_params(rec) if params is None else params, arrays, rec.shape)


CODEC = SpqrCodec()
