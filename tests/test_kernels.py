"""Triton kernels (spqrfmt.kernels) against the reference decoder, on CPU through TRITON_INTERPRET=1.

Dequantization must be bit-identical to spqrfmt.decoder.spqr.decode (NaN compared
as "any NaN"); the fused matvec is checked by relative error against a float64
product with the reference matrix. The same kernels run on a real GPU in
bench/gpu_check.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install spqrfmt[gpu])")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton.jit runs
pytest.importorskip("triton", reason="triton is not installed (pip install spqrfmt[gpu])")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spqrfmt.decoder.spqr import decode  # noqa: E402
from spqrfmt.encoder.spqr import quantize_spqr  # noqa: E402
from spqrfmt.kernels import spqr as ks  # noqa: E402
from spqrfmt.kernels.linear import SpQRLinear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MATVEC_TOL = 4e-3  # fp16 activations and output: ~1e-3 expected


def _encode(seed: int, m: int, n: int, bits: int, gs: int, sbits: int, b2: int, outliers: str, perm: bool):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)).astype(np.float32)
    mask = np.zeros((m, n), dtype=bool)
    if outliers == "some":
        mask = rng.random((m, n)) < 0.05
        w[mask] *= 8.0
    elif outliers == "rows":
        mask[rng.integers(0, m, size=max(1, m // 4))] = True
    p = rng.permutation(n) if perm else None
    return quantize_spqr(w, bits=bits, group_size=gs, scale_bits=sbits, zero_bits=sbits, stat_group_size=b2,
                         outlier_fraction=0.0, perm=p, outlier_mask=mask)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical f32 arrays, any NaN matching any NaN."""
    na, nb = np.isnan(a), np.isnan(b)
    if not np.array_equal(na, nb):
        return False
    return np.array_equal(np.where(na, 0, a).view(np.uint32), np.where(nb, 0, b).view(np.uint32))


def _check_dequant(enc, shape) -> None:
    ref = decode(enc.params, enc.sections, shape)
    secs = ks.to_device(enc.sections, DEVICE)
    got = ks.dequantize(enc.params, secs, shape, torch.float32).cpu().numpy()
    assert got.dtype == np.float32 and got.shape == shape
    assert _same_bits(got, ref)
    ref_t = torch.from_numpy(ref)
    for dt in (torch.float16, torch.bfloat16):
        out = ks.dequantize(enc.params, secs, shape, dt).cpu()
        want = ref_t.to(dt)
        same = (out.view(torch.int16) == want.view(torch.int16)) | (torch.isnan(out) & torch.isnan(want))
        assert bool(same.all()), dt
    # the same matrix decoded from the load-time repack (grouped layout: spec codes no longer on the device)
    for packed in (True, False):
        prep = ks.prepare(enc.params, enc.sections, shape, DEVICE, packed_stats=packed)
        assert ("codes" in prep.sections) == (prep.layout == "planes")
        assert _same_bits(ks.dequantize_prepared(prep, torch.float32).cpu().numpy(), ref)
        for dt in (torch.float16, torch.bfloat16):
            out = ks.dequantize_prepared(prep, dt).cpu()
            want = ref_t.to(dt)
            same = (out.view(torch.int16) == want.view(torch.int16)) | (torch.isnan(out) & torch.isnan(want))
            assert bool(same.all()), (dt, prep.layout, prep.packed_stats)


def _relerr(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


shapes = st.tuples(st.integers(1, 40), st.integers(1, 150))
configs = st.fixed_dictionaries({
    "bits": st.sampled_from([2, 3, 4, 8]),
    "gs": st.sampled_from([1, 5, 16, 24, 32, 64, 200]),
    "sbits": st.sampled_from([3, 16]),
    "b2": st.integers(1, 20),
    "outliers": st.sampled_from(["none", "some", "rows"]),
    "perm": st.booleans(),
})


@SETTINGS
@given(shape=shapes, cfg=configs, seed=st.integers(0, 2**31 - 1))
def test_dequantize_bit_exact(shape, cfg, seed):
    enc = _encode(seed, *shape, **cfg)
    _check_dequant(enc, shape)


@pytest.mark.parametrize("bits", [1, 5, 6, 7])
def test_dequantize_other_bit_widths(bits):
    shape = (19, 77)
    enc = _encode(bits, *shape, bits=bits, gs=16, sbits=3, b2=4, outliers="some", perm=True)
    _check_dequant(enc, shape)


def test_dequantize_special_values_propagate():
    """NaN/inf statistics and outliers are legal (spqr.md §6) and must decode exactly like the reference."""
    shape = (20, 48)
    for sbits in (16, 3):
        enc = _encode(7, *shape, bits=3, gs=16, sbits=sbits, b2=8, outliers="some", perm=False)
        secs = dict(enc.sections)
        if sbits == 16:
            s = secs["scale"].copy()
            s[0, :3] = [np.inf, -np.inf, np.nan]
            z = secs["zero"].copy()
            z[1, 5] = np.nan
            secs["scale"], secs["zero"] = s, z
        else:
            ss = secs["scale_scale"].copy()
            ss[0, 0] = np.inf
            ss[1, 1] = np.float16(65504)
            secs["scale_scale"] = ss
        v = secs["outlier_val"].copy()
        v[:2] = [np.nan, -np.inf]
        secs["outlier_val"] = v
        enc.sections = secs
        ref = decode(enc.params, secs, shape)
        assert not np.isfinite(ref).all()
        _check_dequant(enc, shape)


@SETTINGS
@given(shape=shapes, cfg=configs, seed=st.integers(0, 2**31 - 1), batch=st.sampled_from([1, 1, 3, 16]),
       bm=st.sampled_from([16, 32]), nh=st.sampled_from([16, 32]), split=st.sampled_from([1, 2, 5]),
       packed=st.booleans(), tile_dot=st.booleans(), x_inline=st.booleans(), finish=st.booleans(),
       grouped=st.booleans())
# Found by hypothesis: the batch-1 f16x2 path summed q·x in f16 and subtracted Z·Σx afterwards, so the
# cancellation amplified the f16 rounding (relerr 4.2e-3 on this 13x119, 3-bit, β1 = 64 tensor). The codes are
# now centred (Σ(q - 2^(b-1))·x), which keeps this case inside the tolerance.
@example(shape=(13, 119), cfg={"bits": 3, "gs": 64, "sbits": 3, "b2": 2, "outliers": "some", "perm": True},
         seed=54, batch=1, bm=16, nh=16, split=1, packed=False, tile_dot=False, x_inline=False, finish=False,
         grouped=False)
def test_matvec_matches_reference(shape, cfg, seed, batch, bm, nh, split, packed, tile_dot, x_inline, finish,
                                  grouped):
    m, n = shape
    enc = _encode(seed, m, n, **cfg)
    ref = decode(enc.params, enc.sections, shape).astype(np.float64)
    layout = "grouped" if grouped and ks._grouped_ok(enc.params) else None  # else the default (tiled when it fits)
    prep = ks.prepare(enc.params, enc.sections, shape, DEVICE, packed_stats=packed, layout=layout)
    rng = np.random.default_rng(seed + 1)
    x = torch.from_numpy(rng.standard_normal((batch, n)).astype(np.float32)).half()
    want = x.double().numpy() @ ref.T
    y = ks.matvec(prep, x.to(DEVICE), config=ks.MatvecConfig(BM=bm, NH=nh, split=split, tile_dot=tile_dot,
                                                              x_inline=x_inline, fused_finish=finish))
    assert y.dtype == torch.float16 and tuple(y.shape) == (batch, m)
    got = y.double().cpu().numpy()
    assert np.isfinite(got).all()
    assert _relerr(got, want) < MATVEC_TOL


def test_matvec_1d_and_bias_and_f32():
    shape = (37, 100)
    enc = _encode(3, *shape, bits=3, gs=16, sbits=3, b2=16, outliers="some", perm=True)
    ref = decode(enc.params, enc.sections, shape).astype(np.float64)
    prep = ks.prepare(enc.params, enc.sections, shape, DEVICE)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape[1]).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    for split, finish in ((1, False), (3, False), (3, True), (3, True)):  # twice with the fused finish: the
        # self-resetting workspace must be zero again
        y = ks.matvec(prep, torch.from_numpy(x).to(DEVICE), torch.from_numpy(bias).to(DEVICE),
                      config=ks.MatvecConfig(BM=16, NH=16, split=split, fused_finish=finish))
        assert y.shape == (shape[0],) and y.dtype == torch.float32
        assert _relerr(y.cpu().double().numpy(), ref @ x + bias) < 1e-5
    if prep.layout == "grouped":
        acc, cnt = prep.split_workspace()
        assert not acc.any() and not cnt.any()


@pytest.mark.parametrize("rows", [2, 20])
def test_spqr_linear_forward(rows):
    """Small inputs use the fused kernel, large ones dequantize + matmul: both equal the reference layer."""
    shape = (24, 80)
    enc = _encode(11, *shape, bits=4, gs=16, sbits=3, b2=16, outliers="some", perm=True)
    ref = decode(enc.params, enc.sections, shape).astype(np.float64)
    bias = np.random.default_rng(1).standard_normal(shape[0]).astype(np.float16)
    secs = dict(enc.sections, bias=bias)
    layer = SpQRLinear.from_sections(enc.params, secs, shape, device=DEVICE, fused_max_rows=16)
    assert layer.in_features == 80 and layer.out_features == 24 and layer.bias is not None
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, rows // 2, 80)).astype(np.float32))
    y = layer(x.to(DEVICE))
    assert tuple(y.shape) == (2, rows // 2, 24)
    want = x.double().numpy() @ ref.T + bias.astype(np.float64)
    assert _relerr(y.double().cpu().numpy(), want) < 1e-5


# ---- codec spqr v2 (spqr.md §8): arith f16 / additive outliers -------------------------------

SPECIAL16 = np.array([np.nan, np.inf, -np.inf, 65504, -65504, 6e-8, -0.0, 1e-3], np.float16)


def _check_dequant_v2(params, sections, shape) -> None:
    """Triton v2 dequantization == Numba v2 decode, bit for bit (f32, and the f16/bf16 RNE casts)."""
    ref = decode(params, sections, shape)
    secs = ks.to_device(sections, DEVICE)
    got = ks.dequantize(params, secs, shape, torch.float32).cpu().numpy()
    assert got.dtype == np.float32 and got.shape == shape
    assert _same_bits(got, ref)
    ref_t = torch.from_numpy(ref)
    for dt in (torch.float16, torch.bfloat16):
        out = ks.dequantize(params, secs, shape, dt).cpu()
        want = ref_t.to(dt)
        same = (out.view(torch.int16) == want.view(torch.int16)) | (torch.isnan(out) & torch.isnan(want))
        assert bool(same.all()), dt


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, cfg=configs, seed=st.integers(0, 2**31 - 1), arith=st.sampled_from(["f32", "f16"]),
       op=st.sampled_from(["replace", "add"]), special=st.booleans())
def test_dequantize_v2_bit_exact(shape, cfg, seed, arith, op, special):
    enc = _encode(seed, *shape, **cfg)
    params = dict(enc.params, arith=arith, outlier_op=op)
    secs = {k: np.array(v) for k, v in enc.sections.items()}
    if special:  # NaN/inf/extreme statistics and outlier values
        rng = np.random.default_rng(seed)
        for role in ("scale", "zero", "scale_scale", "zero_zero", "outlier_val"):
            if role in secs and secs[role].size:
                flat = secs[role].reshape(-1)
                flat[rng.integers(0, flat.size, 2)] = rng.choice(SPECIAL16, 2)
    _check_dequant_v2(params, secs, shape)


def test_dequantize_v2_rounding_cases_and_prepared_path():
    """f16 rounding visibly changes the result (so the test above can fail); v2 runs on the prepared path:
    dequantize_prepared stays bit-exact (it keeps the spec sections), the fused matvec (v1 arithmetic
    for the dense part, outlier deltas against the exact v2 matrix) is within the matvec tolerance."""
    shape = (19, 77)
    enc = _encode(5, *shape, bits=3, gs=16, sbits=3, b2=4, outliers="some", perm=True)
    v1 = decode(enc.params, enc.sections, shape)
    for arith, op in (("f16", "replace"), ("f32", "add"), ("f16", "add")):
        params = dict(enc.params, arith=arith, outlier_op=op)
        assert not _same_bits(decode(params, enc.sections, shape), v1)
        _check_dequant_v2(params, enc.sections, shape)
        prep = ks.prepare(params, enc.sections, shape, DEVICE)
        ref = decode(params, enc.sections, shape)
        assert _same_bits(ks.dequantize_prepared(prep, torch.float32).cpu().numpy(), ref)
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((3, shape[1])).astype(np.float32))
        for rows in (x[:1], x):
            y = ks.matvec(prep, rows.to(DEVICE)).double().cpu().numpy()
            assert _relerr(y, rows.double().numpy() @ ref.astype(np.float64).T) < MATVEC_TOL
    for bits in (1, 5, 6, 7):  # every straddle pattern of the outlier kernel's code read
        enc = _encode(bits, *shape, bits=bits, gs=16, sbits=16, b2=4, outliers="some", perm=False)
        _check_dequant_v2(dict(enc.params, arith="f16", outlier_op="add"), enc.sections, shape)


# --- the tiled resident layout (kernels/_spqr_tiled.py): exact bits per code, statistics as codes -------------

tiled_configs = st.tuples(st.sampled_from([2, 3, 4]), st.sampled_from([16, 32, 48]), st.sampled_from([3, 4, 16]),
                          st.sampled_from([1, 4, 5, 16, 32]), st.sampled_from(["none", "some", "rows"]), st.booleans())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.tuples(st.integers(1, 40), st.integers(1, 150)), cfg=tiled_configs, seed=st.integers(0, 2**31 - 1),
       bm=st.sampled_from([16, 32, 64]), nu=st.sampled_from([1, 2, 4]), split=st.sampled_from([None, 1, 3]))
def test_tiled_layout_exact_and_matvec(shape, cfg, seed, bm, nu, split):
    """Dequantization from the tiled layout is bit-exact (both column orders); matvec within tolerance at batch 1
    (f16x2 FMAs), 2 (FMAs, one decode for both rows), 3 and 16 (the tensor-core dot path)."""
    m, n = shape
    bits, gs, sbits, b2, outliers, perm = cfg
    enc = _encode(seed, m, n, bits, gs, sbits, b2, outliers, perm)
    ref = decode(enc.params, enc.sections, shape)
    prep = ks.prepare(enc.params, enc.sections, shape, DEVICE, layout="tiled")
    assert prep.layout == "tiled" and "codes" not in prep.sections
    assert prep.resident_nbytes < 1.6 * ks.bytes_of(enc.sections) + 4096
    got = ks.dequantize_prepared(prep, torch.float32).cpu().numpy()
    assert _same_bits(got, ref)
    stored = ks.dequantize_stored(prep, torch.float32).cpu().numpy()
    p = enc.sections.get("perm")
    assert _same_bits(stored, ref[:, p.astype(np.int64)] if p is not None else ref)
    got16 = ks.dequantize_prepared(prep, torch.float16).cpu().numpy()
    np.testing.assert_array_equal(got16.view(np.uint16), ref.astype(np.float16).view(np.uint16))
    cfgm = ks.MatvecConfig(BM=bm, NH=nu, split=split)
    rng = np.random.default_rng(seed)
    for batch in (1, 2, 3, 16):
        x = torch.from_numpy(rng.standard_normal((batch, n)).astype(np.float16)).to(DEVICE)
        y = ks.matvec(prep, x, config=cfgm).float().cpu().numpy().astype(np.float64)
        yr = x.cpu().numpy().astype(np.float64) @ ref.astype(np.float64).T
        assert np.all(np.isfinite(y))
        assert np.linalg.norm(y - yr) <= MATVEC_TOL * max(np.linalg.norm(yr), 1e-30)


def test_tiled_layout_refuses_what_it_cannot_hold():
    enc = _encode(0, 8, 40, 5, 16, 3, 16, "none", False)
    with pytest.raises(ValueError, match="tiled layout"):
        ks.prepare(enc.params, enc.sections, (8, 40), DEVICE, layout="tiled")
    enc = _encode(0, 8, 40, 3, 24, 3, 16, "none", False)
    with pytest.raises(ValueError, match="tiled layout"):
        ks.prepare(enc.params, enc.sections, (8, 40), DEVICE, layout="tiled")
    enc = _encode(0, 8, 64, 3, 16, 3, 16, "some", False)
    prep = ks.prepare(enc.params, enc.sections, (8, 64), DEVICE, layout="tiled")
    prep.tiled = prep.tiled[:1]
    with pytest.raises(ValueError, match="tiled"):
        ks.matvec(prep, torch.zeros(64, dtype=torch.float16, device=DEVICE))


def test_large_groups_compile_once_with_a_runtime_group_size():
    """β1 = n (per-channel, legal) at 8 bits: the planes kernel takes β1 at run time (no compile per β1)."""
    from spqrfmt.kernels import _spqr_planes as kt

    for gs in (256, 1024):
        enc = _encode(5, 8, gs, 8, gs, 16, 16, "some", False)
        prep = ks.prepare(enc.params, enc.sections, (8, gs), DEVICE)
        assert prep.layout == "planes"
        ref = decode(enc.params, enc.sections, (8, gs)).astype(np.float64)
        x = torch.from_numpy(np.random.default_rng(gs).standard_normal(gs).astype(np.float32))
        y = ks.matvec(prep, x.to(DEVICE)).double().cpu().numpy()
        assert _relerr(y, ref @ x.double().numpy()) < 1e-5
    import inspect

    fn = getattr(kt.fused_kernel, "fn", kt.fused_kernel)  # the interpreter wraps the JIT function
    while hasattr(fn, "fn"):
        fn = fn.fn
    assert "constexpr" not in str(inspect.signature(fn).parameters["GS"].annotation)


def _count_launches(monkeypatch, module) -> dict[str, int]:
    """Patch every launched Triton kernel (``*_kernel``) of ``module`` to count its launches (``kernel[grid](...)``)."""
    counts: dict[str, int] = {}

    class Counting:
        def __init__(self, name, fn):
            self.name, self.fn = name, fn

        def __getitem__(self, grid):
            counts[self.name] = counts.get(self.name, 0) + 1
            return self.fn[grid]

    import triton

    for name in dir(module):
        fn = getattr(module, name)
        if name.endswith("_kernel") and (isinstance(fn, triton.runtime.JITFunction)
                                         or type(fn).__name__ == "InterpretedFunction"):
            monkeypatch.setattr(module, name, Counting(name, fn))
    return counts


@pytest.mark.parametrize("bits,gs,perm,outliers,shape", [(3, 16, True, "some", (37, 150)),
                                                         (4, 32, False, "rows", (40, 96)),
                                                         (3, 48, True, "none", (5, 33)),
                                                         (2, 16, True, "some", (19, 70))])
def test_tiled_batch1_launches_and_one_launch_variant(monkeypatch, bits, gs, perm, outliers, shape):
    """Batch 1 on the tiled layout: x-prep + GEMV (split-K finished in the GEMV), or the GEMV alone with
    ``x_inline`` (3/4-bit f16x2 path); both within the matvec tolerance of float64; scratch reused across calls."""
    from spqrfmt.kernels import _spqr_tiled as KT

    m, n = shape
    enc = _encode(7, m, n, bits, gs, 3, 16, outliers, perm)
    ref = decode(enc.params, enc.sections, shape).astype(np.float64)
    prep = ks.prepare(enc.params, enc.sections, shape, DEVICE, layout="tiled")
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, n)).astype(np.float16)).to(DEVICE)
    yr = x.cpu().numpy().astype(np.float64) @ ref.T
    counts = _count_launches(monkeypatch, KT)
    for xin in (False, True):
        counts.clear()
        cfg = ks.MatvecConfig(BM=16, NH=2, split=3, x_inline=xin)
        y = ks.matvec(prep, x, config=cfg).float().cpu().numpy().astype(np.float64)
        assert np.linalg.norm(y - yr) <= MATVEC_TOL * max(np.linalg.norm(yr), 1e-30)
        one = xin and bits in (3, 4)
        assert counts == ({"gemv_kernel": 1} if one else
                          {"gemv_kernel": 1, "xprep_h2_kernel" if bits in (3, 4) else "xprep_kernel": 1}), counts
    before = {k: v.data_ptr() for k, v in prep._ws.items()}
    ks.matvec(prep, x, config=ks.MatvecConfig(BM=16, NH=2, split=3))
    assert {k: v.data_ptr() for k, v in prep._ws.items()} == before  # no per-call allocation of the operands
    if "cnt" in prep._ws:  # a column split ran (one tile: a single program per row block, no workspace)
        assert not prep._ws["cnt"].cpu().numpy().any() and not prep._ws["acc"].cpu().numpy().any()  # at rest


def test_tiled_default_plans_are_reused_and_rebuilt():
    """With the default config a tensor keeps one launch plan per (batch, dtype, bias): repeated calls with new
    activations give the same results as the first, other batches and dtypes get their own plan, and a replaced
    layout field (the dataclass is mutable) builds the plan again instead of launching on stale tensors."""
    shape = (40, 96)
    enc = _encode(5, *shape, bits=3, gs=16, sbits=3, b2=16, outliers="some", perm=True)
    ref = decode(enc.params, enc.sections, shape).astype(np.float64)
    prep = ks.prepare(enc.params, enc.sections, shape, DEVICE, layout="tiled")
    rng = np.random.default_rng(3)
    bias = torch.from_numpy(rng.standard_normal(shape[0]).astype(np.float32)).to(DEVICE)
    first = {}
    for rep in range(2):
        for B, dt, b in ((1, torch.float16, None), (3, torch.float16, bias), (1, torch.float32, bias),
                         (16, torch.float16, None)):
            x = torch.from_numpy(rng.standard_normal((B, shape[1])).astype(np.float32)).to(DEVICE).to(dt)
            bb = None if b is None else b.to(dt)
            y = ks.matvec(prep, x, bb)
            want = x.double().cpu().numpy() @ ref.T + (0 if b is None else bb.double().cpu().numpy())
            assert y.dtype == dt and _relerr(y.double().cpu().numpy(), want) < MATVEC_TOL
            if rep == 0:
                first[(B, dt)] = (x, bb, y)
            else:  # the first call's inputs again: the cached plan gives the same bits
                x0, b0, y0 = first[(B, dt)]
                assert torch.equal(ks.matvec(prep, x0, b0), y0)
    assert len(prep._plans) == 4
    plan = prep._plans[(1, torch.float16, False)]
    prep.o_delta = prep.o_delta.clone()
    x0, b0, y0 = first[(1, torch.float16)]
    assert torch.equal(ks.matvec(prep, x0, b0), y0)
    assert prep._plans[(1, torch.float16, False)] is not plan
