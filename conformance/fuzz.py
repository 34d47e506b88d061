"""Mutation fuzzing of the valid golden vectors against the library (and the refreader).

Why: the spec promises that hostile files give a clean error, never a
crash, a hang or an allocation driven by a length field (SPEC §10). Every
mutated file must come back as a decode or a clean ``SpqrFormatError``;
mutations that only touch bytes a reader must ignore (padding, gaps, packed
row padding bits with the CRC restamped, the minor version) must decode to
exactly the golden output. Each case runs in a worker process with
``RLIMIT_AS`` set and a wall-clock timeout, so crashes, hangs and runaway
allocations are caught and counted rather than taking the fuzzer down.
The refreader runs on the same bytes; accept/reject or value disagreements
between the two are reported as findings too. Finally the ``spqr`` command
line runs (``verify --decode``, ``inspect --json``, in subprocesses) on a
random sample of the mutated files: a traceback, an exit code other than the
documented 0/1/2, a hang or a changed input file is a finding.

    python -m spqrfmt.conformance.fuzz --seconds 60 [--jobs N] [--mem-mb 2048] [--cli-sample 50]
        [--report FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import miniwriter as mw  # type: ignore[no-redef]
    import refreader  # type: ignore[no-redef]
    from hashing import sha256_of  # type: ignore[no-redef]
else:
    from . import miniwriter as mw
    from . import refreader
    from .hashing import sha256_of

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"


# ---------------------------------------------------------------- mutations

@dataclass
class Case:
    vector: str
    label: str
    data: bytes
    benign: bool = False       # only ignorable bytes changed: must decode exactly as the golden output


def _layout(blob: bytes) -> tuple[int, int, list[tuple[int, int]], dict[str, Any]]:
    """(header_length, data_start, covered byte ranges in the file, header) of a valid file."""
    f = refreader.RefFile(blob)
    hl = struct.unpack_from("<Q", blob, 16)[0]
    spans = [(f.data_start + s.offset, f.data_start + s.offset + s.length)
             for r in f.tensors.values() for s in r.sections.values() if s.length]
    return hl, f.data_start, spans, f.header


def _relayout(blob: bytes, header: Any, *, fix_crc: bool = True) -> bytes:
    """Re-encode a (possibly type-confused) header and keep the data section bytes."""
    hl = struct.unpack_from("<Q", blob, 16)[0]
    d0 = (32 + hl + 63) & ~63
    hb = mw.packb(header)
    crc = zlib.crc32(hb) if fix_crc else struct.unpack_from("<I", blob, 12)[0]
    data = blob[d0:]
    pre = blob[:12] + struct.pack("<IQQ", crc, len(hb), len(data))
    return pre + hb + bytes(((32 + len(hb) + 63) & ~63) - 32 - len(hb)) + data


INTERESTING = [0, 1, -1, 63, 64, 65, 255, 256, 65535, 65536, 65537, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
               (1 << 40) + 1, (1 << 63) - 1, (1 << 64) - 1, -(1 << 63)]
CONFUSED = [None, True, False, "", "x" * 300, b"\x00", 1.5, float("nan"), [], {}, [0] * 20, {"a": 1}, "f32",
            "u16", -1, 0, (1 << 64) - 1]


def _nodes(obj: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nodes(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _nodes(v, (*path, i))
    return out


def _set(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return obj


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


# Version-dependent params of spqr (spqr.md §8.2) and quip (quip.md §10.1) with valid and near-miss values.
VERSION_PARAMS: dict[str, list[tuple[str, list[Any]]]] = {
    "spqr": [("arith", ["f32", "f16", "F16", "bf16", 16, None, b"f16"]),
             ("outlier_op", ["replace", "add", "sub", "Add", True, ["add"]])],
    "quip": [("codebook", ["grid", "e8p12", "E8P12", "", 7, None, b"grid"]),
             ("bits", [1, 2, 3, 8, 0, 9, None, True])],
}


def _packed_roles(t: dict[str, Any]) -> list[str]:
    """Sections in the packed-rows layout of spqr.md §4 (whose padding bits readers ignore)."""
    if t.get("codec") == "spqr":
        return [r for r in ("codes", "scale_codes", "zero_codes") if r in t["sections"]]
    if t.get("codec") == "squeezellm" or (t.get("codec") == "quip" and t["params"].get("codebook", "grid") == "grid"):
        return ["codes"] if "codes" in t["sections"] else []
    return []


def mutate(rng: random.Random, name: str, blob: bytes) -> Case:
    """One random mutation of a valid file."""
    hl, d0, spans, header = _layout(blob)
    kind = rng.choice(["bitflip", "bytes", "truncate", "append", "header_value", "geometry", "restamp",
                       "benign_padding", "benign_rowpad", "benign_minor", "preamble", "codec_version",
                       "version_params"])
    b = bytearray(blob)
    if kind == "bitflip":
        for _ in range(rng.choice([1, 1, 2, 8])):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return Case(name, kind, bytes(b))
    if kind == "bytes":
        for _ in range(rng.choice([1, 4, 16])):
            i = rng.randrange(len(b))
            b[i] = rng.choice([0x00, 0xFF, 0x7F, 0x80, 0xC1, 0xDD, 0xDF, 0xC7, rng.randrange(256)])
        return Case(name, kind, bytes(b))
    if kind == "truncate":
        return Case(name, kind, bytes(b[:rng.randrange(len(b))]))
    if kind == "append":
        return Case(name, kind, bytes(b) + bytes(rng.randrange(1, 130)))
    if kind == "header_value":
        h = _copy(header)
        path = rng.choice(_nodes(h))
        h = _set(h, path, rng.choice(CONFUSED + INTERESTING))
        return Case(name, f"{kind}:{'/'.join(map(str, path))[:60]}", _relayout(blob, h, fix_crc=rng.random() < 0.9))
    if kind == "geometry":
        h = _copy(header)
        secs = [(t, r) for t in h["tensors"] for r in t["sections"]]
        if not secs:
            return Case(name, "geometry:none", bytes(b[:-1] if b else b))
        t, role = rng.choice(secs)
        key = rng.choice(["offset", "length", "shape", "crc32", "dtype"])
        s = t["sections"][role]
        if key == "shape":
            s["shape"] = rng.choice([[rng.choice(INTERESTING)], s["shape"] + [2], [], [1 << 20, 1 << 20]])
        elif key == "dtype":
            s["dtype"] = rng.choice(list(refreader.DTYPES))
        else:
            s[key] = rng.choice([rng.choice(INTERESTING), s[key] + 64, s[key] - 64, s[key] + 1])
        return Case(name, f"geometry:{key}", _relayout(blob, h))
    if kind == "restamp" and spans:
        # change bytes inside one section and fix its CRC so content checks (CSR, perm, ...) are reached
        h = _copy(header)
        secs = [(t, r) for t in h["tensors"] for r in t["sections"] if t["sections"][r]["length"]]
        t, role = rng.choice(secs)
        s = t["sections"][role]
        start = d0 + s["offset"]
        for _ in range(rng.choice([1, 2, 8])):
            i = start + rng.randrange(s["length"])
            b[i] = rng.choice([0, 0xFF, rng.randrange(256)])
        s["crc32"] = zlib.crc32(bytes(b[start:start + s["length"]]))
        return Case(name, f"restamp:{role}", _relayout(bytes(b), h))
    if kind == "benign_padding":
        covered = set()
        for a, e in spans:
            covered.update(range(a, e))
        free = [i for i in range(32 + hl, len(b)) if i not in covered]
        if not free:
            return Case(name, "benign_minor", bytes(b[:10]) + struct.pack("<H", rng.randrange(65536)) + bytes(b[12:]),
                        True)
        for _ in range(rng.choice([1, 8, 64])):
            b[rng.choice(free)] = rng.randrange(256)
        return Case(name, kind, bytes(b), True)
    if kind in ("codec_version", "version_params"):
        # spqr / quip versions 1 and 2 share sections but not params: a version or a param edited without
        # the other must be rejected (or decoded) identically by both readers (CRC re-stamped)
        h = _copy(header)
        quant = [t for t in h["tensors"] if t.get("codec") in VERSION_PARAMS]
        if not quant:
            return Case(name, "benign_minor", bytes(b[:10]) + struct.pack("<H", rng.randrange(65536)) + bytes(b[12:]),
                        True)
        t = rng.choice(quant)
        if kind == "codec_version":
            t["codec_version"] = rng.choice([v for v in (1, 2, 3) if v != t["codec_version"]])
            label = f"codec_version:{t['codec']}->{t['codec_version']}"
        else:
            key, values = rng.choice(VERSION_PARAMS[t["codec"]])
            if key in t["params"] and rng.random() < 0.3:
                del t["params"][key]
                label = f"version_params:{t['codec']}:-{key}"
            else:
                t["params"][key] = rng.choice(values)
                label = f"version_params:{t['codec']}:{key}"
        return Case(name, label, _relayout(blob, h))
    if kind == "benign_rowpad":
        h = _copy(header)
        packed = [(t, r) for t in h["tensors"] for r in _packed_roles(t)]
        if not packed:
            return Case(name, "benign_minor", bytes(b[:10]) + struct.pack("<H", rng.randrange(65536)) + bytes(b[12:]),
                        True)
        t, role = rng.choice(packed)
        s = t["sections"][role]
        rows, words = s["shape"]
        m, n = t["shape"]
        p = t["params"]
        count, k = (n, p["bits"]) if role == "codes" else (m, p["scale_bits" if role == "scale_codes" else "zero_bits"])
        used = count * k
        start = d0 + s["offset"]
        for r in range(rows):
            row_off = start + 4 * words * r
            for bit in range(used, 32 * words):
                if rng.random() < 0.5:
                    b[row_off + bit // 8] |= 1 << (bit % 8)
        s["crc32"] = zlib.crc32(bytes(b[start:start + s["length"]]))
        return Case(name, f"benign_rowpad:{role}", _relayout(bytes(b), h), True)
    if kind == "benign_minor":
        return Case(name, kind, bytes(b[:10]) + struct.pack("<H", rng.randrange(65536)) + bytes(b[12:]), True)
    # preamble fields
    field_ = rng.choice([(8, "<H"), (12, "<I"), (16, "<Q"), (24, "<Q")])
    val = rng.choice(INTERESTING + [hl + 1, hl - 1, len(b)])
    fmt = field_[1]
    val &= (1 << (8 * struct.calcsize(fmt))) - 1
    struct.pack_into(fmt, b, field_[0], val)
    return Case(name, f"preamble@{field_[0]}", bytes(b))


# ---------------------------------------------------------------- worker side

def _init_worker(mem_bytes: int) -> None:
    import spqrfmt  # noqa: F401 - import (and JIT warm-up) before the limit, so the limit measures decoding
    warm = next(VECTORS_DIR.glob("valid/spqr_bits3.spqr"), None)
    if warm is not None:
        with spqrfmt.open(warm) as f:
            for t in f.tensors.values():
                t.decode()
    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))


def _verdict_library(path: str) -> dict[str, Any]:
    import spqrfmt

    try:
        with spqrfmt.open(path) as f:
            out = {}
            for name, t in f.tensors.items():
                try:
                    arr = t.decode()
                    out[name] = sha256_of(arr, t.codec != "raw")
                except spqrfmt.SpqrFormatError as e:
                    out[name] = "!" + str(getattr(e.code, "value", e.code))
            return {"ok": out}
    except spqrfmt.SpqrFormatError as e:
        return {"error": str(getattr(e.code, "value", e.code))}


def _verdict_ref(path: str) -> dict[str, Any]:
    try:
        f = refreader.open_file(path)
        out = {}
        for name, rec in f.tensors.items():
            try:
                out[name] = sha256_of(f.decode(name), rec.codec != "raw")
            except refreader.RefError as e:
                out[name] = "!" + e.code
        return {"ok": out}
    except refreader.RefError as e:
        return {"error": e.code}


def run_case(data: bytes, with_ref: bool) -> dict[str, Any]:
    """In the worker: library (and refreader) verdicts, or what went wrong."""
    fd, path = tempfile.mkstemp(suffix=".spqr")
    try:
        os.write(fd, data)
        os.close(fd)
        res: dict[str, Any] = {}
        for who, fn in (("library", _verdict_library), ("refreader", _verdict_ref)):
            if who == "refreader" and not with_ref:
                continue
            try:
                res[who] = fn(path)
            except MemoryError:
                res[who] = {"crash": "MemoryError (allocation beyond the RLIMIT_AS bound)"}
            except RecursionError:
                res[who] = {"crash": "RecursionError"}
            except Exception:  # noqa: BLE001 - everything else is a crash by definition
                res[who] = {"crash": traceback.format_exc(limit=4)}
        return res
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


# ---------------------------------------------------------------- the command line on mutated files

CLI_EXIT_CODES = (0, 1, 2)  # spqrfmt/cli/__init__.py: success, a rule of the spec broken, usage error / missing input


def spqr_command() -> list[str]:
    """``spqr`` run by this interpreter, so the check does not depend on PATH."""
    return [sys.executable, "-m", "spqrfmt.cli"]


def _cli_problem(argv: list[str], timeout: float, cwd: str) -> str | None:
    """None if the command ended with a documented exit code and no traceback, else what went wrong."""
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)
    except subprocess.TimeoutExpired:
        return f"no exit within {timeout} s"
    err = p.stderr.decode("utf-8", "replace")
    if p.returncode not in CLI_EXIT_CODES:
        return f"exit status {p.returncode}: {err[-600:]}"
    if "Traceback (most recent call last)" in err:
        return f"traceback (exit {p.returncode}): {err[-600:]}"
    return None


def fuzz_cli(cases: list[Case], *, jobs: int = 2, timeout: float = 60.0,
             cmd: list[str] | None = None) -> list[dict[str, Any]]:
    """Run ``spqr verify --decode`` (all files in one process; each file alone only if that fails) and
    ``spqr inspect --json`` (one process per file, ``jobs`` at a time) on the cases' bytes.

    Returns one finding per traceback, exit code other than 0/1/2, hang, or input file changed;
    ``index`` is the position of its case in ``cases``.
    """
    cmd = cmd or spqr_command()
    found: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="spqr-fuzz-cli-") as d:
        paths = [Path(d) / f"case{i:04d}.spqr" for i in range(len(cases))]
        for c, p in zip(cases, paths, strict=True):
            p.write_bytes(c.data)

        def one(argv: list[str]) -> str | None:
            return _cli_problem(argv, timeout, d)

        def note(i: int, what: str, detail: str) -> None:
            found.append({"index": i, "vector": cases[i].vector, "mutation": cases[i].label, "what": what,
                          "detail": detail})

        with ThreadPoolExecutor(max(1, jobs)) as ex:
            inspect = ex.map(lambda p: one([*cmd, "inspect", "--json", str(p)]), paths)
            if cases and one([*cmd, "verify", "--decode", *map(str, paths)]) is not None:
                for i, problem in enumerate(ex.map(lambda p: one([*cmd, "verify", "--decode", str(p)]), paths)):
                    if problem is not None:
                        note(i, "cli-verify", problem)
            for i, problem in enumerate(inspect):
                if problem is not None:
                    note(i, "cli-inspect", problem)
        for i, (c, p) in enumerate(zip(cases, paths, strict=True)):
            if p.read_bytes() != c.data:
                note(i, "cli-modified-input", "a read-only command changed its input file")
    return found


def seed_files(manifest: dict[str, Any], vectors: Path) -> list[tuple[str, bytes]]:
    """(path, bytes) of the valid single-file vectors the fuzzer mutates; a split set (SPEC §12) is several
    files, whose one-file mutations the single-file vectors already cover."""
    return [(e["file"], (vectors / e["file"]).read_bytes()) for e in manifest["vectors"]
            if e["kind"] == "valid" and "split" not in e]


def mutated_cases(count: int, *, seed: int = 0, vectors: Path = VECTORS_DIR) -> list[Case]:
    """``count`` deterministic mutations of the valid vectors (what the fuzzer feeds its workers)."""
    manifest = json.loads((vectors / "manifest.json").read_text())
    sources = seed_files(manifest, vectors)
    rng = random.Random(seed)
    return [mutate(rng, *rng.choice(sources)) for _ in range(count)]


# ---------------------------------------------------------------- driver

@dataclass
class Stats:
    cases: int = 0
    decoded: int = 0
    rejected: int = 0
    benign_checked: int = 0
    granularity: int = 0
    seconds: float = 0.0
    cli_files: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)


# SPEC §10 stage 4 (header structure): the only stage where two readers may name different codes.
STAGE4 = frozenset({"BAD_HEADER", "BAD_METADATA", "LIMIT_EXCEEDED", "BAD_NAME", "DUPLICATE_NAME", "BAD_DTYPE",
                    "BAD_SHAPE", "SHAPE_OVERFLOW", "SECTION_LENGTH_MISMATCH", "SECTION_MISALIGNED",
                    "SECTION_OUT_OF_BOUNDS", "SECTION_OVERLAP"})


def _compare(lib: dict[str, Any], ref: dict[str, Any]) -> str | None:
    """How two verdicts on the same bytes differ: None (agree) or a finding name.

    SPEC §10 makes the code unique except within stage 4, so a file-level
    code may differ only when both codes are stage-4 codes, and a per-tensor
    code (stage 5, fixed order) never.
    """
    if "error" in lib and "error" in ref:
        a, b = lib["error"], ref["error"]
        return None if a == b or (a in STAGE4 and b in STAGE4) else "disagree-code"
    if "error" in lib or "error" in ref:
        opened = ref["ok"] if "error" in lib else lib["ok"]
        return "disagree-stage" if any(v.startswith("!") for v in opened.values()) else "disagree-accept"
    for name in set(lib["ok"]) | set(ref["ok"]):
        a, b = lib["ok"].get(name), ref["ok"].get(name)
        if a is None or b is None:
            return "disagree-tensors"
        if a.startswith("!") != b.startswith("!"):
            return "disagree-tensor-accept"
        if a != b:
            return "disagree-tensor-code" if a.startswith("!") else "disagree-values"
    return None


def _expected(manifest: dict[str, Any], vector: str) -> dict[str, str]:
    e = next(v for v in manifest["vectors"] if v["file"] == vector)
    return {n: (t["sha256"] if "sha256" in t else "!" + t["error"]) for n, t in e["tensors"].items()}


def fuzz(seconds: float = 60.0, *, jobs: int = 2, seed: int = 0, mem_mb: int = 2048, timeout: float = 10.0,
         with_ref: bool = True, out_dir: Path | None = None, max_cases: int | None = None,
         vectors: Path = VECTORS_DIR, cli_sample: int = 0) -> Stats:
    """Mutate valid vectors for ``seconds`` (or ``max_cases``), then run the CLI on ``cli_sample`` of them
    (a uniform reservoir sample); return counts and findings."""
    manifest = json.loads((vectors / "manifest.json").read_text())
    sources = seed_files(manifest, vectors)
    rng = random.Random(seed)
    stats = Stats()
    # spawn, not fork: the parent may already run OpenMP/numba threads, and forking those is unsafe
    ctx = mp.get_context("spawn")

    def new_pool() -> Any:
        return ctx.Pool(jobs, initializer=_init_worker, initargs=(mem_mb << 20,), maxtasksperchild=5000)

    pool = new_pool()
    t0 = time.perf_counter()
    pending: list[tuple[Case, Any, float]] = []
    sample: list[Case] = []

    def finding(case: Case, what: str, detail: str) -> None:
        item = {"vector": case.vector, "mutation": case.label, "what": what, "detail": detail[-800:]}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            fname = f"{what}-{len(stats.findings):04d}.spqr"
            (out_dir / fname).write_bytes(case.data)
            item["file"] = fname
        stats.findings.append(item)

    def settle(case: Case, res: dict[str, Any]) -> None:
        stats.cases += 1
        if len(sample) < cli_sample:
            sample.append(case)
        elif cli_sample and (j := rng.randrange(stats.cases)) < cli_sample:
            sample[j] = case
        stats.labels[case.label.split(":")[0]] = stats.labels.get(case.label.split(":")[0], 0) + 1
        lib = res["library"]
        for who, r in res.items():
            if "crash" in r:
                finding(case, f"crash-{who}", r["crash"])
        if "error" in lib:
            stats.rejected += 1
            stats.codes[lib["error"]] = stats.codes.get(lib["error"], 0) + 1
        elif "ok" in lib:
            stats.decoded += 1
            for v in lib["ok"].values():
                if v.startswith("!"):
                    stats.codes["tensor:" + v[1:]] = stats.codes.get("tensor:" + v[1:], 0) + 1
        if case.benign:
            stats.benign_checked += 1
            for who, r in res.items():
                if r.get("ok") != _expected(manifest, case.vector):
                    finding(case, f"benign-mismatch-{who}", json.dumps(r)[:600])
        ref = res.get("refreader")
        if ref is not None and "crash" not in lib and "crash" not in ref:
            what = _compare(lib, ref)
            if what == "disagree-stage":  # one reader rejects the file, the other only a tensor
                stats.granularity += 1
            if what is not None:
                finding(case, what, f"library {json.dumps(lib)[:300]} refreader {json.dumps(ref)[:300]}")

    try:
        while True:
            elapsed = time.perf_counter() - t0
            done_budget = elapsed >= seconds or (max_cases is not None and stats.cases + len(pending) >= max_cases)
            while not done_budget and len(pending) < 4 * jobs:
                name, blob = rng.choice(sources)
                case = mutate(rng, name, blob)
                pending.append((case, pool.apply_async(run_case, (case.data, with_ref)), time.perf_counter()))
                done_budget = max_cases is not None and stats.cases + len(pending) >= max_cases
            if not pending:
                break
            case, fut, started = pending[0]
            try:
                res = fut.get(timeout=max(0.01, timeout - (time.perf_counter() - started)))
            except mp.TimeoutError:
                finding(case, "hang", f"no result within {timeout} s")
                stats.cases += 1
                pool.terminate()
                retry = [(c, f) for c, f, _ in pending[1:]]
                pool = new_pool()
                pending = [(c, pool.apply_async(run_case, (c.data, with_ref)), time.perf_counter()) for c, _ in retry]
                continue
            except Exception as e:  # noqa: BLE001 - a worker killed by the OS (e.g. a segfault)
                finding(case, "worker-died", repr(e))
                stats.cases += 1
                pending.pop(0)
                continue
            pending.pop(0)
            settle(case, res)
    finally:
        pool.terminate()
        pool.join()
    for item in fuzz_cli(sample, jobs=jobs, timeout=max(timeout, 60.0)):
        finding(sample[item["index"]], item["what"], item["detail"])
    stats.cli_files = len(sample)
    stats.seconds = time.perf_counter() - t0
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spqrfmt.conformance.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-cases", type=int)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mem-mb", type=int, default=2048, help="RLIMIT_AS of each worker (MiB)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--no-refreader", action="store_true", help="fuzz the library only (faster)")
    ap.add_argument("--out", type=Path, help="write every finding's input file here")
    ap.add_argument("--report", type=Path, help="JSON summary")
    ap.add_argument("--cli-sample", type=int, default=50,
                    help="run `spqr verify --decode` and `spqr inspect --json` on this many of the mutated files")
    args = ap.parse_args(argv)
    s = fuzz(args.seconds, jobs=args.jobs, seed=args.seed, mem_mb=args.mem_mb, timeout=args.timeout,
             with_ref=not args.no_refreader, out_dir=args.out, max_cases=args.max_cases, cli_sample=args.cli_sample)
    rate = s.cases / s.seconds * 60 if s.seconds else 0.0
    print(f"{s.cases} mutated files in {s.seconds:.1f} s ({rate:.0f}/min, {args.jobs} workers): "
          f"{s.decoded} opened, {s.rejected} rejected cleanly, {s.benign_checked} benign mutations checked exactly, "
          f"{s.granularity} file-vs-tensor-level differences, CLI run on {s.cli_files}, {len(s.findings)} findings")
    print("reject codes:", ", ".join(f"{k} {v}" for k, v in sorted(s.codes.items(), key=lambda kv: -kv[1])))
    for f in s.findings[:20]:
        print(f"FINDING {f['what']} {f['vector']} {f['mutation']}: {f['detail'].strip().splitlines()[-1][:200]}")
    if args.report:
        args.report.write_text(json.dumps({"rate_per_min": rate, **s.__dict__}, indent=1, default=str) + "\n")
    return 1 if s.findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
