"""The tensor-core kernels over the tiled layout (kernels/_spqr_dot.py) under TRITON_INTERPRET=1.

Dequantization bit-exact to the reference decoder (both column orders, f32 and f16); the matmul by
relative error against a float64 product with the reference matrix, at batch 2..64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install spqrfmt[gpu])")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton.jit runs
pytest.importorskip("triton", reason="triton is not installed (pip install spqrfmt[gpu])")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_kernels import DEVICE, MATVEC_TOL, _encode, _same_bits  # noqa: E402

from spqrfmt.decoder.spqr import decode  # noqa: E402
from spqrfmt.kernels import _spqr_dot as KD  # noqa: E402
from spqrfmt.kernels import spqr as ks  # noqa: E402


def _check(seed, shape, bits, gs, sbits, b2, outliers, perm, batches, cfg):
    m, n = shape
    enc = _encode(seed, m, n, bits, gs, sbits, b2, outliers, perm)
    ref = decode(enc.params, enc.sections, shape)
    prep = ks.prepare(enc.params, enc.sections, shape, DEVICE, layout="tiled")
    p = enc.sections.get("perm")
    stored = ref[:, p.astype(np.int64)] if p is not None else ref
    for fuse in (False, True):  # the outliers stored by their own kernel, or inside the dequantization's tiles
        assert _same_bits(KD.dequantize_tiled(prep, torch.float32, stored_order=False, fuse_outliers=fuse)
                          .cpu().numpy(), ref)
        assert _same_bits(KD.dequantize_tiled(prep, torch.float32, bm=cfg.BM, nu=cfg.NU, fuse_outliers=fuse)
                          .cpu().numpy(), stored)
    got16 = KD.dequantize_tiled(prep, torch.float16).cpu().numpy()
    np.testing.assert_array_equal(got16.view(np.uint16), stored.astype(np.float16).view(np.uint16))
    rng = np.random.default_rng(seed)
    for batch in batches:
        x = torch.from_numpy(rng.standard_normal((batch, n)).astype(np.float16)).to(DEVICE)
        bias = torch.from_numpy(rng.standard_normal(m).astype(np.float16)).to(DEVICE)
        y = KD.matmul(prep, x, bias, cfg).float().cpu().numpy().astype(np.float64)
        yr = x.cpu().numpy().astype(np.float64) @ ref.astype(np.float64).T + bias.cpu().numpy().astype(np.float64)
        assert y.shape == (batch, m) and np.all(np.isfinite(y))
        assert np.linalg.norm(y - yr) <= MATVEC_TOL * max(np.linalg.norm(yr), 1e-30)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.tuples(st.integers(1, 40), st.integers(1, 150)), bits=st.sampled_from([2, 3, 4]),
       gs=st.sampled_from([16, 32, 48]), sbits=st.sampled_from([3, 16]), b2=st.sampled_from([1, 5, 16, 32]),
       outliers=st.sampled_from(["none", "some", "rows"]), perm=st.booleans(), seed=st.integers(0, 2**31 - 1),
       tile=st.sampled_from([(16, 1, 1, False), (32, 2, 3, False), (64, 1, None, False), (32, 2, 2, True)]))
def test_dot_exact_dequant_and_matmul(shape, bits, gs, sbits, b2, outliers, perm, seed, tile):
    bm, nu, split, trans = tile
    _check(seed, shape, bits, gs, sbits, b2, outliers, perm, (2, 5, 16),
           KD.DotConfig(BM=bm, NU=nu, split=split, trans=trans))


def test_dot_prefill_batch_64_and_over():
    """64 rows in one launch (BB = 64) and 70 rows as two launches, an odd shape, outliers and perm."""
    _check(3, (37, 97), 3, 16, 3, 16, "some", True, (64, 70), KD.DotConfig(BM=32, NU=2, split=2))
    _check(4, (20, 64), 4, 32, 16, 5, "rows", False, (17,), KD.DotConfig(BM=16, NU=1, trans=True))


def test_matvec_over_16_rows_and_dequantize_stored_dispatch_here():
    """ks.matvec over 16 rows (tiled layout) and ks.dequantize_stored take the _spqr_dot kernels."""
    m, n = 24, 80
    enc = _encode(5, m, n, 3, 16, 3, 16, "some", True)
    ref = decode(enc.params, enc.sections, (m, n)).astype(np.float64)
    prep = ks.prepare(enc.params, enc.sections, (m, n), DEVICE)
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((40, n)).astype(np.float16)).to(DEVICE)
    y = ks.matvec(prep, x).double().cpu().numpy()
    yr = x.cpu().numpy().astype(np.float64) @ ref.T
    assert np.linalg.norm(y - yr) <= MATVEC_TOL * np.linalg.norm(yr)
    p = enc.sections["perm"].astype(np.int64)
    assert _same_bits(ks.dequantize_stored(prep, torch.float32).cpu().numpy(), ref.astype(np.float32)[:, p])
