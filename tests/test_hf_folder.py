"""spqr decode --hf (a dense folder) and spqr export-hf + spqrfmt.hf: from_pretrained with no further code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import spqrfmt  # noqa: E402
from spqrfmt.cli import main  # noqa: E402
from spqrfmt.convert import QuantConfig, convert  # noqa: E402
from spqrfmt.encoder.rtn import quantize_spqr  # noqa: E402
from spqrfmt.hf.export import dense_tensors, parse_size  # noqa: E402
from spqrfmt.model import load_model  # noqa: E402

VOCAB = 96
TEMPLATE = b"{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(d / "src")
    GenerationConfig(max_new_tokens=7, do_sample=False).save_pretrained(d / "src")
    _tokenizer(d / "src")
    (d / "src" / "chat_template.jinja").write_bytes(TEMPLATE)
    path = d / "tiny.spqr"
    convert(d / "src", path, QuantConfig(bits=4, min_features=16), progress=False)
    return path


def test_decode_hf_folder_loads_with_from_pretrained(tiny: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = tmp_path / "dense"
    assert main(["decode", str(tiny), "--hf", "-o", str(out), "--max-shard-size", "40KB", "-q"]) == 0
    files = {p.name for p in out.iterdir()}
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "chat_template.jinja",
            "generation_config.json", "tokenizer_config.json"} <= files
    assert (out / "chat_template.jinja").read_bytes() == TEMPLATE
    index = json.loads((out / "model.safetensors.index.json").read_text())
    with spqrfmt.open(tiny) as f:
        assert set(index["weight_map"]) == set(f) and set(index["weight_map"].values()) == set(shards)
        assert index["metadata"]["total_size"] == sum(4 * t.numel for t in f.values())  # all f32 here

    dense = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = load_model(tiny, device="cpu", dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 90]])
    with torch.no_grad():
        assert torch.equal(dense(ids).logits, ours(ids).logits)
    with spqrfmt.open(tiny) as f:  # the weights are the file's decoded tensors, bit for bit
        w = dense.model.layers[1].mlp.down_proj.weight.detach().numpy()
        assert np.array_equal(w, f["model.layers.1.mlp.down_proj.weight"].decode())
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("w5 w9").input_ids[-2:] == [5, 9] and tok.eos_token == "</s>"
    assert GenerationConfig.from_pretrained(out).max_new_tokens == 7
    capsys.readouterr()


def test_decode_hf_refusals_leave_nothing(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def fails(args: list[str], code: int, match: str) -> None:
        capsys.readouterr()
        assert main(args) == code
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and match in err, err

    fails(["decode", str(tiny), "--hf"], 2, "pass -o DIR")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep")
    fails(["decode", str(tiny), "--hf", "-o", str(full)], 2, "not empty")
    fails(["decode", str(tiny), "--hf", "-o", str(tmp_path / "d"), "--max-shard-size", "lots"], 2, "not a size")
    fails(["decode", str(tiny), "--hf", "-o", str(tmp_path / "d"), "--only", "lm_head.weight"], 2, "do not apply")
    fails(["decode", str(tiny), "--max-shard-size", "1GB"], 2, "--hf only")
    no_config = tmp_path / "bare.spqr"
    with spqrfmt.Writer(no_config) as w:
        w.add_raw("a", np.zeros(3, np.float32))
    fails(["decode", str(no_config), "--hf", "-o", str(tmp_path / "d")], 1, "hf.config")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.spqr", "full"]  # no temporary folder left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["decode", str(tiny), "--hf", "-o", str(empty), "-q"]) == 0
    assert (empty / "model.safetensors").is_file() and not (empty / "model.safetensors.index.json").exists()


def test_dense_tensors_split_fused_restore_bias_and_transpose(tmp_path: Path) -> None:
    """The file's conventions undone: fused rows split into parts, codec bias as .bias, Conv1D transposed back."""
    rng = np.random.default_rng(4)
    qkv = rng.standard_normal((48, 32)).astype(np.float32)
    conv = rng.standard_normal((24, 32)).astype(np.float32)  # stored [out, in]; the checkpoint holds [in, out]
    enc = quantize_spqr(qkv, bits=8, scale_bits=16, zero_bits=16, outlier_fraction=0.0)
    bias = rng.standard_normal(48).astype(np.float16)
    path = tmp_path / "f.spqr"
    meta = {"spqrfmt.fused": {"l.qkv.weight": [["l.q.weight", 16], ["l.k.weight", 16], ["l.v.weight", 16]]},
            "spqrfmt.transposed": ["c.weight"]}
    with spqrfmt.Writer(path, metadata=meta) as w:
        w.add(name="l.qkv.weight", shape=enc.shape, dtype="f16", codec=enc.codec, params=enc.params,
              sections={**enc.sections, "bias": bias}, codec_version=enc.codec_version)
        w.add_encoded("c.weight", quantize_spqr(conv, bits=8, scale_bits=16, zero_bits=16, outlier_fraction=0.0))
    with spqrfmt.open(path) as f:
        got = {t.name: (t.shape, t.fetch()) for t in dense_tensors(f, "f32")}
        full = f["l.qkv.weight"].decode()
        assert list(got) == ["l.q.weight", "l.k.weight", "l.v.weight", "l.qkv.bias", "c.weight"]
        for i, part in enumerate(["l.q.weight", "l.k.weight", "l.v.weight"]):
            assert got[part][0] == (16, 32) and np.array_equal(got[part][1], full[16 * i:16 * (i + 1)])
        assert np.array_equal(got["l.qkv.bias"][1], bias.astype(np.float32))
        assert got["c.weight"][0] == (32, 24) and np.array_equal(got["c.weight"][1], f["c.weight"].decode().T)


def test_parse_size() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MiB") == 500 << 20 and parse_size("123") == 123
    for bad in ("", "1TB", "-1", "0", "x"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_export_hf_from_pretrained_matches_load_model(tiny: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spqrfmt.hf  # noqa: F401 - registers quant_method "spqrfmt" with transformers

    out = tmp_path / "export"
    assert main(["export-hf", str(tiny), "-o", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.spqr", "model.safetensors", "tokenizer.json",
                                                "chat_template.jinja", "generation_config.json"}
    assert (out / "model.spqr").read_bytes() == tiny.read_bytes()
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "spqrfmt" and qc["file"] == "model.spqr"

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # device_map needs accelerate
    ours = load_model(tiny, device="cpu", dtype=torch.float32)
    assert sorted(model.spqr_load_report.decoded_layers) == sorted(ours.spqr_load_report.decoded_layers)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied as the config asks
    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 90]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ours(ids).logits)
    assert model.config.quantization_config.quant_method == "spqrfmt"
    with pytest.raises(ValueError, match="not serializable"):  # spqr export-hf writes the folder from the file
        model.save_pretrained(tmp_path / "again")
    assert AutoTokenizer.from_pretrained(out)("w7").input_ids[-1] == 7
    capsys.readouterr()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("x")
    assert main(["export-hf", str(tiny), "-o", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_export_hf_refuses_a_missing_or_escaping_weights_file(tiny: Path, tmp_path: Path) -> None:
    from spqrfmt.hf import SpqrfmtConfig

    for bad in ("../model.spqr", "/etc/model.spqr", "model.bin", ""):
        with pytest.raises(ValueError, match="file name inside"):
            SpqrfmtConfig(file=bad)
    from transformers import AutoModelForCausalLM

    out = tmp_path / "export"
    assert main(["export-hf", str(tiny), "-o", str(out)]) == 0
    (out / "model.spqr").unlink()
    with pytest.raises(Exception, match="model.spqr not found"):
        AutoModelForCausalLM.from_pretrained(out)


def test_hf_edge_is_light_and_import_registers_either_way() -> None:
    """The converter's use of spqrfmt.hf (checkpoint reading) imports no transformers; ``import spqrfmt.hf``
    registers the method whether transformers' loader is imported after it or was imported before."""
    import subprocess
    import sys

    probe = "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as M; assert 'spqrfmt' in M, sorted(M)"
    light = ("import sys, spqrfmt.convert, spqrfmt.hf.checkpoint, spqrfmt.hf.export; "
             "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules); ")
    for code in (light + "import spqrfmt.hf; " + probe,  # registered once transformers' loader is imported
                 "import transformers.quantizers; import spqrfmt.hf; " + probe):  # at once
        subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
