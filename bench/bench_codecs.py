"""Benchmark of the squeezellm and quip Triton kernels against fp16 cuBLAS on one GPU.

The method is bench/bench_kernels.py's (docs/kernels.md): sections in the
spec layout are synthesised directly on the GPU (random codes, LUTs, scales,
signs, orthogonal factors and evenly spread outliers: the kernels' speed does
not depend on the values), every variant is captured in a CUDA graph that
cycles through enough weight copies to exceed 2x the L2 cache and replayed
many times, and the median per call is reported, side by side with fp16
``F.linear`` on the same GPU in the same run. The device-to-device copy
bandwidth (bytes read + written) is measured once as the ceiling.

Per shape (m x n): fp16 at batch 1/4/16; squeezellm v1 with 3- and 4-bit
indices and 0.5% residuals: ``matvec`` (LUT matvec) at batch 1/4/16,
``dequantize`` and dequantize + fp16 matmul at batch 16; quip v1 with a 2/3/4-bit
grid: ``matvec`` (two activation transforms around a GEMV over the packed
codes) at batch 1/4/16, ``dequantize`` and dequantize + matmul at batch 16.
squeezellm's ``dequantize`` expands the outlier CSR with a host-synchronising
``repeat_interleave``, which a CUDA graph cannot capture: it is timed eagerly
(CUDA events around a loop of calls; launch overhead included), and every
other variant that fails to capture falls back to the same (the JSON says
which). Each fused result is checked against dequantize + float64 matmul on
the same inputs (``relerr`` column) so a timing never belongs to a wrong kernel.

Every config runs in its own try/except (errors are recorded, the run goes
on); ``--budget-s`` stops starting new work once spent; the .md/.json under
``--out`` are rewritten after every config.

    python bench/bench_codecs.py --out $OUT [--budget-s 210] [--no-large] [--quick]
    python bench/bench_codecs.py --smoke      # CPU, TRITON_INTERPRET=1, tiny shapes: checks the script
"""

from __future__ import annotations

import os
import sys

if "--smoke" in sys.argv:  # must be set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]
LARGE = (8192, 28672)
SMOKE_SHAPES = [(32, 48), (48, 32)]  # odd factor 3 on each side
SQUEEZELLM_BITS = [3, 4]
QUIP_BITS = [2, 3, 4]
BATCHES = (1, 4, 16)
OUTLIER_FRACTION = 0.005  # SqueezeLLM's 0.45% + 0.05%


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def say(msg: str) -> None:
    print(msg, flush=True)


class Budget:
    """Wall-clock budget: work that has not started when it is spent is skipped (and recorded as such)."""

    def __init__(self, seconds: float) -> None:
        self.t0 = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def spent(self) -> bool:
        return self.left() <= 0


# ---------------------------------------------------------------- timing


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def graph_time(fns: list[Callable[[], Any]], reps: int = 20, iters: int = 15) -> float:
    """Median seconds per call of a CUDA graph running fns round-robin (bench_kernels' method, one copy)."""
    from bench_kernels import graph_time as _graph_time  # same folder: scripts run as python bench/...

    return _graph_time(fns, reps=reps, iters=iters)


def eager_time(fns: list[Callable[[], Any]], dev: str, reps: int = 20, iters: int = 5) -> float:
    """Median seconds per call of ``reps`` eager calls cycling over fns (CUDA events; perf_counter on CPU)."""
    for f in fns:
        f()
    _sync(dev)
    ts = []
    for _ in range(iters):
        if dev == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for i in range(reps):
                fns[i % len(fns)]()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / 1e3 / reps)
        else:
            t0 = time.perf_counter()
            for i in range(reps):
                fns[i % len(fns)]()
            ts.append((time.perf_counter() - t0) / reps)
    return statistics.median(ts)


def timed(fns: list[Callable[[], Any]], dev: str, notes: list[str], what: str, graph: bool = True,
          reps: int = 20, iters: int = 15) -> float:
    """Seconds per call: CUDA graph when possible, else eager (recorded in ``notes``); CPU: a few eager calls."""
    if dev != "cuda":
        return eager_time(fns, dev, reps=1, iters=1)
    if graph:
        try:
            return graph_time(fns, reps=reps, iters=iters)
        except Exception as e:  # e.g. a host sync inside the captured region
            notes.append(f"{what}: graph capture failed ({type(e).__name__}: {str(e)[:120]}), timed eagerly")
            try:
                torch.cuda.synchronize()
            except Exception:
                pass
    else:
        notes.append(f"{what}: timed eagerly")
    return eager_time(fns, dev, reps=reps, iters=max(3, iters // 3))


def ceilings(dev: str) -> dict[str, float]:
    if dev != "cuda":
        return {"copy_GBps": float("nan"), "bf16_TFLOPs": float("nan")}
    nbytes = 2 << 30
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = graph_time([lambda a=a, b=b: b.copy_(a)], reps=5, iters=10)
    del a, b
    x = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    y = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    tg = graph_time([lambda x=x, y=y: x @ y], reps=5, iters=10)
    del x, y
    torch.cuda.empty_cache()
    return {"copy_GBps": 2 * nbytes / t / 1e9, "bf16_TFLOPs": 2 * 8192**3 / tg / 1e12}


# ---------------------------------------------------------------- synthetic sections (spec layout)


def _words(rows: int, cols: int, k: int, gen: torch.Generator, dev: str) -> torch.Tensor:
    """Random packed rows (spqr.md §4) with zero padding bits, as int32 (the u32 bits)."""
    w = cdiv(cols * k, 32)
    t = torch.randint(-2**31, 2**31 - 1, (rows, w), dtype=torch.int32, device=dev, generator=gen)
    pad = w * 32 - cols * k
    if pad:
        t[:, -1] &= (1 << (32 - pad)) - 1
    return t


def synth_squeezellm(m: int, n: int, bits: int, dev: str, seed: int = 0) -> tuple[dict, dict]:
    """squeezellm v1 sections: sorted f16 LUT per row, random indices, OUTLIER_FRACTION residuals per row."""
    gen = torch.Generator(device=dev).manual_seed(seed)
    K = 1 << bits
    lut = torch.sort(torch.randn((m, K), device=dev, generator=gen) * 0.02, dim=1).values.half()
    k = max(1, int(round(n * OUTLIER_FRACTION)))
    seg = max(1, n // k)
    k = min(k, n)
    cols = torch.arange(k, device=dev) * seg + torch.randint(0, seg, (m, k), device=dev, generator=gen)
    sec = {
        "lut": lut,
        "codes": _words(m, n, bits, gen, dev),
        "outlier_row_ptr": (torch.arange(m + 1, device=dev) * k).to(torch.int32),
        "outlier_col": cols.clamp_(max=n - 1).reshape(-1).to(torch.int16 if n <= 65536 else torch.int32),
        "outlier_val": (torch.randn(m * k, device=dev, generator=gen) * 0.1).half(),
    }
    return {"bits": bits}, sec


def _split_pow2(d: int) -> tuple[int, int]:
    k = (d & -d).bit_length() - 1
    return k, d >> k


def synth_quip(m: int, n: int, bits: int, dev: str, seed: int = 0) -> tuple[dict, dict]:
    """quip v1 sections: random grid codes, per-row f32 scales, ±1 signs, Haar-random odd factors."""
    gen = torch.Generator(device=dev).manual_seed(seed)
    km, am = _split_pow2(m)
    kn, an = _split_pow2(n)

    def signs(d: int) -> torch.Tensor:
        return (torch.randint(0, 2, (d,), device=dev, generator=gen) * 2 - 1).to(torch.int8)

    def orth(a: int) -> torch.Tensor:
        q, r = torch.linalg.qr(torch.randn((a, a), dtype=torch.float64, device=dev, generator=gen))
        return (q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)[None, :]).float().contiguous()

    sec = {
        "codes": _words(m, n, bits, gen, dev),
        "scale": torch.rand((m,), device=dev, generator=gen) * 0.01 + 0.001,
        "su": signs(n),
        "sv": signs(m),
    }
    if an > 1:
        sec["factor_n"] = orth(an)
    if am > 1:
        sec["factor_m"] = orth(am)
    return {"bits": bits, "log2_hm": km, "log2_hn": kn}, sec


def section_bytes(secs: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in secs.values())


def clone_prepared(p: Any) -> Any:
    """Deep copy of a Prepared* dataclass (every tensor, and every tensor in a dict field, cloned)."""
    kw, later = {}, {}
    for f in dataclasses.fields(p):
        v = getattr(p, f.name)
        if isinstance(v, torch.Tensor):
            v = v.clone()
        elif isinstance(v, dict):
            v = {k: (t.clone() if isinstance(t, torch.Tensor) else t) for k, t in v.items()}
        (kw if f.init else later)[f.name] = v
    q = type(p)(**kw)
    for k, v in later.items():
        object.__setattr__(q, k, v)
    return q


def prepared_bytes(p: Any) -> int:
    n = 0
    for f in dataclasses.fields(p):
        v = getattr(p, f.name)
        if isinstance(v, torch.Tensor):
            n += v.numel() * v.element_size()
        elif isinstance(v, dict):
            n += sum(t.numel() * t.element_size() for t in v.values() if isinstance(t, torch.Tensor))
    return n


def relerr(y: torch.Tensor, want: torch.Tensor) -> float:
    y64, w64 = y.double(), want.double()
    return float(torch.linalg.norm(y64 - w64) / torch.linalg.norm(w64).clamp_min(1e-30))


# ---------------------------------------------------------------- one config


def bench_codec(codec: str, m: int, n: int, bits: int, dev: str, l2: int, xs: dict[int, torch.Tensor],
                fp16: dict[int, float], copy_gbps: float, budget: Budget) -> dict[str, Any]:
    """Time one (codec, shape, bits); fills as many fields as the budget allows."""
    from spqrfmt.kernels import quip as kq
    from spqrfmt.kernels import squeezellm as ksq

    mod = ksq if codec == "squeezellm" else kq
    synth = synth_squeezellm if codec == "squeezellm" else synth_quip
    params, secs = synth(m, n, bits, dev)
    comp = section_bytes(secs)
    row: dict[str, Any] = {"codec": codec, "m": m, "n": n, "bits": bits, "params": params,
                           "compressed_bytes": comp, "bits_per_weight": 8 * comp / (m * n), "notes": []}
    for b in BATCHES:
        row[f"fp16_b{b}_us"] = fp16.get(b, float("nan")) * 1e6
    notes: list[str] = row["notes"]
    prep = mod.prepare(params, secs, (m, n), dev)
    row["prepared_bytes"] = prepared_bytes(prep)
    ncopy = max(1, cdiv(2 * l2, max(comp, 1))) + 1 if dev == "cuda" else 1
    preps = [prep] + [clone_prepared(prep) for _ in range(ncopy - 1)]
    row["copies"] = ncopy

    # Correctness of what is timed: fused vs dequantize + float64 matmul, on copy 0.
    w = mod.dequantize(params, prep.sections, (m, n), torch.float32)
    for b in (1, 16):
        y = mod.matvec(prep, xs[b])
        row[f"relerr_b{b}"] = relerr(y, xs[b].double() @ w.double().T)
    row["relerr"] = max(row["relerr_b1"], row["relerr_b16"])
    del w, y

    for b in BATCHES:
        if budget.spent():
            notes.append(f"budget spent before fused b{b}")
            break
        row[f"fused_b{b}_us"] = timed([lambda p=p, x=xs[b]: mod.matvec(p, x) for p in preps], dev, notes,
                                      f"fused b{b}") * 1e6
    if "fused_b1_us" in row:
        row["GBps_b1"] = comp / (row["fused_b1_us"] / 1e6) / 1e9
        row["pct_copy_b1"] = 100 * row["GBps_b1"] / copy_gbps
    xdt = xs[16].dtype  # f16 on the GPU
    capturable = codec != "squeezellm"  # squeezellm dequantize: CSR -> COO needs a host sync
    dq_preps = preps[:2]
    if not budget.spent():
        row["dequant_us"] = timed([lambda p=p: mod.dequantize(params, p.sections, (m, n), xdt)
                                   for p in dq_preps], dev, notes, "dequant", graph=capturable,
                                  reps=4, iters=5) * 1e6
    if not budget.spent():
        row["dequant_mm_b16_us"] = timed(
            [lambda p=p, x=xs[16]: F.linear(x, mod.dequantize(params, p.sections, (m, n), xdt))
             for p in dq_preps], dev, notes, "dequant+mm b16", graph=capturable, reps=4, iters=5) * 1e6
    del preps, prep, secs
    if dev == "cuda":
        torch.cuda.empty_cache()
    return row


def fp16_baseline(m: int, n: int, dev: str, l2: int, xs: dict[int, torch.Tensor]) -> dict[int, float]:
    dt = torch.float16 if dev == "cuda" else torch.float32  # CPU matmul in f16 is slow and not the point
    w16 = torch.randn(m, n, device=dev, dtype=dt)
    ncopy = max(1, cdiv(2 * l2, w16.numel() * w16.element_size())) + 1 if dev == "cuda" else 1
    ws = [w16] + [w16.clone() for _ in range(ncopy - 1)]
    out = {}
    for b in BATCHES:
        x = xs[b].to(dt)
        out[b] = timed([lambda w=w, x=x: F.linear(x, w) for w in ws], dev, [], "fp16")
    del ws, w16
    return out


# ---------------------------------------------------------------- report


def _f(v: Any, fmt: str = ".1f") -> str:
    return "–" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)


def _ratio(base: Any, t: Any) -> str:
    if base is None or t is None or base != base or t != t or t <= 0:
        return ""
    return f" ({base / t:.2f}x)"


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    ceil = meta["ceilings"]
    lines = [f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}; "
             f"copy {_f(ceil['copy_GBps'], '.0f')} GB/s (read+write), bf16 GEMM {_f(ceil['bf16_TFLOPs'], '.0f')} "
             f"TFLOP/s; {meta['timing']}", "",
             "Ratios in parentheses are fp16 time / codec time at the same batch (> 1: faster than fp16).", "",
             "| codec | shape (m x n) | bits | bits/w | fp16 b1 µs | fused b1 µs | GB/s (compr.) | % copy BW "
             "| fused b4 µs | fused b16 µs | dequant µs | dequant+mm b16 µs | relerr |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['codec']} | {r['m']}x{r['n']} | {r['bits']} | error: {r['error'][:80]} "
                         "|||||||||")
            continue
        g = r.get
        lines.append(
            f"| {r['codec']} | {r['m']}x{r['n']} | {r['bits']} | {r['bits_per_weight']:.2f} | "
            f"{_f(g('fp16_b1_us'))} | {_f(g('fused_b1_us'))}{_ratio(g('fp16_b1_us'), g('fused_b1_us'))} | "
            f"{_f(g('GBps_b1'), '.0f')} | {_f(g('pct_copy_b1'), '.0f')}% | "
            f"{_f(g('fused_b4_us'))}{_ratio(g('fp16_b4_us'), g('fused_b4_us'))} | "
            f"{_f(g('fused_b16_us'))}{_ratio(g('fp16_b16_us'), g('fused_b16_us'))} | {_f(g('dequant_us'), '.0f')} | "
            f"{_f(g('dequant_mm_b16_us'), '.0f')}{_ratio(g('fp16_b16_us'), g('dequant_mm_b16_us'))} | "
            f"{_f(g('relerr'), '.1e')} |")
    notes = [f"* {r['codec']} {r['m']}x{r['n']} {r['bits']}-bit: {n}" for r in rows for n in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


def write(out: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    os.makedirs(out, exist_ok=True)
    md = render(meta, rows)
    with open(os.path.join(out, "bench_codecs.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1, default=str)
    with open(os.path.join(out, "bench_codecs.md"), "w") as f:
        f.write(md + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget-s", type=float, default=210.0,
                    help="start no new config after this many seconds (default 210: the run ends within ~4 min)")
    ap.add_argument("--no-large", action="store_true", help="skip 8192x28672 (it runs last anyway)")
    ap.add_argument("--quick", action="store_true", help="first shape, squeezellm 3-bit and quip 2-bit only")
    ap.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes (checks the script)")
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    import triton

    dev = "cpu" if args.smoke else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        say("no CUDA device: use --smoke for the CPU interpreter check")
        return 2
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        props = torch.cuda.get_device_properties(0)
        l2 = getattr(props, "L2_cache_size", 50 << 20)
        dev_name = f"{torch.cuda.get_device_name()}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MiB"
    else:
        l2, dev_name = 0, "CPU (TRITON_INTERPRET=1 smoke run: times are meaningless)"
    meta: dict[str, Any] = {"device": dev_name, "torch": torch.__version__, "triton": triton.__version__,
                            "timing": "CUDA-graph median per call over >2x L2 of weight copies" if dev == "cuda"
                            else "eager perf_counter", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "budget_s": args.budget_s}
    try:
        meta["ceilings"] = ceilings(dev)
    except Exception as e:
        meta["ceilings"] = {"copy_GBps": float("nan"), "bf16_TFLOPs": float("nan"), "error": repr(e)[:300]}
    say(f"device: {dev_name}; copy {_f(meta['ceilings']['copy_GBps'], '.0f')} GB/s, "
        f"bf16 {_f(meta['ceilings']['bf16_TFLOPs'], '.0f')} TFLOP/s")

    if args.smoke:
        shapes = SMOKE_SHAPES
    else:
        shapes = SHAPES[:1] if args.quick else SHAPES + ([] if args.no_large else [LARGE])
    configs = [("squeezellm", b) for b in (SQUEEZELLM_BITS[:1] if args.quick else SQUEEZELLM_BITS)]
    configs += [("quip", b) for b in (QUIP_BITS[:1] if args.quick else QUIP_BITS)]
    rows: list[dict[str, Any]] = []
    for m, n in shapes:
        if budget.spent():
            rows.append({"codec": "all", "m": m, "n": n, "bits": "-", "error": "skipped: time budget spent"})
            say(f"{m}x{n}: skipped (time budget)")
            continue
        gen = torch.Generator(device=dev).manual_seed(1)
        xdt = torch.float16 if dev == "cuda" else torch.float32  # the interpreter has no fast f16
        xs = {b: torch.randn(b, n, device=dev, generator=gen).to(xdt) for b in BATCHES}
        try:
            fp16 = fp16_baseline(m, n, dev, l2, xs)
            say(f"{m}x{n} fp16: " + ", ".join(f"b{b} {t * 1e6:.1f}us" for b, t in fp16.items()))
        except Exception as e:
            fp16 = {}
            rows.append({"codec": "fp16", "m": m, "n": n, "bits": 16, "error": f"{type(e).__name__}: {e}"[:300]})
            say(f"{m}x{n} fp16 FAILED: {e!r}"[:400])
        for codec, bits in configs:
            if budget.spent():
                rows.append({"codec": codec, "m": m, "n": n, "bits": bits, "error": "skipped: time budget spent"})
                say(f"{m}x{n} {codec} {bits}-bit: skipped (time budget)")
                continue
            t0 = time.perf_counter()
            try:
                row = bench_codec(codec, m, n, bits, dev, l2, xs, fp16, meta["ceilings"]["copy_GBps"], budget)
                row["wall_s"] = time.perf_counter() - t0
                say(f"{m}x{n} {codec} {bits}-bit ({row['bits_per_weight']:.2f} bits/w, {row['wall_s']:.0f}s): "
                    + ", ".join(f"b{b} {row[f'fused_b{b}_us']:.1f}us" for b in BATCHES if f"fused_b{b}_us" in row)
                    + f", dequant {_f(row.get('dequant_us'), '.0f')}us, relerr {row['relerr']:.1e}")
            except Exception as e:
                row = {"codec": codec, "m": m, "n": n, "bits": bits, "error": f"{type(e).__name__}: {e}"[:300],
                       "traceback": traceback.format_exc()[-2000:], "wall_s": time.perf_counter() - t0}
                say(f"{m}x{n} {codec} {bits}-bit FAILED: {row['error']}")
                if dev == "cuda":
                    try:
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                    except Exception:
                        pass
            rows.append(row)
            write(args.out, meta, rows)
        xs = {}
    meta["wall_s"] = time.perf_counter() - budget.t0
    md = write(args.out, meta, rows)
    say(md)
    failed = sum("error" in r and not r["error"].startswith("skipped") for r in rows)
    say(f"bench_codecs: {len(rows)} rows, {failed} failed, {meta['wall_s']:.0f}s; wrote "
        f"{os.path.join(args.out, 'bench_codecs.md')} and .json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
