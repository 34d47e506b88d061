"""Property checks of spqrfmt.kernels on a real GPU (the CI runs the same kernels under TRITON_INTERPRET).

Random shapes (including n not divisible by the group size), bits, group sizes,
stat bits, outlier patterns and permutations, larger than the CI's: dequantize
must equal the Numba reference decoder bit for bit (f32, and the f16/bf16 RNE
casts); the fused matvec (batch 1..16, several tile shapes and splits) and
SpQRLinear are checked by relative error against a float64 product.

    python bench/gpu_check.py --cases 60 [--jobs 8] [--seconds 240] [--log out.txt]

Case i draws from its own generator (seed, i), so a case is the same whatever ``--jobs``
is. ``--jobs N`` runs the cases in N worker processes, since Triton's compilation of each
(bits, group size, tile) specialisation is CPU work (one process spent ~35 s a case on it);
on the H200 a run with 8 workers hit its 100 s outer time limit before it reported (each worker
also compiles the Numba encoder; not measured further), so the default stays one process.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch

from spqrfmt.decoder.spqr import decode
from spqrfmt.encoder.spqr import quantize_spqr
from spqrfmt.kernels import spqr as ks
from spqrfmt.kernels.linear import SpQRLinear

TOL = 4e-3


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb)
                and np.array_equal(np.where(na, 0, a).view(np.uint32), np.where(nb, 0, b).view(np.uint32)))


def one_case(rng: np.random.Generator, dev: str, tiled: bool = False) -> tuple[bool, str]:
    """One random case; ``tiled``: only what the tiled layout holds (bits 2-4, β1 a multiple of 16), with its
    batch paths (1-2 f16x2 FMAs, 3-16 the tensor-core dot) at more batch sizes."""
    m = int(rng.integers(1, 700))
    n = int(rng.integers(1, 3000))
    bits = int(rng.choice([2, 3, 4] if tiled else [1, 2, 3, 4, 5, 6, 8]))
    gs = int(rng.choice([16, 32, 48, 128] if tiled else [3, 16, 16, 32, 128, 100, 24]))
    sbits = int(rng.choice([3, 4, 16]))
    b2 = int(rng.choice([1, 7, 16, 64]))
    kind = str(rng.choice(["none", "some", "rows"]))
    use_perm = bool(rng.integers(0, 2))
    w = rng.standard_normal((m, n)).astype(np.float32)
    mask = np.zeros((m, n), dtype=bool)
    if kind == "some":
        mask = rng.random((m, n)) < 0.01
        w[mask] *= 10
    elif kind == "rows":
        mask[rng.integers(0, m, size=max(1, m // 8))] = True
    perm = rng.permutation(n) if use_perm else None
    enc = quantize_spqr(w, bits=bits, group_size=gs, scale_bits=sbits, zero_bits=sbits, stat_group_size=b2,
                        outlier_fraction=0.0, perm=perm, outlier_mask=mask)
    desc = f"m={m} n={n} bits={bits} gs={gs} sbits={sbits} b2={b2} outliers={kind} perm={use_perm}"
    ref = decode(enc.params, enc.sections, (m, n))
    secs = ks.to_device(enc.sections, dev)
    got = ks.dequantize(enc.params, secs, (m, n), torch.float32).cpu().numpy()
    if not same_bits(got, ref):
        return False, desc + f" dequant f32 mismatch ({int((got != ref).sum())} elements)"
    ref_t = torch.from_numpy(ref)
    for dt in (torch.float16, torch.bfloat16):
        out = ks.dequantize(enc.params, secs, (m, n), dt).cpu()
        want = ref_t.to(dt)
        if not bool(((out.view(torch.int16) == want.view(torch.int16)) | (out.isnan() & want.isnan())).all()):
            return False, desc + f" dequant {dt} mismatch"
    prep = ks.prepare(enc.params, enc.sections, (m, n), dev, layout="tiled" if tiled else None)
    for dt in (torch.float32, torch.float16, torch.bfloat16):  # from the load-time repack
        out = ks.dequantize_prepared(prep, dt).cpu()
        want = ref_t.to(dt)
        bits_of = (lambda t: t.view(torch.int32)) if dt == torch.float32 else (lambda t: t.view(torch.int16))
        if not bool(((bits_of(out) == bits_of(want)) | (out.isnan() & want.isnan())).all()):
            return False, desc + f" dequantize_prepared ({prep.layout}) {dt} mismatch"
    desc += f" layout={prep.layout}"
    ref64 = ref.astype(np.float64)
    errs = []
    cases = [(1, None), (4, None), (16, None), (1, ks.MatvecConfig(BM=16, NH=32, num_warps=2, split=3)),
             (16, ks.MatvecConfig(BM=64, NH=16, num_warps=8, split=1))]
    if tiled:
        cases = [(1, None), (1, ks.MatvecConfig(BM=64, NH=8, split=8, x_inline=False)),  # both batch-1 launches,
                 (1, ks.MatvecConfig(BM=64, NH=8, split=8, x_inline=True)),  # whatever the default picks
                 (2, None), (3, None), (8, None), (16, None),
                 (16, ks.MatvecConfig(BM=64, NH=4, split=3, prefetch=False)),
                 (16, ks.MatvecConfig(BM=128, NH=4, num_warps=8, split=1))]
    for batch, cfg in cases:
        x = torch.from_numpy(rng.standard_normal((batch, n)).astype(np.float32)).half().to(dev)
        y = ks.matvec(prep, x, config=cfg).double().cpu().numpy()
        want = x.double().cpu().numpy() @ ref64.T
        err = float(np.linalg.norm(y - want) / max(np.linalg.norm(want), 1e-30))
        errs.append(err)
        if not np.isfinite(y).all() or err > TOL:
            return False, desc + f" matvec batch={batch} cfg={cfg} relerr={err:.2e}"
    bias = rng.standard_normal(m).astype(np.float32)
    layer = SpQRLinear.from_sections(enc.params, enc.sections, (m, n), bias=torch.from_numpy(bias), device=dev)
    for rows in (3, 40):
        x = torch.from_numpy(rng.standard_normal((rows, n)).astype(np.float32)).half().to(dev)
        y = layer(x).double().cpu().numpy()
        want = x.double().cpu().numpy() @ ref64.T + bias
        err = float(np.linalg.norm(y - want) / max(np.linalg.norm(want), 1e-30))
        errs.append(err)
        if err > TOL:
            return False, desc + f" SpQRLinear rows={rows} relerr={err:.2e}"
    return True, desc + f" ok, max matvec relerr {max(errs):.2e}"


def run_case(seed: int, i: int, tiled: bool = False) -> tuple[int, bool, str]:
    """Case ``i`` of ``seed`` in this process (a worker's entry point)."""
    try:
        ok, msg = one_case(np.random.default_rng([seed, i]), "cuda", tiled)
    except Exception as e:  # a crash in one case is a failure of that case, reported with the others
        ok, msg = False, f"error: {type(e).__name__}: {e}"
    return i, ok, msg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--jobs", type=int, default=1,
                    help="worker processes (default 1: the cases run in this process)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="stop starting new cases after this many seconds (the rest are reported as not run)")
    ap.add_argument("--log", default=None)
    ap.add_argument("--tiled", action="store_true",
                    help="only cases the tiled layout holds, forced to it, at batches 1, 2, 3, 8 and 16")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: run tests/test_kernels.py (interpreter) instead")
        return 2
    t0 = time.time()
    results: dict[int, tuple[bool, str]] = {}

    live = open(args.log + ".partial", "w") if args.log else None  # survives an outer time limit

    def record(i: int, ok: bool, msg: str) -> None:
        results[i] = (ok, msg)
        line = f"[{i:3d}] {'PASS' if ok else 'FAIL'} {msg}"
        print(line, flush=True)
        if live:
            live.write(f"{line} ({time.time() - t0:.0f}s)\n")
            live.flush()

    def in_budget() -> bool:
        return args.seconds is None or time.time() - t0 < args.seconds

    if args.jobs <= 1:
        for i in range(args.cases):
            if not in_budget():
                break
            record(*run_case(args.seed, i, args.tiled))
    else:
        with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            pending = {pool.submit(run_case, args.seed, i, args.tiled) for i in range(min(args.jobs, args.cases))}
            nxt = len(pending)
            while pending:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    record(*f.result())
                    if nxt < args.cases and in_budget():
                        pending.add(pool.submit(run_case, args.seed, nxt, args.tiled))
                        nxt += 1
    lines = [f"[{i:3d}] {'PASS' if ok else 'FAIL'} {msg}" for i, (ok, msg) in sorted(results.items())]
    fails = sum(not ok for ok, _ in results.values())
    skipped = args.cases - len(results)
    summary = f"gpu_check: {len(results) - fails}/{len(results)} cases passed ({fails} failed, {skipped} not run) " \
              f"in {time.time() - t0:.0f}s with {args.jobs} job(s) on {torch.cuda.get_device_name()}"
    print(summary)
    if args.log:
        live.close()
        with open(args.log, "w") as f:
            f.write("\n".join(lines + [summary]) + "\n")
        os.remove(args.log + ".partial")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
