"""A short, bounded fuzz run: every mutated vector decodes or fails cleanly, benign edits decode exactly."""

from __future__ import annotations

import random

from spqrfmt.conformance import fuzz


def test_mutations_are_deterministic_and_varied() -> None:
    blob = (fuzz.VECTORS_DIR / "valid/spqr_everything.spqr").read_bytes()
    a = [fuzz.mutate(random.Random(3), "v", blob) for _ in range(1)]
    b = [fuzz.mutate(random.Random(3), "v", blob) for _ in range(1)]
    assert [c.data for c in a] == [c.data for c in b]
    rng = random.Random(0)
    cases = [fuzz.mutate(rng, "v", blob) for _ in range(300)]
    labels = {c.label.split(":")[0] for c in cases}
    assert {"bitflip", "truncate", "header_value", "geometry", "restamp", "benign_rowpad"} <= labels
    assert all(c.data != blob for c in cases if c.label.split(":")[0] in ("bitflip", "truncate", "restamp"))


def test_benign_mutation_keeps_decoded_output() -> None:
    """Padding-only edits must give the golden hashes (checked in-process, no pool)."""
    import json

    manifest = json.loads((fuzz.VECTORS_DIR / "manifest.json").read_text())
    rng = random.Random(1)
    checked = 0
    for e in manifest["vectors"]:
        if e["kind"] != "valid":
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
