"""Batch-1 SpQR matvec on the GPU: every tile config checked against float64, then timed beside fp16 and int4.

One process, CUDA-graph medians over > 2x L2 of weight copies (bench_kernels.py's harness), on the
Llama-3-8B shapes. Per shape: fp16 ``F.linear``, torch int4 tinygemm (g128), the current default
config ("old"; since the 2026-12-01 sweep chosen by shape), a small sweep of (BM, NH, num_warps, split,
x_inline: the one-launch GEMV; maxnreg) and the x-preparation launch alone (what folding it into the GEMV could
save at most). Writes ``$OUT/bench_spqr_b1.json``; a config whose
relative error exceeds 4e-3 is reported WRONG and not timed (exit status 1).

    python bench/bench_spqr_b1.py --out DIR [--shapes 4096x4096 ...] [--bits 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import cdiv, check_matvec, clone_prepared, graph_time, int4_weights, synth_sections  # noqa: E402

from spqrfmt.kernels import _spqr_tiled as KT  # noqa: E402
from spqrfmt.kernels import spqr as ks  # noqa: E402

SHAPES = ["1024x4096", "4096x4096", "14336x4096", "4096x14336", "8192x28672", "28672x8192"]
# (BM, NH, num_warps, split, x_inline, maxnreg); split None = the automatic split (32 programs per SM);
# x_inline: one launch. The splits and register caps: ncu on 8192x28672 (BM 64, split 8) showed 95 registers,
# 5 programs per SM and 1,024 programs, i.e. 1.55 waves; fewer programs (one wave) or a cap (more per SM)
SWEEP = [(64, 8, 4, 8, False, None), (64, 8, 4, 4, False, None), (64, 8, 4, 5, False, None),
         (64, 8, 4, 10, False, None), (64, 8, 4, 8, False, 80), (64, 8, 4, 8, False, 64),
         (64, 8, 4, 5, False, 80), (64, 16, 4, 4, False, None), (32, 8, 2, 16, False, None),
         (32, 8, 2, 16, False, 64), (128, 8, 4, 4, False, None), (128, 8, 4, 2, False, None),
         (128, 8, 4, 3, False, None), (128, 8, 4, 4, False, 96),
         (64, 8, 4, 8, True, None), (64, 8, 4, 8, True, 80), (128, 8, 4, 4, True, None),
         (128, 8, 4, 3, True, None), (128, 8, 4, 6, True, None), (128, 8, 4, 4, True, 128),
         (32, 8, 4, 16, True, None)]


def xprep_only(prep: ks.PreparedSpQR, x: torch.Tensor):
    """A closure launching just the batch-1 x preparation of the f16x2 path (its buffers preallocated)."""
    n = prep.shape[1]
    nut = cdiv(n, 32)
    idx = prep.x_index(0)
    xr = torch.empty((1, nut, KT.XR_WORDS), dtype=torch.int32, device="cuda")
    xo = torch.empty((1, n), dtype=torch.float32, device="cuda")
    return lambda: KT.xprep_h2_kernel[(triton.cdiv(nut, 32), 1)](x, idx, xr, xo, n, nut, x.stride(0), BU=32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--shapes", nargs="+", default=SHAPES)
    ap.add_argument("--bits", type=int, nargs="+", default=[3])
    ap.add_argument("--budget-s", type=float, default=150.0)
    a = ap.parse_args(argv)
    t0 = time.time()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows, wrong = [], 0
    for shape in a.shapes:
        m, n = (int(v) for v in shape.split("x"))
        x = torch.randn(1, n, dtype=torch.float16, device="cuda")
        w16 = torch.randn(m, n, dtype=torch.float16, device="cuda") * 0.02
        w16s = [w16] + [w16.clone() for _ in range(max(1, cdiv(2 * l2, w16.numel() * 2)))]
        row = {"m": m, "n": n, "fp16_b1_us": graph_time([lambda w=w, x=x: F.linear(x, w) for w in w16s]) * 1e6}
        del w16s, w16
        i4 = int4_weights(m, n)
        if i4 is not None:
            i4s = [i4] + [tuple(t.clone() for t in i4) for _ in range(max(1, cdiv(2 * l2, i4[0].numel() * 4)))]
            xb = x.bfloat16()
            row["int4_b1_us"] = graph_time([lambda w=w, xb=xb: torch._weight_int4pack_mm(xb, w[0], 128, w[1])
                                            for w in i4s]) * 1e6
            del i4s, i4
        for bits in a.bits:
            params, sec = synth_sections(m, n, bits)
            prep = ks.prepare(params, sec, (m, n), "cuda")
            ncopy = max(2, cdiv(2 * l2, prep.fused_nbytes))
            preps = [prep] + [clone_prepared(prep) for _ in range(ncopy - 1)]
            r = dict(row, bits=bits, configs=[])
            r["xprep_us"] = graph_time([xprep_only(prep, x)]) * 1e6
            old = ks.default_config(prep, 1)
            first = (old.BM, old.NH, old.num_warps, old.split, old.x_inline, old.maxnreg)
            for bm, nh, nw, sp, xin, reg in [first] + SWEEP:
                if time.time() - t0 > a.budget_s:
                    r["configs"].append({"cfg": [bm, nh, nw, sp, xin, reg], "skipped": "time budget spent"})
                    continue
                cfg = ks.MatvecConfig(BM=bm, NH=nh, num_warps=nw, split=sp, x_inline=xin, maxnreg=reg)
                try:
                    err = check_matvec(prep, x, cfg)
                    c = {"cfg": [bm, nh, nw, sp, xin, reg], "relerr": err}
                    if not err < 4e-3:
                        wrong += 1
                        c["wrong"] = True
                    else:
                        c["us"] = graph_time([lambda p=p, c=cfg, x=x: ks.matvec(p, x, config=c) for p in preps]) * 1e6
                except Exception as e:  # noqa: BLE001 - report and go on
                    wrong += 1
                    c = {"cfg": [bm, nh, nw, sp, xin, reg], "error": repr(e)[:300]}
                r["configs"].append(c)
                print(f"{m}x{n} {bits}b cfg BM={bm} NH={nh} w={nw} split={sp} x_inline={xin} maxnreg={reg}: "
                      + (f"{c['us']:.1f} us relerr {c['relerr']:.1e}" if "us" in c else json.dumps(c)), flush=True)
            timed = [c for c in r["configs"] if "us" in c]
            if timed:
                best = min(timed, key=lambda c: c["us"])
                r["old_us"] = timed[0]["us"] if r["configs"][0] is timed[0] else None
                r["best"] = best
            print(f"== {m}x{n} {bits}b: fp16 {r['fp16_b1_us']:.1f} int4 {r.get('int4_b1_us', float('nan')):.1f} "
                  f"xprep alone {r['xprep_us']:.1f} old {r.get('old_us')} best {r.get('best')}", flush=True)
            rows.append(r)
            del preps, prep
            torch.cuda.empty_cache()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench_spqr_b1.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(0), "rows": rows}, f, indent=1)
    print(f"bench_spqr_b1: {len(rows)} rows, {wrong} wrong/errors, {time.time() - t0:.0f}s", flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
