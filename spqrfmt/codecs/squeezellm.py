"""Codec ``squeezellm`` v1 (spec/codecs/squeezellm.md): per-row LUT + packed indices + additive sparse residuals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..records import TensorRecord
from . import SectionSpec, bias_section, check_csr, expect_sections, int_param, matrix_shape, outlier_sections


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


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


class SqueezeLLMCodec:
    id = "squeezellm"
    versions = (1,)
    kernel_module = "spqrfmt.kernels.squeezellm"

    def check_record(self, rec: TensorRecord) -> None:
        p = checked_params(rec)
        req, opt = section_layout(rec, p["bits"])
        expect_sections(rec, req, opt)

    def check_content(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> None:
        check_csr(rec, arrays["outlier_row_ptr"], arrays["outlier_col"], rec.shape[1])

    def decode(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        from ..decoder import squeezellm as numba_squeezellm

        return numba_squeezellm.decode(checked_params(rec), arrays, rec.shape)


CODEC = SqueezeLLMCodec()
