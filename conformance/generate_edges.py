"""Vectors that separate plausible misreadings of the spec (issue 11), plugged into ``generate``.

Each vector here is one an implementation written from the spec alone had to guess at: IEEE
round-to-nearest-even near the f16 overflow threshold (spqr.md §5, §8.4; SPEC §6 rule 3), the
multiply order of E8P12 values with subnormal scales (quip.md §10.5), which code wins when a
quantized tensor has two defects (SPEC §10 rule 3, quip.md §10.6), names measured in UTF-8 bytes
(SPEC §4), ignored ``raw`` params (SPEC §8), zero-size shapes with huge dimensions (SPEC §4) and
quip's MAX_FACTOR (quip.md §2). Expected values come from the same oracles as the other vectors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import generate as gen  # type: ignore[no-redef]
    import generate_v2 as v2  # type: ignore[no-redef]
    import miniwriter as mw  # type: ignore[no-redef]
else:
    from . import generate as gen
    from . import generate_v2 as v2
    from . import miniwriter as mw

Item = tuple[mw.Tens, Any, np.ndarray | None]
ValidVec = tuple[str, str, list[Item], dict[str, Any]]
InvalidVec = tuple[str, str, bytes, str]

T11 = 2.0**-11


# ---------------------------------------------------------------- rne16 near 65504 / 65520


def _rne16_stats() -> gen.SpqrLogical:
    """spqr v1, 2-bit two-level scales (beta2 = 1): each row's scale is rne16((code - sz) * ss).

    Row 0: (3 - 2^-11) * 21840 = 65509.336 -> 65504 (IEEE RNE; not inf). Row 1: 3 * 21840 = 65520, the
    halfway point, ties to even -> inf. Row 2: the negative of row 0 -> -65504. Row 3: 2 * 32752 = 65504.
    The zero is 0 and codes q are 1 and 2, so the decoded values are S and 2 S.
    """
    spec = [(3, 21840.0, T11), (3, 21840.0, 0.0), (3, -21840.0, T11), (2, 32752.0, 0.0)]
    m = len(spec)
    scale = gen.Stat(2, codes=[[c for c, _, _ in spec]], ss=np.array([[s for _, s, _ in spec]], np.float16),
                     sz=np.array([[z for _, _, z in spec]], np.float16))
    zero = gen.Stat(16, direct=np.zeros((1, m), np.float16))
    return gen.SpqrLogical(m, 2, 2, 2, 1, [[1, 2]] * m, scale, zero, [[] for _ in range(m)])


def _rne16_dense(arith: str) -> gen.SpqrLogical:
    """spqr v2, 16-bit stats: (q - Z) * S with q - Z = 1.2021484375 (f16-exact) and S = +-54496.

    The product 65512.28125 is f32-exact: arith "f16" rounds it to 65504 (RNE, not inf), arith "f32"
    keeps it; q = 3 overflows to inf in "f16" mode.
    """
    z = 2.0 - 1.2021484375
    scale, zero = v2._direct([(54496.0, z), (-54496.0, z)])
    L = gen.SpqrLogical(2, 3, 2, 3, 1, [[2, 3, 0], [2, 3, 0]], scale, zero, [[], []])
    L.version, L.arith, L.outlier_op = 2, arith, "replace"
    return L


# ---------------------------------------------------------------- E8P12 with subnormal scales


def _e8p12_subnormal() -> v2.QuipV2Logical:
    """Rows 0-2: subnormal f32 scales with odd bit patterns, where (t/4) * scale rounds once but
    t * (scale/4) rounds twice (t = 3, scale = 7 * 2^-149: 5.25 -> 5, against 3 * 2 = 6). Row 3: scale
    2^126, where (t * scale) / 4 overflows to inf for |t| >= 4 but (t/4) * scale does not."""
    L = v2.make_quip_v2("edge_e8p_sub", 4, 16, 3, 2, su="i8", sv="i8")
    L.scale = np.array([0x00000007, 0x00000005, 0x000001FF, 0x7E800000], dtype="<u4").view(np.float32).copy()
    return L


# ---------------------------------------------------------------- names, raw params, zero-size shapes


def _raw(name: str, dtype: str, shape: list[int], **kw: Any) -> Item:
    t, a = gen.raw_tens(name, dtype, shape, **kw)
    return t, a, None


def _empty_raw(name: str, dtype: str, shape: list[int]) -> Item:
    t = mw.Tens(name, shape, dtype, "raw", {}, [mw.Sec("data", dtype, shape, b"")])
    return t, np.zeros(shape, dtype=gen.RAW_NP[dtype]), None


def valid() -> list[ValidVec]:
    out: list[ValidVec] = []

    def add(name: str, desc: str, items: list[Item], **kw: Any) -> None:
        out.append((name, desc, items, kw))

    add("spqr_rne16_overflow_threshold", "rne16 is IEEE round-to-nearest-even: 65504 < |x| < 65520 rounds to "
        "+-65504, 65520 (the halfway point) ties to inf; in v1 two-level scales and in v2 arith f16 / f32 "
        "dense products (spqr.md §5, §8.4)",
        [v2._entry("v1_stats", _rne16_stats()), v2._entry("v2_f16", _rne16_dense("f16")),
         v2._entry("v2_f32", _rne16_dense("f32"))])
    add("quip_v2_e8p12_subnormal_scales", "E8P12 with subnormal scales of odd bit patterns and a 2^126 scale: "
        "X = (t/4) * scale, in that order (t * (scale/4) rounds twice, (t * scale)/4 overflows; quip.md §10.5)",
        [_e8p12_subnormal().entry("w")])
    add("names_non_ascii_1024_bytes", "names of exactly MAX_NAME_BYTES = 1024 UTF-8 bytes from 2-, 3- and 4-byte "
        "characters (512, 341 + 1 and 256 code points): the limit counts bytes",
        [_raw("\u00e9" * 512, "u8", [1]), _raw("\u5f20" * 341 + "x", "u8", [1]),
         _raw("\U0001f600" * 256, "u8", [1])])
    raw_p, raw_a = gen.raw_tens("r", "f32", [3])
    raw_p.params = {"bits": 4, "scale": 2.0, "codec": "spqr", "x": [1, {"y": None}]}
    add("raw_params_ignored", "a raw tensor with non-empty params (bits, scale, ...): raw defines none, so they "
        "are ignored and the data decodes as stored (SPEC §8, §4.2)", [(raw_p, raw_a, None)])
    add("raw_zero_size_huge_dims", "zero-size raw tensors with huge dimensions: [0, 2^40] f64, [2^40, 0] i8, "
        "[0, 2^20, 2^20] f32, [7, 0, 2^37] u16 (the non-zero entries multiply to <= MAX_ELEMENTS, SPEC §4)",
        [_empty_raw("a", "f64", [0, 1 << 40]), _empty_raw("b", "i8", [1 << 40, 0]),
         _empty_raw("c", "f32", [0, 1 << 20, 1 << 20]), _empty_raw("d", "u16", [7, 0, 1 << 37])])
    return out


# ---------------------------------------------------------------- invalid


def _huge_empty(shape: list[int]) -> bytes:
    return mw.build([mw.Tens("z", shape, "f32", "raw", {}, [mw.Sec("data", "f32", shape, b"")])])


def invalid() -> list[InvalidVec]:
    out: list[InvalidVec] = []

    def add(name: str, desc: str, blob: bytes, error: str) -> None:
        out.append((name, desc, blob, error))

    for shape, why in (([0, 1 << 63], "0_2e63"), ([1 << 63, 0], "2e63_0"), ([0, 1 << 40, 1 << 40], "0_2e40_2e40"),
                       ([0, (1 << 40) + 1], "0_2e40p1"), ([(1 << 64) - 1, 0, 1], "u64max_0_1")):
        add(f"shape_zero_size_overflow_{why}", f"raw tensor and section shape {shape}: product 0, but the non-zero "
            "entries multiply to more than MAX_ELEMENTS (SHAPE_OVERFLOW whatever the order, SPEC §4)",
            _huge_empty(shape), "SHAPE_OVERFLOW")
    add("name_non_ascii_1026_bytes", "a name of 513 code points 'é' = 1026 UTF-8 bytes (> 1024: the limit counts "
        "bytes, not characters)", mw.build([gen.raw_tens("\u00e9" * 513, "u8", [1])[0]]), "BAD_NAME")
    add("name_4byte_chars_1028_bytes", "a name of 257 four-byte characters = 1028 UTF-8 bytes (514 UTF-16 units)",
        mw.build([gen.raw_tens("\U0001f600" * 257, "u8", [1])[0]]), "BAD_NAME")
    add("rec_section_not_map", "a section record that is an int (SPEC §3.1: BAD_HEADER)", gen._header_blob(
        {"tensors": [{"name": "r", "shape": [1], "dtype": "f32", "codec": "raw", "codec_version": 1, "params": {},
                      "sections": {"data": 5}}], "metadata": {}}), "BAD_HEADER")

    # two defects in one quantized tensor: the codes SPEC §10 rule 3 and the codec lists pick
    def spqr_edit(name: str, desc: str, dtype: str, shape: list[int], error: str) -> None:
        add(name, desc, gen._edit(lambda ts: gen._t(ts, "w").set.update(dtype=dtype, shape=shape)), error)

    spqr_edit("spqr_two_defects_dtype_i8_shape_0", "spqr tensor with dtype i8 (BAD_PARAMS) and shape [0, 20] "
              "(BAD_SHAPE): the shape rule comes first", "i8", [0, 20], "BAD_SHAPE")
    spqr_edit("spqr_two_defects_dtype_unknown_shape_0", "spqr tensor with dtype 'q4' (not a §5 name: BAD_DTYPE, "
              "stage 4) and shape [0, 20] (BAD_SHAPE, stage 5): the earlier stage wins", "q4", [0, 20], "BAD_DTYPE")

    def quip_v2(name: str, desc: str, fn: Any, error: str) -> None:
        ts, _ = v2._quip_base()
        fn(ts)
        add(f"quip_v2_{name}", f"quip v2 (e8p12): {desc}", mw.build(ts), error)

    def n12(ts: list[mw.Tens], **params: Any) -> None:
        t = gen._t(ts, "q")
        t.shape = [4, 12]
        gen._sec(ts, "q", "su").shape = [12]
        gen._sec(ts, "q", "su").data = gen._sec(ts, "q", "su").data[:24]
        t.params.update(params)

    quip_v2("two_defects_bits_key_and_n_12", "a bits key (BAD_PARAMS) and n = 12 (n mod 8, BAD_SHAPE): quip.md "
            "§10.6 checks the bits key first", lambda ts: n12(ts, bits=2), "BAD_PARAMS")
    quip_v2("two_defects_n_12_and_log2_hn_31", "n = 12 (BAD_SHAPE) and log2_hn = 31 (BAD_PARAMS): n mod 8 comes "
            "before log2_hn in quip.md §10.6", lambda ts: n12(ts, log2_hn=31), "BAD_SHAPE")

    def quip_factor(name: str, desc: str, m: int, n: int, kn: int, km: int, version: int, error: str) -> None:
        L = gen.make_quip(f"edge_{name}", 1, 1, 2, 0, 0)   # sections are never read: BAD_PARAMS comes first
        t = gen.quip_tens("q", L, codec_version=version)
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
