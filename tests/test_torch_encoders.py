"""The torch data-free encoders (encoder/torch/) on device="cpu" give the CPU encoders' bytes exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from spqrfmt.encoder import quip, squeezellm  # noqa: E402
from spqrfmt.encoder import spqr as rtn  # noqa: E402 - the data-free (round-to-nearest) spqr encoder
from spqrfmt.encoder import torch as tenc  # noqa: E402
from spqrfmt.encoder.torch import SIGNED_ZERO_SECTIONS, differences, encoder_for  # noqa: E402
from spqrfmt.encoder.torch import grid_search as tgrid  # noqa: E402
from spqrfmt.encoder.torch import quip as tquip  # noqa: E402
from spqrfmt.encoder.torch import spqr as tspqr  # noqa: E402
from spqrfmt.encoder.torch import squeezellm as tsq  # noqa: E402

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def weights(m: int, n: int, seed: int, kind: int) -> np.ndarray:
    """Normal weights; kind 1: few distinct values (ties everywhere), 2: with exact zeros, 3: wide dynamic range."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)).astype(np.float32)
    if kind == 1:
        w = np.round(w * 2) / 2
    elif kind == 2:
        w[rng.random((m, n)) < 0.3] = 0.0
    elif kind == 3:
        w *= np.exp2(rng.integers(-20, 6, (m, n))).astype(np.float32)
    return w.astype(np.float32)


@SETTINGS
@given(m=st.integers(1, 40), n=st.integers(1, 70), bits=st.integers(1, 8), group=st.integers(1, 20),
       stat_bits=st.sampled_from([1, 2, 3, 4, 8, 16]), zero_bits=st.sampled_from([2, 3, 16]),
       stat_group=st.integers(1, 20), frac=st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.3]),
       seed=st.integers(0, 2**31), kind=st.integers(0, 3))
def test_spqr_matches_cpu(m: int, n: int, bits: int, group: int, stat_bits: int, zero_bits: int, stat_group: int,
                          frac: float, seed: int, kind: int) -> None:
    w = weights(m, n, seed, kind)
    kw = dict(bits=bits, group_size=group, scale_bits=stat_bits, zero_bits=zero_bits, stat_group_size=stat_group,
              outlier_fraction=frac)
    diff = differences(rtn.quantize_spqr(w, **kw), tspqr.quantize_spqr(w, device="cpu", **kw), SIGNED_ZERO_SECTIONS)
    assert all(d.endswith(": signed zero") for d in diff), diff  # see SIGNED_ZERO_SECTIONS


def test_spqr_perm_and_mask_match_cpu() -> None:
    w = weights(30, 50, 7, 0)
    rng = np.random.default_rng(1)
    kw = dict(bits=3, group_size=7, perm=rng.permutation(50), outlier_mask=rng.random((30, 50)) < 0.05)
    assert differences(rtn.quantize_spqr(w, **kw), tspqr.quantize_spqr(w, device="cpu", **kw)) == []


@SETTINGS
@given(m=st.integers(1, 30), n=st.integers(1, 60), bits=st.integers(1, 5), frac=st.sampled_from([0.0, 0.0045, 0.05]),
       sens=st.sampled_from([None, "mn", "n", "zeros"]), bias=st.booleans(), seed=st.integers(0, 2**31),
       kind=st.sampled_from([0, 1, 3]))
def test_squeezellm_matches_cpu(m: int, n: int, bits: int, frac: float, sens: str | None, bias: bool, seed: int,
                                kind: int) -> None:
    w = weights(m, n, seed, kind)
    rng = np.random.default_rng(seed + 1)
    s = {None: None, "mn": rng.random((m, n)) ** 3, "n": rng.random(n), "zeros": np.zeros((m, n))}[sens]
    kw = dict(bits=bits, sensitivity=s, outlier_fraction=frac, max_iter=30,
              bias=rng.standard_normal(m).astype(np.float32) if bias else None)
    assert differences(squeezellm.quantize_squeezellm(w, **kw), tsq.quantize_squeezellm(w, device="cpu", **kw)) == []


@SETTINGS
@given(am=st.sampled_from([1, 3, 5]), km=st.integers(0, 5), an=st.sampled_from([1, 3, 7]), kn=st.integers(0, 6),
       bits=st.integers(1, 8), seed=st.integers(0, 100), bias=st.booleans(), kind=st.sampled_from([0, 3]))
def test_quip_matches_cpu(am: int, km: int, an: int, kn: int, bits: int, seed: int, bias: bool, kind: int) -> None:
    m, n = am << km, an << kn
    w = weights(m, n, seed, kind)
    kw = dict(bits=bits, seed=seed, bias=np.arange(m, dtype=np.float32) if bias else None)
    assert differences(quip.quantize_quip(w, **kw), tquip.quantize_quip(w, device="cpu", **kw)) == []


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(am=st.sampled_from([1, 3]), km=st.integers(0, 4), an=st.sampled_from([1, 5]), kn=st.integers(0, 5),
       bits=st.integers(1, 8), seed=st.integers(0, 100), kind=st.sampled_from([0, 1, 3]))
def test_quip_triton_kernels_match_cpu_random(am: int, km: int, an: int, kn: int, bits: int, seed: int,
                                              kind: int) -> None:
    m, n = am << km, an << kn
    w = weights(m, n, seed, kind)
    got = tquip.quantize_quip(w, bits=bits, seed=seed, device="cpu", kernels="triton")
    assert differences(quip.quantize_quip(w, bits=bits, seed=seed), got) == []


@pytest.mark.parametrize("m,n,bits", [(1, 8192, 3), (12, 56, 2), (20, 40, 5), (16, 32, 8), (5, 6, 1), (24, 1, 4)])
def test_quip_triton_kernels_match_cpu(m: int, n: int, bits: int) -> None:
    """The Triton kernels (CUDA's default; here under TRITON_INTERPRET=1): odd factors on both sides,
    h = 1 (no kernel), 2^13 (12 stages in the kernel, the 13th in torch), codes straddling words, n % 32 != 0."""
    w = weights(m, n, m + n, 0)
    kw = dict(bits=bits, seed=m)
    assert differences(quip.quantize_quip(w, **kw), tquip.quantize_quip(w, device="cpu", kernels="triton", **kw)) == []


@pytest.mark.parametrize("bits,triton", [(1, False), (2, False), (4, False), (8, False), (2, True), (8, True)])
def test_quip_bounded_search_matches_cpu(bits: int, triton: bool) -> None:
    """The torch grid-scale search picks the CPU's candidate on rows that defeat the bounds: constant rows
    (every candidate exact), two values, values on the grid's decision points, a huge dynamic range, one
    outlier, tiny rows; with the Triton histogram and error kernels (TRITON_INTERPRET=1) too."""
    import torch

    from spqrfmt.encoder import grid_search

    rng = np.random.default_rng(bits)
    n = 96
    g = rng.standard_normal((6, n))
    rows = [np.zeros(n), np.full(n, 0.75), np.where(np.arange(n) % 2, 1.0, -3.0), np.round(g[0] * 4) / 4,
            g[1] * np.exp2(rng.integers(-40, 40, n)), np.where(np.arange(n) == 5, 1e6, g[2]), g[3] * 1e-300,
            np.round(g[4] * 2) / 2 * (1 << bits)]
    wt = np.stack(rows)
    mults = quip.grid_mults(bits)
    for w in (wt, wt[:, :3], wt[:, :1]):
        rms = np.sqrt(np.mean(w * w, axis=1)) + 1e-30
        want = grid_search.best_candidates(w, rms, mults, bits)
        got = tgrid.best_candidates(torch.from_numpy(np.ascontiguousarray(w)), torch.from_numpy(rms),
                                    torch.from_numpy(mults), bits, chunk_elements=1000, triton=triton)
        assert got.numpy().tolist() == want.tolist()


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_quip_rejects_non_finite(kernels: str) -> None:
    """A NaN or infinity anywhere (odd factors included) is the CPU encoder's ValueError, before any search."""
    for m, n in ((8, 16), (12, 40), (3, 1)):
        for v in (np.nan, np.inf, -np.inf):
            w = weights(m, n, 0, 0)
            w[m - 1, n // 2] = v
            with pytest.raises(ValueError, match="NaN or infinity"):
                tquip.quantize_quip(w, device="cpu", kernels=kernels)


def test_pairwise_sum_is_numpys() -> None:
    import torch

    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 100, 128, 129, 200, 1000, 4096, 14336 // 7 * 3):
        a = rng.standard_normal((3, n)) * np.exp2(rng.integers(-30, 30, (3, n)))
        assert tgrid.pairwise_sum(torch.from_numpy(a)).numpy().tobytes() == a.sum(axis=1).tobytes(), n


def test_f64_to_f16_rounds_once() -> None:
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000) * np.exp2(rng.integers(-26, 17, 200_000))
    x = np.concatenate([x, [1 + 2**-11 + 2**-40, 1 + 2**-11, -(1 + 3 * 2**-11 - 2**-45), 2**-25 + 2**-60, 65519.99]])
    got = tsq.f64_to_f16(torch.from_numpy(x)).numpy()
    with np.errstate(over="ignore"):  # beyond the f16 range: inf in both
        want = x.astype(np.float16)
    assert got.view(np.uint16).tobytes() == want.view(np.uint16).tobytes()


@pytest.mark.parametrize("codec,shape", [("spqr", (4096, 512)), ("squeezellm", (1024, 520)), ("quip", (256, 448))])
def test_default_config_fixed_case(codec: str, shape: tuple[int, int]) -> None:
    """``encoder_for`` at ``spqr convert``'s defaults equals ``data_free_encoder`` on a larger matrix."""
    from spqrfmt.convert import QuantConfig, data_free_encoder

    cfg = QuantConfig(codec=codec)
    w = weights(*shape, 3, 0)
    assert differences(data_free_encoder("w", w, cfg), encoder_for(codec, "cpu")("w", w, cfg)) == []


def test_small_chunks_change_nothing() -> None:
    w = weights(37, 45, 5, 0)
    ref = rtn.quantize_spqr(w, bits=4, group_size=16)
    assert differences(ref, tspqr.quantize_spqr(w, bits=4, group_size=16, device="cpu", chunk_elements=100)) == []
    ref = squeezellm.quantize_squeezellm(w, max_iter=20)
    assert differences(ref, tsq.quantize_squeezellm(w, max_iter=20, device="cpu", chunk_elements=100)) == []
    ref = quip.quantize_quip(w[:32, :40])
    assert differences(ref, tquip.quantize_quip(w[:32, :40], device="cpu", chunk_elements=1000)) == []


def test_encoder_for_rejects_unknown_codec() -> None:
    with pytest.raises(ValueError, match="no torch encoder"):
        tenc.encoder_for("raw", "cpu")


@pytest.mark.parametrize("sens,kind,bits", [(None, 0, 4), (None, 1, 3), ("mn", 3, 2), (None, 3, 5)])
def test_squeezellm_triton_lloyd_matches_cpu(sens: str | None, kind: int, bits: int) -> None:
    """The one-launch Triton Lloyd kernel (CUDA's default; here Triton's interpreter) gives the CPU bytes."""
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    w = weights(9, 70, 11 + kind, kind)
    s = None if sens is None else np.random.default_rng(2).random(w.shape) ** 3
    kw = dict(bits=bits, sensitivity=s, outlier_fraction=0.03, max_iter=40)
    got = tsq.quantize_squeezellm(w, device="cpu", lloyd="triton", **kw)
    assert differences(squeezellm.quantize_squeezellm(w, **kw), got) == []


def test_squeezellm_triton_assign_matches_torch() -> None:
    """The Triton nearest-entry kernel (interpreter here) = ``_assign``: ties (duplicate and +-0 entries) to the
    lowest index, subnormal weights, rows of any length (a partial last block)."""
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    from spqrfmt.encoder.torch.squeezellm_triton import assign

    rng = np.random.default_rng(8)
    for k, n in ((2, 5), (16, 1030), (8, 64)):
        lut = np.sort(rng.standard_normal((6, k)).astype(np.float16).astype(np.float32), axis=1)
        lut[0, : k // 2] = lut[0, 0]  # duplicate entries
        lut[1, :2] = [-0.0, 0.0]
        w = rng.standard_normal((6, n)).astype(np.float32)
        w[2, :4] = [1e-42, -1e-42, 0.0, -0.0]
        w[3] = np.resize(lut[3], n)  # weights exactly on entries
        w[4, :k - 1] = (lut[4, :-1] + lut[4, 1:]) / 2  # midpoints
        wt, lt = torch.from_numpy(w), torch.from_numpy(lut)
        assert torch.equal(assign(wt, lt), tsq._assign(wt, lt))
    w = weights(7, 90, 3, 1)
    kw = dict(bits=3, outlier_fraction=0.05, max_iter=20)
    assert differences(squeezellm.quantize_squeezellm(w, **kw), tsq.quantize_squeezellm(w, device="cpu",
                                                                                         assign="triton", **kw)) == []
