"""Benchmark of the spqr Triton kernels against fp16 cuBLAS and torch's int4 tinygemm on one GPU.

For each shape (m x n) and config (b-bit codes, β1 = 16, 3-bit two-level stats
with β2 = 16, 1% outliers) it times, in one process: fp16 `F.linear`, the peer a
PyTorch user has for free (`torch._weight_int4pack_mm`, group 128, bf16
activations, as gpt-fast/torchao use it) and the fused SpQR matvec (tiled
resident layout, best of a small tile/split sweep, each config checked against
float64 first), at batch 1/4/16, plus the exact dequantization to f16 (the
prefill path: dequantize into a reused buffer, then cuBLAS). Sections are
synthesised on the GPU (random codes, stats and outlier positions: the kernels'
speed does not depend on the values), in the spec layout, then `prepare`d.

Timing: each variant is captured in a CUDA graph that cycles through enough
weight copies to exceed 2x the L2 cache, replayed many times; the median per
call is reported. The ceilings are measured once: device-to-device copy (bytes
read + written), read bandwidth (a sum over 2 GiB) and an 8192^3 bf16 GEMM.

    python bench/bench_kernels.py [--out DIR] [--quick] [--shapes MxN ...] [--bits 3 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from spqrfmt.kernels import spqr as ks
from spqrfmt.kernels.tune import graph_time  # also what the scripts beside this one import from here

SHAPES = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (8192, 28672), (28672, 8192)]
BITS = [3, 4]
# tiled-layout sweep (every tile shape is a Triton compilation; shapes are runtime values, so configs are
# compiled once and reused across shapes). batch 1: (BM, NU units of 32 columns, num_warps); batch > 1 likewise.
# (BM, NU, num_warps, half2)
B1_SWEEP = [(64, 8, 4, True), (128, 4, 4, True), (256, 4, 8, True), (16, 32, 4, True)]
BN_SWEEP = [(64, 8, 4, True), (128, 4, 4, True), (64, 4, 4, True), (128, 2, 8, True)]
SPLITS = {1: [None, 8], 4: [None, 8], 16: [None, 4]}
# batch 16 (the f16x2-decode dot path; half2=False is the f32 decode):
# (BM, NU, num_warps, half2, split, stages, epr, prefetch)
B16_SWEEP = [(64, 4, 4, True, 4, 1, None, False), (64, 4, 4, True, 4, 1, None, True),
             (64, 4, 4, True, 8, 1, None, True), (64, 4, 4, True, None, 1, None, True),
             (64, 4, 4, True, 4, 2, None, True), (64, 4, 4, True, 4, 1, 8, True), (128, 4, 8, True, 4, 1, None, True),
             (64, 8, 4, True, 4, 1, None, True), (64, 4, 4, False, 4, 1, None, True),
             (64, 2, 4, True, 8, 1, None, True), (64, 2, 4, True, 16, 1, None, True)]


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def ceilings() -> dict[str, float]:
    nbytes = 2 << 30
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = graph_time([lambda a=a, b=b: b.copy_(a)], reps=5, iters=10)
    del b
    f = a.view(torch.float32)
    tr = graph_time([lambda f=f: f.sum()], reps=5, iters=10)
    del a, f
    x = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    y = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    tg = graph_time([lambda x=x, y=y: x @ y], reps=5, iters=10)
    return {"copy_GBps": 2 * nbytes / t / 1e9, "read_GBps": nbytes / tr / 1e9, "bf16_TFLOPs": 2 * 8192**3 / tg / 1e12}


def int4_weights(m: int, n: int, gs: int = 128) -> tuple[torch.Tensor, torch.Tensor] | None:
    """torch's int4 tinygemm operands (gpt-fast / torchao layout), or None where this torch lacks them."""
    try:
        q = torch.randint(0, 16, (m, n), dtype=torch.int32, device="cuda")
        packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        w = torch._convert_weight_to_int4pack(packed, 8)
        sz = torch.rand((n // gs, m, 2), dtype=torch.bfloat16, device="cuda") * 0.01
        return w, sz
    except Exception as e:  # noqa: BLE001 - a torch build without the op
        print("int4 tinygemm unavailable:", repr(e)[:200], flush=True)
        return None


def check_matvec(prep: ks.PreparedSpQR, x: torch.Tensor, cfg: ks.MatvecConfig) -> float:
    """‖fused − W·x‖ / ‖W·x‖ against float64 on the exact dequantized W (a guard on every timed config)."""
    w = ks.dequantize_prepared(prep, torch.float32).double()
    ref = x.double() @ w.T
    y = ks.matvec(prep, x, config=cfg).double()
    return float((y - ref).norm() / ref.norm())



def synth_sections(m: int, n: int, bits: int, gs: int = 16, sbits: int = 3, b2: int = 16,
                   outlier_frac: float = 0.01, seed: int = 0) -> tuple[dict, dict]:
    """Random spec-layout sections on the GPU (codes, 3-bit two-level stats, ~1% outliers per row)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def words(rows: int, cols: int, k: int) -> torch.Tensor:
        w = cdiv(cols * k, 32)
        t = torch.randint(-2**31, 2**31 - 1, (rows, w), dtype=torch.int32, device="cuda", generator=gen)
        pad = w * 32 - cols * k
        if pad:
            t[:, -1] &= (1 << (32 - pad)) - 1
        return t

    G, K = cdiv(n, gs), cdiv(m, b2)
    sec = {"codes": words(m, n, bits)}
    qmax = (1 << sbits) - 1
    for which, lo, hi in (("scale", 1e-3, 1e-2), ("zero", 0.9, 1.1)):
        sec[f"{which}_codes"] = words(G, m, sbits)
        sec[f"{which}_scale"] = (torch.rand((G, K), device="cuda", generator=gen) * (hi - lo) + lo).half()
        sec[f"{which}_zero"] = (torch.rand((G, K), device="cuda", generator=gen) * qmax / 4).half()
    k = max(1, int(round(n * outlier_frac)))
    seg = n // k
    cols = torch.arange(k, device="cuda") * seg + torch.randint(0, seg, (m, k), device="cuda", generator=gen)
    sec["outlier_row_ptr"] = (torch.arange(m + 1, device="cuda") * k).to(torch.int32)
    sec["outlier_col"] = cols.reshape(-1).to(torch.int32 if n > 65536 else torch.int16)
    sec["outlier_val"] = torch.randn(m * k, device="cuda", generator=gen).half()
    params = {"bits": bits, "group_size": gs, "scale_bits": sbits, "zero_bits": sbits, "stat_group_size": b2}
    return params, sec


def clone_prepared(p: ks.PreparedSpQR) -> ks.PreparedSpQR:
    kw = {}
    for f in dataclasses.fields(p):
        v = getattr(p, f.name)
        if isinstance(v, torch.Tensor):
            v = v.clone()
        elif f.name == "planes":
            v = [(w, o, t.clone()) for w, o, t in v]
        elif f.name == "sections":
            v = {k: t.clone() for k, t in v.items()}
        elif f.name == "_xidx":
            v = dict(v)
        elif f.name == "_plans":
            v = {}
        elif f.name == "_ws":
            v = {}  # its own split workspace, as every layer of a model has
        kw[f.name] = v
    return ks.PreparedSpQR(**kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true", help="first shape and 3-bit only, default configs")
    ap.add_argument("--shapes", nargs="+", default=None, metavar="MxN", help="shapes instead of the default six")
    ap.add_argument("--bits", type=int, nargs="+", default=None, help="code widths (default 3 4)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16], choices=[1, 2, 4, 8, 16])
    ap.add_argument("--budget-s", type=float, default=400.0, help="start no new shape after this many seconds")
    ap.add_argument("--layout", choices=["tiled", "grouped"], default="tiled",
                    help="resident layout of the spqr kernel (spqrfmt.kernels.spqr.prepare)")
    args = ap.parse_args(argv)
    t_start = time.time()
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    dev_name = torch.cuda.get_device_name()
    ceil = ceilings()
    print(f"device: {dev_name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MiB; "
          f"copy {ceil['copy_GBps']:.0f} GB/s (read+write), read {ceil['read_GBps']:.0f} GB/s, "
          f"bf16 GEMM {ceil['bf16_TFLOPs']:.0f} TFLOP/s", flush=True)
    rows, sweep_log = [], []
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in sh.lower().split("x")) for sh in args.shapes]
    bits_list = args.bits or ([3] if args.quick else BITS)

    def save() -> None:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_kernels.json"), "w") as f:  # partial results survive a timeout
            json.dump({"device": dev_name, "ceilings": ceil, "rows": rows, "sweep": sweep_log,
                       "command": "python bench/bench_kernels.py " + " ".join(argv or sys.argv[1:]),
                       "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)

    for (m, n) in shapes:
        if time.time() - t_start > args.budget_s:
            print(f"budget reached: {m}x{n} and later shapes skipped", flush=True)
            break
        xs = {b: torch.randn(b, n, device="cuda", dtype=torch.float16) for b in sorted({1, 4, 16, *args.batches})}
        w16 = torch.randn(m, n, device="cuda", dtype=torch.float16)
        w16s = [w16] + [w16.clone() for _ in range(max(1, cdiv(2 * l2, w16.numel() * 2)))]
        t16 = {b: graph_time([lambda w=w, x=x: F.linear(x, w) for w in w16s]) for b, x in xs.items()}
        del w16s, w16
        i4 = int4_weights(m, n)
        t4 = {b: float("nan") for b in xs}
        if i4 is not None:
            i4s = [i4] + [tuple(t.clone() for t in i4) for _ in range(max(1, cdiv(2 * l2, i4[0].numel() * 4)))]
            for b, x in xs.items():
                xb = x.to(torch.bfloat16)
                try:
                    t4[b] = graph_time([lambda w=w, xb=xb: torch._weight_int4pack_mm(xb, w[0], 128, w[1])
                                        for w in i4s])
                except Exception as e:  # noqa: BLE001
                    print("int4 tinygemm failed:", repr(e)[:200], flush=True)
            del i4s, i4
        for bits in bits_list:
            params, secs = synth_sections(m, n, bits)
            comp = ks.bytes_of(secs)
            prep = ks.prepare(params, secs, (m, n), "cuda", layout=args.layout)
            ncopy = max(1, cdiv(2 * l2, prep.resident_nbytes)) + 1
            preps = [prep] + [clone_prepared(prep) for _ in range(ncopy - 1)]
            res = {}
            for batch in args.batches:
                x = xs[batch]
                cands = [ks.default_config(prep, batch)]
                if prep.layout == "tiled" and 2 <= batch <= 4:  # the dot path (16 padded rows) vs the f16x2 FMAs
                    cands.append(dataclasses.replace(ks.default_config(prep, 16), dot_min_batch=2))
                    if batch >= ks.MatvecConfig.dot_min_batch:  # below it the default already is the FMA path
                        cands.append(dataclasses.replace(ks.default_config(prep, 2), dot_min_batch=batch + 1))
                if not args.quick and prep.layout == "tiled" and batch == 16:
                    cands += [ks.MatvecConfig(BM=c[0], NH=c[1], num_warps=c[2], half2=c[3], split=c[4],
                                              num_stages=c[5], epr=c[6], prefetch=c[7]) for c in B16_SWEEP]
                elif not args.quick and prep.layout == "tiled":
                    sweep = B1_SWEEP if batch == 1 else BN_SWEEP
                    cands += [ks.MatvecConfig(BM=c[0], NH=c[1], num_warps=c[2], half2=c[3], split=sp)
                              for c in sweep for sp in SPLITS[batch]]
                best = (float("inf"), None, float("nan"))
                for cfg in cands:
                    try:
                        err = check_matvec(prep, x, cfg)
                        t = graph_time([lambda p=p, x=x, c=cfg: ks.matvec(p, x, config=c) for p in preps])
                    except Exception as e:  # noqa: BLE001 - a config the compiler rejects
                        sweep_log.append({"m": m, "n": n, "bits": bits, "batch": batch, "cfg": str(cfg),
                                          "error": repr(e)[:300]})
                        continue
                    sweep_log.append({"m": m, "n": n, "bits": bits, "batch": batch, "cfg": str(cfg),
                                      "us": t * 1e6, "rel_err": err})
                    if not err < 4e-3:
                        print(f"  WRONG {m}x{n} b{batch} {cfg}: rel err {err:.2e}", flush=True)
                        continue
                    if t < best[0]:
                        best = (t, cfg, err)
                res[batch] = best
            try:
                buf = torch.empty((m, n), dtype=torch.float16, device="cuda")
                tdq = graph_time([lambda p=p, b=buf: ks.dequantize_stored(p, torch.float16, out=b) for p in preps[:3]],
                                 reps=6, iters=5)
            except Exception as e:  # noqa: BLE001
                print("dequant timing failed:", repr(e)[:300], flush=True)
                tdq = float("nan")
            row = {"m": m, "n": n, "bits": bits, "layout": prep.layout, "spec_bytes": comp,
                   "resident_bytes": prep.resident_nbytes, "streamed_bytes": prep.fused_nbytes,
                   "bits_per_weight": 8 * comp / (m * n), "resident_ratio": prep.resident_nbytes / comp,
                   "dequant_f16_us": tdq * 1e6}
            for b in sorted({1, 4, 16, *args.batches}):
                row[f"fp16_b{b}_us"] = t16[b] * 1e6
                row[f"int4_b{b}_us"] = t4[b] * 1e6
                r = res.get(b, (float("nan"), None, float("nan")))
                row[f"fused_b{b}_us"] = r[0] * 1e6
                row[f"fused_b{b}_cfg"] = str(r[1])
                row[f"fused_b{b}_rel_err"] = r[2]
            row["GBps_b1"] = comp / res[1][0] / 1e9 if 1 in res else float("nan")
            row["pct_read_b1"] = 100 * row["GBps_b1"] / ceil["read_GBps"]
            rows.append(row)
            print(f"  {m}x{n} {bits}-bit ({prep.layout}, {row['resident_ratio']:.3f}x spec bytes): "
                  + ", ".join(f"b{b} fused {row[f'fused_b{b}_us']:.1f} fp16 {row[f'fp16_b{b}_us']:.1f} "
                              f"int4 {row[f'int4_b{b}_us']:.1f}" for b in (1, 4, 16))
                  + f"; {row['GBps_b1']:.0f} GB/s ({row['pct_read_b1']:.0f}% of read); dequant {tdq * 1e6:.0f} us",
                  flush=True)
            save()
            del preps, prep, secs
            torch.cuda.empty_cache()

    hdr = ("| shape (m x n) | bits | bits/w | fp16 b1 µs | int4 b1 µs | spqr b1 µs | spqr vs fp16 b1 | vs int4 b1 "
           "| GB/s (% read) | spqr b4 µs (vs fp16) | spqr b16 µs (vs fp16) | int4 b16 µs | dequant f16 µs |")
    sep = "|" + "---|" * (hdr.count("|") - 1)
    lines = [f"Device: {dev_name}; copy {ceil['copy_GBps']:.0f} GB/s (read+write), read {ceil['read_GBps']:.0f} "
             f"GB/s, bf16 GEMM {ceil['bf16_TFLOPs']:.0f} TFLOP/s; CUDA-graph median per call", "", hdr, sep]
    for r in rows:
        lines.append(
            f"| {r['m']}x{r['n']} | {r['bits']} | {r['bits_per_weight']:.2f} | {r['fp16_b1_us']:.1f} | "
            f"{r['int4_b1_us']:.1f} | {r['fused_b1_us']:.1f} | {r['fp16_b1_us'] / r['fused_b1_us']:.2f}x | "
            f"{r['int4_b1_us'] / r['fused_b1_us']:.2f}x | {r['GBps_b1']:.0f} ({r['pct_read_b1']:.0f}%) | "
            f"{r['fused_b4_us']:.1f} ({r['fp16_b4_us'] / r['fused_b4_us']:.2f}x) | "
            f"{r['fused_b16_us']:.1f} ({r['fp16_b16_us'] / r['fused_b16_us']:.2f}x) | {r['int4_b16_us']:.1f} | "
            f"{r['dequant_f16_us']:.0f} |")
    table = "\n".join(lines)
    print(table)
    save()
    with open(os.path.join(args.out, "bench_kernels.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
