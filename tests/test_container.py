"""Round trips through the container: encoder -> Writer -> file -> reader -> Numba decode, bit for bit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spqrfmt
from spqrfmt.decoder.spqr import unpack_rows
from spqrfmt.dtypes import bf16_to_f32, f32_to_bf16
from spqrfmt.encoder.packing import pack_rows
from spqrfmt.encoder.spqr import quantize_spqr
from spqrfmt.format import ALIGNMENT, PREAMBLE_SIZE


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 70),
    bits=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_pack_unpack_roundtrip(rows: int, cols: int, bits: int, seed: int) -> None:
    codes = np.random.default_rng(seed).integers(0, 1 << bits, size=(rows, cols))
    words = pack_rows(codes, bits)
    assert words.shape == (rows, (cols * bits + 31) // 32)
    assert np.array_equal(unpack_rows(words, cols, bits), codes)
    # padding bits after the last code of each row are zero (spec §4)
    used = cols * bits
    if used % 32:
        assert np.all(words[:, -1] >> np.uint32(used % 32) == 0)


def test_pack_bit_order_matches_spec_example() -> None:
    # 3-bit codes 0..10: code 10 straddles words 0 and 1 (bits 30..32)
    codes = np.arange(11).reshape(1, -1) % 8
    w = pack_rows(codes, 3)
    stream = sum(int(c) << (3 * i) for i, c in enumerate(codes[0]))
    assert int(w[0, 0]) == stream & 0xFFFFFFFF
    assert int(w[0, 1]) == stream >> 32


@st.composite
def spqr_cases(draw: st.DrawFn) -> dict:
    m = draw(st.integers(1, 40))
    n = draw(st.integers(1, 80))
    return {
        "m": m,
        "n": n,
        "bits": draw(st.sampled_from([1, 2, 3, 4, 5, 8])),
        "group_size": draw(st.sampled_from([1, 3, 8, 16, 17, 128])),
        "scale_bits": draw(st.sampled_from([2, 3, 4, 8, 16])),
        "zero_bits": draw(st.sampled_from([2, 3, 16])),
        "stat_group_size": draw(st.sampled_from([1, 5, 16, 64])),
        "outliers": draw(st.sampled_from(["none", "some", "rows", "all"])),
        "perm": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["f16", "bf16", "f32"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@given(case=spqr_cases())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_spqr_file_roundtrip_bit_exact(case: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(case["seed"])
    m, n = case["m"], case["n"]
    w = (rng.standard_normal((m, n)) * rng.uniform(0.01, 3)).astype(np.float32)
    mask = None
    if case["outliers"] == "none":
        frac = 0.0
    elif case["outliers"] == "some":
        frac = 0.05
    else:
        frac = 0.0
        mask = np.zeros((m, n), dtype=bool)
        if case["outliers"] == "rows":  # some rows all outliers, some rows empty
            mask[:: 3] = True
        else:
            mask[:] = True
    perm = rng.permutation(n) if case["perm"] else None
    enc = quantize_spqr(w, bits=case["bits"], group_size=case["group_size"], scale_bits=case["scale_bits"],
                        zero_bits=case["zero_bits"], stat_group_size=case["stat_group_size"],
                        outlier_fraction=frac, perm=perm, outlier_mask=mask)
    path = tmp_path / "t.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("layer.weight", enc, case["dtype"])
    with spqrfmt.open(path) as f:
        t = f["layer.weight"]
        dec = t.decode()
        assert _same_bits(dec, enc.dequantized)
        assert t.bits_per_param == pytest.approx(enc.bits_per_param)
        if case["dtype"] == "f16":
            assert np.array_equal(t.decode("f16"), enc.dequantized.astype(np.float16))
    if mask is not None and mask.any():
        # replace semantics: every outlier decodes to exactly its fp16 value
        wp = w[:, perm] if perm is not None else w
        decp = dec[:, perm] if perm is not None else dec
        assert np.array_equal(decp[mask], wp[mask].astype(np.float16).astype(np.float32))


def test_rtn_error_decreases_with_bits(rng: np.random.Generator) -> None:
    w = rng.standard_normal((64, 256)).astype(np.float32)
    errs = [np.linalg.norm(quantize_spqr(w, bits=b, outlier_fraction=0).dequantized - w) / np.linalg.norm(w)
            for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True)
    assert errs[2] < 0.12  # 4-bit, β1=16 with 3-bit stats: a few percent


def test_outliers_help_heavy_tailed_weights(rng: np.random.Generator) -> None:
    w = rng.standard_normal((64, 256)).astype(np.float32)
    w[rng.random(w.shape) < 0.005] *= 40  # planted outliers
    e0 = quantize_spqr(w, bits=3, outlier_fraction=0.0).dequantized
    e1 = quantize_spqr(w, bits=3, outlier_fraction=0.01).dequantized
    assert np.linalg.norm(e1 - w) < 0.5 * np.linalg.norm(e0 - w)


def test_raw_tensors_all_dtypes(tmp_path: Path, rng: np.random.Generator) -> None:
    arrays = {
        "f16": rng.standard_normal((3, 5)).astype(np.float16),
        "f32": rng.standard_normal((7,)).astype(np.float32),
        "f64": rng.standard_normal((2, 2, 2)),
        "i8": rng.integers(-128, 127, (4,), dtype=np.int8),
        "u8": rng.integers(0, 255, (4,), dtype=np.uint8),
        "i32": rng.integers(-1000, 1000, (3, 3), dtype=np.int32),
        "i64": rng.integers(-(2**40), 2**40, (5,), dtype=np.int64),
        "u16": rng.integers(0, 60000, (2,), dtype=np.uint16),
        "bool": rng.random((6,)) < 0.5,
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    bf = f32_to_bf16(rng.standard_normal((4, 4)).astype(np.float32))
    path = tmp_path / "raw.spqr"
    with spqrfmt.Writer(path, metadata={"note": "raw", "blob": b"\x00\x01"}) as wr:
        for k, a in arrays.items():
            wr.add_raw(k, a)
        wr.add_raw("bf16", bf, "bf16")
    with spqrfmt.open(path) as f:
        assert f.metadata["note"] == "raw" and f.metadata["blob"] == b"\x00\x01"
        assert list(f) == [*arrays, "bf16"]
        for k, a in arrays.items():
            got = f[k].decode()
            assert got.dtype == a.dtype and np.array_equal(got, a)
        assert f["bf16"].dtype == "bf16"
        assert np.array_equal(f["bf16"].decode(), bf)
        assert np.array_equal(f["bf16"].decode("f32"), bf16_to_f32(bf))


def test_layout_alignment_and_size(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "a.spqr"
    enc = quantize_spqr(rng.standard_normal((33, 50)).astype(np.float32))
    with spqrfmt.Writer(path) as wr:
        wr.add_raw("x", rng.standard_normal(3).astype(np.float32))
        wr.add_encoded("w", enc)
    blob = path.read_bytes()
    assert blob[:8] == b"SPQRFMT\x00"
    with spqrfmt.open(path) as f:
        assert f.version == (1, 0)
        assert f.preamble.data_offset % ALIGNMENT == 0
        assert len(blob) == f.preamble.data_offset + f.preamble.data_length
        for t in f.tensors.values():
            for s in t.record.sections.values():
                assert (f.preamble.data_offset + s.offset) % ALIGNMENT == 0
        assert f.preamble.data_offset >= PREAMBLE_SIZE + f.preamble.header_length


def test_writer_is_atomic_on_error(tmp_path: Path) -> None:
    path = tmp_path / "x.spqr"
    with pytest.raises(RuntimeError), spqrfmt.Writer(path) as wr:
        wr.add_raw("a", np.ones(4, dtype=np.float32))
        raise RuntimeError("interrupted")
    assert not path.exists()
    assert os.listdir(tmp_path) == []  # no temp files left behind


def test_writer_keeps_old_file_until_rename(tmp_path: Path) -> None:
    path = tmp_path / "x.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_raw("old", np.ones(2, dtype=np.float32))
    before = path.read_bytes()
    wr = spqrfmt.Writer(path)
    wr.add_raw("new", np.zeros(2, dtype=np.float32))
    assert path.read_bytes() == before  # nothing visible until close()
    wr.close()
    with spqrfmt.open(path) as f:
        assert list(f) == ["new"]


def test_writer_rejects_invalid_tensors(tmp_path: Path, rng: np.random.Generator) -> None:
    enc = quantize_spqr(rng.standard_normal((8, 20)).astype(np.float32), outlier_fraction=0.1)
    bad = dict(enc.sections)
    bad["outlier_col"] = np.full_like(enc.sections["outlier_col"], 25)
    with spqrfmt.Writer(tmp_path / "x.spqr") as wr:
        with pytest.raises(spqrfmt.SpqrFormatError) as ei:
            wr.add("w", shape=(8, 20), dtype="f16", codec="spqr", params=enc.params, sections=bad)
        assert ei.value.code == spqrfmt.ErrorCode.BAD_INDEX
        with pytest.raises(ValueError):
            wr.add_raw("dup", np.ones(1, np.float32))
            wr.add_raw("dup", np.ones(1, np.float32))


def test_numba_rne16_matches_numpy_cast(rng: np.random.Generator) -> None:
    from spqrfmt.decoder.spqr import rne16

    special = np.array([0.0, -0.0, 65504, 65519.996, 65520, -65520, 1e9, np.inf, -np.inf, 2**-14, 2**-24,
                        2**-25, 2**-25 * 1.0000001, 3 * 2**-25, 2**-26, 1e-45, 6.1e-5, 1 + 2**-11, 1 + 3 * 2**-11,
                        2049.0, 2051.0, 4097.0], dtype=np.float32)
    rand_bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    small = (rng.standard_normal(100_000) * 1e-5).astype(np.float32)
    for x in (special, -special, rand_bits, small):
        with np.errstate(over="ignore"):  # overflow to inf is the expected result
            want = x.astype(np.float16).astype(np.float32)
        got = rne16(x)
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan)
        assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
