"""Golden vectors: library, independent refreader and the foreign CLI contract all pass; generation is reproducible."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spqrfmt.conformance import generate, miniwriter, refreader, runner
from spqrfmt.conformance import safetensors_mini as stm
from spqrfmt.conformance.generators import common, quip

CONF = Path(runner.__file__).resolve().parent
VECTORS = CONF / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
REFDECODE = f"{sys.executable} {CONF / 'refdecode_cli.py'} {{input}} {{output}}"


def _failures(rows: list[runner.Row]) -> list[str]:
    return [f"{r.backend} {r.file}: {r.detail}" for r in rows if not r.passed]


def test_library_passes_every_vector() -> None:
    rows = runner.run_all(VECTORS, {"library": runner.library_backend})
    assert len(rows) == len(MANIFEST["vectors"])
    assert not _failures(rows)


def test_refreader_passes_every_vector() -> None:
    rows = runner.run_all(VECTORS, {"refreader": runner.refreader_backend})
    assert len(rows) == len(MANIFEST["vectors"])
    assert not _failures(rows)


def test_library_and_refreader_agree_on_every_vector() -> None:
    """Beyond both matching the manifest: same tensors, same decoded bytes, same bias, same reject code."""
    for e in MANIFEST["vectors"]:
        path = VECTORS / e["file"]
        lib, ref = runner.library_backend(path, e), runner.refreader_backend(path, e)
        assert lib.crash is None and ref.crash is None, (e["file"], lib.crash, ref.crash)
        if e["kind"] == "invalid":
            got = [v.file_error or next((d.error for d in (v.tensors or {}).values() if d.error), None)
                   for v in (lib, ref)]
            assert all(g in e["accept"] for g in got), (e["file"], got)
            if len(e["accept"]) == 1:  # SPEC §10 precedence leaves no choice: both readers name the same code
                assert got[0] == got[1], (e["file"], got)
            continue
        assert lib.file_error is None and ref.file_error is None, e["file"]
        assert lib.tensors is not None and ref.tensors is not None
        assert list(lib.tensors) == list(ref.tensors) == list(e["tensors"]), e["file"]
        for name in e["tensors"]:
            a, b = lib.tensors[name], ref.tensors[name]
            assert (a.error, a.sha256, a.dtype, a.bias_sha256) == (b.error, b.sha256, b.dtype, b.bias_sha256), \
                (e["file"], name)


def test_every_codec_has_valid_and_invalid_vectors() -> None:
    """raw, spqr, squeezellm and quip: decodes, per-codec reject codes, and every transform kind of quip."""
    valid_codecs = {t["codec"] for e in MANIFEST["vectors"] if e["kind"] == "valid" for t in e["tensors"].values()
                    if "sha256" in t}
    assert {"raw", "spqr", "squeezellm", "quip"} <= valid_codecs
    invalid = [e for e in MANIFEST["vectors"] if e["kind"] == "invalid"]
    for codec, codes in (
        ("squeezellm", {"BAD_SHAPE", "BAD_PARAMS", "BAD_SECTION_SET", "BAD_SECTION_LAYOUT", "SECTION_CHECKSUM",
                        "BAD_CSR", "BAD_INDEX"}),
        ("quip", {"BAD_SHAPE", "BAD_PARAMS", "BAD_SECTION_SET", "BAD_SECTION_LAYOUT", "SECTION_CHECKSUM",
                  "BAD_VALUE"}),
    ):
        seen = {e["error"] for e in invalid if Path(e["file"]).name.startswith(codec + "_")}
        assert codes <= seen, (codec, codes - seen)
    quip_params = []
    for e in MANIFEST["vectors"]:
        if e["kind"] != "valid":
            continue
        rf = refreader.open_file(VECTORS / e["file"])
        for r in rf.tensors.values():
            if r.codec == "quip":
                m, n = r.shape
                quip_params += [("n", r.params["log2_hn"], n >> r.params["log2_hn"]),
                                ("m", r.params["log2_hm"], m >> r.params["log2_hm"])]
    for side in ("n", "m"):  # identity, factor only, Hadamard only, both: on each side
        kinds = {(k > 0, a > 1) for s, k, a in quip_params if s == side}
        assert kinds == {(False, False), (False, True), (True, False), (True, True)}, side
    assert ("n", 7) in {(s, k) for s, k, _ in quip_params} and ("m", 8) in {(s, k) for s, k, _ in quip_params}


def test_quip_normalization_constants_match_their_definition() -> None:
    """quip.md §5.2(b): the bit formula equals 2^(-k/2) rounded to binary32 for every allowed k."""
    for k in range(31):
        assert common.f32_bits(float(refreader.quip_c(k))) == common.f32_bits(quip.quip_c_oracle(k)), k


def _spec_hex_rows(text: str) -> list[int]:
    return [int(h, 16) for h in re.findall(r"\b[0-9A-F]{8}\b", text)]


def _decoded_bits(vector: str) -> list[int]:
    rf = refreader.open_file(VECTORS / "valid" / f"{vector}.spqr")
    out = rf.decode("w")
    return out.view(np.uint32).ravel().tolist()


def test_squeezellm_worked_example_matches_spec_text() -> None:
    text = (CONF.parent / "spec" / "codecs" / "squeezellm.md").read_text()
    section = text[text.index("## 8. Worked example"):text.index("## 9.")]
    para = section[section.index("Decoded tensor bits"):]
    expect = _spec_hex_rows(para[:para.index("\n\n")])
    assert len(expect) == 10
    assert _decoded_bits("squeezellm_worked_example") == expect


def test_quip_worked_example_matches_spec_text() -> None:
    text = (CONF.parent / "spec" / "codecs" / "quip.md").read_text()
    section = text[text.index("## 9. Worked example"):text.index("## 10.")]
    signs = section[section.index("step 4 signs"):]
    expect = _spec_hex_rows(signs[:signs.index("```")])
    assert len(expect) == 8
    assert _decoded_bits("quip_worked_example") == expect
    # the intermediate rows of the table are the §5.1 grid and the §5.2 transform of the same rows
    grid = section[section.index("5.1 grid"):section.index("5.2(a,b)")]
    L = quip.quip_worked_example()
    assert [common.f32_bits(x) for row in L.grid() for x in row] == _spec_hex_rows(grid)
    assert common.f32_bits(float(refreader.quip_c(1))) == 0x3F3504F3


def _tensor_entries(codec: str, version: int) -> list[tuple[str, str, dict]]:
    return [(e["file"], name, t) for e in MANIFEST["vectors"] if e["kind"] == "valid"
            for name, t in e["tensors"].items() if t["codec"] == codec and t.get("codec_version") == version]


def test_codec_version_2_coverage() -> None:
    """spqr v2 (spqr.md §8) and quip v2 (quip.md §10): every parameter value, diagonal dtype and reject rule."""
    spqr2 = [(f, n) for f, n, t in _tensor_entries("spqr", 2) if "sha256" in t]
    seen = set()
    for f, name in spqr2:
        r = refreader.open_file(VECTORS / f).tensors[name]
        seen.add((r.params["arith"], r.params["outlier_op"], "perm" in r.sections, r.params["scale_bits"] < 16))
    assert {(a, o, p, q) for a in ("f16", "f32") for o in ("add", "replace") for p in (False, True)
            for q in (False, True) if (a, o) != ("f32", "replace")} <= seen
    quip2 = [(f, n) for f, n, t in _tensor_entries("quip", 2) if "sha256" in t]
    kinds = set()
    for f, name in quip2:
        r = refreader.open_file(VECTORS / f).tensors[name]
        kinds |= {(r.params["codebook"], r.sections["su"].dtype), (r.params["codebook"], r.sections["sv"].dtype)}
        kinds.add((r.params["codebook"], "factors" if {"factor_n", "factor_m"} <= set(r.sections) else "-"))
    assert {(cb, d) for cb in ("grid", "e8p12") for d in ("i8", "f16", "f32")} <= kinds
    assert ("e8p12", "factors") in kinds and ("grid", "factors") in kinds
    assert {t["error"] for _, _, t in _tensor_entries("quip", 3) + _tensor_entries("spqr", 3)} == \
        {"UNSUPPORTED_CODEC_VERSION"}
    invalid = {Path(e["file"]).stem: e["error"] for e in MANIFEST["vectors"] if e["kind"] == "invalid"}
    for key in ("missing", "upper", "int", "bin", "nil"):
        assert invalid[f"spqr_v2_arith_{key}"] == "BAD_PARAMS"
    for key in ("missing", "sub", "array", "bool"):
        assert invalid[f"spqr_v2_outlier_op_{key}"] == "BAD_PARAMS"
    assert {k: v for k, v in invalid.items() if k.startswith("quip_v2_")} == {
        **{f"quip_v2_codebook_{k}": "BAD_PARAMS" for k in ("missing", "upper", "unknown", "empty", "int", "bin",
                                                            "nil", "array")},
        "quip_v2_e8p12_bits_present": "BAD_PARAMS", "quip_v2_e8p12_bits_nil": "BAD_PARAMS",
        "quip_v2_grid_bits_missing": "BAD_PARAMS", "quip_v2_grid_bits_9": "BAD_PARAMS",
        "quip_v2_log2_hn_nondividing": "BAD_PARAMS", "quip_v2_e8p12_n_not_multiple_of_8": "BAD_SHAPE",
        **{f"quip_v2_{k}": "BAD_SECTION_LAYOUT" for k in ("e8p12_codes_u32", "e8p12_codes_i16", "e8p12_codes_shape",
                                                          "e8p12_codes_packed_grid_shape", "grid_codes_u16",
                                                          "su_bf16", "su_u8", "su_f64", "sv_f64", "sv_i16",
                                                          "su_len")},
        "quip_v2_missing_factor_n": "BAD_SECTION_SET", "quip_v2_section_checksum": "SECTION_CHECKSUM",
        "quip_v2_value_sv_zero": "BAD_VALUE", "quip_v2_value_su_i8_zero": "BAD_VALUE",
        # two defects, quip.md §10.6 order; MAX_FACTOR (quip.md §2)
        "quip_v2_two_defects_bits_key_and_n_12": "BAD_PARAMS", "quip_v2_two_defects_n_12_and_log2_hn_31": "BAD_SHAPE",
        "quip_v2_factor_n_over_max": "BAD_PARAMS",
        **{f"quip_v2_{tag}_{k}": err for tag, other in (("rvq4", "u8"), ("rvq3", "u16")) for k, err in (
            *((f"resid_scale_{w}", "BAD_PARAMS") for w in ("missing", "int", "str", "nil", "nan", "inf", "zero",
                                                             "negative", "not_f32", "below_range", "above_range",
                                                             "bool")),
            ("bits_present", "BAD_PARAMS"), ("codes2_missing", "BAD_SECTION_SET"),
            (f"codes2_{other}", "BAD_SECTION_LAYOUT"), ("codes2_shape", "BAD_SECTION_LAYOUT"),
            ("section_checksum", "SECTION_CHECKSUM"))},
        "quip_v2_e8p12_codes2_present": "BAD_SECTION_SET", "quip_v2_rvq3_n_not_multiple_of_8": "BAD_SHAPE"}


def test_quip_rvq_coverage_and_worked_example() -> None:
    """quip.md §10.11: both residual codebooks with every diagonal dtype and factors; the example's X[0, 0] bits."""
    kinds = set()
    for f, name, t in _tensor_entries("quip", 2):
        if "sha256" not in t:
            continue
        r = refreader.open_file(VECTORS / f).tensors[name]
        cb = r.params["codebook"]
        kinds |= {(cb, r.sections["su"].dtype), (cb, r.sections["sv"].dtype)}
        kinds.add((cb, "factors" if {"factor_n", "factor_m"} <= set(r.sections) else "-"))
    assert {(cb, d) for cb in ("e8p12_rvq4", "e8p12_rvq3") for d in ("i8", "f16", "f32", "factors")} <= kinds
    text = (CONF.parent / "spec" / "codecs" / "quip.md").read_text()
    section = text[text.index("### 10.11"):text.index("## 11.")]
    example = section[section.index("**Worked example.**"):section.index("**Importing QuIP#**")]
    assert re.findall(r"X\[0, 0\] = ([0-9A-F]{8})", example) == ["BEC1DAE6", "BE7D7D7E"]
    from spqrfmt.conformance.generators import quip_rvq

    for (cb, L), want in zip(quip_rvq.worked_examples(), (0xBEC1DAE6, 0xBE7D7D7E), strict=True):
        rf = refreader.open_file(VECTORS / "valid" / f"quip_v2_{cb.split('_')[1]}_worked_example.spqr")
        assert rf.tensors["w"].params["codebook"] == cb
        assert int(np.float32(L.values()[0, 0]).view(np.uint32)) == want   # the oracle's step 1 = the spec text
        assert np.array_equal(rf.decode("w"), L.oracle())                   # refreader = oracle, all 8 values


def _hashes(vector: str) -> dict[str, str]:
    e = next(e for e in MANIFEST["vectors"] if e["file"] == f"valid/{vector}.spqr")
    return {name: t["sha256"] for name, t in e["tensors"].items()}


def test_version_2_defaults_decode_like_version_1() -> None:
    """spqr v2 f32/replace and quip v2 grid with i8 signs give the v1 bits (same sections, checked by hash)."""
    for vector, pairs in (("spqr_v2_f32_replace", ("stats16", "stats_q")),
                          ("quip_v2_grid_i8_equals_v1", ("factors", "hadamard"))):
        h = _hashes(vector)
        assert len(h) == 2 * len(pairs)
        for p in pairs:
            assert h[f"{p}.v1"] == h[f"{p}.v2"], (vector, p)
    h = _hashes("spqr_v2_worked_example")
    assert len(set(h.values())) == 4  # the four (arith, outlier_op) pairs all decode differently here


def test_spqr_v2_worked_example_matches_spec_text() -> None:
    text = (CONF.parent / "spec" / "codecs" / "spqr.md").read_text()
    section = text[text.index("### 8.5 Worked example"):]
    step2 = section[section.index("Step 2 ("):section.index("Step 3 at")]
    rows = [re.findall(r"0x([0-9A-F]{8})", ln) for ln in step2.splitlines() if ln.startswith("| ") and "0x" in ln]
    assert len(rows) == 4 and all(len(r) == 2 for r in rows)
    dense = {"f32": [int(r[0], 16) for r in rows], "f16": [int(r[1], 16) for r in rows]}
    step3 = section[section.index("Step 3 at"):]
    out2 = {}
    for line in step3.splitlines():
        hexes = re.findall(r"0x([0-9A-F]{8})", line)
        if not (line.startswith("| ") and hexes):
            continue
        arith = re.match(r'\| (any|`"(f16|f32)"`),', line)
        assert arith is not None, line
        out2["replace" if arith.group(1) == "any" else arith.group(2)] = int(hexes[-1], 16)
    assert set(out2) == {"replace", "f32", "f16"}
    rf = refreader.open_file(VECTORS / "valid" / "spqr_v2_worked_example.spqr")
    for arith in ("f32", "f16"):
        for op in ("replace", "add"):
            want = list(dense[arith])
            want[2] = out2["replace"] if op == "replace" else out2[arith]
            assert rf.decode(f"{arith}_{op}").view(np.uint32).ravel().tolist() == want, (arith, op)
        # step 1 statistics of the text: S differs between the modes, Z does not
        rec, arrays = rf.tensors[f"{arith}_add"], rf.arrays(f"{arith}_add")
        S = refreader._spqr_stat(rec, arrays, "scale", 3, 1, arith == "f16")
        Z = refreader._spqr_stat(rec, arrays, "zero", 3, 1, arith == "f16")
        assert S.view(np.uint32).item() == {"f32": 0x3D76E000, "f16": 0x3D76C000}[arith]
        assert Z.view(np.uint32).item() == 0x403E0000


def test_quip_v2_worked_example_matches_spec_text() -> None:
    text = (CONF.parent / "spec" / "codecs" / "quip.md").read_text()
    section = text[text.index("### 10.8 Worked example"):text.index("### 10.9")]
    tvals = [list(map(int, m.split())) for m in re.findall(r"^\s+t = ([-\d ]+)$", section, flags=re.M)]
    rf = refreader.open_file(VECTORS / "valid" / "quip_v2_worked_example.spqr")
    a = rf.arrays("w")
    assert refreader.e8p12_points(a["codes"]).reshape(2, 8).tolist() == tvals
    steps: dict[str, list[list[int]]] = {}
    step = ""
    for line in section[section.index("Decoding (f32"):].splitlines():
        m = re.match(r"^(step \d)?\s+row \d: (.*)$", line)
        if m:
            step = m.group(1) or step
            steps.setdefault(step, []).append([int(h, 16) for h in re.findall(r"\b[0-9A-F]{8}\b", m.group(2))[:8]])
    assert list(steps) == ["step 1", "step 2", "step 3", "step 4"]
    X = ((refreader.e8p12_points(a["codes"]).reshape(2, 8).astype(np.float32) * np.float32(0.25))
         * a["scale"][:, None]).astype(np.float32)
    got = {"step 1": X}
    got["step 2"] = refreader.quip_transform(X, 3, None)
    got["step 3"] = refreader.quip_transform(got["step 2"].T, 1, None).T
    got["step 4"] = rf.decode("w")
    for k, rows in steps.items():
        assert np.ascontiguousarray(got[k]).view(np.uint32).tolist() == rows, k


def test_e8p12_tables_agree_and_all_codes_vector_covers_every_code() -> None:
    rows, odd = quip.e8p12_spec_table()  # parsed from the spec text, digest checked
    assert refreader.e8p12_table().tolist() == [list(r) for r in rows]
    assert np.array_equal(refreader.e8p12_points(np.arange(1 << 16)), quip.e8p12_all_points())
    rf = refreader.open_file(VECTORS / "valid" / "quip_v2_e8p12_all_codes.spqr")
    codes = rf.arrays("w")["codes"]
    assert sorted(codes.ravel().tolist()) == list(range(1 << 16))


def test_parse_claim() -> None:
    assert runner.parse_claim("raw,spqr:1,quip") == {"raw": None, "spqr": frozenset({1}), "quip": None}
    assert runner.parse_claim("spqr:1,spqr:2,quip:2,quip") == {"spqr": frozenset({1, 2}), "quip": None}


def test_partial_codec_version_claim(tmp_path: Path) -> None:
    """A reader of spqr and quip version 1 only passes with --codecs raw,spqr:1,quip:1 (v2 tensors must come back
    UNSUPPORTED_CODEC_VERSION, v2 invalid vectors are skipped) and fails the all-version claim on exactly the v2
    vectors."""
    vec = tmp_path / "v"
    files = ["valid/mixed_codec_versions.spqr", "valid/codec_versions_alongside.spqr", "valid/quip_bits2.spqr",
             "valid/spqr_v2_f16_add.spqr", "invalid/quip_v2_codebook_missing.spqr", "invalid/spqr_v2_arith_bin.spqr",
             "invalid/quip_value_su_zero.spqr", "invalid/bad_magic.spqr"]
    entries = [e for e in MANIFEST["vectors"] if e["file"] in files]
    assert len(entries) == len(files)
    vec.mkdir()
    (vec / "manifest.json").write_text(json.dumps({"vectors": entries}))
    for f in files:
        (vec / f).parent.mkdir(parents=True, exist_ok=True)
        (vec / f).write_bytes((VECTORS / f).read_bytes())
    v1only = REFDECODE.replace("{input}", "--codecs raw,spqr:1,quip:1 {input}")
    backend = {"foreign": runner.foreign_backend(v1only, timeout=60)}
    claim = runner.parse_claim("raw,spqr:1,quip:1")
    rows = runner.run_all(vec, backend, jobs=4, codecs=claim)
    assert len(rows) == 6 and not _failures(rows)  # the two v2 invalid vectors are skipped
    rows = runner.run_all(vec, backend, jobs=4)
    assert {r.file for r in rows if not r.passed} == {"valid/mixed_codec_versions.spqr",
                                                      "valid/codec_versions_alongside.spqr",
                                                      "valid/spqr_v2_f16_add.spqr",
                                                      "invalid/quip_v2_codebook_missing.spqr",
                                                      "invalid/spqr_v2_arith_bin.spqr"}
    # the full reader passes the v1-only claim only where it reports what a v1 reader would: it decodes v2
    rows = runner.run_all(vec, {"refreader": runner.refreader_backend}, codecs=claim)
    assert {r.file for r in rows if not r.passed} == {"valid/mixed_codec_versions.spqr",
                                                      "valid/codec_versions_alongside.spqr",
                                                      "valid/spqr_v2_f16_add.spqr"}


def _contract_subset() -> list[dict]:
    """Valid vectors with every feature the contract carries + one invalid vector per error code."""
    chosen, codes = [], set()
    for e in MANIFEST["vectors"]:
        if e["kind"] == "valid" and any(k in e["file"] for k in ("raw_", "layout_reverse", "unknown_codec",
                                                                 "special", "everything", "wide_u32",
                                                                 "worked_example", "mixed_codec",
                                                                 "codec_versions")):
            chosen.append(e)
        elif e["kind"] == "invalid" and e["error"] not in codes:
            codes.add(e["error"])
            chosen.append(e)
    return chosen


def _run_subset(tmp_path: Path, decoder: str) -> list[runner.Row]:
    subset = _contract_subset()
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "manifest.json").write_text(json.dumps({"vectors": subset}))
    for e in subset:
        files = [f"{e['split']['dir']}/{f}" for f in e["split"]["files"]] if "split" in e else [e["file"]]
        for f in files:
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f).write_bytes((VECTORS / f).read_bytes())
    return runner.run_all(tmp_path, {"foreign": runner.foreign_backend(decoder, timeout=60)}, jobs=4)


def test_foreign_contract_through_subprocess(tmp_path: Path) -> None:
    rows = _run_subset(tmp_path, REFDECODE)
    assert len(rows) > 30
    assert not _failures(rows)


def test_partial_codec_claim(tmp_path: Path) -> None:
    """A raw+spqr-only decoder passes with --codecs raw,spqr; the same decoder fails an all-codec claim."""
    vec = tmp_path / "v"
    files = ["valid/mixed_codecs.spqr", "valid/quip_bits2.spqr", "valid/spqr_bits3.spqr",
             "invalid/squeezellm_bits_9.spqr", "invalid/quip_value_su_zero.spqr", "invalid/bad_magic.spqr",
             "invalid/csr_decreasing.spqr"]
    entries = [e for e in MANIFEST["vectors"] if e["file"] in files]
    assert len(entries) == len(files)
    vec.mkdir()
    (vec / "manifest.json").write_text(json.dumps({"vectors": entries}))
    for f in files:
        (vec / f).parent.mkdir(parents=True, exist_ok=True)
        (vec / f).write_bytes((VECTORS / f).read_bytes())
    partial = REFDECODE.replace("{input}", "--codecs raw,spqr {input}")
    backend = {"foreign": runner.foreign_backend(partial, timeout=60)}
    rows = runner.run_all(vec, backend, jobs=4, codecs={"raw", "spqr"})
    assert len(rows) == 5 and not _failures(rows)  # the squeezellm and quip invalid vectors are skipped
    rows = runner.run_all(vec, backend, jobs=4)
    assert {r.file for r in rows if not r.passed} == {"valid/mixed_codecs.spqr", "valid/quip_bits2.spqr",
                                                      "invalid/squeezellm_bits_9.spqr",
                                                      "invalid/quip_value_su_zero.spqr"}


@pytest.mark.parametrize("script,expect", [
    ("import sys; sys.exit(0)", "output unreadable"),                      # exit 0 without writing output
    ("import sys; print('NOPE x', file=sys.stderr); sys.exit(2)", "not an error code"),
    ("raise RuntimeError('boom')", "CRASH"),
])
def test_runner_catches_broken_decoders(tmp_path: Path, script: str, expect: str) -> None:
    prog = tmp_path / "dec.py"
    prog.write_text(script)
    rows = _run_subset(tmp_path / "v", f"{sys.executable} {prog} {{input}} {{output}}")
    assert rows and not any(r.passed for r in rows)
    assert any(expect in r.detail for r in rows)


def test_runner_catches_wrong_codes_and_wrong_values(tmp_path: Path) -> None:
    """A decoder that accepts everything, and one that reports the wrong code, both fail."""
    accept_all = tmp_path / "accept.py"
    accept_all.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(CONF)!r})\n"
        "import safetensors_mini as s\n"
        "s.write(sys.argv[2], {'w': ('F32', [1], b'\\0\\0\\0\\0')})\n")
    rows = _run_subset(tmp_path / "a", f"{sys.executable} {accept_all} {{input}} {{output}}")
    assert all(not r.passed for r in rows)
    assert any(r.detail.startswith("accepted") for r in rows if r.kind == "invalid")
    assert any("tensor set differs" in r.detail for r in rows if r.kind == "valid")
    # a tampered expected hash must be caught for an in-process backend too
    entry = next(e for e in MANIFEST["vectors"] if e["file"].endswith("spqr_bits3.spqr"))
    bad = json.loads(json.dumps(entry))
    bad["tensors"]["w"]["sha256"] = "0" * 64
    ok, detail = runner.judge(bad, runner.refreader_backend(VECTORS / entry["file"], entry))
    assert not ok and "differ" in detail


def test_cli_main_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.json"
    rc = runner.main(["--backend", "refreader", "--only", "invalid/section", "--report", str(report)])
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["passed"] and data["summary"]["refreader"]["total"] >= 8
    assert "refreader:" in capsys.readouterr().out


def test_spqr_conformance_command_passes_options_through(tmp_path: Path) -> None:
    from spqrfmt import cli

    report = tmp_path / "r.json"
    rc = cli.main(["conformance", "--backend", "library,refreader", "--only", "quip_worked_example", "--codecs",
                   "squeezellm,quip", "--report", str(report)])
    data = json.loads(report.read_text())
    assert rc == 0 and data["passed"] and data["codecs"] == ["quip", "squeezellm"]
    assert data["summary"]["library"]["total"] == 1


def test_generation_is_byte_identical(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    fresh = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p.relative_to(VECTORS).as_posix(): p.read_bytes() for p in VECTORS.rglob("*") if p.is_file()}
    assert sorted(fresh) == sorted(committed)
    changed = [k for k in fresh if fresh[k] != committed[k]]
    assert not changed, f"regenerate with `python -m spqrfmt.conformance.generate`: {changed[:5]}"


def test_vectors_are_small_and_cover_every_code() -> None:
    total = sum(p.stat().st_size for p in VECTORS.rglob("*") if p.is_file())
    assert total < 4_000_000  # the 2^16-code E8P12 tensor alone decodes to 2 MiB of f32
    invalid_codes = {e["error"] for e in MANIFEST["vectors"] if e["kind"] == "invalid"}
    per_tensor = {t["error"] for e in MANIFEST["vectors"] if e["kind"] == "valid"
                  for t in e["tensors"].values() if "error" in t}
    missing = set(refreader.ERROR_CODES) - invalid_codes - per_tensor
    assert missing == {"LIMIT_EXCEEDED"}  # needs > 1 MiB of header; see docs/conformance.md
    for e in MANIFEST["vectors"]:
        assert e["description"] and (VECTORS / e["file"]).is_file() or "split" in e  # a set's index may be absent
        if e["kind"] == "valid":
            with np.load(VECTORS / e["expected"], allow_pickle=False) as npz:
                for name, t in e["tensors"].items():
                    if "npz_key" in t:
                        arr = npz[t["npz_key"]]
                        assert list(arr.shape) == t["shape"], name


def test_expected_npz_matches_manifest_hashes() -> None:
    from spqrfmt.conformance.hashing import sha256_of

    for e in MANIFEST["vectors"]:
        if e["kind"] != "valid":
            continue
        with np.load(VECTORS / e["expected"], allow_pickle=False) as npz:
            for t in e["tensors"].values():
                if "npz_key" in t:
                    assert sha256_of(npz[t["npz_key"]], t["codec"] != "raw") == t["sha256"]


def test_refreader_imports_nothing_from_the_library() -> None:
    for path in CONF.glob("*.py"):
        if path.name in ("runner.py", "fuzz.py"):  # these drive the library on purpose
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""] if node.level == 0 else []
            else:
                continue
            assert not any(m == "spqrfmt" or m.startswith("spqrfmt.") for m in mods), (path.name, mods)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 32), rows=st.integers(1, 3), count=st.integers(1, 70), data=st.data())
def test_unpack_matches_first_principles_packer(k: int, rows: int, count: int, data: st.DataObject) -> None:
    codes = [[data.draw(st.integers(0, (1 << k) - 1)) for _ in range(count)] for _ in range(rows)]
    words = np.frombuffer(common.pack_rows(codes, k, pad_bits=data.draw(st.booleans())), dtype="<u4")
    got = refreader.unpack_rows(words.reshape(rows, -1), count, k)
    assert got.tolist() == codes


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.binary(max_size=40),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
    max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(obj=json_like)
def test_msgpack_parser_and_encoder_agree_with_msgpack_python(obj: object) -> None:
    assert refreader.parse_msgpack(msgpack.packb(obj, use_bin_type=True)) == obj
    assert msgpack.unpackb(miniwriter.packb(obj), raw=False, strict_map_key=False) == obj


def test_safetensors_mini_interoperates(tmp_path: Path) -> None:
    st_np = pytest.importorskip("safetensors.numpy")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    stm.write(tmp_path / "a.st", {"a": ("F32", [3, 4], a.tobytes()), "b": ("U8", [0], b"")}, {"k": "v"})
    loaded = st_np.load_file(str(tmp_path / "a.st"))
    assert np.array_equal(loaded["a"], a) and loaded["b"].shape == (0,)
    st_np.save_file({"x": np.ones((2, 2), dtype=np.float16)}, str(tmp_path / "b.st"), metadata={"m": "1"})
    tensors, meta = stm.read(tmp_path / "b.st")
    assert tensors["x"][0] == "F16" and tensors["x"][1] == [2, 2] and meta == {"m": "1"}


def test_limit_exceeded_built_at_test_time(tmp_path: Path) -> None:
    """MAX_TENSORS + 1 records needs > 1 MiB of header, so this vector is built here, not committed."""
    import spqrfmt

    header = miniwriter.Raw(b"\x82\xa7tensors\xdd" + (refreader.MAX_TENSORS + 1).to_bytes(4, "big")
                            + b"\xc0" * (refreader.MAX_TENSORS + 1) + b"\xa8metadata\x80")
    path = tmp_path / "many.spqr"
    path.write_bytes(miniwriter.build([], header_obj=header))
    with pytest.raises(refreader.RefError) as ei:
        refreader.open_file(path)
    assert ei.value.code == "LIMIT_EXCEEDED"
    with pytest.raises(spqrfmt.SpqrFormatError) as li:
        spqrfmt.open(path)
    assert str(li.value.code) == "LIMIT_EXCEEDED"


def test_rne16_threshold_vector_matches_spec_text() -> None:
    """spqr.md §5: 65504 < |x| < 65520 rounds to 65504, 65520 ties to inf (not 'beyond 65504 is inf')."""
    ref = refreader.open_file(VECTORS / "valid/spqr_rne16_overflow_threshold.spqr")
    v1 = ref.decode("v1_stats")
    assert v1[:, 0].tolist() == [65504.0, np.inf, -65504.0, 65504.0]
    assert ref.decode("v2_f16")[:, 0].tolist() == [65504.0, -65504.0]
    assert ref.decode("v2_f32")[0, 0] == np.float32(65512.28125)


def test_quip_max_factor_boundary_built_at_test_time(tmp_path: Path) -> None:
    """a_n = 256 decodes identically in both readers; 257 is BAD_PARAMS (a 256x256 factor is too big to commit)."""
    import spqrfmt

    for n, ok in ((256, True), (257, False)):
        t = quip.quip_tens("q", quip.make_quip(f"maxf{n}", 1, n, 2, 0, 0))
        path = tmp_path / f"f{n}.spqr"
        path.write_bytes(miniwriter.build([t]))
        ref = refreader.open_file(path)
        with spqrfmt.open(path) as f:
            if ok:
                got = f["q"].decode()
                assert got.view(np.uint32).tolist() == ref.decode("q").view(np.uint32).tolist()
                continue
            with pytest.raises(spqrfmt.SpqrFormatError) as ei:
                f["q"].decode()
        assert ei.value.code == spqrfmt.ErrorCode.BAD_PARAMS
        with pytest.raises(refreader.RefError) as ri:
            ref.decode("q")
        assert ri.value.code == "BAD_PARAMS"
