"""Codec ``raw`` v1 (spec/SPEC.md §8): unquantized tensors stored as they are."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import ErrorCode, fail
from ..records import TensorRecord


class RawCodec:
    id = "raw"
    versions = (1,)
    kernel_module = None

    def check_record(self, rec: TensorRecord) -> None:
        from . import expect_sections

        expect_sections(rec, {"data": ((rec.dtype,), rec.shape)})

    def check_content(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> None:
        if rec.dtype == "bool" and np.any(arrays["data"] > 1):
            raise fail(ErrorCode.BAD_VALUE, "bool tensor holds bytes other than 0/1", rec.name)

    def decode(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        data = np.array(arrays["data"])  # a private copy, never a view into the map
        return data.view(np.bool_) if rec.dtype == "bool" else data


CODEC = RawCodec()
