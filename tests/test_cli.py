"""The CLI as a user runs it: convert a real checkpoint folder, inspect, verify, decode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import spqrfmt
from spqrfmt.cli import main
from spqrfmt.convert import QuantConfig, convert
from spqrfmt.dtypes import f32_to_bf16
from spqrfmt.hf.checkpoint import demo_checkpoint
from spqrfmt.safetensors_io import SafetensorsFile, write_safetensors


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    """A small llama-shaped checkpoint in two shards (bf16 + f32), with config and tokenizer files."""
    rng = np.random.default_rng(3)
    d = tmp_path / "tiny-llama"
    d.mkdir()
    h, ff, vocab = 64, 160, 100
    shard1 = {
        "model.embed_tokens.weight": ("bf16", f32_to_bf16(rng.standard_normal((vocab, h)).astype(np.float32))),
        "model.layers.0.self_attn.q_proj.weight": ("bf16", f32_to_bf16(rng.standard_normal((h, h)).astype(np.float32))),
        "model.layers.0.mlp.up_proj.weight": ("f32", rng.standard_normal((ff, h)).astype(np.float32)),
    }
    shard2 = {
        "model.layers.0.mlp.down_proj.weight": ("f32", rng.standard_normal((h, ff)).astype(np.float32)),
        "model.layers.0.input_layernorm.weight": ("f32", np.ones(h, dtype=np.float32)),
        "model.norm.weight": ("f32", np.ones(h, dtype=np.float32)),
        "lm_head.weight": ("f32", rng.standard_normal((vocab, h)).astype(np.float32)),
    }
    write_safetensors(d / "model-00001-of-00002.safetensors", shard1)
    write_safetensors(d / "model-00002-of-00002.safetensors", shard2)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": h}))
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    return d


def test_convert_inspect_verify_decode(hf_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.spqr"
    assert main(["convert", str(hf_folder), "-o", str(out), "--bits", "3", "-q"]) == 0
    text = capsys.readouterr().out
    assert "bits/param" in text and "decodes bit-identically" in text
    with spqrfmt.open(out) as f:
        quantized = {n for n, t in f.items() if t.codec == "spqr"}
        assert quantized == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
                             "model.layers.0.mlp.down_proj.weight"}
        assert f["model.embed_tokens.weight"].codec == "raw" and f["model.embed_tokens.weight"].dtype == "bf16"
        assert f["model.layers.0.self_attn.q_proj.weight"].dtype == "bf16"
        assert json.loads(f.metadata["hf.config"])["model_type"] == "llama"
        assert f.metadata["hf.files/tokenizer.json"] == b'{"version": "1.0"}'
        assert f["model.layers.0.mlp.up_proj.weight"].params["bits"] == 3

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model.layers.0.mlp.up_proj.weight" in text and "spqr" in text
    assert main(["inspect", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["tensors"]) == 7

    assert main(["verify", "--decode", str(out)]) == 0
    assert "OK" in capsys.readouterr().out

    dec = tmp_path / "dec.safetensors"
    assert main(["decode", str(out), "-o", str(dec), "-q"]) == 0
    st = SafetensorsFile(dec)
    with spqrfmt.open(out) as f:
        for name in f:
            dtype, arr = st[name]
            want = f[name].decode()
            assert np.array_equal(arr, want), name
            assert dtype == (f[name].dtype if f[name].codec == "raw" else "f32")


def test_verify_reports_corruption(hf_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.spqr"
    convert(hf_folder, out, QuantConfig(), progress=False)
    blob = bytearray(out.read_bytes())
    blob[-100] ^= 0xFF
    out.write_bytes(bytes(blob))
    assert main(["verify", str(out)]) == 1
    assert "SECTION_CHECKSUM" in capsys.readouterr().out


def test_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), "-o", str(tmp_path / "x.spqr")]) == 2
    assert "no .safetensors files" in capsys.readouterr().err
    junk = tmp_path / "junk.spqr"
    junk.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    assert main(["inspect", str(junk)]) == 1
    assert "BAD_MAGIC" in capsys.readouterr().err
    assert not (tmp_path / "x.spqr").exists()


def test_real_checkpoint_minilm(tmp_path: Path) -> None:
    """The bundled real pretrained checkpoint (sentence-transformers all-MiniLM-L6-v2) converts and decodes."""
    src = demo_checkpoint()
    out = tmp_path / "minilm.spqr"
    rep = convert(src, out, QuantConfig(bits=4), progress=False)
    assert len(rep.layers) == 37  # 6 layers x (q, k, v, o, up, down) + pooler
    assert 4.5 < rep.bits_per_param < 5.5
    assert rep.mean_rel_error < 0.1
    original = SafetensorsFile(next(src.glob("*.safetensors")))
    with spqrfmt.open(out) as f:
        name = "encoder.layer.0.attention.self.query.weight"
        w = original[name][1]
        dq = f[name].decode()
        assert np.linalg.norm(dq - w) / np.linalg.norm(w) < 0.1
        assert np.array_equal(f["embeddings.word_embeddings.weight"].decode(),
                              original["embeddings.word_embeddings.weight"][1])


def test_interrupted_convert_leaves_no_file(hf_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "x.spqr"
    out.parent.mkdir()
    calls = []

    def exploding_encoder(name: str, w: np.ndarray, cfg: QuantConfig) -> object:
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        from spqrfmt.convert import rtn_encoder

        return rtn_encoder(name, w, cfg)

    with pytest.raises(KeyboardInterrupt):
        convert(hf_folder, out, QuantConfig(), encoder=exploding_encoder, progress=False)
    assert list(out.parent.iterdir()) == []


# ---- calibrated convert, eval, codecs, Conv1D (tiny transformers models built here) ---------------------------

WORDS = [f"w{i}" for i in range(60)]


def _save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over WORDS (+ <unk>, <eos>), saved as tokenizer.json like any HF checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>").save_pretrained(folder)


def _text(path: Path, lines: int, seed: int) -> Path:
    """Documents of 20-40 words from a skewed distribution (one a line)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    path.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(20, 40)), p=p))
                              for _ in range(lines)) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(checkpoint folder of a random 2-block Llama with a tokenizer, calibration text, held-out text)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(WORDS) + 2, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, tie_word_embeddings=False, eos_token_id=1,
                                   bos_token_id=None)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d / "hf")
    _save_tokenizer(d / "hf")
    return d / "hf", _text(d / "calib.txt", 30, 1), _text(d / "heldout.txt", 10, 2)


CALIB = ["--nsamples", "6", "--seqlen", "24", "--batch-size", "3", "--min-features", "16", "--device", "cpu"]


def _ppl(text: str) -> dict[str, float]:
    return {line.split(": perplexity ")[0]: float(line.split(": perplexity ")[1].split()[0])
            for line in text.splitlines() if ": perplexity " in line}


def test_convert_calibrate_resume_and_eval(tiny_lm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spqrfmt.encoder.calibrate import EncodingStore, quantize_model_calibrated
    from spqrfmt.hf.evaluate import read_documents

    folder, calib, heldout = tiny_lm
    out, work = tmp_path / "cal.spqr", tmp_path / "work"
    argv = ["convert", str(folder), "-o", str(out), "--calibrate", str(calib), "--bits", "3", *CALIB,
            "--work-dir", str(work), "-q"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "calibrated SpQR" in text and "decodes bit-identically" in text
    blocks = {f"model.layers.{i}.{s}.weight" for i in range(2) for s in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")}
    with spqrfmt.open(out) as f:
        assert {n for n, t in f.items() if t.codec == "spqr"} == blocks  # lm_head, embeddings raw
        assert all(f[n].params["bits"] == 3 and "perm" in f[n].record.sections for n in blocks)
        assert json.loads(f.metadata["spqrfmt.calibration"])["nsamples"] == 6
        assert json.loads(f.metadata["spqrfmt.convert"])["method"] == "spqr"
        first = {n: f[n].decode() for n in blocks}
    # The CLI runs exactly the documented API with the settings its flags name.
    cfg = QuantConfig(bits=3, min_features=16, method="spqr")
    api = quantize_model_calibrated(folder, read_documents(calib), cfg.calib_config(6, 24, 3), progress=False,
                                    work_dir=tmp_path / "api")
    assert all(np.array_equal(api[n].dequantized, first[n]) for n in blocks)
    # Resume: a missing block is solved again, the other one replayed; the file is the same.
    (work / "block_0001.npz").unlink()
    assert main(argv[:-1] + ["-v"]) == 0
    assert "block 0: resumed" in capsys.readouterr().out
    assert len(EncodingStore(work)) == len(blocks)
    with spqrfmt.open(out) as f:
        assert all(np.array_equal(f[n].decode(), first[n]) for n in blocks)

    assert main(["eval", str(folder), str(out), "--text", str(heldout), "--seqlen", "32", "-q"]) == 0
    text = capsys.readouterr().out
    ppl = _ppl(text)
    assert set(ppl) == {str(folder), str(out)} and f"vs {folder}" in text and "not comparable" not in text
    assert 1 < ppl[str(out)] < 2 * ppl[str(folder)] and 1 < ppl[str(folder)] < 2 * (len(WORDS) + 2)
    assert main(["eval", str(out), "--text", str(heldout), "--seqlen", "32", "--max-tokens", "40", "-q"]) == 0
    assert "over 40 tokens" in capsys.readouterr().out


def test_convert_calibrate_gptq_no_act_order(tiny_lm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, calib, _ = tiny_lm
    out = tmp_path / "gptq.spqr"
    assert main(["convert", str(folder), "-o", str(out), "--calibrate", str(calib), "--method", "gptq",
                 "--group-size", "32", "--no-act-order", *CALIB, "-q"]) == 0
    assert "calibrated GPTQ" in capsys.readouterr().out
    assert not (tmp_path / "gptq.spqr.calib").exists()  # default work dir removed after success
    with spqrfmt.open(out) as f:
        quant = [t for t in f.values() if t.codec == "spqr"]
        assert len(quant) == 14
        for t in quant:
            assert t.params["scale_bits"] == t.params["zero_bits"] == 16 and t.params["group_size"] == 32
            assert "perm" not in t.record.sections and t.record.sections["outlier_val"].length == 0


@pytest.mark.parametrize(("codec", "method", "described"), [("squeezellm", "weighted-kmeans", "weighted by diag(H)"),
                                                        ("quip", "ldlq", "LDLQ")])
def test_convert_calibrate_sibling_codecs(tiny_lm, tmp_path: Path, capsys: pytest.CaptureFixture[str], codec: str,
                                          method: str, described: str) -> None:
    """--calibrate with --codec squeezellm / quip: the codec's calibrated encoder on each layer's Hessian, the
    same driver (resumable work dir, a store decoded through the registry) and the same file checks."""
    folder, calib, _ = tiny_lm
    out, work = tmp_path / f"{codec}.spqr", tmp_path / "work"
    argv = ["convert", str(folder), "-o", str(out), "--codec", codec, "--bits", "3", "--calibrate", str(calib),
            *CALIB, "--work-dir", str(work), "-q"]
    assert main(argv) == 0
    assert described in capsys.readouterr().out  # the default method of the codec under --calibrate
    with spqrfmt.open(out) as f:
        quant = {n: t for n, t in f.items() if t.codec == codec}
        assert len(quant) == 14 and json.loads(f.metadata["spqrfmt.convert"])["method"] == method
        first = {n: t.decode() for n, t in quant.items()}
    (work / "block_0001.npz").unlink()
    assert main(argv[:-1] + ["-v"]) == 0
    assert "block 0: resumed" in capsys.readouterr().out
    with spqrfmt.open(out) as f:
        assert all(np.array_equal(f[n].decode(), first[n]) for n in first)


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "spqr"], "add --calibrate TEXTFILE"),
    (["--codec", "quip", "--group-size", "32"], "--codec spqr only"),
    (["--codec", "quip", "--outlier-fraction", "0.01"], "does not apply to --codec quip"),
    (["--codec", "quip", "--calibrate", "CALIB", "--method", "weighted-kmeans"], "methods: rtn, ldlq"),
    (["--codec", "quip", "--calibrate", "CALIB", "--damp", "0.1"], "--damp applies to --codec spqr only"),
    (["--nsamples", "8"], "only applies with --calibrate"),
    (["--calibrate", "CALIB", "--method", "gptq", "--stat-bits", "3"], "use --method spqr"),
    (["--calibrate", "CALIB", "--method", "gptq", "--outlier-rule", "error"], "use --method spqr"),
    (["--outlier-rule", "error"], "only applies with --calibrate"),
    (["--calibrate", "CALIB", "--method", "rtn"], "--method rtn is data-free"),
    (["--calibrate", "missing.txt"], "not found"),
    (["--calibrate", "CALIB", "--seqlen", "100"], "exceeds the model's 64 positions"),
    (["--quip-codebook", "e8p12"], "--quip-codebook applies to --codec quip only"),
    (["--codec", "quip", "--quip-codebook", "e8p12", "--bits", "3"], "e8p12 stores 2 bits per weight"),
])
def test_convert_usage_errors(tiny_lm, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                              message: str) -> None:
    folder, calib, _ = tiny_lm
    out = tmp_path / "x.spqr"
    extra = [str(calib) if a == "CALIB" else str(tmp_path / a) if a.endswith(".txt") else a for a in extra]
    assert main(["convert", str(folder), "-o", str(out), "-q", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "x.spqr.calib").exists()


def test_calibrate_without_transformers_says_which_extra(tiny_lm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    folder, calib, heldout = tiny_lm
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    assert main(["convert", str(folder), "-o", str(tmp_path / "x.spqr"), "--calibrate", str(calib)]) == 2
    assert "pip install 'spqrfmt[hf]'" in capsys.readouterr().err
    assert main(["eval", str(folder), "--text", str(heldout)]) == 2
    assert "pip install 'spqrfmt[hf]'" in capsys.readouterr().err


@pytest.mark.parametrize(("codec", "bits", "max_err"), [("squeezellm", 3, 0.2), ("quip", 4, 0.15)])
def test_convert_codecs(hf_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], codec: str, bits: int,
                        max_err: float) -> None:
    out = tmp_path / f"{codec}.spqr"
    assert main(["convert", str(hf_folder), "-o", str(out), "--codec", codec, "--bits", str(bits), "-q"]) == 0
    assert "decodes bit-identically" in capsys.readouterr().out
    assert main(["verify", "--decode", str(out)]) == 0
    assert "all decoded" in capsys.readouterr().out
    source = {n: a for p in sorted(hf_folder.glob("*.safetensors")) for n, a in SafetensorsFile(p).items()}
    with spqrfmt.open(out) as f:
        quant = {n: t for n, t in f.items() if t.codec != "raw"}
        assert set(quant) == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
                              "model.layers.0.mlp.down_proj.weight"}
        for name, t in quant.items():
            assert t.codec == codec and t.params["bits"] == bits
            dtype, w = source[name]
            w = spqrfmt.dtypes.to_float32(w, dtype)
            assert np.linalg.norm(t.decode() - w) / np.linalg.norm(w) < max_err
        assert json.loads(f.metadata["spqrfmt.convert"])["codec"] == codec


def test_convert_quip_e8p12(hf_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--quip-codebook e8p12 writes quip codec_version 2 (u16 E8P12 codes, no bits param) that verifies and decodes."""
    out = tmp_path / "e8p.spqr"
    assert main(["convert", str(hf_folder), "-o", str(out), "--codec", "quip", "--quip-codebook", "e8p12",
                 "-q"]) == 0
    printed = capsys.readouterr().out
    assert "E8P12" in printed and "decodes bit-identically" in printed
    assert main(["verify", "--decode", str(out)]) == 0
    assert "all decoded" in capsys.readouterr().out
    grid = tmp_path / "grid2.spqr"
    assert main(["convert", str(hf_folder), "-o", str(grid), "--codec", "quip", "--bits", "2", "-q"]) == 0
    source = {n: a for p in sorted(hf_folder.glob("*.safetensors")) for n, a in SafetensorsFile(p).items()}
    with spqrfmt.open(out) as f, spqrfmt.open(grid) as g:
        quant = {n: t for n, t in f.items() if t.codec != "raw"}
        assert len(quant) == 3
        for name, t in quant.items():
            assert t.codec == "quip" and t.codec_version == 2
            assert t.params["codebook"] == "e8p12" and "bits" not in t.params
            assert t.record.sections["codes"].dtype == "u16" and t.record.sections["codes"].shape == (
                t.shape[0], t.shape[1] // 8)
            assert g[name].codec_version == 1 and g[name].params["bits"] == 2
            dtype, w = source[name]
            w = spqrfmt.dtypes.to_float32(w, dtype)
            err = np.linalg.norm(t.decode() - w) / np.linalg.norm(w)
            # the lattice codebook beats the 2-bit grid on Gaussian weights (its reason to exist)
            assert err < np.linalg.norm(g[name].decode() - w) / np.linalg.norm(w)
        assert json.loads(f.metadata["spqrfmt.convert"])["quip_codebook"] == "e8p12"


def test_convert_quip_e8p12_needs_in_features_multiple_of_8(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "odd"
    d.mkdir()
    rng = np.random.default_rng(5)
    write_safetensors(d / "model.safetensors", {
        "model.layers.0.mlp.up_proj.weight": ("f32", rng.standard_normal((64, 64)).astype(np.float32)),
        "model.layers.0.mlp.down_proj.weight": ("f32", rng.standard_normal((64, 68)).astype(np.float32)),
    })
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    out = tmp_path / "odd.spqr"
    assert main(["convert", str(d), "-o", str(out), "--codec", "quip", "--quip-codebook", "e8p12", "-q"]) == 2
    err = capsys.readouterr().err
    assert "multiple of 8" in err and "down_proj" in err
    assert not out.exists()
    assert main(["convert", str(d), "-o", str(out), "--codec", "quip", "--quip-codebook", "e8p12", "-q",
                 "--skip", "down_proj"]) == 0
    with spqrfmt.open(out) as f:
        assert f["model.layers.0.mlp.down_proj.weight"].codec == "raw"
        assert f["model.layers.0.mlp.up_proj.weight"].codec_version == 2


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("gpt2") / "hf"
    torch.manual_seed(3)
    cfg = transformers.GPT2Config(vocab_size=len(WORDS) + 2, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=1, eos_token_id=1)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    _save_tokenizer(d)
    return d


def test_gpt2_conv1d_orientation(tiny_gpt2: Path, tiny_lm, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Conv1D weights are quantized as [out, in] (groups along the input), listed, and restored on the way out."""
    from spqrfmt.encoder.spqr import quantize_spqr

    _, calib, heldout = tiny_lm
    source = SafetensorsFile(next(tiny_gpt2.glob("*.safetensors")))
    conv = sorted(n for n in source if n.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight")))
    assert len(conv) == 8
    out = tmp_path / "g.spqr"
    assert main(["convert", str(tiny_gpt2), "-o", str(out), "--min-features", "16", "-q"]) == 0
    assert "stored transposed" in capsys.readouterr().out
    with spqrfmt.open(out) as f:
        assert f.metadata["spqrfmt.transposed"] == conv and f.metadata["spqrfmt.conv1d"] == "out_in"
        for name in conv:
            w = source[name][1]
            assert tuple(f[name].shape) == w.shape[::-1]
            assert np.array_equal(f[name].decode(), quantize_spqr(w.T, bits=4).dequantized)
    dec = tmp_path / "g.safetensors"
    assert main(["decode", str(out), "-o", str(dec), "-q"]) == 0
    assert main(["decode", str(out), "-o", str(tmp_path / "s.safetensors"), "--as-stored", "-q"]) == 0
    restored, stored = SafetensorsFile(dec), SafetensorsFile(tmp_path / "s.safetensors")
    for name in conv:
        assert restored.shape(name) == source.shape(name) and stored.shape(name) == source.shape(name)[::-1]
        assert np.array_equal(restored[name][1], stored[name][1].T)
    # Calibrated: the Conv1D layers are hooked, solved as [out, in] and evaluate like the source model.
    cal = tmp_path / "gc.spqr"
    assert main(["convert", str(tiny_gpt2), "-o", str(cal), "--calibrate", str(calib), *CALIB, "-q"]) == 0
    capsys.readouterr()
    with spqrfmt.open(cal) as f:
        assert all(f[n].codec == "spqr" and "perm" in f[n].record.sections for n in conv)
    assert main(["eval", str(tiny_gpt2), str(cal), "--text", str(heldout), "--seqlen", "32", "-q"]) == 0
    ppl = _ppl(capsys.readouterr().out)
    assert abs(np.log(ppl[str(cal)] / ppl[str(tiny_gpt2)])) < 0.5


def test_eval_refuses_encoder_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The MiniLM demo checkpoint (BertModel) converts, but has no LM head to compute perplexity with."""
    out = tmp_path / "m.spqr"
    assert main(["convert", "-o", str(out), "-q", "--no-check", "--include", "NOTHING", "--min-features",
                 "100000"]) == 0
    capsys.readouterr()
    text = _text(tmp_path / "t.txt", 3, 0)
    assert main(["eval", str(out), "--text", str(text)]) == 1  # unsupported input (exit codes: spqr --help)
    assert "not a causal language model" in capsys.readouterr().err
