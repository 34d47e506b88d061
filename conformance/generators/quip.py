"""quip vectors (spec/codecs/quip.md), versions 1 and 2: logical tensors, oracles, valid and invalid files.

The oracles compute in binary64 (Python floats, or float64 arrays for the 2^16-code tensor) and round
every result to binary32. The E8P12 table is parsed out of the text of spec/codecs/quip.md, the way a
foreign implementer would take it, and checked against the digest printed there; the refreader instead
rebuilds rows 0-226 by the construction rule.

Why this module is long: it is the whole quip generator, versions 1 and 2 together as quip.md treats
them (the v2 grid vectors are checked against v1 tensors built here), and each vector sits beside the
oracle it exercises.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    Det,
    Invalid,
    Item,
    Valid,
    drop_sec,
    flip_bit,
    float_bytes,
    invalid_adder,
    make_bias,
    mw,
    pack_rows,
    r32,
    raw_tens,
    resize,
    retype,
    same_bits,
    sec_of,
    set_byte,
    tens_of,
    valid_adder,
)

QUIP_MD = Path(__file__).resolve().parents[2] / "spec" / "codecs" / "quip.md"


def _factor_bias_sections(fn: np.ndarray | None, fm: np.ndarray | None, bias: np.ndarray | None, bias_dtype: str,
                          m: int) -> list[mw.Sec]:
    """The sections every quip version shares after the diagonals: factor_n, factor_m (f32), bias."""
    secs = [mw.Sec(role, "f32", list(F.shape), np.asarray(F, dtype="<f4").tobytes())
            for role, F in (("factor_n", fn), ("factor_m", fm)) if F is not None]
    if bias is not None:
        secs.append(mw.Sec("bias", bias_dtype, [m], float_bytes(bias, bias_dtype)))
    return secs


def quip_c_oracle(k: int) -> float:
    """c_k = 2^(-k/2) rounded to binary32, computed with a correctly rounded sqrt (not from the bit formula)."""
    return r32(1.0 / math.sqrt(float(1 << k)))


@dataclass
class QuipLogical:
    m: int
    n: int
    bits: int
    kn: int
    km: int
    q: list[list[int]]                            # [m][n] codes
    scale: np.ndarray                             # [m] f32
    su: list[int]                                 # [n] +-1
    sv: list[int]                                 # [m] +-1
    fn: np.ndarray | None = None                  # [a_n, a_n] f32 iff a_n > 1
    fm: np.ndarray | None = None                  # [a_m, a_m] f32 iff a_m > 1
    bias: np.ndarray | None = None
    bias_dtype: str = "f32"
    dtype: str = "f16"
    pad_bits: bool = False
    extra_params: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def transform(x: list[float], k: int, F: np.ndarray | None) -> list[float]:
        """quip.md §5.2 on one vector, literally: butterflies stage by stage, c_k, then the factor rows."""
        h = 1 << k
        a = len(x) // h
        x = list(x)
        if k > 0:
            for alpha in range(a):
                for s in range(k):
                    half = 1 << s
                    for beta in range(h):
                        if beta & half:
                            continue
                        i = alpha * h + beta
                        u, v = x[i], x[i + half]
                        x[i], x[i + half] = r32(u + v), r32(u - v)
                c = quip_c_oracle(k)
                for beta in range(h):
                    x[alpha * h + beta] = r32(x[alpha * h + beta] * c)
        if a > 1:
            assert F is not None
            Fl = [[float(v) for v in row] for row in F.astype(np.float32)]
            for beta in range(h):
                y = []
                for alpha in range(a):
                    acc = r32(Fl[alpha][0] * x[beta])
                    for ap in range(1, a):
                        acc = r32(acc + r32(Fl[alpha][ap] * x[ap * h + beta]))
                    y.append(acc)
                for alpha in range(a):
                    x[alpha * h + beta] = y[alpha]
        return x

    def grid(self) -> list[list[float]]:
        L = (1 << self.bits) - 1
        return [[r32(float(2 * self.q[r][j] - L) * float(self.scale[r])) for j in range(self.n)]
                for r in range(self.m)]

    def oracle(self) -> np.ndarray:
        """quip.md §5.3: grid, rows along n, columns along m, then the sign product."""
        X = [self.transform(row, self.kn, self.fn) for row in self.grid()]
        for c in range(self.n):
            col = self.transform([X[r][c] for r in range(self.m)], self.km, self.fm)
            for r in range(self.m):
                X[r][c] = col[r]
        out = np.zeros((self.m, self.n), dtype=np.float32)
        for r in range(self.m):
            out[r, :] = [r32(X[r][c] * float(self.sv[r] * self.su[c])) for c in range(self.n)]
        return out

    def sections(self) -> list[mw.Sec]:
        W = (self.n * self.bits + 31) // 32
        secs = [mw.Sec("codes", "u32", [self.m, W], pack_rows(self.q, self.bits, self.pad_bits)),
                mw.Sec("scale", "f32", [self.m], np.asarray(self.scale, dtype="<f4").tobytes()),
                mw.Sec("su", "i8", [self.n], np.array(self.su, dtype="i1").tobytes()),
                mw.Sec("sv", "i8", [self.m], np.array(self.sv, dtype="i1").tobytes())]
        return secs + _factor_bias_sections(self.fn, self.fm, self.bias, self.bias_dtype, self.m)

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits, "log2_hn": self.kn, "log2_hm": self.km, **self.extra_params}


def orthogonal_f32(rng: Det, a: int) -> np.ndarray:
    """A (nearly) orthogonal [a, a] matrix by Gram-Schmidt in Python floats: platform-independent bits."""
    vecs: list[list[float]] = []
    raw = (rng.unit(a * a) - 0.5).reshape(a, a).tolist()
    for row in raw:
        v = list(row)
        for u in vecs:
            d = sum(x * y for x, y in zip(v, u, strict=True))
            v = [x - d * y for x, y in zip(v, u, strict=True)]
        norm = math.sqrt(sum(x * x for x in v))
        vecs.append([x / norm for x in v])
    return np.array(vecs, dtype=np.float64).astype(np.float32)


def make_quip(seed: str, m: int, n: int, bits: int, kn: int, km: int, *, bias: str | None = None,
              dtype: str = "f16", pad_bits: bool = False, extra_params: dict[str, Any] | None = None) -> QuipLogical:
    rng = Det(seed)
    q = rng.ints(0, 1 << bits, m * n).reshape(m, n).tolist()
    scale = (0.002 + 0.05 * rng.unit(m)).astype(np.float32)
    su = [1 if b else -1 for b in (rng.u32(n) & 1)]
    sv = [1 if b else -1 for b in (rng.u32(m) & 1)]
    an, am = n >> kn, m >> km
    assert an << kn == n and am << km == m
    fn = orthogonal_f32(rng, an) if an > 1 else None
    fm = orthogonal_f32(rng, am) if am > 1 else None
    return QuipLogical(m, n, bits, kn, km, q, scale, su, sv, fn, fm, make_bias(rng, m, bias), bias or "f32",
                       dtype, pad_bits, extra_params or {})


def quip_tens(name: str, L: QuipLogical, **kw: Any) -> mw.Tens:
    return mw.Tens(name, [L.m, L.n], L.dtype, "quip", L.params(), L.sections(), **kw)


def quip_item(name: str, L: QuipLogical, **kw: Any) -> Item:
    return quip_tens(name, L, **kw), L.oracle(), L.bias


def quip_worked_example() -> QuipLogical:
    """quip.md §9 (sections of §3), byte for byte."""
    fn = np.array([[0x3F19999A, 0x3F4CCCCD], [0xBF4CCCCD, 0x3F19999A]], dtype=np.uint32).view(np.float32)
    return QuipLogical(2, 4, 2, 1, 1, [[0, 3, 1, 2], [3, 3, 0, 1]], np.array([0.5, 0.1], dtype=np.float32),
                       [1, -1, 1, 1], [-1, 1], fn, None)


def quip_special() -> list[tuple[str, QuipLogical]]:
    """Signed zeros through every step, NaN/inf/subnormal/overflowing scales, NaN and -0 factor entries."""
    zeros = make_quip("qzeros", 2, 8, 3, 2, 0)          # a_n = a_m = 2: factors on both sides
    zeros.scale[:] = 0.0                                 # grid = (2q - L) * 0 = +-0 by the sign of 2q - L
    assert zeros.fm is not None
    zeros.fm[0, 1] = np.float32(-0.0)
    subnormal = make_quip("qsub", 2, 8, 3, 3, 1)       # every product and butterfly in the subnormal range
    subnormal.scale[:] = np.array([1e-39, 3e-42], dtype=np.float32)
    infscale = make_quip("qinf", 1, 2, 2, 1, 0)          # grid [inf, inf]: inf + inf = inf, inf - inf = NaN
    infscale.scale[0] = np.float32(np.inf)
    infscale.q = [[3, 3]]
    overflow = make_quip("qovf", 1, 8, 1, 3, 0)          # finite grid +-1e38, butterflies overflow to +-inf
    overflow.scale[0] = np.float32(1e38)
    nanfac = make_quip("qnanfac", 2, 6, 4, 1, 1)        # a_n = 3, a_m = 1
    assert nanfac.fn is not None
    nanfac.fn[1, 2] = np.float32(np.nan)
    return [("zeros", zeros), ("subnormal", subnormal), ("inf_scale", infscale), ("overflow", overflow),
            ("nan_factor", nanfac)]


def _base_v1() -> tuple[list[mw.Tens], QuipLogical]:
    """A small valid quip tensor with both factors and a bias: m = 6 (k_m = 1, a_m = 3), n = 20 (k_n = 2, a_n = 5)."""
    L = make_quip("qbase", 6, 20, 2, 2, 1, bias="f32")
    raw_t, _ = raw_tens("norm", "f32", [4])
    return [raw_t, quip_tens("q", L)], L


def _quip_a1_with_factor() -> QuipLogical:
    L = make_quip("qa1", 8, 20, 2, 2, 3)
    L.fm = np.eye(8, dtype=np.float32)
    return L


# ---------------------------------------------------------------- version 2 (quip.md §10)


@lru_cache(maxsize=1)
def e8p12_spec_table() -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """(alpha rows, odd[a]) parsed from the text of quip.md §10.3 and checked against the digest printed there."""
    text = QUIP_MD.read_text(encoding="utf-8")
    sec = text[text.index("### 10.3"):text.index("### 10.4")]
    rows: list[tuple[int, ...]] = []
    for m in re.finditer(r"^\s*(\d+):((?:\s+[135]{8})+)\s*$", sec, flags=re.M):
        assert int(m.group(1)) == len(rows), "table lines out of order"
        rows += [tuple(int(ch) for ch in word) for word in m.group(2).split()]
    digest = re.search(r"SHA-256 is\s*```\s*([0-9a-f]{64})\s*```", sec)
    assert digest is not None and len(rows) == 256
    assert hashlib.sha256(bytes(v for row in rows for v in row)).hexdigest() == digest.group(1)
    odd = tuple((sum(row) // 2) % 2 for row in rows)
    return tuple(rows), odd


SIGN_POSITION = (0, 4, 1, 5, 2, 6, 3, 7)   # quip.md §10.4: the sign-byte bit of coordinate i


def e8p12_point(code: int) -> tuple[int, ...]:
    """quip.md §10.4 for one code: the 8 odd integers t (lattice point t / 4)."""
    rows, odd = e8p12_spec_table()
    a, s = code >> 8, code & 0xFF
    shift = bin(s).count("1") % 2
    s ^= shift
    t = []
    for i in range(8):
        neg = (s >> SIGN_POSITION[i]) & 1
        if i == 7:
            neg ^= odd[a]
        mag = 2 * rows[a][i]
        t.append((-mag if neg else mag) + (-1 if shift else 1))
    return tuple(t)


@lru_cache(maxsize=1)
def e8p12_all_points() -> np.ndarray:
    """int64 [65536, 8]; asserts the informative claims of §10.4 (distinct points, a coset of E8)."""
    pts = np.array([e8p12_point(c) for c in range(1 << 16)], dtype=np.int64)
    assert len({tuple(p) for p in pts.tolist()}) == 1 << 16, "2^16 codes must give 2^16 distinct points"
    for c in (0, 1, 0x1C05, 0xE716, 0xFFFF):
        assert pts[c].tolist() == list(e8p12_point(c))
    s = np.array([bin(c & 0xFF).count("1") % 2 for c in range(1 << 16)])
    unshifted = pts - np.where(s == 1, -1, 1)[:, None]          # 4 * (t/4 -+ 1/4) = +-2 alpha
    assert np.all(unshifted % 2 == 0) and np.all((unshifted // 2) % 2 != 0)   # half-integers A = alpha / 2
    assert np.all((unshifted.sum(axis=1) // 2) % 2 == 0), "t/4 -+ 1/4 has an even coordinate sum (D8 + 1/2)"
    return pts


def _r32v(a: np.ndarray) -> np.ndarray:
    """Round a float64 array to binary32 values (kept as float64): one rounding per f32 operation."""
    with np.errstate(all="ignore"):
        return a.astype(np.float32).astype(np.float64)


def transform_v(x: np.ndarray, k: int, F: np.ndarray | None) -> np.ndarray:
    """quip.md §5.2 on every row of a float64 array [vectors, a * 2^k], operation by operation."""
    h = 1 << k
    a = x.shape[1] // h
    y = x.copy()
    with np.errstate(all="ignore"):
        if k > 0:
            c = quip_c_oracle(k)
            for s in range(k):
                half = 1 << s
                lo = np.array([al * h + b for al in range(a) for b in range(h) if not b & half], dtype=np.int64)
                u, v = y[:, lo], y[:, lo + half]
                y[:, lo], y[:, lo + half] = _r32v(u + v), _r32v(u - v)
            y = _r32v(y * c)
        if a > 1:
            assert F is not None
            Fd = np.asarray(F, dtype=np.float32).astype(np.float64)
            blocks = y.reshape(y.shape[0], a, h)
            out = np.empty_like(blocks)
            for al in range(a):
                acc = _r32v(Fd[al, 0] * blocks[:, 0, :])
                for ap in range(1, a):
                    acc = _r32v(acc + _r32v(Fd[al, ap] * blocks[:, ap, :]))
                out[:, al, :] = acc
            y = out.reshape(y.shape)
    return y


DIAG_NP = {"i8": "i1", "f16": "<f2", "f32": "<f4"}


@dataclass
class QuipV2Logical:
    m: int
    n: int
    kn: int
    km: int
    codebook: str                         # "grid" | "e8p12"
    codes: list[list[int]]                # grid: [m][n] b-bit codes; e8p12: [m][n/8] 16-bit codes
    scale: np.ndarray                     # [m] f32
    su: np.ndarray                        # [n] values exactly representable in su_dtype
    sv: np.ndarray                        # [m]
    su_dtype: str = "i8"
    sv_dtype: str = "i8"
    bits: int | None = None               # grid only
    fn: np.ndarray | None = None
    fm: np.ndarray | None = None
    bias: np.ndarray | None = None
    bias_dtype: str = "f32"
    dtype: str = "f16"
    extra_params: dict[str, Any] = field(default_factory=dict)

    def values(self) -> np.ndarray:
        """Step 1 of §10.5 as float64 holding binary32 values."""
        scale = np.asarray(self.scale, dtype=np.float32).astype(np.float64)[:, None]
        with np.errstate(all="ignore"):
            if self.codebook == "e8p12":
                t = e8p12_all_points()[np.array(self.codes, dtype=np.int64)].reshape(self.m, self.n)
                e = _r32v(t.astype(np.float64) * 0.25)                  # exact t / 4
                return _r32v(e * scale)
            assert self.bits is not None
            L = (1 << self.bits) - 1
            return _r32v((2 * np.array(self.codes, dtype=np.float64) - L) * scale)

    def oracle(self) -> np.ndarray:
        """§10.5: values, T along n per row, T along m per column, then (X * sv[r]) * su[c]."""
        X = transform_v(self.values(), self.kn, self.fn)
        X = transform_v(X.T.copy(), self.km, self.fm).T
        sv = np.asarray(self.sv, dtype=np.float64)[:, None]
        su = np.asarray(self.su, dtype=np.float64)[None, :]
        with np.errstate(all="ignore"):
            return np.ascontiguousarray(_r32v(_r32v(X * sv) * su).astype(np.float32))

    def sections(self) -> list[mw.Sec]:
        if self.codebook == "e8p12":
            codes = mw.Sec("codes", "u16", [self.m, self.n // 8], np.array(self.codes, dtype="<u2").tobytes())
        else:
            assert self.bits is not None
            codes = mw.Sec("codes", "u32", [self.m, (self.n * self.bits + 31) // 32], pack_rows(self.codes,
                                                                                                    self.bits))
        secs = [codes, mw.Sec("scale", "f32", [self.m], np.asarray(self.scale, dtype="<f4").tobytes()),
                mw.Sec("su", self.su_dtype, [self.n], np.asarray(self.su).astype(DIAG_NP[self.su_dtype]).tobytes()),
                mw.Sec("sv", self.sv_dtype, [self.m], np.asarray(self.sv).astype(DIAG_NP[self.sv_dtype]).tobytes())]
        return secs + _factor_bias_sections(self.fn, self.fm, self.bias, self.bias_dtype, self.m)

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"codebook": self.codebook}
        if self.codebook == "grid":
            p["bits"] = self.bits
        p.update(log2_hn=self.kn, log2_hm=self.km)
        p.update(self.extra_params)
        return p

    def tens(self, name: str, **kw: Any) -> mw.Tens:
        kw.setdefault("codec_version", 2)
        return mw.Tens(name, [self.m, self.n], self.dtype, "quip", self.params(), self.sections(), **kw)

    def entry(self, name: str, **kw: Any) -> tuple[mw.Tens, np.ndarray, np.ndarray | None]:
        return self.tens(name, **kw), self.oracle(), self.bias


def _diag(rng: Det, size: int, dtype: str) -> np.ndarray:
    """Signs for i8; real diagonals (magnitudes 0.5..1.5, random signs) rounded to f16 or f32 otherwise."""
    sign = np.where(rng.u32(size) & 1, 1.0, -1.0)
    if dtype == "i8":
        return sign
    mag = 0.5 + rng.unit(size)
    return (sign * mag).astype(np.float16 if dtype == "f16" else np.float32).astype(np.float64)


def make_quip_v2(seed: str, m: int, n: int, kn: int, km: int, *, codebook: str = "e8p12", bits: int | None = None,
                 su: str = "f16", sv: str = "f16", bias: str | None = None, dtype: str = "f16",
                 extra_params: dict[str, Any] | None = None) -> QuipV2Logical:
    rng = Det(seed)
    if codebook == "e8p12":
        codes = rng.ints(0, 1 << 16, m * (n // 8)).reshape(m, n // 8).tolist()
    else:
        assert bits is not None
        codes = rng.ints(0, 1 << bits, m * n).reshape(m, n).tolist()
    scale = (0.002 + 0.05 * rng.unit(m)).astype(np.float32)
    su_v, sv_v = _diag(rng, n, su), _diag(rng, m, sv)
    an, am = n >> kn, m >> km
    assert an << kn == n and am << km == m
    fn = orthogonal_f32(rng, an) if an > 1 else None
    fm = orthogonal_f32(rng, am) if am > 1 else None
    return QuipV2Logical(m, n, kn, km, codebook, codes, scale, su_v, sv_v, su, sv, bits, fn, fm,
                         make_bias(rng, m, bias), bias or "f32", dtype, extra_params or {})


def quip_worked_example_v2() -> QuipV2Logical:
    """quip.md §10.8, byte for byte."""
    su = np.array([1, -1, 0.5, 1, 1, -2, 1, 0.75], dtype=np.float64)
    return QuipV2Logical(2, 8, 3, 1, "e8p12", [[0x1C05], [0xE716]], np.array([0.5, 0.1], dtype=np.float32), su,
                         np.array([-1.0, 1.0]), "f16", "i8")


def quip_all_codes() -> QuipV2Logical:
    """m = 256, n = 2048: codes[r, g] = r << 8 | g, every 16-bit code exactly once; h_n = 2048, h_m = 256."""
    L = make_quip_v2("q2all", 256, 2048, 11, 8, su="i8", sv="f16")
    L.codes = [[(r << 8) | g for g in range(256)] for r in range(256)]
    return L


def quip_special_v2() -> list[tuple[str, QuipV2Logical]]:
    """NaN/inf/-0 in scale, f16 su and f32 sv; subnormal and extreme f16 diagonal entries."""
    a = make_quip_v2("q2spa", 4, 8, 3, 2, su="f16", sv="f32")
    a.scale[:] = np.array([np.nan, np.inf, -0.0, 0.0], dtype=np.float32)
    a.codes[3] = [0x1C05]
    b = make_quip_v2("q2spb", 2, 16, 1, 1, su="f16", sv="f32")    # a_n = 8: factor_n
    b.su[:8] = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 6e-8, 65504.0, -65504.0], dtype=np.float16)
    b.sv[:] = np.array([-0.0, 3e38], dtype=np.float32)
    c = make_quip_v2("q2spc", 2, 8, 2, 0, codebook="grid", bits=2, su="f16", sv="i8")   # a_n = 2, a_m = 2
    c.scale[:] = np.array([0.0, 1e-40], dtype=np.float32)           # +0 grid and subnormal products
    c.su[:] = np.array([-0.0, 1.0, -1.0, 6e-8, np.nan, 2.0, 0.5, -0.0], dtype=np.float16)
    return [("nan_inf_zero_scale", a), ("specials_in_su_sv", b), ("zero_subnormal_grid", c)]


def _base_v2(codebook: str = "e8p12") -> tuple[list[mw.Tens], QuipV2Logical]:
    """m = 4 (k_m = 1, a_m = 2), n = 16 (k_n = 2, a_n = 4), f16 su, i8 sv, f32 bias."""
    if codebook == "e8p12":
        L = make_quip_v2("q2base", 4, 16, 2, 1, su="f16", sv="i8", bias="f32")
    else:
        L = make_quip_v2("q2gbase", 4, 16, 2, 1, codebook="grid", bits=2, su="f16", sv="i8", bias="f32")
    raw_t, _ = raw_tens("norm", "f32", [4])
    return [raw_t, L.tens("q")], L


def _e8p12_subnormal() -> QuipV2Logical:
    """Rows 0-2: subnormal f32 scales with odd bit patterns, where (t/4) * scale rounds once but
    t * (scale/4) rounds twice (t = 3, scale = 7 * 2^-149: 5.25 -> 5, against 3 * 2 = 6). Row 3: scale
    2^126, where (t * scale) / 4 overflows to inf for |t| >= 4 but (t/4) * scale does not."""
    L = make_quip_v2("edge_e8p_sub", 4, 16, 3, 2, su="i8", sv="i8")
    L.scale = np.array([0x00000007, 0x00000005, 0x000001FF, 0x7E800000], dtype="<u4").view(np.float32).copy()
    return L


# ---------------------------------------------------------------- vectors (in the manifest's order, see generate.py)


def valid_v1() -> list[Valid]:
    """Version 1: every bit width, Hadamard/factor transforms, special values, bias."""
    out: list[Valid] = []
    add = valid_adder(out)
    # ---- quip (codecs/quip.md)
    add("quip_worked_example", "quip.md §9 byte for byte (m=2, n=4, b=2, k_n=1 with a 2x2 factor_n, k_m=1)",
        [quip_item("w", quip_worked_example())])
    for b in range(1, 9):
        add(f"quip_bits{b}", f"quip bits={b}, m=6 (k_m=1, 3x3 factor_m), n=40 (k_n=3, 5x5 factor_n)",
            [quip_item("w", make_quip(f"qb{b}", 6, 40, b, 3, 1))])
    add("quip_transform_hadamard_only", "k_n=4, k_m=3, a_n = a_m = 1: no factor sections",
        [quip_item("w", make_quip("qhad", 8, 16, 2, 4, 3))])
    add("quip_transform_factor_only", "k_n = k_m = 0: fully explicit 7x7 factor_n and 5x5 factor_m",
        [quip_item("w", make_quip("qfac", 5, 7, 3, 0, 0))])
    add("quip_transform_mixed", "k_n=0 with a 6x6 factor_n on one side, k_m=2 Hadamard only on the other; "
        "and k_n=2 (not the largest power of two dividing n=48, a_n=12) with k_m=1, a_m=3",
        [quip_item("a", make_quip("qmixa", 4, 6, 2, 0, 2)), quip_item("b", make_quip("qmixb", 6, 48, 2, 2, 1))])
    add("quip_hadamard_k7_k8", "c_7 = 0x3DB504F3 (odd k) along n = 128 and c_8 = 0x3D800000 along m = 256",
        [quip_item("n128", make_quip("qk7", 2, 128, 2, 7, 1)), quip_item("m256", make_quip("qk8", 256, 1, 2, 0, 8))])
    add("quip_1x1", "smallest quip tensor: m = n = 1, k = 0, a = 1 (no transform at all), bits 8",
        [quip_item("w", make_quip("q1x1", 1, 1, 8, 0, 0))])
    add("quip_special_values", "+-0 through factors and signs, subnormal products (no flush to zero), inf scale, "
        "butterflies overflowing to inf, NaN and -0 factor entries (NaN compared as any NaN)",
        [quip_item(nm, L) for nm, L in quip_special()])
    nonorth = make_quip("qnonorth", 3, 6, 3, 1, 0)
    assert nonorth.fn is not None and nonorth.fm is not None
    nonorth.fn[:] = np.float32(3.0)
    nonorth.fm[:] = np.arange(9, dtype=np.float32).reshape(3, 3) - 4
    add("quip_factor_not_orthogonal", "factors that are not orthogonal still decode by §5 (readers never check)",
        [quip_item("w", nonorth)])
    add("quip_bias_bf16", "quip with a bf16 bias", [quip_item("w", make_quip("qbias", 4, 8, 2, 2, 1, bias="bf16"))])
    add("quip_dtype_f32_padding_bits", "tensor dtype f32, n=24 with 3-bit codes (72 bits/row), padding bits set",
        [quip_item("w", make_quip("qpad", 4, 24, 3, 3, 2, dtype="f32", pad_bits=True))])
    add("quip_unknown_params", "unknown params keys are ignored",
        [quip_item("w", make_quip("qunk", 2, 8, 2, 3, 1, extra_params={"x.seed": 7, "codebook": "E8P?"}))])
    return out


def valid_v2() -> list[Valid]:
    """Version 2 (quip.md §10): E8P12 (every code), grid with f16/f32 diagonals, v1 equivalence."""
    out: list[Valid] = []
    add = valid_adder(out)
    add("quip_v2_worked_example", "quip.md §10.8 byte for byte (E8P12, m=2, n=8, k_n=3, k_m=1, f16 su, i8 sv)",
        [quip_worked_example_v2().entry("w")])
    add("quip_v2_e8p12_all_codes", "E8P12: all 65536 codes once (codes[r, g] = r << 8 | g, m = 256, n = 2048, "
        "h_n = 2048, h_m = 256), i8 su, f16 sv", [quip_all_codes().entry("w")])
    add("quip_v2_e8p12_factors", "E8P12 with explicit factors: factor_n and factor_m (m=6, n=40, a_n=5, a_m=3) with "
        "f32 su / f16 sv and a bf16 bias; factor only on both sides (k_n = 0, k_m = 0); f32 tensor dtype",
        [make_quip_v2("q2fa", 6, 40, 3, 1, su="f32", sv="f16", bias="bf16").entry("both"),
         make_quip_v2("q2fb", 3, 16, 0, 0, su="f16", sv="f32", dtype="f32").entry("factor_only")])
    for dt, bits in (("f16", 3), ("f32", 4)):
        add(f"quip_v2_grid_{dt}_diagonals", f"v2 codebook grid (bits {bits}) with {dt} su and sv, factors on both "
            "sides (m=6, n=20)", [make_quip_v2(f"q2g{dt}", 6, 20, 2, 1, codebook="grid", bits=bits, su=dt,
                                                sv=dt).entry("w")])
    add("quip_v2_special_values", "NaN/inf/-0 scales, NaN/inf/-0/subnormal/65504 f16 su, -0 and 3e38 f32 sv "
        "(overflow to inf), zero and subnormal grid values (NaN compared as any NaN)",
        [L.entry(nm) for nm, L in quip_special_v2()])
    pairs = []
    for tag, args in (("factors", (6, 40, 3, 1)), ("hadamard", (8, 16, 4, 3))):
        v1 = make_quip(f"q2eq{tag}", *args[:2], 3, *args[2:])
        v2 = QuipV2Logical(v1.m, v1.n, v1.kn, v1.km, "grid", v1.q, v1.scale, np.array(v1.su, np.float64),
                           np.array(v1.sv, np.float64), "i8", "i8", v1.bits, v1.fn, v1.fm)
        e1 = (quip_tens(f"{tag}.v1", v1), v1.oracle(), None)
        e2 = v2.entry(f"{tag}.v2")
        assert same_bits(e1[1], e2[1]), "v2 grid with i8 signs must equal v1"
        pairs += [e1, e2]
    add("quip_v2_grid_i8_equals_v1", "v2 codebook grid with i8 signs decodes to the bits of the v1 tensor with the "
        "same sections beside it (quip.md §10.5)", pairs)
    add("quip_v2_unknown_params", "unknown params keys beside codebook/log2_hn/log2_hm are ignored",
        [make_quip_v2("q2unk", 2, 16, 4, 1, extra_params={"x.quipsharp_codebook": 7, "Bits": 2,
                                                          "CODEBOOK": "grid"}).entry("w")])
    return out


def valid_edges() -> list[Valid]:
    """E8P12 multiply order with subnormal scales."""
    out: list[Valid] = []
    add = valid_adder(out)
    add("quip_v2_e8p12_subnormal_scales", "E8P12 with subnormal scales of odd bit patterns and a 2^126 scale: "
        "X = (t/4) * scale, in that order (t * (scale/4) rounds twice, (t * scale)/4 overflows; quip.md §10.5)",
        [_e8p12_subnormal().entry("w")])
    return out


def invalid_v1() -> list[Invalid]:
    """Version 1: every rejection rule of quip.md §1-§3, §6."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    # ---- quip: every rejection rule of quip.md §1-§3, §6
    def qpv(name: str, desc: str, fn: Callable[[list[mw.Tens]], Any], error: str) -> None:
        ts2, _ = _base_v1()
        fn(ts2)
        add(f"quip_{name}", "quip: " + desc, mw.build(ts2), error)

    qpv("rank_1", "tensor shape [120]", lambda ts: tens_of(ts, "q").set.update(shape=[120]), "BAD_SHAPE")
    qpv("m_zero", "tensor shape [0, 20]", lambda ts: tens_of(ts, "q").set.update(shape=[0, 20]), "BAD_SHAPE")
    qpv("n_zero", "tensor shape [6, 0]", lambda ts: tens_of(ts, "q").set.update(shape=[6, 0]), "BAD_SHAPE")
    qpv("dtype_u8", "tensor dtype u8", lambda ts: tens_of(ts, "q").set.update(dtype="u8"), "BAD_PARAMS")
    for key, val, why in (("bits", 0, "0"), ("bits", 9, "9"), ("bits", True, "true"), ("log2_hn", 31, "31"),
                          ("log2_hn", -1, "neg"), ("log2_hn", 2.0, "float"), ("log2_hm", "1", "str"),
                          ("log2_hm", None, "nil"), ("log2_hn", 3, "nondividing"), ("log2_hm", 2, "nondividing")):
        qpv(f"{key}_{why}", f"{key} = {val!r}" + (" (2^k does not divide the dimension)" if why == "nondividing"
                                                  else ""),
            lambda ts, key=key, val=val: tens_of(ts, "q").params.__setitem__(key, val), "BAD_PARAMS")
    for key in ("bits", "log2_hn", "log2_hm"):
        qpv(f"{key}_missing", f"params without {key}", lambda ts, key=key: tens_of(ts, "q").params.pop(key),
            "BAD_PARAMS")
    for role in ("codes", "scale", "su", "sv", "factor_n", "factor_m"):
        qpv(f"missing_{role}", f"no {role!r} section", lambda ts, role=role: drop_sec(ts, "q", role),
            "BAD_SECTION_SET")
    qpv("extra_role", "an undefined role 'lut'", lambda ts: tens_of(ts, "q").sections.append(
        mw.Sec("lut", "f16", [1], b"\x00\x00")), "BAD_SECTION_SET")
    add("quip_factor_when_a_is_1", "quip: a factor_m section although a_m = 1 (m = 8, log2_hm = 3)",
        mw.build([quip_tens("q", _quip_a1_with_factor())]), "BAD_SECTION_SET")
    qpv("codes_shape", "codes [6, 3] instead of [6, 2]", lambda ts: resize(sec_of(ts, "q", "codes"), [6, 3], 4),
        "BAD_SECTION_LAYOUT")
    qpv("scale_f16", "scale stored as f16", lambda ts: retype(sec_of(ts, "q", "scale"), "f16", "<f2"),
        "BAD_SECTION_LAYOUT")
    qpv("scale_len", "scale of length m - 1", lambda ts: resize(sec_of(ts, "q", "scale"), [5], 4),
        "BAD_SECTION_LAYOUT")
    qpv("su_u8", "su stored as u8", lambda ts: sec_of(ts, "q", "su").__setattr__("dtype", "u8"), "BAD_SECTION_LAYOUT")
    qpv("su_len", "su of length m instead of n", lambda ts: resize(sec_of(ts, "q", "su"), [6], 1),
        "BAD_SECTION_LAYOUT")
    qpv("sv_len", "sv of length n instead of m", lambda ts: resize(sec_of(ts, "q", "sv"), [20], 1),
        "BAD_SECTION_LAYOUT")
    qpv("factor_n_shape", "factor_n [5, 4] instead of [5, 5]", lambda ts: resize(sec_of(ts, "q", "factor_n"), [5, 4],
                                                                                 4), "BAD_SECTION_LAYOUT")
    qpv("factor_m_f16", "factor_m stored as f16", lambda ts: retype(sec_of(ts, "q", "factor_m"), "f16", "<f2"),
        "BAD_SECTION_LAYOUT")
    qpv("bias_len", "bias of length n", lambda ts: resize(sec_of(ts, "q", "bias"), [20], 4), "BAD_SECTION_LAYOUT")
    qpv("section_checksum", "one bit of 'factor_n' flipped, crc32 unchanged",
        lambda ts: flip_bit(sec_of(ts, "q", "factor_n")), "SECTION_CHECKSUM")
    for role, pos, byte, why in (("su", 0, 0x00, "su_zero"), ("su", 7, 0x02, "su_two"), ("su", 19, 0x80, "su_min"),
                                 ("sv", 5, 0x7F, "sv_max"), ("sv", 2, 0xFE, "sv_minus_two")):
        qpv(f"value_{why}", f"{role}[{pos}] = 0x{byte:02X} (only 0x01 / 0xFF are signs)",
            lambda ts, role=role, pos=pos, byte=byte: set_byte(sec_of(ts, "q", role), pos, byte), "BAD_VALUE")
    return out


def invalid_v2() -> list[Invalid]:
    """Version 2: codebook, bits, shapes, layouts, signs."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    def qv(name: str, desc: str, fn: Any, error: str, codebook: str = "e8p12") -> None:
        ts, _ = _base_v2(codebook)
        fn(ts)
        add(f"quip_v2_{name}", f"quip v2 ({codebook}): {desc}", mw.build(ts), error)

    def params(ts: list[mw.Tens]) -> dict[str, Any]:
        return tens_of(ts, "q").params

    qv("codebook_missing", "params without codebook", lambda ts: params(ts).pop("codebook"), "BAD_PARAMS")
    for why, val in (("upper", "E8P12"), ("unknown", "e8p"), ("empty", ""), ("int", 7), ("bin", b"e8p12"),
                     ("nil", None), ("array", ["e8p12"])):
        qv(f"codebook_{why}", f"codebook = {val!r}", lambda ts, val=val: params(ts).__setitem__("codebook", val),
           "BAD_PARAMS")
    qv("e8p12_bits_present", "a bits key (2) with codebook e8p12", lambda ts: params(ts).__setitem__("bits", 2),
       "BAD_PARAMS")
    qv("e8p12_bits_nil", "a bits key (nil) with codebook e8p12", lambda ts: params(ts).__setitem__("bits", None),
       "BAD_PARAMS")
    qv("grid_bits_missing", "codebook grid without bits", lambda ts: params(ts).pop("bits"), "BAD_PARAMS", "grid")
    qv("grid_bits_9", "codebook grid with bits 9", lambda ts: params(ts).__setitem__("bits", 9), "BAD_PARAMS", "grid")

    def n12(ts: list[mw.Tens]) -> None:
        t = tens_of(ts, "q")
        t.shape = [4, 12]                         # log2_hn = 2 still divides 12; a_n = 3
        sec_of(ts, "q", "su").shape = [12]
        sec_of(ts, "q", "su").data = sec_of(ts, "q", "su").data[:24]

    qv("e8p12_n_not_multiple_of_8", "tensor shape [4, 12] (n % 8 != 0; log2_hn = 2 divides n)", n12, "BAD_SHAPE")
    qv("log2_hn_nondividing", "log2_hn = 5 (32 does not divide n = 16)",
       lambda ts: params(ts).__setitem__("log2_hn", 5), "BAD_PARAMS")
    qv("e8p12_codes_u32", "codes stored as u32 [4, 2]", lambda ts: retype(sec_of(ts, "q", "codes"), "u32",
                                                                                 "<u4"), "BAD_SECTION_LAYOUT")
    qv("e8p12_codes_i16", "codes stored as i16", lambda ts: sec_of(ts, "q", "codes").__setattr__("dtype", "i16"),
       "BAD_SECTION_LAYOUT")
    qv("e8p12_codes_shape", "codes [4, 4] instead of [4, 2]", lambda ts: resize(sec_of(ts, "q", "codes"),
                                                                                      [4, 4], 2),
       "BAD_SECTION_LAYOUT")
    qv("e8p12_codes_packed_grid_shape", "codes u32 [4, 1] (a 2-bit grid layout) with codebook e8p12",
       lambda ts: (retype(sec_of(ts, "q", "codes"), "u32", "<u4"),
                   resize(sec_of(ts, "q", "codes"), [4, 1], 4)), "BAD_SECTION_LAYOUT")
    qv("grid_codes_u16", "codebook grid with codes as u16", lambda ts: retype(sec_of(ts, "q", "codes"), "u16",
                                                                                     "<u2"),
       "BAD_SECTION_LAYOUT", "grid")
    for role, dt, npd in (("su", "bf16", "<u2"), ("su", "u8", "u1"), ("su", "f64", "<f8"), ("sv", "f64", "<f8"),
                          ("sv", "i16", "<i2")):
        qv(f"{role}_{dt}", f"{role} stored as {dt}", lambda ts, role=role, dt=dt, npd=npd: retype(
            sec_of(ts, "q", role), dt, npd), "BAD_SECTION_LAYOUT")
    qv("su_len", "su of length m", lambda ts: resize(sec_of(ts, "q", "su"), [4], 2), "BAD_SECTION_LAYOUT")
    qv("missing_factor_n", "no factor_n although a_n = 4", lambda ts: drop_sec(ts, "q", "factor_n"),
       "BAD_SECTION_SET")
    qv("section_checksum", "one bit of 'codes' flipped, crc32 unchanged", lambda ts: flip_bit(sec_of(ts, "q",
                                                                                                 "codes")),
       "SECTION_CHECKSUM")
    qv("value_sv_zero", "i8 sv byte 0x00 (i8 diagonals are signs; su is f16)",
       lambda ts: set_byte(sec_of(ts, "q", "sv"), 1, 0x00), "BAD_VALUE")

    def su_i8_zero(ts: list[mw.Tens]) -> None:
        s = sec_of(ts, "q", "su")
        s.dtype = "i8"
        s.data = bytes([0x01, 0xFF] * 7 + [0x00, 0x01])

    qv("value_su_i8_zero", "su as i8 with one byte 0x00", su_i8_zero, "BAD_VALUE", "grid")
    return out


def invalid_edges() -> list[Invalid]:
    """Two defects in one tensor, and MAX_FACTOR."""
    out: list[Invalid] = []
    add = invalid_adder(out)
    def quip_v2(name: str, desc: str, fn: Any, error: str) -> None:
        ts, _ = _base_v2()
        fn(ts)
        add(f"quip_v2_{name}", f"quip v2 (e8p12): {desc}", mw.build(ts), error)

    def n12(ts: list[mw.Tens], **params: Any) -> None:
        t = tens_of(ts, "q")
        t.shape = [4, 12]
        sec_of(ts, "q", "su").shape = [12]
        sec_of(ts, "q", "su").data = sec_of(ts, "q", "su").data[:24]
        t.params.update(params)

    quip_v2("two_defects_bits_key_and_n_12", "a bits key (BAD_PARAMS) and n = 12 (n mod 8, BAD_SHAPE): quip.md "
            "§10.6 checks the bits key first", lambda ts: n12(ts, bits=2), "BAD_PARAMS")
    quip_v2("two_defects_n_12_and_log2_hn_31", "n = 12 (BAD_SHAPE) and log2_hn = 31 (BAD_PARAMS): n mod 8 comes "
            "before log2_hn in quip.md §10.6", lambda ts: n12(ts, log2_hn=31), "BAD_SHAPE")

    def quip_factor(name: str, desc: str, m: int, n: int, kn: int, km: int, version: int, error: str) -> None:
        L = make_quip(f"edge_{name}", 1, 1, 2, 0, 0)   # sections are never read: BAD_PARAMS comes first
        t = quip_tens("q", L, codec_version=version)
        t.shape = [m, n]
        t.params = {"bits": 2, "log2_hn": kn, "log2_hm": km} | ({"codebook": "grid"} if version == 2 else {})
        add(name, desc, mw.build([t]), error)

    quip_factor("quip_factor_n_257", "quip v1 [1, 257] with log2_hn = 0: a_n = 257 > MAX_FACTOR = 256 (BAD_PARAMS "
                "before the missing factor_n is looked at)", 1, 257, 0, 0, 1, "BAD_PARAMS")
    quip_factor("quip_factor_m_over_max", "quip v1 [3072, 1], log2_hm = 2: a_m = 768 > MAX_FACTOR", 3072, 1, 0, 2, 1,
                "BAD_PARAMS")
    quip_factor("quip_v2_factor_n_over_max", "quip v2 grid [2, 8192] with log2_hn = 4: a_n = 512 > MAX_FACTOR",
                2, 8192, 4, 1, 2, "BAD_PARAMS")
    return out
