"""The exact tiled dequantization (the prefill path: dequantize, then cuBLAS) by tile, on one GPU.

Why: after the host-time fix the 8B model's eager prefill is GPU-bound, and what it spends beyond fp16 is
the exact dequantization of every weight before its GEMM (docs/kernels.md). This times
``_spqr_dot.dequantize_tiled`` per (BM, NU, num_warps) on the 8B shapes in CUDA graphs, checks that every
tile writes the same bits as the default, and reports GB/s of f16 output next to the measured copy rate.

    python bench/bench_dequant.py --out $OUT [--shapes 14336x4096 ...] [--configs 32,4,4 64,4,8 ...]
    python bench/bench_dequant.py --once 14336x4096 --configs 32,4,4   # one launch each, for ncu
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import graph_time, synth_sections  # noqa: E402

from spqrfmt.kernels import _spqr_dot  # noqa: E402
from spqrfmt.kernels import spqr as ks  # noqa: E402

CONFIGS = ["32,4,4", "16,8,4", "64,4,4", "32,8,4", "64,4,8", "64,8,8", "128,4,8", "32,4,2", "16,4,2", "32,2,2"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--shapes", nargs="+", default=["4096x4096", "1024x4096", "14336x4096", "4096x14336"])
    ap.add_argument("--configs", nargs="+", default=CONFIGS, help="BM,NU,num_warps triples (first = reference)")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--once", default=None, help="one shape: a single launch per config (for ncu), no timing")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench_dequant.py needs a CUDA GPU", file=sys.stderr)
        return 2
    cfgs = [tuple(int(v) for v in c.split(",")) for c in args.configs]
    rows = []
    for s in [args.once] if args.once else args.shapes:
        m, n = (int(v) for v in s.split("x"))
        params, secs = synth_sections(m, n, args.bits)
        prep = ks.prepare(params, secs, (m, n))
        out = torch.empty((m, n), dtype=torch.float16, device="cuda")
        ref = None
        for bm, nu, nw in cfgs:
            def fn(bm=bm, nu=nu, nw=nw, prep=prep, out=out):
                return _spqr_dot.dequantize_tiled(prep, torch.float16, True, out, bm=bm, nu=nu, num_warps=nw)

            fn()
            if args.once:
                torch.cuda.synchronize()
                continue
            got = out.clone()
            if ref is None:
                ref = got
                flip = not _spqr_dot.fuse_outliers_default(m, n)  # the outliers the other way: the same bits
                other = _spqr_dot.dequantize_tiled(prep, torch.float16, fuse_outliers=flip)
                if not torch.equal(other, ref):
                    print(f"error: {s}: fused and separate outlier stores wrote other bits", file=sys.stderr)
                    return 1
                del other
            same = bool(torch.equal(got, ref))
            t = graph_time([fn], reps=10, iters=10)
            r = {"shape": s, "bits": args.bits, "BM": bm, "NU": nu, "num_warps": nw, "us": round(t * 1e6, 1),
                 "out_GBps": round(m * n * 2 / t / 1e9, 1), "same_bits_as_first": same}
            rows.append(r)
            print(json.dumps(r), flush=True)
            if not same:
                print(f"error: {bm},{nu},{nw} wrote other bits than {cfgs[0]}", file=sys.stderr)
                return 1
    if args.out and rows:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_dequant.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "argv": sys.argv[1:], "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
