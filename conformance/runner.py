"""Run the golden vectors against readers and print a pass/fail table.

Backends: ``library`` (in-process ``spqrfmt``), ``refreader`` (the
independent reader in this package) and ``foreign`` (any program that
follows the command-line contract of spec/conformance.md §4, given with
``--decoder "CMD {input} {output}"``). A split-set vector (SPEC §12, manifest entries
with a ``split`` key) is given to every backend as its ``file``: the set's index, or
its first part; ``--no-split`` skips them for a reader without split-set support.

    python -m spqrfmt.conformance.runner [--decoder CMD] [--report FILE] [--backend library,refreader]

``main(argv)`` is what ``spqr conformance`` calls. Exit status 0 iff every
selected backend passes every vector.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import refreader  # type: ignore[no-redef]
    import safetensors_mini as st  # type: ignore[no-redef]
    from hashing import canonical_f32_bytes, sha256_of  # type: ignore[no-redef]
else:
    from . import refreader
    from . import safetensors_mini as st
    from .hashing import canonical_f32_bytes, sha256_of

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"


# ---------------------------------------------------------------- what a backend returns

@dataclass
class Decoded:
    """One tensor as a backend produced it: canonical-hash + dtype, or the per-tensor error code."""

    sha256: str | None = None
    dtype: str | None = None           # spec dtype name of what came back ('f32', 'bf16', ...)
    error: str | None = None
    bias_sha256: str | None = None


@dataclass
class Verdict:
    """A whole file: a file-level error, or per-tensor results in file order; ``crash`` for anything else."""

    file_error: str | None = None
    tensors: dict[str, Decoded] | None = None
    crash: str | None = None


Backend = Callable[[Path, dict[str, Any]], Verdict]

_NP_TO_SPEC = {"bool": "bool", "uint8": "u8", "int8": "i8", "uint16": "u16", "int16": "i16", "uint32": "u32",
               "int32": "i32", "uint64": "u64", "int64": "i64", "float16": "f16", "float32": "f32",
               "float64": "f64"}


def _spec_dtype(arr: np.ndarray, declared: str) -> str:
    """numpy has no bf16: a uint16 array standing for a bf16 tensor counts as bf16."""
    name = _NP_TO_SPEC.get(arr.dtype.name, arr.dtype.name)
    return "bf16" if declared == "bf16" and name == "u16" else name


def _hash_array(arr: np.ndarray, quantized: bool) -> str:
    return sha256_of(arr, quantized)


# ---------------------------------------------------------------- backends

def library_backend(path: Path, entry: dict[str, Any]) -> Verdict:
    """The in-process library: spqrfmt.open + Tensor.decode (errors: SpqrFormatError.code)."""
    import spqrfmt

    try:
        with spqrfmt.open(path) as f:
            out: dict[str, Decoded] = {}
            for name, t in f.tensors.items():
                try:
                    arr = np.asarray(t.decode())
                    quantized = t.codec != "raw"
                    d = Decoded(_hash_array(arr, quantized), _spec_dtype(arr, "f32" if quantized else t.dtype))
                    if quantized and hasattr(t, "bias"):
                        b = t.bias()
                        d.bias_sha256 = None if b is None else _hash_array(np.asarray(b, dtype=np.float32), True)
                    out[name] = d
                except spqrfmt.SpqrFormatError as e:
                    out[name] = Decoded(error=str(getattr(e.code, "value", e.code)))
            return Verdict(tensors=out)
    except spqrfmt.SpqrFormatError as e:
        return Verdict(file_error=str(getattr(e.code, "value", e.code)))
    except Exception:  # noqa: BLE001 - any other exception is exactly what we report as a crash
        return Verdict(crash=traceback.format_exc(limit=3))


def refreader_backend(path: Path, entry: dict[str, Any]) -> Verdict:
    """The independent reference reader of this package."""
    try:
        f = refreader.open_file(path)
        out: dict[str, Decoded] = {}
        for name, rec in f.tensors.items():
            try:
                arr = f.decode(name)
                quantized = rec.codec != "raw"
                d = Decoded(_hash_array(arr, quantized), _spec_dtype(arr, "f32" if quantized else rec.dtype))
                if quantized:
                    b = f.bias(name)
                    d.bias_sha256 = None if b is None else _hash_array(b, True)
                out[name] = d
            except refreader.RefError as e:
                out[name] = Decoded(error=e.code)
        return Verdict(tensors=out)
    except refreader.RefError as e:
        return Verdict(file_error=e.code)
    except Exception:  # noqa: BLE001
        return Verdict(crash=traceback.format_exc(limit=3))


_ST_TO_SPEC = {v: k for k, v in st.ST_DTYPE.items()}


def foreign_backend(command: str, timeout: float = 60.0) -> Backend:
    """A program following the contract: ``CMD {input} {output}``, split with POSIX shell rules, no shell."""
    template = shlex.split(command)
    if not any("{input}" in a for a in template) or not any("{output}" in a for a in template):
        raise ValueError("--decoder must contain {input} and {output}")

    def run(path: Path, entry: dict[str, Any]) -> Verdict:
        with tempfile.TemporaryDirectory(prefix="spqr-conf-") as tmp:
            out_path = Path(tmp) / "out.safetensors"
            argv = [a.replace("{input}", str(path)).replace("{output}", str(out_path)) for a in template]
            try:
                proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                return Verdict(crash=f"timed out after {timeout} s")
            except OSError as e:
                return Verdict(crash=f"cannot run decoder: {e}")
            stderr = proc.stderr.decode("utf-8", "replace")
            if proc.returncode == 2:
                first = stderr.strip().splitlines()[0] if stderr.strip() else ""
                code = first.split()[0].rstrip(":") if first else ""
                if code not in refreader.ERROR_CODES:
                    return Verdict(crash=f"exit 2 but first stderr word {code!r} is not an error code")
                return Verdict(file_error=code)
            if proc.returncode != 0:
                return Verdict(crash=f"exit {proc.returncode}: {stderr[-500:]}")
            try:
                tensors, meta = st.read(out_path)
            except (OSError, st.SafetensorsError) as e:
                return Verdict(crash=f"exit 0 but output unreadable: {e}")
            out: dict[str, Decoded] = {}
            for key, code in meta.items():
                if key.startswith("spqr.error."):
                    out[key[len("spqr.error."):]] = Decoded(error=code)
            for name, (dtype, _shape, data) in tensors.items():
                spec = _ST_TO_SPEC.get(dtype, dtype)
                body = canonical_f32_bytes(data) if spec == "f32" and _is_quantized(entry, name) else data
                out[name] = Decoded(hashlib.sha256(body).hexdigest(), spec)
            return Verdict(tensors=out)

    return run


def _is_quantized(entry: dict[str, Any], name: str) -> bool:
    t = entry.get("tensors", {}).get(name)
    return bool(t) and t.get("codec") != "raw"


# ---------------------------------------------------------------- judging

def judge(entry: dict[str, Any], v: Verdict, *, check_bias: bool = True) -> tuple[bool, str]:
    """(passed, detail) for one vector."""
    if v.crash is not None:
        return False, "CRASH " + v.crash.strip().splitlines()[-1][:200]
    if entry["kind"] == "invalid":
        got = v.file_error
        if got is None:
            got = next((d.error for d in (v.tensors or {}).values() if d.error is not None), None)
        if got is None:
            return False, f"accepted; expected {entry['error']}"
        ok = got in entry["accept"]
        return ok, got if ok else f"got {got}, expected {'/'.join(entry['accept'])}"
    if v.file_error is not None:
        return False, f"rejected valid file with {v.file_error}"
    got_t = v.tensors or {}
    want = entry["tensors"]
    if set(got_t) != set(want):
        return False, f"tensor set differs: missing {sorted(set(want) - set(got_t))[:3]}, " \
                      f"extra {sorted(set(got_t) - set(want))[:3]}"
    for name, exp in want.items():
        d = got_t[name]
        if "error" in exp:
            if d.error != exp["error"]:
                return False, f"{name}: expected per-tensor {exp['error']}, got {d.error or 'a decode'}"
            continue
        if d.error is not None:
            return False, f"{name}: unexpected {d.error}"
        if d.dtype != exp["decoded_dtype"]:
            return False, f"{name}: decoded dtype {d.dtype}, expected {exp['decoded_dtype']}"
        if d.sha256 != exp["sha256"]:
            return False, f"{name}: decoded bytes differ (sha256 {d.sha256[:12]} != {exp['sha256'][:12]})"
        if check_bias and "bias_sha256" in exp and d.bias_sha256 is not None and d.bias_sha256 != exp["bias_sha256"]:
            return False, f"{name}: bias differs"
    return True, "ok"


Claim = dict[str, frozenset[int] | None]   # codec id -> the codec_versions claimed (None: every version)


def parse_claim(text: str) -> Claim:
    """``raw,spqr:1,quip`` -> {raw: all, spqr: {1}, quip: all} (spec/conformance.md §1.1); repeat a codec
    for several versions (``spqr:1,spqr:2``)."""
    out: dict[str, set[int] | None] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        codec, sep, ver = item.partition(":")
        if not sep:
            out[codec] = None
        elif out.get(codec, set()) is not None:
            out.setdefault(codec, set()).add(int(ver))  # type: ignore[union-attr]
    return {c: (None if v is None else frozenset(v)) for c, v in out.items()}


def _as_claim(codecs: Claim | set[str] | None) -> Claim | None:
    if codecs is None or isinstance(codecs, dict):
        return codecs
    return {c: None for c in codecs}


def _claims(c: Claim, codec: str, version: int | None) -> bool:
    """Whether ``codec`` at ``version`` is claimed (version None: not recorded, the codec decides)."""
    versions = c.get(codec, frozenset())
    return codec in c and (versions is None or version is None or version in versions)


def claim(entry: dict[str, Any], codecs: Claim | set[str] | None) -> dict[str, Any] | None:
    """The vector as seen by a reader that claims only ``codecs`` (spec/conformance.md §1.1), or None to skip it.

    Valid vectors: tensors of other codecs must be reported as UNKNOWN_CODEC, tensors of a claimed codec
    in an unclaimed version as UNSUPPORTED_CODEC_VERSION, while the rest decode. Invalid vectors whose
    defect is per tensor (``codecs`` non-empty) and that involve an unclaimed codec or codec version are
    skipped; file-level defects (``codecs`` empty) concern every reader.
    """
    c = _as_claim(codecs)
    if c is None:
        return entry
    if entry["kind"] == "invalid":
        pairs = [(p.partition(":")[0], int(p.partition(":")[2])) for p in entry["codec_versions"]] \
            if "codec_versions" in entry else [(x, None) for x in entry.get("codecs", [])]
        return entry if all(_claims(c, codec, v) for codec, v in pairs) else None
    out = dict(entry)
    tensors: dict[str, Any] = {}
    for name, t in entry["tensors"].items():
        if t["codec"] not in c:
            tensors[name] = {"codec": t["codec"], "error": "UNKNOWN_CODEC"}
        elif not _claims(c, t["codec"], t.get("codec_version")):
            tensors[name] = {"codec": t["codec"], "error": "UNSUPPORTED_CODEC_VERSION"}
        else:
            tensors[name] = t
    out["tensors"] = tensors
    return out


@dataclass
class Row:
    file: str
    kind: str
    backend: str
    passed: bool
    detail: str
    seconds: float


def run_all(vectors: Path, backends: dict[str, Backend], *, only: str | None = None, jobs: int = 1,
            codecs: Claim | set[str] | None = None, split: bool = True) -> list[Row]:
    """Every vector of the manifest against every backend.

    ``jobs`` > 1 runs the ``foreign`` backend's subprocesses in parallel
    (in-process backends always run one vector at a time). ``codecs``
    restricts the claim (see :func:`claim`); skipped vectors give no row, as do the split-set vectors
    when ``split`` is false.
    """
    manifest = json.loads((vectors / "manifest.json").read_text())
    claimed = (claim(e, codecs) for e in manifest["vectors"]
               if (not only or only in e["file"]) and (split or "split" not in e))
    entries = [e for e in claimed if e is not None]

    def one(bname: str, entry: dict[str, Any]) -> Row:
        t0 = time.perf_counter()
        verdict = backends[bname](vectors / entry["file"], entry)
        ok, detail = judge(entry, verdict)
        return Row(entry["file"], entry["kind"], bname, ok, detail, time.perf_counter() - t0)

    results: dict[tuple[str, str], Row] = {}
    for bname in backends:
        if bname == "foreign" and jobs > 1:
            with ThreadPoolExecutor(jobs) as pool:
                for row in pool.map(lambda e, b=bname: one(b, e), entries):
                    results[(row.file, bname)] = row
        else:
            for e in entries:
                results[(e["file"], bname)] = one(bname, e)
    return [results[(e["file"], b)] for e in entries for b in backends]


def print_table(rows: list[Row], backends: list[str], *, failures_only: bool = False, out: Any = None) -> None:
    out = out or sys.stdout
    by_file: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_file.setdefault(r.file, {})[r.backend] = r
    width = max((len(f) for f in by_file), default=10)
    print(f"{'vector':<{width}}  " + "  ".join(f"{b:<10}" for b in backends) + "  detail", file=out)
    for f, per in by_file.items():
        if failures_only and all(r.passed for r in per.values()):
            continue
        cells = "  ".join(f"{('pass' if per[b].passed else 'FAIL'):<10}" for b in backends)
        details = "; ".join(f"{b}: {per[b].detail}" for b in backends if not per[b].passed)
        if not details:
            details = next(iter(per.values())).detail
        print(f"{f:<{width}}  {cells}  {details}", file=out)
    for b in backends:
        mine = [r for r in rows if r.backend == b]
        print(f"{b}: {sum(r.passed for r in mine)}/{len(mine)} passed "
              f"(valid {sum(r.passed for r in mine if r.kind == 'valid')}/{sum(r.kind == 'valid' for r in mine)}, "
              f"invalid {sum(r.passed for r in mine if r.kind == 'invalid')}/{sum(r.kind == 'invalid' for r in mine)})",
              file=out)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: ``spqr conformance [--decoder CMD] [--report FILE]``."""
    ap = argparse.ArgumentParser(prog="spqr conformance", description="run the spqrfmt golden vectors")
    ap.add_argument("--decoder", help='foreign decoder command, e.g. "mydec {input} {output}" (spec/conformance.md)')
    ap.add_argument("--backend", default=None,
                    help="comma list of library,refreader,foreign (default: library+refreader +foreign with --decoder)")
    ap.add_argument("--vectors", type=Path, default=VECTORS_DIR, help="vector directory (with manifest.json)")
    ap.add_argument("--report", type=Path, help="write a JSON report here")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per vector for the foreign decoder")
    ap.add_argument("--only", help="run only vectors whose path contains this string")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel foreign decoder runs")
    ap.add_argument("--no-split", action="store_true", help="skip the split-set vectors (SPEC §12), for a "
                    "reader that does not claim split-set support")
    ap.add_argument("--failures-only", action="store_true", help="print only failing rows")
    ap.add_argument("--codecs", help="comma list of the codecs the decoder claims, each optionally with one "
                    "codec_version, e.g. raw,spqr:1,quip (default: all); tensors of other codecs must then be "
                    "reported as UNKNOWN_CODEC, of other versions as UNSUPPORTED_CODEC_VERSION")
    args = ap.parse_args(argv)
    codecs = parse_claim(args.codecs) if args.codecs else None
    default = ["library", "refreader"] + (["foreign"] if args.decoder else [])
    names = args.backend.split(",") if args.backend else default
    backends: dict[str, Backend] = {}
    for n in names:
        if n == "library":
            backends[n] = library_backend
        elif n == "refreader":
            backends[n] = refreader_backend
        elif n == "foreign":
            if not args.decoder:
                ap.error("backend 'foreign' needs --decoder")
            backends[n] = foreign_backend(args.decoder, args.timeout)
        else:
            ap.error(f"unknown backend {n!r}")
    rows = run_all(args.vectors, backends, only=args.only, jobs=args.jobs, codecs=codecs, split=not args.no_split)
    print_table(rows, list(backends), failures_only=args.failures_only)
    if args.report:
        report = {"vectors": str(args.vectors), "backends": list(backends), "decoder": args.decoder,
                  "codecs": sorted(x.strip() for x in args.codecs.split(",") if x.strip()) if codecs else "all",
                  "split": not args.no_split,
                  "passed": all(r.passed for r in rows),
                  "summary": {b: {"passed": sum(r.passed for r in rows if r.backend == b),
                                  "total": sum(r.backend == b for r in rows)} for b in backends},
                  "results": [asdict(r) for r in rows]}
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if rows and all(r.passed for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
