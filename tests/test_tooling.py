"""gguf-tools-class tooling: inspect --json/--markdown/--filter, hash, meta, convert --metadata/--raw-dtype."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import spqrfmt
from spqrfmt.cli import main
from spqrfmt.encoder.spqr import quantize_spqr
from spqrfmt.format import crc32

from conftest import run_spqr, split, write_checkpoint


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """Two quantized matrices, a raw bias, a text and a binary metadata value."""
    rng = np.random.default_rng(5)
    path = tmp_path / "small.spqr"
    with spqrfmt.Writer(path, metadata={"note": "demo", "blob": b"\x00\xff|x", "nested": {"a": [1, 2.5]}}) as w:
        for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"):
            enc = quantize_spqr(rng.standard_normal((32, 64)).astype(np.float32), bits=3, group_size=16,
                                scale_bits=3, zero_bits=3, stat_group_size=16, outlier_fraction=0.02)
            w.add_encoded(name, enc)
        w.add_raw("model.layers.0.mlp.up_proj.bias", rng.standard_normal(32).astype(np.float32))
    return path


def _fails(capsys: pytest.CaptureFixture[str], args: list[object], code: int, match: str) -> None:
    """``spqr ARGS`` in this process: exit ``code`` and exactly one ``error:`` line containing ``match``."""
    capsys.readouterr()
    try:
        got = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own usage errors
        got = e.code
    assert got == code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in err, err


def _sections(path: Path) -> dict[tuple[str, str], tuple[bytes, int]]:
    """{(tensor, role): (stored bytes, header CRC)} straight from the file's bytes."""
    header, data = split(path.read_bytes())
    return {(t["name"], r): (bytes(data[s["offset"]:s["offset"] + s["length"]]), s["crc32"])
            for t in header["tensors"] for r, s in t["sections"].items()}


def test_inspect_json_crcs_totals_base64(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(small), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metadata"]["blob"] == {"base64": base64.b64encode(b"\x00\xff|x").decode()}
    assert out["metadata"]["nested"] == {"a": [1, 2.5]} and out["metadata"]["note"] == "demo"
    assert out["codecs"]["spqr"]["tensors"] == 2 and out["codecs"]["spqr"]["params"] == 2 * 32 * 64
    assert out["codecs"]["raw"] == {"tensors": 1, "params": 32, "bytes": 128, "bits_per_param": 32.0}
    sections = _sections(small)
    for t in out["tensors"]:
        for role, s in t["sections"].items():
            raw, crc = sections[(t["name"], role)]
            assert int(s["crc32"], 16) == crc == crc32(raw) and s["length"] == len(raw)
    assert main(["inspect", str(small), "--json", "--no-tensors", "--filter", r"q_proj"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "tensors" not in out and out["tensor_count"] == 1 and list(out["codecs"]) == ["spqr"]


def test_inspect_markdown_and_filter(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(small), "--markdown", "--filter", "up_proj"]) == 0
    md = capsys.readouterr().out
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "up\\_proj" in ln]
    assert len(rows) == 2 and "q\\_proj" not in md
    assert all(ln.count("|") - ln.count("\\|") == 8 for ln in rows)  # 7 cells: no cell broken by a value
    assert "| blob | \\<4 bytes\\> |" in md and "## Codecs" in md
    assert main(["inspect", str(small), "--no-tensors"]) == 0
    text = capsys.readouterr().out
    assert "codecs:" in text and "q_proj" not in text
    _fails(capsys, ["inspect", small, "--json", "--markdown"], 2, "one of them")
    _fails(capsys, ["inspect", small, "--filter", "("], 2, "regular expression")


def test_hash_covers_section_bytes_and_file(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash", str(small), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["file"]["sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()
    sections = _sections(small)
    for name, digest in out["tensors"].items():
        roles = sorted(r for (n, r) in sections if n == name)
        want = hashlib.sha256(b"".join(sections[(name, r)][0] for r in roles)).hexdigest()
        assert digest == want
    assert len(out["tensors"]) == 3
    assert main(["hash", str(small)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1].endswith("(whole file)")


def test_meta_set_keeps_every_section_byte(small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _sections(small)
    assert main(["hash", str(small), "--json"]) == 0
    digests = json.loads(capsys.readouterr().out)["tensors"]
    os.chmod(small, 0o640)
    assert main(["meta", "set", str(small), "license", "apache-2.0"]) == 0
    assert main(["meta", "set", str(small), "eval", '{"ppl": [37.9, 38.1]}', "--json"]) == 0
    tpl = tmp_path / "chat_template.jinja"
    tpl.write_bytes(b"{{ messages }}\n")
    assert main(["meta", "set", str(small), "hf.files/chat_template.jinja", str(tpl), "--from-file"]) == 0
    assert main(["meta", "rm", str(small), "note"]) == 0
    after = _sections(small)
    assert after == before  # bytes and CRC of every section
    assert os.stat(small).st_mode & 0o777 == 0o640
    spqrfmt.validate(small)
    with spqrfmt.open(small) as f:
        assert f.metadata["license"] == "apache-2.0" and f.metadata["eval"] == {"ppl": [37.9, 38.1]}
        assert f.metadata["hf.files/chat_template.jinja"] == b"{{ messages }}\n" and "note" not in f.metadata
        assert f.metadata["blob"] == b"\x00\xff|x"
    capsys.readouterr()
    assert main(["hash", str(small), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"] == digests
    proc = run_spqr("meta", "get", small, "hf.files/chat_template.jinja")
    assert proc.returncode == 0 and proc.stdout == "{{ messages }}\n"
    assert main(["meta", "get", str(small), "eval"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ppl": [37.9, 38.1]}


def test_meta_output_reserved_keys_and_limits(small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = small.read_bytes()
    _fails(capsys, ["meta", "set", small, "spqrfmt.writer", "me"], 2, "reserved")
    _fails(capsys, ["meta", "rm", small, "spqrfmt.writer"], 2, "reserved")
    _fails(capsys, ["meta", "rm", small, "absent"], 1, "no metadata key")
    _fails(capsys, ["meta", "get", small, "absent"], 1, "no metadata key")
    _fails(capsys, ["meta", "set", small, "k"], 2, "needs a VALUE")
    _fails(capsys, ["meta", "set", small, "k", "{", "--json"], 2, "not JSON")
    deep = "[" * 40 + "]" * 40
    _fails(capsys, ["meta", "set", small, "k", deep, "--json"], 2, "unchanged")
    _fails(capsys, ["meta", "set", small, "k", "v", "-o", small], 2, "overwrite an input")
    assert small.read_bytes() == original
    out = tmp_path / "edited.spqr"
    assert main(["meta", "set", str(small), "spqrfmt.writer", "me", "--force", "-o", str(out)]) == 0
    assert small.read_bytes() == original and _sections(out) == _sections(small)
    with spqrfmt.open(out) as f:
        assert f.metadata["spqrfmt.writer"] == "me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_meta_set_refuses_a_corrupt_file(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = bytearray(small.read_bytes())
    blob[-1] ^= 0xFF  # the raw bias: a section CRC no longer matches
    small.write_bytes(bytes(blob))
    _fails(capsys, ["meta", "set", small, "k", "v"], 1, "SECTION_CHECKSUM")
    assert small.read_bytes() == bytes(blob)


def test_header_limit_refused_by_the_library(small: Path) -> None:
    from spqrfmt.rewrite import MetadataValueError, rewrite_metadata

    with pytest.raises(MetadataValueError, match="HEADER_TOO_LARGE|at most"):
        rewrite_metadata(small, {"big": b"\0" * (65 << 20)})
    spqrfmt.validate(small)


def test_convert_metadata_and_raw_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = np.random.default_rng(2)
    src = write_checkpoint(tmp_path / "m", {
        "model.layers.0.mlp.up_proj.weight": ("f32", r.standard_normal((64, 64)).astype(np.float32)),
        "model.embed_tokens.weight": ("f32", r.standard_normal((100, 64)).astype(np.float32)),
        "model.norm.weight": ("f32", np.full(64, 1.5, np.float32)),
        "pos": ("i64", np.arange(4, dtype=np.int64)),
    })
    out = tmp_path / "m.spqr"
    assert main(["convert", str(src), "-o", str(out), "-q", "--raw-dtype", "bf16", "--metadata", "license=mit",
                 "--metadata", "card=a=b"]) == 0
    with spqrfmt.open(out) as f:
        assert f.metadata["license"] == "mit" and f.metadata["card"] == "a=b"
        emb = f["model.embed_tokens.weight"]
        assert emb.codec == "raw" and emb.dtype == "bf16" and f["model.norm.weight"].dtype == "bf16"
        assert f["pos"].dtype == "i64" and f["model.layers.0.mlp.up_proj.weight"].codec == "spqr"
        assert json.loads(f.metadata["spqrfmt.convert"])["raw_dtype"] == "bf16"
        from spqrfmt.dtypes import f32_to_bf16
        from spqrfmt.safetensors_io import SafetensorsFile

        want = f32_to_bf16(SafetensorsFile(src / "model.safetensors")["model.embed_tokens.weight"][1])
        assert np.array_equal(emb.decode(), want)
    _fails(capsys, ["convert", src, "-o", out, "--metadata", "spqrfmt.writer=x"], 2, "reserved")
    _fails(capsys, ["convert", src, "-o", out, "--metadata", "novalue"], 2, "KEY=VALUE")
    big = write_checkpoint(tmp_path / "big", {"model.norm.weight": ("f32", np.full(8, 1e5, np.float32))})
    _fails(capsys, ["convert", big, "-o", tmp_path / "b.spqr", "--raw-dtype", "f16"], 1, "beyond the f16 range")
    assert not (tmp_path / "b.spqr").exists()


def test_meta_get_to_a_terminal_escapes(small: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["meta", "set", str(small), "evil", "a\x1b[31mb\nline2"]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(["meta", "get", str(small), "evil"]) == 0
    assert capsys.readouterr().out == "a\\x1b[31mb\nline2\n"
    _fails(capsys, ["meta", "get", small, "blob"], 2, "binary data")
    monkeypatch.undo()
    assert main(["meta", "get", str(small), "evil"]) == 0
    assert capsys.readouterr().out == "a\x1b[31mb\nline2\n"  # a pipe gets the value as stored
