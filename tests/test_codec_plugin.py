"""A codec from outside the package (tests/toy_codec.py), installed through the ``spqrfmt.codecs`` entry-point
group, converts, reads, verifies and loads a model with no container/converter/loader/CLI code naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spqrfmt import codecs
from spqrfmt.codecs.spqr import SpqrCodec

TESTS = Path(__file__).parent

SCRIPT = r"""
import json, os, subprocess, sys
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import spqrfmt
from spqrfmt import codecs
from spqrfmt.convert import QuantConfig, check_written, convert, plan
from spqrfmt.model import load_model

folder, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True)
LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = {"encodable": codecs.encodable()}  # the first look-up scans the entry points, once
result["warnings"] = [str(w.message) for w in caught]
qc = QuantConfig(codec="toy", min_features=16, levels=100)
report = convert(folder, out, qc, progress=False)
result["layers"] = len(report.layers)
result["readback"] = check_written(out, report, plan(folder, qc))  # decodes bit-exactly to the encoder's own
with spqrfmt.open(out) as f:
    result["codecs"] = sorted({t.codec for t in f.values()})
    result["bad"] = [n for n, e in f.check_all() if e is not None]
    t = next(t for t in f.values() if t.codec == "toy")
    result["params"] = t.codec_params
cli = [sys.executable, "-m", "spqrfmt.cli"]
via_cli = out + ".cli.spqr"
proc = subprocess.run([*cli, "convert", folder, "-o", via_cli, "--codec", "toy", "--toy-levels", "7",
                       "--min-features", "16", "-q"], capture_output=True, text=True)
result["cli_convert"] = [proc.returncode, proc.stdout + proc.stderr]
proc = subprocess.run([*cli, "verify", "--decode", out, via_cli], capture_output=True, text=True)
result["verify"] = [proc.returncode, proc.stdout]
proc = subprocess.run([*cli, "convert", folder, "-o", out + ".x", "--codec", "toy", "--group-size", "8", "-q"],
                      capture_output=True, text=True)
result["foreign_flag"] = [proc.returncode, proc.stderr]
ids = torch.tensor([[1, 5, 9, 3]])
dense = load_model(out)
kernel = load_model(out, use_kernels=True)
layer = kernel.model.layers[0].mlp.up_proj
result["module"] = [type(layer).__name__, layer.codec]
result["decoded"] = len(dense.spqr_load_report.decoded_layers)
result["kernel_layers"] = len(kernel.spqr_load_report.kernel_layers)
with torch.no_grad():
    a, b = dense(ids).logits, kernel(ids).logits
result["same_logits"] = bool(torch.allclose(a, b, atol=1e-4, rtol=1e-4))
print(json.dumps(result))
"""


def _install(site: Path) -> None:
    """A dist-info whose entry point names tests/toy_codec.py's CODEC (what `pip install` of a plugin leaves)."""
    dist = site / "spqrfmt_toy_codec-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: spqrfmt-toy-codec\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[spqrfmt.codecs]\ntoy = toy_codec:CODEC\nbroken = no_such_module:CODEC\n")


def test_toy_codec_from_an_entry_point_converts_reads_verifies_and_loads(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    site = tmp_path / "site"
    _install(site)
    path = [str(site), str(TESTS), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path),  # no empty entry: the root's kernels/ (see conftest)
               TRITON_INTERPRET="1", PYTHONSAFEPATH="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "hf"), str(tmp_path / "toy.spqr")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "toy" in r["encodable"]
    # a plugin that cannot be imported is named in a warning and left out; the others still work
    assert len(r["warnings"]) == 1 and "'broken'" in r["warnings"][0] and "no_such_module" in r["warnings"][0]
    assert r["codecs"] == ["raw", "toy"] and r["layers"] == 7 and r["bad"] == []
    assert r["params"] == {"levels": 100} and r["readback"] == []
    assert r["cli_convert"][0] == 0, r["cli_convert"][1]
    assert "toy: int8 codes in ±7" in r["cli_convert"][1]
    assert r["verify"][0] == 0 and r["verify"][1].count(": OK") == 2, r["verify"]
    assert r["foreign_flag"][0] == 2 and "--group-size applies to --codec spqr only" in r["foreign_flag"][1]
    assert r["module"] == ["CodecLinear", "toy"] and r["kernel_layers"] == 7 and r["decoded"] == 7
    assert r["same_logits"]


def test_registration_refuses_a_second_codec_with_a_taken_id() -> None:
    spqr = codecs.by_id("spqr")
    assert codecs.register(spqr) is spqr  # the same object again: nothing changes
    with pytest.raises(ValueError, match="already registered"):
        codecs.register(SpqrCodec())
    with pytest.raises(ValueError, match="non-empty string id"):
        codecs.register(type("NoId", (), {})())
    assert codecs.by_id("spqr") is spqr


def test_check_record_returns_the_checked_params_the_tensor_keeps(tmp_path: Path) -> None:
    from spqrfmt.encoder.spqr import quantize_spqr
    from spqrfmt.writer import Writer

    w = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    enc = quantize_spqr(w, bits=3, outlier_fraction=0.0)
    with Writer(tmp_path / "a.spqr") as wr:
        wr.add("t", shape=enc.shape, dtype="f32", codec="spqr", params={**enc.params, "arith": "f16"},
               sections=enc.sections)  # v1 ignores a key only v2 defines
    import spqrfmt

    with spqrfmt.open(tmp_path / "a.spqr") as f:
        t = f["t"]
        assert t.params["arith"] == "f16" and "arith" not in t.codec_params
        assert t.codec_params == codecs.get(t.record).check_record(t.record) and t.quantized
