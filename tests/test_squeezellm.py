"""Codec ``squeezellm`` v1: encoder -> file -> reader round trip, k-means properties, Triton parity, hostile input.

The decoded tensor must be bit-identical to the encoder's own dequantized
matrix (spec/codecs/squeezellm.md §5), and the Triton interpreter decode
bit-identical to the Numba reference.
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
from spqrfmt.decoder.squeezellm import decode
from spqrfmt.encoder.squeezellm import quantize_squeezellm

from conftest import assemble, kernels_module, restamp, split

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32),
                                                                                      b.view(np.uint32))


def _weight(seed: int, m: int, n: int, outliers: str) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)).astype(np.float32)
    mask = None
    if outliers == "some":
        mask = rng.random((m, n)) < 0.1
        w[mask] *= 20.0
    elif outliers == "rows":
        mask = np.zeros((m, n), dtype=bool)
        mask[rng.integers(0, m)] = True
    return w, mask


def _write_read(tmp: Path, enc: Any) -> tuple[np.ndarray, np.ndarray | None, float]:
    path = tmp / "t.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("w", enc)
    with spqrfmt.open(path) as f:
        t = f["w"]
        return t.decode(), t.bias(), t.bits_per_param


@SETTINGS
@given(m=st.integers(1, 24), n=st.integers(1, 90), bits=st.integers(1, 8), seed=st.integers(0, 2**31),
       outliers=st.sampled_from(["none", "auto", "some", "rows"]), sens=st.sampled_from(["none", "row", "full"]),
       bias=st.booleans())
def test_round_trip_bit_exact(tmp_path: Path, m: int, n: int, bits: int, seed: int, outliers: str, sens: str,
                              bias: bool) -> None:
    w, mask = _weight(seed, m, n, outliers)
    rng = np.random.default_rng(seed + 1)
    s = {"none": None, "row": rng.random(n), "full": rng.random((m, n))}[sens]
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    enc = quantize_squeezellm(w, bits=bits, sensitivity=s, outlier_mask=mask,
                              outlier_fraction=0.02 if outliers == "auto" else 0.0, bias=b)
    assert enc.codec == "squeezellm" and enc.sections["lut"].dtype == np.float16
    assert enc.sections["lut"].shape == (m, 1 << bits)
    got, got_bias, bpp = _write_read(tmp_path, enc)
    assert _same_bits(got, enc.dequantized)
    assert _same_bits(decode(enc.params, enc.sections, (m, n)), enc.dequantized)
    assert (got_bias is None) == (b is None)
    if b is not None:
        assert np.array_equal(got_bias, b)
    assert bpp == pytest.approx(enc.bits_per_param)
    # Residual positions decode to w within the f16 rounding of the residual (the LUT value is exact).
    rp = enc.sections["outlier_row_ptr"].astype(np.int64)
    rows = np.repeat(np.arange(m), np.diff(rp))
    cols = enc.sections["outlier_col"].astype(np.int64)
    if cols.size:
        err = np.abs(got[rows, cols] - w[rows, cols])
        lut_val = got[rows, cols] - enc.sections["outlier_val"].astype(np.float32)
        bound = np.abs(w[rows, cols] - lut_val) * 2.0**-10 + 2.0**-24 + np.abs(w[rows, cols]) * 2.0**-23
        assert np.all(err <= bound)


def test_exact_when_row_has_few_distinct_values() -> None:
    """2^b >= distinct values (all f16-exact): k-means finds them all, the LUT reproduces the row exactly."""
    rng = np.random.default_rng(3)
    levels = np.array([-1.5, -0.25, 0.0, 0.75, 3.0, 8.5, 100.0, -7.0], dtype=np.float32)
    w = levels[rng.integers(0, 8, size=(6, 200))]
    enc = quantize_squeezellm(w, bits=3, outlier_fraction=0.0)
    assert np.array_equal(enc.dequantized, w)
    assert np.all(np.diff(enc.sections["lut"].astype(np.float32), axis=1) >= 0)  # sorted tables


def test_sensitivity_pulls_centroids() -> None:
    """A heavily weighted weight is reproduced far better than under plain k-means."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 256)).astype(np.float32)
    j = 17
    sens = np.ones_like(w)
    sens[:, j] = 1e4
    plain = quantize_squeezellm(w, bits=2, outlier_fraction=0.0)
    weighted = quantize_squeezellm(w, bits=2, sensitivity=sens, outlier_fraction=0.0, sensitive_fraction=0.0)
    e_plain = np.abs(plain.dequantized[:, j] - w[:, j])
    e_weighted = np.abs(weighted.dequantized[:, j] - w[:, j])
    assert e_weighted.mean() < 0.05 * max(e_plain.mean(), 1e-6)
    # Weighted error overall is what weighted k-means minimizes.
    def werr(d: np.ndarray) -> float:
        return float((sens * (d - w) ** 2).sum())

    assert werr(weighted.dequantized) < werr(plain.dequantized)


def test_kmeans_beats_uniform_and_is_deterministic() -> None:
    rng = np.random.default_rng(9)
    w = (rng.standard_t(3, size=(16, 512))).astype(np.float32)
    a = quantize_squeezellm(w, bits=3, outlier_fraction=0.0)
    b = quantize_squeezellm(w, bits=3, outlier_fraction=0.0)
    for k in a.sections:
        assert np.array_equal(a.sections[k], b.sections[k])
    from spqrfmt.encoder.spqr import quantize_spqr

    rtn = quantize_spqr(w, bits=3, group_size=512, scale_bits=16, zero_bits=16, outlier_fraction=0.0)
    err = np.linalg.norm(a.dequantized - w)
    assert err < 0.8 * np.linalg.norm(rtn.dequantized - w)
    # Outliers as additive residuals lower the error further.
    c = quantize_squeezellm(w, bits=3, outlier_fraction=0.01)
    assert np.linalg.norm(c.dequantized - w) < err
    assert c.info["outliers"] == round(0.01 * w.size)


# ---- Triton (interpreter on CPU) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ks() -> Any:
    return kernels_module("squeezellm")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 20), n=st.integers(1, 70), bits=st.sampled_from([1, 2, 3, 4, 5, 8]), seed=st.integers(0, 999),
       outliers=st.sampled_from(["none", "some", "rows"]))
def test_triton_matches_numba(ks: Any, m: int, n: int, bits: int, seed: int, outliers: str) -> None:
    import torch

    w, mask = _weight(seed, m, n, outliers)
    enc = quantize_squeezellm(w, bits=bits, outlier_mask=mask, outlier_fraction=0.0)
    ref = decode(enc.params, enc.sections, (m, n))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    got = ks.dequantize(enc.params, ks.to_device(enc.sections, dev), (m, n)).cpu().numpy()
    assert _same_bits(got, ref)
    half = ks.dequantize(enc.params, ks.to_device(enc.sections, dev), (m, n), torch.float16).cpu()
    assert torch.equal(half.view(torch.int16), torch.from_numpy(ref).half().view(torch.int16))
    prep = ks.prepare(enc.params, enc.sections, (m, n), dev)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((3, n)).astype(np.float32)).to(dev)
    bias = torch.arange(m, dtype=torch.float32, device=dev)
    y = ks.matvec(prep, x, bias).cpu().numpy().astype(np.float64)
    want = x.cpu().numpy().astype(np.float64) @ ref.T.astype(np.float64) + np.arange(m)
    assert np.linalg.norm(y - want) <= 1e-5 * max(np.linalg.norm(want), 1e-6)
    y1 = ks.matvec(prep, x[0]).cpu().numpy()
    assert y1.shape == (m,)
    assert np.allclose(y1, want[0] - np.arange(m), rtol=1e-5, atol=1e-5)


def _relerr(y: Any, want: np.ndarray) -> float:
    return float(np.linalg.norm(y.double().cpu().numpy() - want) / max(np.linalg.norm(want), 1e-30))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 40), n=st.integers(1, 300), bits=st.integers(1, 8), seed=st.integers(0, 999),
       outliers=st.sampled_from(["none", "some", "rows"]), batch=st.sampled_from([1, 2, 5, 16]),
       split=st.sampled_from([None, 2, 3]))
def test_fused_layout_matvec_and_dequant(ks: Any, m: int, n: int, bits: int, seed: int, outliers: str, batch: int,
                                         split: int | None) -> None:
    """The load-time layout: dequantize_prepared bit-exact in f32/f16/bf16; the fused matvec (FMA at batch 1,
    tl.dot at 2..16, column-split) within f32 accumulation error of float64 (1e-5) with f32 activations and
    within 4e-3 with f16 activations (the f16 result rounding alone is up to 2^-11)."""
    import torch

    w, mask = _weight(seed, m, n, outliers)
    enc = quantize_squeezellm(w, bits=bits, outlier_mask=mask, outlier_fraction=0.0, max_iter=5)
    ref = decode(enc.params, enc.sections, (m, n))
    prep = ks.prepare(enc.params, enc.sections, (m, n), "cpu")
    assert "codes" not in prep.sections and prep.words.shape[1] % 64 == 0
    assert _same_bits(ks.dequantize_prepared(prep, torch.float32).numpy(), ref)
    for dt in (torch.float16, torch.bfloat16):
        got = ks.dequantize_prepared(prep, dt)
        assert torch.equal(got.view(torch.int16), torch.from_numpy(ref).to(dt).view(torch.int16))
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((batch, n)).astype(np.float32))
    bias = torch.from_numpy(rng.standard_normal(m).astype(np.float32))
    cfg = ks.GemvConfig(BM=16, NU=16, split=split)
    want = x.double().numpy() @ ref.astype(np.float64).T + bias.double().numpy()
    assert _relerr(ks.matvec(prep, x, bias, cfg), want) <= 1e-5
    xh = x.half()
    y = ks.matvec(prep, xh, bias.half(), cfg)
    assert y.dtype == torch.float16 and y.shape == (batch, m)
    assert _relerr(y, xh.double().numpy() @ ref.astype(np.float64).T + bias.half().double().numpy()) <= 4e-3
    y1 = ks.matvec(prep, x[0], None, cfg)
    assert y1.shape == (m,) and _relerr(y1, want[0] - bias.double().numpy()) <= 1e-5


def test_fused_matvec_slices_large_batches_and_bf16(ks: Any) -> None:
    import torch

    w, _ = _weight(4, 12, 96, "none")
    enc = quantize_squeezellm(w, bits=3, outlier_fraction=0.02)
    ref = decode(enc.params, enc.sections, (12, 96)).astype(np.float64)
    prep = ks.prepare(enc.params, enc.sections, (12, 96), "cpu")
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((35, 96)).astype(np.float32))
    assert _relerr(ks.matvec(prep, x), x.double().numpy() @ ref.T) <= 1e-5  # 16 + 16 + 3 rows
    xb = x[:4].bfloat16()
    yb = ks.matvec(prep, xb)
    assert yb.dtype == torch.bfloat16 and _relerr(yb, xb.double().numpy() @ ref.T) <= 4e-3


def test_repacked_fields_hold_every_code(ks: Any) -> None:
    """Field c of word w is column c * nw + w; padding fields are zero."""
    import torch

    from spqrfmt.kernels._common import repack_fields, unpack_rows

    rng = np.random.default_rng(0)
    for bits, n in ((3, 77), (1, 33), (5, 10), (8, 300)):
        from spqrfmt.encoder.packing import pack_rows

        q = rng.integers(0, 1 << bits, (4, n))
        words, wst = repack_fields(torch.from_numpy(pack_rows(q, bits).view(np.int32)), n, bits)
        f, nw = 32 // wst, words.shape[1]
        assert nw % 64 == 0 and f * nw >= n
        w64 = words.to(torch.int64) & 0xFFFFFFFF
        fields = torch.stack([(w64 >> (c * wst)) & ((1 << wst) - 1) for c in range(f)], dim=1).reshape(4, -1)
        assert torch.equal(fields[:, :n], torch.from_numpy(q)) and not fields[:, n:].any()
        assert torch.equal(unpack_rows(torch.from_numpy(pack_rows(q, bits).view(np.int32)), n, bits),
                           torch.from_numpy(q))


def test_fused_launch_is_size_checked(ks: Any) -> None:
    import torch

    w, _ = _weight(2, 8, 40, "some")
    enc = quantize_squeezellm(w, bits=4, outlier_fraction=0.05)
    prep = ks.prepare(enc.params, enc.sections, (8, 40), "cpu")
    with pytest.raises(ValueError, match="features|shape"):
        ks.matvec(prep, torch.zeros(2, 41))
    with pytest.raises(ValueError, match="bias"):
        ks.matvec(prep, torch.zeros(2, 40), torch.zeros(7))
    prep.words = prep.words[:, :32]
    with pytest.raises(ValueError, match="words"):
        ks.matvec(prep, torch.zeros(1, 40))
    prep = ks.prepare(enc.params, enc.sections, (8, 40), "cpu")
    prep.o_col = prep.o_col[:-1]
    with pytest.raises(ValueError, match="o_col"):
        ks.matvec(prep, torch.zeros(1, 40))
    secs = ks.to_device(enc.sections, "cpu")
    secs["outlier_row_ptr"] = secs["outlier_row_ptr"][:-1]
    with pytest.raises(ValueError, match="outlier_row_ptr"):
        ks.dequantize(enc.params, secs, (8, 40))


# ---- hostile input ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    w, mask = _weight(11, 6, 40, "some")
    enc = quantize_squeezellm(w, bits=3, outlier_mask=mask)
    assert enc.info["outliers"] >= 4
    path = tmp_path_factory.mktemp("sq") / "ok.spqr"
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


def _section(header: dict[str, Any], data: bytearray, role: str) -> np.ndarray:
    s = header["tensors"][0]["sections"][role]
    dt = {"u32": np.uint32, "u16": np.uint16, "f16": np.float16}[s["dtype"]]
    return np.frombuffer(data, dtype=dt, count=int(np.prod(s["shape"])), offset=s["offset"])


def test_blob_is_valid(tmp_path: Path, blob: bytes) -> None:
    p = tmp_path / "ok.spqr"
    p.write_bytes(blob)
    spqrfmt.validate(p)


@pytest.mark.parametrize("edit, code", [
    (lambda t: t["params"].update(bits=9), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].update(bits=0), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].pop("bits"), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].update(bits=True), ErrorCode.BAD_PARAMS),
    (lambda t: t["params"].update(bits=2), ErrorCode.BAD_SECTION_LAYOUT),  # lut [m, 8] no longer [m, 4]
    (lambda t: t.update(dtype="i8"), ErrorCode.BAD_PARAMS),
    (lambda t: t.update(shape=[6, 40, 1]), ErrorCode.BAD_SHAPE),
    (lambda t: t.update(codec_version=2), ErrorCode.UNSUPPORTED_CODEC_VERSION),
    (lambda t: t["sections"].pop("lut"), ErrorCode.BAD_SECTION_SET),
    (lambda t: t["sections"].pop("outlier_row_ptr"), ErrorCode.BAD_SECTION_SET),
    (lambda t: t["sections"].update(perm={"dtype": "u32", "shape": [0], "offset": 0, "length": 0, "crc32": 0}),
     ErrorCode.BAD_SECTION_SET),
    (lambda t: t["sections"]["lut"].update(dtype="bf16"), ErrorCode.BAD_SECTION_LAYOUT),  # v1 LUTs are f16 only
    (lambda t: t["sections"]["outlier_val"].update(dtype="i16"), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["codes"].update(dtype="i32"), ErrorCode.BAD_SECTION_LAYOUT),
    (lambda t: t["sections"]["lut"].update(shape=[8, 6]), ErrorCode.BAD_SECTION_LAYOUT),
])
def test_bad_record(tmp_path: Path, blob: bytes, edit: Any, code: ErrorCode) -> None:
    header, data = split(blob)
    edit(header["tensors"][0])
    _expect(tmp_path, header, data, code)


def _bad_row_ptr_start(h: dict[str, Any], d: bytearray) -> None:
    _section(h, d, "outlier_row_ptr")[0] = 1


def _bad_row_ptr_decrease(h: dict[str, Any], d: bytearray) -> None:
    rp = _section(h, d, "outlier_row_ptr")
    rp[2], rp[3] = rp[3] + 1, rp[2]


def _bad_col_range(h: dict[str, Any], d: bytearray) -> None:
    _section(h, d, "outlier_col")[0] = 40


def _bad_col_order(h: dict[str, Any], d: bytearray) -> None:
    rp = _section(h, d, "outlier_row_ptr").astype(np.int64)
    r = int(np.argmax(np.diff(rp) >= 2))
    c = _section(h, d, "outlier_col")
    c[rp[r] + 1] = c[rp[r]]


@pytest.mark.parametrize("edit, code", [
    (_bad_row_ptr_start, ErrorCode.BAD_CSR),
    (_bad_row_ptr_decrease, ErrorCode.BAD_CSR),
    (_bad_col_range, ErrorCode.BAD_INDEX),
    (_bad_col_order, ErrorCode.BAD_INDEX),
])
def test_bad_content(tmp_path: Path, blob: bytes, edit: Any, code: ErrorCode) -> None:
    header, data = split(blob)
    edit(header, data)
    restamp(header, data)
    _expect(tmp_path, header, data, code)


def test_corrupt_lut_is_checksum_error(tmp_path: Path, blob: bytes) -> None:
    header, data = split(blob)
    off = header["tensors"][0]["sections"]["lut"]["offset"]
    data[off] ^= 0x40
    _expect(tmp_path, header, data, ErrorCode.SECTION_CHECKSUM)


def test_spec_worked_example() -> None:
    """spec/codecs/squeezellm.md §8, byte for byte and bit for bit."""
    from spqrfmt.encoder.packing import pack_rows

    lut = np.frombuffer(bytes.fromhex("00bc00b40034003c00c0000000380042"), dtype=np.float16)
    secs = {
        "lut": lut.reshape(2, 4),
        "codes": pack_rows(np.array([[0, 1, 2, 3, 3], [2, 1, 0, 0, 3]]), 2),
        "outlier_row_ptr": np.array([0, 1, 2], dtype=np.uint32),
        "outlier_col": np.array([3, 4], dtype=np.uint16),
        "outlier_val": np.frombuffer(bytes.fromhex("662e0100"), dtype=np.float16),
    }
    assert secs["codes"].tobytes().hex() == "e4030000" + "06030000"
    got = decode({"bits": 2}, secs, (2, 5))
    want = [0xBF800000, 0xBE800000, 0x3E800000, 0x3F8CCC00, 0x3F800000,
            0x3F000000, 0x00000000, 0xC0000000, 0xC0000000, 0x40400000]
    assert got.view(np.uint32).ravel().tolist() == want


# ---- encoder internals: the fast paths equal their plain definitions --------------------------------------


def _ties_weight(rng: np.random.Generator, m: int, n: int, kind: int) -> np.ndarray:
    w = rng.standard_normal((m, n)).astype(np.float32)
    if kind == 1:  # few distinct values: ties at every threshold, signed zeros
        w = (np.round(w * 2) / 2).astype(np.float32)
        w[rng.random((m, n)) < 0.2] = -0.0
    elif kind == 2:  # wide dynamic range
        w = (w * np.exp2(rng.integers(-30, 10, (m, n)))).astype(np.float32)
    elif kind == 3:  # few distinct values within one binade: distinct but close, and ties
        w = (np.sign(w) * (1 + rng.integers(0, 4, (m, n)) * 2.0**-20)).astype(np.float32)
    return w


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 30), n=st.integers(1, 60), frac=st.floats(0.0, 1.2), seed=st.integers(0, 2**31),
       kind=st.integers(0, 3))
def test_largest_abs_mask_is_the_stable_top_set(m: int, n: int, frac: float, seed: int, kind: int) -> None:
    from spqrfmt.encoder.squeezellm import _top_mask, largest_abs_mask

    w = _ties_weight(np.random.default_rng(seed), m, n, kind)
    count = int(frac * m * n)
    want = np.zeros(m * n, dtype=bool)
    want[np.argsort(-np.abs(w).reshape(-1), kind="stable")[:count]] = True
    got = largest_abs_mask(w, count)
    assert np.array_equal(got.reshape(-1), want)
    assert np.array_equal(got, _top_mask(np.abs(w), count, np.ones((m, n), dtype=bool)))


def test_largest_abs_mask_ties_within_a_bin() -> None:
    from spqrfmt.encoder.squeezellm import largest_abs_mask

    w = np.float32([[3, -3, 2, 2, -2, 1, 3.0001]])  # 3.0001 and 3 share the histogram's bin
    got = [np.flatnonzero(largest_abs_mask(w, c)).tolist() for c in range(8)]
    assert got == [[], [6], [0, 6], [0, 1, 6], [0, 1, 2, 6], [0, 1, 2, 3, 6], [0, 1, 2, 3, 4, 6], list(range(7))]


def test_radix_sort_is_stable_and_orders_signed_zeros() -> None:
    from spqrfmt.encoder.squeezellm import _radix_sort, _sort_key

    rng = np.random.default_rng(4)
    w = _ties_weight(rng, 1, 3000, 1)[0]
    w[:5] = [np.inf, -np.inf, 2.0**-149, -(2.0**-149), 65504.0]
    keys = np.array([_sort_key(b) for b in w.view(np.uint32)], dtype=np.uint32)
    pos = np.arange(w.size, dtype=np.int64)
    k2 = keys.copy()
    _radix_sort(k2, pos, w.size, True)
    order = np.argsort(keys, kind="stable")
    assert np.array_equal(pos, order) and np.array_equal(k2, keys[order])
    vals = w[order]
    assert np.all(vals[:-1] <= vals[1:])  # the value order ...
    zeros = np.signbit(vals[vals == 0])
    assert np.all(zeros[:-1] >= zeros[1:])  # ... with -0.0 before +0.0


def _plain_lloyd(xs: np.ndarray, ws: np.ndarray, k: int, max_iter: int) -> np.ndarray:
    """The textbook loop the encoder's must equal: every midpoint searched and every mean recomputed each time,
    sums over the cluster taken from exact integers (Python's, uniform) or f64 prefix sums (weighted)."""
    from spqrfmt.encoder.squeezellm import fixed_bits

    cnt = xs.size
    cent = np.zeros(k)
    if cnt == 0:
        return cent
    uniform = ws is None
    if uniform:
        sh = fixed_bits(cnt) - np.frexp(max(abs(xs[0]), abs(xs[-1])))[1]
        ints = [int(np.rint(x * 2.0**sh)) for x in xs]
        pwx = [0]
        for v in ints:
            pwx.append(pwx[-1] + v)
        pw = np.arange(cnt + 1, dtype=np.float64)
        scale = 2.0**-sh
    else:
        pw, pwx = np.zeros(cnt + 1), np.zeros(cnt + 1)
        for i in range(cnt):
            pw[i + 1] = pw[i] + ws[i]
            pwx[i + 1] = pwx[i] + ws[i] * xs[i]
        scale = 1.0
    for j in range(k):
        cent[j] = xs[min(int(np.searchsorted(pw[1:], (j + 0.5) / k * pw[cnt], side="left")), cnt - 1)]
    for _ in range(max_iter):
        b = [0] + [int(np.searchsorted(xs, 0.5 * (cent[j] + cent[j + 1]), side="right")) for j in range(k - 1)] + [cnt]
        changed = False
        for j in range(k):
            sw = pw[b[j + 1]] - pw[b[j]]
            if sw > 0:
                c = np.float64(pwx[b[j + 1]] - pwx[b[j]]) / sw * scale
                c = xs[b[j]] if c < xs[b[j]] else xs[b[j + 1] - 1] if c > xs[b[j + 1] - 1] else c
                if c != cent[j]:  # a centroid moves when its value changes (a signed zero alone does not)
                    cent[j], changed = c, True
        if not changed:
            break
    return cent


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), bits=st.integers(1, 5), seed=st.integers(0, 2**31), kind=st.integers(0, 3),
       weighted=st.booleans(), max_iter=st.sampled_from([1, 3, 100]))
def test_lloyd_equals_the_plain_loop(n: int, bits: int, seed: int, kind: int, weighted: bool, max_iter: int) -> None:
    from spqrfmt.encoder.squeezellm import _fit_luts, fixed_bits

    rng = np.random.default_rng(seed)
    w = _ties_weight(rng, 1, n, kind) if n else np.zeros((1, 0), dtype=np.float32)
    sens = rng.random((1, n)) ** 2 if weighted else np.zeros((1, 1))
    got = _fit_luts(w.view(np.uint32), sens, np.zeros(w.shape, dtype=bool), 1 << bits, max_iter, not weighted,
                    fixed_bits(n))[0][0]
    order = np.argsort(np.array([(b ^ 0xFFFFFFFF) if b >> 31 else b | 0x80000000 for b in w[0].view(np.uint32)],
                                dtype=np.uint32), kind="stable")
    want = _plain_lloyd(w[0][order].astype(np.float64), sens[0][order] if weighted else None, 1 << bits, max_iter)
    assert got.tobytes() == want.tobytes()
    assert np.all(got[:-1] <= got[1:])  # sorted without a sort


def test_fixed_point_sums_cannot_overflow() -> None:
    from spqrfmt.encoder.squeezellm import fixed_bits

    for n in (1, 2, 4095, 4096, 14336, 1 << 20, (1 << 31) - 1):
        assert n * 2 ** fixed_bits(n) < 2**62  # each |value| <= 2^fixed_bits after scaling
