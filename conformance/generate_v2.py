"""Golden vectors for codec version 2: ``spqr`` (spqr.md §8) and ``quip`` (quip.md §10).

Called by :mod:`generate` (``valid_vectors`` / ``invalid_vectors`` append
these lists), kept apart because version 2 brings its own oracles. Like the
squeezellm and quip v1 oracles of ``generate``, they compute in binary64
(Python floats, or float64 arrays for the 2^16-code tensor) and round every
result to binary32 with ``r32``; the f16 rounding ``r16`` is written from
the IEEE definition (exponent, ulp, ties to even) rather than numpy's cast,
which the refreader uses. The E8P12 table is parsed out of the text of
spec/codecs/quip.md, the way a foreign implementer would take it, and
checked against the digest printed there; the refreader instead rebuilds
rows 0-226 by the construction rule. ``generate`` asserts that the
refreader agrees with every oracle output.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import generate as gen  # type: ignore[no-redef]
    import miniwriter as mw  # type: ignore[no-redef]
else:
    from . import generate as gen
    from . import miniwriter as mw

QUIP_MD = Path(__file__).resolve().parents[1] / "spec" / "codecs" / "quip.md"

r32 = gen.r32
_MISSING = object()   # an invalid-vector edit that removes the key
F16_MIN_NORMAL = 2.0**-14
F16_MAX = 65504.0


# ---------------------------------------------------------------- f16 rounding from first principles


def _f16_scaled(x: float) -> tuple[float, float]:
    """(|x| / ulp, ulp) for the binary16 grid around a finite nonzero x (subnormal grid 2^-24 below 2^-14)."""
    ax = abs(x)
    e = math.frexp(ax)[1] - 1                     # 2^e <= |x| < 2^(e+1)
    ulp = 2.0 ** (max(e, -14) - 10)
    return ax / ulp, ulp                          # exact: division by a power of two


def r16(x: float) -> float:
    """rne16 of spqr.md §5: round a binary32 value to binary16 (nearest, ties to even, overflow to +-inf)."""
    if math.isnan(x) or math.isinf(x) or x == 0.0:
        return x
    q, ulp = _f16_scaled(x)
    y = round(q) * ulp                            # Python rounds halves to even, exactly
    if y > F16_MAX:
        y = math.inf
    return math.copysign(y, x)


def is_tie16(x: float) -> bool:
    """x lies exactly halfway between two binary16 neighbours (or between 65504 and the overflow point)."""
    if math.isnan(x) or math.isinf(x) or x == 0.0:
        return False
    q, _ = _f16_scaled(x)
    return q - math.floor(q) == 0.5


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


# ---------------------------------------------------------------- spqr version 2 (spqr.md §8)


def spqr_oracle_v2(L: gen.SpqrLogical, trace: Trace | None = None) -> np.ndarray:
    """spqr.md §8.3 element by element: R = r16 after every listed operation when arith = "f16"."""
    f16 = L.arith == "f16"

    def rnd(x: float, site: str) -> float:
        if trace is not None:
            trace.see(x, site)
        return r16(x)

    def R(x: float, site: str) -> float:
        return rnd(x, site) if f16 else x

    def stat(st: gen.Stat, g: int, r: int) -> float:
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


def v2spqr(seed: str, m: int, n: int, bits: int, beta1: int, arith: str, op: str, **kw: Any) -> gen.SpqrLogical:
    L = gen.make_spqr(seed, m, n, bits, beta1, **kw)
    L.version, L.arith, L.outlier_op = 2, arith, op
    return L


def _entry(name: str, L: gen.SpqrLogical, **kw: Any) -> tuple[mw.Tens, np.ndarray, np.ndarray | None]:
    exp = spqr_oracle_v2(L) if L.version == 2 else L.oracle()
    return gen.spqr_tens(name, L, **kw), exp, L.bias


def _h(bits: int) -> float:
    """The f16 value with this bit pattern, as a Python float."""
    return float(np.array([bits], dtype="<u2").view("<f2")[0])


def spqr_worked_example(arith: str, op: str) -> gen.SpqrLogical:
    """spqr.md §8.5, byte for byte."""
    scale = gen.Stat(3, codes=[[5]], ss=np.array([[_h(0x224C)]], np.float16), sz=np.array([[_h(0x2E66)]], np.float16))
    zero = gen.Stat(3, codes=[[3]], ss=np.array([[_h(0x3C66)]], np.float16), sz=np.array([[_h(0x34CD)]], np.float16))
    L = gen.SpqrLogical(1, 4, 3, 4, 1, [[0, 7, 2, 5]], scale, zero, [[(2, _h(0x2971))]])
    L.version, L.arith, L.outlier_op = 2, arith, op
    return L


def _direct(rows: list[tuple[float, float]]) -> tuple[gen.Stat, gen.Stat]:
    """16-bit statistics, one column group: row r gets (scale, zero) = rows[r]."""
    s = np.array([[x for x, _ in rows]], dtype=np.float16)
    z = np.array([[z for _, z in rows]], dtype=np.float16)
    return gen.Stat(16, direct=s), gen.Stat(16, direct=z)


NAN, INF = math.nan, math.inf
T11 = 2.0**-11          # half an f16 ulp at 1.0
T10 = 2.0**-10          # one f16 ulp at 1.0


def spqr_special_dense(arith: str, op: str) -> gen.SpqrLogical:
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
    L = gen.SpqrLogical(len(rows), 8, 8, 8, 1, [c for _, c, _ in rows], scale, zero, [o for _, _, o in rows])
    L.version, L.arith, L.outlier_op = 2, arith, op
    return L


def spqr_special_stats(arith: str, op: str) -> gen.SpqrLogical:
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

    def stat(i: int) -> gen.Stat:
        return gen.Stat(8, codes=[[s[i][0] for s in spec]], ss=np.array([[s[i][1] for s in spec]], np.float16),
                        sz=np.array([[s[i][2] for s in spec]], np.float16))

    q = [[0, 1, 5, 255], [0, 1, 2, 3], [1, 2, 3, 4], [0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7], [1, 3, 255, 0],
         [0, 1, 2, 3]]
    outl = [[(0, 1.0)], [(3, T11)], [], [(1, -INF)], [(2, 1.0)], [], [(0, 2.0**-24)], [(2, -0.0), (3, 0.0)]]
    L = gen.SpqrLogical(m, 4, 8, 4, 1, q, stat(0), stat(1), outl)
    L.version, L.arith, L.outlier_op = 2, arith, op
    return L


def spqr_f32_add_cancel() -> gen.SpqrLogical:
    """arith "f32", outlier_op "add": outliers -rne16(dense) leave the product's rounding error, which an FMA
    (product not rounded before the addition, forbidden by spqr.md §8.3) would get wrong."""
    L = v2spqr("v2cancel", 4, 16, 4, 8, "f32", "add", outliers="none")
    dense = spqr_oracle_v2(L)
    L.outliers = [[(c, -r16(float(dense[r, c]))) for c in range(0, 16, 3)] for r in range(4)]
    return L


def _fused_differs(L: gen.SpqrLogical) -> bool:
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


def spqr_valid() -> list[tuple[str, str, list[tuple[mw.Tens, Any, np.ndarray | None]], dict[str, Any]]]:
    """(name, description, tensors, build kwargs) of every valid spqr v2 vector."""
    out: list[tuple[str, str, list[tuple[mw.Tens, Any, np.ndarray | None]], dict[str, Any]]] = []

    def add(name: str, desc: str, items: list[tuple[mw.Tens, Any, np.ndarray | None]], **kw: Any) -> None:
        out.append((name, desc, items, kw))

    add("spqr_v2_worked_example", "spqr.md §8.5 byte for byte under all four (arith, outlier_op) pairs",
        [_entry(f"{a}_{op}", spqr_worked_example(a, op)) for a in ("f32", "f16") for op in ("replace", "add")])
    for arith, op in (("f16", "add"), ("f16", "replace"), ("f32", "add")):
        tag = f"{arith}{op}"
        add(f"spqr_v2_{arith}_{op}", f"spqr v2 arith={arith} outlier_op={op}: 3-bit codes with n = 45 (straddling), "
            "16-bit and 3-bit/5-bit two-level stats (stat_group_size 4 does not divide m = 10), each without and "
            "with perm; f16 bias; an unknown params key",
            [_entry("stats16", v2spqr(f"{tag}a", 6, 45, 3, 16, arith, op)),
             _entry("stats16_perm", v2spqr(f"{tag}b", 6, 45, 3, 16, arith, op, perm=True, bias="f16")),
             _entry("stats_q", v2spqr(f"{tag}c", 10, 45, 3, 16, arith, op, sb=3, zb=5, beta2=4)),
             _entry("stats_q_perm", v2spqr(f"{tag}d", 10, 45, 3, 8, arith, op, sb=3, zb=3, beta2=4, perm=True,
                                           extra_params={"x.source": "spqr_quant"}))])
    pairs = []
    for tag, kw in (("stats16", {"perm": True}), ("stats_q", {"sb": 3, "zb": 4, "beta2": 3})):
        v2 = v2spqr(f"v1eq{tag}", 7, 45, 3, 16, "f32", "replace", **kw)
        v1 = gen.make_spqr(f"v1eq{tag}", 7, 45, 3, 16, **kw)
        e1, e2 = _entry(f"{tag}.v1", v1), _entry(f"{tag}.v2", v2)
        assert _same_bits(e1[1], e2[1]), "v2 f32/replace must equal v1 (spqr.md §8)"
        pairs += [e1, e2]
    add("spqr_v2_f32_replace", "arith f32 + outlier_op replace: each v2 tensor decodes exactly like the v1 tensor "
        "with the same sections beside it (spqr.md §8)", pairs)

    trace = Trace()
    specials = []
    for arith, op in (("f16", "add"), ("f16", "replace"), ("f32", "add")):
        for kind, build in (("dense", spqr_special_dense), ("stats", spqr_special_stats)):
            L = build(arith, op)
            spqr_oracle_v2(L, trace)
            specials.append(_entry(f"{kind}.{arith}_{op}", L))
    need = {(site, ev) for site in ("stat_sub", "stat_mul", "dense_sub", "dense_mul", "add") for ev in ("tie",)}
    need |= {("stat_sub", "overflow"), ("stat_mul", "overflow"), ("dense_mul", "overflow"), ("add", "overflow"),
             ("dense_mul", "subnormal"), ("stat_mul", "subnormal"), ("add", "subnormal")}
    assert need <= set(trace.events), sorted(need - set(trace.events))
    cancel = spqr_f32_add_cancel()
    assert _fused_differs(cancel), "the cancellation tensor must tell an FMA apart"
    specials.append(_entry("f32_add_no_fma", cancel))
    add("spqr_v2_special_values", "NaN/inf statistics and outliers (0*inf, inf-inf, inf+-inf), f16 intermediates "
        "overflowing to inf (stat subtraction, stat product, dense product, outlier addition incl. the 65504+16 "
        "tie), subnormal f16 results with ties, ties at every rounding, -0 dense + +0 outlier = +0, and an "
        "f32/add tensor an FMA would decode differently", specials)
    v1 = gen.make_spqr("v1keys", 5, 20, 3, 8, sb=3, zb=3, beta2=2,
                       extra_params={"arith": "f16", "outlier_op": "add"})
    v1b = gen.make_spqr("v1keysb", 3, 12, 2, 4, extra_params={"arith": 16, "outlier_op": None})
    add("spqr_v1_ignores_v2_params", "version-1 tensors carrying arith/outlier_op keys (valid and invalid v2 "
        "values): version 1 ignores unknown keys and decodes with f32 / replace", [_entry("w", v1), _entry("x", v1b)])
    return out


def _spqr_base() -> list[mw.Tens]:
    L = v2spqr("v2base", 4, 20, 3, 8, "f16", "add", sb=3, zb=16, beta2=2, perm=True, bias="f16")
    raw_t, _ = gen.raw_tens("norm", "f32", [4])
    return [raw_t, gen.spqr_tens("w", L)]


def spqr_invalid() -> list[tuple[str, str, bytes, str]]:
    out: list[tuple[str, str, bytes, str]] = []
    cases: list[tuple[str, str, Any]] = [
        ("arith_missing", "arith", _MISSING),
        ("arith_upper", "arith", "F16"), ("arith_int", "arith", 16), ("arith_bin", "arith", b"f16"),
        ("arith_nil", "arith", None), ("arith_space", "arith", "f16 "), ("arith_f64", "arith", "f64"),
        ("outlier_op_missing", "outlier_op", _MISSING), ("outlier_op_sub", "outlier_op", "sub"),
        ("outlier_op_array", "outlier_op", ["add"]), ("outlier_op_bool", "outlier_op", True),
        ("outlier_op_upper", "outlier_op", "Add"),
    ]
    for name, key, val in cases:
        ts = _spqr_base()
        params = gen._t(ts, "w").params
        if val is _MISSING:
            params.pop(key)
        else:
            params[key] = val
        desc = f"spqr v2: params without {key!r}" if val is _MISSING else f"spqr v2: {key} = {val!r}"
        out.append((f"spqr_v2_{name}", desc, mw.build(ts), "BAD_PARAMS"))
    return out


# ---------------------------------------------------------------- quip version 2 (quip.md §10)


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


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return gen.sha256_of(a, True) == gen.sha256_of(b, True)


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
            c = gen.quip_c_oracle(k)
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
            codes = mw.Sec("codes", "u32", [self.m, (self.n * self.bits + 31) // 32], gen.pack_rows(self.codes,
                                                                                                    self.bits))
        secs = [codes, mw.Sec("scale", "f32", [self.m], np.asarray(self.scale, dtype="<f4").tobytes()),
                mw.Sec("su", self.su_dtype, [self.n], np.asarray(self.su).astype(DIAG_NP[self.su_dtype]).tobytes()),
                mw.Sec("sv", self.sv_dtype, [self.m], np.asarray(self.sv).astype(DIAG_NP[self.sv_dtype]).tobytes())]
        for role, F in (("factor_n", self.fn), ("factor_m", self.fm)):
            if F is not None:
                secs.append(mw.Sec(role, "f32", list(F.shape), np.asarray(F, dtype="<f4").tobytes()))
        if self.bias is not None:
            secs.append(mw.Sec("bias", self.bias_dtype, [self.m], gen._float_bytes(self.bias, self.bias_dtype)))
        return secs

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


def _diag(rng: gen.Det, size: int, dtype: str) -> np.ndarray:
    """Signs for i8; real diagonals (magnitudes 0.5..1.5, random signs) rounded to f16 or f32 otherwise."""
    sign = np.where(rng.u32(size) & 1, 1.0, -1.0)
    if dtype == "i8":
        return sign
    mag = 0.5 + rng.unit(size)
    return (sign * mag).astype(np.float16 if dtype == "f16" else np.float32).astype(np.float64)


def make_quip_v2(seed: str, m: int, n: int, kn: int, km: int, *, codebook: str = "e8p12", bits: int | None = None,
                 su: str = "f16", sv: str = "f16", bias: str | None = None, dtype: str = "f16",
                 extra_params: dict[str, Any] | None = None) -> QuipV2Logical:
    rng = gen.Det(seed)
    if codebook == "e8p12":
        codes = rng.ints(0, 1 << 16, m * (n // 8)).reshape(m, n // 8).tolist()
    else:
        assert bits is not None
        codes = rng.ints(0, 1 << bits, m * n).reshape(m, n).tolist()
    scale = (0.002 + 0.05 * rng.unit(m)).astype(np.float32)
    su_v, sv_v = _diag(rng, n, su), _diag(rng, m, sv)
    an, am = n >> kn, m >> km
    assert an << kn == n and am << km == m
    fn = gen.orthogonal_f32(rng, an) if an > 1 else None
    fm = gen.orthogonal_f32(rng, am) if am > 1 else None
    return QuipV2Logical(m, n, kn, km, codebook, codes, scale, su_v, sv_v, su, sv, bits, fn, fm,
                         gen._make_bias(rng, m, bias), bias or "f32", dtype, extra_params or {})


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


def quip_valid() -> list[tuple[str, str, list[tuple[mw.Tens, Any, np.ndarray | None]], dict[str, Any]]]:
    out: list[tuple[str, str, list[tuple[mw.Tens, Any, np.ndarray | None]], dict[str, Any]]] = []

    def add(name: str, desc: str, items: list[tuple[mw.Tens, Any, np.ndarray | None]], **kw: Any) -> None:
        out.append((name, desc, items, kw))

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
    out += _rvq().valid()  # the residual codebooks, quip.md §10.11
    pairs = []
    for tag, args in (("factors", (6, 40, 3, 1)), ("hadamard", (8, 16, 4, 3))):
        v1 = gen.make_quip(f"q2eq{tag}", *args[:2], 3, *args[2:])
        v2 = QuipV2Logical(v1.m, v1.n, v1.kn, v1.km, "grid", v1.q, v1.scale, np.array(v1.su, np.float64),
                           np.array(v1.sv, np.float64), "i8", "i8", v1.bits, v1.fn, v1.fm)
        e1 = (gen.quip_tens(f"{tag}.v1", v1), v1.oracle(), None)
        e2 = v2.entry(f"{tag}.v2")
        assert _same_bits(e1[1], e2[1]), "v2 grid with i8 signs must equal v1"
        pairs += [e1, e2]
    add("quip_v2_grid_i8_equals_v1", "v2 codebook grid with i8 signs decodes to the bits of the v1 tensor with the "
        "same sections beside it (quip.md §10.5)", pairs)
    add("quip_v2_unknown_params", "unknown params keys beside codebook/log2_hn/log2_hm are ignored",
        [make_quip_v2("q2unk", 2, 16, 4, 1, extra_params={"x.quipsharp_codebook": 7, "Bits": 2,
                                                          "CODEBOOK": "grid"}).entry("w")])
    future = make_quip_v2("q2v3", 2, 8, 3, 1)
    quip_v1 = gen.make_quip("q2v1", 2, 8, 2, 3, 1)
    later = gen.make_spqr("s2v3", 3, 8, 2, 8)
    later.version, later.arith, later.outlier_op = 2, "f16", "add"
    add("codec_versions_alongside", "quip and spqr tensors of codec_version 3 (UNSUPPORTED_CODEC_VERSION each) "
        "between version-1 and version-2 tensors of both codecs, which decode",
        [_entry("spqr.v1", gen.make_spqr("s2v1", 3, 8, 2, 8)),
         (future.tens("quip.v3", codec_version=3), "UNSUPPORTED_CODEC_VERSION", None),
         _entry("spqr.v2", later),
         (gen.spqr_tens("spqr.v3", gen.make_spqr("s2v3b", 3, 8, 2, 8), codec_version=3),
          "UNSUPPORTED_CODEC_VERSION", None),
         make_quip_v2("q2v2", 2, 8, 3, 1).entry("quip.v2"),
         (gen.quip_tens("quip.v1", quip_v1), quip_v1.oracle(), None)])
    embed, embed_a = gen.raw_tens("embed", "f16", [6, 4])
    mq1 = gen.make_quip("mq1", 4, 16, 2, 2, 2)
    mixed = [(embed, embed_a, None),
             _entry("spqr.v1", gen.make_spqr("mv1", 4, 12, 3, 4, sb=3, zb=3, beta2=2, perm=True)),
             _entry("spqr.v2", v2spqr("mv2", 4, 12, 3, 4, "f16", "add", sb=3, zb=3, beta2=2, perm=True)),
             (gen.quip_tens("quip.v1", mq1), mq1.oracle(), None),
             make_quip_v2("mq2", 4, 16, 2, 2, su="f32", sv="i8", bias="f16").entry("quip.v2")]
    add("mixed_codec_versions", "spqr v1 + v2 and quip v1 + v2 tensors in one file, sections interleaved with gaps "
        "(a reader claiming only version 1 reports the v2 tensors as UNSUPPORTED_CODEC_VERSION)", mixed,
        layout=mw.Layout(order="interleave", gap=64, lead=128))
    return out


def _rvq() -> Any:
    """The residual-codebook vector module (imported late: it imports this one)."""
    if __package__ in (None, ""):
        import generate_quip_rvq  # type: ignore[no-redef]
    else:
        from . import generate_quip_rvq
    return generate_quip_rvq


def _quip_base(codebook: str = "e8p12") -> tuple[list[mw.Tens], QuipV2Logical]:
    """m = 4 (k_m = 1, a_m = 2), n = 16 (k_n = 2, a_n = 4), f16 su, i8 sv, f32 bias."""
    if codebook == "e8p12":
        L = make_quip_v2("q2base", 4, 16, 2, 1, su="f16", sv="i8", bias="f32")
    else:
        L = make_quip_v2("q2gbase", 4, 16, 2, 1, codebook="grid", bits=2, su="f16", sv="i8", bias="f32")
    raw_t, _ = gen.raw_tens("norm", "f32", [4])
    return [raw_t, L.tens("q")], L


def quip_invalid() -> list[tuple[str, str, bytes, str]]:
    out: list[tuple[str, str, bytes, str]] = []

    def qv(name: str, desc: str, fn: Any, error: str, codebook: str = "e8p12") -> None:
        ts, _ = _quip_base(codebook)
        fn(ts)
        out.append((f"quip_v2_{name}", f"quip v2 ({codebook}): {desc}", mw.build(ts), error))

    def params(ts: list[mw.Tens]) -> dict[str, Any]:
        return gen._t(ts, "q").params

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
        t = gen._t(ts, "q")
        t.shape = [4, 12]                         # log2_hn = 2 still divides 12; a_n = 3
        gen._sec(ts, "q", "su").shape = [12]
        gen._sec(ts, "q", "su").data = gen._sec(ts, "q", "su").data[:24]

    qv("e8p12_n_not_multiple_of_8", "tensor shape [4, 12] (n % 8 != 0; log2_hn = 2 divides n)", n12, "BAD_SHAPE")
    qv("log2_hn_nondividing", "log2_hn = 5 (32 does not divide n = 16)",
       lambda ts: params(ts).__setitem__("log2_hn", 5), "BAD_PARAMS")
    qv("e8p12_codes_u32", "codes stored as u32 [4, 2]", lambda ts: gen._retype(gen._sec(ts, "q", "codes"), "u32",
                                                                                 "<u4"), "BAD_SECTION_LAYOUT")
    qv("e8p12_codes_i16", "codes stored as i16", lambda ts: gen._sec(ts, "q", "codes").__setattr__("dtype", "i16"),
       "BAD_SECTION_LAYOUT")
    qv("e8p12_codes_shape", "codes [4, 4] instead of [4, 2]", lambda ts: gen._resize(gen._sec(ts, "q", "codes"),
                                                                                      [4, 4], 2),
       "BAD_SECTION_LAYOUT")
    qv("e8p12_codes_packed_grid_shape", "codes u32 [4, 1] (a 2-bit grid layout) with codebook e8p12",
       lambda ts: (gen._retype(gen._sec(ts, "q", "codes"), "u32", "<u4"),
                   gen._resize(gen._sec(ts, "q", "codes"), [4, 1], 4)), "BAD_SECTION_LAYOUT")
    qv("grid_codes_u16", "codebook grid with codes as u16", lambda ts: gen._retype(gen._sec(ts, "q", "codes"), "u16",
                                                                                     "<u2"),
       "BAD_SECTION_LAYOUT", "grid")
    for role, dt, npd in (("su", "bf16", "<u2"), ("su", "u8", "u1"), ("su", "f64", "<f8"), ("sv", "f64", "<f8"),
                          ("sv", "i16", "<i2")):
        qv(f"{role}_{dt}", f"{role} stored as {dt}", lambda ts, role=role, dt=dt, npd=npd: gen._retype(
            gen._sec(ts, "q", role), dt, npd), "BAD_SECTION_LAYOUT")
    qv("su_len", "su of length m", lambda ts: gen._resize(gen._sec(ts, "q", "su"), [4], 2), "BAD_SECTION_LAYOUT")
    qv("missing_factor_n", "no factor_n although a_n = 4", lambda ts: gen._drop_sec(ts, "q", "factor_n"),
       "BAD_SECTION_SET")
    qv("section_checksum", "one bit of 'codes' flipped, crc32 unchanged", lambda ts: gen._flip(gen._sec(ts, "q",
                                                                                                 "codes")),
       "SECTION_CHECKSUM")
    qv("value_sv_zero", "i8 sv byte 0x00 (i8 diagonals are signs; su is f16)",
       lambda ts: gen._set_byte(gen._sec(ts, "q", "sv"), 1, 0x00), "BAD_VALUE")

    def su_i8_zero(ts: list[mw.Tens]) -> None:
        s = gen._sec(ts, "q", "su")
        s.dtype = "i8"
        s.data = bytes([0x01, 0xFF] * 7 + [0x00, 0x01])

    qv("value_su_i8_zero", "su as i8 with one byte 0x00", su_i8_zero, "BAD_VALUE", "grid")
    return out + _rvq().invalid()  # the residual codebooks, quip.md §10.11
