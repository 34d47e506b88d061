"""squeezellm fused matvec, byte-permute (``prmt``) table lookup: the byte-plane tables and the decode that the
PTX instruction performs (emulated bit for bit in the interpreter), at batch 1..16 and 3/4 bits.

The GPU runs the same steps as inline PTX (bench/gpu_check_codecs.py checks it there).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from spqrfmt.decoder.squeezellm import decode
from spqrfmt.encoder.squeezellm import quantize_squeezellm

from conftest import kernels_module


@pytest.fixture(scope="module")
def ks() -> Any:
    return kernels_module("squeezellm")


def _prmt(a: np.ndarray, b: np.ndarray, sel: np.ndarray | int) -> np.ndarray:
    """prmt.b32 as the PTX manual defines it (default mode), written independently of the kernel's stand-in."""
    src = (b.astype(np.uint64) << np.uint64(32)) | a.astype(np.uint64)
    sel = np.asarray(sel, dtype=np.uint64)
    out = np.zeros(np.broadcast(a, b, sel).shape, dtype=np.uint64)
    for i in range(4):
        nib = (sel >> np.uint64(4 * i)) & np.uint64(0xF)
        byte = (src >> ((nib & np.uint64(7)) * np.uint64(8))) & np.uint64(0xFF)
        byte = np.where(nib & np.uint64(8), np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0)), byte)
        out |= byte << np.uint64(8 * i)
    return out.astype(np.uint32)


@pytest.mark.parametrize("bits", [3, 4])
def test_byte_planes_give_every_entry(ks: Any, bits: int) -> None:
    """The instruction sequence of the PTX block (per 4 codes) on the byte planes returns lut[code] bit for bit."""
    import torch

    k = 1 << bits
    rng = np.random.default_rng(bits)
    lut = torch.from_numpy(rng.standard_normal((5, k)).astype(np.float16))
    planes = ks.byte_planes(lut).numpy().view(np.uint32)
    assert planes.shape == (5, k // 2)
    codes = rng.integers(0, k, size=(5, 4))
    s = np.zeros(5, dtype=np.uint32)
    for i in range(4):
        s |= (codes[:, i] << (4 * i)).astype(np.uint32)
    s |= np.uint32(0xABCD0000)  # the other fields' nibbles are ignored
    a = [planes[:, j] for j in range(k // 2)]
    if k == 8:
        lo, hi = _prmt(a[0], a[1], s), _prmt(a[2], a[3], s)
    else:
        t = s ^ np.uint32(0x8888)
        u = ((s >> np.uint32(1)) & np.uint32(0x4444)) | np.uint32(0x3210)
        lo = _prmt(_prmt(a[0], a[1], s), _prmt(a[2], a[3], t), u)
        hi = _prmt(_prmt(a[4], a[5], s), _prmt(a[6], a[7], t), u)
    pairs = np.stack([_prmt(lo, hi, 0x5140), _prmt(lo, hi, 0x7362)], axis=1)
    got = pairs.view(np.uint16).reshape(5, 4)
    want = lut.numpy().view(np.uint16)[np.arange(5)[:, None], codes]
    assert np.array_equal(got, want)


@pytest.mark.parametrize("bits,m,n,outliers", [(3, 19, 133, 0.02), (4, 17, 70, 0.05), (3, 1, 17, 0.0),
                                               (4, 7, 257, 0.0)])
def test_prmt_matvec_matches_float64(ks: Any, bits: int, m: int, n: int, outliers: float) -> None:
    """The prmt decode (default; batch 1, 3, 16, f32 and f16 activations), the select tree and batch-1 tl.dot on
    word pairs agree with float64: odd shapes, sparse fp16 residuals."""
    import torch

    rng = np.random.default_rng(m * n + bits)
    w = rng.standard_normal((m, n)).astype(np.float32)
    enc = quantize_squeezellm(w, bits=bits, outlier_fraction=outliers, max_iter=3)
    ref = decode(enc.params, enc.sections, (m, n)).astype(np.float64)
    prep = ks.prepare(enc.params, enc.sections, (m, n), "cpu")
    assert prep.ptab.shape == (m, (1 << bits) // 2)
    runs = [(b, ks.GemvConfig(BM=16, NU=16)) for b in (1, 3, 16)]
    runs += [(1, ks.GemvConfig(BM=16, NU=16, prmt=False)), (1, ks.GemvConfig(BM=16, NU=16, dot1=True, split=2,
                                                                           pair=True))]
    for batch, cfg in runs:
        x = torch.from_numpy(rng.standard_normal((batch, n)).astype(np.float32))
        want = x.double().numpy() @ ref.T
        y = ks.matvec(prep, x, None, cfg).double().numpy()
        assert np.linalg.norm(y - want) <= 1e-5 * np.linalg.norm(want)
        if cfg.prmt:
            xh = x.half()
            yh = ks.matvec(prep, xh, None, cfg)
            want = xh.double().numpy() @ ref.T
            assert yh.dtype == torch.float16
            assert np.linalg.norm(yh.double().numpy() - want) <= 4e-3 * np.linalg.norm(want)


def test_prmt_tables_size_checked(ks: Any) -> None:
    import torch

    w = np.random.default_rng(3).standard_normal((4, 40)).astype(np.float32)
    enc = quantize_squeezellm(w, bits=3, outlier_fraction=0.0, max_iter=2)
    prep = ks.prepare(enc.params, enc.sections, (4, 40), "cpu")
    prep.ptab = prep.ptab[:3]
    with pytest.raises(ValueError, match="ptab"):
        ks.matvec(prep, torch.zeros(40))
