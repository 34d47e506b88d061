"""Golden vectors of quip v2's residual codebooks "e8p12_rvq4" / "e8p12_rvq3" (quip.md §10.11).

``conformance/generate.py`` appends :func:`valid` / :func:`invalid` after
every other vector; kept in one module so that the residual codebooks'
oracle, tensors and defects move together. The oracle follows
§10.11 in binary64 rounded to binary32 after every operation, like the
other version-2 oracles; the E81B table is built from its lattice
description (origin, roots, half-integer points, then ``±4 e_i``) rather
than by the spec's enumeration, and checked against the digest printed in
the spec text, so a slip in either shows up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from . import quip as v2
from .common import (
    Det,
    Invalid,
    Valid,
    drop_sec,
    flip_bit,
    invalid_adder,
    mw,
    r32,
    raw_tens,
    resize,
    retype,
    sec_of,
    tens_of,
    valid_adder,
)

CODEBOOKS = ("e8p12_rvq4", "e8p12_rvq3")
RHO4 = r32(3.45)   # QuIP#'s default residual scales, rounded to binary32 (quip.md §10.11)
RHO3 = r32(2.04)


@lru_cache(maxsize=1)
def e81b_spec_table() -> tuple[tuple[int, ...], ...]:
    """quip.md §10.11's E81B rows w = 2x, built constructively (origin, roots +-e_i+-e_j, (+-1/2)^8 with an even
    number of minus signs, each group sorted lexicographically; then 4 e_i, -4 e_i for i < 7), checked against the
    digest printed in the spec."""
    ints = {(0,) * 8}
    for i in range(8):
        for j in range(i + 1, 8):
            for si in (-2, 2):
                for sj in (-2, 2):
                    v = [0] * 8
                    v[i], v[j] = si, sj
                    ints.add(tuple(v))
    halves = {tuple(-1 if (k >> b) & 1 else 1 for b in range(8)) for k in range(256) if bin(k).count("1") % 2 == 0}
    unit = [tuple(4 if i == j else 0 for i in range(8)) for j in range(8)]
    rows = tuple(sorted(ints)) + tuple(sorted(halves)) + tuple(unit) + tuple(tuple(-x for x in u) for u in unit[:7])
    text = v2.QUIP_MD.read_text(encoding="utf-8")
    sec = text[text.index("### 10.11"):]
    digest = re.search(r"SHA-256 is\s*```\s*([0-9a-f]{64})\s*```", sec)
    assert digest is not None and len(rows) == 256
    assert hashlib.sha256(bytes(x & 0xFF for row in rows for x in row)).hexdigest() == digest.group(1)
    return rows


@dataclass
class QuipRvqLogical(v2.QuipV2Logical):
    """A version-2 quip tensor with a residual codebook: the e8p12 first plane plus ``codes2`` and ``resid_scale``."""

    codes2: list[list[int]] = field(default_factory=list)  # e8p12_rvq4: [m][n/8] 16-bit codes; e8p12_rvq3: bytes
    resid_scale: Any = None                                 # a binary32 value, as a Python float or mw.F32

    def values(self) -> np.ndarray:
        """§10.11's step 1 as float64 holding binary32 values."""
        scale = np.asarray(self.scale, dtype=np.float32).astype(np.float64)[:, None]
        rho = float(getattr(self.resid_scale, "value", self.resid_scale))
        assert r32(rho) == rho
        with np.errstate(all="ignore"):
            t = v2.e8p12_all_points()[np.array(self.codes, dtype=np.int64)].reshape(self.m, self.n)
            c2 = np.array(self.codes2, dtype=np.int64)
            if self.codebook == "e8p12_rvq4":
                e1 = v2.e8p12_all_points()[c2].reshape(self.m, self.n) * 0.25                 # exact u / 4
            else:
                e1 = np.array(e81b_spec_table(), dtype=np.float64)[c2].reshape(self.m, self.n) * 0.5  # exact w / 2
            # One binary64 division or addition of binary32 operands, rounded once more to binary32, is the
            # correctly rounded binary32 result (53 >= 2 * 24 + 2: double rounding is innocuous).
            d = v2._r32v(e1 / rho)
            v = v2._r32v(t.astype(np.float64) * 0.25 + d)
            return v2._r32v(v * scale)

    def sections(self) -> list[mw.Sec]:
        """The e8p12 sections (the first plane is laid out exactly as e8p12's ``codes``), ``codes2`` after codes."""
        secs = v2.QuipV2Logical.sections(dataclasses.replace(self, codebook="e8p12"))
        dt, npd = ("u16", "<u2") if self.codebook == "e8p12_rvq4" else ("u8", "u1")
        secs.insert(1, mw.Sec("codes2", dt, [self.m, self.n // 8], np.array(self.codes2, dtype=npd).tobytes()))
        return secs

    def params(self) -> dict[str, Any]:
        return {"codebook": self.codebook, "resid_scale": self.resid_scale,
                **{k: v for k, v in super().params().items() if k != "codebook"}}


def make_quip_rvq(seed: str, m: int, n: int, kn: int, km: int, codebook: str, rho: Any = None,
                  **kw: Any) -> QuipRvqLogical:
    """A residual-codebook tensor: make_quip_v2's e8p12 sections plus a random second-stage plane."""
    base = v2.make_quip_v2(seed, m, n, kn, km, codebook="e8p12", **kw)
    rng = Det(seed + ".codes2")
    codes2 = rng.ints(0, 1 << (16 if codebook == "e8p12_rvq4" else 8), m * (n // 8)).reshape(m, n // 8).tolist()
    rho = rho if rho is not None else (RHO4 if codebook == "e8p12_rvq4" else RHO3)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return QuipRvqLogical(**{**fields, "codebook": codebook}, codes2=codes2, resid_scale=rho)


def worked_examples() -> list[tuple[str, QuipRvqLogical]]:
    """quip.md §10.11's worked example for both residual codebooks (m = 1, n = 8, i8 signs)."""
    out = []
    for cb, c2, rho in (("e8p12_rvq4", 0xE716, RHO4), ("e8p12_rvq3", 0x71, RHO3)):
        L = QuipRvqLogical(1, 8, 3, 0, cb, [[0x1C05]], np.array([0.5], dtype=np.float32), np.ones(8), np.ones(1),
                           "i8", "i8", codes2=[[c2]], resid_scale=rho)
        out.append((cb, L))
    return out


def valid() -> list[Valid]:
    """Valid vectors: §10.11 worked examples, factors and every diagonal dtype, all E81B codes, resid_scale edges."""
    out: list[Valid] = []
    add = valid_adder(out)

    for cb, L in worked_examples():
        tag = cb.split("_")[1]
        x0 = np.float32(L.values()[0, 0]).view(np.uint32)
        assert x0 == (0xBEC1DAE6 if cb == "e8p12_rvq4" else 0xBE7D7D7E), (cb, hex(x0))   # the §10.11 text
        add(f"quip_v2_{tag}_worked_example", f"quip.md §10.11 worked example ({cb}, m=1, n=8, k_n=3, i8 signs)",
            [L.entry("w")])
    add("quip_v2_rvq4_factors", "e8p12_rvq4 (resid_scale f32(3.45)) with factor_n/factor_m (m=6, n=40, a_n=5, "
        "a_m=3), f32 su / f16 sv and a bf16 bias; and m=4, n=64 Hadamard only with f16 diagonals",
        [make_quip_rvq("q2r4a", 6, 40, 3, 1, "e8p12_rvq4", su="f32", sv="f16", bias="bf16").entry("both"),
         make_quip_rvq("q2r4b", 4, 64, 6, 2, "e8p12_rvq4").entry("hadamard")])
    add("quip_v2_rvq3_factors", "e8p12_rvq3 (resid_scale f32(2.04)) with factor_n/factor_m (m=6, n=40), f16 su / "
        "f32 sv and an f32 bias; and m=4, n=64 Hadamard only with i8 signs",
        [make_quip_rvq("q2r3a", 6, 40, 3, 1, "e8p12_rvq3", su="f16", sv="f32", bias="f32").entry("both"),
         make_quip_rvq("q2r3b", 4, 64, 6, 2, "e8p12_rvq3", su="i8", sv="i8").entry("hadamard")])
    every = make_quip_rvq("q2r3all", 4, 512, 9, 2, "e8p12_rvq3", su="i8", sv="f16")
    every.codes2 = [[(r << 6) | g for g in range(64)] for r in range(4)]
    add("quip_v2_rvq3_all_codes2", "e8p12_rvq3: all 256 E81B codes once (codes2[r, g] = r << 6 | g, m = 4, n = 512)",
        [every.entry("w")])
    edges = [make_quip_rvq("q2r4lo", 2, 16, 4, 1, "e8p12_rvq4", rho=mw.F32(2.0**-16)).entry("rvq4_min_f32"),
             make_quip_rvq("q2r3hi", 2, 16, 4, 1, "e8p12_rvq3", rho=2.0**16).entry("rvq3_max"),
             make_quip_rvq("q2r3f", 2, 16, 4, 1, "e8p12_rvq3", rho=mw.F32(RHO3)).entry("rvq3_f32_encoded")]
    special = make_quip_rvq("q2r4sp", 4, 8, 3, 2, "e8p12_rvq4", su="f16", sv="f32")
    special.scale[:] = np.array([np.nan, np.inf, -0.0, 0.0], dtype=np.float32)
    edges.append(special.entry("rvq4_nan_inf_zero_scale"))
    add("quip_v2_rvq_resid_scale_edges", "resid_scale at 2^-16 (msgpack float32) and 2^16, f32(2.04) as msgpack "
        "float32, and NaN/inf/-0/+0 row scales (NaN compared as any NaN)", edges)
    return out


def _base(codebook: str) -> list[mw.Tens]:
    """quip.py's invalid-vector base (norm + q: m = 4, n = 16, f16 su, i8 sv, f32 bias) with a residual codebook."""
    if codebook not in CODEBOOKS:
        return v2._base_v2(codebook)[0]
    L = make_quip_rvq(f"q2base{codebook[-1]}", 4, 16, 2, 1, codebook, su="f16", sv="i8", bias="f32")
    return [raw_tens("norm", "f32", [4])[0], L.tens("q")]


def invalid() -> list[Invalid]:
    """Invalid vectors: resid_scale, bits, codes2 set/layout/checksum defects, codes2 beside e8p12, n % 8."""
    out: list[Invalid] = []
    add = invalid_adder(out)

    def qv(name: str, desc: str, fn: Any, error: str, codebook: str) -> None:
        ts = _base(codebook)
        fn(ts)
        add(f"quip_v2_{name}", f"quip v2 ({codebook}): {desc}", mw.build(ts), error)

    def params(ts: list[mw.Tens]) -> dict[str, Any]:
        return tens_of(ts, "q").params

    for cb in CODEBOOKS:
        tag = cb.split("_")[1]
        qv(f"{tag}_resid_scale_missing", "no resid_scale", lambda ts: params(ts).pop("resid_scale"), "BAD_PARAMS", cb)
        for why, val in (("int", 3), ("str", "3.45"), ("nil", None), ("nan", float("nan")), ("inf", float("inf")),
                         ("zero", 0.0), ("negative", -RHO4), ("not_f32", 3.45), ("below_range", 2.0**-17),
                         ("above_range", mw.F32(2.0**17)), ("bool", True)):
            qv(f"{tag}_resid_scale_{why}", f"resid_scale = {val!r}",
               lambda ts, val=val: params(ts).__setitem__("resid_scale", val), "BAD_PARAMS", cb)
        qv(f"{tag}_bits_present", f"a bits key (4) with codebook {cb}", lambda ts: params(ts).__setitem__("bits", 4),
           "BAD_PARAMS", cb)
        qv(f"{tag}_codes2_missing", "no codes2 section", lambda ts: drop_sec(ts, "q", "codes2"),
           "BAD_SECTION_SET", cb)
        other, npd = ("u8", "u1") if cb == "e8p12_rvq4" else ("u16", "<u2")
        qv(f"{tag}_codes2_{other}", f"codes2 stored as {other}",
           lambda ts, other=other, npd=npd: retype(sec_of(ts, "q", "codes2"), other, npd),
           "BAD_SECTION_LAYOUT", cb)
        item = 2 if cb == "e8p12_rvq4" else 1
        qv(f"{tag}_codes2_shape", "codes2 [4, 1] instead of [4, 2]",
           lambda ts, item=item: resize(sec_of(ts, "q", "codes2"), [4, 1], item), "BAD_SECTION_LAYOUT", cb)
        qv(f"{tag}_section_checksum", "one bit of 'codes2' flipped, crc32 unchanged",
           lambda ts: flip_bit(sec_of(ts, "q", "codes2")), "SECTION_CHECKSUM", cb)

    def e8p12_with_codes2(ts: list[mw.Tens]) -> None:
        tens_of(ts, "q").sections.insert(1, mw.Sec("codes2", "u16", [4, 2], bytes(16)))

    def n12(ts: list[mw.Tens]) -> None:  # shape [4, 12]: log2_hn = 2 still divides 12 (a_n = 3), 12 % 8 != 0
        tens_of(ts, "q").shape = [4, 12]
        su = sec_of(ts, "q", "su")
        su.shape, su.data = [12], su.data[:24]

    qv("e8p12_codes2_present", "codebook e8p12 with a codes2 section", e8p12_with_codes2, "BAD_SECTION_SET", "e8p12")
    qv("rvq3_n_not_multiple_of_8", "e8p12_rvq3 tensor shape [4, 12] (n % 8 != 0)", n12, "BAD_SHAPE", "e8p12_rvq3")
    return out
