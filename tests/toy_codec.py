"""A codec that lives outside spqrfmt: int8 codes with one f32 absmax scale per row.

It is not a spec codec; tests/test_codec_plugin.py installs it through the
``spqrfmt.codecs`` entry-point group (a dist-info on PYTHONPATH) to show that a
codec registers, converts, reads, verifies and loads without a line of the
container, converter, loader or command line knowing it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from spqrfmt.codecs import GpuBinding, expect_sections, int_param, matrix_shape
from spqrfmt.codecs.options import Flag, OptionsBase, given
from spqrfmt.errors import ErrorCode, fail


@dataclass
class ToyEncoded:
    shape: tuple[int, int]
    params: dict[str, Any]
    sections: dict[str, Any]
    dequantized: np.ndarray
    codec: str = "toy"
    codec_version: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(np.asarray(a).nbytes for a in self.sections.values())

    @property
    def bits_per_param(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])


@dataclass
class Options(OptionsBase):
    levels: int = 127  # codes in -levels..levels

    FLAGS: ClassVar[tuple[Flag, ...]] = (
        Flag("toy_levels", dict(type=int), "code levels each side of zero (default 127)"),
    )

    @classmethod
    def from_args(cls, args: argparse.Namespace, method: str) -> Options:
        g = given(args, ["toy_levels"])
        return cls(**({"levels": g["toy_levels"]} if g else {}))

    def check(self, method: str = "rtn") -> None:
        if not 1 <= self.levels <= 127:
            raise ValueError("levels must be 1..127 (--toy-levels)")

    def describe(self, method: str = "rtn") -> str:
        return f"toy: int8 codes in ±{self.levels}, one f32 scale per row"


def _decode(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * scale.astype(np.float32)[:, None]


def _gpu() -> GpuBinding:
    import torch

    def prepare(params: Mapping[str, Any], sections: Mapping[str, Any], shape: tuple[int, int], device: Any) -> Any:
        return (torch.from_numpy(np.array(sections["codes"])).to(device),
                torch.from_numpy(np.array(sections["scale"])).to(device))

    def dequantize(prepared: Any, dtype: Any) -> Any:
        codes, scale = prepared
        return (codes.float() * scale[:, None]).to(dtype)

    def matvec(prepared: Any, x: Any, bias: Any = None) -> Any:
        return torch.nn.functional.linear(x, dequantize(prepared, x.dtype), bias)

    return GpuBinding(prepare, matvec, dequantize)


class ToyCodec:
    id = "toy"
    versions = (1,)
    quantized = True
    summary = "int8 codes, one f32 scale per row (a test codec from outside the package)"
    methods = ("rtn",)
    Options = Options

    def check_record(self, rec: Any) -> dict[str, Any]:
        m, n = matrix_shape(rec)
        p = {"levels": int_param(rec, "levels", 1, 127)}
        expect_sections(rec, {"codes": (("i8",), (m, n)), "scale": (("f32",), (m,))})
        return p

    def check_content(self, rec: Any, arrays: Mapping[str, np.ndarray]) -> None:
        levels = rec.params["levels"]
        if np.abs(arrays["codes"].astype(np.int16)).max(initial=0) > levels:
            raise fail(ErrorCode.BAD_VALUE, f"a code lies outside ±{levels}", rec.name)

    def decode(self, rec: Any, arrays: Mapping[str, np.ndarray], params: Any = None) -> np.ndarray:
        return _decode(arrays["codes"], arrays["scale"])

    def encode(self, weight: np.ndarray, options: Options, hessian: np.ndarray | None = None) -> ToyEncoded:
        w = np.asarray(weight, dtype=np.float32)
        scale = (np.abs(w).max(axis=1) / options.levels).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
        codes = np.clip(np.rint(w / safe[:, None]), -options.levels, options.levels).astype(np.int8)
        return ToyEncoded(tuple(w.shape), {"levels": options.levels}, {"codes": codes, "scale": scale},
                          _decode(codes, scale))

    @property
    def gpu(self) -> GpuBinding:
        return _gpu()


CODEC = ToyCodec()
