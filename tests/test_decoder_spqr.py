"""The spqr Numba decoder's fast paths decode bit for bit like the numpy reference reader.

Bit widths 1-8 with group sizes that are and are not whole words cover the
explicit-vector word path (decoder/vector.py) and the bit-stream path; odd
shapes a partial last row block and group; v2 ``arith = "f16"`` the rne16 path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spqrfmt
from spqrfmt.conformance import refreader
from spqrfmt.encoder.spqr import quantize_spqr
from spqrfmt.encoder.spqr_v2 import to_v2


def _decode_both(tmp: Path, enc: object) -> tuple[np.ndarray, np.ndarray]:
    path = tmp / "t.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("w", enc, "f16")
    with spqrfmt.open(path) as f:
        got = f["w"].decode()
    return got, np.asarray(refreader.open_file(path).decode("w"), dtype=np.float32)


@settings(max_examples=16, deadline=None)
@given(bits=st.integers(1, 8), group=st.sampled_from([4, 8, 16, 32, 48, 12]), m=st.integers(1, 40),
       n=st.integers(1, 100), stat_bits=st.sampled_from([2, 3, 16]), f16=st.booleans(), seed=st.integers(0, 2**16))
def test_spqr_decode_matches_reference(tmp_path_factory: pytest.TempPathFactory, bits: int, group: int, m: int,
                                       n: int, stat_bits: int, f16: bool, seed: int) -> None:
    w = (np.random.default_rng(seed).standard_normal((m, n)) * 3).astype(np.float32)
    enc = quantize_spqr(w, bits=bits, group_size=group, scale_bits=stat_bits, zero_bits=stat_bits,
                        outlier_fraction=0.03)
    if f16:
        enc = to_v2(enc, arith="f16", outlier_op="add")
    got, ref = _decode_both(tmp_path_factory.mktemp("spqr"), enc)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
    assert np.array_equal(got.view(np.uint32), enc.dequantized.view(np.uint32))


@pytest.mark.parametrize("f16", [False, True])
def test_spqr_special_second_level_stats_match_reference(tmp_path: Path, f16: bool) -> None:
    """NaN, ±inf, -0, f16 subnormals and overflowing products in the second-level statistics of whole 32-row
    blocks (the vector path; the conformance vectors' special values have fewer rows)."""
    rng = np.random.default_rng(3)
    enc = quantize_spqr(rng.standard_normal((80, 48)).astype(np.float32), bits=4, scale_bits=3, zero_bits=3)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 6e-8, 1e-5, 65504.0, -65504.0, 3e4], dtype=np.float16)
    for key in ("scale_scale", "scale_zero", "zero_scale", "zero_zero"):
        sec = enc.sections[key].copy()
        pick = rng.random(sec.shape) < 0.3
        sec[pick] = rng.choice(special, int(pick.sum()))
        enc.sections[key] = sec
    if f16:
        enc = to_v2(enc, arith="f16", outlier_op="add")
    got, ref = _decode_both(tmp_path, enc)
    assert np.isnan(ref).any() and np.isinf(ref).any()
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
