"""squeezellm vectors (spec/codecs/squeezellm.md): the logical tensor, its oracle, valid and invalid files.

The oracle works element by element in Python binary64 rounded to binary32 after every operation, so it
shares no code path with numpy's float32 ufuncs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .common import (
    Det,
    Invalid,
    Item,
    Valid,
    cols_of,
    csr_sections,
    drop_sec,
    flip_bit,
    float_bytes,
    invalid_adder,
    make_bias,
    make_outliers,
    mw,
    pack_rows,
    r32,
    raw_tens,
    replace_data,
    resize,
    retype,
    row_ptr_of,
    sec_f16,
    sec_of,
    tens_of,
    valid_adder,
)


@dataclass
class SqueezeLogical:
    m: int
    n: int
    bits: int
    lut: np.ndarray                               # [m, 2^bits] f16
    idx: list[list[int]]                          # [m][n] logical indices
    outliers: list[list[tuple[int, float]]]       # per row (column, f16 residual), increasing columns
    col_dtype: str = "u16"
    bias: np.ndarray | None = None
    bias_dtype: str = "f32"
    dtype: str = "f16"
    pad_bits: bool = False
    extra_params: dict[str, Any] = field(default_factory=dict)

    def oracle(self) -> np.ndarray:
        """squeezellm.md §5 element by element: table lookup, then one binary32 addition per residual."""
        out = np.zeros((self.m, self.n), dtype=np.float32)
        for r in range(self.m):
            row = [float(self.lut[r, self.idx[r][j]]) for j in range(self.n)]
            for c, v in self.outliers[r]:
                row[c] = r32(row[c] + float(np.float16(v)))
            out[r, :] = row
        return out

    def sections(self) -> list[mw.Sec]:
        W = (self.n * self.bits + 31) // 32
        secs = [sec_f16("lut", self.lut),
                mw.Sec("codes", "u32", [self.m, W], pack_rows(self.idx, self.bits, self.pad_bits))]
        secs += csr_sections(self.outliers, self.col_dtype)
        if self.bias is not None:
            secs.append(mw.Sec("bias", self.bias_dtype, [self.m], float_bytes(self.bias, self.bias_dtype)))
        return secs

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits, **self.extra_params}


def make_squeezellm(seed: str, m: int, n: int, bits: int, *, outliers: str = "some", col_dtype: str = "u16",
                    bias: str | None = None, dtype: str = "f16", pad_bits: bool = False,
                    extra_params: dict[str, Any] | None = None) -> SqueezeLogical:
    """Plausible tables: per row, 2^bits sorted f16 values around 0."""
    rng = Det(seed)
    K = 1 << bits
    lut = np.sort(rng.f16(-1.0, 1.0, m * K).reshape(m, K), axis=1)
    idx = rng.ints(0, K, m * n).reshape(m, n).tolist()
    rows = make_outliers(rng, m, n, outliers)
    return SqueezeLogical(m, n, bits, lut, idx, rows, col_dtype, make_bias(rng, m, bias), bias or "f32", dtype,
                          pad_bits, extra_params or {})


def squeezellm_tens(name: str, L: SqueezeLogical, **kw: Any) -> mw.Tens:
    return mw.Tens(name, [L.m, L.n], L.dtype, "squeezellm", L.params(), L.sections(), **kw)


def sq_item(name: str, L: SqueezeLogical, **kw: Any) -> Item:
    return squeezellm_tens(name, L, **kw), L.oracle(), L.bias


def squeezellm_worked_example() -> SqueezeLogical:
    """squeezellm.md §8, byte for byte (the test suite compares it with the spec text)."""
    lut = np.array([[-1.0, -0.25, 0.25, 1.0], [-2.0, 0.0, 0.5, 3.0]], dtype=np.float16)
    val = np.array([0x2E66, 0x0001], dtype="<u2").view("<f2")
    return SqueezeLogical(2, 5, 2, lut, [[0, 1, 2, 3, 3], [2, 1, 0, 0, 3]],
                          [[(3, float(val[0]))], [(4, float(val[1]))]])


def _sq_1x1() -> SqueezeLogical:
    L = make_squeezellm("sq1x1", 1, 1, 8, outliers="none")
    L.outliers = [[(0, -0.375)]]
    return L


def _sq_special() -> SqueezeLogical:
    L = make_squeezellm("sqspecial", 4, 10, 3, outliers="none")
    L.lut[0, :] = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 6e-8, 65504.0, 1.0], dtype=np.float16)
    L.idx[0] = [0, 1, 2, 3, 4, 5, 6, 7, 2, 3]
    L.idx[1][3] = 4                                        # +0 entry
    L.lut[1, 4] = np.float16(0.0)
    L.outliers = [[(1, 1.0), (2, float("inf")), (3, -0.0), (4, -0.0), (5, 6e-8), (6, 65504.0), (7, 6e-8),
                   (8, float("nan"))],
                  [(3, -0.0)], [], [(0, float("-inf")), (9, 6e-8)]]
    return L


def _base_file() -> tuple[list[mw.Tens], SqueezeLogical]:
    """A small valid file (raw + squeezellm with bias) that squeezellm invalid vectors corrupt."""
    L = make_squeezellm("sqbase", 4, 20, 3, bias="f16")
    L.outliers[1] = [(2, 0.25), (5, -0.125), (11, 0.5)]
    raw_t, _ = raw_tens("norm", "f32", [4])
    return [raw_t, squeezellm_tens("s", L)], L


def valid() -> list[Valid]:
    """Every bit width, outliers, u32 columns, bias, dtype, unsorted tables, special values."""
    out: list[Valid] = []
    add = valid_adder(out)
    # ---- squeezellm (codecs/squeezellm.md)
    add("squeezellm_worked_example", "squeezellm.md §8 byte for byte (m=2, n=5, b=2; 3.0 + 2^-24 rounds to 3.0)",
        [sq_item("w", squeezellm_worked_example())])
    for b in range(1, 9):
        add(f"squeezellm_bits{b}", f"squeezellm bits={b}, n=45 (not a multiple of 32, indices straddle words)",
            [sq_item("w", make_squeezellm(f"sqb{b}", 6, 45, b))])
    add("squeezellm_no_outliers", "nnz = 0: zero-length outlier_col/outlier_val, row_ptr all zero",
        [sq_item("w", make_squeezellm("sqnone", 5, 33, 3, outliers="none"))])
    add("squeezellm_full_outlier_rows", "rows where every column has a residual, rows with none, rows with two",
        [sq_item("w", make_squeezellm("sqfull", 9, 20, 4, outliers="full_rows"))])
    add("squeezellm_outlier_u32", "outlier_col stored as u32 although n <= 65536 (legal)",
        [sq_item("w", make_squeezellm("squ32", 5, 30, 3, col_dtype="u32"))])
    wide = make_squeezellm("sqwide", 1, 65537, 1, outliers="none", col_dtype="u32")
    wide.outliers = [[(0, 0.25), (65535, -0.5), (65536, 0.125)]]
    add("squeezellm_wide_u32_required", "n = 65537 > 65536: u32 outlier columns required, a residual at column 65536",
        [sq_item("w", wide)])
    for bd in ("f16", "bf16", "f32"):
        add(f"squeezellm_bias_{bd}", f"optional bias in {bd} (exposed separately, not part of the decoded tensor)",
            [sq_item("w", make_squeezellm(f"sqbias{bd}", 6, 20, 4, bias=bd))])
    for dt in ("bf16", "f32"):
        add(f"squeezellm_dtype_{dt}", f"tensor dtype {dt}: decoded output is f32 regardless",
            [sq_item("w", make_squeezellm(f"sqdt{dt}", 4, 16, 3, dtype=dt))])
    unsorted = make_squeezellm("squns", 4, 24, 3)
    unsorted.lut = unsorted.lut[:, ::-1].copy()
    unsorted.lut[1, :] = np.float16(0.5)                 # all entries equal
    unsorted.lut[2, 3] = unsorted.lut[2, 5]              # a duplicate pair
    add("squeezellm_lut_unsorted", "tables in descending order, one row of 8 equal entries, a duplicate pair "
        "(writers SHOULD sort; readers accept any table)", [sq_item("w", unsorted)])
    add("squeezellm_padding_bits_set", "every padding bit after the last index of a row is 1 (readers ignore it)",
        [sq_item("w", make_squeezellm("sqpad", 5, 21, 3, pad_bits=True))])
    add("squeezellm_1x1", "smallest squeezellm tensor: m = n = 1, bits 8 (a 256-entry table), one residual",
        [sq_item("w", _sq_1x1())])
    add("squeezellm_special_values", "NaN/inf/-0/subnormal LUT entries and residuals: inf + -inf = NaN, "
        "-0 + -0 = -0, +0 + -0 = +0, 65504 + 65504 stays finite in f32, 1 + 2^-24 ties to 1.0",
        [sq_item("w", _sq_special())])
    add("squeezellm_unknown_params", "unknown params keys beside bits are ignored",
        [sq_item("w", make_squeezellm("squnk", 3, 10, 2, extra_params={"x.kmeans_iters": 20, "group_size": "n/a"}))])
    return out


def invalid() -> list[Invalid]:
    """Every rejection rule of squeezellm.md §1-§3, §6."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    # ---- squeezellm: every rejection rule of squeezellm.md §1-§3, §6
    sq_ts, SQ = _base_file()

    def sqv(name: str, desc: str, fn: Callable[[list[mw.Tens]], Any], error: str) -> None:
        ts2, _ = _base_file()
        fn(ts2)
        add(f"squeezellm_{name}", "squeezellm: " + desc, mw.build(ts2), error)

    sqv("rank_1", "tensor shape [80]", lambda ts: tens_of(ts, "s").set.update(shape=[80]), "BAD_SHAPE")
    sqv("rank_3", "tensor shape [1, 4, 20]", lambda ts: tens_of(ts, "s").set.update(shape=[1, 4, 20]), "BAD_SHAPE")
    sqv("n_zero", "tensor shape [4, 0]", lambda ts: tens_of(ts, "s").set.update(shape=[4, 0]), "BAD_SHAPE")
    sqv("m_zero", "tensor shape [0, 20]", lambda ts: tens_of(ts, "s").set.update(shape=[0, 20]), "BAD_SHAPE")
    sqv("dtype_i8", "tensor dtype i8", lambda ts: tens_of(ts, "s").set.update(dtype="i8"), "BAD_PARAMS")
    sqv("dtype_f64", "tensor dtype f64", lambda ts: tens_of(ts, "s").set.update(dtype="f64"), "BAD_PARAMS")
    for val, why in ((0, "0"), (9, "9"), (-1, "-1"), (True, "true"), (3.0, "3_0"), (None, "nil"), ("3", "str")):
        sqv(f"bits_{why}", f"bits = {val!r}", lambda ts, val=val: tens_of(ts, "s").params.__setitem__("bits", val),
            "BAD_PARAMS")
    sqv("bits_missing", "params without bits", lambda ts: tens_of(ts, "s").params.pop("bits"), "BAD_PARAMS")
    for role in ("lut", "codes", "outlier_row_ptr", "outlier_col", "outlier_val"):
        sqv(f"missing_{role}", f"no {role!r} section", lambda ts, role=role: drop_sec(ts, "s", role),
            "BAD_SECTION_SET")
    sqv("extra_perm", "a 'perm' section (squeezellm has none)", lambda ts: tens_of(ts, "s").sections.append(
        mw.Sec("perm", "u32", [20], np.arange(20, dtype="<u4").tobytes())), "BAD_SECTION_SET")
    sqv("lut_f32", "lut stored as f32 (version 1 allows only f16)",
        lambda ts: retype(sec_of(ts, "s", "lut"), "f32", "<f4"), "BAD_SECTION_LAYOUT")
    sqv("lut_bf16", "lut stored as bf16", lambda ts: sec_of(ts, "s", "lut").__setattr__("dtype", "bf16"),
        "BAD_SECTION_LAYOUT")
    sqv("lut_short", "lut [4, 4] for bits = 3 (needs [4, 8])",
        lambda ts: resize(sec_of(ts, "s", "lut"), [4, 4], 2), "BAD_SECTION_LAYOUT")
    sqv("lut_1d", "lut [32] instead of [4, 8]", lambda ts: sec_of(ts, "s", "lut").__setattr__("shape", [32]),
        "BAD_SECTION_LAYOUT")
    sqv("codes_shape", "codes [4, 3] instead of [4, 2]", lambda ts: resize(sec_of(ts, "s", "codes"), [4, 3], 4),
        "BAD_SECTION_LAYOUT")
    sqv("codes_i32", "codes stored as i32", lambda ts: sec_of(ts, "s", "codes").__setattr__("dtype", "i32"),
        "BAD_SECTION_LAYOUT")
    sqv("row_ptr_len", "outlier_row_ptr of m entries (needs m + 1)",
        lambda ts: resize(sec_of(ts, "s", "outlier_row_ptr"), [4], 4), "BAD_SECTION_LAYOUT")
    sqv("row_ptr_u64", "outlier_row_ptr stored as u64",
        lambda ts: retype(sec_of(ts, "s", "outlier_row_ptr"), "u64", "<u8"), "BAD_SECTION_LAYOUT")
    sqv("outlier_col_i32", "outlier_col stored as i32",
        lambda ts: retype(sec_of(ts, "s", "outlier_col"), "i32", "<i4"), "BAD_SECTION_LAYOUT")
    sqv("outlier_col_2d", "outlier_col of shape [1, nnz]", lambda ts: sec_of(ts, "s", "outlier_col").__setattr__(
        "shape", [1, len(cols_of(SQ.outliers))]), "BAD_SECTION_LAYOUT")
    sqv("outlier_val_len", "outlier_val one element shorter than outlier_col", lambda ts: resize(
        sec_of(ts, "s", "outlier_val"), [len(cols_of(SQ.outliers)) - 1], 2), "BAD_SECTION_LAYOUT")
    sqv("outlier_val_f32", "outlier_val stored as f32", lambda ts: retype(sec_of(ts, "s", "outlier_val"), "f32", "<f4"),
        "BAD_SECTION_LAYOUT")
    sqv("bias_len", "bias of length m + 1", lambda ts: resize(sec_of(ts, "s", "bias"), [5], 2), "BAD_SECTION_LAYOUT")
    sqv("bias_i16", "bias stored as i16", lambda ts: sec_of(ts, "s", "bias").__setattr__("dtype", "i16"),
        "BAD_SECTION_LAYOUT")
    wide_sq = make_squeezellm("sqwideinv", 1, 65537, 1, outliers="none", col_dtype="u16")
    add("squeezellm_u16_cols_n_65537", "squeezellm: n = 65537 with u16 outlier_col",
        mw.build([squeezellm_tens("s", wide_sq)]), "BAD_SECTION_LAYOUT")
    sqv("section_checksum", "one bit of 'lut' flipped, crc32 unchanged", lambda ts: flip_bit(sec_of(ts, "s", "lut")),
        "SECTION_CHECKSUM")
    sptr = row_ptr_of(SQ.outliers)
    snnz = sptr[-1]
    scols = cols_of(SQ.outliers)
    sqv("csr_start_nonzero", "outlier_row_ptr[0] = 1", lambda ts: replace_data(
        ts, "s", "outlier_row_ptr", np.array([1] + sptr[1:], dtype="<u4")), "BAD_CSR")
    sqv("csr_decreasing", "outlier_row_ptr decreases", lambda ts: replace_data(
        ts, "s", "outlier_row_ptr", np.array([0, snnz, 1, snnz, snnz], dtype="<u4")), "BAD_CSR")
    sqv("csr_end_mismatch", "outlier_row_ptr[m] = nnz + 1", lambda ts: replace_data(
        ts, "s", "outlier_row_ptr", np.array(sptr[:-1] + [snnz + 1], dtype="<u4")), "BAD_CSR")
    sqv("csr_huge_entry", "outlier_row_ptr holds 2^32-1", lambda ts: replace_data(
        ts, "s", "outlier_row_ptr", np.array([0, 0, 0xFFFFFFFF, snnz, snnz], dtype="<u4")), "BAD_CSR")
    sqv("index_col_ge_n", "a residual column equal to n", lambda ts: replace_data(
        ts, "s", "outlier_col", np.array(scols[:-1] + [20], dtype="<u2")), "BAD_INDEX")
    s1 = sptr[1]
    assert sptr[2] - s1 >= 2
    sdup = list(scols)
    sdup[s1 + 1] = sdup[s1]
    sqv("index_col_repeated", "two residuals at the same column of one row (add semantics would apply twice)",
        lambda ts: replace_data(ts, "s", "outlier_col", np.array(sdup, dtype="<u2")), "BAD_INDEX")
    sdec = list(scols)
    sdec[s1], sdec[s1 + 1] = sdec[s1 + 1], sdec[s1]
    sqv("index_col_decreasing", "residual columns of one row in decreasing order",
        lambda ts: replace_data(ts, "s", "outlier_col", np.array(sdec, dtype="<u2")), "BAD_INDEX")
    del sq_ts
    return out
