"""Host time vs GPU time of one compressed linear, per call and per component (needs CUDA).

Why: eager prefill of the 8B model took about as long at 128 tokens as at 1024 for both fp16
and spqr (docs/kernels.md, e2e run15), i.e. it is bound by the host, not the GPU. This script
says how many microseconds of host time each part of a layer's call costs (the Python wrapper,
each Triton launch, the cuBLAS call) next to the GPU time of the same call, so the host cost
can be cut where it is.

Host time: the GPU is first held busy (``torch.cuda._sleep``), then N calls are enqueued and
timed on the host alone (none of them waits for the GPU), then synchronised. GPU time: the
same call captured in a CUDA graph (``bench_kernels.graph_time``). One JSON line per row.

    python bench/linear_host.py --out $OUT [--shapes 4096x4096 14336x4096] [--batches 1 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import graph_time, synth_sections  # noqa: E402

from spqrfmt.kernels import _spqr_dot  # noqa: E402
from spqrfmt.kernels import spqr as ks  # noqa: E402
from spqrfmt.kernels.linear import SpQRLinear, _scratch  # noqa: E402


def host_us(fn, n: int = 60) -> float:
    """Median-free host microseconds per call of ``fn`` while the GPU is busy (nothing waits for it)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(400_000_000)  # ~0.2 s of GPU time: longer than the host loop below
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


PROFILE_DIR: str | None = None


def profile(fn, path: str, n: int = 60) -> None:
    """cProfile of n calls while the GPU is busy: which Python frames the host time goes to."""
    import cProfile
    import io
    import pstats

    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(400_000_000)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30)
    with open(path, "w") as f:
        f.write(s.getvalue())


def rows(m: int, n: int, bits: int, batch: int) -> list[dict]:
    params, secs = synth_sections(m, n, bits)
    lin = SpQRLinear.from_sections(params, secs, (m, n))
    prep = lin.prepared
    x = torch.randn(batch, n, dtype=torch.float16, device="cuda")
    w16 = torch.randn(m, n, dtype=torch.float16, device="cuda") * 0.01
    dense = torch.nn.Linear(n, m, bias=False, device="cuda", dtype=torch.float16)
    parts = {
        "fp16 nn.Linear": lambda: dense(x),
        "F.linear (given W)": lambda: F.linear(x, w16),
        "SpQRLinear.forward": lambda: lin(x),
    }
    if batch > ks.MAX_FUSED_BATCH:
        buf = _scratch(prep.shape, x.dtype, x.device)
        parts["dequantize_tiled (2 launches)"] = lambda: _spqr_dot.dequantize_tiled(prep, x.dtype, True, buf)
    else:
        parts["kernels.spqr.matvec"] = lambda: ks.matvec(prep, x)
    out = []
    # the fast launches (kernels/_launch.py) against the normal Triton launch of a fresh layer, same inputs
    from spqrfmt.kernels import _launch

    ref_w = ks.dequantize_prepared(prep, torch.float32).double()
    ys = [lin(x) for _ in range(3)]  # the first call records the launches, the later ones replay them
    want = x.double() @ ref_w.T
    rel = max(float((y.double() - want).norm() / want.norm()) for y in ys)
    check = {"relerr_fast_vs_f64": rel}
    if batch > ks.MAX_FUSED_BATCH:
        buf = _scratch(prep.shape, x.dtype, x.device)
        fast = _spqr_dot.dequantize_tiled(prep, x.dtype, True, buf).clone()
        _launch.ENABLED = False
        slow_lin = SpQRLinear.from_sections(params, secs, (m, n))
        slow = _spqr_dot.dequantize_tiled(slow_lin.prepared, x.dtype, True, buf).clone()
        _launch.ENABLED = True
        check["dequant_fast_equals_jit"] = bool(torch.equal(fast, slow))
        del slow_lin
    print(json.dumps({"shape": f"{m}x{n}", "batch": batch, **check}), flush=True)
    if rel > 2e-3 or check.get("dequant_fast_equals_jit") is False:
        raise SystemExit(f"error: fast launches disagree: {check}")
    for name, fn in parts.items():
        h = host_us(fn)
        g = graph_time([fn], reps=10, iters=10) * 1e6
        if name == "SpQRLinear.forward" and PROFILE_DIR:
            profile(fn, os.path.join(PROFILE_DIR, f"profile_{m}x{n}_b{batch}.txt"))
        out.append({"shape": f"{m}x{n}", "bits": bits, "batch": batch, "part": name, "host_us": round(h, 1),
                    "gpu_us": round(g, 1), **check})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for linear_host.json")
    ap.add_argument("--shapes", nargs="+", default=["4096x4096", "1024x4096", "14336x4096", "4096x14336"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 1024])
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also write cProfile tables of SpQRLinear.forward")
    args = ap.parse_args(argv)
    global PROFILE_DIR
    if args.profile and args.out:
        os.makedirs(args.out, exist_ok=True)
        PROFILE_DIR = args.out
    if not torch.cuda.is_available():
        print("error: linear_host.py needs a CUDA GPU", file=sys.stderr)
        return 2
    res = []
    for s in args.shapes:
        m, n = (int(v) for v in s.split("x"))
        for b in args.batches:
            res += rows(m, n, args.bits, b)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "linear_host.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "argv": sys.argv[1:], "rows": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
