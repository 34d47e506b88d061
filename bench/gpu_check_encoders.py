"""GPU check of the torch data-free encoders (encoder/torch/, issue 15 item 1): identical bytes and speed on CUDA.

For each codec config (``spqr convert``'s defaults: spqr 4-bit β1=16 3-bit stats β2=16 1 % outliers, spqr
without outliers, squeezellm, quip) and shape, on one random f32 weight:

* identical: every section's bytes, the params and the dequantized matrix of
  ``encoder_for(codec, "cuda")`` against ``spqrfmt.convert.data_free_encoder``
  (the CPU encoder ``spqr convert`` runs);
* Gparam/s of the CUDA encoder: best of ``--reps`` warm runs (one warm-up
  first), timed between ``torch.cuda.synchronize()`` calls, the weight
  already on the GPU (its host->device copy excluded), the copy back of all
  sections and of the dequantized matrix included; the peak GPU memory.

``VARIANTS`` are further cases: the same codec computed another way (squeezellm
with the batched torch Lloyd loop instead of the Triton kernel; with the
torch's blocked argmin instead of the Triton assignment kernel; quip with the
Hadamard stages as torch kernels instead of one Triton kernel per side), checked and timed alike.
``--profile FILE`` appends a table of each case's operators (see below).

Every case runs in its own try/except, so one failure is reported and the rest still run; no case starts
after ``--budget-s`` seconds (Numba compiles the CPU encoders on the first cases: tens of seconds when cold).
Exit status 0 when every case ran and was identical, else 1.

    python bench/gpu_check_encoders.py --out gpu_check_encoders.json
    python bench/gpu_check_encoders.py --quick            # one small shape
    python bench/gpu_check_encoders.py --shapes 4096x4096,11008x4096 --codecs spqr
    python bench/gpu_check_encoders.py --codecs squeezellm,squeezellm/lloyd=torch   # a variant of the torch encoder
    python bench/gpu_check_encoders.py --codecs spqr --shapes 4096x4096 --profile prof.txt   # + torch.profiler

``--profile FILE`` runs one more warm encode of each case under ``torch.profiler`` and appends its
top operators by device time and by host time to FILE: where the time of a GPU encode goes (kernels,
syncs, copies back), the data for choosing what to fuse or drop.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spqrfmt.convert import QuantConfig, data_free_encoder
from spqrfmt.encoder.torch import SIGNED_ZERO_SECTIONS, differences, encoder_for

CONFIGS: dict[str, QuantConfig] = {
    "spqr": QuantConfig(),
    "spqr-no-outliers": QuantConfig(outlier_fraction=0.0),
    "squeezellm": QuantConfig(codec="squeezellm"),
    "quip": QuantConfig(codec="quip"),
}
# Other ways of computing the same bytes, each checked and timed as its own case: name -> (config, keywords).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"squeezellm/lloyd=torch": ("squeezellm", {"lloyd": "torch"}),
                                                   "squeezellm/assign=torch": ("squeezellm", {"assign": "torch"}),
                                                   "quip/kernels=torch": ("quip", {"kernels": "torch"})}
SHAPES = [(4096, 4096), (4096, 14336)]
QUICK_SHAPES = [(1024, 2048)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def variant_encoder(codec: str, kw: dict[str, Any], device: str) -> Any:
    """The codec's torch encoder with extra keywords, called as ``encoder_for``'s encoders are."""
    if codec == "quip":
        from spqrfmt.encoder.torch.quip import quantize_quip

        def enc(_name: str, w: Any, cfg: QuantConfig) -> Any:
            return quantize_quip(w, bits=cfg.options.bits, seed=cfg.options.seed, device=device, **kw)

        return enc
    from spqrfmt.encoder.torch.squeezellm import quantize_squeezellm

    def enc(_name: str, w: Any, cfg: QuantConfig) -> Any:
        o = cfg.options
        return quantize_squeezellm(w, bits=o.bits, outlier_fraction=o.outlier_fraction, max_iter=o.kmeans_iters,
                                   device=device, **kw)

    return enc


def profile(enc: Any, wd: torch.Tensor, cfg: QuantConfig, label: str, path: Path) -> None:
    """One encode under torch.profiler: its operator tables (device time, host time) appended to ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if wd.is_cuda else [])
    with torch_profile(activities=acts) as prof:
        enc("layer.weight", wd, cfg)
        sync(str(wd.device))
    table = prof.key_averages()
    dev_key = "self_cuda_time_total" if wd.is_cuda else "self_cpu_time_total"
    with path.open("a") as f:
        f.write(f"== {label}: by device time\n{table.table(sort_by=dev_key, row_limit=30)}\n")
        f.write(f"== {label}: by host time\n{table.table(sort_by='cpu_time_total', row_limit=30)}\n")


def case(name: str, shape: tuple[int, int], reps: int, device: str, prof: Path | None = None) -> dict[str, Any]:
    base, kw = VARIANTS.get(name, (name, None))
    cfg = CONFIGS[base]
    w = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    row: dict[str, Any] = {"codec": name, "shape": list(shape)}
    t0 = time.perf_counter()
    ref = data_free_encoder("layer.weight", w, cfg)
    row["cpu_seconds"] = round(time.perf_counter() - t0, 3)
    enc = encoder_for(cfg.codec, device) if kw is None else variant_encoder(cfg.codec, kw, device)
    wd = torch.from_numpy(w).to(device)
    got = enc("layer.weight", wd, cfg)  # warm-up
    diff = differences(ref, got, SIGNED_ZERO_SECTIONS if cfg.codec == "spqr" else ())
    row["identical"] = not diff
    row["only_signed_zeros"] = bool(diff) and all(d.endswith(": signed zero") for d in diff)
    row["differences"] = diff
    times = []
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        enc("layer.weight", wd, cfg)
        sync(device)
        times.append(time.perf_counter() - t0)
    best = min(times)
    if prof is not None:
        profile(enc, wd, cfg, f"{name} {shape[0]}x{shape[1]}", prof)
    row.update(seconds=round(best, 5), gparam_per_s=round(w.size / best / 1e9, 3),
               peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_check_encoders.json")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help=f"only {QUICK_SHAPES[0][0]}x{QUICK_SHAPES[0][1]}, 1 rep")
    ap.add_argument("--shapes", help="comma-separated MxN list instead of " + ",".join(f"{a}x{b}" for a, b in SHAPES))
    ap.add_argument("--codecs", default=",".join([*CONFIGS, *VARIANTS]),
                    help="comma-separated subset of " + ",".join([*CONFIGS, *VARIANTS]))
    ap.add_argument("--budget-s", type=float, default=150.0,
                    help="start no new case after this many seconds (the rest are recorded as skipped)")
    ap.add_argument("--profile", type=Path, metavar="FILE", help="append a torch.profiler table per case to FILE")
    ap.add_argument("--device", default="cuda", help="cuda (the check); cpu runs the same on the CPU (smoke test)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    reps = 1 if args.quick else args.reps
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    info = {"device": gpu, "torch": torch.__version__, "python": platform.python_version(),
            "command": " ".join(["python", "bench/gpu_check_encoders.py", *sys.argv[1:]]), "reps": reps}
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for shape in shapes:
        for name in args.codecs.split(","):
            if time.perf_counter() - start > args.budget_s:
                rows.append({"codec": name, "shape": list(shape), "skipped": "time budget spent"})
                print(f"{name:22s} {shape[0]}x{shape[1]:<6d} skipped: time budget spent", flush=True)
                continue
            try:
                row = case(name, shape, reps, args.device, args.profile)
            except Exception as e:  # report and go on with the next case
                row = {"codec": name, "shape": list(shape), "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc(limit=4)}
            rows.append(row)
            Path(args.out).write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")  # kept if killed later
            if "error" in row:
                print(f"{name:22s} {shape[0]}x{shape[1]:<6d} ERROR {row['error']}", flush=True)
            else:
                same = "yes" if row["identical"] else ("signed zeros only" if row["only_signed_zeros"] else "NO")
                print(f"{name:22s} {shape[0]}x{shape[1]:<6d} identical: {same:4s}  {row['gparam_per_s']:8.3f} Gparam/s "
                      f"({row['seconds'] * 1e3:.1f} ms; CPU encoder {row['cpu_seconds']} s; peak GPU "
                      f"{row['peak_gpu_gb']} GB){'  ' + ', '.join(row['differences']) if row['differences'] else ''}",
                      flush=True)
    Path(args.out).write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r.get("identical") for r in rows) else 1  # a skipped or failed case counts as not checked


if __name__ == "__main__":
    sys.exit(main())
