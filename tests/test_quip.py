"""Codec ``quip`` v1: encoder -> file -> reader round trip, transform exactness, LDLQ, Triton parity, hostile input.

Decoding is defined as explicit f32 operations (spec/codecs/quip.md §5), so the
decoded tensor must equal the encoder's dequantized matrix bit for bit, and the
Triton interpreter pipeline must equal the Numba reference bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spqrfmt
from spqrfmt import ErrorCode
from spqrfmt.decoder.quip import decode, hadamard_constant, transform_rows
from spqrfmt.encoder.quip import apply_dt_rows, quantize_quip, random_orthogonal

from conftest import assemble, restamp, split

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
dims = st.tuples(st.sampled_from([1, 3, 5]), st.integers(0, 5)).map(lambda t: t[0] << t[1])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32),
                                                                                      b.view(np.uint32))


def _weight(seed: int, m: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)).astype(np.float32)
    w[rng.random((m, n)) < 0.02] *= 30.0  # outliers: incoherence processing spreads them
    return w


@SETTINGS
@given(m=dims, n=dims, bits=st.integers(1, 8), seed=st.integers(0, 2**31), ldlq=st.booleans(), bias=st.booleans())
def test_round_trip_bit_exact(tmp_path: Path, m: int, n: int, bits: int, seed: int, ldlq: bool, bias: bool) -> None:
    w = _weight(seed, m, n)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((2 * n + 4, n))
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    enc = quantize_quip(w, bits=bits, hessian=x.T @ x if ldlq else None, seed=seed, bias=b)
    assert enc.codec == "quip"
    assert set(np.unique(enc.sections["su"])) <= {-1, 1} and enc.sections["su"].dtype == np.int8
    assert ("factor_n" in enc.sections) == (n & (n - 1) != 0)
    path = tmp_path / "q.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("w", enc)
    with spqrfmt.open(path) as f:
        got = f["w"].decode()
        got_bias = f["w"].bias()
    assert _same_bits(got, enc.dequantized)
    assert (got_bias is None) == (b is None)
    if b is not None:
        assert np.array_equal(got_bias, b)
    # Same seed, same file content: the stored signs/factors are the only randomness.
    again = quantize_quip(w, bits=bits, hessian=x.T @ x if ldlq else None, seed=seed, bias=b)
    for k in enc.sections:
        assert np.array_equal(enc.sections[k], again.sections[k])


@pytest.mark.parametrize("k", range(0, 9))
def test_fwht_is_the_normalized_sylvester_hadamard(k: int) -> None:
    """transform_rows on the identity gives c_k * (-1)^popcount(i & j) exactly (quip.md §5.2)."""
    h = 1 << k
    c = hadamard_constant(k)
    assert c == np.float32(2.0 ** (-k / 2))  # RNE of the exact value (checked through f64)
    x = np.eye(h, dtype=np.float32)
    transform_rows(x, k, np.array([c]), np.zeros((1, 1), dtype=np.float32))
    i = np.arange(h)
    sign = np.array([[(-1) ** bin(a & b).count("1") for b in i] for a in i], dtype=np.float32)
    assert np.array_equal(x, sign * c)


def test_transform_matches_kronecker_definition() -> None:
    """Decoder D = F kron H_norm (f32 steps) agrees with the float64 matrix; encoder applies D^T."""
    rng = np.random.default_rng(2)
    k, a = 3, 5
    f = random_orthogonal(a, rng).astype(np.float32)
    h = 1 << k
    had = np.array([[(-1) ** bin(i & j).count("1") for j in range(h)] for i in range(h)]) / np.sqrt(h)
    D = np.kron(f.astype(np.float64), had)
    x = rng.standard_normal((4, a * h)).astype(np.float32)
    y = x.copy()
    transform_rows(y, k, np.array([hadamard_constant(k)]), f)
    assert np.allclose(y, x.astype(np.float64) @ D.T, atol=1e-5)
    assert np.allclose(apply_dt_rows(x, k, f), x.astype(np.float64) @ D, atol=1e-10)


def test_ldlq_identity_hessian_is_rtn_and_hessian_helps() -> None:
    rng = np.random.default_rng(4)
    m, n = 32, 96
    w = _weight(4, m, n)
    rtn = quantize_quip(w, bits=2, seed=1)
    ident = quantize_quip(w, bits=2, seed=1, hessian=np.eye(n))
    assert np.array_equal(rtn.sections["codes"], ident.sections["codes"])  # LDLQ with H = I is RTN
    x = rng.standard_normal((4 * n, n)) @ rng.standard_normal((n, n))  # correlated inputs
    ldlq = quantize_quip(w, bits=2, seed=1, hessian=x.T @ x)

    def out_err(d: np.ndarray) -> float:
        return float(np.linalg.norm((d - w) @ x.T))

    assert out_err(ldlq.dequantized) < 0.8 * out_err(rtn.dequantized)


def test_incoherence_beats_plain_rtn_on_outliers() -> None:
    from spqrfmt.encoder.rtn import quantize_spqr

    w = _weight(8, 64, 128)
    q = quantize_quip(w, bits=3)
    r = quantize_spqr(w, bits=3, group_size=128, scale_bits=16, zero_bits=16, outlier_fraction=0.0)
    assert np.linalg.norm(q.dequantized - w) < 0.7 * np.linalg.norm(r.dequantized - w)


# ---- Triton (interpreter on CPU) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kq() -> Any:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    from spqrfmt.kernels import quip

    return quip


small = st.tuples(st.sampled_from([1, 3]), st.integers(0, 4)).map(lambda t: t[0] << t[1])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(m=small, n=small, bits=st.sampled_from([1, 2, 3, 4, 8]), seed=st.integers(0, 999))
def test_triton_matches_numba(kq: Any, m: int, n: int, bits: int, seed: int) -> None:
    import torch

    w = _weight(seed, m, n)
    enc = quantize_quip(w, bits=bits, seed=seed)
    ref = decode(enc.params, enc.sections, (m, n))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    got = kq.dequantize(enc.params, kq.to_device(enc.sections, dev), (m, n)).cpu().numpy()
    assert _same_bits(got, ref)
    prep = kq.prepare(enc.params, enc.sections, (m, n), dev)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, n)).astype(np.float32)).to(dev)
    y = kq.matvec(prep, x).cpu().numpy().astype(np.float64)
    want = x.cpu().numpy().astype(np.float64) @ ref.T.astype(np.float64)
    assert np.linalg.norm(y - want) <= 1e-5 * max(np.linalg.norm(want), 1e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_triton_signed_zero_and_nan(kq: Any) -> None:
    """All-zero scales give a +0/-0 pattern fixed by the op order; an inf scale gives NaN: still identical."""
    w = _weight(1, 6, 12)
    enc = quantize_quip(w, bits=2, seed=3)
    enc.sections["scale"][:] = np.array([0.0, -0.0, 0.0, -0.0, -0.0, 0.0], dtype=np.float32)
    ref = decode(enc.params, enc.sections, (6, 12))
    got = kq.dequantize(enc.params, kq.to_device(enc.sections, "cpu"), (6, 12)).numpy()
    assert np.all(ref == 0) and len(set(ref.view(np.uint32).ravel().tolist())) == 2  # both +0 and -0 occur
    assert _same_bits(got, ref)
    enc.sections["scale"][:] = 1.0
    enc.sections["scale"][4] = np.inf
    ref = decode(enc.params, enc.sections, (6, 12))
    got = kq.dequantize(enc.params, kq.to_device(enc.sections, "cpu"), (6, 12)).numpy()
    assert np.isnan(ref).any()
    assert np.array_equal(np.isnan(ref), np.isnan(got))
    fin = ~np.isnan(ref)
    assert np.array_equal(ref[fin].view(np.uint32), got[fin].view(np.uint32))


# ---- hostile input ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    enc = quantize_quip(_weight(2, 12, 40), bits=2)  # m = 3 * 4, n = 5 * 8: both factors present
    assert enc.params == {"bits": 2, "log2_hm": 2, "log2_hn": 3}
    path = tmp_path_factory.mktemp("q") / "ok.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("w", enc)
    return path.read_bytes()


def _expect(tmp: Path, header: dict[str, Any], data: bytes | bytearray, code: ErrorCode) -> None:
    path = tmp / "bad.spqr"
    path.write_bytes(assemble(header, bytes(data)))
    with spqrfmt.open(path) as f, pytest.raises(spqrfmt.SpqrFormatError) as ei:
        f["w"].decode()
    assert ei.value.code == code, str(ei.value)
    with pytest.raises(spqrfmt.SpqrFormatError):
        spqrfmt.validate(path)


def test_blob_is_valid(tmp_path: Path, blob: bytes) -> None:
    p = tmp_path / "ok.spqr"
    p.write_bytes(blob)
    spqrfmt.validate(p)


@pytest.mark.parametrize("edit, code", [
    (lambda t: t["params"].update(bits=9), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].pop("log2_hn"), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].update(log2_hn=4), ErrorCode.BAD_PARAMS),  # 16 does not divide 40
    (lambda t: t["params"].update(log2_hm=31), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].update(log2_hm=-1), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].update(log2_hn=2), ErrorCode.BAD_SECTION_LAYOUT),  # factor_n must be [10, 10]
    (lambda t: t.update(shape=[12]), ErrorCode.BAD_SHAPE),
    (lambda t: t.update(codec_version=2), ErrorCode.UNSUPPORTED_CODEC_VERSION),
    (lambda t: t["sections"].pop("factor_n"), ErrorCode.BAD_SECTION_SET),
    (lambda t: t["sections"].pop("su"), ErrorCode.BAD_SECTION_SET),
    (lambda t: t["sections"].update(seed={"dtype": "u64", "shape": [0], "offset": 0, "length": 0, "crc32": 0}),
     ErrorCode.BAD_SECTION_SET),  # an RNG seed is not a way to store the signs
    (lambda t: t["sections"]["su"].update(dtype="u8"), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["scale"].update(dtype="u32"), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["factor_m"].update(dtype="i32"), ErrorCode.BAD_SECTION_LAYOUT),
])
def test_bad_record(tmp_path: Path, blob: bytes, edit: Any, code: ErrorCode) -> None:
    header, data = split(blob)
    edit(header["tensors"][0])
    _expect(tmp_path, header, data, code)


def test_factor_present_for_power_of_two_is_bad_section_set(tmp_path: Path) -> None:
    """m = 8 is a power of two: a factor_m section is a role the codec does not define here."""
    enc = quantize_quip(_weight(3, 8, 16), bits=2)
    enc.sections["factor_m"] = np.eye(1, dtype=np.float32)
    with pytest.raises(spqrfmt.SpqrFormatError) as ei:
        with spqrfmt.Writer(tmp_path / "x.spqr") as wr:
            wr.add_encoded("w", enc)
    assert ei.value.code == ErrorCode.BAD_SECTION_SET
    assert not (tmp_path / "x.spqr").exists()


@pytest.mark.parametrize("role, value", [("su", 0), ("sv", 2), ("su", -128), ("sv", 0)])
def test_bad_sign_value(tmp_path: Path, blob: bytes, role: str, value: int) -> None:
    header, data = split(blob)
    s = header["tensors"][0]["sections"][role]
    data[s["offset"] + 3] = value & 0xFF
    restamp(header, data)
    _expect(tmp_path, header, data, ErrorCode.BAD_VALUE)


def test_spec_worked_example() -> None:
    """spec/codecs/quip.md §9, byte for byte and bit for bit."""
    from spqrfmt.encoder.packing import pack_rows

    secs = {
        "codes": pack_rows(np.array([[0, 3, 1, 2], [3, 3, 0, 1]]), 2),
        "scale": np.frombuffer(bytes.fromhex("0000003fcdcccc3d"), dtype=np.float32),
        "su": np.array([1, -1, 1, 1], dtype=np.int8),
        "sv": np.array([-1, 1], dtype=np.int8),
        "factor_n": np.frombuffer(bytes.fromhex("9a99193fcdcc4c3fcdcc4cbf9a99193f"), dtype=np.float32).reshape(2, 2),
    }
    assert secs["codes"].tobytes().hex() == "9c000000" + "4f000000"
    assert secs["su"].tobytes().hex() == "01ff0101" and secs["sv"].tobytes().hex() == "ff01"
    got = decode({"bits": 2, "log2_hm": 1, "log2_hn": 1}, secs, (2, 4))
    want = [0xBCA3D708, 0xBFB0A3D7, 0x3EB851EB, 0xBF570A3C, 0xBCA3D708, 0x3F9C28F5, 0x3EB851EB, 0x3F75C28E]
    assert got.view(np.uint32).ravel().tolist() == want
