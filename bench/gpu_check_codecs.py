"""Property checks of the squeezellm and quip Triton kernels on a real GPU (the CI runs them under TRITON_INTERPRET).

Random cases, larger than the CI's, alternating between the two codecs:

* squeezellm v1: shapes up to 700 x 3000, bits {1,2,3,4,5,6,8}, plain or
  sensitivity-weighted k-means, residuals none / top-|w| + sensitive /
  random 1% / whole rows;
* quip: m, n = a * 2^k with odd parts a in {1, 3, 5, 7, 9, 43} (so the
  explicit orthogonal factors are exercised), up to 4096 x 4096; half the
  cases v1 grid bits {1,2,3,4,8}, RTN or LDLQ (against a random correlated
  Hessian), half v2 E8P12 with random codes (every code value) and i8 / f16 /
  f32 diagonals.

For each case: ``dequantize`` (spec sections) and ``dequantize_prepared`` (the
load-time layout) must equal the Numba reference decoder bit for bit in f32
(NaN as any NaN) and equal its RNE casts in f16 and bf16; the fused
``matvec`` (batch 1/4/16 and a vector input, f16 / f32 / bf16 activations,
with and without bias, the default column split and forced split = 1 and 3) is
compared with float64 ``x @ W_ref.T (+ bias)``: relative Frobenius error at
most TOL_F16 = 4e-3 with f16 activations (f16 output rounding alone is up to
2^-11 ≈ 4.9e-4 per element), TOL_BF16 = 1e-2 with bf16, TOL_F32 = 1e-5 with
f32 activations (f32 accumulation).

Every case runs in its own try/except (an exception is a recorded ERROR, the
run goes on); ``--seconds`` stops starting new cases once spent. Prints
PASS/FAIL/ERROR counts; exit status 1 if any case failed.

    python bench/gpu_check_codecs.py [--seconds 60] [--cases 40] [--seed 7] [--log FILE] [--out DIR]
    python bench/gpu_check_codecs.py --smoke   # CPU, TRITON_INTERPRET=1, tiny shapes: checks the script
"""

from __future__ import annotations

import os
import sys

if "--smoke" in sys.argv:  # must be set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

TOL_F16 = 4e-3
TOL_BF16 = 1e-2
TOL_F32 = 1e-5


class CaseFailure(Exception):
    """A check that did not hold (as opposed to an unexpected error)."""


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of f32 arrays, any NaN matching any NaN."""
    if a.shape != b.shape:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb)
                and np.array_equal(np.where(na, 0, a).view(np.uint32), np.where(nb, 0, b).view(np.uint32)))


def check_dequant(mod: Any, params: dict[str, Any], sections: dict[str, Any], shape: tuple[int, int],
                  ref: np.ndarray, dev: str) -> None:
    secs = mod.to_device(sections, dev)
    got = mod.dequantize(params, secs, shape, torch.float32).cpu().numpy()
    if not same_bits(got, ref):
        bad = int((got.view(np.uint32) != ref.view(np.uint32)).sum())
        raise CaseFailure(f"dequant f32 differs from the Numba decoder in {bad} of {ref.size} elements")
    prep = mod.prepare(params, sections, shape, dev)
    got = mod.dequantize_prepared(prep, torch.float32).cpu().numpy()
    if not same_bits(got, ref):
        bad = int((got.view(np.uint32) != ref.view(np.uint32)).sum())
        raise CaseFailure(f"dequantize_prepared f32 differs from the Numba decoder in {bad} of {ref.size} elements")
    ref_t = torch.from_numpy(ref)
    for dt in (torch.float16, torch.bfloat16):
        for what, out in (("dequant", mod.dequantize(params, secs, shape, dt).cpu()),
                          ("dequantize_prepared", mod.dequantize_prepared(prep, dt).cpu())):
            want = ref_t.to(dt)
            same = (out.view(torch.int16) == want.view(torch.int16)) | (out.isnan() & want.isnan())
            if not bool(same.all()):
                raise CaseFailure(f"{what} {dt} differs from the RNE cast of the reference in "
                                  f"{int((~same).sum())} elements")


def check_matvec(mod: Any, params: dict[str, Any], sections: dict[str, Any], shape: tuple[int, int],
                 ref: np.ndarray, dev: str, rng: np.random.Generator) -> float:
    """Max relative error over batches / dtypes / bias; raises CaseFailure above the tolerance."""
    m, n = shape
    prep = mod.prepare(params, sections, shape, dev)
    ref64 = ref.astype(np.float64)
    worst = 0.0
    runs = [(dt, tol, batch, None) for dt, tol in ((torch.float16, TOL_F16), (torch.float32, TOL_F32))
            for batch in (1, 4, 16, None)]  # None: a 1-D vector
    runs += [(torch.bfloat16, TOL_BF16, 4, None)]
    runs += [(torch.float16, TOL_F16, b, split) for b in (1, 16) for split in (1, 3)]
    for dt, tol, batch, split in runs:
        rows = 1 if batch is None else batch
        x = torch.from_numpy(rng.standard_normal((rows, n)).astype(np.float32)).to(dt)
        use_bias = batch in (4, None)
        bias = torch.from_numpy(rng.standard_normal(m).astype(np.float32)).to(dt) if use_bias else None
        xin = x[0] if batch is None else x
        cfg = None if split is None else mod.GemvConfig(split=split)
        y = mod.matvec(prep, xin.to(dev), None if bias is None else bias.to(dev), cfg)
        if tuple(y.shape) != tuple(xin.shape[:-1]) + (m,):
            raise CaseFailure(f"matvec output shape {tuple(y.shape)} for input {tuple(xin.shape)}")
        if y.dtype != dt:
            raise CaseFailure(f"matvec output dtype {y.dtype}, input {dt}")
        want = x.double().numpy() @ ref64.T
        if bias is not None:
            want = want + bias.double().numpy()[None, :]
        got = y.double().cpu().numpy().reshape(rows, m)
        if not np.isfinite(got).all():
            raise CaseFailure(f"matvec {dt} batch={batch}: non-finite output")
        err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
        if dt != torch.bfloat16:  # the bf16 run has its own, looser tolerance
            worst = max(worst, err)
        if err > tol:
            raise CaseFailure(f"matvec {dt} batch={batch} bias={use_bias} split={split}: relerr {err:.2e} > "
                              f"{tol:.0e}")
    return worst


def squeezellm_case(rng: np.random.Generator, dev: str, small: bool, ctx: dict[str, Any]) -> tuple[str, float]:
    from spqrfmt.decoder.squeezellm import decode
    from spqrfmt.encoder.squeezellm import quantize_squeezellm
    from spqrfmt.kernels import squeezellm as ks

    m = int(rng.integers(1, 24 if small else 700))
    n = int(rng.integers(1, 80 if small else 3000))
    bits = int(rng.choice(ctx.get("bits") or [1, 2, 3, 4, 5, 6, 8]))
    kind = str(rng.choice(["none", "top", "random", "rows"]))
    weighted = bool(rng.integers(0, 2))
    w = (rng.standard_normal((m, n)) * rng.uniform(0.01, 1.0)).astype(np.float32)
    heavy = rng.random((m, n)) < 0.01
    w[heavy] *= 20
    sens = rng.gamma(0.5, 1.0, size=n) if weighted else None
    mask = None
    frac, sfrac = 0.0, 0.0
    if kind == "top":
        frac, sfrac = 0.0045, 0.0005
    elif kind == "random":
        mask = rng.random((m, n)) < 0.01
    elif kind == "rows":
        mask = np.zeros((m, n), dtype=bool)
        mask[rng.integers(0, m, size=max(1, m // 8))] = True
    enc = quantize_squeezellm(w, bits=bits, sensitivity=sens, outlier_fraction=frac, sensitive_fraction=sfrac,
                              outlier_mask=mask)
    desc = (f"squeezellm m={m} n={n} bits={bits} sens={'diag' if weighted else 'none'} outliers={kind} "
            f"nnz={enc.info['outliers']}")
    ctx["desc"] = desc
    ref = decode(enc.params, enc.sections, (m, n))
    try:
        check_dequant(ks, enc.params, enc.sections, (m, n), ref, dev)
        err = check_matvec(ks, enc.params, enc.sections, (m, n), ref, dev, rng)
    except CaseFailure as e:
        raise CaseFailure(f"{desc}: {e}") from None
    return desc, err


def quip_case(rng: np.random.Generator, dev: str, small: bool, ctx: dict[str, Any]) -> tuple[str, float]:
    from spqrfmt.decoder.quip import decode
    from spqrfmt.encoder.quip import quantize_quip
    from spqrfmt.kernels import quip as kq

    def dim() -> int:
        a = int(rng.choice([1, 3]) if small else rng.choice([1, 1, 3, 5, 7, 9, 43]))
        kmax = 4 if small else max(0, int(np.log2(4096 // a)))
        return a << int(rng.integers(0, kmax + 1))

    e8p = bool(rng.integers(0, 2))
    m, n = dim(), dim()
    if e8p:
        n = max(8, n - n % 8)  # a * 2^k with k >= 3 keeps the K * 2^k form for a in the list
    w = (rng.standard_normal((m, n)) * rng.uniform(0.01, 1.0)).astype(np.float32)
    w[rng.random((m, n)) < 0.005] *= 20
    seed = int(rng.integers(0, 2**31))
    if e8p:  # random codes (every code value is valid) and random diagonals
        enc = quantize_quip(w, codebook="e8p12", seed=seed)
        enc.sections["codes"] = rng.integers(0, 1 << 16, enc.sections["codes"].shape).astype(np.uint16)
        kinds = {}
        for role, d in (("su", n), ("sv", m)):
            kinds[role] = str(rng.choice(["i8", "f16", "f32"]))
            if kinds[role] != "i8":
                dt = {"f16": np.float16, "f32": np.float32}[kinds[role]]
                enc.sections[role] = (rng.standard_normal(d) * 0.5 + 1.0).astype(dt)
        what = f"e8p12 su={kinds['su']} sv={kinds['sv']}"
    else:
        bits = int(rng.choice([1, 2, 3, 4, 8]))
        ldlq = bool(rng.integers(0, 2)) and n <= 1024
        hess = None
        if ldlq:
            x = rng.standard_normal((2 * n + 8, n)) @ (np.eye(n) + 0.3 * rng.standard_normal((n, n)) / np.sqrt(n))
            hess = x.T @ x / x.shape[0]
        enc = quantize_quip(w, bits=bits, hessian=hess, seed=seed)
        what = f"grid bits={bits} ldlq={ldlq}"
    p = enc.params
    desc = (f"quip m={m} n={n} (log2_hm={p['log2_hm']} a_m={m >> p['log2_hm']}, log2_hn={p['log2_hn']} "
            f"a_n={n >> p['log2_hn']}) {what}")
    ctx["desc"] = desc
    ref = decode(enc.params, enc.sections, (m, n))
    try:
        check_dequant(kq, enc.params, enc.sections, (m, n), ref, dev)
        err = check_matvec(kq, enc.params, enc.sections, (m, n), ref, dev, rng)
    except CaseFailure as e:
        raise CaseFailure(f"{desc}: {e}") from None
    return desc, err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=None, help="number of cases (default 40; --smoke: 4)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seconds", "--budget-s", dest="budget_s", type=float, default=60.0,
                    help="start no new case after this many seconds (default 60)")
    ap.add_argument("--codec", choices=["both", "squeezellm", "quip"], default="both")
    ap.add_argument("--sq-bits", type=lambda t: [int(v) for v in t.split(",")], default=None,
                    help="squeezellm code widths to draw from, e.g. 3,4 (default 1,2,3,4,5,6,8)")
    ap.add_argument("--log", default=None, help="also write the case lines to this file")
    ap.add_argument("--out", default=None, help="write gpu_check_codecs.json here")
    ap.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes, 4 cases")
    args = ap.parse_args(argv)
    if args.smoke:
        dev, small = "cpu", True
        args.cases = 4 if args.cases is None else args.cases
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: use --smoke (CPU interpreter) or tests/test_{squeezellm,quip}.py", flush=True)
            return 2
        dev, small = "cuda", False
        args.cases = 40 if args.cases is None else args.cases
    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU (TRITON_INTERPRET=1)"
    print(f"gpu_check_codecs on {name}: {args.cases} cases, seed {args.seed}, budget {args.budget_s:.0f}s, "
          f"tolerances f16 {TOL_F16:g} / f32 {TOL_F32:g}", flush=True)
    rng = np.random.default_rng(args.seed)
    codecs = ["squeezellm", "quip"] if args.codec == "both" else [args.codec]
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i in range(args.cases):
        if time.perf_counter() - t0 > args.budget_s:
            print(f"time budget of {args.budget_s:.0f}s spent: {args.cases - i} cases not run", flush=True)
            break
        codec = codecs[i % len(codecs)]
        case_rng = np.random.default_rng(rng.integers(0, 2**63))  # each case reproducible on its own
        tc = time.perf_counter()
        rec: dict[str, Any] = {"case": i, "codec": codec}
        ctx: dict[str, Any] = {"desc": codec, "bits": args.sq_bits}
        try:
            desc, err = (squeezellm_case if codec == "squeezellm" else quip_case)(case_rng, dev, small, ctx)
            rec.update(status="PASS", desc=desc, max_relerr=err)
            line = f"{desc} ok, max matvec relerr {err:.2e}"
        except CaseFailure as e:
            rec.update(status="FAIL", desc=str(e))
            line = str(e)
        except Exception as e:
            rec.update(status="ERROR", desc=f"{ctx['desc']}: {type(e).__name__}: {e}"[:600],
                       traceback=traceback.format_exc()[-2000:])
            line = rec["desc"]
            if dev == "cuda":
                try:
                    torch.cuda.synchronize()
                except Exception:
                    pass
        rec["seconds"] = time.perf_counter() - tc
        results.append(rec)
        print(f"[{i:3d}] {rec['status']:5s} {line} ({rec['seconds']:.1f}s)", flush=True)
        if rec["status"] == "ERROR":
            print(rec["traceback"], flush=True)
    n_pass = sum(r["status"] == "PASS" for r in results)
    errs = [r["max_relerr"] for r in results if "max_relerr" in r]
    summary = (f"gpu_check_codecs: {n_pass}/{len(results)} cases passed "
               f"({sum(r['status'] == 'FAIL' for r in results)} failed, "
               f"{sum(r['status'] == 'ERROR' for r in results)} errors, {args.cases - len(results)} not run) "
               f"in {time.perf_counter() - t0:.0f}s on {name}; max matvec relerr "
               f"{max(errs) if errs else float('nan'):.2e}")
    print(summary, flush=True)
    if args.log:
        os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
        with open(args.log, "w") as f:
            for r in results:
                f.write(f"[{r['case']:3d}] {r['status']} {r['desc']}\n")
            f.write(summary + "\n")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_check_codecs.json"), "w") as f:
            json.dump({"device": name, "seed": args.seed, "tol_f16": TOL_F16, "tol_f32": TOL_F32,
                       "summary": summary, "cases": results}, f, indent=1)
    return 0 if n_pass == len(results) and results else 1


if __name__ == "__main__":
    sys.exit(main())
