"""Hostile input: every broken rule gives SpqrFormatError with the spec's code, never a crash."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

import spqrfmt
from spqrfmt import ErrorCode
from spqrfmt.encoder.spqr import quantize_spqr

from conftest import assemble, restamp, split


@pytest.fixture(scope="module")
def valid_blob(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    rng = np.random.default_rng(7)
    enc = quantize_spqr(rng.standard_normal((16, 40)).astype(np.float32), bits=3, outlier_fraction=0.05,
                        perm=rng.permutation(40))
    path = tmp_path_factory.mktemp("v") / "valid.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_raw("norm", rng.standard_normal(40).astype(np.float32))
        wr.add_encoded("w", enc)
    return path.read_bytes()


def _open_all(path: Path) -> None:
    """Open, check and decode everything, as a user would."""
    with spqrfmt.open(path) as f:
        for t in f.tensors.values():
            t.decode()


def _expect(tmp: Path, blob: bytes, code: ErrorCode) -> None:
    path = tmp / "bad.spqr"
    path.write_bytes(blob)
    with pytest.raises(spqrfmt.SpqrFormatError) as ei:
        _open_all(path)
    assert ei.value.code == code, str(ei.value)
    with pytest.raises(spqrfmt.SpqrFormatError):
        spqrfmt.validate(path)


def test_valid_blob_is_valid(tmp_path: Path, valid_blob: bytes) -> None:
    p = tmp_path / "ok.spqr"
    p.write_bytes(valid_blob)
    _open_all(p)
    spqrfmt.validate(p)


@pytest.mark.parametrize("cut", [0, 5, 31, 40, -1, -64])
def test_truncated(tmp_path: Path, valid_blob: bytes, cut: int) -> None:
    _expect(tmp_path, valid_blob[:cut] if cut >= 0 else valid_blob[:len(valid_blob) + cut], ErrorCode.TRUNCATED)


def test_trailing_data(tmp_path: Path, valid_blob: bytes) -> None:
    _expect(tmp_path, valid_blob + b"\0", ErrorCode.TRAILING_DATA)


def test_wrong_magic(tmp_path: Path, valid_blob: bytes) -> None:
    _expect(tmp_path, b"GGUF" + valid_blob[4:], ErrorCode.BAD_MAGIC)


def test_future_major_version(tmp_path: Path, valid_blob: bytes) -> None:
    _expect(tmp_path, valid_blob[:8] + struct.pack("<H", 2) + valid_blob[10:], ErrorCode.UNSUPPORTED_VERSION)


def test_future_minor_version_is_accepted(tmp_path: Path, valid_blob: bytes) -> None:
    header, data = split(valid_blob)
    header["future_key"] = {"anything": [1, 2]}
    header["tensors"][0]["future_field"] = "ignored"
    header["tensors"][1]["sections"]["codes"]["future"] = 1
    p = tmp_path / "minor.spqr"
    p.write_bytes(assemble(header, bytes(data), minor=7))
    with spqrfmt.open(p) as f:
        assert f.version == (1, 7)
        _open_all(p)


@pytest.mark.parametrize("hl", [0, 2**63, 64 * 1024 * 1024 + 1])
def test_huge_or_zero_header_length(tmp_path: Path, valid_blob: bytes, hl: int) -> None:
    _expect(tmp_path, valid_blob[:16] + struct.pack("<Q", hl) + valid_blob[24:], ErrorCode.HEADER_TOO_LARGE)


def test_huge_data_length_is_truncated_not_allocated(tmp_path: Path, valid_blob: bytes) -> None:
    _expect(tmp_path, valid_blob[:24] + struct.pack("<Q", 2**62) + valid_blob[32:], ErrorCode.TRUNCATED)


def test_header_checksum(tmp_path: Path, valid_blob: bytes) -> None:
    blob = bytearray(valid_blob)
    blob[40] ^= 0x01
    _expect(tmp_path, bytes(blob), ErrorCode.HEADER_CHECKSUM)


def test_section_checksum(tmp_path: Path, valid_blob: bytes) -> None:
    blob = bytearray(valid_blob)
    blob[-3] ^= 0x10
    _expect(tmp_path, bytes(blob), ErrorCode.SECTION_CHECKSUM)


def _mutated(valid_blob: bytes, fn: Callable[[dict[str, Any], bytearray], None], restamp_data: bool = False) -> bytes:
    header, data = split(valid_blob)
    fn(header, data)
    if restamp_data:
        restamp(header, data)
    return assemble(header, bytes(data))


def _sec(header: dict[str, Any], tensor: int, role: str) -> dict[str, Any]:
    return header["tensors"][tensor]["sections"][role]


HEADER_CASES: dict[str, tuple[Callable[[dict[str, Any], bytearray], None], ErrorCode]] = {
    "offset_out_of_bounds": (lambda h, d: _sec(h, 1, "codes").update(offset=(len(d) + 127) // 64 * 64),
                             ErrorCode.SECTION_OUT_OF_BOUNDS),
    "negative_offset": (lambda h, d: _sec(h, 1, "codes").update(offset=-64), ErrorCode.SECTION_OUT_OF_BOUNDS),
    "offset_u64_max": (lambda h, d: _sec(h, 1, "codes").update(offset=2**64 - 64), ErrorCode.SECTION_OUT_OF_BOUNDS),
    "misaligned": (lambda h, d: _sec(h, 1, "codes").update(offset=_sec(h, 1, "codes")["offset"] + 4),
                   ErrorCode.SECTION_MISALIGNED),
    "overlap": (lambda h, d: _sec(h, 1, "codes").update(offset=_sec(h, 0, "data")["offset"]),
                ErrorCode.SECTION_OVERLAP),
    "length_mismatch": (lambda h, d: _sec(h, 1, "codes").update(length=_sec(h, 1, "codes")["length"] - 4),
                        ErrorCode.SECTION_LENGTH_MISMATCH),
    "shape_overflow": (lambda h, d: _sec(h, 1, "codes").update(shape=[2**32, 2**32, 2**32]), ErrorCode.SHAPE_OVERFLOW),
    "tensor_shape_overflow": (lambda h, d: h["tensors"][0].update(shape=[2**62, 2**62]), ErrorCode.SHAPE_OVERFLOW),
    "negative_dim": (lambda h, d: h["tensors"][0].update(shape=[-40]), ErrorCode.BAD_SHAPE),
    "too_many_dims": (lambda h, d: h["tensors"][0].update(shape=[1] * 9), ErrorCode.BAD_SHAPE),
    "bad_dtype": (lambda h, d: _sec(h, 0, "data").update(dtype="f8"), ErrorCode.BAD_DTYPE),
    "duplicate_name": (lambda h, d: h["tensors"][1].update(name="norm"), ErrorCode.DUPLICATE_NAME),
    "empty_name": (lambda h, d: h["tensors"][1].update(name=""), ErrorCode.BAD_NAME),
    "missing_tensors": (lambda h, d: h.pop("tensors"), ErrorCode.BAD_HEADER),
    "tensors_not_array": (lambda h, d: h.update(tensors={"a": 1}), ErrorCode.BAD_HEADER),
    "metadata_not_map": (lambda h, d: h.update(metadata=[1]), ErrorCode.BAD_METADATA),
    "record_missing_key": (lambda h, d: h["tensors"][1].pop("params"), ErrorCode.BAD_HEADER),
    "offset_is_string": (lambda h, d: _sec(h, 1, "codes").update(offset="0"), ErrorCode.BAD_HEADER),
    "bits_out_of_range": (lambda h, d: h["tensors"][1]["params"].update(bits=9), ErrorCode.BAD_PARAMS),
    "bits_wrong_type": (lambda h, d: h["tensors"][1]["params"].update(bits=3.0), ErrorCode.BAD_PARAMS),
    "missing_section": (lambda h, d: h["tensors"][1]["sections"].pop("outlier_val"), ErrorCode.BAD_SECTION_SET),
    "extra_section": (lambda h, d: h["tensors"][1]["sections"].update(
        extra={"dtype": "u8", "shape": [0], "offset": 0, "length": 0, "crc32": 0}),
                      ErrorCode.BAD_SECTION_SET),
    "wrong_section_dtype": (lambda h, d: _sec(h, 1, "perm").update(dtype="i32"), ErrorCode.BAD_SECTION_LAYOUT),
    "wrong_group_size": (lambda h, d: h["tensors"][1]["params"].update(group_size=8), ErrorCode.BAD_SECTION_LAYOUT),
    "unknown_codec": (lambda h, d: h["tensors"][1].update(codec="nf4"), ErrorCode.UNKNOWN_CODEC),
    "future_codec_version": (lambda h, d: h["tensors"][1].update(codec_version=99),
                             ErrorCode.UNSUPPORTED_CODEC_VERSION),
    "codec_version_zero": (lambda h, d: h["tensors"][1].update(codec_version=0), ErrorCode.BAD_HEADER),
    "shape_not_array": (lambda h, d: h["tensors"][0].update(shape=40), ErrorCode.BAD_HEADER),
    "shape_bool_entry": (lambda h, d: h["tensors"][0].update(shape=[True]), ErrorCode.BAD_SHAPE),
    "crc_negative": (lambda h, d: _sec(h, 0, "data").update(crc32=-1), ErrorCode.BAD_HEADER),
    "spqr_dtype_not_allowed": (lambda h, d: h["tensors"][1].update(dtype="f64"), ErrorCode.BAD_PARAMS),
    "spqr_n_zero": (lambda h, d: h["tensors"][1].update(shape=[16, 0]), ErrorCode.BAD_SHAPE),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_header_rules(tmp_path: Path, valid_blob: bytes, case: str) -> None:
    fn, code = HEADER_CASES[case]
    _expect(tmp_path, _mutated(valid_blob, fn), code)


def _set_u32(h: dict[str, Any], d: bytearray, role: str, index: int, value: int) -> None:
    s = _sec(h, 1, role)
    struct.pack_into("<I", d, s["offset"] + 4 * index, value)


def _set_col(h: dict[str, Any], d: bytearray, index: int, value: int) -> None:
    s = _sec(h, 1, "outlier_col")
    fmt = "<H" if s["dtype"] == "u16" else "<I"
    struct.pack_into(fmt, d, s["offset"] + struct.calcsize(fmt) * index, value)


CONTENT_CASES: dict[str, tuple[Callable[[dict[str, Any], bytearray], None], ErrorCode]] = {
    "csr_not_starting_at_zero": (lambda h, d: _set_u32(h, d, "outlier_row_ptr", 0, 1), ErrorCode.BAD_CSR),
    "csr_decreasing": (lambda h, d: _set_u32(h, d, "outlier_row_ptr", 5, 0), ErrorCode.BAD_CSR),
    "csr_end_past_nnz": (lambda h, d: _set_u32(h, d, "outlier_row_ptr", 16, 2**32 - 1), ErrorCode.BAD_CSR),
    "column_out_of_range": (lambda h, d: _set_col(h, d, 0, 40), ErrorCode.BAD_INDEX),
    "column_huge": (lambda h, d: _set_col(h, d, 1, 65535), ErrorCode.BAD_INDEX),
    "perm_out_of_range": (lambda h, d: _set_u32(h, d, "perm", 3, 2**32 - 1), ErrorCode.BAD_PERMUTATION),
    "perm_duplicate": (lambda h, d: _set_u32(h, d, "perm", 3, struct.unpack_from(
        "<I", d, _sec(h, 1, "perm")["offset"] + 8)[0]), ErrorCode.BAD_PERMUTATION),
}


@pytest.mark.parametrize("case", sorted(CONTENT_CASES))
def test_content_rules(tmp_path: Path, valid_blob: bytes, case: str) -> None:
    fn, code = CONTENT_CASES[case]
    _expect(tmp_path, _mutated(valid_blob, fn, restamp_data=True), code)


def test_columns_not_increasing_within_row(tmp_path: Path) -> None:
    # a hand-built tensor with one row holding columns [5, 5]
    rng = np.random.default_rng(0)
    mask = np.zeros((4, 40), dtype=bool)
    mask[1, [3, 5]] = True
    enc = quantize_spqr(rng.standard_normal((4, 40)).astype(np.float32), outlier_mask=mask)
    p = tmp_path / "ok.spqr"
    with spqrfmt.Writer(p) as wr:
        wr.add_encoded("w", enc)
    blob = _mutated(p.read_bytes(), lambda h, d: struct.pack_into(
        "<H", d, h["tensors"][0]["sections"]["outlier_col"]["offset"], 5), restamp_data=True)
    _expect(tmp_path, blob, ErrorCode.BAD_INDEX)


@pytest.mark.parametrize("raw_header,what", [
    (b"\x91\x01", "array at top level"),
    (msgpack.packb({"tensors": [], "metadata": {}}) + b"\x00", "trailing bytes"),
    (msgpack.packb({"tensors": [], "metadata": {"t": msgpack.ExtType(5, b"abc")}}), "ext type"),
    (b"\x82\xa8metadata\x80\xa8metadata\x80", "duplicate key"),
    (b"\x82\xa7tensors" + b"\x91" * 200 + b"\x90" + b"\xa8metadata\x80", "deep nesting"),
    (b"\x82\xa7tensors\xdd\xff\xff\xff\xff", "array length beyond the header"),
    (b"\x81\x01\x02", "non-string key"),
    (b"\xc1", "reserved byte"),
])
def test_malformed_msgpack(tmp_path: Path, raw_header: bytes, what: str) -> None:
    from spqrfmt.format import MAGIC, PREAMBLE_SIZE, align64, crc32

    pad = align64(PREAMBLE_SIZE + len(raw_header)) - PREAMBLE_SIZE - len(raw_header)
    blob = struct.pack("<8sHHIQQ", MAGIC, 1, 0, crc32(raw_header), len(raw_header), 0) + raw_header + b"\0" * pad
    _expect(tmp_path, blob, ErrorCode.BAD_HEADER)


def test_unknown_codec_does_not_block_other_tensors(tmp_path: Path, valid_blob: bytes) -> None:
    p = tmp_path / "mixed.spqr"
    p.write_bytes(_mutated(valid_blob, lambda h, d: h["tensors"][1].update(codec="future-codec")))
    with spqrfmt.open(p) as f:
        assert f["norm"].decode().shape == (40,)
        with pytest.raises(spqrfmt.SpqrFormatError) as ei:
            f["w"].decode()
        assert ei.value.code == ErrorCode.UNKNOWN_CODEC and ei.value.tensor == "w"
        assert [e is None for _, e in f.check_all()] == [True, False]


def test_bool_bytes_must_be_0_or_1(tmp_path: Path) -> None:
    p = tmp_path / "b.spqr"
    with spqrfmt.Writer(p) as wr:
        wr.add_raw("mask", np.array([True, False, True]))
    blob = _mutated(p.read_bytes(), lambda h, d: d.__setitem__(h["tensors"][0]["sections"]["data"]["offset"], 2),
                    restamp_data=True)
    _expect(tmp_path, blob, ErrorCode.BAD_VALUE)


# ---- SPEC §10 "Memory": concrete bounds for opening a file and for decoding one tensor

OPEN_BYTES_PER_HEADER_BYTE = 256
LIBRARY_OPEN_BYTES_PER_HEADER_BYTE = 64  # SPEC §10 "Memory": the reference library's own bound
DECODE_FACTOR = 16


def _worst_header(kind: str, n: int) -> tuple[bytes, int]:
    """A valid header whose metadata array holds about ``n`` bytes of the costliest items for a reader.

    maps / arrays / nil_arrays: one-byte containers; ``budget_mix``: one empty map per 8 bytes (the
    library's container budget) padded with negative fixints (-32 is a fresh Python int each time).
    """
    from spqrfmt.conformance import miniwriter as mw

    item, per = {"maps": (b"\x80", 1), "arrays": (b"\x90", 1), "nil_arrays": (b"\x91\xc0", 1),
                 "budget_mix": (b"\x80" + b"\xe0" * 7, 8)}[kind]
    count = n // len(item)
    body = b"\xdd" + (count * per).to_bytes(4, "big") + item * count
    return mw.build([], header_obj=mw.Raw(b"\x82\xa7tensors\x90\xa8metadata\x81\xa1x" + body)), count * per


def _open_peak(opener: object, path: Path) -> tuple[object, int]:
    import tracemalloc

    tracemalloc.start()
    try:
        f = opener(path)  # type: ignore[operator]
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return f, peak


@pytest.mark.parametrize("kind", ["maps", "arrays", "nil_arrays"])
def test_open_memory_is_bounded_by_header_length(tmp_path: Path, kind: str) -> None:
    """The refreader builds every container (<= 256 x); the library refuses more than its budget."""
    from spqrfmt.conformance import refreader

    blob, count = _worst_header(kind, 1 << 16)
    path = tmp_path / "h.spqr"
    path.write_bytes(blob)
    header_length = struct.unpack_from("<Q", blob, 16)[0]
    f, peak = _open_peak(refreader.open_file, path)
    assert len(f.metadata["x"]) == count
    del f
    assert peak <= OPEN_BYTES_PER_HEADER_BYTE * header_length + (1 << 20), (kind, peak / header_length)
    with pytest.raises(spqrfmt.SpqrFormatError) as ei:
        spqrfmt.open(path)
    assert ei.value.code == ErrorCode.LIMIT_EXCEEDED and "arrays and maps" in str(ei.value)


def test_library_open_memory_under_its_container_budget(tmp_path: Path) -> None:
    from spqrfmt.format import container_budget

    blob, count = _worst_header("budget_mix", 1 << 18)
    path = tmp_path / "h.spqr"
    path.write_bytes(blob)
    header_length = struct.unpack_from("<Q", blob, 16)[0]
    assert count // 8 <= container_budget(header_length)
    f, peak = _open_peak(spqrfmt.open, path)
    assert len(f.metadata["x"]) == count
    f.close()
    assert peak <= LIBRARY_OPEN_BYTES_PER_HEADER_BYTE * header_length + (1 << 20), peak / header_length


def test_memory_error_while_parsing_is_a_format_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spqrfmt import format as fmt

    path = tmp_path / "h.spqr"
    path.write_bytes(_worst_header("arrays", 64)[0])

    def no_memory(*_a: object, **_k: object) -> None:
        raise MemoryError

    monkeypatch.setattr(fmt.msgpack, "unpackb", no_memory)
    with pytest.raises(spqrfmt.SpqrFormatError) as ei:
        spqrfmt.open(path)
    assert ei.value.code == ErrorCode.LIMIT_EXCEEDED and "memory" in str(ei.value)


def _codec_tensors(m: int, n: int) -> list:
    from spqrfmt.conformance.generators import quip, spqr, squeezellm

    return [spqr.spqr_tens("spqr", spqr.make_spqr("mem", m, n, 3, 16, sb=3, zb=3, beta2=16, perm=True)),
            squeezellm.squeezellm_tens("squeezellm", squeezellm.make_squeezellm("mem", m, n, 4)),
            quip.quip_tens("quip", quip.make_quip("mem", m, n, 2, 8, 2))]


def test_decode_memory_is_bounded_by_decoded_size(tmp_path: Path) -> None:
    """Library (Numba; peak RSS) and refreader (numpy; tracemalloc) stay under 16x decoded + sections."""
    import tracemalloc

    from spqrfmt.conformance import miniwriter as mw
    from spqrfmt.conformance import refreader

    small, big = tmp_path / "small.spqr", tmp_path / "big.spqr"
    small.write_bytes(mw.build(_codec_tensors(8, 1024)))   # compiles every Numba decoder first
    big.write_bytes(mw.build(_codec_tensors(512, 1024)))
    with spqrfmt.open(small) as f:
        for t in f.tensors.values():
            t.decode()

    def hwm_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    rss_peak_resettable = Path("/proc/self/clear_refs").exists()
    with spqrfmt.open(big) as f:
        for name, t in f.tensors.items():
            bound = DECODE_FACTOR * 4 * t.numel + t.nbytes
            t.check()
            if rss_peak_resettable:
                Path("/proc/self/clear_refs").write_text("5")   # VmHWM := current RSS
                before = hwm_kib()
                out = t.decode()
                assert (hwm_kib() - before) * 1024 <= bound, name
                del out
    ref = refreader.open_file(big)
    for name, rec in ref.tensors.items():
        ref.check(name)
        bound = DECODE_FACTOR * 4 * rec.shape[0] * rec.shape[1] + sum(s.length for s in rec.sections.values())
        tracemalloc.start()
        try:
            out = ref.decode(name)
            _cur, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak <= bound, (name, peak / (4 * out.size))
