"""Codec ``spqr`` v1 and v2 (spec/codecs/spqr.md): checks from the header, content checks, reference decode.

v2 (spqr.md §8) is v1 plus two required params, ``arith`` and ``outlier_op``;
:func:`checked_params` puts them into the params dict only for v2, so code
downstream (Numba decoder, kernels) can read them with v1 defaults and a v1
tensor carrying stray keys of those names still decodes as v1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ErrorCode, fail
from ..records import TensorRecord
from . import (
    SectionSpec,
    bias_section,
    check_csr,
    check_permutation,
    expect_sections,
    int_param,
    matrix_shape,
    outlier_sections,
)


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


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


class SpqrCodec:
    id = "spqr"
    versions = (1, 2)
    kernel_module = "spqrfmt.kernels.spqr"

    def check_record(self, rec: TensorRecord) -> None:
        req, opt = section_layout(rec, checked_params(rec))
        expect_sections(rec, req, opt)

    def check_content(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> None:
        m, n = rec.shape
        check_csr(rec, arrays["outlier_row_ptr"], arrays["outlier_col"], n)
        if "perm" in arrays:
            check_permutation(rec, arrays["perm"], n)

    def decode(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        from ..decoder import spqr as numba_spqr

        return numba_spqr.decode(checked_params(rec), arrays, rec.shape)


CODEC = SpqrCodec()
