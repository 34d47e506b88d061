"""Deterministically write the golden vectors in ``conformance/vectors/``: the driver.

Run ``python -m spqrfmt.conformance.generate [OUT_DIR]``. The vectors themselves come from one
generator per spec document in :mod:`generators` (``container``, ``spqr``, ``squeezellm``, ``quip``;
codec versions 1 and 2 together); this module only orders them, writes each file with its expected
output and the manifest, and checks every vector against the independent refreader.

Why it is built this way: the expected outputs come from a third, deliberately naive path (the
*oracles* of the generators work element by element from the logical codes and statistics the
generator chose, never from packed bytes), so the golden hashes do not depend on either reader's
unpacking or vectorised arithmetic. The vectors themselves are laid out by ``miniwriter``, not the
library writer. Randomness comes from SHA-256 in counter mode, so output is byte-identical across
numpy versions and platforms; zips are written uncompressed with fixed timestamps for the same reason.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # allow `python conformance/generate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import miniwriter as mw  # type: ignore[no-redef]
    import refreader  # type: ignore[no-redef]
    from generators import container, quip, quip_rvq, split, spqr, squeezellm  # type: ignore[no-redef]
    from generators.common import Invalid, Valid  # type: ignore[no-redef]
    from hashing import sha256_of  # type: ignore[no-redef]
else:
    from . import miniwriter as mw
    from . import refreader
    from .generators import container, quip, quip_rvq, split, spqr, squeezellm
    from .generators.common import Invalid, Valid
    from .hashing import sha256_of

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"

# The manifest lists the vectors in the order they were added to the suite (version 1 of every codec,
# then version 2, then the misreading-separating vectors of issue 11, then quip's residual codebooks of
# issue 16); keeping that order keeps
# manifest.json, and so the committed vectors, byte-identical.
VALID: tuple[Callable[[], list[Valid]], ...] = (
    container.valid_files, spqr.valid_v1, container.valid_layout, spqr.valid_v1_late, squeezellm.valid,
    quip.valid_v1, container.valid_mixed_codecs, spqr.valid_v2, quip.valid_v2, container.valid_versions,
    spqr.valid_edges, quip.valid_edges, container.valid_edges, quip_rvq.valid,
)
INVALID: tuple[Callable[[], list[Invalid]], ...] = (
    container.invalid_file, spqr.invalid_v1, container.invalid_types, spqr.invalid_v1_late, squeezellm.invalid,
    quip.invalid_v1, spqr.invalid_v2, quip.invalid_v2, container.invalid_edges, spqr.invalid_edges,
    quip.invalid_edges, quip_rvq.invalid,
)


def valid_vectors() -> list[Valid]:
    return [v for part in VALID for v in part()]


def invalid_vectors() -> list[Invalid]:
    return [v for part in INVALID for v in part()]


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A numpy .npz with fixed zip timestamps and no compression, so bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.array(arr, order="C", copy=True), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue())
    path.write_bytes(buf.getvalue())


def build_valid(v: Valid) -> bytes:
    kw = dict(v.build_kw)
    wide = kw.pop("wide_ints", False)
    sec_extra = kw.pop("section_extra", None)
    if sec_extra:
        for t in v.tensors:
            for s in t.sections:
                s.extra.update(sec_extra)
    if wide:
        for t in v.tensors:
            t.shape = [mw.Wide(d, "u64") for d in t.shape]
            t.codec_version = mw.Wide(1, "i64")
            for s in t.sections:
                s.set["shape"] = [mw.Wide(d, "u32") for d in s.shape]
        blob = mw.build(v.tensors, **kw)
        # offsets/lengths/crc stay minimal; shapes and codec_version are wide
        return blob
    return mw.build(v.tensors, **kw)


def _expected(out: Path, v: Valid, rf: Any, exp_rel: str) -> dict[str, Any]:
    """The manifest's ``tensors`` of a valid vector, its expected decodes written to ``exp_rel``; every one
    cross-checked: the independent reader's decode of the vector ``rf`` must agree with the oracle."""
    npz: dict[str, np.ndarray] = {}
    tensors: dict[str, Any] = {}
    assert list(rf.tensors) == [t.name for t in v.tensors]
    for i, t in enumerate(v.tensors):
        exp = v.expected[t.name]
        if isinstance(exp, str):
            tensors[t.name] = {"codec": t.codec, "codec_version": rf.tensors[t.name].codec_version, "error": exp}
            try:
                rf.decode(t.name)
                raise AssertionError(f"{v.name}/{t.name}: refreader decoded a tensor expected to fail")
            except refreader.RefError as e:
                assert e.code == exp, (v.name, t.name, e)
            continue
        quantized = t.codec != "raw"
        got = rf.decode(t.name)
        assert sha256_of(got, quantized) == sha256_of(exp, quantized), f"{v.name}/{t.name}: refreader != oracle"
        key = f"t{i}"
        npz[key] = exp.view("<u2") if (t.dtype == "bf16" and not quantized) else exp
        entry = {"codec": t.codec, "codec_version": rf.tensors[t.name].codec_version,
                 "decoded_dtype": "f32" if quantized else t.dtype,
                 "shape": list(exp.shape), "npz_key": key, "sha256": sha256_of(exp, quantized)}
        if t.name in v.bias:
            b = v.bias[t.name].astype(np.float32)
            assert sha256_of(rf.bias(t.name), True) == sha256_of(b, True)
            npz[f"{key}.bias"] = b
            entry["bias_sha256"] = sha256_of(b, True)
        tensors[t.name] = entry
    write_npz(out / exp_rel, npz)
    return tensors


def generate(out_dir: Path | str = VECTORS_DIR) -> dict[str, Any]:
    """Write every vector, its expected output and manifest.json; return the manifest."""
    out = Path(out_dir)
    (out / "valid").mkdir(parents=True, exist_ok=True)
    (out / "invalid").mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for v in valid_vectors():
        blob = build_valid(v)
        rel = f"valid/{v.name}.spqr"
        (out / rel).write_bytes(blob)
        exp_rel = f"valid/{v.name}.expected.npz"
        tensors = _expected(out, v, refreader.RefFile(blob), exp_rel)
        entries.append({"file": rel, "kind": "valid", "description": v.description,
                        "codecs": sorted({t.codec for t in v.tensors}), "expected": exp_rel,
                        "tensors": tensors})
    for iv in invalid_vectors():
        rel = f"invalid/{iv.name}.spqr"
        (out / rel).write_bytes(iv.blob)
        got = _ref_verdict(iv.blob)
        assert got == iv.error, f"{iv.name}: refreader says {got}, vector expects {iv.error}"
        codecs = _ref_codecs(iv.blob)
        entries.append({"file": rel, "kind": "invalid", "description": iv.description,
                        "codecs": sorted({c.split(":")[0] for c in codecs}), "codec_versions": codecs,
                        "error": iv.error, "accept": iv.accept})
    entries += [_split_entry(out, sv) for sv in split.valid() + split.invalid()]
    manifest = {
        "format": "spqrfmt-conformance-vectors",
        "version": 1,
        "spec": "spec/SPEC.md 1.0; codecs (codec_version): raw 1, spqr 1 2, squeezellm 1, quip 1 2",
        "hash": "sha256 of the decoded tensor's bytes, C order, little-endian; quantized codecs: f32 with every "
                "NaN replaced by 0x7FC00000; raw: own dtype (bf16 as its 16-bit pattern, bool as 0/1 bytes)",
        "vectors": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=True, sort_keys=False) + "\n")
    return manifest


def _ref_codecs(blob: bytes) -> list[str]:
    """``codec:version`` of the tensors of an invalid file that opens (its defect is per tensor, SPEC §10
    stage 5); [] if it does not open.

    A reader claiming only some codecs (or codec versions) skips the invalid vectors that name one outside
    its claim (spec/conformance.md §1.1); file-level defects concern every reader.
    """
    try:
        return sorted({f"{r.codec}:{r.codec_version}" for r in refreader.RefFile(blob).tensors.values()})
    except refreader.RefError:
        return []


def _split_entry(out: Path, sv: split.SplitVector) -> dict[str, Any]:
    """Write one split set's folder (``split/valid/NAME/`` or ``split/invalid/NAME/``) and its manifest entry:
    ``file`` is what a reader is given (the index or the first part), ``split`` lists the folder's files."""
    rel = f"split/{'valid' if sv.error is None else 'invalid'}/{sv.name}"
    for name, data in sv.files.items():
        path = out / rel / name
        if data is split.DIRECTORY:  # a directory where a file is expected; README keeps it in git
            path.mkdir(parents=True, exist_ok=True)
            (path / "README").write_text("a directory standing where the index expects a regular file\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    files = sorted(p.relative_to(out / rel).as_posix() for p in (out / rel).rglob("*") if p.is_file())
    entry: dict[str, Any] = {"file": f"{rel}/{sv.open}", "kind": "valid" if sv.error is None else "invalid",
                             "split": {"dir": rel, "files": files}, "description": sv.description}
    if sv.valid is not None:
        v = sv.valid
        exp_rel = f"split/valid/{sv.name}.expected.npz"
        entry.update({"codecs": sorted({t.codec for t in v.tensors}), "expected": exp_rel,
                      "tensors": _expected(out, v, refreader.open_file(out / entry["file"]), exp_rel)})
        return entry
    got = _ref_verdict(lambda: refreader.open_file(out / entry["file"]))
    assert got == sv.error, f"split {sv.name}: refreader says {got}, vector expects {sv.error}"
    entry.update({"codecs": [], "codec_versions": [], "error": sv.error, "accept": sv.accept})
    return entry


def _ref_verdict(blob: bytes | Callable[[], Any]) -> str | None:
    """Error code the reference reader reports for a file (open, then every tensor in order), or None;
    ``blob`` may also be a function opening a file or a split set."""
    try:
        rf = blob() if callable(blob) else refreader.RefFile(blob)
        for name in rf.tensors:
            rf.decode(name)
    except refreader.RefError as e:
        return e.code
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else VECTORS_DIR
    m = generate(out)
    kinds = [e["kind"] for e in m["vectors"]]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {kinds.count('valid')} valid and {kinds.count('invalid')} invalid vectors to {out} ({size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
