"""Streaming calibration: one block's weights at a time, the same bytes as the whole-model path and as N ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from spqrfmt.codecs import spqr as spqr_codec  # noqa: E402
from spqrfmt.convert import QuantConfig, convert  # noqa: E402
from spqrfmt.encoder import blocks  # noqa: E402
from spqrfmt.encoder.calibrate import CalibConfig, quantize_model_calibrated  # noqa: E402
from spqrfmt.encoder.hessian import fixed_gram, from_fixed, grid_exponent, hessian, input_bound  # noqa: E402
from spqrfmt.safetensors_io import SafetensorsFile, write_safetensors  # noqa: E402

LAYERS = 3
WORDS = [f"w{i}" for i in range(120)]


def _shard_of(name: str) -> int:
    """embeddings + block 0 | block 1 | block 2 + final norm + head: three shards."""
    for i in range(LAYERS):
        if f".layers.{i}." in name:
            return i
    return 0 if "embed" in name else LAYERS - 1


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """A tiny random Llama saved as a real sharded HF folder (index + 3 shards, bf16) with a word tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, eos_token_id=1, bos_token_id=2)
    model = LlamaForCausalLM(cfg)
    folder = tmp_path_factory.mktemp("sharded")
    model.config.save_pretrained(folder)
    state = {k: v.to(torch.bfloat16).view(torch.uint16).numpy() for k, v in model.state_dict().items()}
    files = [f"model-{i + 1:05d}-of-{LAYERS:05d}.safetensors" for i in range(LAYERS)]
    wmap = {n: files[_shard_of(n)] for n in state}
    for i, f in enumerate(files):
        write_safetensors(folder / f, {n: ("bf16", a) for n, a in state.items() if wmap[n] == files[i]})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    vocab = {"[UNK]": 0, "[EOS]": 1, "[BOS]": 2, **{w: i + 3 for i, w in enumerate(WORDS[:125])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]",
                            bos_token="[BOS]").save_pretrained(folder)
    return folder


def _cfg() -> CalibConfig:
    return CalibConfig(options={"bits": 3}, batch_size=2, min_features=16)


def _tokens():
    return torch.randint(0, 128, (6, 16), generator=torch.Generator().manual_seed(1))


def _spqr(folder: Path, store, out: Path) -> bytes:
    convert(folder, out, QuantConfig(bits=3, min_features=16, method="spqr"), encoded=store, progress=False)
    return out.read_bytes()


def test_blocks_are_read_only_when_processed_and_the_file_matches_the_whole_model(sharded, tmp_path,
                                                                               monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    read = SafetensorsFile.__getitem__
    codec = type(spqr_codec.CODEC)
    solve = codec.encode
    load = blocks.StreamingModel.load

    def probe_read(self, name):
        events.append(("read", name))
        return read(self, name)

    def probe_solve(self, weight, *a, **kw):
        events.append(("solve", ""))
        return solve(self, weight, *a, **kw)

    def probe_load(self, i):  # every other block is on meta (freed) when a block is materialised
        live = [j for j, b in enumerate(self.layers) for p in b.parameters() if p.device.type != "meta"]
        assert not live, f"blocks {sorted(set(live))} still hold weights when block {i} is loaded"
        events.append(("block", str(i)))
        return load(self, i)

    monkeypatch.setattr(SafetensorsFile, "__getitem__", probe_read)
    monkeypatch.setattr(codec, "encode", probe_solve)
    monkeypatch.setattr(blocks.StreamingModel, "load", probe_load)
    stream = quantize_model_calibrated(sharded, _tokens(), _cfg(), work_dir=tmp_path / "s", progress=False)
    monkeypatch.undo()

    reads = [n for kind, n in events if kind == "read"]
    assert len(reads) == len(set(reads))  # every tensor at most once
    assert not [n for n in reads if "lm_head" in n or n == "model.norm.weight"]  # never needed
    assert reads[0] == "model.embed_tokens.weight"
    starts = [k for k, (kind, _n) in enumerate(events) if kind == "block"]
    assert len(starts) == LAYERS
    for i, k in enumerate(starts):
        end = starts[i + 1] if i + 1 < LAYERS else len(events)
        window = events[k:end]
        mine = [n for kind, n in window if kind == "read"]
        assert mine and all(f".layers.{i}." in n for n in mine), (i, mine)  # only block i, only now
        first_solve = next(j for j, (kind, _n) in enumerate(window) if kind == "solve")
        assert all(kind != "read" for kind, _n in window[first_solve:])  # read before solved, not after
        assert sum(kind == "solve" for kind, _n in window) == 7
    # nothing of block i was read before block i started
    for i, k in enumerate(starts):
        assert not [n for kind, n in events[:k] if kind == "read" and f".layers.{i}." in n]

    whole = quantize_model_calibrated(sharded, _tokens(), _cfg(), work_dir=tmp_path / "w", progress=False,
                                      streaming=False)
    assert _spqr(sharded, stream, tmp_path / "s.spqr") == _spqr(sharded, whole, tmp_path / "w.spqr")

    (tmp_path / "s" / "block_0001.npz").unlink()  # resume: blocks 0 and 2 replayed, 1 solved again
    (tmp_path / "s" / "block_0002.npz").unlink()
    lines: list[str] = []
    again = quantize_model_calibrated(sharded, _tokens(), _cfg(), work_dir=tmp_path / "s", log=lines.append)
    assert sum("resumed" in s for s in lines) == 1
    assert _spqr(sharded, again, tmp_path / "r.spqr") == (tmp_path / "s.spqr").read_bytes()


def test_hessian_sum_does_not_depend_on_the_split() -> None:
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(5, 7, 12, generator=g) * s for s in (1e-3, 1.0, 30.0, 1.0)]
    xs[1][:, :, 4] = 0  # a dead feature stays exactly 0
    whole = hessian(xs)
    k = grid_exponent(max(input_bound(x) for x in xs), len(xs))
    split = (fixed_gram(xs[2], k) + fixed_gram(xs[0], k)) + (fixed_gram(xs[3], k) + fixed_gram(xs[1], k))
    assert torch.equal(from_fixed(split, k, 4 * 35), whole)
    ref = sum(x.reshape(-1, 12).double().T @ x.reshape(-1, 12).double() for x in xs) * (2.0 / 140)
    assert torch.allclose(whole, ref, rtol=1e-12, atol=1e-13 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="not finite"):
        input_bound(torch.tensor([[float("inf"), 1.0]]))


def _cli_args(folder: Path, text: Path, out: Path) -> list[str]:
    return ["convert", str(folder), "-o", str(out), "--calibrate", str(text), "--nsamples", "4", "--seqlen", "16",
            "--batch-size", "1", "--bits", "3", "--min-features", "16", "--device", "cpu", "-q"]


def _torchrun(ranks: int, args: list[str]) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m spqrfmt.cli ARGS`` (gloo: --device cpu)."""
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), "-m", "spqrfmt.cli"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}  # no root on sys.path: see conftest
    return subprocess.run([sys.executable, *launch, *args], capture_output=True, text=True, env=env, timeout=300)


def test_two_gloo_ranks_write_the_same_bytes_as_one_process(sharded, tmp_path) -> None:
    text = tmp_path / "calib.txt"
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(rng.choice(WORDS, 40)) for _ in range(4)) + "\n")
    from spqrfmt.cli import main

    assert main(_cli_args(sharded, text, tmp_path / "one.spqr")) == 0  # in this process, with its threads
    two = _torchrun(2, [*_cli_args(sharded, text, tmp_path / "two.spqr"), "--distributed"])
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("wrote ") == 1  # rank 0 alone writes and prints
    assert (tmp_path / "two.spqr").read_bytes() == (tmp_path / "one.spqr").read_bytes()
    assert not list(tmp_path.glob("*.calib"))  # the default work dir is removed after success
