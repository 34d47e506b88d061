"""Codec ``quip`` v1 (spec/codecs/quip.md): uniform-grid codes in an explicitly stored incoherent basis."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ErrorCode, fail
from ..records import TensorRecord
from . import SectionSpec, expect_sections, int_param

MAX_LOG2_HADAMARD = 30


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def checked_params(rec: TensorRecord) -> dict[str, Any]:
    """Validated params with the factor sizes ``a_m``, ``a_n``; raises BAD_SHAPE / BAD_PARAMS (quip.md §1, §2)."""
    if len(rec.shape) != 2 or rec.shape[0] < 1 or rec.shape[1] < 1:
        raise fail(ErrorCode.BAD_SHAPE, f"quip tensors are 2-D [m>=1, n>=1], got {list(rec.shape)}", rec.name)
    if rec.dtype not in ("f16", "bf16", "f32"):
        raise fail(ErrorCode.BAD_PARAMS, f"quip tensor dtype must be f16, bf16 or f32, got {rec.dtype}", rec.name)
    m, n = rec.shape
    p: dict[str, Any] = {
        "bits": int_param(rec, "bits", 1, 8),
        "log2_hm": int_param(rec, "log2_hm", 0, MAX_LOG2_HADAMARD),
        "log2_hn": int_param(rec, "log2_hn", 0, MAX_LOG2_HADAMARD),
    }
    for key, dim in (("log2_hm", m), ("log2_hn", n)):
        if dim % (1 << p[key]):
            raise fail(ErrorCode.BAD_PARAMS, f"2**{key} = {1 << p[key]} does not divide {dim}", rec.name)
    p["a_m"] = m >> p["log2_hm"]
    p["a_n"] = n >> p["log2_hn"]
    return p


def section_layout(p: Mapping[str, Any], m: int, n: int) -> tuple[dict[str, SectionSpec], dict[str, SectionSpec]]:
    """(required, optional) section specs (quip.md §3)."""
    req: dict[str, SectionSpec] = {
        "codes": (("u32",), (m, ceil_div(n * p["bits"], 32))),
        "scale": (("f32",), (m,)),
        "su": (("i8",), (n,)),
        "sv": (("i8",), (m,)),
    }
    if p["a_n"] > 1:
        req["factor_n"] = (("f32",), (p["a_n"], p["a_n"]))
    if p["a_m"] > 1:
        req["factor_m"] = (("f32",), (p["a_m"], p["a_m"]))
    opt: dict[str, SectionSpec] = {"bias": (("f16", "bf16", "f32"), (m,))}
    return req, opt


class QuipCodec:
    id = "quip"
    versions = (1,)
    kernel_module = "spqrfmt.kernels.quip"

    def check_record(self, rec: TensorRecord) -> None:
        p = checked_params(rec)
        req, opt = section_layout(p, *rec.shape)
        expect_sections(rec, req, opt)

    def check_content(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> None:
        for role in ("su", "sv"):
            s = np.asarray(arrays[role])
            if s.size and not np.all((s == 1) | (s == -1)):
                raise fail(ErrorCode.BAD_VALUE, f"sign vector {role!r} has entries other than +1/-1", rec.name)

    def decode(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        from ..decoder import quip as numba_quip

        return numba_quip.decode(checked_params(rec), arrays, rec.shape)


CODEC = QuipCodec()
