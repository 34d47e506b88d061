"""The CLI as an attacker and a careless user run it (issue 11): no data loss, no hang, no traceback.

Every CLI case runs the real entry point in a subprocess and checks one ``error:`` line, the
documented exit code (spqr --help: 1 invalid input, 2 usage, 3 internal) and that the inputs
are byte-identical afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import spqrfmt
from spqrfmt.dtypes import f32_to_bf16

from conftest import SPQR, assemble, assert_one_error, raw_safetensors, run_spqr, snapshot, split, write_checkpoint


@pytest.fixture(scope="module")
def spqr_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid converted file (kept read-only by the tests: they copy it to change it)."""
    d = tmp_path_factory.mktemp("conv")
    folder = write_checkpoint(d / "tiny")
    out = d / "tiny.spqr"
    proc = run_spqr("convert", folder, "-o", out, "-q", "--no-check")
    assert proc.returncode == 0, proc.stderr
    return out


def _small_spqr(path: Path, metadata: dict | None = None, names: tuple[str, ...] = ("a", "b")) -> Path:
    with spqrfmt.Writer(path, metadata=metadata) as w:
        for i, n in enumerate(names):
            w.add_raw(n, np.full(3, i, np.float32))
    return path


# ---- data loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["shard", "symlink", "hardlink"])
def test_convert_refuses_to_overwrite_its_own_shard(tmp_path: Path, how: str) -> None:
    folder = write_checkpoint(tmp_path / "m", shards=2)
    shard = folder / "model-00001-of-00002.safetensors"
    target = {"shard": shard, "symlink": tmp_path / "link.spqr", "hardlink": tmp_path / "hard.spqr"}[how]
    if how == "symlink":
        target.symlink_to(shard)
    elif how == "hardlink":
        os.link(shard, target)
    before = snapshot(folder)
    assert_one_error(run_spqr("convert", folder, "-o", target, "-q"), 2, "refusing to overwrite an input")
    assert snapshot(folder) == before


def test_decode_never_writes_onto_its_input(tmp_path: Path, spqr_file: Path) -> None:
    f = tmp_path / "F.spqr"
    f.write_bytes(spqr_file.read_bytes())
    assert_one_error(run_spqr("decode", f, "-o", f, "-q"), 2, "is the input")
    assert f.read_bytes() == spqr_file.read_bytes()
    # a .spqr file named X.safetensors: the default output is not the input itself
    x = tmp_path / "X.safetensors"
    x.write_bytes(spqr_file.read_bytes())
    proc = run_spqr("decode", x, "-q")
    assert proc.returncode == 0, proc.stderr
    assert x.read_bytes() == spqr_file.read_bytes()
    assert (tmp_path / "X.safetensors.decoded.safetensors").is_file()


def test_output_that_is_not_a_regular_file_is_refused(tmp_path: Path, spqr_file: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    folder = write_checkpoint(tmp_path / "m")
    assert_one_error(run_spqr("decode", spqr_file, "-o", fifo, "-q"), 2, "not a regular file")
    assert_one_error(run_spqr("convert", folder, "-o", fifo, "-q"), 2, "not a regular file")
    assert_one_error(run_spqr("convert", folder, "-o", tmp_path, "-q"), 2, "not a regular file")
    assert fifo.is_fifo()


def test_shard_index_is_honoured(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "m", shards=2, index=True)
    # a stray file beside the indexed shards is not read
    write_checkpoint(tmp_path / "stray", {"model.norm.weight": ("f32", np.zeros(64, np.float32))})
    os.replace(tmp_path / "stray" / "model.safetensors", folder / "consolidated.safetensors")
    out = tmp_path / "m.spqr"
    proc = run_spqr("convert", folder, "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    with spqrfmt.open(out) as f:
        assert len(f) == 3 and np.array_equal(f["model.norm.weight"].decode(), np.ones(64, np.float32))
    # a tensor the index lists but no shard holds; then a deleted shard
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "x.spqr", "-q"), 1, "model.extra.weight")
    (folder / "model-00002-of-00002.safetensors").unlink()
    before = snapshot(folder)
    assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "x.spqr", "-q"), 1,
                     "model-00002-of-00002.safetensors, which is missing")
    assert snapshot(folder) == before and not (tmp_path / "x.spqr").exists()


def test_bf16_beyond_f16_range_is_refused_by_name(tmp_path: Path) -> None:
    w = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    w[3, 5] = 1.0e5  # a bf16 value; f16 tops out at 65504
    folder = write_checkpoint(tmp_path / "m", {"model.layers.0.mlp.up_proj.weight": ("bf16", f32_to_bf16(w)),
                                               "model.layers.0.mlp.empty.weight": ("f32", np.zeros((0, 64), "f4"))})
    for codec in ("spqr", "squeezellm"):
        line = assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "x.spqr", "--codec", codec, "-q"), 1,
                                "model.layers.0.mlp.up_proj.weight")
        assert "f16 range" in line and "--skip" in line
    assert not (tmp_path / "x.spqr").exists()
    proc = run_spqr("convert", folder, "-o", tmp_path / "q.spqr", "--codec", "quip", "-q", "--min-features", "0")
    assert proc.returncode == 0, proc.stderr  # quip keeps f32 statistics; the empty matrix stays raw
    with spqrfmt.open(tmp_path / "q.spqr") as f:
        assert f["model.layers.0.mlp.empty.weight"].codec == "raw"
    w[0, 0] = np.nan  # no codec quantizes NaN: refused before any byte is written, with every codec
    folder = write_checkpoint(tmp_path / "n", {"model.layers.0.mlp.up_proj.weight": ("f32", w)})
    line = assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "n.spqr", "--codec", "quip", "-q"), 1,
                            "inf or NaN")
    assert "up_proj" in line and not (tmp_path / "n.spqr").exists()


def test_read_back_compares_with_the_source(tmp_path: Path) -> None:
    from spqrfmt.convert import QuantConfig, check_written, convert, plan

    folder = write_checkpoint(tmp_path / "m")
    out = tmp_path / "m.spqr"
    cfg = QuantConfig()
    report = convert(folder, out, cfg, progress=False)
    source = plan(folder, cfg)
    assert check_written(out, report, source) == []
    report.layers[0].rel_error *= 2  # what an encoder that lost its values would report against the decode
    assert "away from the source" in check_written(out, report, source)[0]


def test_metadata_named_tensor_does_not_corrupt_decode(tmp_path: Path) -> None:
    f = _small_spqr(tmp_path / "f.spqr", names=("a", "__metadata__"))
    before = f.read_bytes()
    assert_one_error(run_spqr("decode", f, "-o", tmp_path / "o.safetensors", "-q"), 1, "__metadata__")
    assert not (tmp_path / "o.safetensors").exists() and f.read_bytes() == before
    assert run_spqr("decode", f, "-o", tmp_path / "o.safetensors", "--only", "a", "-q").returncode == 0


def test_decode_keeps_0d_tensors_and_reads_like_safetensors(tmp_path: Path) -> None:
    with spqrfmt.Writer(tmp_path / "z.spqr") as w:
        w.add_raw("scalar", np.array(3.0, np.float32))
        w.add_raw("empty", np.zeros((0, 5), np.float16))
    assert run_spqr("decode", tmp_path / "z.spqr", "-q").returncode == 0
    from spqrfmt.safetensors_io import SafetensorsFile

    st = SafetensorsFile(tmp_path / "z.safetensors")
    assert st["scalar"][1].shape == () and float(st["scalar"][1]) == 3.0 and st["empty"][1].shape == (0, 5)
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    assert safetensors_numpy.load_file(tmp_path / "z.safetensors")["scalar"].shape == ()
    # and the strict reader takes what the safetensors library itself writes
    safetensors_numpy.save_file({"a": np.ones((2, 3), np.float32), "b": np.zeros(0, np.int8)}, tmp_path / "o.st",
                                metadata={"format": "np"})
    o = SafetensorsFile(tmp_path / "o.st")
    assert o.metadata == {"format": "np"} and np.array_equal(o["a"][1], np.ones((2, 3), np.float32))


def test_convert_without_config_needs_the_flag(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "m", config=False)
    assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "x.spqr", "-q"), 2, "--allow-no-config")
    assert not (tmp_path / "x.spqr").exists()
    assert run_spqr("convert", folder, "-o", tmp_path / "x.spqr", "-q", "--allow-no-config").returncode == 0


@pytest.mark.parametrize("flags, flag", [(["--group-size", "0"], "--group-size"),
                                         (["--stat-group-size", "0"], "--stat-group-size"),
                                         (["--scale-bits", "17"], "--scale-bits"),
                                         (["--outlier-fraction", "1.5"], "--outlier-fraction"),
                                         (["--skip", "(unclosed"], "--skip")])
def test_bad_values_are_usage_errors_before_anything_starts(tmp_path: Path, flags: list[str], flag: str) -> None:
    folder = write_checkpoint(tmp_path / "m")
    proc = run_spqr("convert", folder, "-o", tmp_path / "x.spqr", *flags)
    assert_one_error(proc, 2, flag)
    assert "converting" not in proc.stdout and not (tmp_path / "x.spqr").exists()


def test_tokenizer_files_too_large_for_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spqrfmt import convert
    from spqrfmt.hf import checkpoint

    folder = write_checkpoint(tmp_path / "m")
    (folder / "tokenizer.json").write_bytes(b"x" * 2048)
    monkeypatch.setattr(checkpoint, "MAX_HF_FILES", 1024)
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer/generation files total"):
        convert.convert(folder, tmp_path / "x.spqr", progress=False)
    assert not (tmp_path / "x.spqr").exists()


def test_good_convert_names_modes_and_metadata(tmp_path: Path) -> None:
    """cd model && spqr convert .: a visible name; the umask; every tokenizer file; version; no local path."""
    folder = write_checkpoint(tmp_path / "tiny-model")
    files = {"tokenizer.json": b"{}", "tokenizer_config.json": b"{}", "chat_template.jinja": b"{{ messages }}",
             "generation_config.json": b"{}", "special_tokens_map.json": b"{}", "tokenizer.model": b"\x00\x01",
             "vocab.txt": b"a\nb\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    old = os.umask(0o027)
    try:
        proc = run_spqr("convert", ".", "-q", cwd=folder)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    out = folder / "tiny-model.spqr"
    assert out.is_file() and not (folder / ".spqr").exists()
    assert out.stat().st_mode & 0o777 == 0o640
    with spqrfmt.open(out) as f:
        for name, data in files.items():
            assert f.metadata[f"hf.files/{name}"] == data, name
        assert f.metadata["spqrfmt.writer"] == f"spqrfmt-python {spqrfmt.__version__}"
        assert f.metadata["source.model"] == "tiny-model"
        assert str(tmp_path) not in json.dumps({k: v for k, v in f.metadata.items() if isinstance(v, str)})


# ---- hangs and hostile paths ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "decode", "convert-shard", "convert-folder", "eval-text",
                                     "eval-folder", "generate", "import"])
def test_fifo_inputs_are_refused_not_read(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    if command == "convert-shard":
        folder = write_checkpoint(tmp_path / "m")
        os.mkfifo(folder / "extra.safetensors")
        assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "x.spqr", timeout=30), 1, "not a regular file")
        return
    if command == "eval-folder":  # transformers would block on a FIFO tokenizer.json
        folder = write_checkpoint(tmp_path / "m")
        os.mkfifo(folder / "tokenizer.json")
        (tmp_path / "t.txt").write_text("words\n")
        assert_one_error(run_spqr("eval", folder, "--text", tmp_path / "t.txt", timeout=30), 2, "tokenizer.json")
        return
    argv = {"inspect": ["inspect", fifo], "decode": ["decode", fifo, "-o", tmp_path / "o.safetensors"],
            "convert-folder": ["convert", fifo, "-o", tmp_path / "x.spqr"],
            "eval-text": ["eval", tmp_path, "--text", fifo], "generate": ["generate", fifo, "--prompt", "hi"],
            "import": ["import", "squeezellm", fifo, "-o", tmp_path / "o.spqr"]}[command]
    assert_one_error(run_spqr(*argv, timeout=30), 2, str(fifo))


def test_verify_checks_every_file_and_reports_each(tmp_path: Path, spqr_file: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    missing = tmp_path / "missing.spqr"
    proc = run_spqr("verify", missing, fifo, spqr_file, timeout=30)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert f"{missing}: FAIL" in lines[0] and f"{fifo}: FAIL" in lines[1] and f"{spqr_file}: OK" in lines[2]


@pytest.mark.parametrize("kind", ["loop", "long", "notdir"])
@pytest.mark.parametrize("command", ["inspect", "decode", "convert", "import"])
def test_hostile_paths(tmp_path: Path, kind: str, command: str) -> None:
    if kind == "loop":
        path = tmp_path / "loop"
        path.symlink_to(path)
    elif kind == "long":
        path = tmp_path / ("x" * 300)
    else:
        (tmp_path / "file").write_bytes(b"x")
        path = tmp_path / "file" / "x"
    argv = {"inspect": ["inspect", path], "decode": ["decode", path], "convert": ["convert", path],
            "import": ["import", "spqr_quant", path, "-o", tmp_path / "o.spqr"]}[command]
    assert_one_error(run_spqr(*argv), 2)


# ---- the converter's safetensors reader: safetensors' own rules ---------------------------------

F4 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
BAD_SAFETENSORS = {
    "float dim": ({"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, 4, "not a list of integers"),
    "bool dim": ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, 4, "not a list of integers"),
    "duplicate key": (b'{"w": ' + json.dumps(F4).encode() + b', "w": ' + json.dumps(F4).encode() + b"}", 4,
                      "duplicate key 'w'"),
    "aliased": ({"w": F4, "v": F4}, 4, "overlaps"),
    "overlap": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "overlaps"),
    "gap": ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "gap"),
    "trailing": ({"w": F4}, 8, "belong to none"),
    "dim 2^64": ({"w": {"dtype": "F32", "shape": [2**64, 0], "data_offsets": [0, 0]}}, 0, "too large"),
    "overflowing product": ({"w": {"dtype": "F32", "shape": [2**32, 2**32, 2**2], "data_offsets": [0, 4]}}, 4,
                            "do not match"),
    "deep nesting": (b'{"w": ' + b"[" * 100000 + b"]" * 100000 + b"}", 0, "nested too deeply"),
    "fp8": ({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, 4, "F8_E4M3"),
    "unknown dtype": ({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}}, 4, "'Q4'"),
    "metadata not str": ({"__metadata__": {"a": 1}, "w": F4}, 4, "__metadata__"),
    "header too large": (None, 0, "out of range"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_convert_applies_safetensors_rules(tmp_path: Path, case: str) -> None:
    header, data_len, match = BAD_SAFETENSORS[case]
    folder = write_checkpoint(tmp_path / "m")
    shard = folder / "model.safetensors"
    if header is None:
        shard.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    else:
        raw_safetensors(shard, header, b"\0" * data_len)
    before = snapshot(folder)
    assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "x.spqr", "-q"), 1, match)
    assert snapshot(folder) == before and not (tmp_path / "x.spqr").exists()


@pytest.mark.parametrize("config, match", [("[" * 100000 + "]" * 100000, "nested too deeply"),
                                           ('{"a": ' + "[" * 40 + "]" * 40 + "}", "nested"),
                                           ('{"model_type": ["gpt2"]}', "model_type"),
                                           ('{"architectures": "Llama"}', "architectures"),
                                           ("{not json", "not valid JSON")],
                         ids=["deep", "nested", "model_type list", "architectures str", "not json"])
def test_hostile_config_json(tmp_path: Path, config: str, match: str) -> None:
    folder = write_checkpoint(tmp_path / "m", config=config)
    assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "x.spqr", "-q"), 1, match)


def test_calibration_inputs(tmp_path: Path) -> None:

    folder = write_checkpoint(tmp_path / "m")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "x.spqr", "--calibrate", empty), 1, "no text")
    assert_one_error(run_spqr("eval", folder, "--text", empty), 1, "no text")
    text = tmp_path / "t.txt"
    text.write_text("some words\n")
    device = "tpu9" if Path("/dev/nvidia0").exists() else "cuda"  # no GPU here: cuda must be refused
    if importlib.util.find_spec("torch") is not None:
        assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "x.spqr", "--calibrate", text, "--device",
                                  device), 2, f"--device {device}")
    assert not (tmp_path / "x.spqr").exists()
    # neither the text nor the input folder (as the default work dir OUT.calib, removed after success) is an output
    before = snapshot(tmp_path)
    assert_one_error(run_spqr("convert", folder, "-o", text, "--calibrate", text), 2, "refusing to overwrite")
    os.replace(folder, tmp_path / "m.calib")
    assert_one_error(run_spqr("convert", tmp_path / "m.calib", "-o", tmp_path / "m", "--calibrate", text), 2,
                     "holds the input folder")
    assert snapshot(tmp_path) == {tmp_path / "m.calib" / p.relative_to(folder) if p.is_relative_to(folder) else p: v
                                  for p, v in before.items()}


# ---- spqr import: malformed sources ------------------------------------------------------------


def _import_cases(tmp: Path) -> list[tuple[str, list, int, str]]:
    """(case, argv, exit code, expected text) for malformed sources of every importer."""
    from spqrfmt.safetensors_io import write_safetensors

    f32 = np.zeros((4, 4), np.float32)
    cases = []
    plain = write_checkpoint(tmp / "plain")  # an unquantized checkpoint
    cases.append(("spqr_quant unquantized", ["spqr_quant", plain], 1, "no spqr_quant layers"))
    cases.append(("quipsharp unquantized", ["quipsharp", plain], 1, "no QuIP# layers"))
    cases.append(("squeezellm unquantized", ["squeezellm", plain / "model.safetensors"], 1, "no SqueezeLLM layers"))
    noconf = write_checkpoint(tmp / "noconf", config=False)
    cases.append(("spqr_quant no config", ["spqr_quant", noconf], 1, "no config.json"))
    badconf = write_checkpoint(tmp / "badconf", config="{oops")
    cases.append(("spqr_quant bad config", ["spqr_quant", badconf], 1, "not valid JSON"))
    qc = write_checkpoint(tmp / "qc", config='{"quantization_config": [1]}')
    cases.append(("spqr_quant qc list", ["spqr_quant", qc], 1, "quantization_config"))
    half = write_checkpoint(tmp / "half", {"l.dense_weights": ("i64", np.zeros(3, np.int64))})
    cases.append(("spqr_quant no row_offsets", ["spqr_quant", half], 1, "row_offsets"))
    odd = write_checkpoint(tmp / "odd", {"l.dense_weights": ("i64", np.zeros(3, np.int64)),
                                         "l.row_offsets": ("i32", np.zeros(2, np.int32)),
                                         "l.col_vals": ("i32", np.zeros(0, np.int32)),
                                         "l.in_perm": ("i64", np.zeros(8, np.int64))})
    cases.append(("spqr_quant short arrays", ["spqr_quant", odd], 1, "multiples of 16"))
    pickled = tmp / "pickled.pt"
    pickled.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")  # a pickle, not a zip
    cases.append(("squeezellm raw pickle", ["squeezellm", pickled], 1, "UnpicklingError"))
    lut = tmp / "lut.safetensors"
    write_safetensors(lut, {"l.qweight": ("i32", np.zeros((1, 4), np.int32)), "l.lookup_table": ("f32", f32[0])})
    cases.append(("squeezellm 1-D lut", ["squeezellm", lut], 1, "must be 2-D"))
    nosu = write_checkpoint(tmp / "nosu", {"l.Qidxs": ("i16", np.zeros((4, 4), np.int16))})
    cases.append(("quipsharp missing SU", ["quipsharp", nosu], 1, "missing entry 'l.SU'"))
    syntax = tmp / "matmul_had.py"
    syntax.write_text("def get_had12(:\n")
    cases.append(("quipsharp hadamard syntax", ["quipsharp", nosu, "--hadamard", syntax], 1, "SyntaxError"))
    zero = write_checkpoint(tmp / "zero", {"l.Qidxs": ("i16", np.zeros((0, 0), np.int16)),
                                           "l.SU": ("f32", np.zeros(0, np.float32)),
                                           "l.SV": ("f32", np.zeros(0, np.float32))})
    cases.append(("quipsharp empty layer", ["quipsharp", zero], 1, "not representable"))
    return cases


def test_import_malformed_sources(tmp_path: Path) -> None:
    for case, argv, code, match in _import_cases(tmp_path):
        src = Path(argv[1])
        before = snapshot(src)
        out = tmp_path / "out.spqr"
        proc = run_spqr("import", *argv, "-o", out)
        try:
            assert_one_error(proc, code, match)
        except AssertionError as e:
            raise AssertionError(f"{case}: {e}") from None
        assert snapshot(src) == before and not out.exists(), case


def test_import_refuses_output_onto_its_source(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "m")
    before = snapshot(folder)
    assert_one_error(run_spqr("import", "squeezellm", folder / "model.safetensors", "-o", folder / "model.safetensors"),
                     2, "refusing to overwrite")
    assert snapshot(folder) == before


# ---- generate, conformance, inspect, decode ---------------------------------------------------


def _lm_spqr(path: Path, config: dict, tokenizer: bool = False) -> Path:
    meta = {"hf.config": json.dumps(config)}
    if tokenizer:
        meta["hf.files/vocab.txt"] = b"[PAD]\n[UNK]\nhello\n"
    return _small_spqr(path, meta)


def test_generate_refusals(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    bert = _lm_spqr(tmp_path / "bert.spqr", {"model_type": "bert", "architectures": ["BertModel"]}, tokenizer=True)
    llama = _lm_spqr(tmp_path / "llama.spqr", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    assert_one_error(run_spqr("generate", bert, "--prompt", "hi"), 1, "not a causal language model")
    assert_one_error(run_spqr("generate", llama, "--prompt", "hi"), 2, "--tokenizer")
    assert_one_error(run_spqr("generate", llama, "--prompt", "  "), 2, "--prompt")
    # no torch: a stand-in package that fails to import as a missing torch does
    fake = tmp_path / "notorch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    proc = run_spqr("generate", bert, "--prompt", "hi", env={"PYTHONPATH": str(fake.parent)})
    assert_one_error(proc, 2, "needs torch")


def test_conformance_decoder_without_placeholders() -> None:
    assert_one_error(run_spqr("conformance", "--decoder", "x"), 2, "{input}")


def test_inspect_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    f = _small_spqr(tmp_path / "many.spqr", names=tuple(f"t{i}" for i in range(3000)))
    cmd = " ".join(map(str, [*SPQR, "inspect", f])) + " | head -n 1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith(str(f))


def test_inspect_escapes_and_json_is_valid(tmp_path: Path) -> None:
    src = _small_spqr(tmp_path / "s.spqr", {"note\x1b[2J": "evil\x1b]0;title\x07"})
    header, data = split(src.read_bytes())
    header["tensors"][1].update(name="\x1b[31mred", codec="future-codec",
                                params={"blob": b"\x00\xff", "nan": math.nan, "inf": -math.inf})
    f = tmp_path / "f.spqr"
    f.write_bytes(assemble(header, bytes(data)))
    proc = run_spqr("inspect", f)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout and "\\x1b[31mred" in proc.stdout
    proc = run_spqr("inspect", "--json", f)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert info["tensors"][1]["params"] == {"blob": {"base64": "AP8="}, "nan": "NaN", "inf": "-Infinity"}
    assert info["tensors"][1]["name"] == "\x1b[31mred"


def test_decode_with_non_string_transposed_entries(tmp_path: Path) -> None:
    f = _small_spqr(tmp_path / "f.spqr", {"spqrfmt.transposed": ["a", 7, {"x": 1}]})
    assert_one_error(run_spqr("decode", f, "-o", tmp_path / "o.safetensors", "-q"), 1, "spqrfmt.transposed")
    assert run_spqr("decode", f, "-o", tmp_path / "o.safetensors", "--as-stored", "-q").returncode == 0


def test_unexpected_exception_is_one_internal_error_line(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from spqrfmt import cli

    def boom(args: object) -> int:
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "_cmd_inspect", boom)
    assert cli.main(["inspect", "x"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: internal error: KeyError") and len(err.splitlines()) == 1


def test_help_documents_exit_codes() -> None:
    proc = run_spqr("--help")
    assert proc.returncode == 0
    for code in ("0", "1", "2", "3", "130", "141", "143"):
        assert f"\n  {code} " in proc.stdout, code


# ---- SIGTERM during convert ----------------------------------------------------------------------


def test_sigterm_during_convert_leaves_no_temp_files(tmp_path: Path) -> None:
    r = np.random.default_rng(0)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": ("f32", r.standard_normal((128, 128)).astype(np.float32))
               for i in range(300)}
    folder = write_checkpoint(tmp_path / "m", tensors)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = subprocess.Popen([*SPQR, "convert", str(folder), "-o", str(outdir / "m.spqr"), "-q", "--codec",
                             "squeezellm"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(outdir.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # wait for the writer's scratch file: the conversion has started
    assert proc.poll() is None, "the conversion ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert [ln for ln in err.splitlines() if "error:" in ln] == ["error: terminated; no partial output was left behind"]
    assert list(outdir.iterdir()) == []


def test_interrupt_right_after_the_scratch_file_is_created_leaves_nothing(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal can land between a temporary file's creation and the code meant to remove it (and blocking
    signals does not stop a worker thread from taking one): the CLI still removes every file it created."""
    from spqrfmt import scratch
    from spqrfmt.cli import main

    folder = write_checkpoint(tmp_path / "m")
    outdir = tmp_path / "out"
    outdir.mkdir()
    real_open = os.open

    def open_then_interrupt(path: str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        if str(path).endswith(".data"):
            os.close(fd)
            raise KeyboardInterrupt  # as if Ctrl-C arrived just after the file appeared
        return fd

    monkeypatch.setattr(scratch.os, "open", open_then_interrupt)
    assert main(["convert", str(folder), "-o", str(outdir / "m.spqr"), "-q"]) == 130
    assert list(outdir.iterdir()) == []
    assert scratch.live_scratch_files() == frozenset()


# ---- load_model ----------------------------------------------------------------------------------


def _llama_spqr(path: Path, drop: str | None = None) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    state = transformers.LlamaForCausalLM(cfg).state_dict()
    with spqrfmt.Writer(path, metadata={"hf.config": cfg.to_json_string()}) as w:
        for n, t in state.items():
            if n != drop:
                w.add_raw(n, t.float().numpy())
    return path


def test_load_model_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spqrfmt.model import load_model

    path = _llama_spqr(tmp_path / "ok.spqr")
    model = load_model(path)
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float32"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="use_kernels=True needs a CUDA device"):
        load_model(path, use_kernels=True)
    incomplete = _llama_spqr(tmp_path / "inc.spqr", drop="model.layers.0.mlp.up_proj.weight")
    with pytest.raises(ValueError, match="lacks 1 model parameters"):
        load_model(incomplete)
    huge = _lm_spqr(tmp_path / "huge.spqr", {"model_type": "bert", "architectures": ["BertLMHeadModel"],
                                             "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1,
                                             "num_attention_heads": 2, "intermediate_size": 8, "is_decoder": True,
                                             "max_position_embeddings": 2**34})
    with pytest.raises(ValueError, match="GiB of buffers"):
        load_model(huge)
