"""Codec ``squeezellm`` v1 (spec/codecs/squeezellm.md): per-row LUT + packed indices + additive sparse residuals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ErrorCode, fail
from ..records import TensorRecord
from . import SectionSpec, check_csr, expect_sections, int_param


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def checked_params(rec: TensorRecord) -> dict[str, Any]:
    """Validated params; raises BAD_SHAPE / BAD_PARAMS (squeezellm.md §1, §2)."""
    if len(rec.shape) != 2 or rec.shape[0] < 1 or rec.shape[1] < 1:
        raise fail(ErrorCode.BAD_SHAPE, f"squeezellm tensors are 2-D [m>=1, n>=1], got {list(rec.shape)}", rec.name)
    if rec.dtype not in ("f16", "bf16", "f32"):
        raise fail(ErrorCode.BAD_PARAMS, f"squeezellm tensor dtype must be f16, bf16 or f32, got {rec.dtype}",
                   rec.name)
    return {"bits": int_param(rec, "bits", 1, 8)}


def section_layout(bits: int, m: int, n: int, nnz: int) -> tuple[dict[str, SectionSpec], dict[str, SectionSpec]]:
    """(required, optional) section specs (squeezellm.md §3)."""
    req: dict[str, SectionSpec] = {
        "lut": (("f16",), (m, 1 << bits)),
        "codes": (("u32",), (m, ceil_div(n * bits, 32))),
        "outlier_row_ptr": (("u32",), (m + 1,)),
        "outlier_col": (("u16", "u32") if n <= 65536 else ("u32",), (nnz,)),
        "outlier_val": (("f16",), (nnz,)),
    }
    opt: dict[str, SectionSpec] = {"bias": (("f16", "bf16", "f32"), (m,))}
    return req, opt


class SqueezeLLMCodec:
    id = "squeezellm"
    versions = (1,)
    kernel_module = "spqrfmt.kernels.squeezellm"

    def check_record(self, rec: TensorRecord) -> None:
        p = checked_params(rec)
        m, n = rec.shape
        col = rec.sections.get("outlier_col")
        nnz = col.shape[0] if col is not None and len(col.shape) == 1 else 0
        req, opt = section_layout(p["bits"], m, n, nnz)
        expect_sections(rec, req, opt)

    def check_content(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> None:
        check_csr(rec, arrays["outlier_row_ptr"], arrays["outlier_col"], rec.shape[1])

    def decode(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        from ..decoder import squeezellm as numba_squeezellm

        return numba_squeezellm.decode(checked_params(rec), arrays, rec.shape)


CODEC = SqueezeLLMCodec()
