"""Codec ``raw`` v1 (spec/SPEC.md §8): unquantized tensors stored as they are."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ErrorCode, fail
from ..records import TensorRecord


class RawCodec:
    id = "raw"
    versions = (1,)
    quantized = False  # stored as it is: decode() returns the tensor's own dtype (bf16 as u16 bit patterns)
    methods = ()
    Options = None  # the converter writes unquantized tensors itself (Writer.add_raw)
    gpu = None

    def check_record(self, rec: TensorRecord) -> dict[str, Any]:
        from . import expect_sections

        expect_sections(rec, {"data": ((rec.dtype,), rec.shape)})
        return {}

    def encode(self, weight: np.ndarray, options: Any, hessian: np.ndarray | None = None) -> Any:
        raise TypeError("codec raw has no encoder: unquantized tensors are written with Writer.add_raw")

    def check_content(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> None:
        if rec.dtype == "bool" and np.any(arrays["data"] > 1):
            raise fail(ErrorCode.BAD_VALUE, "bool tensor holds bytes other than 0/1", rec.name)

    def shard(self, rec: TensorRecord, sections: Mapping[str, Any], axis: int, index: int, count: int) -> Any:
        """Part ``index`` of ``count`` equal parts along any dimension (spec/sharding.md §2)."""
        from .sharding import Shard, shard_range

        lo, hi = shard_range(rec, axis, index, count, 1, "")
        data = sections["data"]
        key = (slice(None),) * axis + (slice(lo, hi),)
        shape = rec.shape[:axis] + (hi - lo,) + rec.shape[axis + 1:]
        return Shard(dict(rec.params), {"data": np.array(data[key])}, shape, np.arange(lo, hi))

    def decode(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray],
               params: Mapping[str, Any] | None = None) -> np.ndarray:
        data = np.array(arrays["data"])  # a private copy, never a view into the map
        return data.view(np.bool_) if rec.dtype == "bool" else data


CODEC = RawCodec()
