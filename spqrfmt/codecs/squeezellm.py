"""Codec ``squeezellm`` v1 (spec/codecs/squeezellm.md): per-row LUT + packed indices + additive sparse residuals."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..argtypes import float_in, int_in
from ..format import ceil_div
from ..records import TensorRecord
from . import (
    GpuBinding,
    SectionSpec,
    bias_section,
    check_csr,
    expect_sections,
    int_param,
    matrix_shape,
    outlier_sections,
)
from .options import Flag, OptionsBase, given
from .sharding import Shard, ShardError, csr_columns, csr_rows, packed_columns, rows_of, shard_range, whole


def checked_params(rec: TensorRecord) -> dict[str, Any]:
    """Validated params; raises BAD_SHAPE / BAD_PARAMS (squeezellm.md §1, §2)."""
    matrix_shape(rec)
    return {"bits": int_param(rec, "bits", 1, 8)}


def section_layout(rec: TensorRecord, bits: int) -> tuple[dict[str, SectionSpec], dict[str, SectionSpec]]:
    """(required, optional) section specs (squeezellm.md §3)."""
    m, n = rec.shape
    req: dict[str, SectionSpec] = {
        "lut": (("f16",), (m, 1 << bits)),
        "codes": (("u32",), (m, ceil_div(n * bits, 32))),
        **outlier_sections(rec, m, n),
    }
    return req, bias_section(m)


@dataclass
class Options(OptionsBase):
    """Encoder settings of codec squeezellm: per-row k-means, plain (rtn) or weighted by the layer's input
    Hessian diagonal (method ``weighted-kmeans``, with ``--calibrate``: SqueezeLLM's sensitivity-based k-means)."""

    bits: int = 4
    outlier_fraction: float = 0.005
    kmeans_iters: int = 100

    F16_STATISTICS: ClassVar[bool] = True
    EXAMPLE: ClassVar[str] = "--bits 3"
    FLAGS: ClassVar[tuple[Flag, ...]] = (
        Flag("bits", dict(type=int, choices=range(1, 9), metavar="{1..8}"), "LUT index bits (2^bits entries per row)"),
        Flag("outlier_fraction", dict(type=float_in(0.0, 1.0, hi_open=True)), "sparse residuals (default 0.005)"),
        Flag("kmeans_iters", dict(type=int_in(1)), "Lloyd iterations per row (default 100)"),
    )

    @classmethod
    def from_args(cls, args: argparse.Namespace, method: str) -> Options:
        return cls(**given(args, [f.dest for f in cls.FLAGS]))

    def check(self, method: str = "rtn") -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError("bits must be 1..8 (--bits)")
        if not 0.0 <= self.outlier_fraction < 1.0:
            raise ValueError("outlier_fraction must be in [0, 1) (--outlier-fraction)")
        if self.kmeans_iters < 1:
            raise ValueError("kmeans_iters must be >= 1 (--kmeans-iters)")

    def describe(self, method: str = "rtn") -> str:
        how = "data-free" if method == "rtn" else "calibrated: k-means weighted by diag(H), +0.05% most sensitive"
        return (f"squeezellm: {self.bits}-bit codes into a per-row f16 LUT of {1 << self.bits} entries, "
                f"{self.outlier_fraction:.2%} largest weights as sparse f16 residuals ({how})")


def _gpu() -> GpuBinding:
    from ..kernels import squeezellm as K

    return GpuBinding(K.prepare, K.matvec, K.dequantize_prepared)


class SqueezeLLMCodec:
    id = "squeezellm"
    versions = (1,)
    quantized = True
    summary = ("per-row non-uniform LUT (--bits = LUT index bits) + sparse residuals; data-free or calibrated "
               "(k-means weighted by the inputs' diag(H))")
    methods = ("rtn", "weighted-kmeans")
    calibration = "each row's k-means weighted by diag(H), the output's sensitivity to each input column"
    Options = Options

    def check_record(self, rec: TensorRecord) -> dict[str, Any]:
        p = checked_params(rec)
        req, opt = section_layout(rec, p["bits"])
        expect_sections(rec, req, opt)
        return p

    def encode(self, weight: np.ndarray, options: Options, hessian: Any = None, device: str | None = None) -> Any:
        """Per-row k-means: plain, or (``hessian`` = the layer's input Hessian, numpy or torch) weighted by
        its diagonal, the sensitivity of the layer's output to each input column. ``device``: the torch
        encoder on that device (the same bytes)."""
        kw = dict(bits=options.bits, outlier_fraction=options.outlier_fraction, max_iter=options.kmeans_iters)
        if hessian is not None:
            from ..encoder.hessian import diagonal

            kw["sensitivity"] = diagonal(hessian)
        if device is not None:
            from ..encoder.torch.squeezellm import quantize_squeezellm as quantize_on

            return quantize_on(weight, device=device, **kw)
        from ..encoder.squeezellm import quantize_squeezellm

        return quantize_squeezellm(weight, **kw)

    @property
    def gpu(self) -> GpuBinding:
        return _gpu()

    def check_content(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> None:
        check_csr(rec, arrays["outlier_row_ptr"], arrays["outlier_col"], rec.shape[1])

    def shard(self, rec: TensorRecord, sections: Mapping[str, Any], axis: int, index: int, count: int) -> Shard:
        """Part ``index`` of ``count`` along out (axis 0: its rows' LUTs) or in (axis 1: every row's LUT kept),
        at any boundary: each row has its own table and no statistic spans columns (spec/sharding.md §4)."""
        bits = checked_params(rec)["bits"]
        m, n = rec.shape
        if axis == 0:
            lo, hi = shard_range(rec, 0, index, count, 1, "")
            out = {**rows_of(sections, lo, hi, "lut", "codes", "bias"), **csr_rows(rec, sections, lo, hi)}
            return Shard(dict(rec.params), out, (hi - lo, n), np.arange(lo, hi))
        if axis != 1:
            raise ShardError(f"{rec.name}: squeezellm tensors are cut along out (0) or in (1), not axis {axis}")
        lo, hi = shard_range(rec, 1, index, count, 1, "")
        out = {"codes": packed_columns(sections["codes"], bits, lo, hi), **whole(sections, "lut", "bias"),
               **csr_columns(rec, sections, lo, hi)}
        return Shard(dict(rec.params), out, (m, hi - lo), np.arange(lo, hi))

    def decode(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray],
               params: Mapping[str, Any] | None = None) -> np.ndarray:
        from ..decoder import squeezellm as numba_squeezellm

        return numba_squeezellm.decode(checked_params(rec) if params is None else params, arrays, rec.shape)


CODEC = SqueezeLLMCodec()
