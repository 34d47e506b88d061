"""Benchmark of the fused squeezellm and quip kernels against fp16 cuBLAS (and spqr) on one GPU, in one process.

Method (that of bench/bench_kernels.py, docs/kernels.md): sections in the spec layout
are synthesised on the GPU (random codes, tables, scales, diagonals, Haar-random odd
factors, 0.5% evenly spread residuals: the kernels' speed does not depend on the
values) and prepared once; every variant is captured in a CUDA graph that cycles over
enough weight copies to exceed max(2 x L2, 120 MB), replayed, and the median per call
is reported beside fp16 ``F.linear`` (cuBLAS) on the same shape and batch. Each fused
result is first checked against dequantize + float64 matmul (``relerr``), so a timing
never belongs to a wrong kernel.

Rows (per shape m x n): squeezellm 3-bit and 4-bit (LUT matvec), quip E8P12 (2 bits,
QuIP#'s codebook, f16 diagonals), quip 2-bit grid (v1), and spqr 3-bit g16 (the lead's
kernel, if it imports; ``--no-spqr`` skips it). Columns: ``fused_b{1,4,16}_us``
(transforms included for quip), ``dequant_us`` (dense f16 from the prepared layout),
``fp16_b{1,4,16}_us``. After the rows, if the budget allows, a small tile sweep at
14336 x 4096 (batch 1 and 16) records which GemvConfig is fastest (``sweep`` in the JSON).

Every row runs in its own try/except (the error is recorded, the run goes on); no new
row starts once ``--budget-s`` is spent; JSON + markdown are rewritten after each row.
Kernels are compiled once per tile configuration (shapes are runtime arguments).

    python bench/bench_codecs.py --out $OUT [--budget-s 150] [--shapes 4096x4096,8192x28672] [--quick]
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
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# the issue's target shapes first (the budget may stop the run before the last; compiles dominate the first rows)
SHAPES = [(14336, 4096), (8192, 28672), (4096, 14336), (28672, 8192), (4096, 4096)]
SMOKE_SHAPES = [(24, 48), (48, 40)]
BATCHES = (1, 4, 16)
OUTLIER_FRACTION = 0.005  # SqueezeLLM's 0.45% + 0.05%
# (codec label, synthesiser key, nominal bits)
CONFIGS = [("squeezellm", "sq", 3), ("squeezellm", "sq", 4), ("quip-e8p12", "e8p", 2), ("quip-grid", "grid", 2),
           ("spqr-g16", "spqr", 3)]
MIN_CYCLE_BYTES = 120 << 20


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


def graph_time(fns: list[Callable[[], Any]], reps: int = 20, iters: int = 10) -> float:
    """Median seconds per call of a CUDA graph running fns round-robin (bench_kernels' method); CPU: one call."""
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        t0 = time.perf_counter()
        fns[0]()
        return time.perf_counter() - t0
    from bench_kernels import graph_time as _graph_time  # same folder: the scripts run as python bench/...

    return _graph_time(fns, reps=reps, iters=iters)


def copy_bandwidth() -> float:
    nbytes = 1 << 30
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = graph_time([lambda a=a, b=b: b.copy_(a)], reps=5, iters=5)
    del a, b
    torch.cuda.empty_cache()
    return 2 * nbytes / t / 1e9


# ---------------------------------------------------------------- synthetic sections (spec layout)


def _words(rows: int, cols: int, k: int, gen: torch.Generator, dev: str) -> torch.Tensor:
    """Random packed rows (spqr.md §4) with zero padding bits, as int32 (the u32 bits)."""
    w = cdiv(cols * k, 32)
    t = torch.randint(-2**31, 2**31 - 1, (rows, w), dtype=torch.int32, device=dev, generator=gen)
    pad = w * 32 - cols * k
    if pad:
        t[:, -1] &= (1 << (32 - pad)) - 1
    return t


def synth_squeezellm(m: int, n: int, bits: int, dev: str, gen: torch.Generator) -> tuple[dict, dict]:
    """squeezellm v1 sections: sorted f16 LUT per row, random indices, OUTLIER_FRACTION residuals per row."""
    K = 1 << bits
    lut = torch.sort(torch.randn((m, K), device=dev, generator=gen) * 0.02, dim=1).values.half()
    k = min(n, max(1, int(round(n * OUTLIER_FRACTION))))
    seg = max(1, n // k)
    cols = torch.arange(k, device=dev) * seg + torch.randint(0, seg, (m, k), device=dev, generator=gen)
    sec = {
        "lut": lut,
        "codes": _words(m, n, bits, gen, dev),
        "outlier_row_ptr": (torch.arange(m + 1, device=dev) * k).to(torch.int32),
        "outlier_col": cols.clamp_(max=n - 1).reshape(-1).to(torch.int16 if n <= 32767 else torch.int32),
        "outlier_val": (torch.randn(m * k, device=dev, generator=gen) * 0.1).half(),
    }
    return {"bits": bits}, sec


def _split_pow2(d: int) -> tuple[int, int]:
    k = (d & -d).bit_length() - 1
    return k, d >> k


def synth_quip(m: int, n: int, bits: int, dev: str, gen: torch.Generator, e8p: bool) -> tuple[dict, dict]:
    """quip sections: v1 grid codes with i8 signs, or v2 E8P12 codes with f16 diagonals (as QuIP# has them)."""
    km, am = _split_pow2(m)
    kn, an = _split_pow2(n)

    def orth(a: int) -> torch.Tensor:
        q, r = torch.linalg.qr(torch.randn((a, a), dtype=torch.float64, device=dev, generator=gen))
        return (q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)[None, :]).float().contiguous()

    sec: dict[str, torch.Tensor] = {"scale": torch.rand((m,), device=dev, generator=gen) * 0.01 + 0.001}
    if e8p:
        sec["codes"] = torch.randint(-2**15, 2**15, (m, n // 8), dtype=torch.int16, device=dev, generator=gen)
        sec["su"] = (torch.rand((n,), device=dev, generator=gen) + 0.5).half()
        sec["sv"] = (torch.rand((m,), device=dev, generator=gen) + 0.5).half()
        params: dict[str, Any] = {"codebook": "e8p12", "log2_hm": km, "log2_hn": kn}
    else:
        sec["codes"] = _words(m, n, bits, gen, dev)
        sec["su"] = (torch.randint(0, 2, (n,), device=dev, generator=gen) * 2 - 1).to(torch.int8)
        sec["sv"] = (torch.randint(0, 2, (m,), device=dev, generator=gen) * 2 - 1).to(torch.int8)
        params = {"bits": bits, "log2_hm": km, "log2_hn": kn}
    if an > 1:
        sec["factor_n"] = orth(an)
    if am > 1:
        sec["factor_m"] = orth(am)
    return params, sec


def tensor_bytes(v: Any) -> int:
    if isinstance(v, torch.Tensor):
        return v.numel() * v.element_size()
    if isinstance(v, dict):
        return sum(tensor_bytes(t) for t in v.values())
    if isinstance(v, (list, tuple)):
        return sum(tensor_bytes(t) for t in v)
    return 0


def clone_prepared(p: Any) -> Any:
    """Deep copy of a Prepared* dataclass: tensors (also inside dicts and lists/tuples) cloned, the rest shared."""
    def cl(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.clone()
        if isinstance(v, dict):
            return {k: cl(t) for k, t in v.items()}
        if isinstance(v, list):
            return [cl(t) for t in v]
        if isinstance(v, tuple):
            return tuple(cl(t) for t in v)
        return v

    kw, later = {}, {}
    for f in dataclasses.fields(p):
        v = getattr(p, f.name)
        if f.name == "split_ws":
            v = None  # each copy allocates its own split workspace on first use
        (kw if f.init else later)[f.name] = cl(v)
    q = type(p)(**kw)
    for k, v in later.items():
        object.__setattr__(q, k, v)
    return q


def relerr(y: torch.Tensor, want: torch.Tensor) -> float:
    y64, w64 = y.double(), want.double()
    return float(torch.linalg.norm(y64 - w64) / torch.linalg.norm(w64).clamp_min(1e-30))


# ---------------------------------------------------------------- one row


class Codec:
    """prepare / matvec / dense-dequant callables of one configuration, and its compressed bytes."""

    def __init__(self, key: str, m: int, n: int, bits: int, dev: str, gen: torch.Generator) -> None:
        self.key = key
        if key == "spqr":
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import bench_kernels as bk

            from spqrfmt.kernels import spqr as ks

            params, secs = bk.synth_sections(m, n, bits)
            self.mod = ks
            self.prep = ks.prepare(params, secs, (m, n), dev)
            self.clone = bk.clone_prepared
        else:
            from spqrfmt.kernels import quip as kq
            from spqrfmt.kernels import squeezellm as ksq

            if key == "sq":
                params, secs = synth_squeezellm(m, n, bits, dev, gen)
                self.mod = ksq
            else:
                params, secs = synth_quip(m, n, bits, dev, gen, e8p=key == "e8p")
                self.mod = kq
            self.prep = self.mod.prepare(params, secs, (m, n), dev)
            self.clone = clone_prepared
        self.params = params
        self.compressed = tensor_bytes(secs)
        del secs

    def matvec(self, p: Any, x: torch.Tensor, config: Any = None) -> torch.Tensor:
        if config is None:
            return self.mod.matvec(p, x)
        return self.mod.matvec(p, x, None, config)

    def dequant(self, p: Any, dt: torch.dtype) -> torch.Tensor:
        return self.mod.dequantize_prepared(p, dt)


def copies_for(nbytes: int, l2: int, dev: str) -> int:
    if dev != "cuda":
        return 1
    return cdiv(max(2 * l2, MIN_CYCLE_BYTES), max(nbytes, 1)) + 1


def bench_row(label: str, key: str, bits: int, m: int, n: int, dev: str, l2: int, xs: dict[int, torch.Tensor],
              fp16: dict[int, float], budget: Budget, gen: torch.Generator) -> dict[str, Any]:
    row: dict[str, Any] = {"codec": label, "m": m, "n": n, "bits": bits, "notes": []}
    for b in BATCHES:
        row[f"fp16_b{b}_us"] = fp16.get(b, float("nan")) * 1e6
    c = Codec(key, m, n, bits, dev, gen)
    row["params"] = c.params
    row["compressed_bytes"] = c.compressed
    row["bits_per_weight"] = 8 * c.compressed / (m * n)
    ncopy = copies_for(tensor_bytes(c.prep.__dict__), l2, dev)
    preps = [c.prep] + [c.clone(c.prep) for _ in range(ncopy - 1)]
    row["copies"] = ncopy
    # correctness of what is timed: fused vs the bit-exact dense decode + float64 matmul
    w = c.dequant(c.prep, torch.float32)
    for b in (1, 16):
        row[f"relerr_b{b}"] = relerr(c.matvec(c.prep, xs[b]), xs[b].double() @ w.double().T)
    row["relerr"] = max(row["relerr_b1"], row["relerr_b16"])
    del w
    if not row["relerr"] <= 4e-3:
        row["notes"].append(f"relerr {row['relerr']:.2e} > 4e-3: fused result WRONG")
    for b in BATCHES:
        if budget.spent():
            row["notes"].append(f"budget spent before fused b{b}")
            break
        row[f"fused_b{b}_us"] = graph_time([lambda p=p, x=xs[b], c=c: c.matvec(p, x) for p in preps]) * 1e6
    if "fused_b1_us" in row and dev == "cuda":
        row["GBps_b1"] = c.compressed / (row["fused_b1_us"] / 1e6) / 1e9
    if not budget.spent():
        row["dequant_us"] = graph_time([lambda p=p, c=c: c.dequant(p, torch.float16) for p in preps[:2]],
                                       reps=4, iters=5) * 1e6
    del preps, c
    if dev == "cuda":
        torch.cuda.empty_cache()
    return row


def fp16_baseline(m: int, n: int, dev: str, l2: int, xs: dict[int, torch.Tensor]) -> dict[int, float]:
    dt = torch.float16 if dev == "cuda" else torch.float32
    w16 = torch.randn(m, n, device=dev, dtype=dt)
    ws = [w16] + [w16.clone() for _ in range(copies_for(w16.numel() * w16.element_size(), l2, dev) - 1)]
    out = {}
    for b in BATCHES:
        x = xs[b].to(dt)
        out[b] = graph_time([lambda w=w, x=x: F.linear(x, w) for w in ws])
    del ws, w16
    return out


def sweep(dev: str, l2: int, budget: Budget, gen: torch.Generator, m: int, n: int,
          keys: set[str] | None = None) -> list[dict[str, Any]]:
    """A few GemvConfigs per codec at one shape, batch 1 and 16 (what to make the default next)."""
    from spqrfmt.kernels import quip as kq
    from spqrfmt.kernels import squeezellm as ksq

    xs = {b: torch.randn(b, n, device=dev, generator=gen).to(torch.float16 if dev == "cuda" else torch.float32)
          for b in (1, 16)}
    # alternatives to the defaults; quip e8p12: gather8 is the old per-weight table gather, sign_arith the
    # arithmetic sign word
    # squeezellm: prmt=False is the select tree (BM 64 / 4 warps: the old b1 default, BM 32 / 4 warps: the old
    # b16 one, which decodes each weight twice); dot1: batch 1 through tl.dot; pair: 3-bit prmt on word pairs;
    # per_sm / split: how far the columns are split (the tl.dot path measured faster with fewer, longer programs)
    w2 = dict(BM=32, NU=32, num_warps=2, dot1=True)
    dot = [w2, dict(w2, split=1), dict(w2, per_sm=4), dict(w2, per_sm=2), dict(w2, per_sm=16),
           dict(w2, pair=True, per_sm=4), dict(w2, NU=64, per_sm=4), dict(w2, BM=16, num_warps=1),
           dict(w2, BM=16, num_warps=1, per_sm=16), dict(w2, BM=64, num_warps=4, per_sm=4),
           dict(w2, num_stages=2, per_sm=4), dict(w2, num_stages=4, split=1)]
    fma = [dict(BM=64, NU=32, per_sm=4), dict(BM=64, NU=32, per_sm=16), dict(BM=64, NU=32, split=1),
           dict(BM=128, NU=32, num_warps=8, per_sm=4), dict(BM=64, NU=32, num_stages=2)]
    old = [dict(BM=64, NU=32, prmt=False), dict(BM=32, NU=32, num_warps=4, prmt=False)]
    plans = [("sq", 3, ksq.GemvConfig, dot + fma + old), ("sq", 4, ksq.GemvConfig, dot[:4] + fma[:2] + old),
             ("e8p", 2, kq.GemvConfig, [dict(BM=128, NG=16, e8p="gather8"), dict(BM=128, NG=16, e8p="sign_arith"),
                                        dict(BM=128, NG=16, num_warps=2), dict(BM=256, NG=16),
                                        dict(BM=128, NG=32), dict(BM=64, NG=16)]),
             ("grid", 2, kq.GemvConfig, [dict(BM=64, NU=64), dict(BM=256, NU=32, num_warps=8), dict(BM=64, NU=32)])]
    out = []
    for key, bits, cfg_cls, cfgs in plans:
        if keys is not None and key not in keys:
            continue
        try:
            c = Codec(key, m, n, bits, dev, gen)
            preps = [c.prep] + [c.clone(c.prep) for _ in range(copies_for(tensor_bytes(c.prep.__dict__), l2, dev) - 1)]
        except Exception as e:
            out.append({"codec": key, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        for kw in cfgs:
            for b in (1, 16):
                if budget.spent():
                    return out
                rec = {"codec": key, "bits": bits, "m": m, "n": n, "batch": b, "config": kw}
                try:
                    cfg = cfg_cls(**kw)
                    rec["relerr"] = relerr(c.matvec(c.prep, xs[b], cfg),
                                           xs[b].double() @ c.dequant(c.prep, torch.float32).double().T)
                    rec["us"] = graph_time([lambda p=p, x=xs[b], cfg=cfg, c=c: c.matvec(p, x, cfg)
                                           for p in preps]) * 1e6
                    say(f"sweep {key} {bits}b {m}x{n} b{b} {kw}: {rec['us']:.1f}us relerr {rec['relerr']:.1e}")
                except Exception as e:
                    rec["error"] = f"{type(e).__name__}: {e}"[:300]
                    say(f"sweep {key} b{b} {kw} FAILED: {rec['error']}")
                out.append(rec)
        del preps, c
        if dev == "cuda":
            torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------- report


def _f(v: Any, fmt: str = ".1f") -> str:
    return "–" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)


def _ratio(base: Any, t: Any) -> str:
    if base is None or t is None or base != base or t != t or t <= 0:
        return ""
    return f" ({base / t:.2f}x)"


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}; copy "
             f"{_f(meta.get('copy_GBps'), '.0f')} GB/s (read+write); {meta['timing']}", "",
             "Ratios are fp16 time / codec time at the same batch (> 1: faster than fp16 cuBLAS).", "",
             "| codec | m x n | bits | bits/w | fp16 b1 µs | fused b1 µs | GB/s b1 | fp16 b4 µs | fused b4 µs "
             "| fp16 b16 µs | fused b16 µs | dequant f16 µs | relerr |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['codec']} | {r['m']}x{r['n']} | {r['bits']} | error: {r['error'][:90]} |||||||||")
            continue
        g = r.get
        lines.append(
            f"| {r['codec']} | {r['m']}x{r['n']} | {r['bits']} | {r['bits_per_weight']:.2f} | "
            f"{_f(g('fp16_b1_us'))} | {_f(g('fused_b1_us'))}{_ratio(g('fp16_b1_us'), g('fused_b1_us'))} | "
            f"{_f(g('GBps_b1'), '.0f')} | {_f(g('fp16_b4_us'))} | "
            f"{_f(g('fused_b4_us'))}{_ratio(g('fp16_b4_us'), g('fused_b4_us'))} | {_f(g('fp16_b16_us'))} | "
            f"{_f(g('fused_b16_us'))}{_ratio(g('fp16_b16_us'), g('fused_b16_us'))} | {_f(g('dequant_us'), '.0f')} | "
            f"{_f(g('relerr'), '.1e')} |")
    notes = [f"* {r['codec']} {r['m']}x{r['n']} {r['bits']}-bit: {n}" for r in rows for n in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:", *notes]
    sw = [s for s in meta.get("sweep", []) if "us" in s]
    if sw:
        lines += ["", "Tile sweep (µs):", ""]
        lines += [f"* {s['codec']} {s['bits']}b {s['m']}x{s['n']} b{s['batch']} {s['config']}: {s['us']:.1f}"
                  for s in sw]
    return "\n".join(lines)


def write(out: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    os.makedirs(out, exist_ok=True)
    md = render(meta, rows)
    for name, text in (("bench_codecs.json", json.dumps({**meta, "rows": rows}, indent=1, default=str)),
                       ("bench_codecs.md", md + "\n")):
        tmp = os.path.join(out, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))
    return md


def parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        m, _, n = part.strip().lower().partition("x")
        out.append((int(m), int(n)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", os.path.join("docs", "results")))
    ap.add_argument("--budget-s", type=float, default=150.0,
                    help="start no new row after this many seconds (default 150: the run ends within ~3 min)")
    ap.add_argument("--shapes", type=parse_shapes, default=None, help="e.g. 4096x4096,8192x28672 (m x n)")
    ap.add_argument("--quick", action="store_true", help="first shape, squeezellm 3-bit and quip e8p12 only")
    ap.add_argument("--no-spqr", action="store_true", help="skip the spqr comparison rows")
    ap.add_argument("--codecs", default="", help="comma list of row labels to run (e.g. quip-e8p12); also the sweep")
    ap.add_argument("--no-sweep", action="store_true", help="skip the tile sweep after the rows")
    ap.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes (checks the script)")
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    dev = "cpu" if args.smoke else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        say("bench_codecs: no CUDA device (use --smoke for the CPU interpreter check)")
        return 2
    import triton

    if dev == "cuda":
        props = torch.cuda.get_device_properties(0)
        l2 = getattr(props, "L2_cache_size", 50 << 20)
        name = f"{torch.cuda.get_device_name()}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MiB"
    else:
        l2, name = 0, "CPU (TRITON_INTERPRET=1 smoke run: times are meaningless)"
    meta: dict[str, Any] = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
                            "timing": ("CUDA-graph median per call over max(2 x L2, 120 MB) of weight copies"
                                       if dev == "cuda" else "one eager call"),
                            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": args.budget_s, "argv": argv}
    if dev == "cuda":
        try:
            meta["copy_GBps"] = copy_bandwidth()
        except Exception as e:
            meta["copy_error"] = repr(e)[:300]
    say(f"bench_codecs on {name}; copy {_f(meta.get('copy_GBps'), '.0f')} GB/s")
    shapes = args.shapes or (SMOKE_SHAPES if args.smoke else SHAPES)
    configs = [c for c in CONFIGS if not (args.no_spqr or args.smoke) or c[1] != "spqr"]
    if args.quick:
        shapes, configs = shapes[:1], [CONFIGS[0], CONFIGS[2]]
    keys = None
    if args.codecs:
        wanted = set(args.codecs.split(","))
        configs = [c for c in configs if c[0] in wanted]
        keys = {c[1] for c in configs}
    gen = torch.Generator(device=dev).manual_seed(1)
    rows: list[dict[str, Any]] = []
    for m, n in shapes:
        if budget.spent():
            rows.append({"codec": "all", "m": m, "n": n, "bits": "-", "error": "skipped: time budget spent"})
            continue
        xdt = torch.float16 if dev == "cuda" else torch.float32  # the interpreter has no fast f16
        xs = {b: torch.randn(b, n, device=dev, generator=gen).to(xdt) for b in BATCHES}
        try:
            fp16 = fp16_baseline(m, n, dev, l2, xs)
            say(f"{m}x{n} fp16: " + ", ".join(f"b{b} {t * 1e6:.1f}us" for b, t in fp16.items()))
        except Exception as e:
            fp16 = {}
            say(f"{m}x{n} fp16 FAILED: {e!r}"[:400])
        for label, key, bits in configs:
            if budget.spent():
                rows.append({"codec": label, "m": m, "n": n, "bits": bits, "error": "skipped: time budget spent"})
                continue
            t0 = time.perf_counter()
            try:
                row = bench_row(label, key, bits, m, n, dev, l2, xs, fp16, budget, gen)
                row["wall_s"] = time.perf_counter() - t0
                say(f"{m}x{n} {label} {bits}b ({row['bits_per_weight']:.2f} b/w, {row['wall_s']:.0f}s): "
                    + ", ".join(f"b{b} {row[f'fused_b{b}_us']:.1f}us"
                                + _ratio(row[f"fp16_b{b}_us"], row[f"fused_b{b}_us"])
                                for b in BATCHES if f"fused_b{b}_us" in row)
                    + f", dequant {_f(row.get('dequant_us'), '.0f')}us, relerr {row['relerr']:.1e}")
            except Exception as e:
                row = {"codec": label, "m": m, "n": n, "bits": bits, "error": f"{type(e).__name__}: {e}"[:300],
                       "traceback": traceback.format_exc()[-2000:], "wall_s": time.perf_counter() - t0}
                say(f"{m}x{n} {label} {bits}b FAILED: {row['error']}")
                if dev == "cuda":
                    try:
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                    except Exception:
                        pass
            rows.append(row)
            write(args.out, meta, rows)
    if not (args.no_sweep or args.quick) and not budget.spent():
        sm, sn = (14336, 4096) if not args.smoke else SMOKE_SHAPES[0]
        try:
            meta["sweep"] = sweep(dev, l2, budget, gen, sm, sn, keys)
        except Exception as e:
            meta["sweep"] = [{"error": f"{type(e).__name__}: {e}"[:300]}]
    meta["wall_s"] = time.perf_counter() - budget.t0
    md = write(args.out, meta, rows)
    say(md)
    failed = sum("error" in r and not r["error"].startswith("skipped") for r in rows)
    wrong = sum(not r.get("relerr", 0.0) <= 4e-3 for r in rows if "error" not in r)
    say(f"bench_codecs: {len(rows)} rows, {failed} failed, {wrong} wrong, {meta['wall_s']:.0f}s; wrote "
        f"{os.path.join(args.out, 'bench_codecs.md')} and .json")
    return 1 if failed or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
