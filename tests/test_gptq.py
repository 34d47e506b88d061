"""Calibration-aware SpQR/GPTQ encoder: exact decodability, the objective it optimizes, outliers, perm."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spqrfmt.decoder.spqr import decode  # noqa: E402
from spqrfmt.encoder.gptq import GPTQConfig, factor_hessian, hessian_error, quantize_gptq  # noqa: E402
from spqrfmt.encoder.spqr import quantize_spqr  # noqa: E402


def _problem(m: int, n: int, seed: int = 0, outliers: float = 0.005, corr: float = 0.9):
    """Weights with a few large entries, and a Hessian of strongly correlated, unevenly scaled inputs."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)).astype(np.float32)
    w[rng.random((m, n)) < outliers] *= 15
    # AR(1)-like correlated features with per-feature scales: far from the identity RTN assumes.
    z = rng.standard_normal((4 * n, n))
    x = np.empty_like(z)
    x[:, 0] = z[:, 0]
    for j in range(1, n):
        x[:, j] = corr * x[:, j - 1] + math.sqrt(1 - corr**2) * z[:, j]
    x *= rng.uniform(0.1, 3.0, n)
    return w, 2.0 * x.T @ x / len(x)


def _decoded(enc):
    return decode(enc.params, {k: np.asarray(v) for k, v in enc.sections.items()}, enc.shape)


CONFIGS = [
    GPTQConfig(),
    GPTQConfig(bits=2, group_size=16, max_outlier_fraction=0.02),
    GPTQConfig(bits=4, group_size=32, stat_group_size=24, max_outlier_fraction=0.003),
    GPTQConfig(bits=3, group_size=12, scale_bits=16, zero_bits=4, act_order=False),
    GPTQConfig(bits=2, group_size=16, max_outlier_fraction=0.02, outlier_rule="error"),
    GPTQConfig.plain_gptq(3, 64),
    GPTQConfig.plain_gptq(4, 65536, blocksize=32),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"b{c.bits}g{c.group_size}s{c.scale_bits}z{c.zero_bits}"
                         f"o{c.max_outlier_fraction}a{int(c.act_order)}{c.outlier_rule}")
def test_decodes_bit_exactly_to_own_dequantization(cfg: GPTQConfig) -> None:
    w, h = _problem(40, 150)  # 150 is no multiple of any group size, 40 no multiple of β2
    enc = quantize_gptq(w, h, cfg)
    assert enc.dequantized.dtype == np.float32 and enc.shape == (40, 150)
    assert np.array_equal(_decoded(enc).view(np.uint32), enc.dequantized.view(np.uint32))


def test_written_file_validates_and_decodes_identically(tmp_path) -> None:
    import spqrfmt

    w, h = _problem(32, 96, seed=3)
    enc = quantize_gptq(w, h, GPTQConfig(bits=3, max_outlier_fraction=0.02))
    path = tmp_path / "g.spqr"
    with spqrfmt.Writer(path) as wr:
        wr.add_encoded("layer.weight", enc, "f32")
    spqrfmt.validate(path)
    with spqrfmt.open(path) as f:
        assert np.array_equal(f["layer.weight"].decode().view(np.uint32), enc.dequantized.view(np.uint32))


@pytest.mark.parametrize("bits,group", [(2, 32), (3, 16), (4, 64)])
def test_gptq_beats_rtn_on_the_hessian_objective(bits: int, group: int) -> None:
    w, h = _problem(48, 128, seed=bits)
    g = quantize_gptq(w, h, GPTQConfig.plain_gptq(bits, group))
    r = quantize_spqr(w, bits=bits, group_size=group, scale_bits=16, zero_bits=16, outlier_fraction=0.0)
    assert hessian_error(w, g.dequantized, h) <= hessian_error(w, r.dequantized, h)


def test_identity_hessian_without_outliers_is_rtn() -> None:
    """With H = I there is nothing to compensate: the solver must reduce to round-to-nearest."""
    w, _ = _problem(24, 80, seed=5)
    g = quantize_gptq(w, np.eye(80), GPTQConfig.plain_gptq(3, 16, act_order=False, round_zero=False))
    r = quantize_spqr(w, bits=3, group_size=16, scale_bits=16, zero_bits=16, outlier_fraction=0.0)
    assert np.array_equal(g.dequantized, r.dequantized)


@pytest.mark.parametrize("bits,group", [(3, 16), (3, 65536), (4, 32)])
def test_plain_gptq_zero_points_are_integers(bits: int, group: int) -> None:
    """GPTQ's quantizer rounds the zero-point, so 0 is on every row's grid; quantized zeros (SpQR) are not."""
    w, h = _problem(20, 96, seed=11)
    g = quantize_gptq(w, h, GPTQConfig.plain_gptq(bits, group))
    z = np.asarray(g.sections["zero"]).view(np.float16).astype(np.float64)
    assert np.array_equal(z, np.round(z)) and z.min() >= 0 and z.max() <= (1 << bits) - 1
    unrounded = quantize_gptq(w, h, GPTQConfig.plain_gptq(bits, group, round_zero=False))
    assert not np.array_equal(unrounded.dequantized, g.dequantized)
    # With H = I nothing is fed back, so a weight of 0 stays exactly 0 on an integer zero-point's grid.
    sparse = np.where(np.arange(96) < 5, w, 0.0).astype(np.float32)
    cfg = GPTQConfig.plain_gptq(bits, group, act_order=False)
    assert np.count_nonzero(quantize_gptq(sparse, np.eye(96), cfg).dequantized[:, 5:]) == 0


@pytest.mark.parametrize("rule", ["loo", "error"])
@pytest.mark.parametrize("frac", [0.0, 0.002, 0.01, 0.05])
def test_outliers_are_valid_and_respect_the_cap(frac: float, rule: str) -> None:
    m, n = 36, 120
    w, h = _problem(m, n, seed=7, outliers=0.03)
    enc = quantize_gptq(w, h, GPTQConfig(bits=3, max_outlier_fraction=frac, outlier_relative_threshold=0.05,
                                         outlier_rule=rule))
    s = enc.sections
    row_ptr, cols, vals = (np.asarray(s[k]) for k in ("outlier_row_ptr", "outlier_col", "outlier_val"))
    nnz = len(cols)
    assert nnz == enc.info["outliers"] <= math.floor(frac * m * n)
    assert row_ptr[0] == 0 and row_ptr[-1] == nnz and np.all(np.diff(row_ptr.astype(np.int64)) >= 0)
    assert cols.dtype == np.uint16 and vals.dtype == np.float16 and np.all(cols < n)
    perm = np.asarray(s["perm"]).astype(np.int64)
    for r in range(m):
        c = cols[row_ptr[r]:row_ptr[r + 1]].astype(np.int64)
        assert np.all(np.diff(c) > 0)  # strictly increasing stored columns
        # replace semantics: the decoded weight at an outlier is its f16 value exactly
        assert np.array_equal(enc.dequantized[r, perm[c]], vals[row_ptr[r]:row_ptr[r + 1]].astype(np.float32))
    if frac >= 0.01:
        assert nnz > 0  # planted 15x weights at this threshold must produce outliers


@pytest.mark.parametrize("rule", ["loo", "error"])
def test_outliers_help_on_planted_outliers(rule: str) -> None:
    w, h = _problem(48, 128, seed=11, outliers=0.01)
    base = quantize_gptq(w, h, GPTQConfig(bits=3, outlier_relative_threshold=math.inf))
    spqr = quantize_gptq(w, h, GPTQConfig(bits=3, max_outlier_fraction=0.02, outlier_rule=rule))
    assert spqr.info["outliers"] > 0
    assert hessian_error(w, spqr.dequantized, h) < hessian_error(w, base.dequantized, h)


def _outlier_set(enc) -> set[tuple[int, int]]:
    s = enc.sections
    rp, cols = np.asarray(s["outlier_row_ptr"]).astype(np.int64), np.asarray(s["outlier_col"]).astype(np.int64)
    return {(r, int(c)) for r in range(enc.shape[0]) for c in cols[rp[r]:rp[r + 1]]}


@pytest.mark.parametrize("thr", [0.1, 0.5])
def test_error_rule_keeps_only_the_weights_that_fail_the_error_test(thr: float) -> None:
    """With H = I there is no error feedback, so both rules fit the same statistics and test the same errors:
    the "loo" outliers are the error rule's plus every weight left out of the fit, whatever its error."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    w[rng.random(w.shape) < 0.03] *= 3
    sets = {rule: _outlier_set(quantize_gptq(w, np.eye(64), GPTQConfig(
        bits=2, group_size=16, act_order=False, max_outlier_fraction=0.999, outlier_relative_threshold=thr,
        outlier_rule=rule))) for rule in ("loo", "error")}
    assert sets["error"] and sets["error"] < sets["loo"]


def test_perm_is_act_order_permutation() -> None:
    w, h = _problem(16, 64, seed=2)
    enc = quantize_gptq(w, h, GPTQConfig(bits=3))
    perm = np.asarray(enc.sections["perm"])
    assert perm.dtype == np.uint32 and sorted(perm.tolist()) == list(range(64))
    d = np.diag(h)[perm.astype(np.int64)]
    assert np.all(np.diff(d) <= 0)  # most active input features first
    assert "perm" not in quantize_gptq(w, h, GPTQConfig(bits=3, act_order=False)).sections


def test_shared_factor_and_dead_columns() -> None:
    w, h = _problem(20, 48, seed=4)
    h[5, :] = 0
    h[:, 5] = 0  # a feature that never fired in calibration
    fac = factor_hessian(h, 0.01, True)
    a = quantize_gptq(w, config=GPTQConfig(bits=3), factor=fac)
    b = quantize_gptq(w, h, GPTQConfig(bits=3))
    assert np.array_equal(a.dequantized, b.dequantized)
    assert a.info["dead_columns"] == 1
    w2 = w.copy()
    w2[:, 5] = 100.0  # a dead feature's weights cannot matter on the calibration data: set to 0
    assert np.array_equal(quantize_gptq(w2, config=GPTQConfig(bits=3), factor=fac).dequantized, a.dequantized)
    assert np.array_equal(_decoded(a), a.dequantized)


def test_rejects_bad_input() -> None:
    w, h = _problem(8, 32)
    with pytest.raises(ValueError):
        quantize_gptq(w, h[:16, :16])
    with pytest.raises(ValueError):
        quantize_gptq(np.full((8, 32), np.nan, np.float32), h)
    with pytest.raises(ValueError):
        quantize_gptq(w, h, GPTQConfig(scale_bits=12))
    with pytest.raises(ValueError):
        quantize_gptq(w)
    with pytest.raises(ValueError, match="outlier_rule"):
        quantize_gptq(w, h, GPTQConfig(outlier_rule="largest"))


def test_graph_form_of_the_block_solve_gives_the_same_file(monkeypatch) -> None:
    """On CUDA the block solve is recorded as a graph, so it may not skip work by reading device values
    (``check=False``: every budget cap by a stable sort). Run that form on the CPU: the same bytes."""
    from spqrfmt.encoder import gptq

    w, h = _problem(48, 160, seed=7, outliers=0.03)
    cfg = GPTQConfig(bits=2, max_outlier_fraction=0.01, outlier_relative_threshold=0.02)
    ref = quantize_gptq(w, h, cfg)
    monkeypatch.setattr(gptq._Block, "solve", lambda self: self._solve(check=False))
    got = quantize_gptq(w, h, cfg)
    assert ref.info["outliers"] == got.info["outliers"] > 0
    assert set(ref.sections) == set(got.sections)
    for k in ref.sections:
        assert np.array_equal(np.asarray(ref.sections[k]), np.asarray(got.sections[k])), k
    assert np.array_equal(ref.dequantized.view(np.uint32), got.dequantized.view(np.uint32))


def test_keep_largest_is_topk_with_ties_to_the_lower_index() -> None:
    from spqrfmt.encoder.gptq import _keep_largest

    score = torch.tensor([[3.0, 1.0, 5.0], [5.0, 2.0, 0.5]])
    mask = score > 0.9
    for room, want in [(0, []), (2, [(0, 2), (1, 0)]), (3, [(0, 0), (0, 2), (1, 0)]), (9, [(0, 0), (0, 1), (0, 2),
                                                                                       (1, 0), (1, 1)])]:
        for check in (True, False):
            got = _keep_largest(mask, score, torch.tensor(room), check)
            assert sorted(map(tuple, torch.nonzero(got).tolist())) == want, (room, check)


def test_sibling_codecs_use_the_hessian() -> None:
    """The calibrated methods of squeezellm (k-means weighted by diag H) and quip (LDLQ) lower the objective
    they target against their data-free encodings of the same weight."""
    from spqrfmt import codecs

    w, h = _problem(64, 128, seed=11)
    sq, qp = codecs.by_id("squeezellm"), codecs.by_id("quip")
    so = sq.Options(bits=3)  # dense-and-sparse: the planted large weights become residuals, as SqueezeLLM does
    plain, weighted = sq.encode(w, so), sq.encode(w, so, hessian=torch.from_numpy(h))
    d = np.diag(h)
    assert ((w - weighted.dequantized) ** 2 * d).sum() < ((w - plain.dequantized) ** 2 * d).sum()
    qo = qp.Options(bits=3)
    rtn, ldlq = qp.encode(w, qo), qp.encode(w, qo, hessian=h)
    assert hessian_error(w, ldlq.dequantized, h) < hessian_error(w, rtn.dequantized, h)
