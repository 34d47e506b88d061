"""Codec ``quip`` v1 and v2: encoder -> file -> reader round trip, transform exactness, LDLQ, Triton parity,
hostile input; v2's E8P12 table against the spec, its codes against a literal reimplementation.

Decoding is defined as explicit f32 operations (spec/codecs/quip.md §5, §10.5), so the
decoded tensor must equal the encoder's dequantized matrix bit for bit, and the
Triton interpreter pipeline must equal the Numba reference bit for bit.
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
from spqrfmt.decoder.quip import decode, hadamard_constant, transform_rows
from spqrfmt.encoder.quip import apply_dt_rows, quantize_quip, random_orthogonal

from conftest import assemble, kernels_module, restamp, split

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
    from spqrfmt.encoder.spqr import quantize_spqr

    w = _weight(8, 64, 128)
    q = quantize_quip(w, bits=3)
    r = quantize_spqr(w, bits=3, group_size=128, scale_bits=16, zero_bits=16, outlier_fraction=0.0)
    assert np.linalg.norm(q.dequantized - w) < 0.7 * np.linalg.norm(r.dequantized - w)


# ---- Triton (interpreter on CPU) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kq() -> Any:
    return kernels_module("quip")


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
    (lambda t: t.update(codec_version=3), ErrorCode.UNSUPPORTED_CODEC_VERSION),
    (lambda t: t.update(codec_version=2), ErrorCode.BAD_PARAMS),  # v2 requires 'codebook'
    (lambda t: (t.update(codec_version=2), t["params"].update(codebook="grid")), None),  # v1 sections are valid v2
    (lambda t: t["sections"].pop("factor_n"), ErrorCode.BAD_SECTION_SET),
    (lambda t: t["sections"].pop("su"), ErrorCode.BAD_SECTION_SET),
    (lambda t: t["sections"].update(seed={"dtype": "u64", "shape": [0], "offset": 0, "length": 0, "crc32": 0}),
     ErrorCode.BAD_SECTION_SET),  # an RNG seed is not a way to store the signs
    (lambda t: t["sections"]["su"].update(dtype="u8"), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["scale"].update(dtype="u32"), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["factor_m"].update(dtype="i32"), ErrorCode.BAD_SECTION_LAYOUT),
])
def test_bad_record(tmp_path: Path, blob: bytes, edit: Any, code: ErrorCode | None) -> None:
    header, data = split(blob)
    edit(header["tensors"][0])
    if code is None:
        path, orig = tmp_path / "ok2.spqr", tmp_path / "ok1.spqr"
        path.write_bytes(assemble(header, bytes(data)))
        orig.write_bytes(blob)
        spqrfmt.validate(path)
        with spqrfmt.open(path) as f, spqrfmt.open(orig) as g:
            assert _same_bits(f["w"].decode(), g["w"].decode())  # i8 signs: v2 "grid" == v1, bit for bit
        return
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


# ==== version 2: E8P12 codebook, real-valued diagonals (spec/codecs/quip.md §10) ================================

SPEC = Path(__file__).resolve().parents[1] / "spec" / "codecs" / "quip.md"


def _spec_section10() -> str:
    text = SPEC.read_text(encoding="utf-8")
    return text[text.index("## 10. Version 2"):text.index("## 11.")]


def _spec_blocks(section: str) -> list[str]:
    return section.split("```")[1::2]


def test_e8p_table_is_the_spec_table() -> None:
    """The table in code is the spec's (§10.3) byte for byte, its SHA-256 is the spec's, rows 0-226 follow the rule."""
    import hashlib
    import re

    from spqrfmt.decoder import e8p

    sec = _spec_section10()
    blocks = _spec_blocks(sec)
    table_block = next(b for b in blocks if b.strip().startswith("0: 11111111"))
    spec_table = e8p.parse_table(table_block)
    digest = re.search(r"^([0-9a-f]{64})$", next(b for b in blocks if re.fullmatch(r"\s*[0-9a-f]{64}\s*", b)),
                       re.M).group(1)
    assert hashlib.sha256(spec_table.tobytes()).hexdigest() == digest == e8p.TABLE_SHA256
    assert np.array_equal(e8p.abs_table(), spec_table)
    assert np.array_equal(e8p.construction_rows(), spec_table[:227])
    tail = spec_table[227:].astype(int)
    assert np.all((tail == 3).sum(1) == 5) and np.all((tail == 1).sum(1) == 3)
    assert len({r.tobytes() for r in spec_table}) == 256 and np.all(e8p.odd_rows()[227:] == 1)


def _literal_code(c: int, table: np.ndarray) -> list[int]:
    """§10.4 transcribed as written, one code at a time (pure Python integers)."""
    a, s = c >> 8, c & 0xFF
    p = bin(s).count("1") % 2
    s2 = s ^ p
    odd = (sum(int(v) for v in table[a]) // 2) % 2
    t = []
    for i in range(8):
        beta = (i >> 1) | ((i & 1) << 2)
        neg = (s2 >> beta) & 1
        if i == 7:
            neg ^= odd
        t.append((-2 if neg else 2) * int(table[a][i]) + (-1 if p else 1))
    return t


def test_e8p_codebook_structure() -> None:
    """All 2^16 codes: odd t in -11..11, distinct points, t/4 -/+ 1/4 in the even-sum half-integer coset of E8."""
    from spqrfmt.decoder import e8p

    t = e8p.code_points(np.arange(1 << 16)).astype(np.int64)
    table = e8p.abs_table()
    for c in np.random.default_rng(0).integers(0, 1 << 16, 300).tolist() + [0, 0xFFFF, 0x1C05, 0xE716]:
        assert t[c].tolist() == _literal_code(c, table)
    assert np.all(t % 2 == 1) and np.abs(t).max() == 11
    assert len(np.unique(t, axis=0)) == 1 << 16
    p = np.array([bin(c & 0xFF).count("1") % 2 for c in range(1 << 16)])
    z2 = t - np.where(p == 1, -1, 1)[:, None]  # 4 * (point - shift) = 2 * (half-integer vector)
    assert np.all((z2 // 2) % 2 == 1) and np.all((z2.sum(1) // 4) % 2 == 0)
    from spqrfmt.decoder.quip import e8p_values

    x = e8p_values(np.arange(1 << 16, dtype=np.uint16)[None, :], np.ones(1, np.float32), 8 << 16)
    assert np.array_equal(x.reshape(-1, 8), t.astype(np.float32) / 4)


def test_e8p_nearest_is_exact() -> None:
    from spqrfmt.decoder import e8p as tab
    from spqrfmt.encoder.e8p import nearest_codes, points

    rng = np.random.default_rng(5)
    y = rng.standard_normal((400, 8)) * np.array([1.0] * 300 + [3.0] * 100)[:, None]
    y[:10] = np.round(y[:10] * 4) / 4  # exact ties between shifts/signs
    allp = tab.code_points(np.arange(1 << 16)).astype(np.float64) / 4
    best = ((y * y).sum(1)[:, None] - 2 * y @ allp.T + (allp * allp).sum(1)[None, :]).min(1)  # all 2^16 points
    got = ((points(nearest_codes(y)) - y) ** 2).sum(1)
    np.testing.assert_allclose(got, best, rtol=0, atol=1e-9)


def _v2_weight(seed: int, m: int, n: int) -> np.ndarray:
    return _weight(seed, m, n)


dims8 = st.tuples(st.sampled_from([1, 3, 5]), st.integers(3, 5)).map(lambda t: t[0] << t[1])  # multiples of 8
diag_dtypes = st.sampled_from(["i8", "f16", "f32"])


def _diag(rng: np.random.Generator, signs: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "i8":
        return signs
    return (signs * rng.uniform(0.25, 2.0, signs.size)).astype(np.float16 if dtype == "f16" else np.float32)


@SETTINGS
@given(m=dims, n=dims8, seed=st.integers(0, 2**31), ldlq=st.booleans(), bias=st.booleans(), su_dt=diag_dtypes,
       sv_dt=diag_dtypes)
def test_v2_e8p_round_trip_bit_exact(tmp_path: Path, m: int, n: int, seed: int, ldlq: bool, bias: bool,
                                     su_dt: str, sv_dt: str) -> None:
    w = _v2_weight(seed, m, n)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((2 * n + 4, n))
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    enc = quantize_quip(w, codebook="e8p12", hessian=x.T @ x if ldlq else None, seed=seed, bias=b)
    assert enc.codec_version == 2 and enc.params["codebook"] == "e8p12" and "bits" not in enc.params
    assert enc.sections["codes"].dtype == np.uint16 and enc.sections["codes"].shape == (m, n // 8)
    enc.sections["su"] = _diag(rng, enc.sections["su"], su_dt)
    enc.sections["sv"] = _diag(rng, enc.sections["sv"], sv_dt)
    want = decode(enc.params, enc.sections, (m, n))
    path = tmp_path / "q2.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("w", enc)
    spqrfmt.validate(path)
    with spqrfmt.open(path) as f:
        t = f["w"]
        assert t.codec_version == 2 and t.arrays()["su"].dtype == enc.sections["su"].dtype
        got = t.decode()
    assert _same_bits(got, want)
    if su_dt == sv_dt == "i8":
        assert _same_bits(got, enc.dequantized)


def _literal_v2_decode(params: dict[str, Any], secs: dict[str, np.ndarray], m: int, n: int) -> np.ndarray:
    """§10.5 with numpy f32 scalars, element by element (a second reading of the spec, no Numba)."""
    from spqrfmt.decoder import e8p

    f = np.float32
    table = e8p.abs_table()
    x = np.empty((m, n), dtype=np.float32)
    for r in range(m):
        for g in range(n // 8):
            t = _literal_code(int(secs["codes"][r, g]), table)
            for i in range(8):
                x[r, 8 * g + i] = (f(t[i]) * f(0.25)) * secs["scale"][r]

    def fwht(v: np.ndarray, k: int) -> None:
        half = 1
        while half < (1 << k):
            for i in range(len(v)):
                if not i & half:
                    u, w = v[i], v[i + half]
                    v[i], v[i + half] = u + w, u - w
            half *= 2
        c = hadamard_constant(k)
        for i in range(len(v)):
            v[i] = v[i] * c

    for r in range(m):
        fwht(x[r], params["log2_hn"])
    for c in range(n):
        col = x[:, c].copy()
        fwht(col, params["log2_hm"])
        x[:, c] = col
    for r in range(m):
        for c in range(n):
            x[r, c] = (x[r, c] * f(secs["sv"][r])) * f(secs["su"][c])
    return x


def test_v2_spec_worked_example() -> None:
    """spec/codecs/quip.md §10.8: section bytes, codes and every decoded bit, parsed from the spec text."""
    import re

    sec = _spec_section10()
    ex = sec[sec.index("### 10.8"):sec.index("### 10.9")]
    blocks = _spec_blocks(ex)
    secs = {
        "codes": np.array([[0x1C05], [0xE716]], dtype=np.uint16),
        "scale": np.frombuffer(bytes.fromhex("0000003fcdcccc3d"), dtype=np.float32),
        "su": np.array([1, -1, 0.5, 1, 1, -2, 1, 0.75], dtype=np.float16),
        "sv": np.array([-1, 1], dtype=np.int8),
    }
    layout = blocks[0]
    for role in ("codes", "scale", "su", "sv"):
        field = re.search(rf"^{role}\s+\[[^\]]*\]\s+\w+\s+(.*?)(?:\s{{3,}}|$)", layout, re.M).group(1)
        hex_bytes = "".join(re.findall(r"\b[0-9a-f]{2}\b", field))
        assert secs[role].tobytes().hex() == hex_bytes, role
    t_lines = re.findall(r"t = ([-\d ]+)", blocks[1])
    from spqrfmt.decoder import e8p

    assert [list(map(int, ln.split())) for ln in t_lines] == e8p.code_points(secs["codes"][:, 0]).tolist()
    steps = re.findall(r"row \d: ((?:[0-9A-F]{8} ){7}[0-9A-F]{8})", blocks[2])
    want = [int(h, 16) for ln in steps[-2:] for h in ln.split()]
    params = {"codebook": "e8p12", "log2_hn": 3, "log2_hm": 1}
    got = decode({**params, "a_n": 1, "a_m": 1}, secs, (2, 8))
    assert got.view(np.uint32).ravel().tolist() == want
    assert _literal_v2_decode(params, secs, 2, 8).view(np.uint32).ravel().tolist() == want
    step1 = [int(h, 16) for ln in steps[:2] for h in ln.split()]
    from spqrfmt.decoder.quip import e8p_values

    assert e8p_values(secs["codes"], secs["scale"], 8).view(np.uint32).ravel().tolist() == step1


def test_v2_literal_decode_matches_numba() -> None:
    """Random codes, f16/f32 diagonals, NaN/inf/-0 scales: the Numba decoder is §10.5 as written."""
    rng = np.random.default_rng(7)
    m, n = 4, 16
    secs = {"codes": rng.integers(0, 1 << 16, (m, n // 8)).astype(np.uint16),
            "scale": np.array([0.5, -0.0, np.inf, 1e-40], np.float32),
            "su": rng.standard_normal(n).astype(np.float16), "sv": rng.standard_normal(m).astype(np.float32)}
    params = {"codebook": "e8p12", "log2_hn": 4, "log2_hm": 2}
    with np.errstate(invalid="ignore", over="ignore"):
        ref = _literal_v2_decode(params, secs, m, n)
        got = decode({**params, "a_n": 1, "a_m": 1}, secs, (m, n))
    assert np.array_equal(np.isnan(ref), np.isnan(got))
    fin = ~np.isnan(ref)
    assert np.array_equal(ref[fin].view(np.uint32), got[fin].view(np.uint32))


def test_e8p_beats_two_bit_grid_at_equal_bits() -> None:
    """Gaussian weights, same incoherence, same 2 bits/weight + row scale: E8P12 has the lower error (measured)."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((64, 512)).astype(np.float32)
    e = quantize_quip(w, codebook="e8p12", seed=3)
    g = quantize_quip(w, bits=2, seed=3)
    assert e.bits_per_param == g.bits_per_param
    rel_e = np.linalg.norm(e.dequantized - w) / np.linalg.norm(w)
    rel_g = np.linalg.norm(g.dequantized - w) / np.linalg.norm(w)
    # Measured 0.30 vs 0.345 (theory for i.i.d. Gaussians: E8P12 MSE ~0.09, best 4-level scalar ~0.12).
    assert rel_e < 0.92 * rel_g and 0.2 < rel_e < 0.33


def test_e8p_ldlq_identity_is_rtn_and_hessian_helps() -> None:
    rng = np.random.default_rng(4)
    m, n = 32, 96
    w = _weight(4, m, n)
    rtn = quantize_quip(w, codebook="e8p12", seed=1)
    ident = quantize_quip(w, codebook="e8p12", seed=1, hessian=np.eye(n), damp=0.0)
    assert np.array_equal(rtn.sections["codes"], ident.sections["codes"])
    x = rng.standard_normal((4 * n, n)) @ rng.standard_normal((n, n))
    ldlq = quantize_quip(w, codebook="e8p12", seed=1, hessian=x.T @ x)

    def out_err(d: np.ndarray) -> float:
        return float(np.linalg.norm((d - w) @ x.T))

    assert out_err(ldlq.dequantized) < 0.85 * out_err(rtn.dequantized)


def test_e8p_encoder_rejects_bad_requests() -> None:
    with pytest.raises(ValueError, match="multiple|n % 8"):
        quantize_quip(np.ones((4, 12), np.float32), codebook="e8p12")
    with pytest.raises(ValueError, match="bits=2"):
        quantize_quip(np.ones((4, 16), np.float32), codebook="e8p12", bits=3)
    with pytest.raises(ValueError, match="codebook"):
        quantize_quip(np.ones((4, 16), np.float32), codebook="d4")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(m=small, n=st.sampled_from([8, 16, 24, 40, 64]), seed=st.integers(0, 999), su_dt=diag_dtypes,
       sv_dt=diag_dtypes, e8p=st.booleans())
def test_v2_triton_matches_numba(kq: Any, m: int, n: int, seed: int, su_dt: str, sv_dt: str, e8p: bool) -> None:
    import torch

    rng = np.random.default_rng(seed)
    w = _weight(seed, m, n)
    if e8p:
        enc = quantize_quip(w, codebook="e8p12", seed=seed)
        enc.sections["codes"] = rng.integers(0, 1 << 16, enc.sections["codes"].shape).astype(np.uint16)
    else:
        enc = quantize_quip(w, bits=3, seed=seed)
        enc.params["codebook"] = "grid"
    enc.sections["su"] = _diag(rng, enc.sections["su"], su_dt)
    enc.sections["sv"] = _diag(rng, enc.sections["sv"], sv_dt)
    ref = decode(enc.params, enc.sections, (m, n))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    got = kq.dequantize(enc.params, kq.to_device(enc.sections, dev), (m, n)).cpu().numpy()
    assert _same_bits(got, ref)
    prep = kq.prepare(enc.params, enc.sections, (m, n), dev)
    x = torch.from_numpy(rng.standard_normal((2, n)).astype(np.float32)).to(dev)
    y = kq.matvec(prep, x).cpu().numpy().astype(np.float64)
    want = x.cpu().numpy().astype(np.float64) @ ref.T.astype(np.float64)
    assert np.linalg.norm(y - want) <= 1e-5 * max(np.linalg.norm(want), 1e-6)


def _relerr(y: Any, want: np.ndarray) -> float:
    return float(np.linalg.norm(y.double().cpu().numpy() - want) / max(np.linalg.norm(want), 1e-30))


def _check_fused(kq: Any, enc: Any, m: int, n: int, batch: int, split: int | None, seed: int,
                 e8p: str = "sign_table") -> None:
    """Fused matvec (both transforms, GEMV; FMAs at batch 1, tl.dot at 2..16) vs float64 x @ W_decoded.T."""
    import torch

    ref = decode(enc.params, enc.sections, (m, n)).astype(np.float64)
    prep = kq.prepare(enc.params, enc.sections, (m, n), "cpu")
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((batch, n)).astype(np.float32))
    bias = torch.from_numpy(rng.standard_normal(m).astype(np.float32))
    cfg = kq.GemvConfig(BM=16 if m <= 32 else 64, NU=16, NG=16, split=split, e8p=e8p)
    want = x.double().numpy() @ ref.T + bias.double().numpy()
    assert _relerr(kq.matvec(prep, x, bias, cfg), want) <= 1e-5
    xh = x.half()
    y = kq.matvec(prep, xh, None, cfg)
    assert y.dtype == torch.float16 and y.shape == (batch, m)
    assert _relerr(y, xh.double().numpy() @ ref.T) <= 4e-3
    assert _relerr(kq.matvec(prep, x[0], None, cfg), want[0] - bias.double().numpy()) <= 1e-5


kdims = st.tuples(st.sampled_from([1, 3, 5, 7]), st.integers(0, 4)).map(lambda t: t[0] << t[1])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(m=kdims, n=kdims, bits=st.integers(1, 8), seed=st.integers(0, 999), batch=st.sampled_from([1, 3, 16]),
       split=st.sampled_from([None, 2]))
def test_fused_grid_matvec(kq: Any, m: int, n: int, bits: int, seed: int, batch: int, split: int | None) -> None:
    """v1 grid codes, K * 2^k dimensions on both sides (explicit factors), batch 1..16, column split."""
    enc = quantize_quip(_weight(seed, m, n), bits=bits, seed=seed)
    _check_fused(kq, enc, m, n, batch, split, seed)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(m=kdims, n=st.sampled_from([8, 24, 40, 56, 128]), seed=st.integers(0, 999), su_dt=diag_dtypes,
       sv_dt=diag_dtypes, batch=st.sampled_from([1, 2, 3, 16]), split=st.sampled_from([None, 3]),
       decode=st.sampled_from(["sign_table", "sign_arith", "gather8", "h2", "h2_arith", "auto"]))
def test_fused_e8p_matvec(kq: Any, m: int, n: int, seed: int, su_dt: str, sv_dt: str, batch: int,
                          split: int | None, decode: str) -> None:
    """v2 E8P12: every code value (random codes), real or sign diagonals, K * 2^k dimensions, each GEMV decode
    (h2*: the f16x2 kernel for f16 x at batch 1, the f32 kernel otherwise)."""
    rng = np.random.default_rng(seed)
    enc = quantize_quip(_weight(seed, m, n), codebook="e8p12", seed=seed)
    enc.sections["codes"] = rng.integers(0, 1 << 16, enc.sections["codes"].shape).astype(np.uint16)
    enc.sections["su"] = _diag(rng, enc.sections["su"], su_dt)
    enc.sections["sv"] = _diag(rng, enc.sections["sv"], sv_dt)
    _check_fused(kq, enc, m, n, batch, split, seed, decode)


def test_e8p_packed_rows_are_the_code_points(kq: Any) -> None:
    """Every 16-bit code: the packed row of the GEMV (both sign paths, as the kernel reads it) gives t exactly."""
    from spqrfmt.decoder import e8p

    ab, sg = (t.numpy().astype(np.int64) for t in kq.e8p_packed_tables("cpu"))
    c = np.arange(1 << 16, dtype=np.int64)
    a, s = c >> 8, c & 255
    x = (s | (s << 12)) & 0x000F000F  # the arithmetic spread of _e8p_packed, in int64
    x = (x | (x << 6)) & 0x03030303
    x = (x | (x << 3)) & 0x11111111
    p = ((x * 0x11111111) >> 28) & 1
    arith = (x * 14) ^ (-p & 15)
    assert np.array_equal(arith & 0xFFFFFFFF, sg[s] & 0xFFFFFFFF)
    row = ab[a] ^ sg[s]
    row = row - (row & 1) * 0x11111112
    t = np.stack([(((row >> (4 * ((i >> 1) | ((i & 1) << 2)))) & 0xF) * 2 - 13) for i in range(8)], 1)
    assert np.array_equal(t, e8p.code_points(c).astype(np.int64))


@pytest.mark.parametrize("m, n, e8p", [(16, 256, True), (256, 24, False), (48, 1536, True)])
def test_fused_matvec_tensor_core_hadamard(kq: Any, m: int, n: int, e8p: bool) -> None:
    """Blocks of 2^8 and more take the two-dot Hadamard (H_R V H_C), with and without an explicit factor."""
    kw = {"codebook": "e8p12"} if e8p else {"bits": 2}
    enc = quantize_quip(_weight(1, m, n), seed=1, **kw)
    _check_fused(kq, enc, m, n, 2, None, 1)


@pytest.mark.parametrize("decode", ["h2", "h2_arith"])
@pytest.mark.parametrize("m,n,split", [(24, 8, None), (16, 40, 3), (48, 1536, None), (8, 24, 5)])
def test_fused_e8p_f16x2_matvec_at_batch_one(kq: Any, decode: str, m: int, n: int, split: int | None) -> None:
    """The f16x2 E8P12 GEMV (f16 x, one row; odd tile counts per split; K * 2^k inputs) vs float64."""
    rng = np.random.default_rng(m + n)
    enc = quantize_quip(_weight(m, m, n), codebook="e8p12", seed=1)
    enc.sections["codes"] = rng.integers(0, 1 << 16, enc.sections["codes"].shape).astype(np.uint16)
    _check_fused(kq, enc, m, n, 1, split, 4, decode)


def test_fused_transform_matches_exact_transform_and_large_block_fallback(kq: Any, monkeypatch: Any) -> None:
    """_rotate (in-register blocks + factor) equals the exact staged transform to f32 rounding; blocks above
    the register limit go through the staged kernels."""
    import torch

    rng = np.random.default_rng(3)
    for a, k in ((1, 6), (3, 4), (5, 0), (1, 9), (3, 3), (7, 5), (17, 2)):
        d = a << k
        x = torch.from_numpy(rng.standard_normal((3, d)).astype(np.float32))
        f = torch.from_numpy(random_orthogonal(a, rng).astype(np.float32)) if a > 1 else None
        x0 = x.clone()
        want = kq.transform(x.clone(), True, k, f).double()
        tol = 1e-5 * float(want.abs().max())
        for limit, kernel in ((14, "wht"), (14, "had"), (2, "wht")):
            monkeypatch.setattr(kq, "_HAD_MAX_LOG2", limit)
            out = torch.empty((3, d + 5), dtype=torch.float32)
            kq._rotate(x, out, d, k, f, None, None, None, 0, kernel)
            assert float((out[:, :d].double() - want).abs().max()) <= tol, (a, k, kernel)
            if d % 8 == 0:  # the E8P12 GEMV's coordinate-major order: x[8g + i] at i * gp + g
                gp = d // 8 + 2
                out = torch.zeros((3, 8 * gp), dtype=torch.float32)
                kq._rotate(x, out, d, k, f, None, None, None, gp, kernel)
                got = out.view(3, 8, gp)[:, :, :d // 8].transpose(1, 2).reshape(3, d)
                assert float((got.double() - want).abs().max()) <= tol
                assert not out.view(3, 8, gp)[:, :, d // 8:].any()
            assert torch.equal(x, x0)  # the input is never transformed in place


def test_one_launch_transform_fuses_the_diagonal_scales_bias_and_cast(kq: Any) -> None:
    """_wht_kernel with pre (su), post (sv / prescale), bias and an f16 output == the staged transform, then the
    same steps in float64 (one f16 rounding)."""
    import torch

    rng = np.random.default_rng(8)
    for a, k in ((1, 8), (3, 6), (1, 4)):
        d = a << k
        x = torch.from_numpy(rng.standard_normal((2, d)).astype(np.float32)).half()
        f = torch.from_numpy(random_orthogonal(a, rng).astype(np.float32)) if a > 1 else None
        pre = torch.from_numpy(rng.uniform(0.5, 1.5, d).astype(np.float32)).half()
        post = torch.from_numpy(rng.uniform(0.5, 1.5, d).astype(np.float32))
        bias = torch.from_numpy(rng.standard_normal(d).astype(np.float32)).half()
        z = kq.transform(x.float() * pre.float(), True, k, f).double()
        want = z * post.double() + bias.double()
        out = torch.empty((2, d), dtype=torch.float16)
        kq._rotate(x, out, d, k, f, pre, post, bias, 0, "wht")
        err = float((out.double() - want).abs().max())
        assert err <= 2e-3 * float(want.abs().max()), (a, k, err)


def test_fast_exact_transform_is_bit_identical_to_the_staged_one(kq: Any) -> None:
    """transform_fast (rows: all stages in one launch; columns: 4 stages per launch) == the staged kernels, bitwise."""
    import torch

    rng = np.random.default_rng(5)
    for a, k, other in ((1, 7, 3), (3, 5, 2), (1, 9, 1), (5, 0, 4), (7, 2, 5), (1, 1, 9)):
        d = a << k
        f = torch.from_numpy(random_orthogonal(a, rng).astype(np.float32)) if a > 1 else None
        for along_rows in (True, False):
            shape = (other, d) if along_rows else (d, other)
            x = torch.from_numpy((rng.standard_normal(shape) * 10).astype(np.float32))
            x[0, 0] = -0.0
            want = kq.transform(x.clone(), along_rows, k, f)
            got = kq.transform_fast(x.clone(), along_rows, k, f)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (a, k, along_rows)


def test_fused_launch_is_size_checked(kq: Any) -> None:
    import torch

    enc = quantize_quip(_weight(2, 8, 24), bits=3, seed=2)
    prep = kq.prepare(enc.params, enc.sections, (8, 24), "cpu")
    with pytest.raises(ValueError, match="features|shape"):
        kq.matvec(prep, torch.zeros(2, 25))
    with pytest.raises(ValueError, match="bias"):
        kq.matvec(prep, torch.zeros(2, 24), torch.zeros(9))
    prep.prescale = prep.prescale[:-1]
    with pytest.raises(ValueError, match="layout"):
        kq.matvec(prep, torch.zeros(1, 24))
    prep = kq.prepare(enc.params, enc.sections, (8, 24), "cpu")
    prep.sections["scale"] = prep.sections["scale"][:7]
    with pytest.raises(ValueError, match="scale"):
        kq.matvec(prep, torch.zeros(1, 24))
    with pytest.raises(ValueError, match="factor"):
        kq._rotate(torch.zeros(1, 24), torch.zeros(1, 24), 24, 3, None, None, None, None)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_v2_triton_special_values(kq: Any) -> None:
    """Signed zeros, inf and NaN in the scale and the diagonals: Triton == Numba (NaN as any NaN)."""
    rng = np.random.default_rng(3)
    m, n = 6, 16
    secs = {"codes": rng.integers(0, 1 << 16, (m, n // 8)).astype(np.uint16),
            "scale": np.array([0.0, -0.0, 1.0, np.inf, 2.0, 1e-38], np.float32),
            "su": np.array([1, -1, 0.0, -0.0, np.inf, 2, 0.5, np.nan] * 2, np.float16),
            "sv": np.array([1, -1, -0.0, 3, 1, 1e-45], np.float32)}
    params = {"codebook": "e8p12", "log2_hn": 4, "log2_hm": 1, "a_n": 1, "a_m": 3}
    secs["factor_m"] = random_orthogonal(3, rng).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = decode(params, secs, (m, n))
    got = kq.dequantize(params, kq.to_device(secs, "cpu"), (m, n)).numpy()
    assert np.isnan(ref).any() and np.array_equal(np.isnan(ref), np.isnan(got))
    fin = ~np.isnan(ref)
    assert np.array_equal(ref[fin].view(np.uint32), got[fin].view(np.uint32))


def test_v1_record_with_stray_codebook_key_stays_v1(tmp_path: Path, kq: Any) -> None:
    """v1 ignores unknown params (§2): a 'codebook' key in a v1 record changes nothing, in either decoder."""
    enc = quantize_quip(_weight(6, 8, 16), bits=2, seed=2)
    enc.params["codebook"] = "e8p12"
    path = tmp_path / "v1.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("w", enc)
    with spqrfmt.open(path) as f:
        assert f["w"].codec_version == 1 and _same_bits(f["w"].decode(), enc.dequantized)
        secs = kq.to_device({k: np.array(v) for k, v in f["w"].arrays().items()}, "cpu")
        got = kq.dequantize(dict(f["w"].params), secs, (8, 16)).numpy()
    assert _same_bits(got, enc.dequantized)


def test_v1_only_reader_rejects_v2_and_serves_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spqrfmt.codecs import quip as qc

    path = tmp_path / "mixed.spqr"
    e = quantize_quip(_weight(1, 8, 16), codebook="e8p12")
    g = quantize_quip(_weight(1, 8, 16), bits=2)
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("v2", e)
        wr.add_encoded("v1", g)
    monkeypatch.setattr(qc.CODEC, "versions", (1,))
    with spqrfmt.open(path) as f:
        assert _same_bits(f["v1"].decode(), g.dequantized)
        with pytest.raises(spqrfmt.SpqrFormatError) as ei:
            f["v2"].decode()
    assert ei.value.code == ErrorCode.UNSUPPORTED_CODEC_VERSION


@pytest.fixture(scope="module")
def blob2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    enc = quantize_quip(_weight(2, 12, 40), codebook="e8p12")  # m = 3 * 4, n = 5 * 8: both factors present
    enc.sections["su"] = enc.sections["su"].astype(np.float16)
    path = tmp_path_factory.mktemp("q2") / "ok.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("w", enc)
    return path.read_bytes()


def _f16_section(t: dict[str, Any], role: str, dtype: str) -> None:
    t["sections"][role].update(dtype=dtype)


@pytest.mark.parametrize("edit, code", [
    (lambda t: t["params"].pop("codebook"), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].update(codebook="E8P12"), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].update(codebook=7), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].update(bits=2), ErrorCode.BAD_PARAMS),  # bits must be absent with e8p12
    (lambda t: t["params"].update(codebook="grid"), ErrorCode.BAD_PARAMS),  # grid needs bits
    (lambda t: t["params"].update(codebook="grid", bits=8), ErrorCode.BAD_SECTION_LAYOUT),  # codes are u16
    (lambda t: t["params"].update(log2_hn=4), ErrorCode.BAD_PARAMS),
    (lambda t: t.update(shape=[12, 36]), ErrorCode.BAD_SHAPE),  # 36 is not a multiple of 8
    (lambda t: t.update(codec_version=3), ErrorCode.UNSUPPORTED_CODEC_VERSION),
    (lambda t: t.update(codec_version=1), ErrorCode.BAD_PARAMS),  # v1 has no codebook: bits missing
    (lambda t: t["sections"]["codes"].update(dtype="u32", shape=[12, 2], length=96), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["codes"].update(dtype="i16"), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["codes"].update(shape=[5, 12]), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["su"].update(dtype="bf16"), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["sv"].update(dtype="u8"), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["sv"].update(dtype="f64", shape=[1], length=8), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"].pop("factor_m"), ErrorCode.BAD_SECTION_SET),
    (lambda t: t["sections"].pop("codes"), ErrorCode.BAD_SECTION_SET),
])
def test_v2_bad_record(tmp_path: Path, blob2: bytes, edit: Any, code: ErrorCode) -> None:
    header, data = split(blob2)
    edit(header["tensors"][0])
    _expect(tmp_path, header, data, code)


def test_v2_bad_sign_byte_and_free_real_values(tmp_path: Path, blob2: bytes) -> None:
    header, data = split(blob2)
    s = header["tensors"][0]["sections"]["sv"]
    assert s["dtype"] == "i8"
    data[s["offset"] + 2] = 0
    restamp(header, data)
    _expect(tmp_path, header, data, ErrorCode.BAD_VALUE)
    header, data = split(blob2)
    s = header["tensors"][0]["sections"]["su"]
    data[s["offset"]:s["offset"] + 4] = np.array([np.nan, 0.0], np.float16).tobytes()  # f16: any value decodes
    restamp(header, data)
    path = tmp_path / "nan.spqr"
    path.write_bytes(assemble(header, bytes(data)))
    spqrfmt.validate(path)
    with spqrfmt.open(path) as f:
        w = f["w"].decode()
    assert np.isnan(w[:, 0]).all() and np.all(w[:, 1] == 0)


rvq_rho = st.sampled_from([float(np.float32(3.45)), float(np.float32(2.04)), 2.0**-16, 2.0**16, 0.75])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(m=small, n=st.sampled_from([8, 16, 24, 40, 64]), seed=st.integers(0, 999), su_dt=diag_dtypes,
       sv_dt=diag_dtypes, rvq4=st.booleans(), rho=rvq_rho)
def test_v2_rvq_triton_matches_numba_and_refreader(tmp_path: Path, kq: Any, m: int, n: int, seed: int, su_dt: str,
                                                   sv_dt: str, rvq4: bool, rho: float) -> None:
    """quip.md §10.11: Numba == Triton (interpreter) == the conformance refreader, bit for bit; matvec agrees."""
    import torch

    from spqrfmt.codecs.quip import checked_params
    from spqrfmt.conformance import refreader

    rng = np.random.default_rng(seed)
    enc = quantize_quip(_weight(seed, m, n), codebook="e8p12", seed=seed)
    shape = (m, n // 8)
    enc.sections["codes"] = rng.integers(0, 1 << 16, shape).astype(np.uint16)
    enc.sections["codes2"] = (rng.integers(0, 1 << 16, shape).astype(np.uint16) if rvq4 else
                              rng.integers(0, 256, shape).astype(np.uint8))
    enc.sections["su"] = _diag(rng, enc.sections["su"], su_dt)
    enc.sections["sv"] = _diag(rng, enc.sections["sv"], sv_dt)
    enc.params.update(codebook="e8p12_rvq4" if rvq4 else "e8p12_rvq3", resid_scale=rho)
    path = tmp_path / f"rvq{seed}.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("w", enc)
    with spqrfmt.open(path) as f:
        ref = f["w"].decode()
        p = checked_params(f["w"].record)
    assert p["resid_scale"] == np.float32(rho)
    assert _same_bits(refreader.open_file(path).decode("w"), ref)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    got = kq.dequantize(p, kq.to_device(enc.sections, dev), (m, n)).cpu().numpy()
    assert _same_bits(got, ref)
    prep = kq.prepare(p, enc.sections, (m, n), dev)
    x = torch.from_numpy(rng.standard_normal((2, n)).astype(np.float32)).to(dev)
    y = kq.matvec(prep, x).cpu().numpy().astype(np.float64)
    want = x.cpu().numpy().astype(np.float64) @ ref.T.astype(np.float64)
    assert np.linalg.norm(y - want) <= 1e-5 * max(np.linalg.norm(want), 1e-6)


def test_rvq_second_stage_is_the_residual() -> None:
    """With codes2 = the zero point of each second-stage table the residual codebooks decode as plain e8p12,
    and one step of the second stage moves a value by exactly (u q) / rho rounded (quip.md §10.11)."""
    from spqrfmt.decoder.e81b import e81b_table
    from spqrfmt.decoder.quip import e8p_values, rvq_values

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 1 << 16, (4, 3)).astype(np.uint16)
    scale = np.ones(4, np.float32)
    zero = int(np.flatnonzero((e81b_table() == 0).all(axis=1))[0])
    plain = e8p_values(codes, scale, 24)
    assert _same_bits(rvq_values("e8p12_rvq3", codes, np.full((4, 3), zero, np.uint8), 2.04, scale, 24), plain)
    rho = np.float32(3.45)
    got = rvq_values("e8p12_rvq4", codes, codes, float(rho), scale, 24)
    assert _same_bits(got, (plain + (plain / rho).astype(np.float32)).astype(np.float32))


def test_residual_codebooks_have_no_encoder() -> None:
    """The files accept e8p12_rvq4/3 (imported from QuIP#); the converter's --quip-codebook does not offer them."""
    from spqrfmt.codecs.quip import CODEBOOKS, Options

    for cb in ("e8p12_rvq4", "e8p12_rvq3"):
        assert cb in CODEBOOKS
        with pytest.raises(ValueError, match="unknown quip codebook"):
            Options(quip_codebook=cb, bits=2).check()
