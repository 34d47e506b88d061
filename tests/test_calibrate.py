"""Calibration pipeline on a tiny random Llama: Hessians -> solver -> store -> .spqr -> perplexity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from spqrfmt.decoder.spqr import decode  # noqa: E402
from spqrfmt.encoder.calibrate import (  # noqa: E402
    CalibConfig,
    EncodingStore,
    calibration_batches,
    quantize_model_calibrated,
)
from spqrfmt.encoder.gptq import GPTQConfig  # noqa: E402
from spqrfmt.encoder.hessian import hessian  # noqa: E402
from spqrfmt.hf.evaluate import load_hf_model, load_model_with_weights, load_spqr_model, perplexity  # noqa: E402

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    return folder, model


def _cfg(act_dtype: str = "float16", **kw) -> CalibConfig:
    return CalibConfig(options=dict(bits=3, **kw), batch_size=3, min_features=16, act_dtype=act_dtype)


def _gptq(cfg: CalibConfig) -> GPTQConfig:
    """The solver settings codec spqr derives from the calibration's options."""
    return cfg.solver()[1].gptq_config()


def _tokens(seed: int = 1):
    return torch.randint(0, 128, (6, 24), generator=torch.Generator().manual_seed(seed))


def test_calibrate_encodes_every_block_linear_bit_exactly(tiny_model, tmp_path) -> None:
    folder, model = tiny_model
    lines: list[str] = []
    store = quantize_model_calibrated(folder, _tokens(), _cfg(), work_dir=tmp_path / "w", log=lines.append)
    expected = {f"model.layers.{i}.{s}.weight" for i in range(3) for s in LINEARS}
    assert set(store) == expected  # lm_head / embeddings are not calibrated
    state = model.state_dict()
    for name in store:
        enc = store[name]
        assert enc.shape == tuple(state[name].shape)
        assert np.array_equal(decode(enc.params, enc.sections, enc.shape).view(np.uint32),
                              enc.dequantized.view(np.uint32))
        assert "perm" in enc.sections and enc.info["outliers"] <= math.floor(0.01 * math.prod(enc.shape))
    assert any("block 2" in s for s in lines)


def test_resume_skips_finished_blocks_and_rejects_other_settings(tiny_model, tmp_path) -> None:
    folder, _ = tiny_model
    work = tmp_path / "w"
    first = quantize_model_calibrated(folder, _tokens(), _cfg(), work_dir=work, progress=False)
    before = {n: first[n].dequantized for n in first}
    (work / "block_0002.npz").unlink()  # as if interrupted during the last block
    lines: list[str] = []
    again = quantize_model_calibrated(folder, _tokens(), _cfg(), work_dir=work, log=lines.append)
    assert sum("resumed" in s for s in lines) == 2
    for n in before:  # deterministic: the recomputed block is identical
        assert np.array_equal(again[n].dequantized, before[n])
    with pytest.raises(ValueError, match="other settings"):
        quantize_model_calibrated(folder, _tokens(), _cfg(group_size=32), work_dir=work, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        quantize_model_calibrated(folder, _tokens(seed=2), _cfg(), work_dir=work, progress=False)
    assert len(EncodingStore(work)) == len(before)


def test_sequential_calibration_sees_quantized_upstream(tiny_model, tmp_path) -> None:
    """Block 1's Hessian comes from the outputs of the *quantized* block 0 (recomputed here by hand)."""
    from spqrfmt.encoder.gptq import factor_hessian, quantize_gptq

    folder, _ = tiny_model
    cfg = _cfg("float32")  # f32 hidden states between blocks: what a plain forward pass computes
    store = quantize_model_calibrated(folder, _tokens(), cfg, work_dir=tmp_path / "a", progress=False)
    model = load_model_with_weights(folder, {n: store[n].dequantized for n in store if ".layers.0." in n})
    layer = model.model.layers[1].self_attn.q_proj
    xs: list = []
    handle = layer.register_forward_hook(lambda _m, args, _o: xs.append(args[0].detach().clone()))
    with torch.no_grad():
        for ids in torch.split(_tokens(), cfg.batch_size):
            model(input_ids=ids, use_cache=False)
    handle.remove()
    name = "model.layers.1.self_attn.q_proj.weight"
    w = load_hf_model(folder).state_dict()[name].numpy()
    h = hessian(xs)
    fac = factor_hessian(h, _gptq(cfg).percdamp, _gptq(cfg).act_order)
    mine = quantize_gptq(w, config=_gptq(cfg), factor=fac)
    assert np.array_equal(mine.dequantized, store[name].dequantized)
    # ... and not from the unquantized model's activations
    fp = load_hf_model(folder)
    h_fp = torch.zeros((64, 64), dtype=torch.float64)

    def hook_fp(_m, args, _o):
        x = args[0].reshape(-1, 64).double()
        h_fp.addmm_(x.T, x)

    handle = fp.model.layers[1].self_attn.q_proj.register_forward_hook(hook_fp)
    with torch.no_grad():
        for ids in torch.split(_tokens(), cfg.batch_size):
            fp(input_ids=ids, use_cache=False)
    handle.remove()
    assert not torch.allclose(h_fp, h, rtol=1e-6, atol=0)


def test_convert_eval_roundtrip(tiny_model, tmp_path) -> None:
    from spqrfmt.convert import QuantConfig, convert

    folder, model = tiny_model
    store = quantize_model_calibrated(folder, _tokens(), _cfg(), work_dir=tmp_path / "w", progress=False)
    out = tmp_path / "m.spqr"
    report = convert(folder, out, QuantConfig(bits=3, min_features=16), encoded=store, progress=False)
    assert {r.name for r in report.layers} == set(store)
    qmodel, _tok = load_spqr_model(out)
    for name in store:
        assert np.array_equal(qmodel.state_dict()[name].numpy(), store[name].dequantized)
    ev = torch.randint(0, 128, (150,), generator=torch.Generator().manual_seed(9))
    p_ref = perplexity(load_hf_model(folder), ev, seq_len=32)
    p_q = perplexity(qmodel, ev, seq_len=32)
    assert math.isfinite(p_q) and p_q > 1 and abs(math.log(p_q / p_ref)) < 0.5


def test_load_model_with_weights_from_config(tiny_model) -> None:
    folder, model = tiny_model
    cfg = json.loads((folder / "config.json").read_text())
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    rebuilt = load_model_with_weights(cfg, arrays)
    ev = torch.randint(0, 128, (80,), generator=torch.Generator().manual_seed(3))
    assert perplexity(rebuilt, ev, seq_len=16) == perplexity(model, ev, seq_len=16)
    with pytest.raises(KeyError):
        load_model_with_weights(cfg, {**arrays, "nope.weight": np.zeros(3, np.float32)})
    with pytest.raises(KeyError):
        load_model_with_weights(cfg, {k: v for k, v in arrays.items() if k != "lm_head.weight"})


def test_perplexity_windows(tiny_model) -> None:
    _, model = tiny_model
    ev = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model(ev[None]).logits[0]
    nll = -torch.log_softmax(logits[:-1].double(), -1).gather(-1, ev[1:, None]).mean()
    full = math.exp(float(nll))
    assert perplexity(model, ev, seq_len=64) == pytest.approx(full, rel=1e-5)
    # overlapping windows with as much context as the sequence: same number, scored once each
    assert perplexity(model, ev, seq_len=40, stride=7, batch_size=2) == pytest.approx(full, rel=1e-5)
    # disjoint windows: deterministic and finite
    assert perplexity(model, ev, seq_len=10) == perplexity(model, ev.numpy(), seq_len=10)


def test_calibration_batches_even_windows() -> None:
    class Tok:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    b = calibration_batches(Tok(), ["abcdefghij", "klmnopqrst"], nsamples=3, seqlen=8)
    assert b.shape == (3, 8) and b[0, 0] == ord("a") and b[-1, -1] == 0  # ends on the last EOS
    with pytest.raises(ValueError):
        calibration_batches(Tok(), ["ab"], nsamples=2, seqlen=8)


def test_encoder_model_calibrates_as_saved(tmp_path) -> None:
    """A BERT-style encoder (not a causal LM) is calibrated as the BertModel it was saved as.

    BertEncoder passes the attention mask to its blocks positionally; block 1's
    Hessian must come from replaying block 0 (quantized) with those arguments,
    i.e. equal the one a plain forward pass of the partly quantized model gives.
    """
    from transformers import BertConfig, BertModel

    from spqrfmt.convert import QuantConfig, convert
    from spqrfmt.encoder.gptq import factor_hessian, quantize_gptq

    torch.manual_seed(0)
    bcfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, max_position_embeddings=64)
    BertModel(bcfg).save_pretrained(tmp_path / "bert")
    tokens = torch.randint(0, 100, (6, 24), generator=torch.Generator().manual_seed(5))
    cfg = _cfg("float32")
    store = quantize_model_calibrated(tmp_path / "bert", tokens, cfg, work_dir=tmp_path / "w", progress=False)
    subs = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense")
    assert set(store) == {f"encoder.layer.{i}.{s}.weight" for i in range(2) for s in subs}

    model = BertModel.from_pretrained(tmp_path / "bert", dtype=torch.float32).eval()
    with torch.no_grad():
        for s in subs:
            name = f"encoder.layer.0.{s}.weight"
            model.get_parameter(name).copy_(torch.from_numpy(store[name].dequantized))
    xs: list = []
    handle = model.encoder.layer[1].attention.self.query.register_forward_hook(
        lambda _m, args, _o: xs.append(args[0].detach().clone()))
    with torch.no_grad():
        for ids in torch.split(tokens, cfg.batch_size):
            model(input_ids=ids)
    handle.remove()
    name = "encoder.layer.1.attention.self.query.weight"
    w = BertModel.from_pretrained(tmp_path / "bert").state_dict()[name].numpy()
    mine = quantize_gptq(w, config=_gptq(cfg), factor=factor_hessian(hessian(xs), _gptq(cfg).percdamp))
    assert np.array_equal(mine.dequantized, store[name].dequantized)

    # The pooler lies outside the blocks: the converter quantizes it data-free and says so.
    report = convert(tmp_path / "bert", tmp_path / "b.spqr", QuantConfig(bits=3, min_features=16, method="spqr"),
                     encoded=store, progress=False)
    assert report.data_free == ["pooler.dense.weight"]
    assert {r.name for r in report.layers if r.method == "spqr"} == set(store)


def test_quant_config_is_the_one_set_of_knobs(tmp_path) -> None:
    """QuantConfig drives the calibrated solver: GPTQ = no outliers and f16 stats; bad combinations are refused."""
    from spqrfmt.convert import QuantConfig, convert

    g = QuantConfig.gptq(bits=3, group_size=64, act_order=False).gptq_config()
    assert (g.bits, g.group_size, g.scale_bits, g.zero_bits, g.act_order) == (3, 64, 16, 16, False)
    assert g.max_outlier_fraction == 0 and math.isinf(g.outlier_relative_threshold)
    s = QuantConfig(bits=4, outlier_fraction=0.005, outlier_threshold=0.1, percdamp=0.02, method="spqr")
    c = s.calib_config(nsamples=4, seqlen=16, device="cpu")
    cg = _gptq(c)
    assert (cg.max_outlier_fraction, cg.outlier_relative_threshold, cg.percdamp) == (0.005, 0.1, 0.02)
    assert cg.outlier_rule == "loo"
    assert QuantConfig(method="spqr", outlier_rule="error").gptq_config().outlier_rule == "error"
    assert c.skip == s.skip and c.min_features == s.min_features
    for bad in (QuantConfig(method="gptq"), QuantConfig(codec="quip", method="spqr"), QuantConfig(codec="x"),
                QuantConfig(method="spqr", outlier_rule="largest")):
        with pytest.raises(ValueError):
            bad.check()
    with pytest.raises(ValueError, match="calibrate"):  # a calibrated method without calibrated encodings
        convert(tmp_path, tmp_path / "x.spqr", s)
    assert not (tmp_path / "x.spqr").exists()


def test_calibrated_encodings_are_judged_by_their_output_error(tiny_model, tmp_path) -> None:
    """convert's "no better than zeros" check uses the layer-output error a calibrated solver minimised."""
    from spqrfmt.convert import QuantConfig, convert
    from spqrfmt.encoder.gptq import hessian_error
    from spqrfmt.encoder.hessian import relative_output_error
    from spqrfmt.hf.checkpoint import CheckpointError

    folder, _model = tiny_model
    store = quantize_model_calibrated(folder, _tokens(), _cfg(), work_dir=tmp_path / "w", progress=False)
    errs = [store.info(name)["rel_output_error"] for name in store]
    assert all(0.0 < e < 1.0 for e in errs)
    rng = np.random.default_rng(3)
    w, x = rng.normal(size=(4100, 5)), rng.normal(size=(40, 5))  # more rows than one slab
    h = 2.0 / 40 * x.T @ x
    approx = w + 0.1 * rng.normal(size=w.shape)
    want = hessian_error(w, approx, h) / hessian_error(w, 0 * w, h)
    assert relative_output_error(w, approx, h) == pytest.approx(want, rel=1e-12)
    assert relative_output_error(w, approx, torch.from_numpy(h)) == pytest.approx(want, rel=1e-12)
    encs = {name: store[name] for name in store}
    bad = next(iter(encs))
    encs[bad].info["rel_output_error"] = 1.5
    with pytest.raises(CheckpointError, match="relative output error 1.5 on the calibration data"):
        convert(folder, tmp_path / "bad.spqr", QuantConfig(bits=3, min_features=16), encoded=encs, progress=False)
    assert not (tmp_path / "bad.spqr").exists()
