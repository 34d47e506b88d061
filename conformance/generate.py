"""Deterministically write the golden vectors in ``conformance/vectors/``.

Run ``python -m spqrfmt.conformance.generate [OUT_DIR]``. Why it is built
this way: the expected outputs come from a third, deliberately naive path
(the *oracle* below works element by element from the logical codes and
statistics the generator chose, never from packed bytes), so the golden
hashes do not depend on either reader's unpacking or vectorised
arithmetic. The vectors themselves are laid out by ``miniwriter``, not the
library writer. Randomness comes from SHA-256 in counter mode, so output is
byte-identical across numpy versions and platforms; zips are written
uncompressed with fixed timestamps for the same reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # allow `python conformance/generate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import miniwriter as mw  # type: ignore[no-redef]
    import refreader  # type: ignore[no-redef]
    from hashing import sha256_of  # type: ignore[no-redef]
else:
    from . import miniwriter as mw
    from . import refreader
    from .hashing import sha256_of

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"

# ---------------------------------------------------------------- deterministic randomness


class Det:
    """SHA-256 counter-mode random source: stable forever, unlike numpy's Generator methods."""

    def __init__(self, seed: str) -> None:
        self.seed = seed.encode()
        self.counter = 0

    def raw(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "little")).digest()
            self.counter += 1
        return bytes(out[:n])

    def u32(self, size: int) -> np.ndarray:
        return np.frombuffer(self.raw(4 * size), dtype="<u4").astype(np.int64)

    def ints(self, lo: int, hi: int, size: int) -> np.ndarray:
        """Integers in [lo, hi) (hi - lo < 2^32)."""
        return lo + self.u32(size) % (hi - lo)

    def unit(self, size: int) -> np.ndarray:
        return self.u32(size).astype(np.float64) / 2.0**32

    def f16(self, lo: float, hi: float, size: int) -> np.ndarray:
        return (lo + (hi - lo) * self.unit(size)).astype(np.float16)

    def perm(self, n: int) -> list[int]:
        p = list(range(n))
        r = self.u32(n)
        for i in range(n - 1, 0, -1):
            j = int(r[i]) % (i + 1)
            p[i], p[j] = p[j], p[i]
        return p

    def sample(self, n: int, k: int) -> list[int]:
        return sorted(self.perm(n)[:k])


# ---------------------------------------------------------------- packing and the oracle


def pack_rows(codes: list[list[int]], k: int, pad_bits: bool = False) -> bytes:
    """spqr.md §4 from first principles: a row is one little-endian integer of W*32 bits."""
    out = bytearray()
    for row in codes:
        words = (len(row) * k + 31) // 32
        acc = 0
        for i, c in enumerate(row):
            assert 0 <= c < (1 << k)
            acc |= int(c) << (i * k)
        if pad_bits:  # set every padding bit: readers MUST ignore them
            used = len(row) * k
            acc |= ((1 << (words * 32)) - 1) ^ ((1 << used) - 1)
        out += acc.to_bytes(words * 4, "little")
    return bytes(out)


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
        """spqr.md §5, one element at a time, in f32 scalar arithmetic (version 2: generate_v2.spqr_oracle_v2)."""
        assert self.version == 1, "the version-2 oracle is generate_v2.spqr_oracle_v2"
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
        secs.append(mw.Sec("bias", L.bias_dtype, [L.m], _float_bytes(L.bias, L.bias_dtype)))
    return secs


def _float_bytes(x: np.ndarray, dtype: str) -> bytes:
    if dtype == "bf16":
        return (np.asarray(x, dtype=np.float32).view("<u4") >> 16).astype("<u2").tobytes()  # values are bf16-exact
    return np.asarray(x, dtype={"f16": "<f2", "f32": "<f4"}[dtype]).tobytes()


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
    rows: list[list[tuple[int, float]]] = []
    for r in range(m):
        if outliers == "none":
            k = 0
        elif outliers == "full_rows":
            k = n if r % 3 == 1 else (0 if r % 3 == 0 else 2 % (n + 1))
        else:
            k = int(rng.ints(0, min(n, 4) + 1, 1)[0]) if r % 4 else 0  # every 4th row empty
        cols = rng.sample(n, min(k, n))
        vals = rng.f16(-4.0, 4.0, len(cols))
        rows.append([(c, float(v)) for c, v in zip(cols, vals, strict=True)])
    bias_arr = None
    if bias is not None:
        b = rng.f16(-1.0, 1.0, m).astype(np.float32)
        if bias == "bf16":
            b = ((b.view(np.uint32) >> 16) << 16).view(np.float32)
        bias_arr = b
    return SpqrLogical(m, n, bits, beta1, beta2, q, scale, zero, rows, rng.perm(n) if perm else None, col_dtype,
                       bias_arr, bias or "f32", dtype, pad_bits, extra_params or {})


def spqr_tens(name: str, L: SpqrLogical, **kw: Any) -> mw.Tens:
    kw.setdefault("codec_version", L.version)
    return mw.Tens(name, [L.m, L.n], L.dtype, "spqr", spqr_params(L), spqr_sections(L), **kw)


# ---------------------------------------------------------------- scalar f32 arithmetic for the oracles
#
# The squeezellm and quip oracles compute in Python floats (binary64) and round every
# result to binary32 with r32(). For +, -, * of two binary32 operands that equals the
# correctly rounded binary32 operation (binary64 has more than 2*24 + 2 bits), so these
# oracles share no code path with numpy's float32 ufuncs that the refreader uses.


def r32(x: float) -> float:
    """Round a binary64 value to binary32 (nearest even, overflow to +-inf), back as a Python float."""
    with np.errstate(all="ignore"):
        return float(np.float32(x))


def f32_bits(x: float) -> int:
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


def f32_from_bits(b: int) -> float:
    return float(np.array([b], dtype=np.uint32).view(np.float32)[0])


def _sec_f16(role: str, arr: np.ndarray) -> mw.Sec:
    return mw.Sec(role, "f16", list(arr.shape), np.asarray(arr, dtype="<f2").tobytes())


def _csr_sections(outliers: list[list[tuple[int, float]]], col_dtype: str) -> list[mw.Sec]:
    ptr = [0]
    cols: list[int] = []
    vals: list[float] = []
    for row in outliers:
        cols += [c for c, _ in row]
        vals += [v for _, v in row]
        ptr.append(len(cols))
    return [mw.Sec("outlier_row_ptr", "u32", [len(outliers) + 1], np.array(ptr, dtype="<u4").tobytes()),
            mw.Sec("outlier_col", col_dtype, [len(cols)],
                   np.array(cols, dtype="<u2" if col_dtype == "u16" else "<u4").tobytes()),
            mw.Sec("outlier_val", "f16", [len(vals)], np.array(vals, dtype="<f2").tobytes())]


def _make_outliers(rng: Det, m: int, n: int, kind: str, lo: float = -0.5, hi: float = 0.5
                   ) -> list[list[tuple[int, float]]]:
    rows: list[list[tuple[int, float]]] = []
    for r in range(m):
        if kind == "none":
            k = 0
        elif kind == "full_rows":
            k = n if r % 3 == 1 else (0 if r % 3 == 0 else 2 % (n + 1))
        else:
            k = int(rng.ints(0, min(n, 4) + 1, 1)[0]) if r % 4 else 0  # every 4th row empty
        cols = rng.sample(n, min(k, n))
        vals = rng.f16(lo, hi, len(cols))
        rows.append([(c, float(v)) for c, v in zip(cols, vals, strict=True)])
    return rows


def _make_bias(rng: Det, m: int, bias: str | None) -> np.ndarray | None:
    if bias is None:
        return None
    b = rng.f16(-1.0, 1.0, m).astype(np.float32)
    if bias == "bf16":
        b = ((b.view(np.uint32) >> 16) << 16).view(np.float32)
    return b


# ---------------------------------------------------------------- squeezellm (codecs/squeezellm.md)


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
        secs = [_sec_f16("lut", self.lut),
                mw.Sec("codes", "u32", [self.m, W], pack_rows(self.idx, self.bits, self.pad_bits))]
        secs += _csr_sections(self.outliers, self.col_dtype)
        if self.bias is not None:
            secs.append(mw.Sec("bias", self.bias_dtype, [self.m], _float_bytes(self.bias, self.bias_dtype)))
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
    rows = _make_outliers(rng, m, n, outliers)
    return SqueezeLogical(m, n, bits, lut, idx, rows, col_dtype, _make_bias(rng, m, bias), bias or "f32", dtype,
                          pad_bits, extra_params or {})


def squeezellm_tens(name: str, L: SqueezeLogical, **kw: Any) -> mw.Tens:
    return mw.Tens(name, [L.m, L.n], L.dtype, "squeezellm", L.params(), L.sections(), **kw)


def squeezellm_worked_example() -> SqueezeLogical:
    """squeezellm.md §8, byte for byte (the test suite compares it with the spec text)."""
    lut = np.array([[-1.0, -0.25, 0.25, 1.0], [-2.0, 0.0, 0.5, 3.0]], dtype=np.float16)
    val = np.array([0x2E66, 0x0001], dtype="<u2").view("<f2")
    return SqueezeLogical(2, 5, 2, lut, [[0, 1, 2, 3, 3], [2, 1, 0, 0, 3]],
                          [[(3, float(val[0]))], [(4, float(val[1]))]])


# ---------------------------------------------------------------- quip (codecs/quip.md)


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
        for role, F in (("factor_n", self.fn), ("factor_m", self.fm)):
            if F is not None:
                secs.append(mw.Sec(role, "f32", list(F.shape), np.asarray(F, dtype="<f4").tobytes()))
        if self.bias is not None:
            secs.append(mw.Sec("bias", self.bias_dtype, [self.m], _float_bytes(self.bias, self.bias_dtype)))
        return secs

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
    return QuipLogical(m, n, bits, kn, km, q, scale, su, sv, fn, fm, _make_bias(rng, m, bias), bias or "f32",
                       dtype, pad_bits, extra_params or {})


def quip_tens(name: str, L: QuipLogical, **kw: Any) -> mw.Tens:
    return mw.Tens(name, [L.m, L.n], L.dtype, "quip", L.params(), L.sections(), **kw)


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


# ---------------------------------------------------------------- raw tensors

RAW_NP = {"bool": "u1", "u8": "u1", "i8": "i1", "u16": "<u2", "i16": "<i2", "u32": "<u4", "i32": "<i4",
          "u64": "<u8", "i64": "<i8", "f16": "<f2", "bf16": "<u2", "f32": "<f4", "f64": "<f8"}


def raw_array(seed: str, dtype: str, shape: list[int]) -> np.ndarray:
    """Stored array for a raw tensor (bf16 as uint16 bits, bool as 0/1 bytes); floats include specials."""
    rng = Det(seed)
    count = int(np.prod(shape, dtype=np.int64))
    npd = np.dtype(RAW_NP[dtype])
    if dtype == "bool":
        a = (rng.u32(count) & 1).astype("u1")
    elif dtype in ("f16", "f32", "f64"):
        a = ((rng.unit(count) - 0.5) * 200).astype(npd)
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(npd).tiny / 4, np.finfo(npd).max], dtype=npd)
        a[: min(count, len(specials))] = specials[: min(count, len(specials))]
    elif dtype == "bf16":
        a = (rng.u32(count) & 0xFFFF).astype("<u2")
        fixed = np.array([0x7FC1, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x3F80], dtype="<u2")  # NaN, ±inf, -0, subnormal, 1
        a[: min(count, 6)] = fixed[: min(count, 6)]
    else:
        a = np.frombuffer(rng.raw(count * npd.itemsize), dtype=npd).copy()
    return a.reshape(shape)


def raw_tens(name: str, dtype: str, shape: list[int], seed: str | None = None, **kw: Any) -> tuple[mw.Tens, np.ndarray]:
    a = raw_array(seed or name, dtype, shape)
    return mw.Tens(name, list(shape), dtype, "raw", {}, [mw.Sec("data", dtype, list(shape), a.tobytes())], **kw), a


# ---------------------------------------------------------------- expected outputs


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A numpy .npz with fixed zip timestamps and no compression, so bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.array(arr, order="C", copy=True), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue())
    path.write_bytes(buf.getvalue())


# ---------------------------------------------------------------- vector catalogue


@dataclass
class Valid:
    name: str
    description: str
    tensors: list[mw.Tens]
    expected: dict[str, Any]          # name -> decoded array, or an error code str (per-tensor)
    bias: dict[str, np.ndarray] = field(default_factory=dict)
    build_kw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Invalid:
    name: str
    description: str
    blob: bytes
    error: str
    accept: list[str] = field(default_factory=list)


def _spqr_entry(name: str, L: SpqrLogical, **kw: Any) -> tuple[mw.Tens, np.ndarray, np.ndarray | None]:
    return spqr_tens(name, L, **kw), L.oracle(), L.bias


def valid_vectors() -> list[Valid]:
    out: list[Valid] = []

    def add(name: str, desc: str, items: list[tuple[mw.Tens, Any, np.ndarray | None]], **build_kw: Any) -> None:
        tens = [t for t, _, _ in items]
        exp = {t.name: e for t, e, _ in items}
        bias = {t.name: b for t, _, b in items if b is not None}
        out.append(Valid(name, desc, tens, exp, bias, build_kw))

    def raw(name: str, dtype: str, shape: list[int], **kw: Any) -> tuple[mw.Tens, Any, None]:
        t, a = raw_tens(name, dtype, shape, **kw)
        return t, (a.astype(np.bool_) if dtype == "bool" else a), None

    def spqr(name: str, seed: str, *args: Any, tkw: dict[str, Any] | None = None, **kw: Any):
        return _spqr_entry(name, make_spqr(seed, *args, **kw), **(tkw or {}))

    add("empty", "no tensors, empty metadata: the smallest valid file", [])
    add("raw_all_dtypes", "one raw tensor of each of the 13 element types (floats with NaN/inf/-0/subnormal)",
        [raw(f"t.{d}", d, [3, 5]) for d in RAW_NP])
    add("raw_shapes", "raw shapes: scalar [], [0], [0,7], [1], 3-D, and MAX_NDIM=8 dims",
        [raw("scalar", "f32", []), raw("empty1", "f16", [0]), raw("empty2", "i32", [0, 7]),
         raw("one", "bf16", [1]), raw("cube", "i16", [2, 3, 4]), raw("eight", "u8", [1, 2, 1, 2, 1, 2, 1, 2])])
    for b in range(1, 9):
        add(f"spqr_bits{b}", f"spqr bits={b}, n=45 (codes straddle words), group 16 (last group 13), f16 stats",
            [spqr("w", f"bits{b}", 6, 45, b, 16)])
    add("spqr_group_nondividing", "group sizes that do not divide n: 7 | 50 no, 1 (one column per group), 64 > n",
        [spqr("g7", "g7", 5, 50, 3, 7), spqr("g1", "g1", 3, 9, 4, 1), spqr("g64", "g64", 4, 33, 2, 64)])
    for sb, zb in ((3, 16), (16, 3), (3, 4), (8, 8), (1, 2), (2, 1), (7, 5)):
        add(f"spqr_stats_s{sb}_z{zb}", f"two-level stats scale_bits={sb} zero_bits={zb}, stat_group_size 4 "
            "does not divide m=10", [spqr("w", f"st{sb}{zb}", 10, 40, 3, 16, sb=sb, zb=zb, beta2=4)])
    add("spqr_stats_beta2_big", "stat_group_size 65536 > m (one second-level group), 3-bit stats",
        [spqr("w", "b2big", 7, 24, 4, 8, sb=3, zb=3, beta2=65536)])
    add("spqr_no_outliers", "nnz = 0: zero-length outlier_col/outlier_val sections, row_ptr all zero",
        [spqr("w", "noout", 8, 32, 4, 16, outliers="none")])
    add("spqr_full_outlier_rows", "rows where every column is an outlier, rows with none, rows with two",
        [spqr("w", "full", 9, 20, 2, 8, outliers="full_rows")])
    add("spqr_outlier_u32", "outlier_col stored as u32 although n <= 65536 (legal)",
        [spqr("w", "u32col", 6, 30, 3, 16, col_dtype="u32")])
    add("spqr_perm", "column permutation (act-order)", [spqr("w", "perm", 5, 37, 3, 8, perm=True)])
    for bd in ("f16", "bf16", "f32"):
        add(f"spqr_bias_{bd}", f"optional bias section in {bd} (exposed separately, not part of the decoded tensor)",
            [spqr("w", f"bias{bd}", 6, 20, 4, 16, bias=bd)])
    add("spqr_everything", "perm + bias + u32 columns + 2-bit scale / 16-bit zero stats + bf16 tensor dtype",
        [spqr("w", "all", 11, 70, 3, 32, sb=2, zb=16, beta2=3, perm=True, bias="f32", col_dtype="u32",
              dtype="bf16")])
    for dt in ("f16", "bf16", "f32"):
        add(f"spqr_dtype_{dt}", f"tensor dtype {dt}: decoded output is f32 regardless",
            [spqr("w", f"dt{dt}", 4, 16, 4, 16, dtype=dt)])
    add("spqr_1x1", "smallest spqr tensor: m = n = 1, bits 8, one outlier", [spqr("w", "1x1", 1, 1, 8, 1)])
    add("spqr_wide_u32_required", "n = 65537 > 65536: u32 outlier columns required, an outlier at column 65536, "
        "group_size 65536 (maximum, last group has 1 column)", [_wide_entry()])
    add("spqr_special_values", "NaN/inf/-0/subnormal stats and outliers, scales that overflow f16 in rne16: "
        "must propagate per IEEE (NaN compared as any NaN)", [_special_entry()])
    add("spqr_code_padding_bits_set", "every padding bit after the last code of a packed row is 1 "
        "(writers must not do this, readers must ignore them)",
        [spqr("w", "padbits", 5, 21, 3, 8, sb=3, zb=5, beta2=2, pad_bits=True)])
    add("spqr_stat_group_size_ignored", "both stats 16-bit: stat_group_size is a string, which is ignored",
        [spqr("w", "ignored", 4, 20, 3, 16, extra_params={"stat_group_size": "not read"})])

    mixed = [raw("embed", "f16", [10, 8]), spqr("layer.0.q", "mx0", 8, 10, 3, 4, sb=3, zb=3, beta2=3, perm=True),
             raw("norm", "f32", [8]), spqr("layer.0.k", "mx1", 4, 10, 2, 5, bias="f16"), raw("flags", "bool", [5])]
    add("layout_reverse", "sections written in reverse header order", mixed, layout=mw.Layout(order="reverse"))
    add("layout_interleave_gaps", "sections interleaved across tensors, 4096-byte lead, 1000-byte gaps, 777 tail",
        mixed, layout=mw.Layout(order="interleave", gap=1000, lead=4096, tail=777))
    add("layout_max_padding", "63 bytes of header padding, sections with length 1 mod 64 (63 bytes padding each)",
        [raw("a", "u8", [65]), raw("b", "i8", [129]), raw("c", "u8", [1])],
        layout=mw.Layout(max_header_pad=True))
    add("layout_empty_sections_end", "zero-length sections placed at offset == data_length",
        [spqr("w", "emptyend", 4, 12, 2, 4, outliers="none"), raw("z", "f32", [0, 4])],
        layout=mw.Layout(empty_at="end"))
    add("layout_empty_sections_shared", "zero-length sections at offset 0, inside another section (legal)",
        [spqr("w", "emptyzero", 4, 12, 2, 4, outliers="none"), raw("z", "f32", [0])],
        layout=mw.Layout(empty_at="zero"))
    add("layout_nonzero_padding", "all padding bytes (header pad, gaps) are 0xA5: writers must not, readers ignore",
        mixed[:3], layout=mw.Layout(pad_byte=0xA5, gap=100))
    add("unknown_keys", "unknown top-level, tensor, section and params keys, rich metadata (nested, bin, "
        "float32/64, nil, bool, negative and u64 ints)",
        [raw("r", "i64", [3], extra={"x.future": {"a": [1, 2]}}),
         spqr("w", "unk", 4, 20, 3, 16, extra_params={"x.hint": [1, "two"]}, tkw={"extra": {"x.note": "hi"}})],
        extra_top={"x.top": {"nested": [{"deep": None}]}},
        metadata={"spqrfmt.writer": "miniwriter", "bin": b"\x00\xff", "f64": 1.5, "f32": mw.F32(0.25),
                  "nil": None, "t": True, "neg": -123456789, "big": (1 << 64) - 1,
                  "nest": {"a": {"b": {"c": [1, [2, [3]]]}}}},
        section_extra={"x.sec": 7})
    add("minor_1_7", "minor version 7 with unknown keys: a 1.0 reader must accept it",
        [raw("r", "f32", [4]), spqr("w", "minor", 3, 8, 2, 8)], minor=7, extra_top={"x.added_in_1_7": [1]})
    add("unknown_codec_alongside", "an unknown codec and an unsupported codec_version beside valid tensors: "
        "the file opens, those two report UNKNOWN_CODEC / UNSUPPORTED_CODEC_VERSION, the others decode",
        [raw("before", "f32", [4]),
         (mw.Tens("future", [4, 4], "f16", "x-future-codec", {"k": 1},
                  [mw.Sec("blob", "u8", [13], bytes(range(13))), mw.Sec("more", "f32", [0], b"")]),
          "UNKNOWN_CODEC", None),
         (spqr_tens("spqr_v99", make_spqr("v2", 3, 8, 2, 8), codec_version=99), "UNSUPPORTED_CODEC_VERSION",
          None),
         spqr("after", "after", 3, 8, 2, 8)])
    add("wide_int_encodings", "header ints encoded non-minimally (u64/i64 for small values): legal msgpack",
        [raw("r", "u16", [2, 2])], wide_ints=True)
    add("names_unicode_and_long", "UTF-8 names (multi-byte) and a name of exactly 1024 bytes",
        [raw("ß/тензор/张量.weight", "f32", [2]), raw("n" * 1024, "u8", [1])])

    # ---- spec rules of SPEC §3/§4 made explicit (valid side)
    nest: Any = 0
    for _ in range(30):  # top map (1) + metadata map (2) + 30 arrays = depth 32 = MAX_NESTING
        nest = [nest]
    add("header_nesting_32", "containers nested exactly MAX_NESTING = 32 deep (the top-level map counts as 1)",
        [raw("r", "u8", [1])], metadata={"d": nest})
    add("names_not_normalized", "names compared as code points, no Unicode normalization or case folding: "
        "NFC 'é', NFD 'e'+U+0301, 'W' and 'w' are four distinct tensors",
        [raw("\u00e9", "f32", [1]), raw("e\u0301", "f32", [1]), raw("W", "u8", [1]), raw("w", "u8", [1])])
    add("spqr_stat_group_size_ignored_any_value", "both stats 16-bit: an ignored stat_group_size of 0, -5, nil "
        "or a map is not read, hence not rejected",
        [spqr("a", "ign0", 3, 8, 2, 8, extra_params={"stat_group_size": 0}),
         spqr("b", "ign1", 3, 8, 2, 8, extra_params={"stat_group_size": -5}),
         spqr("c", "ign2", 3, 8, 2, 8, extra_params={"stat_group_size": None}),
         spqr("d", "ign3", 3, 8, 2, 8, extra_params={"stat_group_size": {"x": 1}})])

    # ---- squeezellm (codecs/squeezellm.md)
    def sq(name: str, L: SqueezeLogical, **kw: Any) -> tuple[mw.Tens, np.ndarray, np.ndarray | None]:
        return squeezellm_tens(name, L, **kw), L.oracle(), L.bias

    add("squeezellm_worked_example", "squeezellm.md §8 byte for byte (m=2, n=5, b=2; 3.0 + 2^-24 rounds to 3.0)",
        [sq("w", squeezellm_worked_example())])
    for b in range(1, 9):
        add(f"squeezellm_bits{b}", f"squeezellm bits={b}, n=45 (not a multiple of 32, indices straddle words)",
            [sq("w", make_squeezellm(f"sqb{b}", 6, 45, b))])
    add("squeezellm_no_outliers", "nnz = 0: zero-length outlier_col/outlier_val, row_ptr all zero",
        [sq("w", make_squeezellm("sqnone", 5, 33, 3, outliers="none"))])
    add("squeezellm_full_outlier_rows", "rows where every column has a residual, rows with none, rows with two",
        [sq("w", make_squeezellm("sqfull", 9, 20, 4, outliers="full_rows"))])
    add("squeezellm_outlier_u32", "outlier_col stored as u32 although n <= 65536 (legal)",
        [sq("w", make_squeezellm("squ32", 5, 30, 3, col_dtype="u32"))])
    wide = make_squeezellm("sqwide", 1, 65537, 1, outliers="none", col_dtype="u32")
    wide.outliers = [[(0, 0.25), (65535, -0.5), (65536, 0.125)]]
    add("squeezellm_wide_u32_required", "n = 65537 > 65536: u32 outlier columns required, a residual at column 65536",
        [sq("w", wide)])
    for bd in ("f16", "bf16", "f32"):
        add(f"squeezellm_bias_{bd}", f"optional bias in {bd} (exposed separately, not part of the decoded tensor)",
            [sq("w", make_squeezellm(f"sqbias{bd}", 6, 20, 4, bias=bd))])
    for dt in ("bf16", "f32"):
        add(f"squeezellm_dtype_{dt}", f"tensor dtype {dt}: decoded output is f32 regardless",
            [sq("w", make_squeezellm(f"sqdt{dt}", 4, 16, 3, dtype=dt))])
    unsorted = make_squeezellm("squns", 4, 24, 3)
    unsorted.lut = unsorted.lut[:, ::-1].copy()
    unsorted.lut[1, :] = np.float16(0.5)                 # all entries equal
    unsorted.lut[2, 3] = unsorted.lut[2, 5]              # a duplicate pair
    add("squeezellm_lut_unsorted", "tables in descending order, one row of 8 equal entries, a duplicate pair "
        "(writers SHOULD sort; readers accept any table)", [sq("w", unsorted)])
    add("squeezellm_padding_bits_set", "every padding bit after the last index of a row is 1 (readers ignore it)",
        [sq("w", make_squeezellm("sqpad", 5, 21, 3, pad_bits=True))])
    add("squeezellm_1x1", "smallest squeezellm tensor: m = n = 1, bits 8 (a 256-entry table), one residual",
        [sq("w", _sq_1x1())])
    add("squeezellm_special_values", "NaN/inf/-0/subnormal LUT entries and residuals: inf + -inf = NaN, "
        "-0 + -0 = -0, +0 + -0 = +0, 65504 + 65504 stays finite in f32, 1 + 2^-24 ties to 1.0",
        [sq("w", _sq_special())])
    add("squeezellm_unknown_params", "unknown params keys beside bits are ignored",
        [sq("w", make_squeezellm("squnk", 3, 10, 2, extra_params={"x.kmeans_iters": 20, "group_size": "n/a"}))])

    # ---- quip (codecs/quip.md)
    def qp(name: str, L: QuipLogical, **kw: Any) -> tuple[mw.Tens, np.ndarray, np.ndarray | None]:
        return quip_tens(name, L, **kw), L.oracle(), L.bias

    add("quip_worked_example", "quip.md §9 byte for byte (m=2, n=4, b=2, k_n=1 with a 2x2 factor_n, k_m=1)",
        [qp("w", quip_worked_example())])
    for b in range(1, 9):
        add(f"quip_bits{b}", f"quip bits={b}, m=6 (k_m=1, 3x3 factor_m), n=40 (k_n=3, 5x5 factor_n)",
            [qp("w", make_quip(f"qb{b}", 6, 40, b, 3, 1))])
    add("quip_transform_hadamard_only", "k_n=4, k_m=3, a_n = a_m = 1: no factor sections",
        [qp("w", make_quip("qhad", 8, 16, 2, 4, 3))])
    add("quip_transform_factor_only", "k_n = k_m = 0: fully explicit 7x7 factor_n and 5x5 factor_m",
        [qp("w", make_quip("qfac", 5, 7, 3, 0, 0))])
    add("quip_transform_mixed", "k_n=0 with a 6x6 factor_n on one side, k_m=2 Hadamard only on the other; "
        "and k_n=2 (not the largest power of two dividing n=48, a_n=12) with k_m=1, a_m=3",
        [qp("a", make_quip("qmixa", 4, 6, 2, 0, 2)), qp("b", make_quip("qmixb", 6, 48, 2, 2, 1))])
    add("quip_hadamard_k7_k8", "c_7 = 0x3DB504F3 (odd k) along n = 128 and c_8 = 0x3D800000 along m = 256",
        [qp("n128", make_quip("qk7", 2, 128, 2, 7, 1)), qp("m256", make_quip("qk8", 256, 1, 2, 0, 8))])
    add("quip_1x1", "smallest quip tensor: m = n = 1, k = 0, a = 1 (no transform at all), bits 8",
        [qp("w", make_quip("q1x1", 1, 1, 8, 0, 0))])
    add("quip_special_values", "+-0 through factors and signs, subnormal products (no flush to zero), inf scale, "
        "butterflies overflowing to inf, NaN and -0 factor entries (NaN compared as any NaN)",
        [qp(nm, L) for nm, L in quip_special()])
    nonorth = make_quip("qnonorth", 3, 6, 3, 1, 0)
    assert nonorth.fn is not None and nonorth.fm is not None
    nonorth.fn[:] = np.float32(3.0)
    nonorth.fm[:] = np.arange(9, dtype=np.float32).reshape(3, 3) - 4
    add("quip_factor_not_orthogonal", "factors that are not orthogonal still decode by §5 (readers never check)",
        [qp("w", nonorth)])
    add("quip_bias_bf16", "quip with a bf16 bias", [qp("w", make_quip("qbias", 4, 8, 2, 2, 1, bias="bf16"))])
    add("quip_dtype_f32_padding_bits", "tensor dtype f32, n=24 with 3-bit codes (72 bits/row), padding bits set",
        [qp("w", make_quip("qpad", 4, 24, 3, 3, 2, dtype="f32", pad_bits=True))])
    add("quip_unknown_params", "unknown params keys are ignored",
        [qp("w", make_quip("qunk", 2, 8, 2, 3, 1, extra_params={"x.seed": 7, "codebook": "E8P?"}))])
    add("mixed_codecs", "raw, spqr, squeezellm and quip tensors in one file, sections interleaved with gaps",
        [raw("embed", "f16", [6, 4]), spqr("spqr.w", "mixs", 4, 12, 3, 4, sb=3, zb=3, beta2=2, perm=True),
         sq("sq.w", make_squeezellm("mixq", 4, 12, 3, bias="f16")),
         qp("quip.w", make_quip("mixp", 4, 12, 2, 2, 2, bias="f32")), raw("norm", "f32", [4])],
        layout=mw.Layout(order="interleave", gap=64, lead=128))
    v2 = _v2()
    for name, desc, items, kw in v2.spqr_valid() + v2.quip_valid():  # codec version 2 (spqr.md §8, quip.md §10)
        add(name, desc, items, **kw)
    for name, desc, items, kw in _edges().valid():  # misreadings of the spec told apart
        add(name, desc, items, **kw)
    return out


def _edges() -> Any:
    """The misreading-separating vector module (imported late: it imports this one)."""
    if __package__ in (None, ""):
        import generate_edges  # type: ignore[no-redef]
    else:
        from . import generate_edges
    return generate_edges


def _v2() -> Any:
    """The version-2 vector module (imported late: it imports this one)."""
    if __package__ in (None, ""):
        import generate_v2  # type: ignore[no-redef]
    else:
        from . import generate_v2
    return generate_v2


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


def build_valid(v: Valid) -> bytes:
    kw = dict(v.build_kw)
    wide = kw.pop("wide_ints", False)
    sec_extra = kw.pop("section_extra", None)
    if sec_extra:
        for t in v.tensors:
            for s in t.sections:
                s.extra.update(sec_extra)
    if wide:
        for t in v.tensors:
            t.shape = [mw.Wide(d, "u64") for d in t.shape]
            t.codec_version = mw.Wide(1, "i64")
            for s in t.sections:
                s.set["shape"] = [mw.Wide(d, "u32") for d in s.shape]
        blob = mw.build(v.tensors, **kw)
        # offsets/lengths/crc stay minimal; shapes and codec_version are wide
        return blob
    return mw.build(v.tensors, **kw)


# ---------------------------------------------------------------- invalid vectors


def _base() -> tuple[list[mw.Tens], SpqrLogical]:
    """A small valid file (raw + spqr with perm and two-level stats) that invalid vectors corrupt."""
    L = make_spqr("base", 4, 20, 3, 8, sb=3, zb=16, beta2=2, perm=True, bias="f16")
    L.outliers[1] = [(2, 1.5), (5, -0.5), (11, 2.0)]  # invalid vectors edit the columns of row 1
    raw_t, _ = raw_tens("norm", "f32", [4])
    return [raw_t, spqr_tens("w", L)], L


def _sec(ts: list[mw.Tens], tensor: str, role: str) -> mw.Sec:
    t = next(t for t in ts if t.name == tensor)
    return next(s for s in t.sections if s.role == role)


def _t(ts: list[mw.Tens], tensor: str) -> mw.Tens:
    return next(t for t in ts if t.name == tensor)


def _edit(fn: Callable[[list[mw.Tens]], Any], **build_kw: Any) -> bytes:
    ts, _ = _base()
    fn(ts)
    return mw.build(ts, **build_kw)


def _replace_data(ts: list[mw.Tens], tensor: str, role: str, arr: np.ndarray) -> None:
    _sec(ts, tensor, role).data = arr.tobytes()


def _header_blob(header: Any) -> bytes:
    return mw.build([], header_obj=header)


def _valid_header() -> dict[str, Any]:
    return {"tensors": [], "metadata": {}}


def invalid_vectors() -> list[Invalid]:
    out: list[Invalid] = []

    def add(name: str, desc: str, blob: bytes, error: str, also: tuple[str, ...] = ()) -> None:
        out.append(Invalid(name, desc, blob, error, [error, *also]))

    ts, L = _base()
    good = mw.build(ts)
    _, hl = good[:16], int.from_bytes(good[16:24], "little")
    # preamble / size
    add("truncated_empty", "0-byte file", b"", "TRUNCATED")
    add("truncated_preamble", "16 bytes: shorter than the preamble", good[:16], "TRUNCATED")
    add("truncated_header", "cut in the middle of the header", good[:40], "TRUNCATED")
    add("truncated_data", "last data byte missing", good[:-1], "TRUNCATED")
    add("bad_magic", "magic 'SPQRFMT\\x01'", mw.build(ts, spoil=mw.Spoil(magic=b"SPQRFMT\x01")), "BAD_MAGIC")
    add("bad_magic_lowercase", "magic 'spqrfmt\\0'", mw.build(ts, spoil=mw.Spoil(magic=b"spqrfmt\x00")), "BAD_MAGIC")
    add("version_major_2", "major = 2", mw.build(ts, spoil=mw.Spoil(major=2)), "UNSUPPORTED_VERSION")
    add("version_major_0", "major = 0", mw.build(ts, spoil=mw.Spoil(major=0)), "UNSUPPORTED_VERSION")
    add("header_length_zero", "header_length = 0", mw.build(ts, spoil=mw.Spoil(header_length=0)), "HEADER_TOO_LARGE")
    add("header_length_over_max", "header_length = 64 MiB + 1 (file is small)",
        mw.build(ts, spoil=mw.Spoil(header_length=(64 << 20) + 1)), "HEADER_TOO_LARGE")
    add("header_length_huge", "header_length = 2^64 - 1 (must not allocate or overflow)",
        mw.build(ts, spoil=mw.Spoil(header_length=(1 << 64) - 1)), "HEADER_TOO_LARGE")
    add("data_length_huge", "data_length = 2^64 - 1 (D + L overflows 64-bit arithmetic)",
        mw.build(ts, spoil=mw.Spoil(data_length=(1 << 64) - 1)), "TRUNCATED")
    add("header_length_past_eof", "header_length larger than the file but under the limit",
        mw.build(ts, spoil=mw.Spoil(header_length=hl + 4096)), "TRUNCATED")
    add("trailing_byte", "one extra byte after D + L", good + b"\x00", "TRAILING_DATA")
    add("trailing_block", "a whole extra 64-byte block", good + bytes(64), "TRAILING_DATA")
    add("header_checksum", "header_crc off by one", mw.build(ts, spoil=mw.Spoil(header_crc=(
        int.from_bytes(good[12:16], "little") ^ 1))), "HEADER_CHECKSUM")

    # msgpack-level header defects (CRC is valid, so BAD_HEADER is the only applicable code)
    def hdr(name: str, desc: str, hb: bytes, error: str = "BAD_HEADER", also: tuple[str, ...] = ()) -> None:
        add(name, desc, mw.build([], spoil=mw.Spoil(header_bytes=hb)), error, also)

    vh = mw.packb(_valid_header())
    hdr("hdr_not_msgpack", "header is the reserved byte 0xC1", b"\xc1")
    hdr("hdr_trailing_bytes", "a valid map followed by one more byte", vh + b"\xc0")
    hdr("hdr_truncated_msgpack", "map header promises 2 pairs, only 1 present", vh[:-1] + b"")
    hdr("hdr_not_a_map", "header is an array", mw.packb([[], {}]))
    hdr("hdr_ext_in_metadata", "ext type (code 5) as a metadata value",
        mw.packb({"tensors": [], "metadata": {"x": mw.Ext(5, b"abcd")}}))
    hdr("hdr_timestamp_ext", "msgpack timestamp ext (-1) in metadata",
        mw.packb({"tensors": [], "metadata": {"t": mw.Ext(-1, b"\x00\x00\x00\x01")}}))
    hdr("hdr_ext8_top", "ext8 with 3-byte payload as an unknown top-level value",
        mw.packb({"tensors": [], "metadata": {}, "x": mw.Ext(1, b"abc")}))
    hdr("hdr_duplicate_top_key", "the key 'tensors' appears twice",
        mw.packb(mw.Pairs([("tensors", []), ("metadata", {}), ("tensors", [])])))
    hdr("hdr_duplicate_metadata_key", "metadata has the same key twice",
        mw.packb({"tensors": [], "metadata": mw.Pairs([("a", 1), ("a", 2)])}))
    hdr("hdr_int_key", "metadata map with an int key", mw.packb({"tensors": [], "metadata": mw.Pairs([(1, 2)])}))
    hdr("hdr_bin_key", "top-level map with a bin key", mw.packb(mw.Pairs([("tensors", []), ("metadata", {}),
                                                                          (b"k", 1)])))
    hdr("hdr_invalid_utf8", "a str with invalid UTF-8 as metadata value",
        mw.packb({"tensors": [], "metadata": {"s": mw.BadStr(b"\xff\xfe")}}))
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    hdr("hdr_nesting_40", "40 nested arrays in metadata (> MAX_NESTING = 32)",
        mw.packb({"tensors": [], "metadata": {"d": deep}}))
    deep_b = b"\x91" * 100000 + b"\xc0"
    hdr("hdr_nesting_100k", "100000 nested arrays: a recursive parser must not overflow its stack",
        mw.packb({"tensors": [], "metadata": {"d": mw.Raw(deep_b)}}))
    hdr("hdr_container_len_huge", "array32 declaring 2^32-1 items with no items present",
        mw.packb({"tensors": [], "metadata": {"a": mw.Raw(b"\xdd\xff\xff\xff\xff")}}))
    hdr("hdr_container_len_over_limit", "map32 declaring MAX_CONTAINER_LEN + 1 pairs",
        mw.packb({"tensors": [], "metadata": {"a": mw.Raw(b"\xdf\x01\x00\x00\x01")}}))
    hdr("hdr_str_len_huge", "str32 declaring 2^32-1 bytes",
        mw.packb({"tensors": [], "metadata": {"a": mw.Raw(b"\xdb\xff\xff\xff\xff")}}))
    hdr("hdr_missing_tensors", "no 'tensors' key", mw.packb({"metadata": {}}))
    hdr("hdr_missing_metadata", "no 'metadata' key", mw.packb({"tensors": []}))
    hdr("hdr_tensors_not_array", "'tensors' is a map", mw.packb({"tensors": {}, "metadata": {}}))
    add("metadata_not_map", "'metadata' is an array",
        _header_blob({"tensors": [], "metadata": [1, 2]}), "BAD_METADATA")
    add("metadata_nil", "'metadata' is nil", _header_blob({"tensors": [], "metadata": None}), "BAD_METADATA")

    # tensor record types
    def rec(name: str, desc: str, fn: Callable[[list[mw.Tens]], Any], error: str, also: tuple[str, ...] = (),
            **kw: Any) -> None:
        add(name, desc, _edit(fn, **kw), error, also)

    rec("rec_missing_sections", "tensor record without 'sections'",
        lambda ts: setattr(_t(ts, "w"), "drop", ("sections",)), "BAD_HEADER")
    rec("rec_missing_codec_version", "tensor record without 'codec_version'",
        lambda ts: setattr(_t(ts, "norm"), "drop", ("codec_version",)), "BAD_HEADER")
    add("rec_not_map", "a tensor record that is an int", _header_blob({"tensors": [5], "metadata": {}}), "BAD_HEADER")
    rec("rec_name_int", "tensor name is an int", lambda ts: _t(ts, "norm").set.update(name=7), "BAD_HEADER")
    rec("rec_codec_version_str", "codec_version is a str", lambda ts: _t(ts, "w").set.update(codec_version="1"),
        "BAD_HEADER")
    rec("rec_codec_version_zero", "codec_version 0 (spec: int >= 1; a malformed record, not a future version)",
        lambda ts: _t(ts, "w").set.update(codec_version=0), "BAD_HEADER")
    rec("rec_codec_version_bool", "codec_version is msgpack true (bool is not int)",
        lambda ts: _t(ts, "w").set.update(codec_version=True), "BAD_HEADER")
    rec("rec_offset_float", "section offset is a float 0.0",
        lambda ts: _sec(ts, "norm", "data").set.update(offset=0.0), "BAD_HEADER")
    rec("rec_section_missing_crc", "section record without crc32",
        lambda ts: setattr(_sec(ts, "norm", "data"), "drop", ("crc32",)), "BAD_HEADER")
    rec("rec_crc_out_of_range", "section crc32 = 2^32 (out of range)",
        lambda ts: _sec(ts, "norm", "data").set.update(crc32=1 << 32), "BAD_HEADER")
    rec("rec_params_not_map", "spqr params is an array",
        lambda ts: _t(ts, "w").set.update(params=[3]), "BAD_HEADER")
    rec("rec_sections_not_map", "sections is an array",
        lambda ts: _t(ts, "norm").set.update(sections=[]), "BAD_HEADER")
    # names
    rec("name_empty", "empty tensor name", lambda ts: _t(ts, "norm").set.update(name=""), "BAD_NAME")
    rec("name_nul", "tensor name containing NUL", lambda ts: _t(ts, "norm").set.update(name="a\x00b"), "BAD_NAME")
    rec("name_1025_bytes", "tensor name of 1025 ASCII bytes",
        lambda ts: _t(ts, "norm").set.update(name="n" * 1025), "BAD_NAME")
    rec("name_duplicate", "two tensors named 'w'", lambda ts: _t(ts, "norm").set.update(name="w"), "DUPLICATE_NAME")
    # dtypes / shapes
    rec("dtype_tensor_unknown", "tensor dtype 'f8e4m3'", lambda ts: _t(ts, "norm").set.update(dtype="f8e4m3"),
        "BAD_DTYPE")
    rec("dtype_section_unknown", "section dtype 'float32'",
        lambda ts: _sec(ts, "norm", "data").set.update(dtype="float32"), "BAD_DTYPE")
    rec("shape_negative", "tensor shape [-4]", lambda ts: _t(ts, "norm").set.update(shape=[-4]), "BAD_SHAPE")
    rec("shape_9_dims", "tensor shape with 9 dims", lambda ts: _t(ts, "norm").set.update(shape=[1] * 8 + [4]),
        "BAD_SHAPE")
    rec("shape_float_entry", "section shape [4.0]",
        lambda ts: _sec(ts, "norm", "data").set.update(shape=[4.0]), "BAD_SHAPE")
    rec("shape_not_array", "tensor shape is an int", lambda ts: _t(ts, "norm").set.update(shape=4), "BAD_HEADER")
    rec("shape_overflow_tensor", "tensor shape [2^21, 2^20] = 2^41 elements",
        lambda ts: _t(ts, "norm").set.update(shape=[1 << 21, 1 << 20]), "SHAPE_OVERFLOW")
    rec("shape_overflow_u64", "section shape [2^64-1, 2^64-1] (product overflows any fixed-width int)",
        lambda ts: _sec(ts, "norm", "data").set.update(shape=[(1 << 64) - 1, (1 << 64) - 1]), "SHAPE_OVERFLOW",
        ("SECTION_LENGTH_MISMATCH",))
    rec("shape_overflow_wrap", "section shape [2^32, 2^32, 2] whose product wraps to 0 in u64",
        lambda ts: _sec(ts, "norm", "data").set.update(shape=[1 << 32, 1 << 32, 4], length=0), "SHAPE_OVERFLOW",
        ("SECTION_LENGTH_MISMATCH",))
    # section geometry
    rec("section_length_mismatch", "section length one itemsize short",
        lambda ts: _sec(ts, "norm", "data").set.update(length=12), "SECTION_LENGTH_MISMATCH")
    rec("section_length_negative", "section length -16",
        lambda ts: _sec(ts, "norm", "data").set.update(length=-16), "SECTION_LENGTH_MISMATCH")
    rec("section_misaligned", "section offset 32 (not a multiple of 64)",
        lambda ts: _sec(ts, "w", "perm").set.update(offset=32), "SECTION_MISALIGNED", ("SECTION_OVERLAP",))
    rec("section_out_of_bounds", "section ends past data_length",
        lambda ts: _sec(ts, "w", "bias").set.update(offset=1 << 20), "SECTION_OUT_OF_BOUNDS")
    rec("section_negative_offset", "section offset -64",
        lambda ts: _sec(ts, "norm", "data").set.update(offset=-64), "SECTION_OUT_OF_BOUNDS")
    rec("section_offset_huge", "section offset 2^64-64 (offset + length overflows u64)",
        lambda ts: _sec(ts, "norm", "data").set.update(offset=(1 << 64) - 64), "SECTION_OUT_OF_BOUNDS")
    rec("section_overlap_tensors", "a section of 'w' points at the bytes of 'norm'",
        lambda ts: _sec(ts, "w", "bias").set.update(offset=0), "SECTION_OVERLAP")
    rec("section_overlap_same_tensor", "'scale_zero' and 'scale_scale' of one tensor share bytes",
        lambda ts: _sec(ts, "w", "scale_zero").set.update(offset=_offset_of(ts, "w", "scale_scale")),
        "SECTION_OVERLAP")
    # spqr params
    for key, val, why in (("bits", 0, "bits 0"), ("bits", 9, "bits 9"), ("bits", True, "bits true (bool)"),
                          ("bits", 3.0, "bits 3.0 (float)"), ("group_size", 0, "group_size 0"),
                          ("group_size", 65537, "group_size 65537"), ("scale_bits", 12, "scale_bits 12"),
                          ("zero_bits", 0, "zero_bits 0"), ("stat_group_size", 0, "stat_group_size 0"),
                          ("stat_group_size", None, "stat_group_size nil while scale_bits < 16")):
        rec(f"params_{key}_{str(val).lower().replace('.', '_')}", f"spqr params: {why}",
            lambda ts, key=key, val=val: _t(ts, "w").params.__setitem__(key, val), "BAD_PARAMS")
    rec("params_missing_bits", "spqr params without 'bits'", lambda ts: _t(ts, "w").params.pop("bits"), "BAD_PARAMS")
    rec("spqr_rank_1", "spqr tensor of shape [80]", lambda ts: _t(ts, "w").set.update(shape=[80]), "BAD_SHAPE")
    rec("spqr_m_zero", "spqr tensor of shape [0, 20]", lambda ts: _t(ts, "w").set.update(shape=[0, 20]), "BAD_SHAPE")
    rec("spqr_dtype_i8", "spqr tensor dtype i8 (must be f16/bf16/f32)",
        lambda ts: _t(ts, "w").set.update(dtype="i8"), "BAD_PARAMS")
    # section sets / layouts
    rec("set_missing_codes", "spqr without 'codes'", lambda ts: _drop_sec(ts, "w", "codes"), "BAD_SECTION_SET")
    rec("set_extra_role", "spqr with an undefined role 'junk'",
        lambda ts: _t(ts, "w").sections.append(mw.Sec("junk", "u8", [1], b"\x01")), "BAD_SECTION_SET")
    rec("set_scale_and_codes", "scale_bits < 16 but a direct 'scale' section is present too",
        lambda ts: _t(ts, "w").sections.append(mw.Sec("scale", "f16", [3, 4], bytes(24))), "BAD_SECTION_SET")
    rec("set_raw_two_sections", "raw tensor with 'data' and 'extra'",
        lambda ts: _t(ts, "norm").sections.append(mw.Sec("extra", "u8", [1], b"\x00")), "BAD_SECTION_SET")
    rec("layout_codes_shape", "codes shape [4, 3] instead of [4, 2]",
        lambda ts: _resize(_sec(ts, "w", "codes"), [4, 3], 4), "BAD_SECTION_LAYOUT")
    rec("layout_scale_scale_dtype", "scale_scale stored as f32",
        lambda ts: _retype(_sec(ts, "w", "scale_scale"), "f32", "<f4"), "BAD_SECTION_LAYOUT")
    rec("layout_outlier_col_i32", "outlier_col dtype i32",
        lambda ts: _retype(_sec(ts, "w", "outlier_col"), "i32", "<i4"), "BAD_SECTION_LAYOUT")
    rec("layout_outlier_val_len", "outlier_val has one element fewer than outlier_col",
        lambda ts: _resize(_sec(ts, "w", "outlier_val"), [_nnz(ts) - 1], 2), "BAD_SECTION_LAYOUT")
    rec("layout_perm_u16", "perm stored as u16", lambda ts: _retype(_sec(ts, "w", "perm"), "u16", "<u2"),
        "BAD_SECTION_LAYOUT")
    rec("layout_bias_len", "bias of length m + 1", lambda ts: _resize(_sec(ts, "w", "bias"), [5], 2),
        "BAD_SECTION_LAYOUT")
    rec("layout_raw_dtype", "raw tensor f32 with an i32 data section",
        lambda ts: _sec(ts, "norm", "data").__setattr__("dtype", "i32"), "BAD_SECTION_LAYOUT")
    rec("layout_raw_shape", "raw tensor [4] with a [2, 2] data section",
        lambda ts: _sec(ts, "norm", "data").__setattr__("shape", [2, 2]), "BAD_SECTION_LAYOUT")
    wide = make_spqr("wideinv", 1, 65537, 1, 65536, outliers="none", col_dtype="u16")
    add("layout_u16_cols_n_65537", "n = 65537 with u16 outlier_col (cannot hold column 65536)",
        mw.build([spqr_tens("w", wide)]), "BAD_SECTION_LAYOUT")
    # checksums
    rec("section_checksum", "one bit of 'codes' flipped, crc32 unchanged",
        lambda ts: _flip(_sec(ts, "w", "codes")), "SECTION_CHECKSUM")
    rec("section_checksum_empty", "zero-length section whose crc32 is 1 (CRC-32 of no bytes is 0)",
        lambda ts: ts.append(mw.Tens("e", [0], "f32", "raw", {}, [mw.Sec("data", "f32", [0], b"", set={"crc32": 1})])),
        "SECTION_CHECKSUM")
    # CSR / index / permutation (CRCs restamped so only the intended rule breaks)
    ptr = _ptr(L)
    nnz = ptr[-1]
    rec("csr_start_nonzero", "outlier_row_ptr[0] = 1",
        lambda ts: _replace_data(ts, "w", "outlier_row_ptr", np.array([1] + ptr[1:], dtype="<u4")), "BAD_CSR")
    rec("csr_decreasing", "outlier_row_ptr decreases",
        lambda ts: _replace_data(ts, "w", "outlier_row_ptr", np.array([0, nnz, 0, nnz, nnz], dtype="<u4")),
        "BAD_CSR")
    rec("csr_end_mismatch", "outlier_row_ptr[m] = nnz - 1",
        lambda ts: _replace_data(ts, "w", "outlier_row_ptr", np.array(ptr[:-1] + [nnz - 1], dtype="<u4")),
        "BAD_CSR")
    rec("csr_huge_entry", "outlier_row_ptr holds 2^32-1 (must not be used as an allocation size)",
        lambda ts: _replace_data(ts, "w", "outlier_row_ptr", np.array([0, 0xFFFFFFFF, 0, 0, nnz], dtype="<u4")),
        "BAD_CSR")
    cols = _cols(L)
    rec("index_col_ge_n", "an outlier column equal to n",
        lambda ts: _replace_data(ts, "w", "outlier_col", np.array(cols[:-1] + [20], dtype="<u2")), "BAD_INDEX")
    r1 = ptr[1], ptr[2]  # a row with >= 2 outliers is guaranteed by _base's seed (asserted below)
    assert r1[1] - r1[0] >= 2, "base vector needs two outliers in row 1"
    dup = list(cols)
    dup[r1[0] + 1] = dup[r1[0]]
    rec("index_col_repeated", "two equal columns in one row",
        lambda ts: _replace_data(ts, "w", "outlier_col", np.array(dup, dtype="<u2")), "BAD_INDEX")
    dec = list(cols)
    dec[r1[0]], dec[r1[0] + 1] = dec[r1[0] + 1], dec[r1[0]]
    rec("index_col_decreasing", "columns of one row in decreasing order",
        lambda ts: _replace_data(ts, "w", "outlier_col", np.array(dec, dtype="<u2")), "BAD_INDEX")
    perm = list(L.perm)
    p2 = perm[:]
    p2[1] = p2[0]
    rec("perm_repeated", "perm repeats an entry (and misses another)",
        lambda ts: _replace_data(ts, "w", "perm", np.array(p2, dtype="<u4")), "BAD_PERMUTATION")
    p3 = perm[:]
    p3[p3.index(19)] = 20
    rec("perm_out_of_range", "perm holds n instead of n-1", lambda ts: _replace_data(
        ts, "w", "perm", np.array(p3, dtype="<u4")), "BAD_PERMUTATION")
    p4 = perm[:]
    p4[0] = 0xFFFFFFFF
    rec("perm_huge", "perm entry 2^32-1", lambda ts: _replace_data(ts, "w", "perm", np.array(p4, dtype="<u4")),
        "BAD_PERMUTATION")
    rec("bool_value_2", "raw bool tensor with a byte 2", lambda ts: ts.append(
        mw.Tens("b", [3], "bool", "raw", {}, [mw.Sec("data", "bool", [3], b"\x01\x02\x00")])), "BAD_VALUE")

    # ---- SPEC §3/§4 type, encoding and zero-length rules (one code each, SPEC §10 precedence)
    deep33: Any = 0
    for _ in range(31):  # top map (1) + metadata map (2) + 31 arrays = depth 33
        deep33 = [deep33]
    hdr("hdr_nesting_33", "containers nested MAX_NESTING + 1 = 33 deep (the top-level map counts as 1)",
        mw.packb({"tensors": [], "metadata": {"d": deep33}}))
    hdr("hdr_invalid_utf8_key", "a metadata key with invalid UTF-8",
        mw.packb({"tensors": [], "metadata": mw.Pairs([(mw.BadStr(b"k\xc3"), 1)])}))
    rec("name_overlong_utf8", "tensor name with an overlong UTF-8 NUL (C0 80): BAD_HEADER, not BAD_NAME",
        lambda ts: _t(ts, "norm").set.update(name=mw.BadStr(b"a\xc0\x80b")), "BAD_HEADER")
    rec("name_surrogate_utf8", "tensor name with an encoded surrogate U+D800 (ED A0 80): not valid UTF-8",
        lambda ts: _t(ts, "norm").set.update(name=mw.BadStr(b"w\xed\xa0\x80")), "BAD_HEADER")
    rec("name_nfd_nfc_duplicate", "two tensors named by the same code points 'e'+U+0301 (byte-equal names)",
        lambda ts: (_t(ts, "norm").set.update(name="e\u0301"), _t(ts, "w").set.update(name="e\u0301")),
        "DUPLICATE_NAME")
    rec("shape_bool_entry", "tensor shape [true, 4]: a bool is not an int", lambda ts: _t(ts, "norm").set.update(
        shape=[True, 4]), "BAD_SHAPE")
    rec("rec_length_bool", "section length is msgpack true", lambda ts: _sec(ts, "norm", "data").set.update(
        length=True), "BAD_HEADER")
    rec("rec_offset_float_integral", "section offset 64.0 (float, though integral)",
        lambda ts: _sec(ts, "w", "bias").set.update(offset=float(_offset_of(ts, "w", "bias"))), "BAD_HEADER")
    rec("rec_crc_negative", "section crc32 = -1", lambda ts: _sec(ts, "norm", "data").set.update(crc32=-1),
        "BAD_HEADER")
    rec("rec_crc_float", "section crc32 as a float", lambda ts: _sec(ts, "norm", "data").set.update(
        crc32=float(zlib.crc32(_sec(ts, "norm", "data").data))), "BAD_HEADER")
    rec("rec_codec_version_negative", "codec_version -1", lambda ts: _t(ts, "norm").set.update(codec_version=-1),
        "BAD_HEADER")
    rec("rec_shape_nil", "tensor shape is nil", lambda ts: _t(ts, "norm").set.update(shape=None), "BAD_HEADER")
    rec("rec_dtype_int", "tensor dtype is an int", lambda ts: _t(ts, "norm").set.update(dtype=4), "BAD_HEADER")
    rec("empty_section_misaligned", "zero-length section at offset 32", lambda ts: ts.append(
        mw.Tens("e", [0], "f32", "raw", {}, [mw.Sec("data", "f32", [0], b"", set={"offset": 32})])),
        "SECTION_MISALIGNED")
    rec("empty_section_past_end", "zero-length section at an offset past data_length", lambda ts: ts.append(
        mw.Tens("e", [0], "f32", "raw", {}, [mw.Sec("data", "f32", [0], b"", set={"offset": 1 << 20})])),
        "SECTION_OUT_OF_BOUNDS")
    rec("spqr_n_zero", "spqr tensor of shape [4, 0]", lambda ts: _t(ts, "w").set.update(shape=[4, 0]), "BAD_SHAPE")
    rec("spqr_dtype_f64", "spqr tensor dtype f64 (a known name, but not f16/bf16/f32)",
        lambda ts: _t(ts, "w").set.update(dtype="f64"), "BAD_PARAMS")

    # ---- squeezellm: every rejection rule of squeezellm.md §1-§3, §6
    sq_ts, SQ = _base_squeezellm()

    def sqv(name: str, desc: str, fn: Callable[[list[mw.Tens]], Any], error: str) -> None:
        ts2, _ = _base_squeezellm()
        fn(ts2)
        add(f"squeezellm_{name}", "squeezellm: " + desc, mw.build(ts2), error)

    sqv("rank_1", "tensor shape [80]", lambda ts: _t(ts, "s").set.update(shape=[80]), "BAD_SHAPE")
    sqv("rank_3", "tensor shape [1, 4, 20]", lambda ts: _t(ts, "s").set.update(shape=[1, 4, 20]), "BAD_SHAPE")
    sqv("n_zero", "tensor shape [4, 0]", lambda ts: _t(ts, "s").set.update(shape=[4, 0]), "BAD_SHAPE")
    sqv("m_zero", "tensor shape [0, 20]", lambda ts: _t(ts, "s").set.update(shape=[0, 20]), "BAD_SHAPE")
    sqv("dtype_i8", "tensor dtype i8", lambda ts: _t(ts, "s").set.update(dtype="i8"), "BAD_PARAMS")
    sqv("dtype_f64", "tensor dtype f64", lambda ts: _t(ts, "s").set.update(dtype="f64"), "BAD_PARAMS")
    for val, why in ((0, "0"), (9, "9"), (-1, "-1"), (True, "true"), (3.0, "3_0"), (None, "nil"), ("3", "str")):
        sqv(f"bits_{why}", f"bits = {val!r}", lambda ts, val=val: _t(ts, "s").params.__setitem__("bits", val),
            "BAD_PARAMS")
    sqv("bits_missing", "params without bits", lambda ts: _t(ts, "s").params.pop("bits"), "BAD_PARAMS")
    for role in ("lut", "codes", "outlier_row_ptr", "outlier_col", "outlier_val"):
        sqv(f"missing_{role}", f"no {role!r} section", lambda ts, role=role: _drop_sec(ts, "s", role),
            "BAD_SECTION_SET")
    sqv("extra_perm", "a 'perm' section (squeezellm has none)", lambda ts: _t(ts, "s").sections.append(
        mw.Sec("perm", "u32", [20], np.arange(20, dtype="<u4").tobytes())), "BAD_SECTION_SET")
    sqv("lut_f32", "lut stored as f32 (version 1 allows only f16)",
        lambda ts: _retype(_sec(ts, "s", "lut"), "f32", "<f4"), "BAD_SECTION_LAYOUT")
    sqv("lut_bf16", "lut stored as bf16", lambda ts: _sec(ts, "s", "lut").__setattr__("dtype", "bf16"),
        "BAD_SECTION_LAYOUT")
    sqv("lut_short", "lut [4, 4] for bits = 3 (needs [4, 8])",
        lambda ts: _resize(_sec(ts, "s", "lut"), [4, 4], 2), "BAD_SECTION_LAYOUT")
    sqv("lut_1d", "lut [32] instead of [4, 8]", lambda ts: _sec(ts, "s", "lut").__setattr__("shape", [32]),
        "BAD_SECTION_LAYOUT")
    sqv("codes_shape", "codes [4, 3] instead of [4, 2]", lambda ts: _resize(_sec(ts, "s", "codes"), [4, 3], 4),
        "BAD_SECTION_LAYOUT")
    sqv("codes_i32", "codes stored as i32", lambda ts: _sec(ts, "s", "codes").__setattr__("dtype", "i32"),
        "BAD_SECTION_LAYOUT")
    sqv("row_ptr_len", "outlier_row_ptr of m entries (needs m + 1)",
        lambda ts: _resize(_sec(ts, "s", "outlier_row_ptr"), [4], 4), "BAD_SECTION_LAYOUT")
    sqv("row_ptr_u64", "outlier_row_ptr stored as u64",
        lambda ts: _retype(_sec(ts, "s", "outlier_row_ptr"), "u64", "<u8"), "BAD_SECTION_LAYOUT")
    sqv("outlier_col_i32", "outlier_col stored as i32",
        lambda ts: _retype(_sec(ts, "s", "outlier_col"), "i32", "<i4"), "BAD_SECTION_LAYOUT")
    sqv("outlier_col_2d", "outlier_col of shape [1, nnz]", lambda ts: _sec(ts, "s", "outlier_col").__setattr__(
        "shape", [1, len(_cols_of(SQ.outliers))]), "BAD_SECTION_LAYOUT")
    sqv("outlier_val_len", "outlier_val one element shorter than outlier_col", lambda ts: _resize(
        _sec(ts, "s", "outlier_val"), [len(_cols_of(SQ.outliers)) - 1], 2), "BAD_SECTION_LAYOUT")
    sqv("outlier_val_f32", "outlier_val stored as f32", lambda ts: _retype(_sec(ts, "s", "outlier_val"), "f32", "<f4"),
        "BAD_SECTION_LAYOUT")
    sqv("bias_len", "bias of length m + 1", lambda ts: _resize(_sec(ts, "s", "bias"), [5], 2), "BAD_SECTION_LAYOUT")
    sqv("bias_i16", "bias stored as i16", lambda ts: _sec(ts, "s", "bias").__setattr__("dtype", "i16"),
        "BAD_SECTION_LAYOUT")
    wide_sq = make_squeezellm("sqwideinv", 1, 65537, 1, outliers="none", col_dtype="u16")
    add("squeezellm_u16_cols_n_65537", "squeezellm: n = 65537 with u16 outlier_col",
        mw.build([squeezellm_tens("s", wide_sq)]), "BAD_SECTION_LAYOUT")
    sqv("section_checksum", "one bit of 'lut' flipped, crc32 unchanged", lambda ts: _flip(_sec(ts, "s", "lut")),
        "SECTION_CHECKSUM")
    sptr = _ptr_of(SQ.outliers)
    snnz = sptr[-1]
    scols = _cols_of(SQ.outliers)
    sqv("csr_start_nonzero", "outlier_row_ptr[0] = 1", lambda ts: _replace_data(
        ts, "s", "outlier_row_ptr", np.array([1] + sptr[1:], dtype="<u4")), "BAD_CSR")
    sqv("csr_decreasing", "outlier_row_ptr decreases", lambda ts: _replace_data(
        ts, "s", "outlier_row_ptr", np.array([0, snnz, 1, snnz, snnz], dtype="<u4")), "BAD_CSR")
    sqv("csr_end_mismatch", "outlier_row_ptr[m] = nnz + 1", lambda ts: _replace_data(
        ts, "s", "outlier_row_ptr", np.array(sptr[:-1] + [snnz + 1], dtype="<u4")), "BAD_CSR")
    sqv("csr_huge_entry", "outlier_row_ptr holds 2^32-1", lambda ts: _replace_data(
        ts, "s", "outlier_row_ptr", np.array([0, 0, 0xFFFFFFFF, snnz, snnz], dtype="<u4")), "BAD_CSR")
    sqv("index_col_ge_n", "a residual column equal to n", lambda ts: _replace_data(
        ts, "s", "outlier_col", np.array(scols[:-1] + [20], dtype="<u2")), "BAD_INDEX")
    s1 = sptr[1]
    assert sptr[2] - s1 >= 2
    sdup = list(scols)
    sdup[s1 + 1] = sdup[s1]
    sqv("index_col_repeated", "two residuals at the same column of one row (add semantics would apply twice)",
        lambda ts: _replace_data(ts, "s", "outlier_col", np.array(sdup, dtype="<u2")), "BAD_INDEX")
    sdec = list(scols)
    sdec[s1], sdec[s1 + 1] = sdec[s1 + 1], sdec[s1]
    sqv("index_col_decreasing", "residual columns of one row in decreasing order",
        lambda ts: _replace_data(ts, "s", "outlier_col", np.array(sdec, dtype="<u2")), "BAD_INDEX")
    del sq_ts

    # ---- quip: every rejection rule of quip.md §1-§3, §6
    def qpv(name: str, desc: str, fn: Callable[[list[mw.Tens]], Any], error: str) -> None:
        ts2, _ = _base_quip()
        fn(ts2)
        add(f"quip_{name}", "quip: " + desc, mw.build(ts2), error)

    qpv("rank_1", "tensor shape [120]", lambda ts: _t(ts, "q").set.update(shape=[120]), "BAD_SHAPE")
    qpv("m_zero", "tensor shape [0, 20]", lambda ts: _t(ts, "q").set.update(shape=[0, 20]), "BAD_SHAPE")
    qpv("n_zero", "tensor shape [6, 0]", lambda ts: _t(ts, "q").set.update(shape=[6, 0]), "BAD_SHAPE")
    qpv("dtype_u8", "tensor dtype u8", lambda ts: _t(ts, "q").set.update(dtype="u8"), "BAD_PARAMS")
    for key, val, why in (("bits", 0, "0"), ("bits", 9, "9"), ("bits", True, "true"), ("log2_hn", 31, "31"),
                          ("log2_hn", -1, "neg"), ("log2_hn", 2.0, "float"), ("log2_hm", "1", "str"),
                          ("log2_hm", None, "nil"), ("log2_hn", 3, "nondividing"), ("log2_hm", 2, "nondividing")):
        qpv(f"{key}_{why}", f"{key} = {val!r}" + (" (2^k does not divide the dimension)" if why == "nondividing"
                                                  else ""),
            lambda ts, key=key, val=val: _t(ts, "q").params.__setitem__(key, val), "BAD_PARAMS")
    for key in ("bits", "log2_hn", "log2_hm"):
        qpv(f"{key}_missing", f"params without {key}", lambda ts, key=key: _t(ts, "q").params.pop(key),
            "BAD_PARAMS")
    for role in ("codes", "scale", "su", "sv", "factor_n", "factor_m"):
        qpv(f"missing_{role}", f"no {role!r} section", lambda ts, role=role: _drop_sec(ts, "q", role),
            "BAD_SECTION_SET")
    qpv("extra_role", "an undefined role 'lut'", lambda ts: _t(ts, "q").sections.append(
        mw.Sec("lut", "f16", [1], b"\x00\x00")), "BAD_SECTION_SET")
    add("quip_factor_when_a_is_1", "quip: a factor_m section although a_m = 1 (m = 8, log2_hm = 3)",
        mw.build([quip_tens("q", _quip_a1_with_factor())]), "BAD_SECTION_SET")
    qpv("codes_shape", "codes [6, 3] instead of [6, 2]", lambda ts: _resize(_sec(ts, "q", "codes"), [6, 3], 4),
        "BAD_SECTION_LAYOUT")
    qpv("scale_f16", "scale stored as f16", lambda ts: _retype(_sec(ts, "q", "scale"), "f16", "<f2"),
        "BAD_SECTION_LAYOUT")
    qpv("scale_len", "scale of length m - 1", lambda ts: _resize(_sec(ts, "q", "scale"), [5], 4),
        "BAD_SECTION_LAYOUT")
    qpv("su_u8", "su stored as u8", lambda ts: _sec(ts, "q", "su").__setattr__("dtype", "u8"), "BAD_SECTION_LAYOUT")
    qpv("su_len", "su of length m instead of n", lambda ts: _resize(_sec(ts, "q", "su"), [6], 1),
        "BAD_SECTION_LAYOUT")
    qpv("sv_len", "sv of length n instead of m", lambda ts: _resize(_sec(ts, "q", "sv"), [20], 1),
        "BAD_SECTION_LAYOUT")
    qpv("factor_n_shape", "factor_n [5, 4] instead of [5, 5]", lambda ts: _resize(_sec(ts, "q", "factor_n"), [5, 4],
                                                                                 4), "BAD_SECTION_LAYOUT")
    qpv("factor_m_f16", "factor_m stored as f16", lambda ts: _retype(_sec(ts, "q", "factor_m"), "f16", "<f2"),
        "BAD_SECTION_LAYOUT")
    qpv("bias_len", "bias of length n", lambda ts: _resize(_sec(ts, "q", "bias"), [20], 4), "BAD_SECTION_LAYOUT")
    qpv("section_checksum", "one bit of 'factor_n' flipped, crc32 unchanged",
        lambda ts: _flip(_sec(ts, "q", "factor_n")), "SECTION_CHECKSUM")
    for role, pos, byte, why in (("su", 0, 0x00, "su_zero"), ("su", 7, 0x02, "su_two"), ("su", 19, 0x80, "su_min"),
                                 ("sv", 5, 0x7F, "sv_max"), ("sv", 2, 0xFE, "sv_minus_two")):
        qpv(f"value_{why}", f"{role}[{pos}] = 0x{byte:02X} (only 0x01 / 0xFF are signs)",
            lambda ts, role=role, pos=pos, byte=byte: _set_byte(_sec(ts, "q", role), pos, byte), "BAD_VALUE")
    v2 = _v2()
    for name, desc, blob, error in v2.spqr_invalid() + v2.quip_invalid() + _edges().invalid():
        add(name, desc, blob, error)
    return out


def _base_squeezellm() -> tuple[list[mw.Tens], SqueezeLogical]:
    """A small valid file (raw + squeezellm with bias) that squeezellm invalid vectors corrupt."""
    L = make_squeezellm("sqbase", 4, 20, 3, bias="f16")
    L.outliers[1] = [(2, 0.25), (5, -0.125), (11, 0.5)]
    raw_t, _ = raw_tens("norm", "f32", [4])
    return [raw_t, squeezellm_tens("s", L)], L


def _base_quip() -> tuple[list[mw.Tens], QuipLogical]:
    """A small valid quip tensor with both factors and a bias: m = 6 (k_m = 1, a_m = 3), n = 20 (k_n = 2, a_n = 5)."""
    L = make_quip("qbase", 6, 20, 2, 2, 1, bias="f32")
    raw_t, _ = raw_tens("norm", "f32", [4])
    return [raw_t, quip_tens("q", L)], L


def _quip_a1_with_factor() -> QuipLogical:
    L = make_quip("qa1", 8, 20, 2, 2, 3)
    L.fm = np.eye(8, dtype=np.float32)
    return L


def _set_byte(s: mw.Sec, pos: int, byte: int) -> None:
    b = bytearray(s.data)
    b[pos] = byte
    s.data = bytes(b)


def _ptr_of(outliers: list[list[tuple[int, float]]]) -> list[int]:
    ptr = [0]
    for row in outliers:
        ptr.append(ptr[-1] + len(row))
    return ptr


def _cols_of(outliers: list[list[tuple[int, float]]]) -> list[int]:
    return [c for row in outliers for c, _ in row]


def _offset_of(ts: list[mw.Tens], tensor: str, role: str) -> int:
    """Offset a canonical layout gives a section (used to aim overlaps)."""
    blob = mw.build(ts)
    rf = refreader.RefFile(blob)
    return rf.tensors[tensor].sections[role].offset


def _drop_sec(ts: list[mw.Tens], tensor: str, role: str) -> None:
    t = _t(ts, tensor)
    t.sections = [s for s in t.sections if s.role != role]


def _resize(s: mw.Sec, shape: list[int], itemsize: int) -> None:
    n = int(np.prod(shape))
    s.shape = shape
    s.data = (s.data + bytes(n * itemsize))[: n * itemsize]


def _retype(s: mw.Sec, dtype: str, npd: str) -> None:
    s.dtype = dtype
    s.data = np.zeros(int(np.prod(s.shape)), dtype=npd).tobytes()


def _flip(s: mw.Sec) -> None:
    s.set["crc32"] = zlib.crc32(s.data)
    b = bytearray(s.data)
    b[0] ^= 1
    s.data = bytes(b)


def _nnz(ts: list[mw.Tens]) -> int:
    return len(_sec(ts, "w", "outlier_val").data) // 2


def _ptr(L: SpqrLogical) -> list[int]:
    ptr = [0]
    for row in L.outliers:
        ptr.append(ptr[-1] + len(row))
    return ptr


def _cols(L: SpqrLogical) -> list[int]:
    return [c for row in L.outliers for c, _ in row]


# ---------------------------------------------------------------- driver


def generate(out_dir: Path | str = VECTORS_DIR) -> dict[str, Any]:
    """Write every vector, its expected output and manifest.json; return the manifest."""
    out = Path(out_dir)
    (out / "valid").mkdir(parents=True, exist_ok=True)
    (out / "invalid").mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for v in valid_vectors():
        blob = build_valid(v)
        rel = f"valid/{v.name}.spqr"
        (out / rel).write_bytes(blob)
        npz: dict[str, np.ndarray] = {}
        tensors: dict[str, Any] = {}
        rf = refreader.RefFile(blob)  # cross-check: the independent reader must agree with the oracle
        assert list(rf.tensors) == [t.name for t in v.tensors]
        for i, t in enumerate(v.tensors):
            exp = v.expected[t.name]
            if isinstance(exp, str):
                tensors[t.name] = {"codec": t.codec, "codec_version": rf.tensors[t.name].codec_version, "error": exp}
                try:
                    rf.decode(t.name)
                    raise AssertionError(f"{v.name}/{t.name}: refreader decoded a tensor expected to fail")
                except refreader.RefError as e:
                    assert e.code == exp, (v.name, t.name, e)
                continue
            quantized = t.codec != "raw"
            got = rf.decode(t.name)
            assert sha256_of(got, quantized) == sha256_of(exp, quantized), f"{v.name}/{t.name}: refreader != oracle"
            key = f"t{i}"
            npz[key] = exp.view("<u2") if (t.dtype == "bf16" and not quantized) else exp
            entry = {"codec": t.codec, "codec_version": rf.tensors[t.name].codec_version,
                     "decoded_dtype": "f32" if quantized else t.dtype,
                     "shape": list(exp.shape), "npz_key": key, "sha256": sha256_of(exp, quantized)}
            if t.name in v.bias:
                b = v.bias[t.name].astype(np.float32)
                assert sha256_of(rf.bias(t.name), True) == sha256_of(b, True)
                npz[f"{key}.bias"] = b
                entry["bias_sha256"] = sha256_of(b, True)
            tensors[t.name] = entry
        exp_rel = f"valid/{v.name}.expected.npz"
        write_npz(out / exp_rel, npz)
        entries.append({"file": rel, "kind": "valid", "description": v.description,
                        "codecs": sorted({t.codec for t in v.tensors}), "expected": exp_rel,
                        "tensors": tensors})
    for iv in invalid_vectors():
        rel = f"invalid/{iv.name}.spqr"
        (out / rel).write_bytes(iv.blob)
        got = _ref_verdict(iv.blob)
        assert got == iv.error, f"{iv.name}: refreader says {got}, vector expects {iv.error}"
        codecs = _ref_codecs(iv.blob)
        entries.append({"file": rel, "kind": "invalid", "description": iv.description,
                        "codecs": sorted({c.split(":")[0] for c in codecs}), "codec_versions": codecs,
                        "error": iv.error, "accept": iv.accept})
    manifest = {
        "format": "spqrfmt-conformance-vectors",
        "version": 1,
        "spec": "spec/SPEC.md 1.0; codecs (codec_version): raw 1, spqr 1 2, squeezellm 1, quip 1 2",
        "hash": "sha256 of the decoded tensor's bytes, C order, little-endian; quantized codecs: f32 with every "
                "NaN replaced by 0x7FC00000; raw: own dtype (bf16 as its 16-bit pattern, bool as 0/1 bytes)",
        "vectors": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=True, sort_keys=False) + "\n")
    return manifest


def _ref_codecs(blob: bytes) -> list[str]:
    """``codec:version`` of the tensors of an invalid file that opens (its defect is per tensor, SPEC §10
    stage 5); [] if it does not open.

    A reader claiming only some codecs (or codec versions) skips the invalid vectors that name one outside
    its claim (spec/conformance.md §1.1); file-level defects concern every reader.
    """
    try:
        return sorted({f"{r.codec}:{r.codec_version}" for r in refreader.RefFile(blob).tensors.values()})
    except refreader.RefError:
        return []


def _ref_verdict(blob: bytes) -> str | None:
    """Error code the reference reader reports for a file (open, then every tensor in order), or None."""
    try:
        rf = refreader.RefFile(blob)
        for name in rf.tensors:
            rf.decode(name)
    except refreader.RefError as e:
        return e.code
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else VECTORS_DIR
    m = generate(out)
    kinds = [e["kind"] for e in m["vectors"]]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {kinds.count('valid')} valid and {kinds.count('invalid')} invalid vectors to {out} ({size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
