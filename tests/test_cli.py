"""The CLI as a user runs it: convert a real checkpoint folder, inspect, verify, decode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import spqrfmt
from spqrfmt.cli import main
from spqrfmt.convert import QuantConfig, convert, demo_checkpoint
from spqrfmt.dtypes import f32_to_bf16
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
