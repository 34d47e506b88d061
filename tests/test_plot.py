"""Charts: spqr inspect --plot (bits and recorded errors per layer) and the quality chart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'spqrfmt[plot]')")

import spqrfmt  # noqa: E402
from spqrfmt.encoder.spqr import quantize_spqr  # noqa: E402
from spqrfmt.plot import layer_rows, plot_quality  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _file(path: Path, errors: bool) -> Path:
    rng = np.random.default_rng(0)
    meta = {"spqrfmt.rel_error": {}} if errors else {}
    with spqrfmt.Writer(path, metadata=meta) as w:
        for layer in range(3):
            for kind in ("q_proj", "down_proj"):
                name = f"model.layers.{layer}.{kind}.weight"
                enc = quantize_spqr(rng.standard_normal((16, 64)).astype(np.float32), bits=3, group_size=16,
                                    scale_bits=3, zero_bits=3, stat_group_size=16, outlier_fraction=0.0)
                w.add_encoded(name, enc, dtype="f16")
                if errors:
                    w.metadata["spqrfmt.rel_error"][name] = 0.1 + layer / 100
        w.add_raw("model.norm.weight", np.ones(16, np.float32))
    return path


def test_layer_rows_read_bits_and_recorded_errors(tmp_path: Path) -> None:
    with spqrfmt.open(_file(tmp_path / "e.spqr", True)) as f:
        rows = layer_rows(f)
    assert len(rows) == 6 and {r["kind"] for r in rows} == {"q_proj.weight", "down_proj.weight"}
    assert sorted({r["layer"] for r in rows}) == [0, 1, 2]
    assert all(3 < r["bits"] < 5 for r in rows)
    assert sorted(r["rel_error"] for r in rows)[-1] == pytest.approx(0.12)


@pytest.mark.parametrize("errors", [True, False])
def test_inspect_plot_writes_a_png_and_refuses_its_input(tmp_path: Path, errors: bool) -> None:
    src = _file(tmp_path / "m.spqr", errors)
    before = src.read_bytes()
    out = tmp_path / "layers.png"
    cli = [sys.executable, "-m", "spqrfmt.cli", "inspect", str(src), "--no-tensors", "--plot"]
    r = subprocess.run([*cli, str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 5000
    r = subprocess.run([*cli, str(src)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")], r.stderr
    assert src.read_bytes() == before


def test_quality_chart(tmp_path: Path) -> None:
    rows = [{"method": "SpQR", "bits": 3.0, "ppl": 50.0}, {"method": "SpQR", "bits": 4.5, "ppl": 38.0},
            {"method": "RTN", "bits": 3.0, "ppl": 400.0}]
    out = tmp_path / "q.png"
    plot_quality(rows, out, reference=35.5, title="t")
    assert out.read_bytes()[:8] == PNG
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_convert_records_each_tensors_error(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    from spqrfmt.convert import QuantConfig, convert

    folder = tmp_path / "ckpt"
    folder.mkdir()
    rng = np.random.default_rng(1)
    save_file({"model.layers.0.mlp.up_proj.weight": rng.standard_normal((64, 64)).astype(np.float32)},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    report = convert(folder, tmp_path / "o.spqr", QuantConfig(), progress=False)
    with spqrfmt.open(tmp_path / "o.spqr") as f:
        errs = f.metadata["spqrfmt.rel_error"]
    assert errs == {"model.layers.0.mlp.up_proj.weight": pytest.approx(report.layers[0].rel_error)}


def test_speedup_chart_from_the_benchmark_json(tmp_path: Path) -> None:
    """bench/chart_speedup.py: speed-up = fp16 µs / kernel µs per (kernel, shape, batch); rows without a timing
    are left out, and the PNG is written."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("chart_speedup",
                                                  Path(__file__).parent.parent / "bench" / "chart_speedup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kernels = {"device": "GPU", "rows": [{"m": 64, "n": 32, "bits": 3, "fp16_b1_us": 10.0, "fused_b1_us": 5.0,
                                          "int4_b1_us": 4.0, "fp16_b4_us": 12.0, "fused_b4_us": None}]}
    codecs = {"rows": [{"codec": "squeezellm", "m": 64, "n": 32, "bits": 4, "fp16_b16_us": 9.0,
                        "fused_b16_us": 18.0}]}
    data = mod.series(kernels, codecs)
    assert data == {"spqr 3-bit": {"64x32": {1: 2.0}}, "torch int4 tinygemm g128": {"64x32": {1: 2.5}},
                    "squeezellm 4-bit": {"64x32": {16: 0.5}}}
    (tmp_path / "k.json").write_text(json.dumps(kernels))
    (tmp_path / "c.json").write_text(json.dumps(codecs))
    assert mod.main([str(tmp_path / "k.json"), str(tmp_path / "c.json"), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG
