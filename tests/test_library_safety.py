"""Library safety (issue 11): the Writer never writes what the reader rejects, and hostile or changing
files end in SpqrFormatError, never a numpy error, a crash or a leaked temp file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

import spqrfmt
from spqrfmt import ErrorCode
from spqrfmt.conformance import miniwriter as mw
from spqrfmt.conformance import refreader
from spqrfmt.format import MAX_CONTAINER_LEN, MAX_HEADER_LENGTH

# ---- Writer: the reader's header rules run before a byte is written


def _nested(depth: int) -> object:
    obj: object = 0
    for _ in range(depth):
        obj = [obj]
    return obj


BAD_NAMES = [("", "empty"), ("a\x00b", "nul"), ("é" * 513, "1026 utf-8 bytes")]


@pytest.mark.parametrize("name,why", BAD_NAMES, ids=[w for _, w in BAD_NAMES])
def test_writer_refuses_names_the_reader_rejects(tmp_path: Path, name: str, why: str) -> None:
    with pytest.raises(spqrfmt.SpqrFormatError) as ei, spqrfmt.Writer(tmp_path / "x.spqr") as w:
        w.add_raw(name, np.ones(2, np.float32))
    assert ei.value.code == ErrorCode.BAD_NAME, why
    assert os.listdir(tmp_path) == []


def test_writer_accepts_a_1024_byte_non_ascii_name(tmp_path: Path) -> None:
    name = "é" * 511 + "ab"  # 1024 UTF-8 bytes, 513 code points
    with spqrfmt.Writer(tmp_path / "x.spqr") as w:
        w.add_raw(name, np.ones(2, np.float32))
    with spqrfmt.open(tmp_path / "x.spqr") as f:
        assert list(f) == [name]


BAD_METADATA = [
    ({1: "int key"}, ErrorCode.BAD_HEADER),
    ({"deep": _nested(31)}, ErrorCode.BAD_HEADER),          # top (1) + metadata (2) + 31 arrays = 33
    ({"deep": _nested(600)}, ErrorCode.BAD_HEADER),         # beyond msgpack's own packing limit
    ({"big": 1 << 64}, ErrorCode.BAD_HEADER),
    ({"long": [0] * (MAX_CONTAINER_LEN + 1)}, ErrorCode.BAD_HEADER),
    ({"blob": b"x" * MAX_HEADER_LENGTH}, ErrorCode.HEADER_TOO_LARGE),
    ({"maps": [{}] * 5000}, ErrorCode.LIMIT_EXCEEDED),         # over the reader's container budget (SPEC §10)
]


@pytest.mark.parametrize("metadata,code", BAD_METADATA, ids=["int_key", "nesting_33", "nesting_600", "int_2_64",
                                                              "container_len", "header_size", "container_budget"])
def test_writer_refuses_headers_the_reader_rejects(tmp_path: Path, metadata: dict, code: ErrorCode) -> None:
    with pytest.raises(spqrfmt.SpqrFormatError) as ei:
        spqrfmt.Writer(tmp_path / "x.spqr", metadata=metadata)
    assert ei.value.code == code
    assert os.listdir(tmp_path) == []


def test_header_failing_at_close_leaves_no_scratch_or_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "x.spqr"
    target.write_bytes(b"previous contents")
    w = spqrfmt.Writer(target)
    w.add_raw("a", np.ones(3, np.float32))
    w.metadata["late"] = {"deep": _nested(40)}  # only the header built at close() sees it
    with pytest.raises(spqrfmt.SpqrFormatError) as ei:
        w.close()
    assert ei.value.code == ErrorCode.BAD_HEADER
    assert os.listdir(tmp_path) == ["x.spqr"] and target.read_bytes() == b"previous contents"


def test_writer_params_the_reader_rejects(tmp_path: Path) -> None:
    with pytest.raises(spqrfmt.SpqrFormatError) as ei, spqrfmt.Writer(tmp_path / "x.spqr") as w:
        w.add("r", shape=(2,), dtype="f32", codec="raw", params={7: "int key"},
              sections={"data": np.ones(2, np.float32)})
    assert ei.value.code == ErrorCode.BAD_HEADER
    assert os.listdir(tmp_path) == []


def test_writer_duplicate_name_is_the_readers_code(tmp_path: Path) -> None:
    with spqrfmt.Writer(tmp_path / "x.spqr") as w:
        w.add_raw("a", np.ones(1, np.float32))
        with pytest.raises(spqrfmt.SpqrFormatError) as ei:
            w.add_raw("a", np.ones(1, np.float32))
    assert ei.value.code == ErrorCode.DUPLICATE_NAME


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_output_mode_honours_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with spqrfmt.Writer(tmp_path / "x.spqr") as w:
            w.add_raw("a", np.ones(1, np.float32))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.spqr").stat().st_mode) == 0o666 & ~umask


# ---- zero-size shapes with huge dimensions (SPEC §4: zero entries are left out of the product)


def _raw_file(tmp_path: Path, shape: list[int], dtype: str = "f32") -> Path:
    p = tmp_path / "z.spqr"
    p.write_bytes(mw.build([mw.Tens("z", shape, dtype, "raw", {}, [mw.Sec("data", dtype, shape, b"")])]))
    return p


@pytest.mark.parametrize("shape", [[0, 1 << 40], [1 << 40, 0], [0, 1 << 20, 1 << 20], [3, 0, 1 << 38]])
@pytest.mark.parametrize("mmap", [True, False])
def test_zero_size_tensor_with_huge_dims_decodes(tmp_path: Path, shape: list[int], mmap: bool) -> None:
    path = _raw_file(tmp_path, shape, "f64")
    spqrfmt.validate(path)
    with spqrfmt.open(path, mmap=mmap) as f:
        t = f["z"]
        t.check()
        out = t.decode()
        assert out.shape == tuple(shape) and out.size == 0
        assert t.decode("f16").shape == tuple(shape)
    assert refreader.open_file(path).decode("z").shape == tuple(shape)


@pytest.mark.parametrize("shape", [[0, 1 << 63], [1 << 63, 0], [0, 1 << 40, 1 << 40], [0, (1 << 40) + 1],
                                   [(1 << 64) - 1, 0]])
def test_zero_size_shape_overflow_does_not_depend_on_order(tmp_path: Path, shape: list[int]) -> None:
    path = _raw_file(tmp_path, shape)
    with pytest.raises(spqrfmt.SpqrFormatError) as ei:
        spqrfmt.open(path)
    assert ei.value.code == ErrorCode.SHAPE_OVERFLOW
    with pytest.raises(refreader.RefError) as ri:
        refreader.open_file(path)
    assert ri.value.code == "SHAPE_OVERFLOW"


def test_writer_round_trips_zero_d_and_zero_size(tmp_path: Path) -> None:
    path = tmp_path / "x.spqr"
    with spqrfmt.Writer(path) as w:
        w.add_raw("scalar", np.array(2.5, np.float32))
        w.add_raw("empty", np.zeros((0, 1 << 30), np.int8))
    with spqrfmt.open(path) as f:
        assert f["scalar"].decode().shape == () and float(f["scalar"].decode()) == 2.5
        assert f["scalar"].decode("bf16").shape == ()
        assert f["empty"].decode().shape == (0, 1 << 30)


# ---- pread reading: a file that changes under the reader


def _some_file(tmp_path: Path) -> Path:
    path = tmp_path / "x.spqr"
    with spqrfmt.Writer(path) as w:
        w.add_raw("a", np.arange(4096, dtype=np.float32))
        w.add_raw("b", np.arange(4096, dtype=np.float32))
    return path


def test_pread_reader_reports_concurrent_truncation(tmp_path: Path) -> None:
    path = _some_file(tmp_path)
    with spqrfmt.open(path, mmap=False) as f:
        assert f.mmap is False
        np.testing.assert_array_equal(f["a"].decode(), np.arange(4096, dtype=np.float32))
        os.truncate(path, path.stat().st_size - 100)  # another process shrinks the file
        with pytest.raises(spqrfmt.SpqrFormatError) as ei:
            f["b"].decode()
    assert ei.value.code == ErrorCode.TRUNCATED and "truncated after it was opened" in str(ei.value)


def test_pread_and_mmap_agree_and_arrays_are_read_only(tmp_path: Path) -> None:
    path = _some_file(tmp_path)
    with spqrfmt.open(path) as fm, spqrfmt.open(path, mmap=False) as fp:
        for name in fm:
            np.testing.assert_array_equal(fm[name].decode(), fp[name].decode())
            for arr in fp[name].arrays().values():
                assert not arr.flags.writeable


def test_validate_never_maps_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spqrfmt import reader

    def no_mmap(*_a: object, **_k: object) -> None:
        raise AssertionError("validate() mapped the file")

    monkeypatch.setattr(reader._mmap, "mmap", no_mmap)
    spqrfmt.validate(_some_file(tmp_path))


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.spqr"
    os.mkfifo(fifo)
    for mmap in (True, False):
        with pytest.raises(OSError, match="not a regular file"):
            spqrfmt.open(fifo, mmap=mmap)


def test_pread_file_dropped_unclosed_releases_its_descriptor(tmp_path: Path) -> None:
    import gc
    import warnings

    path = _some_file(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(20):
            spqrfmt.open(path, mmap=False)["a"].decode()
        gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before
