"""Python API parity with safetensors: to_torch (zero-copy raw tensors), get_slice, py.typed, lazy load_model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spqrfmt
from spqrfmt.dtypes import f32_to_bf16
from spqrfmt.encoder.spqr import quantize_spqr

torch = pytest.importorskip("torch")


@pytest.fixture
def file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(9)
    path = tmp_path / "api.spqr"
    with spqrfmt.Writer(path) as w:
        w.add_encoded("q.weight", quantize_spqr(rng.standard_normal((32, 48)).astype(np.float32), bits=4,
                                                group_size=16, scale_bits=3, zero_bits=3, stat_group_size=16,
                                                outlier_fraction=0.01))
        w.add_raw("emb.weight", rng.standard_normal((50, 12)).astype(np.float32))
        w.add_raw("h.weight", rng.standard_normal((7, 3, 5)).astype(np.float16))
        w.add_raw("b.weight", f32_to_bf16(rng.standard_normal((6, 4)).astype(np.float32)), "bf16")
        w.add_raw("ids", np.arange(-5, 5, dtype=np.int64))
        w.add_raw("mask", np.array([True, False, True]))
        w.add_raw("scalar", np.array(3.5, dtype=np.float32))
    return path


def test_import_is_torch_free_and_load_model_is_listed() -> None:
    code = ("import sys, spqrfmt; assert 'load_model' in dir(spqrfmt); "
            "assert not {'torch', 'transformers', 'triton'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    from spqrfmt.model import load_model

    assert spqrfmt.load_model is load_model
    assert (Path(spqrfmt.__file__).parent / "py.typed").is_file()


def _maps_file(ptr: int, path: Path) -> bool:
    """Whether address ``ptr`` lies in a mapping of ``path`` (Linux /proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= ptr < hi:
            return len(fields) == 6 and Path(fields[5]) == path.resolve()
    return False


@pytest.mark.parametrize("mmap", [True, False])
def test_to_torch_raw_is_exact_and_never_writes_the_file(file: Path, mmap: bool) -> None:
    blob = file.read_bytes()
    with spqrfmt.open(file, mmap=mmap) as f:
        for name, dt in [("emb.weight", torch.float32), ("h.weight", torch.float16), ("b.weight", torch.bfloat16),
                         ("ids", torch.int64), ("mask", torch.bool), ("scalar", torch.float32)]:
            t = f[name].to_torch()
            assert t.dtype == dt and tuple(t.shape) == tuple(f[name].shape)
            want = f[name].decode()
            got = t.view(torch.int16).numpy().view(np.uint16) if dt == torch.bfloat16 else t.numpy()
            assert np.array_equal(got, want)
            if mmap and Path("/proc/self/maps").exists() and t.numel():
                assert _maps_file(t.data_ptr(), file), name  # zero-copy: the tensor's memory is the file's pages
            t.zero_() if dt != torch.bool else t.logical_not_()  # copy-on-write: the file and reader are untouched
            assert np.array_equal(f[name].decode(), want)
        b = f["b.weight"].to_torch(dtype=torch.float32)
        assert torch.equal(b, f["b.weight"].to_torch().float())
    assert file.read_bytes() == blob


def test_to_torch_quantized_decodes(file: Path) -> None:
    with spqrfmt.open(file) as f:
        t = f["q.weight"]
        assert torch.equal(t.to_torch(), torch.from_numpy(t.decode()))
        assert torch.equal(t.to_torch(dtype="f16"), torch.from_numpy(t.decode("f16")))
        bf = t.to_torch(device="cpu", dtype=torch.bfloat16)
        assert np.array_equal(bf.view(torch.int16).numpy().view(np.uint16), t.decode("bf16"))
        with pytest.raises(ValueError, match="dtype"):
            t.to_torch(dtype="f64")


def test_to_torch_checks_the_section_crc(file: Path) -> None:
    blob = bytearray(file.read_bytes())
    with spqrfmt.open(file) as f:
        s = f["emb.weight"].record.sections["data"]
        at = f._data_offset + s.offset + 5
    blob[at] ^= 0x40
    file.write_bytes(bytes(blob))
    with spqrfmt.open(file) as f, pytest.raises(spqrfmt.SpqrFormatError, match="CRC"):
        f["emb.weight"].to_torch()


KEYS = [0, -1, 49, slice(None), slice(0, 10), slice(3, 40, 7), slice(None, None, -3), slice(40, 2, -5),
        slice(10, 5), (slice(2, 9), 3), (4, slice(1, None, 2)), (Ellipsis, 0), (slice(None), Ellipsis), ()]


@pytest.mark.parametrize("mmap", [True, False])
def test_get_slice_matches_numpy_indexing(file: Path, mmap: bool) -> None:
    with spqrfmt.open(file, mmap=mmap) as f:
        emb = f["emb.weight"].decode()
        sl = f["emb.weight"].get_slice()
        assert sl.get_shape() == [50, 12] and sl.get_dtype() == "f32"
        for key in KEYS:
            got = sl[key]
            assert got.shape == emb[key].shape and np.array_equal(got, emb[key]), key
        h = f["h.weight"].decode()
        for key in [(slice(1, 5), slice(None), slice(0, 5, 2)), (-2, 1), (Ellipsis, 4), (slice(6, 0, -2), 0, 0)]:
            assert np.array_equal(f["h.weight"].get_slice()[key], h[key]), key
        assert np.array_equal(f["b.weight"].get_slice()[1:3], f["b.weight"].decode()[1:3])
        assert f["scalar"].get_slice()[()] == np.float32(3.5)
        for bad, err in [(50, IndexError), (-51, IndexError), ((0, 0, 0), IndexError), (np.array([1]), TypeError),
                         (True, TypeError), ((Ellipsis, Ellipsis), IndexError)]:
            with pytest.raises(err):
                sl[bad]
        with pytest.raises(ValueError, match="raw tensors only"):
            f["q.weight"].get_slice()


def test_get_slice_reads_only_the_selected_rows(file: Path) -> None:
    with spqrfmt.open(file, mmap=False) as f:
        reads: list[int] = []
        real = f._read
        f._read = lambda offset, length: (reads.append(length), real(offset, length))[1]  # type: ignore[method-assign]
        f["emb.weight"].get_slice()[10:13]
        assert reads == [3 * 12 * 4]
        reads.clear()
        f["emb.weight"].get_slice()[7, 2:4]
        assert reads == [12 * 4]
