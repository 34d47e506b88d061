"""Codec ``spqr`` version 2 (spec/codecs/spqr.md §8): params, rejection, exact arithmetic, writing it on request.

The Numba decoder is compared with a plain element-by-element reading of
§8.3 written here (Python ints for the bit unpacking, numpy scalars for each
f32 operation and each f16 rounding), and with the worked example of §8.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spqrfmt
from spqrfmt import ErrorCode
from spqrfmt.decoder.spqr import decode
from spqrfmt.encoder.packing import pack_rows
from spqrfmt.encoder.spqr import quantize_spqr
from spqrfmt.encoder.spqr_v2 import outlier_addend, to_v2

from conftest import assemble, split

f32, f16 = np.float32, np.float16


def _rne16(x: np.float32) -> np.float32:
    with np.errstate(over="ignore"):
        return f32(f16(x))


def _unpack(words: np.ndarray, i: int, k: int) -> int:
    """Code i of one packed row (spqr.md §4), from the row's bits as one Python integer."""
    row = sum(int(w) << (32 * q) for q, w in enumerate(words))
    return (row >> (i * k)) & ((1 << k) - 1)


def _reference_v2(p: dict[str, Any], s: dict[str, np.ndarray], m: int, n: int) -> np.ndarray:
    """spqr.md §8.3, one operation per line."""
    R = _rne16 if p["arith"] == "f16" else (lambda x: f32(x))
    G = -(-n // p["group_size"])

    def stat(which: str) -> np.ndarray:
        out = np.empty((G, m), np.float32)
        for g in range(G):
            for r in range(m):
                if p[f"{which}_bits"] == 16:
                    out[g, r] = f32(s[which][g, r])
                    continue
                k = r // p["stat_group_size"]
                c = _unpack(s[f"{which}_codes"][g], r, p[f"{which}_bits"])
                t = R(f32(c) - f32(s[f"{which}_zero"][g, k]))
                out[g, r] = _rne16(f32(t * f32(s[f"{which}_scale"][g, k])))
        return out

    with np.errstate(over="ignore", invalid="ignore"):
        S, Z = stat("scale"), stat("zero")
        wp = np.empty((m, n), np.float32)
        for r in range(m):
            for j in range(n):
                g = j // p["group_size"]
                t = R(f32(_unpack(s["codes"][r], j, p["bits"])) - Z[g, r])
                wp[r, j] = R(f32(t * S[g, r]))
        rp = s["outlier_row_ptr"]
        for r in range(m):
            for e in range(int(rp[r]), int(rp[r + 1])):
                c = int(s["outlier_col"][e])
                v = f32(s["outlier_val"][e])
                wp[r, c] = R(f32(wp[r, c] + v)) if p["outlier_op"] == "add" else v
    if "perm" not in s:
        return wp
    out = np.empty_like(wp)
    for j, pj in enumerate(s["perm"]):
        out[:, int(pj)] = wp[:, j]
    return out


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb) and np.array_equal(np.where(na, 0, a).view(np.uint32),
                                                          np.where(nb, 0, b).view(np.uint32)))


def _encode(seed: int, m: int, n: int, bits: int, gs: int, sbits: int, b2: int, perm: bool, density: float = 0.1):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)).astype(np.float32)
    mask = rng.random((m, n)) < density
    w[mask] *= 6
    return quantize_spqr(w, bits=bits, group_size=gs, scale_bits=sbits, zero_bits=sbits, stat_group_size=b2,
                         perm=rng.permutation(n) if perm else None, outlier_mask=mask)


# ---- exact arithmetic ----------------------------------------------------------------------

SPECIAL16 = np.array([np.nan, np.inf, -np.inf, 65504, -65504, 6e-8, -0.0, 1e-3], np.float16)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 12), n=st.integers(1, 40), bits=st.sampled_from([1, 2, 3, 4, 7, 8]),
       gs=st.sampled_from([1, 3, 8, 16, 64]), sbits=st.sampled_from([2, 3, 16]), b2=st.integers(1, 5),
       arith=st.sampled_from(["f32", "f16"]), op=st.sampled_from(["replace", "add"]), perm=st.booleans(),
       special=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_numba_v2_matches_spec_reading(m, n, bits, gs, sbits, b2, arith, op, perm, special, seed):
    enc = _encode(seed, m, n, bits, gs, sbits, b2, perm)
    p = dict(enc.params, arith=arith, outlier_op=op)
    s = {k: np.array(v) for k, v in enc.sections.items()}
    if special:  # NaN/inf/extreme statistics and outlier values propagate as the spec says
        rng = np.random.default_rng(seed)
        for role in ("scale", "scale_scale", "zero_zero", "outlier_val"):
            if role in s and s[role].size:
                flat = s[role].reshape(-1)
                idx = rng.integers(0, flat.size, 2)
                flat[idx] = rng.choice(SPECIAL16, 2)
    got = decode(p, s, (m, n))
    assert _same_bits(got, _reference_v2(p, s, m, n))
    if arith == "f16":  # every decoded value is an f16 value
        assert _same_bits(got, got.astype(np.float16).astype(np.float32))


def test_v2_f32_replace_is_v1_and_f16_differs():
    enc = _encode(1, 24, 96, 3, 16, 3, 16, True)
    v1 = decode(enc.params, enc.sections, (24, 96))
    assert _same_bits(decode(dict(enc.params, arith="f32", outlier_op="replace"), enc.sections, (24, 96)), v1)
    for arith, op in (("f16", "replace"), ("f32", "add"), ("f16", "add")):
        other = decode(dict(enc.params, arith=arith, outlier_op=op), enc.sections, (24, 96))
        assert not _same_bits(other, v1), (arith, op)


def test_worked_example_of_the_spec():
    """spqr.md §8.5, value for value."""
    secs = {"codes": pack_rows(np.array([[0, 7, 2, 5]]), 3),
            "scale_codes": pack_rows(np.array([[5]]), 3), "scale_zero": np.array([[0.1]], f16),
            "scale_scale": np.array([[0.0123]], f16), "zero_codes": pack_rows(np.array([[3]]), 3),
            "zero_zero": np.array([[0.3]], f16), "zero_scale": np.array([[1.1]], f16),
            "outlier_row_ptr": np.array([0, 1], np.uint32), "outlier_col": np.array([2], np.uint16),
            "outlier_val": np.array([0.0425], f16)}
    assert secs["codes"].tolist() == [[0x00000AB8]]
    assert [int(secs[k].view(np.uint16)[0, 0]) for k in ("scale_zero", "scale_scale", "zero_zero", "zero_scale")] \
        == [0x2E66, 0x224C, 0x34CD, 0x3C66] and int(secs["outlier_val"].view(np.uint16)[0]) == 0x2971
    base = {"bits": 3, "group_size": 4, "scale_bits": 3, "zero_bits": 3, "stat_group_size": 1}

    def hexes(arith: str, op: str) -> list[int]:
        return decode(dict(base, arith=arith, outlier_op=op), secs, (1, 4))[0].view(np.uint32).tolist()

    assert hexes("f32", "replace") == [0xBE373A40, 0x3E78CDC0, 0x3D2E2000, 0x3DFABB80]
    assert hexes("f32", "replace") == decode(base, secs, (1, 4))[0].view(np.uint32).tolist()  # = v1
    assert hexes("f16", "replace") == [0xBE372000, 0x3E78A000, 0x3D2E2000, 0x3DFAA000]
    assert hexes("f32", "add")[2] == 0xBC821200
    assert hexes("f16", "add") == [0xBE372000, 0x3E78A000, 0xBC81C000, 0x3DFAA000]


# ---- params and versions in files ----------------------------------------------------------


@pytest.fixture(scope="module")
def v2_blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    enc = to_v2(_encode(3, 12, 40, 3, 8, 3, 4, True), arith="f16", outlier_op="add")
    path = tmp_path_factory.mktemp("v2") / "ok.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("w", enc)
        wr.add_raw("b", np.arange(3, dtype=np.float32))
    return path.read_bytes()


def test_v2_file_round_trip(tmp_path: Path, v2_blob: bytes) -> None:
    p = tmp_path / "ok.spqr"
    p.write_bytes(v2_blob)
    spqrfmt.validate(p)
    with spqrfmt.open(p) as f:
        t = f["w"]
        assert t.codec_version == 2 and t.params["arith"] == "f16" and t.params["outlier_op"] == "add"
        s = {k: np.array(v) for k, v in t.arrays().items()}
        assert _same_bits(t.decode(), _reference_v2(dict(t.params), s, 12, 40))


def _expect(tmp: Path, header: dict[str, Any], data: bytes | bytearray, code: ErrorCode) -> None:
    path = tmp / "bad.spqr"
    path.write_bytes(assemble(header, bytes(data)))
    with spqrfmt.open(path) as f:
        with pytest.raises(spqrfmt.SpqrFormatError) as ei:
            f["w"].decode()
        assert ei.value.code == code, str(ei.value)
        np.testing.assert_array_equal(f["b"].decode(), np.arange(3, dtype=np.float32))  # the rest is served


@pytest.mark.parametrize("edit, code", [
    (lambda p: p.pop("arith"), ErrorCode.BAD_PARAMS),
    (lambda p: p.pop("outlier_op"), ErrorCode.BAD_PARAMS),
    (lambda p: p.update(arith="F16"), ErrorCode.BAD_PARAMS),
    (lambda p: p.update(arith="bf16"), ErrorCode.BAD_PARAMS),
    (lambda p: p.update(arith=16), ErrorCode.BAD_PARAMS),
    (lambda p: p.update(arith=b"f16"), ErrorCode.BAD_PARAMS),
    (lambda p: p.update(arith=None), ErrorCode.BAD_PARAMS),
    (lambda p: p.update(outlier_op="sub"), ErrorCode.BAD_PARAMS),
    (lambda p: p.update(outlier_op=["add"]), ErrorCode.BAD_PARAMS),
    (lambda p: p.update(outlier_op=True), ErrorCode.BAD_PARAMS),
    (lambda p: p.update(bits=9), ErrorCode.BAD_PARAMS),  # v1's rules still apply
])
def test_v2_bad_params(tmp_path: Path, v2_blob: bytes, edit: Any, code: ErrorCode) -> None:
    header, data = split(v2_blob)
    edit(header["tensors"][0]["params"])
    _expect(tmp_path, header, data, code)


def test_unknown_codec_version_and_v1_ignoring_v2_keys(tmp_path: Path, v2_blob: bytes) -> None:
    header, data = split(v2_blob)
    header["tensors"][0]["codec_version"] = 3
    _expect(tmp_path, header, data, ErrorCode.UNSUPPORTED_CODEC_VERSION)
    # A v1 record carrying keys named arith/outlier_op: v1 ignores them and decodes with v1 arithmetic.
    header, data = split(v2_blob)
    header["tensors"][0]["codec_version"] = 1
    path = tmp_path / "v1.spqr"
    path.write_bytes(assemble(header, bytes(data)))
    with spqrfmt.open(path) as f:
        t = f["w"]
        s = {k: np.array(v) for k, v in t.arrays().items()}
        v1_params = {k: v for k, v in t.params.items() if k not in ("arith", "outlier_op")}
        assert _same_bits(t.decode(), decode(v1_params, s, (12, 40)))
        assert not _same_bits(t.decode(), decode(dict(t.params), s, (12, 40)))


# ---- writing v2 only when asked --------------------------------------------------------------


def test_encoders_default_to_v1_and_to_v2_on_request(tmp_path: Path) -> None:
    enc = _encode(5, 16, 64, 3, 16, 3, 16, True)
    assert enc.codec_version == 1 and "arith" not in enc.params
    for arith in ("f32", "f16"):
        for op in ("replace", "add"):
            v2 = to_v2(enc, arith=arith, outlier_op=op)
            assert enc.codec_version == 1 and "arith" not in enc.params  # input untouched
            assert v2.codec_version == 2 and v2.params["arith"] == arith and v2.params["outlier_op"] == op
            path = tmp_path / f"{arith}_{op}.spqr"
            with spqrfmt.Writer(path) as wr:
                wr.add_encoded("w", v2)
            with spqrfmt.open(path) as f:
                assert f["w"].codec_version == 2
                assert _same_bits(f["w"].decode(), v2.dequantized)  # the encoding decodes to its own dequantized
            if op == "replace":
                np.testing.assert_array_equal(v2.sections["outlier_val"], enc.sections["outlier_val"])
            elif arith == "f16":  # addends reproduce the f16 outlier values (exact wherever an addend exists)
                n_out = enc.sections["outlier_val"].size
                assert v2.info["outliers_exact"] >= 0.9 * n_out
    with pytest.raises(ValueError):
        to_v2(to_v2(enc))
    with pytest.raises(ValueError):
        to_v2(enc, arith="bf16")


def test_outlier_addend_search() -> None:
    d = np.array([-2.0, 1.0, -0.0, np.inf, np.inf, 2048.0, 0.0], np.float32)
    t = np.array([1e-4, 1.5, 0.0, np.inf, np.nan, 2050.0, -0.0], np.float16).astype(np.float32)
    v, exact = outlier_addend(d, t, "f16", exhaustive=True)
    assert exact.tolist() == [False, True, True, True, True, True, False]  # -2 + v != 1e-4; +0 + v != -0
    with np.errstate(invalid="ignore"):
        got = (d + v.astype(np.float32)).astype(np.float16).astype(np.float32)
    assert _same_bits(got[exact], t[exact])
