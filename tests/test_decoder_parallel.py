"""The parallel Numba decoders agree bit for bit with the independent numpy reference reader on large tensors.

The conformance vectors are small, so they exercise the decoders on one thread
(spqrfmt.threads); these tensors exceed PARALLEL_MIN_ELEMENTS, so the row
blocks run on every thread, with all the steps that change per row: quantized
statistics, outliers, a permutation, and v2's f16 arithmetic with added outliers.
"""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

import spqrfmt
from spqrfmt.conformance import refreader
from spqrfmt.encoder.spqr import quantize_spqr
from spqrfmt.encoder.spqr_v2 import to_v2
from spqrfmt.encoder.squeezellm import quantize_squeezellm
from spqrfmt.threads import PARALLEL_MIN_ELEMENTS

M, N = 1031, 1100  # odd sizes: the last row block and the last group are partial
assert M * N >= PARALLEL_MIN_ELEMENTS


def _encodings() -> dict[str, object]:
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((M, N)) * np.exp(rng.standard_normal((M, 1)))).astype(np.float32)
    v1 = quantize_spqr(w, bits=3, outlier_fraction=0.01, perm=rng.permutation(N))
    return {
        "spqr_v1_perm": v1,
        "spqr_v1_f16stats": quantize_spqr(w, bits=4, group_size=128, scale_bits=16, zero_bits=16,
                                          outlier_fraction=0.005),
        "spqr_v2_f16_add": to_v2(quantize_spqr(w, bits=4, outlier_fraction=0.01), arith="f16", outlier_op="add"),
        "squeezellm": quantize_squeezellm(w, bits=3, outlier_fraction=0.005),
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    encs = _encodings()
    path = tmp_path_factory.mktemp("par") / "big.spqr"
    with spqrfmt.Writer(path) as wr:
        for name, enc in encs.items():
            wr.add_encoded(name, enc, "f16")
    return path, encs


@pytest.mark.parametrize("name", ["spqr_v1_perm", "spqr_v1_f16stats", "spqr_v2_f16_add", "squeezellm"])
def test_parallel_decode_matches_reference_reader(written: tuple[Path, dict[str, object]], name: str) -> None:
    path, encs = written
    ref = refreader.open_file(path).decode(name)
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            with spqrfmt.open(path) as f:
                got = f[name].decode()
            assert np.array_equal(got.view(np.uint32), np.asarray(ref, dtype=np.float32).view(np.uint32)), threads
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(got.view(np.uint32), encs[name].dequantized.view(np.uint32))
