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
from spqrfmt.encoder.spqr import quantize_spqr  # noqa: E402
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


def _export(tiny: Path, out: Path) -> Path:
    import spqrfmt.hf  # noqa: F401 - registers quant_method "spqrfmt" with transformers

    assert main(["export-hf", str(tiny), "-o", str(out)]) == 0
    return out


def _logits(model: object) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 17, 33, 65, 90]])).logits  # type: ignore[operator]


def test_save_pretrained_writes_the_folder_back_losslessly(tiny: Path, tmp_path: Path) -> None:
    """from_pretrained -> save_pretrained -> from_pretrained: the export-hf folder form, the .spqr byte for byte
    (so every tensor's `spqr hash` digest), identical logits; saving the reloaded model gives the same bytes again."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spqrfmt.hashing import file_digests

    src = _export(tiny, tmp_path / "export")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.save_pretrained(tmp_path / "again")
    again = tmp_path / "again"
    assert {p.name for p in again.iterdir()} == {p.name for p in src.iterdir()}  # no leftover staging folder
    assert (again / "model.spqr").read_bytes() == tiny.read_bytes()
    with spqrfmt.open(tiny) as a, spqrfmt.open(again / "model.spqr") as b:
        assert file_digests(a) == file_digests(b) and len(file_digests(a)) > 0
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (src / name).read_bytes()
    cfg = json.loads((again / "config.json").read_text())
    assert cfg["quantization_config"] == json.loads((src / "config.json").read_text())["quantization_config"]
    from safetensors import safe_open

    with safe_open(str(again / "model.safetensors"), framework="pt") as st:
        assert list(st.keys()) == [] and "model.spqr" in st.metadata()["spqrfmt"]  # the stub the loader opens
    reloaded = AutoModelForCausalLM.from_pretrained(again, dtype=torch.float32)
    assert torch.equal(_logits(reloaded), _logits(model))
    assert AutoTokenizer.from_pretrained(again)("w7").input_ids[-1] == 7
    reloaded.save_pretrained(tmp_path / "third")
    assert (tmp_path / "third" / "model.spqr").read_bytes() == tiny.read_bytes()


def test_save_pretrained_refuses_what_it_cannot_write_losslessly(tiny: Path, tmp_path: Path) -> None:
    """Changed tensors (in place, through .data, a cast), the source folder itself, a source changed on disk,
    a state_dict argument and transformers' own save are refused with a message; nothing is left behind."""
    from transformers import AutoModelForCausalLM, PreTrainedModel

    src = _export(tiny, tmp_path / "export")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    norm = model.model.norm.weight
    for edit, undo in ((lambda: norm.data.add_(1.0), lambda: norm.data.sub_(1.0)),
                       (lambda: model.model.layers[0].mlp.down_proj.weight.data.mul_(2.0),
                        lambda: model.model.layers[0].mlp.down_proj.weight.data.div_(2.0))):
        edit()
        with pytest.raises(ValueError, match=r"1 tensor\(s\) changed since .*re-quantizing"):
            model.save_pretrained(tmp_path / "edited")
        assert not (tmp_path / "edited").exists()
        undo()
    with pytest.raises(ValueError, match="would overwrite model.spqr"):
        model.save_pretrained(src)
    assert (src / "model.spqr").read_bytes() == tiny.read_bytes()
    with pytest.raises(ValueError, match="state_dict"):
        model.save_pretrained(tmp_path / "sd", state_dict=model.state_dict())
    with pytest.raises(ValueError, match="save this model with model.save_pretrained"):
        PreTrainedModel.save_pretrained(model, tmp_path / "plain")
    model.save_pretrained(tmp_path / "ok")  # the edits undone: the model holds the file's values again
    assert (tmp_path / "ok" / "model.spqr").read_bytes() == tiny.read_bytes()

    data = bytearray((src / "model.spqr").read_bytes())
    data[40] ^= 0xFF  # a header byte of the source, after loading
    (src / "model.spqr").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="changed on disk since the model was loaded"):
        model.save_pretrained(tmp_path / "late")
    assert not (tmp_path / "late").exists()  # created for the save, removed with the staged copy
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "ok", dtype=torch.float32).to(torch.float16)
    with pytest.raises(ValueError, match="changed since"):
        half.save_pretrained(tmp_path / "half")


def test_split_set_folder_loads_and_saves_back(tiny: Path, tmp_path: Path) -> None:
    """A folder whose quantization_config names a split set's first part: same logits, the set saved byte for byte."""
    from transformers import AutoModelForCausalLM

    src = _export(tiny, tmp_path / "export")
    single = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    (src / "model.spqr").unlink()
    assert main(["split", str(tiny), "--split-size", "20KB", "-o", str(src / "model")]) == 0
    names = sorted(p.name for p in src.glob("model*.spqr*"))
    assert len(names) >= 3 and "model.spqr.index.json" in names
    first = next(n for n in names if n.startswith("model-00001-of-"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"]["file"] = first
    (src / "config.json").write_text(json.dumps(cfg))
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    assert torch.equal(_logits(model), _logits(single))
    model.save_pretrained(tmp_path / "again")
    for n in names:
        assert (tmp_path / "again" / n).read_bytes() == (src / n).read_bytes()
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "again", dtype=torch.float32)),
                       _logits(single))
