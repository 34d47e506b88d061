"""load_model / generate: a tiny random Llama converted to .spqr runs exactly like transformers with decoded weights.

The reference is the same transformers class, built normally and given the
file's decoded weights (``Tensor.decode()``, the spec's bit-exact f32 array)
through ``load_state_dict``. Logits must agree to float tolerance and greedy
tokens must be identical. The SpQRLinear path runs on CPU under Triton's
interpreter when no GPU is present.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any triton.jit runs

import spqrfmt  # noqa: E402
from spqrfmt.cli.generate import add_arguments  # noqa: E402
from spqrfmt.cli.generate import run as cli_generate  # noqa: E402
from spqrfmt.convert import QuantConfig, convert  # noqa: E402
from spqrfmt.hf.generate import generate, greedy_tokens, load_tokenizer  # noqa: E402
from spqrfmt.model import load_model  # noqa: E402

VOCAB = 128


def _tokenizer(folder):
    """A word-level tokenizer over VOCAB tokens, saved as tokenizer.json (+ config) into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, VOCAB):
        vocab[f"w{i}"] = i
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the default init so that logits are well separated
        for name, p in model.named_parameters():
            if name.endswith("proj.weight") or "embed" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(d / "hf", safe_serialization=True)
    _tokenizer(d / "hf")
    out = d / "tiny.spqr"
    report = convert(d / "hf", out, QuantConfig(bits=3, min_features=16), progress=False)
    assert len(report.layers) == 14  # 7 linear layers x 2 blocks, all quantized
    return d, out, model


def _reference(path, dtype):
    """transformers' own model with the file's decoded weights (no spqrfmt.model code involved)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with spqrfmt.open(path) as f:
        cfg = LlamaConfig(**json.loads(f.metadata["hf.config"]))
        state = {name: torch.from_numpy(np.array(t.decode(), dtype=np.float32)).to(dtype) for name, t in f.items()}
    ref = LlamaForCausalLM._from_config(cfg, dtype=dtype)  # as from_pretrained(dtype=...) builds it
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    ref.tie_weights()
    return ref.eval()


PROMPT = torch.tensor([[1, 5, 9, 17, 33, 65, 100]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_model_matches_transformers_with_decoded_weights(tiny, dtype):
    _d, path, original = tiny
    model = load_model(path, device="cpu", dtype=dtype)
    ref = _reference(path, dtype)
    rep = model.spqr_load_report
    assert len(rep.decoded_layers) == 14 and rep.tied and not rep.skipped
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # weights: exactly the decoded tensors, cast once
    with spqrfmt.open(path) as f:
        w = torch.from_numpy(f["model.layers.1.mlp.down_proj.weight"].decode()).to(dtype)
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, w)
    with torch.no_grad():
        a = model(PROMPT).logits.float()
        b = ref(PROMPT).logits.float()
        c = original(PROMPT).logits.float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    # quantization really happened (3-bit), and the model is still close to the fp32 original
    assert not torch.allclose(a, c, atol=1e-4)
    assert torch.nn.functional.cosine_similarity(a.flatten(), c.flatten(), dim=0) > 0.5
    assert greedy_tokens(model, PROMPT, 8) == greedy_tokens(ref, PROMPT, 8)


def test_no_parameter_is_materialised_twice(tiny):
    _d, path, _ = tiny
    model = load_model(path, device="cpu", dtype=torch.float32)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_load_model_reads_a_split_set_as_the_file(tiny, tmp_path):
    from spqrfmt.split import split_file

    _d, path, _ = tiny
    with spqrfmt.open(path) as f:
        index = split_file(f, 1 << 14, tmp_path / "tiny")
    assert len(json.loads(index.read_text())["parts"]) > 2
    whole = load_model(path, device="cpu", dtype=torch.float32).state_dict()
    parts = load_model(index, device="cpu", dtype=torch.float32).state_dict()
    assert list(parts) == list(whole)
    assert all(torch.equal(parts[k], whole[k]) for k in whole)


def test_kernel_path_matches_decoded(tiny):
    """Every quantized Linear becomes SpQRLinear (Triton; interpreter on CPU) and computes the dense layer.

    The interpreter is slow, so one block's MLP is compared rather than whole-model logits.
    """
    pytest.importorskip("triton")
    _d, path, _ = tiny
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    kmodel = load_model(path, device=dev, dtype=torch.float32, use_kernels=True)
    dmodel = load_model(path, device=dev, dtype=torch.float32, use_kernels=False)
    from spqrfmt.kernels.linear import SpQRLinear

    kernel_layers = [n for n, mod in kmodel.named_modules() if isinstance(mod, SpQRLinear)]
    assert len(kernel_layers) == 14 and len(kmodel.spqr_load_report.kernel_layers) == 14
    q = kmodel.model.layers[0].self_attn.k_proj
    assert (q.out_features, q.in_features) == (32, 64) and q.bias is None
    h = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        a = kmodel.model.layers[1].mlp(h)
        b = dmodel.model.layers[1].mlp(h)
    torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)


def test_tokenizer_from_metadata_and_generate(tiny):
    d, path, _ = tiny
    tok = load_tokenizer(path)
    assert tok.convert_tokens_to_ids("w42") == 42
    model = load_model(path, device="cpu", dtype=torch.float32)
    text, ids = generate(model, tok, "w5 w9 w17", max_new_tokens=6)
    assert len(ids) == 6
    enc = tok("w5 w9 w17", return_tensors="pt")["input_ids"]
    assert ids == greedy_tokens(model, enc, 6)[: len(ids)]
    # sampling is reproducible with a seed
    s1 = generate(model, tok, "w5 w9", max_new_tokens=5, temperature=1.0, seed=3)[1]
    s2 = generate(model, tok, "w5 w9", max_new_tokens=5, temperature=1.0, seed=3)[1]
    assert s1 == s2
    # an explicit tokenizer folder works too
    assert load_tokenizer(path, d / "hf").convert_tokens_to_ids("w7") == 7


def test_cli_generate(tiny, capsys):
    _d, path, _ = tiny
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([str(path), "--prompt", "w5 w9", "--max-new-tokens", "4", "--device", "cpu"])
    assert cli_generate(args) == 0
    out = capsys.readouterr()
    assert out.out.startswith("w5 w9") and len(out.out.split()) >= 3
    assert "tokens" in out.err


def test_missing_config_is_a_clear_error(tmp_path):
    w = spqrfmt.Writer(tmp_path / "x.spqr")
    w.add_raw("a.weight", np.zeros((2, 2), np.float32))
    w.close()
    with pytest.raises(ValueError, match="hf.config"):
        load_model(tmp_path / "x.spqr")


def test_gpt2_conv1d(tmp_path):
    """GPT-2 Conv1D weights ([in, out] in checkpoints) load correctly: converted as [out, in] + listed, or as stored."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from spqrfmt.encoder.spqr import quantize_spqr

    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    path = tmp_path / "gpt2.spqr"
    report = convert(tmp_path / "hf", path, QuantConfig(bits=4, min_features=16), progress=False)
    assert any("c_attn" in r.name for r in report.layers)
    loaded = load_model(path, dtype=torch.float32)
    with spqrfmt.open(path) as f:
        state = {n: torch.from_numpy(np.array(t.decode(), dtype=np.float32)) for n, t in f.items()}
        meta = dict(f.metadata)
    assert meta["spqrfmt.conv1d"] == "out_in"
    assert any(n.endswith("h.0.attn.c_attn.weight") for n in meta["spqrfmt.transposed"])
    for name in meta["spqrfmt.transposed"]:  # the converter stored them [out, in]
        state[name] = state[name].T.contiguous()
    ref = GPT2LMHeadModel._from_config(GPT2Config(**json.loads(meta["hf.config"])), dtype=torch.float32)
    ref.load_state_dict({("transformer." + k if not k.startswith("transformer.") else k): v
                         for k, v in state.items()}, strict=False)
    ref.tie_weights()
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        a, b = loaded(ids).logits, ref.eval()(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # The same weights written as stored ([in, out], no metadata key), as earlier converters did.
    legacy = tmp_path / "gpt2_as_stored.spqr"
    for key in ("spqrfmt.conv1d", "spqrfmt.transposed"):
        meta.pop(key)
    with spqrfmt.open(path) as f, spqrfmt.Writer(legacy, metadata=meta) as w:
        for name, t in f.items():
            if t.codec == "raw":
                w.add_raw(name, t.decode(), t.dtype)
            else:  # re-encode the transposed decoded matrix finely (8-bit, f16 stats)
                w.add_encoded(name, quantize_spqr(np.ascontiguousarray(t.decode().T), bits=8, scale_bits=16,
                                                  zero_bits=16, outlier_fraction=0.0), dtype="f32")
    loaded2 = load_model(legacy, dtype=torch.float32)
    w1 = loaded.transformer.h[0].attn.c_attn.weight
    w2 = loaded2.transformer.h[0].attn.c_attn.weight
    assert w1.shape == w2.shape == (64, 192)
    torch.testing.assert_close(w2, w1, rtol=0, atol=float(w1.abs().max()) / 200)  # 8-bit re-encoding of w1


def test_all_codecs_cpu_and_kernel_modules(tmp_path):
    """A model whose linears use squeezellm and quip: decoded on CPU, CodecLinear (Triton) when asked."""
    pytest.importorskip("triton")
    from transformers import LlamaConfig, LlamaForCausalLM

    from spqrfmt.encoder.quip import quantize_quip
    from spqrfmt.encoder.squeezellm import quantize_squeezellm

    torch.manual_seed(2)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf", safe_serialization=True)

    def encoder(name, w, qc):
        if ".mlp." in name:
            return quantize_squeezellm(w, bits=4, max_iter=10)
        return quantize_quip(w, bits=4)

    path = tmp_path / "mixed.spqr"
    convert(tmp_path / "hf", path, QuantConfig(min_features=16), encoder=encoder, progress=False)
    with spqrfmt.open(path) as f:
        codecs = {t.codec for t in f.values()}
    assert codecs == {"raw", "squeezellm", "quip"}
    dense = load_model(path, dtype=torch.float32)
    ref = _reference(path, torch.float32)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(dense(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    kmodel = load_model(path, device=dev, dtype=torch.float32, use_kernels=True)
    assert len(kmodel.spqr_load_report.kernel_layers) == 7
    layer = kmodel.model.layers[0]
    assert type(layer.mlp.up_proj).__name__ == "CodecLinear" and layer.mlp.up_proj.codec == "squeezellm"
    assert layer.self_attn.q_proj.codec == "quip"
    h = torch.randn(2, 64, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        for name in ("mlp.up_proj", "self_attn.q_proj"):
            a = layer.get_submodule(name)(h)
            b = dense.model.layers[0].get_submodule(name).to(dev)(h)
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("use_kernels", [False, True])
def test_v1_spqr_ignores_stray_v2_params(tiny, tmp_path, use_kernels):
    """A v1 spqr tensor carrying ``arith``/``outlier_op`` (not v1 keys, so ignored: SPEC §4.2) loads as plain v1.

    The kernel path must get the checked params: the raw header dict would route the layer through the
    v2 arithmetic (f16 rounding, additive outliers) and change the weights.
    """
    if use_kernels:
        pytest.importorskip("triton")
    _d, path, _ = tiny
    stray = tmp_path / "stray.spqr"
    with spqrfmt.open(path) as f, spqrfmt.Writer(stray, metadata=dict(f.metadata)) as w:
        for name, t in f.items():
            if t.codec == "raw":
                w.add_raw(name, t.decode(), t.dtype)
                continue
            assert t.codec == "spqr" and t.codec_version == 1 and "arith" not in t.params
            w.add(name, shape=t.shape, dtype=t.dtype, codec="spqr", codec_version=1,
                  params={**t.params, "arith": "f16", "outlier_op": "add"},
                  sections={role: (t.record.sections[role].dtype, np.array(a)) for role, a in t.arrays().items()})
    with spqrfmt.open(path) as f, spqrfmt.open(stray) as g:
        assert g["model.layers.0.mlp.up_proj.weight"].params["arith"] == "f16"
        assert int(f["model.layers.0.mlp.up_proj.weight"].arrays()["outlier_val"].size) > 0  # "add" would matter
        for name, t in f.items():
            assert np.array_equal(g[name].decode().view(np.uint32), t.decode().view(np.uint32)), name
    plain = load_model(path, dtype=torch.float32, use_kernels=use_kernels)
    loaded = load_model(stray, dtype=torch.float32, use_kernels=use_kernels)
    for name, mod in loaded.named_modules():
        if not name.endswith("proj"):
            continue
        ref = plain.get_submodule(name)
        if use_kernels:
            from spqrfmt.kernels.spqr import dequantize_prepared

            assert type(mod).__name__ == "SpQRLinear" and "arith" not in mod.prepared.params
            a = dequantize_prepared(mod.prepared, torch.float32)
            b = dequantize_prepared(ref.prepared, torch.float32)
        else:
            a, b = mod.weight, ref.weight
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), name
    h = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model.layers[1].mlp(h), plain.model.layers[1].mlp(h))


def test_quipsharp_fused_llama_runs_like_decoded_weights(tmp_path):
    """A QuIP# checkpoint with fused qkv_proj / upgate_proj (and dims 12 * 2^k with a user-supplied H_12)
    imports as one quip tensor per fused layer; load_model gives each part its rows, and the greedy tokens
    equal a transformers model built from QuIP#'s own effective weights (test-side re-enactment, float64)."""
    from test_importers import _pack_hi4b1c, _paley12, _quip_effective, _write_st
    from transformers import LlamaConfig, LlamaForCausalLM

    from spqrfmt.importers import quipsharp as qs

    rng = np.random.default_rng(21)
    hidden, inter, vocab = 48, 96, 64  # head_dim 12: qkv rows 48 + 24 + 24 = 96 = 12 * 8, up+gate 192 = 12 * 16
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    h12 = _paley12()
    pre = "model.layers.0"
    layers = {"self_attn.qkv_proj": (96, hidden, [1.0, 0.5, 2.0]), "self_attn.o_proj": (hidden, hidden, None),
              "mlp.upgate_proj": (2 * inter, hidden, [1.25, 0.75]), "mlp.down_proj": (hidden, inter, None)}
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    dense: dict[str, np.ndarray] = {}
    for mod, (m, n, fs) in layers.items():
        p = f"{pre}.{mod}"
        idx = rng.integers(0, 16, (m, n))
        su = (rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n)).astype(np.float16)
        sv = (rng.choice([-1.0, 1.0], m) * rng.uniform(0.01, 0.03, m)).astype(np.float16)
        tensors.update({f"{p}.Qidxs": ("i32", _pack_hi4b1c(idx)), f"{p}.SU": ("f16", su), f"{p}.SV": ("f16", sv),
                        f"{p}.Wscale": ("f32", np.array(1.0, np.float32)),
                        f"{p}.codebook_id": ("i64", np.array(10, np.int64))})
        w = _quip_effective(idx.astype(np.float64) - 7.5, su, sv, 1.0,
                            h12 if n % 12 == 0 else None, h12 if m % 12 == 0 else None)
        if fs is None:
            dense[f"{p}.weight"] = w
            continue
        tensors[f"{p}.fuse_scales"] = ("f32", np.array(fs, np.float32))
        base = p.rpartition(".")[0]
        names = ["q_proj", "k_proj", "v_proj"] if "qkv" in mod else ["up_proj", "gate_proj"]  # QuIP#'s order
        sizes = [hidden, 24, 24] if "qkv" in mod else [inter, inter]
        start = 0
        for name, rows, scale in zip(names, sizes, fs, strict=True):
            dense[f"{base}.{name}.weight"] = w[start:start + rows] * scale
            start += rows
    for norm in (f"{pre}.input_layernorm", f"{pre}.post_attention_layernorm", "model.norm"):
        tensors[f"{norm}.weight"] = ("f32", rng.uniform(0.8, 1.2, hidden).astype(np.float32))
    tensors["model.embed_tokens.weight"] = ("f32", rng.standard_normal((vocab, hidden)).astype(np.float32))
    tensors["lm_head.weight"] = ("f32", (rng.standard_normal((vocab, hidden)) * 0.3).astype(np.float32))
    d = tmp_path / "quip_fused"
    d.mkdir()
    _write_st(d / "model.safetensors", tensors)
    conf = cfg.to_dict()
    conf["architectures"] = ["LlamaForCausalLM"]
    conf["quip_params"] = {"codebook": "HI4B1C"}
    (d / "config.json").write_text(json.dumps(conf))
    hfile = tmp_path / "had.12.txt"
    hfile.write_text("\n".join("".join("+" if v > 0 else "-" for v in row) for row in h12) + "\n")
    rep = qs.import_quipsharp(d, tmp_path / "f.spqr", hadamard_files=[hfile], allow_unverified_hadamard=True)
    assert sorted(rep.quantized) == sorted(f"{pre}.{mod}.weight" for mod in layers)
    spqrfmt.validate(tmp_path / "f.spqr")
    with spqrfmt.open(tmp_path / "f.spqr") as f:
        assert f.metadata["spqrfmt.fused"] == {
            f"{pre}.self_attn.qkv_proj.weight": [[f"{pre}.self_attn.{x}.weight", r]
                                                 for x, r in (("q_proj", 48), ("k_proj", 24), ("v_proj", 24))],
            f"{pre}.mlp.upgate_proj.weight": [[f"{pre}.mlp.up_proj.weight", inter],
                                              [f"{pre}.mlp.gate_proj.weight", inter]]}
    model = load_model(tmp_path / "f.spqr", dtype=torch.float32)
    lr = model.spqr_load_report
    assert f"{pre}.self_attn.qkv_proj.weight" in lr.decoded_layers and not lr.skipped
    ref = LlamaForCausalLM(cfg).eval()
    sd = {k: torch.from_numpy(v.astype(np.float32)) for k, v in dense.items()}
    sd.update({k: torch.from_numpy(np.asarray(v)) for k, (_, v) in tensors.items() if k.endswith("norm.weight")
               or k in ("model.embed_tokens.weight", "lm_head.weight")})
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    for name, p in ref.named_parameters():  # the loaded model's part weights match QuIP#'s to f32 rounding
        got = dict(model.named_parameters())[name].detach().numpy().astype(np.float64)
        assert np.abs(got - p.detach().numpy()).max() <= 1e-6 * max(np.abs(p.detach().numpy()).max(), 1e-30)
    ids = torch.tensor([[1, 5, 9, 13]])
    assert greedy_tokens(model, ids, 8) == greedy_tokens(ref, ids, 8)


def test_mixtral_style_experts_load_into_transformers_stacked_parameters(tmp_path):
    """Per-expert w1/w2/w3 checkpoints (what transformers 5 still saves) -> its stacked expert parameters."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MixtralConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=64)
    torch.manual_seed(0)
    folder = tmp_path / "moe"
    transformers.MixtralForCausalLM(cfg).save_pretrained(folder)
    out = tmp_path / "moe.spqr"
    convert(folder, out, QuantConfig(min_features=16), progress=False)
    model = load_model(out, device="cpu")
    with spqrfmt.open(out) as f:
        assert any(t.codec != "raw" and ".experts." in n for n, t in f.tensors.items())
        dense = {n: torch.from_numpy(t.decode()) for n, t in f.tensors.items()}
    ref = transformers.MixtralForCausalLM(cfg)
    p = "model.layers.0.block_sparse_moe.experts"
    sd = {n.replace(".block_sparse_moe.", ".mlp."): v for n, v in dense.items() if ".experts." not in n}
    sd["model.layers.0.mlp.experts.gate_up_proj"] = torch.stack(
        [torch.cat([dense[f"{p}.{e}.w1.weight"], dense[f"{p}.{e}.w3.weight"]]) for e in range(4)])
    sd["model.layers.0.mlp.experts.down_proj"] = torch.stack([dense[f"{p}.{e}.w2.weight"] for e in range(4)])
    ref.load_state_dict(sd, strict=False)
    x = torch.tensor([[1, 5, 7, 2, 9]])
    torch.testing.assert_close(model(x).logits, ref.eval()(x).logits, rtol=0, atol=0)
