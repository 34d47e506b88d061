"""spqr vectors (spec/codecs/spqr.md), versions 1 and 2: the logical tensor, its oracles, valid and invalid files.

The version-1 oracle (``SpqrLogical.oracle``) works in numpy float32 scalars; the version-2 oracle
(``spqr_oracle_v2``) in Python floats with the f16 rounding ``r16`` written from the IEEE definition,
and a ``Trace`` that proves the special-values vector reaches a tie, an overflow and a subnormal at
each rounding site. The small file ``base_file`` (a raw tensor beside an spqr tensor) is also the one
the container's invalid vectors corrupt.

Why this module is long: it is the whole spqr generator, versions 1 and 2 together as spqr.md treats
them (one ``SpqrLogical`` carries the version; the v2 vectors compare against v1 tensors), and each
vector sits beside the oracle it exercises.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from .common import (
    F16_MAX,
    F16_MIN_NORMAL,
    MISSING,
    Det,
    Invalid,
    Item,
    Valid,
    cols_of,
    drop_sec,
    flip_bit,
    float_bytes,
    invalid_adder,
    is_tie16,
    make_bias,
    make_outliers,
    mw,
    pack_rows,
    r16,
    r32,
    raw_tens,
    replace_data,
    resize,
    retype,
    row_ptr_of,
    same_bits,
    sec_of,
    tens_of,
    valid_adder,
)

T11 = 2.0**-11          # half an f16 ulp at 1.0
T10 = 2.0**-10          # one f16 ulp at 1.0
NAN, INF = math.nan, math.inf


def _f32(x: Any) -> np.float32:
    return np.float32(x)


def _rne16(x: np.float32) -> np.float32:
    return np.float32(np.float16(x))


@dataclass
class Stat:
    """One statistic (scale or zero) in logical form."""

    bits: int
    direct: np.ndarray | None = None      # [G, m] f16 when bits == 16
    codes: list[list[int]] | None = None  # [G][m] when bits < 16
    ss: np.ndarray | None = None          # [G, K] f16 second-level scale
    sz: np.ndarray | None = None          # [G, K] f16 second-level zero

    def value(self, g: int, r: int, beta2: int) -> np.float32:
        if self.bits == 16:
            return _f32(self.direct[g, r])
        k = r // beta2
        t = _f32(self.codes[g][r]) - _f32(self.sz[g, k])
        return _rne16(np.float32(t * _f32(self.ss[g, k])))


@dataclass
class SpqrLogical:
    m: int
    n: int
    bits: int
    beta1: int
    beta2: int
    q: list[list[int]]
    scale: Stat
    zero: Stat
    outliers: list[list[tuple[int, float]]]   # per row, (stored column, f16 value), increasing columns
    perm: list[int] | None = None
    col_dtype: str = "u16"
    bias: np.ndarray | None = None
    bias_dtype: str = "f32"
    dtype: str = "f16"
    pad_bits: bool = False
    extra_params: dict[str, Any] = field(default_factory=dict)
    version: int = 1                          # codec_version; 2 adds arith / outlier_op (spqr.md §8)
    arith: str = "f32"
    outlier_op: str = "replace"

    def oracle(self) -> np.ndarray:
        """spqr.md §5, one element at a time, in f32 scalar arithmetic (version 2: spqr_oracle_v2)."""
        assert self.version == 1, "the version-2 oracle is spqr_oracle_v2"
        out = np.zeros((self.m, self.n), dtype=np.float32)
        with np.errstate(all="ignore"):
            for r in range(self.m):
                row = {}
                for j in range(self.n):
                    g = j // self.beta1
                    s = self.scale.value(g, r, self.beta2)
                    z = self.zero.value(g, r, self.beta2)
                    t = np.float32(_f32(self.q[r][j]) - z)
                    row[j] = np.float32(t * s)
                for c, v in self.outliers[r]:
                    row[c] = _f32(np.float16(v))
                for j in range(self.n):
                    out[r, self.perm[j] if self.perm is not None else j] = row[j]
        return out


def _stat_sections(name: str, st: Stat) -> list[mw.Sec]:
    if st.bits == 16:
        return [mw.Sec(name, "f16", list(st.direct.shape), st.direct.astype("<f2").tobytes())]
    G = len(st.codes)
    return [
        mw.Sec(f"{name}_codes", "u32", [G, (len(st.codes[0]) * st.bits + 31) // 32], pack_rows(st.codes, st.bits)),
        mw.Sec(f"{name}_scale", "f16", list(st.ss.shape), st.ss.astype("<f2").tobytes()),
        mw.Sec(f"{name}_zero", "f16", list(st.sz.shape), st.sz.astype("<f2").tobytes()),
    ]


def spqr_sections(L: SpqrLogical) -> list[mw.Sec]:
    W = (L.n * L.bits + 31) // 32
    secs = [mw.Sec("codes", "u32", [L.m, W], pack_rows(L.q, L.bits, L.pad_bits))]
    secs += _stat_sections("scale", L.scale)
    secs += _stat_sections("zero", L.zero)
    ptr = [0]
    cols: list[int] = []
    vals: list[float] = []
    for row in L.outliers:
        cols += [c for c, _ in row]
        vals += [v for _, v in row]
        ptr.append(len(cols))
    secs.append(mw.Sec("outlier_row_ptr", "u32", [L.m + 1], np.array(ptr, dtype="<u4").tobytes()))
    secs.append(mw.Sec("outlier_col", L.col_dtype, [len(cols)],
                       np.array(cols, dtype="<u2" if L.col_dtype == "u16" else "<u4").tobytes()))
    secs.append(mw.Sec("outlier_val", "f16", [len(vals)], np.array(vals, dtype="<f2").tobytes()))
    if L.perm is not None:
        secs.append(mw.Sec("perm", "u32", [L.n], np.array(L.perm, dtype="<u4").tobytes()))
    if L.bias is not None:
        secs.append(mw.Sec("bias", L.bias_dtype, [L.m], float_bytes(L.bias, L.bias_dtype)))
    return secs


def spqr_params(L: SpqrLogical) -> dict[str, Any]:
    p: dict[str, Any] = {"bits": L.bits, "group_size": L.beta1, "scale_bits": L.scale.bits, "zero_bits": L.zero.bits}
    if L.scale.bits < 16 or L.zero.bits < 16:
        p["stat_group_size"] = L.beta2
    if L.version == 2:
        p.update(arith=L.arith, outlier_op=L.outlier_op)
    p.update(L.extra_params)
    return p


def make_stat(rng: Det, bits: int, G: int, m: int, beta2: int, kind: str) -> Stat:
    """Plausible statistics: positive scales, zeros inside the code range."""
    if bits == 16:
        if kind == "scale":
            return Stat(16, direct=rng.f16(0.001, 0.25, G * m).reshape(G, m))
        return Stat(16, direct=rng.f16(-1.0, 9.0, G * m).reshape(G, m))
    K = (m + beta2 - 1) // beta2
    codes = rng.ints(0, 1 << bits, G * m).reshape(G, m).tolist()
    if kind == "scale":
        ss = rng.f16(0.0005, 0.01, G * K).reshape(G, K)
        sz = rng.f16(-2.0, 1.0, G * K).reshape(G, K)
    else:
        ss = rng.f16(0.05, 1.5, G * K).reshape(G, K)
        sz = rng.f16(0.0, (1 << bits) / 2, G * K).reshape(G, K)
    return Stat(bits, codes=codes, ss=ss, sz=sz)


def make_spqr(seed: str, m: int, n: int, bits: int, beta1: int, *, sb: int = 16, zb: int = 16, beta2: int = 16,
              outliers: str = "some", col_dtype: str = "u16", perm: bool = False, bias: str | None = None,
              dtype: str = "f16", pad_bits: bool = False, extra_params: dict[str, Any] | None = None) -> SpqrLogical:
    rng = Det(seed)
    G = (n + beta1 - 1) // beta1
    q = rng.ints(0, 1 << bits, m * n).reshape(m, n).tolist()
    scale = make_stat(rng, sb, G, m, beta2, "scale")
    zero = make_stat(rng, zb, G, m, beta2, "zero")
    rows = make_outliers(rng, m, n, outliers, -4.0, 4.0)
    bias_arr = make_bias(rng, m, bias)
    return SpqrLogical(m, n, bits, beta1, beta2, q, scale, zero, rows, rng.perm(n) if perm else None, col_dtype,
                       bias_arr, bias or "f32", dtype, pad_bits, extra_params or {})


def spqr_tens(name: str, L: SpqrLogical, **kw: Any) -> mw.Tens:
    kw.setdefault("codec_version", L.version)
    return mw.Tens(name, [L.m, L.n], L.dtype, "spqr", spqr_params(L), spqr_sections(L), **kw)


class Trace:
    """Counts what happened at each rounding site of the spqr v2 oracle (to prove a vector exercises it)."""

    def __init__(self) -> None:
        self.events: Counter[tuple[str, str]] = Counter()

    def see(self, x: float, site: str) -> None:
        y = r16(x)
        if is_tie16(x):
            self.events[(site, "tie")] += 1
        if math.isfinite(x) and math.isinf(y):
            self.events[(site, "overflow")] += 1
        if y != 0.0 and abs(y) < F16_MIN_NORMAL:
            self.events[(site, "subnormal")] += 1
        if math.isnan(x):
            self.events[(site, "nan")] += 1


def spqr_oracle_v2(L: SpqrLogical, trace: Trace | None = None) -> np.ndarray:
    """spqr.md §8.3 element by element: R = r16 after every listed operation when arith = "f16"."""
    f16 = L.arith == "f16"

    def rnd(x: float, site: str) -> float:
        if trace is not None:
            trace.see(x, site)
        return r16(x)

    def R(x: float, site: str) -> float:
        return rnd(x, site) if f16 else x

    def stat(st: Stat, g: int, r: int) -> float:
        if st.bits == 16:
            return float(st.direct[g, r])
        k = r // L.beta2
        t = R(r32(float(st.codes[g][r]) - float(st.sz[g, k])), "stat_sub")
        return rnd(r32(t * float(st.ss[g, k])), "stat_mul")         # always rounded to f16

    out = np.zeros((L.m, L.n), dtype=np.float32)
    for r in range(L.m):
        row = []
        for j in range(L.n):
            g = j // L.beta1
            t = R(r32(float(L.q[r][j]) - stat(L.zero, g, r)), "dense_sub")
            row.append(R(r32(t * stat(L.scale, g, r)), "dense_mul"))
        for c, v in L.outliers[r]:
            v32 = float(np.float16(v))
            row[c] = R(r32(row[c] + v32), "add") if L.outlier_op == "add" else v32
        for j in range(L.n):
            out[r, L.perm[j] if L.perm is not None else j] = row[j]
    return out


def v2spqr(seed: str, m: int, n: int, bits: int, beta1: int, arith: str, op: str, **kw: Any) -> SpqrLogical:
    L = make_spqr(seed, m, n, bits, beta1, **kw)
    L.version, L.arith, L.outlier_op = 2, arith, op
    return L


def spqr_item(name: str, L: SpqrLogical, **kw: Any) -> tuple[mw.Tens, np.ndarray, np.ndarray | None]:
    exp = spqr_oracle_v2(L) if L.version == 2 else L.oracle()
    return spqr_tens(name, L, **kw), exp, L.bias


def spqr_made(name: str, seed: str, *args: Any, tkw: dict[str, Any] | None = None, **kw: Any) -> Item:
    """``spqr_item`` of ``make_spqr(seed, *args, **kw)``; ``tkw``: keyword arguments of the tensor record."""
    return spqr_item(name, make_spqr(seed, *args, **kw), **(tkw or {}))


def _wide_entry() -> tuple[mw.Tens, np.ndarray, None]:
    L = make_spqr("wide", 1, 65537, 1, 65536, outliers="none", col_dtype="u32")
    L.outliers = [[(0, 1.0), (65535, -2.0), (65536, 0.5)]]
    return spqr_tens("w", L), L.oracle(), None


def _special_entry() -> tuple[mw.Tens, np.ndarray, None]:
    L = make_spqr("special", 6, 16, 4, 4, sb=16, zb=4, beta2=2)
    sp = np.array([np.nan, np.inf, -np.inf, -0.0, 6e-8, 60000.0], dtype=np.float16)
    L.scale.direct[0, :] = sp                      # group 0 scales for rows 0..5
    L.scale.direct[1, 2] = np.float16(1e-7)        # subnormal products
    L.zero.ss[1, 0] = np.float16(60000.0)          # zero stat overflows f16 -> inf
    L.zero.ss[2, 1] = np.float16(np.nan)
    L.zero.sz[3, 2] = np.float16(-np.inf)
    L.outliers[1] = [(0, float("nan")), (3, float("inf")), (7, -0.0), (9, 6e-8)]
    return spqr_tens("w", L), L.oracle(), None


def _h(bits: int) -> float:
    """The f16 value with this bit pattern, as a Python float."""
    return float(np.array([bits], dtype="<u2").view("<f2")[0])


def spqr_worked_example(arith: str, op: str) -> SpqrLogical:
    """spqr.md §8.5, byte for byte."""
    scale = Stat(3, codes=[[5]], ss=np.array([[_h(0x224C)]], np.float16), sz=np.array([[_h(0x2E66)]], np.float16))
    zero = Stat(3, codes=[[3]], ss=np.array([[_h(0x3C66)]], np.float16), sz=np.array([[_h(0x34CD)]], np.float16))
    L = SpqrLogical(1, 4, 3, 4, 1, [[0, 7, 2, 5]], scale, zero, [[(2, _h(0x2971))]])
    L.version, L.arith, L.outlier_op = 2, arith, op
    return L


def _direct(rows: list[tuple[float, float]]) -> tuple[Stat, Stat]:
    """16-bit statistics, one column group: row r gets (scale, zero) = rows[r]."""
    s = np.array([[x for x, _ in rows]], dtype=np.float16)
    z = np.array([[z for _, z in rows]], dtype=np.float16)
    return Stat(16, direct=s), Stat(16, direct=z)


def spqr_special_dense(arith: str, op: str) -> SpqrLogical:
    """16-bit statistics, bits 8, n = 8, one group: each row one kind of special value (rows listed below)."""
    rows = [  # (scale, zero), codes, outliers (stored column, f16 value)
        ((INF, 3.0), [3, 4, 2, 3, 4, 2, 0, 255], [(1, -INF), (2, 5.0), (6, NAN)]),           # 0*inf, inf-inf
        ((2.0, NAN), [0, 1, 2, 3, 4, 5, 6, 7], [(0, 1.0)]),                                # NaN zero
        ((512.0, -100.0), [255, 27, 0, 7, 28, 1, 2, 3], [(1, 30.0), (2, -INF), (5, 8000.0)]),  # f16 overflow
        ((256.0, 0.0), [255, 255, 255, 254, 0, 1, 2, 3], [(0, 240.0), (1, 224.0), (2, 241.0), (3, 496.0)]),
        ((2.0**-24, 0.5), [1, 2, 3, 4, 5, 6, 0, 255], [(6, 2.0**-24), (7, -(2.0**-24))]),  # subnormal ties
        ((-1.0, 5.0), [5, 5, 5, 6, 4, 0, 5, 5], [(0, 0.0), (1, -0.0), (5, 5.0)]),           # -0 dense
        ((1.0 + T10, -T11), [1, 3, 2, 1, 0, 3, 2, 1], [(0, T11), (2, 3 * T11), (4, -T11)]),  # ties
        ((1.0, -3 * T11), [1, 1, 3, 0, 2, 200, 100, 254], [(3, T11), (6, 0.125)]),          # ties, round up
    ]
    scale, zero = _direct([sz for sz, _, _ in rows])
    L = SpqrLogical(len(rows), 8, 8, 8, 1, [c for _, c, _ in rows], scale, zero, [o for _, _, o in rows])
    L.version, L.arith, L.outlier_op = 2, arith, op
    return L


def spqr_special_stats(arith: str, op: str) -> SpqrLogical:
    """8-bit two-level statistics (beta2 = 1), one group, n = 4: specials and ties inside step 1."""
    # (scale code, scale_scale, scale_zero), (zero code, zero_scale, zero_zero) per row
    spec = [
        ((255, 0.5, -F16_MAX), (0, 1.0, 0.0)),               # 255 + 65504 overflows f16 (f32 keeps it)
        ((3, 1.0 + T10, 0.0), (1, 1.0, -T11)),               # product tie 3 + 3*2^-10; zero 1 + 2^-11 ties to 1
        ((1, 1.0, -3 * T11), (2, 1.0, 0.5)),                 # 1 + 3*2^-11 ties up to 1 + 2^-9
        ((200, 400.0, 0.0), (1, 1.0, 0.0)),                  # 80000 overflows f16 in both modes
        ((1, NAN, 0.0), (0, 1.0, 0.0)),                      # NaN second-level scale
        ((2, 1.0, 0.0), (4, 2.0, -INF)),                     # inf zero
        ((1, 2.0**-14, 0.75), (0, 1.0, 0.0)),                # subnormal scale 2^-16
        ((5, 0.25, 5.0), (2, 1.0, 0.0)),                     # scale +0 -> dense +-0
    ]
    m = len(spec)

    def stat(i: int) -> Stat:
        return Stat(8, codes=[[s[i][0] for s in spec]], ss=np.array([[s[i][1] for s in spec]], np.float16),
                        sz=np.array([[s[i][2] for s in spec]], np.float16))

    q = [[0, 1, 5, 255], [0, 1, 2, 3], [1, 2, 3, 4], [0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7], [1, 3, 255, 0],
         [0, 1, 2, 3]]
    outl = [[(0, 1.0)], [(3, T11)], [], [(1, -INF)], [(2, 1.0)], [], [(0, 2.0**-24)], [(2, -0.0), (3, 0.0)]]
    L = SpqrLogical(m, 4, 8, 4, 1, q, stat(0), stat(1), outl)
    L.version, L.arith, L.outlier_op = 2, arith, op
    return L


def spqr_f32_add_cancel() -> SpqrLogical:
    """arith "f32", outlier_op "add": outliers -rne16(dense) leave the product's rounding error, which an FMA
    (product not rounded before the addition, forbidden by spqr.md §8.3) would get wrong."""
    L = v2spqr("v2cancel", 4, 16, 4, 8, "f32", "add", outliers="none")
    dense = spqr_oracle_v2(L)
    L.outliers = [[(c, -r16(float(dense[r, c]))) for c in range(0, 16, 3)] for r in range(4)]
    return L


def _fused_differs(L: SpqrLogical) -> bool:
    """Some outlier position decodes differently when product and addition are fused (one rounding)."""
    base = spqr_oracle_v2(L)
    for r in range(L.m):
        for c, v in L.outliers[r]:
            g = c // L.beta1
            t = Fraction(float(L.q[r][c])) - Fraction(float(L.zero.direct[g, r]))
            exact = t * Fraction(float(L.scale.direct[g, r])) + Fraction(float(np.float16(v)))
            if r32(float(exact)) != float(base[r, c]):
                return True
    return False


def _rne16_stats() -> SpqrLogical:
    """spqr v1, 2-bit two-level scales (beta2 = 1): each row's scale is rne16((code - sz) * ss).

    Row 0: (3 - 2^-11) * 21840 = 65509.336 -> 65504 (IEEE RNE; not inf). Row 1: 3 * 21840 = 65520, the
    halfway point, ties to even -> inf. Row 2: the negative of row 0 -> -65504. Row 3: 2 * 32752 = 65504.
    The zero is 0 and codes q are 1 and 2, so the decoded values are S and 2 S.
    """
    spec = [(3, 21840.0, T11), (3, 21840.0, 0.0), (3, -21840.0, T11), (2, 32752.0, 0.0)]
    m = len(spec)
    scale = Stat(2, codes=[[c for c, _, _ in spec]], ss=np.array([[s for _, s, _ in spec]], np.float16),
                     sz=np.array([[z for _, _, z in spec]], np.float16))
    zero = Stat(16, direct=np.zeros((1, m), np.float16))
    return SpqrLogical(m, 2, 2, 2, 1, [[1, 2]] * m, scale, zero, [[] for _ in range(m)])


def _rne16_dense(arith: str) -> SpqrLogical:
    """spqr v2, 16-bit stats: (q - Z) * S with q - Z = 1.2021484375 (f16-exact) and S = +-54496.

    The product 65512.28125 is f32-exact: arith "f16" rounds it to 65504 (RNE, not inf), arith "f32"
    keeps it; q = 3 overflows to inf in "f16" mode.
    """
    z = 2.0 - 1.2021484375
    scale, zero = _direct([(54496.0, z), (-54496.0, z)])
    L = SpqrLogical(2, 3, 2, 3, 1, [[2, 3, 0], [2, 3, 0]], scale, zero, [[], []])
    L.version, L.arith, L.outlier_op = 2, arith, "replace"
    return L


# ---------------------------------------------------------------- the file invalid vectors corrupt


def base_file() -> tuple[list[mw.Tens], SpqrLogical]:
    """A small valid file (raw + spqr with perm and two-level stats) that invalid vectors corrupt."""
    L = make_spqr("base", 4, 20, 3, 8, sb=3, zb=16, beta2=2, perm=True, bias="f16")
    L.outliers[1] = [(2, 1.5), (5, -0.5), (11, 2.0)]  # invalid vectors edit the columns of row 1
    raw_t, _ = raw_tens("norm", "f32", [4])
    return [raw_t, spqr_tens("w", L)], L


def edit_base(fn: Callable[[list[mw.Tens]], Any], **build_kw: Any) -> bytes:
    ts, _ = base_file()
    fn(ts)
    return mw.build(ts, **build_kw)


def _nnz(ts: list[mw.Tens]) -> int:
    return len(sec_of(ts, "w", "outlier_val").data) // 2


def edit_adder(add: Callable[..., None]) -> Callable[..., None]:
    """``rec(name, description, fn, error, also=(), **build_kw)``: ``base_file`` edited by ``fn``, as a vector."""

    def rec(name: str, desc: str, fn: Callable[[list[mw.Tens]], Any], error: str, also: tuple[str, ...] = (),
            **kw: Any) -> None:
        add(name, desc, edit_base(fn, **kw), error, also)

    return rec


def _base_v2() -> list[mw.Tens]:
    L = v2spqr("v2base", 4, 20, 3, 8, "f16", "add", sb=3, zb=16, beta2=2, perm=True, bias="f16")
    raw_t, _ = raw_tens("norm", "f32", [4])
    return [raw_t, spqr_tens("w", L)]


# ---------------------------------------------------------------- vectors (in the manifest's order, see generate.py)


def valid_v1() -> list[Valid]:
    """Version 1: every bit width, group and statistics shape, outliers, perm, bias, dtype."""
    out: list[Valid] = []
    add = valid_adder(out)
    for b in range(1, 9):
        add(f"spqr_bits{b}", f"spqr bits={b}, n=45 (codes straddle words), group 16 (last group 13), f16 stats",
            [spqr_made("w", f"bits{b}", 6, 45, b, 16)])
    add("spqr_group_nondividing", "group sizes that do not divide n: 7 | 50 no, 1 (one column per group), 64 > n",
        [spqr_made("g7", "g7", 5, 50, 3, 7), spqr_made("g1", "g1", 3, 9, 4, 1), spqr_made("g64", "g64", 4, 33, 2, 64)])
    for sb, zb in ((3, 16), (16, 3), (3, 4), (8, 8), (1, 2), (2, 1), (7, 5)):
        add(f"spqr_stats_s{sb}_z{zb}", f"two-level stats scale_bits={sb} zero_bits={zb}, stat_group_size 4 "
            "does not divide m=10", [spqr_made("w", f"st{sb}{zb}", 10, 40, 3, 16, sb=sb, zb=zb, beta2=4)])
    add("spqr_stats_beta2_big", "stat_group_size 65536 > m (one second-level group), 3-bit stats",
        [spqr_made("w", "b2big", 7, 24, 4, 8, sb=3, zb=3, beta2=65536)])
    add("spqr_no_outliers", "nnz = 0: zero-length outlier_col/outlier_val sections, row_ptr all zero",
        [spqr_made("w", "noout", 8, 32, 4, 16, outliers="none")])
    add("spqr_full_outlier_rows", "rows where every column is an outlier, rows with none, rows with two",
        [spqr_made("w", "full", 9, 20, 2, 8, outliers="full_rows")])
    add("spqr_outlier_u32", "outlier_col stored as u32 although n <= 65536 (legal)",
        [spqr_made("w", "u32col", 6, 30, 3, 16, col_dtype="u32")])
    add("spqr_perm", "column permutation (act-order)", [spqr_made("w", "perm", 5, 37, 3, 8, perm=True)])
    for bd in ("f16", "bf16", "f32"):
        add(f"spqr_bias_{bd}", f"optional bias section in {bd} (exposed separately, not part of the decoded tensor)",
            [spqr_made("w", f"bias{bd}", 6, 20, 4, 16, bias=bd)])
    add("spqr_everything", "perm + bias + u32 columns + 2-bit scale / 16-bit zero stats + bf16 tensor dtype",
        [spqr_made("w", "all", 11, 70, 3, 32, sb=2, zb=16, beta2=3, perm=True, bias="f32", col_dtype="u32",
              dtype="bf16")])
    for dt in ("f16", "bf16", "f32"):
        add(f"spqr_dtype_{dt}", f"tensor dtype {dt}: decoded output is f32 regardless",
            [spqr_made("w", f"dt{dt}", 4, 16, 4, 16, dtype=dt)])
    add("spqr_1x1", "smallest spqr tensor: m = n = 1, bits 8, one outlier", [spqr_made("w", "1x1", 1, 1, 8, 1)])
    add("spqr_wide_u32_required", "n = 65537 > 65536: u32 outlier columns required, an outlier at column 65536, "
        "group_size 65536 (maximum, last group has 1 column)", [_wide_entry()])
    add("spqr_special_values", "NaN/inf/-0/subnormal stats and outliers, scales that overflow f16 in rne16: "
        "must propagate per IEEE (NaN compared as any NaN)", [_special_entry()])
    add("spqr_code_padding_bits_set", "every padding bit after the last code of a packed row is 1 "
        "(writers must not do this, readers must ignore them)",
        [spqr_made("w", "padbits", 5, 21, 3, 8, sb=3, zb=5, beta2=2, pad_bits=True)])
    add("spqr_stat_group_size_ignored", "both stats 16-bit: stat_group_size is a string, which is ignored",
        [spqr_made("w", "ignored", 4, 20, 3, 16, extra_params={"stat_group_size": "not read"})])
    return out


def valid_v1_late() -> list[Valid]:
    """Version 1: an ignored stat_group_size of any value."""
    out: list[Valid] = []
    add = valid_adder(out)
    add("spqr_stat_group_size_ignored_any_value", "both stats 16-bit: an ignored stat_group_size of 0, -5, nil "
        "or a map is not read, hence not rejected",
        [spqr_made("a", "ign0", 3, 8, 2, 8, extra_params={"stat_group_size": 0}),
         spqr_made("b", "ign1", 3, 8, 2, 8, extra_params={"stat_group_size": -5}),
         spqr_made("c", "ign2", 3, 8, 2, 8, extra_params={"stat_group_size": None}),
         spqr_made("d", "ign3", 3, 8, 2, 8, extra_params={"stat_group_size": {"x": 1}})])
    return out


def valid_v2() -> list[Valid]:
    """Version 2 (spqr.md §8): each (arith, outlier_op) pair, v1 equivalence, special values."""
    out: list[Valid] = []
    add = valid_adder(out)
    add("spqr_v2_worked_example", "spqr.md §8.5 byte for byte under all four (arith, outlier_op) pairs",
        [spqr_item(f"{a}_{op}", spqr_worked_example(a, op)) for a in ("f32", "f16") for op in ("replace", "add")])
    for arith, op in (("f16", "add"), ("f16", "replace"), ("f32", "add")):
        tag = f"{arith}{op}"
        add(f"spqr_v2_{arith}_{op}", f"spqr v2 arith={arith} outlier_op={op}: 3-bit codes with n = 45 (straddling), "
            "16-bit and 3-bit/5-bit two-level stats (stat_group_size 4 does not divide m = 10), each without and "
            "with perm; f16 bias; an unknown params key",
            [spqr_item("stats16", v2spqr(f"{tag}a", 6, 45, 3, 16, arith, op)),
             spqr_item("stats16_perm", v2spqr(f"{tag}b", 6, 45, 3, 16, arith, op, perm=True, bias="f16")),
             spqr_item("stats_q", v2spqr(f"{tag}c", 10, 45, 3, 16, arith, op, sb=3, zb=5, beta2=4)),
             spqr_item("stats_q_perm", v2spqr(f"{tag}d", 10, 45, 3, 8, arith, op, sb=3, zb=3, beta2=4, perm=True,
                                           extra_params={"x.source": "spqr_quant"}))])
    pairs = []
    for tag, kw in (("stats16", {"perm": True}), ("stats_q", {"sb": 3, "zb": 4, "beta2": 3})):
        v2 = v2spqr(f"v1eq{tag}", 7, 45, 3, 16, "f32", "replace", **kw)
        v1 = make_spqr(f"v1eq{tag}", 7, 45, 3, 16, **kw)
        e1, e2 = spqr_item(f"{tag}.v1", v1), spqr_item(f"{tag}.v2", v2)
        assert same_bits(e1[1], e2[1]), "v2 f32/replace must equal v1 (spqr.md §8)"
        pairs += [e1, e2]
    add("spqr_v2_f32_replace", "arith f32 + outlier_op replace: each v2 tensor decodes exactly like the v1 tensor "
        "with the same sections beside it (spqr.md §8)", pairs)

    trace = Trace()
    specials = []
    for arith, op in (("f16", "add"), ("f16", "replace"), ("f32", "add")):
        for kind, build in (("dense", spqr_special_dense), ("stats", spqr_special_stats)):
            L = build(arith, op)
            spqr_oracle_v2(L, trace)
            specials.append(spqr_item(f"{kind}.{arith}_{op}", L))
    need = {(site, ev) for site in ("stat_sub", "stat_mul", "dense_sub", "dense_mul", "add") for ev in ("tie",)}
    need |= {("stat_sub", "overflow"), ("stat_mul", "overflow"), ("dense_mul", "overflow"), ("add", "overflow"),
             ("dense_mul", "subnormal"), ("stat_mul", "subnormal"), ("add", "subnormal")}
    assert need <= set(trace.events), sorted(need - set(trace.events))
    cancel = spqr_f32_add_cancel()
    assert _fused_differs(cancel), "the cancellation tensor must tell an FMA apart"
    specials.append(spqr_item("f32_add_no_fma", cancel))
    add("spqr_v2_special_values", "NaN/inf statistics and outliers (0*inf, inf-inf, inf+-inf), f16 intermediates "
        "overflowing to inf (stat subtraction, stat product, dense product, outlier addition incl. the 65504+16 "
        "tie), subnormal f16 results with ties, ties at every rounding, -0 dense + +0 outlier = +0, and an "
        "f32/add tensor an FMA would decode differently", specials)
    v1 = make_spqr("v1keys", 5, 20, 3, 8, sb=3, zb=3, beta2=2,
                       extra_params={"arith": "f16", "outlier_op": "add"})
    v1b = make_spqr("v1keysb", 3, 12, 2, 4, extra_params={"arith": 16, "outlier_op": None})
    add("spqr_v1_ignores_v2_params", "version-1 tensors carrying arith/outlier_op keys (valid and invalid v2 "
        "values): version 1 ignores unknown keys and decodes with f32 / replace",
        [spqr_item("w", v1), spqr_item("x", v1b)])
    return out


def valid_edges() -> list[Valid]:
    """rne16 at the f16 overflow threshold, in v1 stats and v2 dense products."""
    out: list[Valid] = []
    add = valid_adder(out)
    add("spqr_rne16_overflow_threshold", "rne16 is IEEE round-to-nearest-even: 65504 < |x| < 65520 rounds to "
        "+-65504, 65520 (the halfway point) ties to inf; in v1 two-level scales and in v2 arith f16 / f32 "
        "dense products (spqr.md §5, §8.4)",
        [spqr_item("v1_stats", _rne16_stats()), spqr_item("v2_f16", _rne16_dense("f16")),
         spqr_item("v2_f32", _rne16_dense("f32"))])
    return out


def invalid_v1() -> list[Invalid]:
    """Version 1: params, shapes, section sets and layouts, checksums, CSR, index, perm."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    rec = edit_adder(add)
    _, L = base_file()
    # spqr params
    for key, val, why in (("bits", 0, "bits 0"), ("bits", 9, "bits 9"), ("bits", True, "bits true (bool)"),
                          ("bits", 3.0, "bits 3.0 (float)"), ("group_size", 0, "group_size 0"),
                          ("group_size", 65537, "group_size 65537"), ("scale_bits", 12, "scale_bits 12"),
                          ("zero_bits", 0, "zero_bits 0"), ("stat_group_size", 0, "stat_group_size 0"),
                          ("stat_group_size", None, "stat_group_size nil while scale_bits < 16")):
        rec(f"params_{key}_{str(val).lower().replace('.', '_')}", f"spqr params: {why}",
            lambda ts, key=key, val=val: tens_of(ts, "w").params.__setitem__(key, val), "BAD_PARAMS")
    rec("params_missing_bits", "spqr params without 'bits'", lambda ts: tens_of(ts, "w").params.pop("bits"),
        "BAD_PARAMS")
    rec("spqr_rank_1", "spqr tensor of shape [80]", lambda ts: tens_of(ts, "w").set.update(shape=[80]), "BAD_SHAPE")
    rec("spqr_m_zero", "spqr tensor of shape [0, 20]", lambda ts: tens_of(ts, "w").set.update(shape=[0, 20]),
        "BAD_SHAPE")
    rec("spqr_dtype_i8", "spqr tensor dtype i8 (must be f16/bf16/f32)",
        lambda ts: tens_of(ts, "w").set.update(dtype="i8"), "BAD_PARAMS")
    # section sets / layouts
    rec("set_missing_codes", "spqr without 'codes'", lambda ts: drop_sec(ts, "w", "codes"), "BAD_SECTION_SET")
    rec("set_extra_role", "spqr with an undefined role 'junk'",
        lambda ts: tens_of(ts, "w").sections.append(mw.Sec("junk", "u8", [1], b"\x01")), "BAD_SECTION_SET")
    rec("set_scale_and_codes", "scale_bits < 16 but a direct 'scale' section is present too",
        lambda ts: tens_of(ts, "w").sections.append(mw.Sec("scale", "f16", [3, 4], bytes(24))), "BAD_SECTION_SET")
    rec("set_raw_two_sections", "raw tensor with 'data' and 'extra'",
        lambda ts: tens_of(ts, "norm").sections.append(mw.Sec("extra", "u8", [1], b"\x00")), "BAD_SECTION_SET")
    rec("layout_codes_shape", "codes shape [4, 3] instead of [4, 2]",
        lambda ts: resize(sec_of(ts, "w", "codes"), [4, 3], 4), "BAD_SECTION_LAYOUT")
    rec("layout_scale_scale_dtype", "scale_scale stored as f32",
        lambda ts: retype(sec_of(ts, "w", "scale_scale"), "f32", "<f4"), "BAD_SECTION_LAYOUT")
    rec("layout_outlier_col_i32", "outlier_col dtype i32",
        lambda ts: retype(sec_of(ts, "w", "outlier_col"), "i32", "<i4"), "BAD_SECTION_LAYOUT")
    rec("layout_outlier_val_len", "outlier_val has one element fewer than outlier_col",
        lambda ts: resize(sec_of(ts, "w", "outlier_val"), [_nnz(ts) - 1], 2), "BAD_SECTION_LAYOUT")
    rec("layout_perm_u16", "perm stored as u16", lambda ts: retype(sec_of(ts, "w", "perm"), "u16", "<u2"),
        "BAD_SECTION_LAYOUT")
    rec("layout_bias_len", "bias of length m + 1", lambda ts: resize(sec_of(ts, "w", "bias"), [5], 2),
        "BAD_SECTION_LAYOUT")
    rec("layout_raw_dtype", "raw tensor f32 with an i32 data section",
        lambda ts: sec_of(ts, "norm", "data").__setattr__("dtype", "i32"), "BAD_SECTION_LAYOUT")
    rec("layout_raw_shape", "raw tensor [4] with a [2, 2] data section",
        lambda ts: sec_of(ts, "norm", "data").__setattr__("shape", [2, 2]), "BAD_SECTION_LAYOUT")
    wide = make_spqr("wideinv", 1, 65537, 1, 65536, outliers="none", col_dtype="u16")
    add("layout_u16_cols_n_65537", "n = 65537 with u16 outlier_col (cannot hold column 65536)",
        mw.build([spqr_tens("w", wide)]), "BAD_SECTION_LAYOUT")
    # checksums
    rec("section_checksum", "one bit of 'codes' flipped, crc32 unchanged",
        lambda ts: flip_bit(sec_of(ts, "w", "codes")), "SECTION_CHECKSUM")
    rec("section_checksum_empty", "zero-length section whose crc32 is 1 (CRC-32 of no bytes is 0)",
        lambda ts: ts.append(mw.Tens("e", [0], "f32", "raw", {}, [mw.Sec("data", "f32", [0], b"", set={"crc32": 1})])),
        "SECTION_CHECKSUM")
    # CSR / index / permutation (CRCs restamped so only the intended rule breaks)
    ptr = row_ptr_of(L.outliers)
    nnz = ptr[-1]
    rec("csr_start_nonzero", "outlier_row_ptr[0] = 1",
        lambda ts: replace_data(ts, "w", "outlier_row_ptr", np.array([1] + ptr[1:], dtype="<u4")), "BAD_CSR")
    rec("csr_decreasing", "outlier_row_ptr decreases",
        lambda ts: replace_data(ts, "w", "outlier_row_ptr", np.array([0, nnz, 0, nnz, nnz], dtype="<u4")),
        "BAD_CSR")
    rec("csr_end_mismatch", "outlier_row_ptr[m] = nnz - 1",
        lambda ts: replace_data(ts, "w", "outlier_row_ptr", np.array(ptr[:-1] + [nnz - 1], dtype="<u4")),
        "BAD_CSR")
    rec("csr_huge_entry", "outlier_row_ptr holds 2^32-1 (must not be used as an allocation size)",
        lambda ts: replace_data(ts, "w", "outlier_row_ptr", np.array([0, 0xFFFFFFFF, 0, 0, nnz], dtype="<u4")),
        "BAD_CSR")
    cols = cols_of(L.outliers)
    rec("index_col_ge_n", "an outlier column equal to n",
        lambda ts: replace_data(ts, "w", "outlier_col", np.array(cols[:-1] + [20], dtype="<u2")), "BAD_INDEX")
    r1 = ptr[1], ptr[2]  # a row with >= 2 outliers is guaranteed by _base's seed (asserted below)
    assert r1[1] - r1[0] >= 2, "base vector needs two outliers in row 1"
    dup = list(cols)
    dup[r1[0] + 1] = dup[r1[0]]
    rec("index_col_repeated", "two equal columns in one row",
        lambda ts: replace_data(ts, "w", "outlier_col", np.array(dup, dtype="<u2")), "BAD_INDEX")
    dec = list(cols)
    dec[r1[0]], dec[r1[0] + 1] = dec[r1[0] + 1], dec[r1[0]]
    rec("index_col_decreasing", "columns of one row in decreasing order",
        lambda ts: replace_data(ts, "w", "outlier_col", np.array(dec, dtype="<u2")), "BAD_INDEX")
    perm = list(L.perm)
    p2 = perm[:]
    p2[1] = p2[0]
    rec("perm_repeated", "perm repeats an entry (and misses another)",
        lambda ts: replace_data(ts, "w", "perm", np.array(p2, dtype="<u4")), "BAD_PERMUTATION")
    p3 = perm[:]
    p3[p3.index(19)] = 20
    rec("perm_out_of_range", "perm holds n instead of n-1", lambda ts: replace_data(
        ts, "w", "perm", np.array(p3, dtype="<u4")), "BAD_PERMUTATION")
    p4 = perm[:]
    p4[0] = 0xFFFFFFFF
    rec("perm_huge", "perm entry 2^32-1", lambda ts: replace_data(ts, "w", "perm", np.array(p4, dtype="<u4")),
        "BAD_PERMUTATION")
    rec("bool_value_2", "raw bool tensor with a byte 2", lambda ts: ts.append(
        mw.Tens("b", [3], "bool", "raw", {}, [mw.Sec("data", "bool", [3], b"\x01\x02\x00")])), "BAD_VALUE")
    return out


def invalid_v1_late() -> list[Invalid]:
    """Version 1: n = 0 and a known but disallowed dtype."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    rec = edit_adder(add)
    rec("spqr_n_zero", "spqr tensor of shape [4, 0]", lambda ts: tens_of(ts, "w").set.update(shape=[4, 0]), "BAD_SHAPE")
    rec("spqr_dtype_f64", "spqr tensor dtype f64 (a known name, but not f16/bf16/f32)",
        lambda ts: tens_of(ts, "w").set.update(dtype="f64"), "BAD_PARAMS")
    return out


def invalid_v2() -> list[Invalid]:
    """Version 2: every malformed arith / outlier_op value."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    cases: list[tuple[str, str, Any]] = [
        ("arith_missing", "arith", MISSING),
        ("arith_upper", "arith", "F16"), ("arith_int", "arith", 16), ("arith_bin", "arith", b"f16"),
        ("arith_nil", "arith", None), ("arith_space", "arith", "f16 "), ("arith_f64", "arith", "f64"),
        ("outlier_op_missing", "outlier_op", MISSING), ("outlier_op_sub", "outlier_op", "sub"),
        ("outlier_op_array", "outlier_op", ["add"]), ("outlier_op_bool", "outlier_op", True),
        ("outlier_op_upper", "outlier_op", "Add"),
    ]
    for name, key, val in cases:
        ts = _base_v2()
        params = tens_of(ts, "w").params
        if val is MISSING:
            params.pop(key)
        else:
            params[key] = val
        desc = f"spqr v2: params without {key!r}" if val is MISSING else f"spqr v2: {key} = {val!r}"
        add(f"spqr_v2_{name}", desc, mw.build(ts), "BAD_PARAMS")
    return out


def invalid_edges() -> list[Invalid]:
    """Two defects in one tensor: which code SPEC §10 picks."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    # two defects in one quantized tensor: the codes SPEC §10 rule 3 and the codec lists pick
    def spqr_edit(name: str, desc: str, dtype: str, shape: list[int], error: str) -> None:
        add(name, desc, edit_base(lambda ts: tens_of(ts, "w").set.update(dtype=dtype, shape=shape)), error)

    spqr_edit("spqr_two_defects_dtype_i8_shape_0", "spqr tensor with dtype i8 (BAD_PARAMS) and shape [0, 20] "
              "(BAD_SHAPE): the shape rule comes first", "i8", [0, 20], "BAD_SHAPE")
    spqr_edit("spqr_two_defects_dtype_unknown_shape_0", "spqr tensor with dtype 'q4' (not a §5 name: BAD_DTYPE, "
              "stage 4) and shape [0, 20] (BAD_SHAPE, stage 5): the earlier stage wins", "q4", [0, 20], "BAD_DTYPE")
    return out
