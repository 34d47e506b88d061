"""Benchmark of the spqr Triton kernels against fp16 cuBLAS on one GPU.

For each shape (m x n) and config (b-bit codes, β1 = 16, 3-bit two-level stats
with β2 = 16, 1% outliers) it times: fp16 GEMV (F.linear, batch 1), the fused
SpQR matvec at batch 1/4/16 (after a small tile/split sweep), fp16 at batch 16,
and dequantize + fp16 matmul at batch 16. Sections are synthesised directly
on the GPU (random codes, stats and outlier positions: the kernels' speed does
not depend on the values), in the spec layout, then `prepare`d.

Timing: each variant is captured in a CUDA graph that cycles through enough
weight copies to exceed 2x the L2 cache, replayed many times; the median per
call is reported. The device-to-device copy bandwidth (bytes read + written)
and a bf16 GEMM are measured once as the ceilings.

    python bench/bench_kernels.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from spqrfmt.kernels import spqr as ks

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 28672)]
BITS = [4, 3, 2]
# Grouped-kernel sweep (kept small: every tile shape is a new Triton compilation).
# batch 1: (BM, NG, num_warps, x_inline), NG = β1-groups per tile; the H100 favoured these in a wider sweep
FMA_SWEEP = [(16, 32, 4, False), (64, 16, 4, False), (16, 32, 4, True), (64, 16, 4, True)]
# batch 2..16: (BM, NG, num_warps, tile_dot)
BATCH_SWEEP = [(64, 16, 4, False), (32, 8, 4, True), (64, 4, 4, True)]
SPLITS = {1: [None, 1, 16], 4: [None, 4], 16: [None, 4]}


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def graph_time(fns: list, reps: int = 20, iters: int = 15) -> float:
    """Median seconds per call of a CUDA graph running fns round-robin `reps` times."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fns[i % len(fns)]()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3 / reps)
    del g
    return statistics.median(ts)


def ceilings() -> dict[str, float]:
    nbytes = 2 << 30
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = graph_time([lambda a=a, b=b: b.copy_(a)], reps=5, iters=10)
    del a, b
    x = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    y = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    tg = graph_time([lambda x=x, y=y: x @ y], reps=5, iters=10)
    return {"copy_GBps": 2 * nbytes / t / 1e9, "bf16_TFLOPs": 2 * 8192**3 / tg / 1e12}


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
        kw[f.name] = v
    return ks.PreparedSpQR(**kw)


def diagnose(preps: list, x: torch.Tensor, cfg: ks.MatvecConfig) -> dict[str, float]:
    """Batch-1 time with parts removed, to see what the fused kernel spends its time on."""
    out = {}
    variants = {
        "no_outliers": lambda p: dataclasses.replace(
            p, o_row_ptr=torch.zeros_like(p.o_row_ptr), o_col=p.o_col[:0], o_delta=p.o_delta[:0],
            sections=dict(p.sections, outlier_val=p.sections["outlier_val"][:0])),
    }
    for name, mk in variants.items():
        vs = [mk(p) for p in preps]
        out[name] = graph_time([lambda p=p: ks.matvec(p, x, config=cfg) for p in vs]) * 1e6
    out["dequant_f16_us"] = graph_time([lambda p=p: ks.dequantize_prepared(p, torch.float16) for p in preps],
                                       reps=4, iters=5) * 1e6
    vs = [variants["no_outliers"](p) for p in preps]
    out["dequant_f16_no_outliers_us"] = graph_time(
        [lambda p=p: ks.dequantize_prepared(p, torch.float16) for p in vs], reps=4, iters=5) * 1e6
    if preps[0].layout == "planes":
        out["x_gather_only"] = graph_time(
            [lambda: x.index_select(1, preps[0].x_index(cfg.NH * preps[0].unit))]) * 1e6
    try:
        from spqrfmt.kernels import _gemv as kg
        from spqrfmt.kernels import _triton as kt
        for kfn in (kt.fused_kernel, kg.gemv_kernel):
            for cache in kfn.device_caches.values():
                for key, kern in cache[0].items():
                    out.setdefault("compiled", []).append(
                        {"regs": kern.n_regs, "spills": kern.n_spills, "key": str(key)[:300]})
    except Exception as e:  # introspection API differs between Triton versions
        out["compiled"] = repr(e)[:200]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true", help="first shape and 3-bit only, no sweep")
    ap.add_argument("--shapes", nargs="+", default=None, metavar="MxN", help="shapes instead of the default four")
    ap.add_argument("--bits", type=int, nargs="+", default=None, help="code widths (default 4 3 2)")
    ap.add_argument("--no-diag", action="store_true", help="skip the breakdown of the last 3-bit row")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16], choices=[1, 4, 16])
    ap.add_argument("--no-compare", action="store_true", help="skip the planes-layout and code-stats timings")
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    dev_name = torch.cuda.get_device_name()
    ceil = ceilings()
    print(f"device: {dev_name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MiB; "
          f"copy {ceil['copy_GBps']:.0f} GB/s (read+write), bf16 GEMM {ceil['bf16_TFLOPs']:.0f} TFLOP/s", flush=True)
    rows, sweep_log = [], []
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in sh.lower().split("x")) for sh in args.shapes]
    bits_list = args.bits or ([3] if args.quick else BITS)
    for (m, n) in shapes:
        w16 = torch.randn(m, n, device="cuda", dtype=torch.float16)
        ncopy16 = max(1, cdiv(2 * l2, w16.numel() * 2)) + 1
        w16s = [w16] + [w16.clone() for _ in range(ncopy16 - 1)]
        x1 = torch.randn(1, n, device="cuda", dtype=torch.float16)
        x4 = torch.randn(4, n, device="cuda", dtype=torch.float16)
        x16 = torch.randn(16, n, device="cuda", dtype=torch.float16)
        t16 = {b: graph_time([lambda w=w, x=x: F.linear(x, w) for w in w16s])
               for b, x in ((1, x1), (4, x4), (16, x16))}
        del w16s
        for bits in bits_list:
            params, secs = synth_sections(m, n, bits)
            comp = ks.bytes_of(secs)
            prep = ks.prepare(params, secs, (m, n), "cuda")
            ncopy = max(1, cdiv(2 * l2, prep.fused_nbytes)) + 1
            preps = [prep] + [clone_prepared(prep) for _ in range(ncopy - 1)]
            res = {}
            for batch, x, sweep in ((1, x1, FMA_SWEEP), (16, x16, BATCH_SWEEP), (4, x4, BATCH_SWEEP)):
                if batch not in args.batches:
                    res[batch] = (float("nan"), None)
                    continue
                best = (float("inf"), None)
                cands = [ks.default_config(prep, batch)]
                if not args.quick:
                    cands += [ks.MatvecConfig(BM=c[0], NH=c[1], num_warps=c[2], split=sp,
                                              **({"x_inline": c[3]} if batch == 1 else {"tile_dot": c[3]}))
                              for c in sweep for sp in SPLITS[batch]]
                for cfg in cands:
                    try:
                        t = graph_time([lambda p=p, x=x, c=cfg: ks.matvec(p, x, config=c) for p in preps])
                    except Exception as e:  # a config the compiler rejects (e.g. out of shared memory)
                        sweep_log.append({"m": m, "n": n, "bits": bits, "batch": batch, "cfg": str(cfg),
                                          "error": repr(e)[:200]})
                        continue
                    sweep_log.append({"m": m, "n": n, "bits": bits, "batch": batch, "cfg": str(cfg), "us": t * 1e6})
                    if t < best[0]:
                        best = (t, cfg)
                res[batch] = best
            print(f"  {m}x{n} {bits}-bit: " + ", ".join(f"b{b} {res[b][0] * 1e6:.1f}us {res[b][1]}" for b in res),
                  flush=True)
            # the grouped kernel with compact (code byte + second-level table) statistics, best b1 config
            codes_t = float("nan")
            try:
                if args.no_compare:
                    raise RuntimeError("skipped (--no-compare)")
                pc = ks.prepare(params, secs, (m, n), "cuda", packed_stats=False)
                pcs = [pc] + [clone_prepared(pc) for _ in range(max(1, cdiv(2 * l2, pc.fused_nbytes)))]
                codes_t = graph_time([lambda p=p, x=x1, c=res[1][1]: ks.matvec(p, x, config=c) for p in pcs])
                del pc, pcs
            except Exception as e:
                print("code-stats timing failed:", repr(e)[:300], flush=True)
            # the general (planes-layout) kernel on the same tensor, its own best of a small sweep
            old_t = float("nan")
            try:
                if args.no_compare:
                    raise RuntimeError("skipped (--no-compare)")
                pl = ks.prepare(params, secs, (m, n), "cuda", layout="planes")
                pls = [pl] + [clone_prepared(pl) for _ in range(max(1, cdiv(2 * l2, pl.fused_nbytes)))]
                cfgs = [ks.MatvecConfig(BM=16, NH=16, num_warps=4)]
                old_t = min(graph_time([lambda p=p, x=x1, c=c: ks.matvec(p, x, config=c) for p in pls])
                            for c in cfgs)
                del pl, pls
            except Exception as e:
                print("planes kernel timing failed:", repr(e)[:300], flush=True)
            try:
                dq = graph_time([lambda p=p, x=x16: F.linear(x, ks.dequantize_prepared(p, torch.float16))
                                 for p in preps[:2]], reps=4, iters=5)
            except Exception as e:
                print("dequant+matmul timing failed:", repr(e)[:300], flush=True)
                dq = float("nan")
            row = {"m": m, "n": n, "bits": bits, "compressed_bytes": comp, "fused_bytes": prep.fused_nbytes,
                   "bits_per_weight": 8 * comp / (m * n), "fp16_b1_us": t16[1] * 1e6, "fp16_b4_us": t16[4] * 1e6,
                   "fp16_b16_us": t16[16] * 1e6, "dequant_mm_b16_us": dq * 1e6, "planes_b1_us": old_t * 1e6,
                   "code_stats_b1_us": codes_t * 1e6,
                   "layout": prep.layout}
            for b in (1, 4, 16):
                row[f"fused_b{b}_us"] = res[b][0] * 1e6
                row[f"fused_b{b}_cfg"] = str(res[b][1])
            if (m, n) == shapes[-1] and bits == 3 and not args.quick and not args.no_diag:
                row["diag_b1_us"] = diagnose(preps, x1, res[1][1])
            row["GBps_b1"] = comp / res[1][0] / 1e9
            row["pct_copy_b1"] = 100 * row["GBps_b1"] / ceil["copy_GBps"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "bench_kernels.json"), "w") as f:  # partial results survive a timeout
                json.dump({"device": dev_name, "ceilings": ceil, "rows": rows, "sweep": sweep_log}, f, indent=1)
            del preps, prep, secs
            torch.cuda.empty_cache()

    hdr = ("| shape (m x n) | bits | bits/w | fp16 b1 µs | fused b1 µs | speedup b1 | GB/s (compr.) | % copy BW "
           "| fused b4 µs (vs fp16) | fused b16 µs (vs fp16) | dequant+mm b16 µs (fp16 b16 µs) | planes b1 µs "
           "| code-stats b1 µs |")
    sep = "|" + "---|" * (hdr.count("|") - 1)
    lines = [f"Device: {dev_name}; copy {ceil['copy_GBps']:.0f} GB/s (read+write), "
             f"bf16 GEMM {ceil['bf16_TFLOPs']:.0f} TFLOP/s; CUDA-graph median per call", "", hdr, sep]
    for r in rows:
        lines.append(
            f"| {r['m']}x{r['n']} | {r['bits']} | {r['bits_per_weight']:.2f} | {r['fp16_b1_us']:.1f} | "
            f"{r['fused_b1_us']:.1f} | {r['fp16_b1_us'] / r['fused_b1_us']:.2f}x | {r['GBps_b1']:.0f} | "
            f"{r['pct_copy_b1']:.0f}% | {r['fused_b4_us']:.1f} ({r['fp16_b4_us'] / r['fused_b4_us']:.2f}x) | "
            f"{r['fused_b16_us']:.1f} ({r['fp16_b16_us'] / r['fused_b16_us']:.2f}x) | "
            f"{r['dequant_mm_b16_us']:.0f} ({r['fp16_b16_us']:.1f}) | {r['planes_b1_us']:.1f} | "
            f"{r['code_stats_b1_us']:.1f} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_kernels.json"), "w") as f:
        json.dump({"device": dev_name, "ceilings": ceil, "rows": rows, "sweep": sweep_log,
                   "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)
    with open(os.path.join(args.out, "bench_kernels.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
