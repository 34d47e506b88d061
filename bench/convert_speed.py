"""CPU speed of data-free encoding and of the Numba reference decoders (issue 15; docs/scale.md).

Encode rows time ``spqrfmt.convert.data_free_encoder`` -- exactly what
``spqr convert`` runs per matrix -- on a random f32 weight, for spqr at the
default config (4-bit, β1 = 16, 3-bit statistics, β2 = 16, 1 % outliers),
spqr without outliers, squeezellm and quip at their ``spqr convert``
defaults. Decode rows time the codec's Numba decoder on the sections that
encoding produced (``decoder.*.decode``, what ``Tensor.decode`` calls after
validation) and, for spqr, ``Tensor.decode()`` from a written file. The end
to end row runs ``spqr convert`` on the bundled MiniLM checkpoint in a
subprocess, and on a synthetic bf16 checkpoint holding one matrix of each
shape (wall time with reading, encoding, writing and the read-back check;
Numba's on-disk cache warm).

Each timing is the best of ``--reps`` runs after one warm-up (so JIT
compilation is excluded); the machine is shared, so the best run is the one
least disturbed by others. The JSON records the thread count, the CPU and
the load average around the run.

    python bench/convert_speed.py                      # writes docs/results/convert_speed.json
    python bench/convert_speed.py --quick --out /tmp/x.json   # small shapes: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

from spqrfmt.convert import QuantConfig, data_free_encoder
from spqrfmt.hf.checkpoint import demo_checkpoint

SHAPES = [(4096, 4096), (4096, 14336)]
QUICK_SHAPES = [(256, 512)]
CONFIGS: dict[str, QuantConfig] = {
    "spqr": QuantConfig(),
    "spqr-no-outliers": QuantConfig(outlier_fraction=0.0),
    "squeezellm": QuantConfig(codec="squeezellm"),
    "quip": QuantConfig(codec="quip"),
}
SLOW = {"squeezellm", "quip"}  # fewer repetitions: seconds per matrix


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, float, Any]:
    """(best wall seconds, best CPU seconds of all threads, last result) of ``reps`` calls after a warm-up call.

    The warm-up absorbs JIT compilation and first-touch costs. CPU seconds
    (``time.process_time``) count only this process's threads, so on a shared
    machine they say what the code costs when it is not waiting for a core.
    """
    result = fn()
    walls, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), result


def rates(elements: int, wall: float, cpu: float, scale: float, unit: str) -> dict[str, float]:
    """The row's timing fields: wall seconds and rate, CPU seconds and rate per CPU-second."""
    return {"seconds": round(wall, 4), unit: round(elements / wall / scale, 3),
            "cpu_seconds": round(cpu, 4), f"{unit}_per_cpu_s": round(elements / cpu / scale, 3)}


def config_dict(cfg: QuantConfig) -> dict[str, Any]:
    keys = {"spqr": ("bits", "group_size", "scale_bits", "zero_bits", "stat_group_size", "outlier_fraction"),
            "squeezellm": ("bits", "outlier_fraction", "kmeans_iters"), "quip": ("bits", "seed", "quip_codebook")}
    return {"codec": cfg.codec, **{k: getattr(cfg, k) for k in keys[cfg.codec]}}


def decoder_for(codec: str) -> Callable[..., np.ndarray]:
    from spqrfmt.decoder import quip, spqr, squeezellm

    return {"spqr": spqr.decode, "squeezellm": squeezellm.decode, "quip": quip.decode}[codec]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "cpus_allowed": len(os.sched_getaffinity(0)),
            "numba_threads": numba.get_num_threads(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__}


def file_decode_row(enc: Any, shape: tuple[int, int], reps: int) -> tuple[float, float]:
    """(Wall, CPU) seconds for ``Tensor.decode()`` of a written one-tensor file (validation + mmap read + decode)."""
    import spqrfmt

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.spqr"
        with spqrfmt.Writer(path) as w:
            w.add_encoded("layer.weight", enc, "f16")
        with spqrfmt.open(path) as f:
            t = f["layer.weight"]
            return timed(t.decode, reps)[:2]


def _spqr_convert(folder: Path, out: Path, reps: int) -> float:
    """Best wall seconds of ``spqr convert FOLDER -o OUT -q`` in a subprocess (a first run warms Numba's cache)."""
    times = []
    for i in range(reps + 1):
        if out.exists():
            out.unlink()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "spqrfmt.cli", "convert", str(folder), "-o", str(out), "-q"],
                       check=True, capture_output=True)
        if i:
            times.append(time.perf_counter() - t0)
    return min(times)


def convert_e2e(reps: int, synthetic: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """``spqr convert`` end to end (read, encode, write, read-back check): the bundled MiniLM, and a synthetic
    bf16 checkpoint of one matrix per shape in ``synthetic`` (random weights)."""
    import spqrfmt

    rows = []
    with tempfile.TemporaryDirectory() as d:
        folders = [("all-MiniLM-L6-v2 (bundled)", demo_checkpoint())]
        if synthetic:
            import torch
            from safetensors.torch import save_file

            syn = Path(d) / "synthetic"
            syn.mkdir()
            gen = torch.Generator().manual_seed(0)
            save_file({f"model.layers.{i}.mlp.proj.weight": torch.randn(s, generator=gen).to(torch.bfloat16)
                       for i, s in enumerate(synthetic)}, str(syn / "model.safetensors"))
            (syn / "config.json").write_text("{}")
            folders.append(("synthetic bf16 " + " + ".join(f"{a}x{b}" for a, b in synthetic), syn))
        for label, folder in folders:
            out = Path(d) / "out.spqr"
            wall = _spqr_convert(folder, out, reps)
            with spqrfmt.open(out) as f:
                qparams = sum(t.numel for t in f.values() if t.codec != "raw")
            rows.append({"kind": "convert", "codec": "spqr", "model": label, "config": config_dict(QuantConfig()),
                         "command": "spqr convert FOLDER -o out.spqr -q", "quant_params": qparams,
                         "seconds": round(wall, 3), "mparam_per_s": round(qparams / wall / 1e6, 2)})
    return rows


def markdown(result: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """The rows as a markdown table; with ``before`` (a run of the same script on older code), a before column."""
    def key(r: dict[str, Any]) -> tuple:
        return r["kind"], r["codec"], tuple(r.get("shape", ())), r.get("api", ""), r.get("model", "")

    old = {key(r): r for r in (before or {}).get("rows", [])}
    head = "| what | codec / config | shape | " + ("before | " if before else "") + "rate | per CPU-second |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        unit, val = ("Gparam/s", "gparam_per_s") if r["kind"] == "decode" else ("Mparam/s", "mparam_per_s")
        what = {"encode": "encode", "decode": f"decode ({r.get('api')})", "convert": f"spqr convert, {r.get('model')}"}
        shape = "x".join(map(str, r["shape"])) if "shape" in r else f"{r['quant_params'] / 1e6:.1f}M params"
        cells = [what[r["kind"]], r["codec"], shape]
        if before:
            b = old.get(key(r))
            cells.append(f"{b[val]} {unit}" if b else "-")
        cells.append(f"**{r[val]}** {unit}")
        cells.append(f"{r[val + '_per_cpu_s']} {unit}" if val + "_per_cpu_s" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/results/convert_speed.json")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small shapes and 1 repetition (checks the script)")
    ap.add_argument("--codecs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--shapes", help="comma-separated MxN list instead of " + ",".join(f"{a}x{b}" for a, b in SHAPES))
    ap.add_argument("--no-convert", action="store_true", help="skip the end-to-end spqr convert rows")
    ap.add_argument("--markdown", nargs="+", metavar="JSON",
                    help="print the table of a result file (and a before column from a second one), run nothing")
    args = ap.parse_args()
    if args.markdown:
        files = [json.loads(Path(p).read_text()) for p in args.markdown]
        print(markdown(files[0], files[1] if len(files) > 1 else None))
        return
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    reps = 1 if args.quick else args.reps
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)  # the log keeps every row even if the run is cut short
        if "shape" in row:
            unit = "Gparam/s" if row["kind"] == "decode" else "Mparam/s"
            val = "gparam_per_s" if row["kind"] == "decode" else "mparam_per_s"
            print(f"  {row['kind']} {row['codec']} {'x'.join(map(str, row['shape']))} {row.get('api', '')}: "
                  f"{row[val]} {unit} wall, {row[val + '_per_cpu_s']} {unit} per CPU-second", flush=True)

    info = {"machine": machine(), "loadavg_start": os.getloadavg(), "reps": reps,
            "command": " ".join(["python", "bench/convert_speed.py", *sys.argv[1:]])}
    rng = np.random.default_rng(0)
    for shape in shapes:
        w = rng.standard_normal(shape, dtype=np.float32)
        for name in args.codecs.split(","):
            cfg = CONFIGS[name]
            r = max(1, reps // 3) if name in SLOW else reps
            enc_s, enc_c, enc = timed(lambda w=w, cfg=cfg: data_free_encoder("layer.weight", w, cfg), r)
            base = {"codec": name, "shape": list(shape), "config": config_dict(cfg),
                    "threads": numba.get_num_threads()}
            add({"kind": "encode", **base, **rates(w.size, enc_s, enc_c, 1e6, "mparam_per_s")})
            if name == "spqr-no-outliers":
                continue
            decode = decoder_for(cfg.codec)
            params = dict(enc.params)
            dec_s, dec_c, _ = timed(lambda decode=decode, enc=enc, params=params:
                                    decode(params, enc.sections, enc.shape), reps)
            add({"kind": "decode", **base, "api": f"decoder.{cfg.codec}.decode",
                 **rates(w.size, dec_s, dec_c, 1e9, "gparam_per_s")})
            if name == "spqr":
                fs, fc = file_decode_row(enc, shape, reps)
                add({"kind": "decode", **base, "api": "Tensor.decode (file)",
                     **rates(w.size, fs, fc, 1e9, "gparam_per_s")})
    for row in [] if args.no_convert else convert_e2e(max(1, reps // 2), [] if args.quick else shapes):
        add({**row, "threads": numba.get_num_threads()})
    info["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
