"""Split-set vectors (SPEC §12): the library and the refreader pass them and agree, regeneration is
byte-identical, and a foreign decoder given only the manifest's listed files runs them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from spqrfmt.conformance import generate, runner
from spqrfmt.conformance.generators import split

CONF = Path(runner.__file__).resolve().parent
VECTORS = CONF / "vectors"
SPLIT = [e for e in json.loads((VECTORS / "manifest.json").read_text())["vectors"] if "split" in e]


def _code(v: runner.Verdict) -> str | None:
    return v.file_error or next((d.error for d in (v.tensors or {}).values() if d.error), None)


def test_split_vectors_cover_every_reject_row() -> None:
    invalid = {e["file"].split("/")[2]: e["error"] for e in SPLIT if e["kind"] == "invalid"}
    assert {"BAD_SPLIT", "DUPLICATE_NAME", "BAD_MAGIC", "HEADER_CHECKSUM"} <= set(invalid.values())
    for name in ("index_missing", "index_not_json", "index_wrong_format", "index_unknown_version",
                 "part_file_separator", "part_file_dotdot", "part_listed_twice", "part_index_out_of_range",
                 "part_missing", "part_size_mismatch", "part_sha256_mismatch", "tensor_in_two_parts",
                 "tensor_elsewhere", "tensor_not_in_index", "tensor_in_no_part", "part_bad_magic"):
        assert name in invalid, name
    valid = [e for e in SPLIT if e["kind"] == "valid"]
    assert {len([f for f in e["split"]["files"] if f.endswith(".spqr")]) for e in valid} == {1, 2, 3}
    assert any(not e["file"].endswith(split.SUFFIX) for e in valid)  # a set opened by its first part


def test_library_and_refreader_pass_and_agree_on_split_vectors() -> None:
    rows = runner.run_all(VECTORS, {"library": runner.library_backend, "refreader": runner.refreader_backend},
                          only="split/")
    assert len(rows) == 2 * len(SPLIT) and len(SPLIT) >= 39
    assert [f"{r.backend} {r.file}: {r.detail}" for r in rows if not r.passed] == []
    for e in SPLIT:
        lib, ref = (b(VECTORS / e["file"], e) for b in (runner.library_backend, runner.refreader_backend))
        assert _code(lib) == _code(ref), e["file"]  # §12's order leaves no choice


def test_split_regeneration_is_byte_identical(tmp_path: Path) -> None:
    fresh = [generate._split_entry(tmp_path, sv) for sv in split.valid() + split.invalid()]
    assert fresh == SPLIT
    for e in SPLIT:
        for f in e["split"]["files"]:
            rel = f"{e['split']['dir']}/{f}"
            assert (tmp_path / rel).read_bytes() == (VECTORS / rel).read_bytes(), rel
        on_disk = sorted(p.relative_to(VECTORS / e["split"]["dir"]).as_posix()
                         for p in (VECTORS / e["split"]["dir"]).rglob("*") if p.is_file())
        assert on_disk == e["split"]["files"], e["split"]["dir"]


def test_foreign_decoder_runs_split_sets_from_the_listed_files(tmp_path: Path) -> None:
    """Copy only what the manifest lists (as a foreign suite would), then drive the CLI contract (the valid
    sets and a few invalid ones: subprocesses are slow, the in-process tests above run them all)."""
    some = ("index_missing", "index_not_regular", "part_not_regular", "tensor_in_two_parts_index_later",
            "order_part_defect_before_placement")
    chosen = [e for e in SPLIT if e["kind"] == "valid" or e["split"]["dir"].split("/")[-1] in some]
    for e in chosen:
        src, dst = VECTORS / e["split"]["dir"], tmp_path / e["split"]["dir"]
        for f in e["split"]["files"]:
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / f, dst / f)
        if "expected" in e:
            shutil.copyfile(VECTORS / e["expected"], tmp_path / e["expected"])
    (tmp_path / "manifest.json").write_text(json.dumps({"vectors": chosen}))
    decoder = f"{sys.executable} {CONF / 'refdecode_cli.py'} {{input}} {{output}}"
    rows = runner.run_all(tmp_path, {"foreign": runner.foreign_backend(decoder, timeout=60)}, jobs=4)
    assert len(rows) == len(chosen) == 10
    assert [f"{r.file}: {r.detail}" for r in rows if not r.passed] == []
    assert runner.run_all(tmp_path, {"foreign": runner.foreign_backend(decoder)}, split=False) == []
