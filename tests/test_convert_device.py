"""``spqr convert --device DEV``: data-free encoding by the codecs' torch encoders writes the same file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from spqrfmt.cli import main  # noqa: E402
from spqrfmt.safetensors_io import write_safetensors  # noqa: E402


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    d = tmp_path / "ckpt"
    d.mkdir()
    tensors = {"layers.0.mlp.up_proj.weight": ("f32", (rng.standard_normal((96, 80)) * 0.02).astype(np.float32)),
               "layers.0.mlp.down_proj.weight": ("f32", (rng.standard_normal((80, 96)) * 0.02).astype(np.float32)),
               "norm.weight": ("f32", np.ones(80, np.float32))}
    write_safetensors(d / "model.safetensors", tensors)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return d


@pytest.mark.parametrize("codec", ["spqr", "squeezellm", "quip"])
def test_device_cpu_writes_the_numba_encoders_bytes(folder: Path, tmp_path: Path, codec: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--kmeans-iters", "5"] if codec == "squeezellm" else []
    a, b = tmp_path / "a.spqr", tmp_path / "b.spqr"
    assert main(["convert", str(folder), "-o", str(a), "--codec", codec, "--min-features", "16", "-q", *extra]) == 0
    assert main(["convert", str(folder), "-o", str(b), "--codec", codec, "--min-features", "16", "-q",
                 "--device", "cpu", *extra]) == 0
    assert a.read_bytes() == b.read_bytes()
    capsys.readouterr()


def test_device_refusals(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    out = tmp_path / "x.spqr"
    if not torch.cuda.is_available():
        assert main(["convert", str(folder), "-o", str(out), "--device", "cuda", "-q"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert main(["convert", str(folder), "-o", str(out), "--device", "tpu", "-q"]) == 2
    assert "use cpu or cuda" in capsys.readouterr().err
    assert main(["convert", str(folder), "-o", str(out), "--codec", "quip", "--quip-codebook", "e8p12", "--bits", "2",
                 "--min-features", "16", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "e8p12" in err
    assert not out.exists()
