"""A short, bounded fuzz run: every mutated vector decodes or fails cleanly, benign edits decode exactly."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from spqrfmt.conformance import fuzz, refreader

MANIFEST = json.loads((fuzz.VECTORS_DIR / "manifest.json").read_text())


def _edit_version(vector: str, codec: str, version: int, params: dict[str, Any] | None = None) -> bytes:
    """The vector with every ``codec`` tensor moved to ``version`` (and ``params`` merged), header CRC fixed."""
    blob = (fuzz.VECTORS_DIR / vector).read_bytes()
    h = fuzz._copy(fuzz._layout(blob)[3])
    for t in h["tensors"]:
        if t["codec"] == codec:
            t["codec_version"] = version
            t["params"].update(params or {})
    return fuzz._relayout(blob, h)


@pytest.mark.parametrize("vector,codec,version,params,expect", [
    ("valid/quip_bits2.spqr", "quip", 2, None, "!BAD_PARAMS"),                      # v2 needs a codebook
    ("valid/quip_bits2.spqr", "quip", 2, {"codebook": "grid"}, "same"),             # v2 grid + i8 signs == v1
    ("valid/quip_bits2.spqr", "quip", 2, {"codebook": "e8p12"}, "!BAD_PARAMS"),     # bits present
    ("valid/spqr_bits3.spqr", "spqr", 2, None, "!BAD_PARAMS"),                      # v2 needs arith, outlier_op
    ("valid/spqr_bits3.spqr", "spqr", 2, {"arith": "f32", "outlier_op": "replace"}, "same"),
    ("valid/spqr_bits3.spqr", "spqr", 2, {"arith": "f16", "outlier_op": "add"}, "differs"),
    ("valid/quip_v2_worked_example.spqr", "quip", 1, None, "!BAD_PARAMS"),          # v1 needs bits
    ("valid/spqr_v2_f16_add.spqr", "spqr", 1, None, "differs"),                     # v1 ignores arith / outlier_op
    ("valid/quip_v2_worked_example.spqr", "quip", 3, None, "!UNSUPPORTED_CODEC_VERSION"),
])
def test_version_edits_agree(vector: str, codec: str, version: int, params: dict | None, expect: str) -> None:
    """The fuzzer's codec_version / version_params mutations: library and refreader give the same verdict."""
    blob = _edit_version(vector, codec, version, params)
    res = fuzz.run_case(blob, with_ref=True)
    lib, ref = res["library"], res["refreader"]
    assert fuzz._compare(lib, ref) is None, (lib, ref)
    golden = fuzz._expected(MANIFEST, vector)
    edited = [t["name"] for t in fuzz._layout(blob)[3]["tensors"] if t["codec"] == codec]
    assert edited
    for name in edited:
        got = lib["ok"][name]
        if expect == "same":
            assert got == golden[name]
        elif expect == "differs":
            assert not got.startswith("!") and got != golden[name]
        else:
            assert got == expect


def test_version_edit_differential_catches_a_v1_only_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: a refreader without quip v2 disagrees with the library on a v1 -> v2 edit."""
    monkeypatch.setattr(refreader.CODECS["quip"], "versions", frozenset({1}))
    res = fuzz.run_case(_edit_version("valid/quip_bits2.spqr", "quip", 2), with_ref=True)
    assert fuzz._compare(res["library"], res["refreader"]) == "disagree-tensor-code"


def test_mutations_are_deterministic_and_varied() -> None:
    blob = (fuzz.VECTORS_DIR / "valid/spqr_everything.spqr").read_bytes()
    a = [fuzz.mutate(random.Random(3), "v", blob) for _ in range(1)]
    b = [fuzz.mutate(random.Random(3), "v", blob) for _ in range(1)]
    assert [c.data for c in a] == [c.data for c in b]
    rng = random.Random(0)
    cases = [fuzz.mutate(rng, "v", blob) for _ in range(300)]
    labels = {c.label.split(":")[0] for c in cases}
    assert {"bitflip", "truncate", "header_value", "geometry", "restamp", "benign_rowpad", "codec_version",
            "version_params"} <= labels
    assert all(c.data != blob for c in cases if c.label.split(":")[0] in ("bitflip", "truncate", "restamp"))


def test_benign_mutation_keeps_decoded_output() -> None:
    """Padding-only edits must give the golden hashes (checked in-process, no pool)."""
    import json

    manifest = json.loads((fuzz.VECTORS_DIR / "manifest.json").read_text())
    rng = random.Random(1)
    checked = 0
    for e in manifest["vectors"]:
        if e["kind"] != "valid" or "split" in e:  # a split set is several files (fuzz.seed_files)
            continue
        blob = (fuzz.VECTORS_DIR / e["file"]).read_bytes()
        for _ in range(10):
            case = fuzz.mutate(rng, e["file"], blob)
            if not case.benign:
                continue
            res = fuzz.run_case(case.data, with_ref=True)
            assert res["library"].get("ok") == fuzz._expected(manifest, e["file"]), (e["file"], case.label)
            assert res["refreader"].get("ok") == fuzz._expected(manifest, e["file"]), (e["file"], case.label)
            checked += 1
    assert checked > 50


def test_bounded_fuzz_run_finds_nothing() -> None:
    stats = fuzz.fuzz(seconds=25, jobs=2, seed=12345, mem_mb=2048, timeout=20)
    assert stats.cases > 200
    assert stats.rejected > 0 and stats.decoded > 0 and stats.benign_checked > 0
    assert not stats.findings, stats.findings[:3]


def test_cli_on_mutated_files_ends_cleanly() -> None:
    """`spqr verify --decode` and `spqr inspect --json` on 20 mutated files: exit 0/1/2, no traceback."""
    cases = fuzz.mutated_cases(20, seed=7)
    assert len({c.label.split(":")[0] for c in cases}) >= 6
    assert fuzz.fuzz_cli(cases, jobs=2) == []


@pytest.mark.parametrize("script,what", [
    ("raise ValueError('boom')", "traceback"),                       # exit 1, but a traceback
    ("import sys; sys.exit(3)", "exit status 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGBUS)", "exit status -7"),
    ("import sys; open(sys.argv[-1], 'ab').write(b'x')", "changed its input"),
])
def test_cli_check_catches_what_it_must(script: str, what: str) -> None:
    import sys

    cases = fuzz.mutated_cases(1, seed=1)
    found = fuzz.fuzz_cli(cases, cmd=[sys.executable, "-c", script])
    assert found and all(f["index"] == 0 for f in found)
    assert any(what in f["detail"] for f in found), found
