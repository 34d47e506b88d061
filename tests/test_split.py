"""Split sets (SPEC §12): split -> merge is byte-identical, the set reads as the file, and every reject code."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import spqrfmt
from spqrfmt.errors import ErrorCode, SpqrFormatError
from spqrfmt.split import SplitFile, plan_parts, split_file

from conftest import assert_one_error, run_spqr, write_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted file (quantized and raw tensors, real metadata), read-only for the tests."""
    d = tmp_path_factory.mktemp("split")
    out = d / "tiny.spqr"
    proc = run_spqr("convert", write_checkpoint(d / "tiny"), "-o", out, "-q", "--no-check")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def split_set(model: Path, tmp_path: Path) -> Path:
    """``model`` split by the CLI into at least 3 parts; the index path."""
    proc = run_spqr("split", model, "--split-size", "1KB", "-o", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr
    index = tmp_path / "m.spqr.index.json"
    assert index.is_file()
    return index


def _parts(index: Path) -> list[dict]:
    return json.loads(index.read_text())["parts"]


def test_split_merge_round_trip_is_byte_identical(model: Path, split_set: Path, tmp_path: Path) -> None:
    parts = _parts(split_set)
    n = len(parts)
    assert n >= 3
    assert [p["file"] for p in parts] == [f"m-{i:05d}-of-{n:05d}.spqr" for i in range(1, n + 1)]
    for p in parts:  # each part is a valid file alone, with the whole metadata
        data = (tmp_path / p["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == p["sha256"] and len(data) == p["bytes"]
        spqrfmt.validate(tmp_path / p["file"])
        with spqrfmt.SpqrFile(tmp_path / p["file"]) as f, spqrfmt.SpqrFile(model) as g:
            assert f.metadata == g.metadata
    for src in (split_set, tmp_path / parts[0]["file"]):  # the index or the first part
        out = tmp_path / "merged.spqr"
        proc = run_spqr("merge", src, "-o", out)
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == model.read_bytes()
        out.unlink()


def test_open_index_or_first_part_reads_the_set_as_the_file(model: Path, split_set: Path) -> None:
    first = split_set.parent / _parts(split_set)[0]["file"]
    with spqrfmt.open(model) as whole:
        for src in (split_set, first):
            with spqrfmt.open(src) as s:
                assert isinstance(s, SplitFile)
                assert list(s) == list(whole) and len(s) == len(whole) and s.metadata == whole.metadata
                assert all(err is None for _, err in s.check_all())
                for name in whole:
                    np.testing.assert_array_equal(s[name].decode(), whole[name].decode())
    second = split_set.parent / _parts(split_set)[1]["file"]
    with spqrfmt.open(second) as alone:  # any other part opens as the single file it is
        assert isinstance(alone, spqrfmt.SpqrFile) and 0 < len(alone) < len(whole)


def test_plan_parts_keeps_order_and_gives_a_large_tensor_its_own_part(model: Path) -> None:
    with spqrfmt.open(model) as f:
        groups = plan_parts(f, 1)
        assert [n for g in groups for n in g] == list(f) and all(len(g) == 1 for g in groups)
        assert plan_parts(f, 1 << 40) == [list(f)]


def _edit_index(index: Path, edit) -> None:
    doc = json.loads(index.read_text())
    edit(doc)
    index.write_text(json.dumps(doc))


def _duplicate(index: Path) -> None:
    """Part 2 rewritten to also hold part 1's first tensor (index digests updated: only the duplicate is wrong)."""
    parts = _parts(index)
    d = index.parent
    with spqrfmt.SpqrFile(d / parts[0]["file"]) as a, spqrfmt.SpqrFile(d / parts[1]["file"]) as b:
        names = [next(iter(a)), *b]
        with spqrfmt.Writer(d / "dup.spqr", metadata=b.metadata) as w:
            for name in names:
                t = (a if name in a else b)[name]
                w.add(name, shape=t.shape, dtype=t.dtype, codec=t.codec, params=t.params,
                      sections=dict(zip(t.record.sections, [(s.dtype, arr) for s, arr in
                                        zip(t.record.sections.values(), t.arrays().values(), strict=True)],
                                        strict=True)), codec_version=t.codec_version)
    shutil.move(d / "dup.spqr", d / parts[1]["file"])
    data = (d / parts[1]["file"]).read_bytes()
    _edit_index(index, lambda doc: doc["parts"][1].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)))


def _missing(index: Path) -> None:
    (index.parent / _parts(index)[1]["file"]).unlink()


def _digest(index: Path) -> None:
    _edit_index(index, lambda doc: doc["parts"][2].update(sha256="0" * 64))


def _traversal(index: Path) -> None:
    (index.parent / "sub").mkdir()
    shutil.copy(index.parent / _parts(index)[0]["file"], index.parent / "sub" / "p.spqr")
    _edit_index(index, lambda doc: doc["parts"][0].update(file="../" + index.parent.name + "/sub/p.spqr"))


@pytest.mark.parametrize(("damage", "code", "match"), [
    (_missing, ErrorCode.BAD_SPLIT, "is missing"),
    (_duplicate, ErrorCode.DUPLICATE_NAME, "two parts"),
    (_digest, ErrorCode.BAD_SPLIT, "SHA-256"),
    (_traversal, ErrorCode.BAD_SPLIT, "plain file name"),
])
def test_reject_cases(split_set: Path, tmp_path: Path, damage, code: ErrorCode, match: str) -> None:
    damage(split_set)
    with pytest.raises(SpqrFormatError) as e:
        spqrfmt.open(split_set)
    assert e.value.code == code and match in str(e.value)
    for cmd in (("verify", split_set), ("inspect", split_set), ("merge", split_set, "-o", tmp_path / "x.spqr")):
        proc = run_spqr(*cmd)
        if cmd[0] == "verify":  # verify reports FAIL per file on stdout, exit 1
            assert proc.returncode == 1 and code.value in proc.stdout and "Traceback" not in proc.stderr
        else:
            assert_one_error(proc, 1, code.value)
    assert not (tmp_path / "x.spqr").exists()


def test_cli_verify_inspect_accept_an_index(split_set: Path, model: Path) -> None:
    proc = run_spqr("verify", split_set)
    assert proc.returncode == 0 and ": OK" in proc.stdout, proc.stderr
    proc = run_spqr("inspect", split_set, "--json")
    assert proc.returncode == 0, proc.stderr
    with spqrfmt.open(model) as f:
        assert [t["name"] for t in json.loads(proc.stdout)["tensors"]] == list(f)
    for src, out in ((model, split_set.parent / "a.safetensors"), (split_set, split_set.parent / "b.safetensors")):
        proc = run_spqr("decode", src, "-o", out, "-q")
        assert proc.returncode == 0, proc.stderr
    from safetensors.numpy import load_file

    a, b = load_file(split_set.parent / "a.safetensors"), load_file(split_set.parent / "b.safetensors")
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_merge_and_split_refuse_to_overwrite_their_inputs(model: Path, split_set: Path, tmp_path: Path) -> None:
    first = split_set.parent / _parts(split_set)[0]["file"]
    before = first.read_bytes()
    assert_one_error(run_spqr("merge", split_set, "-o", first), 2, "refusing to overwrite")
    assert first.read_bytes() == before
    index_before = split_set.read_bytes()
    assert_one_error(run_spqr("split", first, "--split-size", "1KB", "-o", tmp_path / "m"), 2, "refusing")
    assert split_set.read_bytes() == index_before
    assert_one_error(run_spqr("split", model, "--split-size", "lots", "-o", tmp_path / "q"), 2, "--split-size")


def test_split_of_a_set_resplits(split_set: Path, model: Path, tmp_path: Path) -> None:
    with spqrfmt.open(split_set) as s:
        index = split_file(s, 1 << 40, tmp_path / "one")
    with spqrfmt.open(index) as s1, spqrfmt.open(model) as f:
        assert list(s1) == list(f)


def test_convert_split_size_writes_the_set_of_the_plain_file(model: Path, tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "tiny")
    proc = run_spqr("convert", folder, "-o", tmp_path / "big.spqr", "-q", "--split-size", "1KB")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert names == ["big-00001-of-00003.spqr", "big-00002-of-00003.spqr", "big-00003-of-00003.spqr",
                     "big.spqr.index.json"]  # no whole file or temporary file left
    proc = run_spqr("merge", tmp_path / "big.spqr.index.json", "-o", tmp_path / "merged.spqr")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "merged.spqr").read_bytes() == model.read_bytes()
    assert_one_error(run_spqr("convert", folder, "-o", tmp_path / "x.spqr", "--split-size", "0"), 2, "--split-size")


def test_index_that_is_not_a_regular_file_or_not_an_index(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "f.spqr.index.json"
    os.mkfifo(fifo)
    with pytest.raises(SpqrFormatError, match="not a regular file") as e:  # never blocks on the FIFO
        spqrfmt.open(fifo)
    assert e.value.code == ErrorCode.BAD_SPLIT
    bad = tmp_path / "g.spqr.index.json"
    for doc in ('{"format": "spqrfmt-split", "version": 2, "parts": [], "tensors": {}}', "[1", '{"format": "x"}'):
        bad.write_text(doc)
        with pytest.raises(SpqrFormatError) as e:
            spqrfmt.open(bad)
        assert e.value.code == ErrorCode.BAD_SPLIT
