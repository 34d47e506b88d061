"""GPU check of the calibrated solver (encoder/gptq.py): the CUDA-graph block solve against the eager one.

For each shape and config (SpQR's paper recipe: 3-bit, β1 = β2 = 16, 3-bit stats, 1 % outliers; plain GPTQ
4-bit g128), on a random weight with planted large entries and the Hessian of correlated, unevenly scaled
inputs (built on the GPU):

* identical: the graph-replayed solve (the default on CUDA) against the same code run eagerly on the same GPU
  (``_Block._record`` disabled): every section's bytes and the dequantized matrix;
* decodes: the file's sections decode (``decoder.spqr.decode``, the Numba reference) bit-exactly to the
  returned dequantized matrix;
* objective: tr((W-Ŵ)H(W-Ŵ)ᵀ) / tr(WHWᵀ) of the GPU result, and of the CPU result where ``--cpu-max`` allows
  (the two differ in rounding of the updates, not in the algorithm);
* speed: seconds per layer and µs per column, graph vs eager, the first (recording) call apart, and the
  solver before this change when its file ``encoder/gptq_old.py`` is present (not part of the package).

    python bench/gpu_check_gptq.py --out gpu_check_gptq.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spqrfmt.decoder.spqr import decode
from spqrfmt.encoder import gptq
from spqrfmt.encoder.gptq import GPTQConfig, factor_hessian, quantize_gptq

CONFIGS = {"spqr-3": GPTQConfig(), "gptq-4g128": GPTQConfig.plain_gptq(4, 128)}
SHAPES = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]


def problem(m: int, n: int, seed: int, dev: str) -> tuple[np.ndarray, Any]:
    g = torch.Generator(device=dev).manual_seed(seed)
    w = torch.randn((m, n), generator=g, device=dev)
    w = torch.where(torch.rand((m, n), generator=g, device=dev) < 0.005, w * 15, w)
    k = torch.arange(n, device=dev, dtype=torch.float32)
    lag = k[:, None] - k[None, :]
    mix = torch.where(lag >= 0, 0.9 ** lag.clamp(min=0), torch.zeros_like(lag))  # AR(1)-like correlation
    x = torch.randn((2 * n, n), generator=g, device=dev) @ mix.T
    x = x * (0.1 + 2.9 * torch.rand(n, generator=g, device=dev))
    h = (2.0 / x.shape[0]) * (x.T.double() @ x.double())
    return w.cpu().numpy(), h


def rel_objective(w: np.ndarray, deq: np.ndarray, h: Any) -> float:
    wt = torch.from_numpy(w).to(h.device, torch.float64)
    d = wt - torch.from_numpy(deq).to(h.device, torch.float64)
    return float(torch.einsum("ij,jk,ik->", d, h, d) / torch.einsum("ij,jk,ik->", wt, h, wt))


def same(a: Any, b: Any) -> bool:
    if set(a.sections) != set(b.sections):
        return False
    return all(np.array_equal(np.asarray(a.sections[k]), np.asarray(b.sections[k])) for k in a.sections) and \
        np.array_equal(a.dequantized.view(np.uint32), b.dequantized.view(np.uint32))


def timed(fn: Any) -> tuple[Any, float]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    r = fn()
    torch.cuda.synchronize()
    return r, time.perf_counter() - t


def case(name: str, cfg: GPTQConfig, m: int, n: int, args: argparse.Namespace, old: Any) -> dict[str, Any]:
    w, h = problem(m, n, 0, "cuda")
    f = factor_hessian(h, cfg.percdamp, cfg.act_order, device="cuda")
    row: dict[str, Any] = {"config": name, "shape": [m, n]}
    first, row["first_s"] = timed(lambda: quantize_gptq(w, config=cfg, factor=f))  # records the graphs
    graph, row["graph_s"] = timed(lambda: quantize_gptq(w, config=cfg, factor=f))
    row["graph_solve_s"] = graph.info["solve_seconds"]  # the column loop; the rest is assembly and copies
    record = gptq._Block._record
    gptq._Block._record = lambda self: None
    gptq._BLOCKS.clear()
    try:
        eager, row["eager_s"] = timed(lambda: quantize_gptq(w, config=cfg, factor=f))
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                quantize_gptq(w, config=cfg, factor=f)
            with args.profile.open("a") as fh:
                fh.write(f"== {name} {m}x{n} eager\n")
                fh.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25) + "\n")
    finally:
        gptq._Block._record = record
        gptq._BLOCKS.clear()
    row["identical_graph_vs_eager"] = same(graph, eager) and same(first, graph)
    secs = {k: np.asarray(v) for k, v in graph.sections.items()}
    row["decodes_exactly"] = bool(np.array_equal(decode(graph.params, secs, graph.shape).view(np.uint32),
                                                 graph.dequantized.view(np.uint32)))
    row["outliers"] = graph.info["outliers"]
    row["rel_objective_gpu"] = rel_objective(w, graph.dequantized, h)
    if old is not None:
        ref, row["old_s"] = timed(lambda: old.quantize_gptq(w, config=cfg, factor=old.factor_hessian(
            h, cfg.percdamp, cfg.act_order, device="cuda")))
        row["rel_objective_old_gpu"] = rel_objective(w, ref.dequantized, h)
        row["old_outliers"] = ref.info["outliers"]
    if m * n <= args.cpu_max:
        cpu, row["cpu_s"] = timed(lambda: quantize_gptq(w, h.cpu().numpy(), cfg))
        row["rel_objective_cpu"] = rel_objective(w, cpu.dequantized, h)
        row["cpu_outliers"] = cpu.info["outliers"]
    for k in ("graph_s", "graph_solve_s", "eager_s", "old_s"):
        if k in row:
            row[k[:-2] + "_us_per_column"] = round(1e6 * row[k] / n, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default=",".join(f"{m}x{n}" for m, n in SHAPES))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--cpu-max", type=int, default=1024 * 1024, help="largest m*n also solved on the CPU")
    ap.add_argument("--profile", type=Path, help="append each case's top operators of one eager solve to FILE")
    ap.add_argument("--budget-s", type=float, default=240.0, help="start no case after this many seconds")
    args = ap.parse_args(argv)
    try:
        old = importlib.import_module("spqrfmt.encoder.gptq_old")
    except ImportError:
        old = None
    t0 = time.perf_counter()
    rows, ok = [], True
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    for m, n in shapes:
        for name in args.configs.split(","):
            if time.perf_counter() - t0 > args.budget_s:
                rows.append({"config": name, "shape": [m, n], "skipped": "budget"})
                ok = False
                continue
            try:
                row = case(name, CONFIGS[name], m, n, args, old)
                ok &= row["identical_graph_vs_eager"] and row["decodes_exactly"]
            except Exception:  # noqa: BLE001 (report every case)
                row = {"config": name, "shape": [m, n], "error": traceback.format_exc()}
                ok = False
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                    "command": "python bench/gpu_check_gptq.py " + " ".join(sys.argv[1:]),
                                    "rows": rows}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
