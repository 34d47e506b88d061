"""Where a quip matvec's time goes: device time per kernel (input transform, GEMV, output transform).

Why: the matvec is 3-5 launches; the CUDA-graph total alone cannot say whether the transforms or the
GEMV hold it back. Each call cycles over enough weight copies to defeat L2 (as bench_codecs does); the
profiler (kineto) records every kernel's device time, reported as the mean per matvec.

    python bench/profile_quip.py --out $OUT [--shapes 4096x4096,8192x28672] [--codecs e8p,grid]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import defaultdict
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_codecs as bc  # noqa: E402


def breakdown(c: Any, preps: list[Any], x: torch.Tensor, calls: int, config: Any = None) -> dict[str, float]:
    """Mean device µs per matvec of each kernel name (and 'total', their sum)."""
    from torch.profiler import ProfilerActivity, profile

    for p in preps[:2]:
        c.matvec(p, x, config)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            c.matvec(preps[i % len(preps)], x, config)
        torch.cuda.synchronize()
    per: dict[str, float] = defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name[:60]] += e.device_time / calls
    per["total"] = sum(per.values())
    return dict(per)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--shapes", default="4096x4096,14336x4096,8192x28672")
    ap.add_argument("--codecs", default="e8p,grid")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--e8p", default="", help="GemvConfig.e8p decodes for the e8p rows")
    ap.add_argument("--transforms", default="wht", help="comma list of GemvConfig.transform values (wht, had)")
    ap.add_argument("--ncu", action="store_true", help="only run 3 matvecs per case (for ncu -k regex:gemv)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: needs a CUDA GPU", file=sys.stderr)
        return 2
    from spqrfmt.kernels import quip as kq

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for shape in bc.parse_shapes(a.shapes):
        m, n = shape
        for key in a.codecs.split(","):
            c = bc.Codec(key, m, n, 2, "cuda", gen)
            ncopy = bc.copies_for(bc.tensor_bytes(c.prep.__dict__), l2, "cuda")
            preps = [c.prep] + [c.clone(c.prep) for _ in range(ncopy - 1)]
            for b in (int(v) for v in a.batches.split(",")):
                x = torch.randn(b, n, device="cuda", dtype=torch.float16)
                if a.ncu:
                    for p in preps[:3]:
                        c.matvec(p, x)
                    torch.cuda.synchronize()
                    continue
                base = kq.default_config(key == "e8p", b)
                decodes = a.e8p.split(",") if a.e8p and key == "e8p" else [base.e8p]
                for t, dec in ((t, dec) for t in a.transforms.split(",") for dec in decodes):
                    cfg = dataclasses.replace(base, transform=t, e8p=dec)
                    graph = bc.graph_time([lambda p=p, x=x, c=c, cfg=cfg: c.matvec(p, x, cfg) for p in preps]) * 1e6
                    per = breakdown(c, preps, x, a.calls, cfg)
                    row = {"codec": key, "m": m, "n": n, "batch": b, "transform": t, "e8p": dec, "graph_us": graph,
                           "kernels_us": per}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            del preps, c
            torch.cuda.empty_cache()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "profile_quip.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
