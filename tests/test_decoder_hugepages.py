"""The huge-page output path and the squeezellm whole-word path decode bit for bit like the numpy reference reader.

``HUGE_MIN_BYTES`` is lowered to 0 so that small tensors take the mmap path;
bit widths 1-8 cover both the whole-word (1, 2, 4, 8) and the straddling
(3, 5, 6, 7) code loops, odd widths a last partial word.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spqrfmt
from spqrfmt.conformance import refreader
from spqrfmt.decoder import output
from spqrfmt.encoder.quip import quantize_quip
from spqrfmt.encoder.spqr import quantize_spqr
from spqrfmt.encoder.squeezellm import quantize_squeezellm


def _decode_both(tmp: Path, enc: object) -> tuple[np.ndarray, np.ndarray]:
    path = tmp / "t.spqr"
    path.unlink(missing_ok=True)
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("w", enc, "f16")
    with spqrfmt.open(path) as f:
        got = f["w"].decode()
    return got, np.asarray(refreader.open_file(path).decode("w"), dtype=np.float32)


@pytest.fixture
def huge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "HUGE_MIN_BYTES", 0)


def test_empty_f32_is_a_writable_view_that_keeps_its_mapping(huge: None) -> None:
    a = output.empty_f32((3, 5))
    assert a.shape == (3, 5) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    view = a[1:]
    a[:] = np.arange(15, dtype=np.float32).reshape(3, 5)
    del a
    gc.collect()
    assert view.tolist() == np.arange(5, 15, dtype=np.float32).reshape(2, 5).tolist()  # the mapping outlives `a`
    assert output.empty_f32((0, 4)).shape == (0, 4)


@settings(max_examples=12, deadline=None)
@given(bits=st.integers(1, 8), m=st.integers(1, 9), n=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_squeezellm_fast_path_matches_reference(tmp_path_factory: pytest.TempPathFactory, bits: int, m: int, n: int,
                                                seed: int) -> None:
    output.HUGE_MIN_BYTES, before = 0, output.HUGE_MIN_BYTES
    try:
        w = np.random.default_rng(seed).standard_normal((m, n)).astype(np.float32)
        enc = quantize_squeezellm(w, bits=bits, outlier_fraction=0.05, max_iter=5)
        got, ref = _decode_both(tmp_path_factory.mktemp("sq"), enc)
    finally:
        output.HUGE_MIN_BYTES = before
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
    assert np.array_equal(got.view(np.uint32), enc.dequantized.view(np.uint32))


@pytest.mark.parametrize("codec", ["spqr", "quip"])
@pytest.mark.parametrize("shape", [(16, 48), (33, 64)])
def test_huge_page_output_matches_reference(huge: None, tmp_path: Path, codec: str, shape: tuple[int, int]) -> None:
    w = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    enc = quantize_spqr(w, bits=4, outlier_fraction=0.02) if codec == "spqr" else quantize_quip(w, bits=4)
    got, ref = _decode_both(tmp_path, enc)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
