"""End-to-end benchmark: the same Llama-architecture model in fp16 vs loaded from .spqr (3-/4-bit) on one GPU.

What it does (no network, one process, < 8 minutes on one H100/H200):

1. Builds a ~1.1B-parameter Llama config (TinyLlama-1.1B shape: 22 layers, hidden
   2048, MLP 5632, 32 query / 4 KV heads, vocab 32000) with random weights
   (std 0.02, norms 1). Weight *values* do not change kernel speed, so each of
   the four distinct linear shapes is quantized once with the reference
   data-free encoder (``quantize_spqr``: β1 = β2 = 16, 3-bit two-level stats,
   1 % outliers, on CPU threads) and that encoding is written for every
   layer; embeddings, norms and lm_head are stored raw fp16.
2. Writes one ``.spqr`` file per bit width and loads it with
   ``spqrfmt.model.load_model``: on CUDA every quantized linear becomes
   ``SpQRLinear`` (Triton fused matvec for <= 16 rows, bit-exact dequantize +
   cuBLAS above). The fp16 baseline is the *same* file loaded with
   ``use_kernels=False`` (weights decoded once to fp16 -- identical function,
   plain ``nn.Linear``), so both models compute the same thing and their
   greedy tokens are compared.
3. Per model: GPU memory after loading and peak, prefill time for a 128- and
   a 1024-token prompt (batch 1, median of 5 after warm-up, CUDA events),
   batch-1 greedy decode tokens/s over 128 new tokens with a static KV cache,
   once eager and once with the whole decode step captured in a CUDA graph
   (falls back to eager, and says so, if capture fails).

Prints a markdown table (and writes it to ``--out``/e2e.md plus JSON).

    python bench/e2e.py                 # GPU, full size
    python bench/e2e.py --quick         # tiny model; CPU-only works (GPU timings skipped)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _bootstrap() -> None:
    """Import spqrfmt from this checkout when it is not installed (e.g. on a bare GPU machine)."""
    try:
        import spqrfmt  # noqa: F401
        return
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import spqrfmt

    for sub in ("encoder", "decoder", "kernels", "conformance"):
        spec = importlib.util.spec_from_file_location(f"spqrfmt.{sub}", root / sub / "__init__.py",
                                                      submodule_search_locations=[str(root / sub)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"spqrfmt.{sub}"] = mod
        spec.loader.exec_module(mod)
        setattr(spqrfmt, sub, mod)


_bootstrap()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from spqrfmt.encoder.quip import quantize_quip  # noqa: E402
from spqrfmt.encoder.spqr import quantize_spqr  # noqa: E402
from spqrfmt.encoder.squeezellm import quantize_squeezellm  # noqa: E402
from spqrfmt.model import load_model  # noqa: E402
from spqrfmt.writer import Writer  # noqa: E402

FULL = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
            num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
# Llama-3-8B's shape (the issue's end-to-end model): 32 layers, hidden 4096, MLP 14336, 8 KV heads
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048)
QUICK = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def linear_shapes(c: dict) -> dict[str, tuple[int, int]]:
    h, i = c["hidden_size"], c["intermediate_size"]
    kv = c["num_key_value_heads"] * (h // c["num_attention_heads"])
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}


def _encode(codec: str, w: np.ndarray, bits: int, outlier_fraction: float) -> object:
    """The data-free reference encoder of ``codec`` (the weights' values do not change kernel speed)."""
    if codec == "spqr":
        return quantize_spqr(w, bits=bits, group_size=16, scale_bits=3, zero_bits=3, stat_group_size=16,
                             outlier_fraction=outlier_fraction)
    if codec == "squeezellm":  # few k-means iterations: the LUT's quality does not matter for speed
        return quantize_squeezellm(w, bits=bits, max_iter=8)
    if codec == "quip":  # QuIP#'s E8P12 lattice codebook (2 bits) or the v1 grid
        return quantize_quip(w, bits=bits, codebook="e8p12" if bits == 2 else "grid")
    raise ValueError(f"unknown codec {codec!r}")


def encode_shapes(c: dict, codec: str, bits: int, outlier_fraction: float, seed: int) -> dict[tuple[int, int], object]:
    """One real encoding per distinct linear shape (random N(0, 0.02) weights), on CPU threads."""
    shapes = sorted(set(linear_shapes(c).values()))

    def one(shape: tuple[int, int]) -> object:
        rng = np.random.default_rng(seed + shape[0] * 7 + shape[1])
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        return _encode(codec, w, bits, outlier_fraction)

    with ThreadPoolExecutor(max_workers=min(len(shapes), os.cpu_count() or 1)) as ex:
        return dict(zip(shapes, ex.map(one, shapes), strict=True))


def write_model(path: Path, c: dict, enc: dict, seed: int) -> dict:
    """A .spqr file for the config: raw fp16 embeddings/norms/head, the shared encodings for every layer."""
    rng = np.random.default_rng(seed)
    h, v = c["hidden_size"], c["vocab_size"]
    config = dict(c, architectures=["LlamaForCausalLM"], model_type="llama", tie_word_embeddings=False,
                  torch_dtype="float16", bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5)
    shapes = linear_shapes(c)
    qbytes = qparams = 0
    with Writer(path, metadata={"hf.config": json.dumps(config), "source.model": "bench/e2e.py random"}) as w:
        w.add_raw("model.embed_tokens.weight", (rng.standard_normal((v, h), dtype=np.float32) * 0.02)
                  .astype(np.float16))
        for layer in range(c["num_hidden_layers"]):
            p = f"model.layers.{layer}"
            w.add_raw(f"{p}.input_layernorm.weight", np.ones(h, np.float16))
            w.add_raw(f"{p}.post_attention_layernorm.weight", np.ones(h, np.float16))
            for lin in LINEARS:
                e = enc[shapes[lin]]
                w.add_encoded(f"{p}.{lin}.weight", e, dtype="f16")
                qbytes += e.nbytes
                qparams += shapes[lin][0] * shapes[lin][1]
        w.add_raw("model.norm.weight", np.ones(h, np.float16))
        w.add_raw("lm_head.weight", (rng.standard_normal((v, h), dtype=np.float32) * 0.02).astype(np.float16))
    return {"bits_per_param": 8 * qbytes / qparams, "quant_params": qparams, "file_mib": path.stat().st_size / 2**20}


# ---- timing --------------------------------------------------------------------------------


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, reps: int = 5, warmup: int = 2) -> float:
    """Median seconds of fn() (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    ts = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _static_cache(model, max_len: int):
    from transformers import StaticCache

    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:  # older signature
        p = next(model.parameters())
        return StaticCache(config=model.config, max_batch_size=1, max_cache_len=max_len, device=p.device,
                           dtype=p.dtype)


def decode(model, prompt: torch.Tensor, new: int, graph: bool, compiled: bool = False) -> tuple[float, list[int], str]:
    """Greedy batch-1 decode of ``new`` tokens after ``prompt`` with a static KV cache.

    ``compiled``: the decode step goes through ``torch.compile`` (inductor, default mode:
    it fuses the norms/rotary/residuals between the linears; the compressed linears are
    one custom op each) before it is captured in the CUDA graph.
    Returns (tokens/s over the decode steps, tokens, mode actually used).
    """
    dev = prompt.device
    P = prompt.shape[1]
    cache = _static_cache(model, P + new + 8)
    with torch.inference_mode():
        out = model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(P, device=dev),
                    use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        tok_buf = tok.clone()
        pos_buf = torch.tensor([P], device=dev)

        def step():
            return model(input_ids=tok_buf, past_key_values=cache, cache_position=pos_buf, use_cache=True).logits

        if compiled:
            torch._dynamo.reset()
            step = torch.compile(step, dynamic=False)
        mode = "eager"
        g = None
        if graph and dev.type == "cuda":
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    t0 = time.perf_counter()
                    for _ in range(3):  # warm-up (and compile) on a side stream (writes position P, rewritten below)
                        step()
                    if compiled:
                        log(f"compiled the decode step in {time.perf_counter() - t0:.1f} s")
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    logits_static = step()
                mode = "cuda-graph"
            except Exception as e:  # noqa: BLE001 - report and fall back
                log(f"CUDA graph capture failed ({type(e).__name__}: {str(e)[:200]}); timing eager decode")
                g = None
                torch.cuda.synchronize()
        if g is None:  # eager: the first calls compile Triton kernels (a cold cache) and build each layer's
            for _ in range(2):  # launch plans; warm them up as the graph path does (writes position P, rewritten)
                step()
        toks = [int(tok)]
        _sync(dev)
        t0 = time.perf_counter()
        for i in range(new - 1):
            pos_buf.fill_(P + i)
            if g is not None:
                g.replay()
                logits = logits_static
            else:
                logits = step()
            nxt = logits[:, -1:].argmax(-1)
            tok_buf.copy_(nxt)
            toks.append(nxt)
        _sync(dev)
        dt = time.perf_counter() - t0
    return (new - 1) / dt, [int(t) for t in toks], mode


def _prompt(c: dict, dev: torch.device) -> torch.Tensor:
    return torch.randint(3, c["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(1)).to(dev)


def measure(name: str, model, c: dict, dev: torch.device, args, compiled: bool) -> dict:
    r: dict = {"model": name}
    torch.manual_seed(0)
    for P in args.prefill:
        ids = torch.randint(3, c["vocab_size"], (1, P), device=dev)
        with torch.inference_mode():
            r[f"prefill_{P}_ms"] = 1e3 * timed(lambda ids=ids: model(input_ids=ids, use_cache=False), dev,
                                               reps=args.reps)
        log(f"{name}: prefill {P} tokens {r[f'prefill_{P}_ms']:.2f} ms")
    prompt = _prompt(c, dev)
    tps, toks, _ = decode(model, prompt, min(32, args.new_tokens), graph=False)
    r["decode_eager_tok_s"] = tps
    r["tokens_eager"] = toks
    log(f"{name}: eager decode {tps:.1f} tok/s")
    if dev.type == "cuda":
        tps, toks, mode = decode(model, prompt, args.new_tokens, graph=True)
        r["decode_graph_tok_s"] = tps if mode == "cuda-graph" else None
        r["decode_mode"] = mode
        log(f"{name}: {mode} decode {tps:.1f} tok/s")
        if compiled:
            try:
                tps, _, mode = decode(model, prompt, args.new_tokens, graph=True, compiled=True)
                r["decode_compiled_tok_s"] = tps if mode == "cuda-graph" else None
                log(f"{name}: compiled + {mode} decode {tps:.1f} tok/s")
            except Exception as e:  # noqa: BLE001 - keep the other figures; say what failed
                log(f"{name}: compiled decode failed: {type(e).__name__}: {str(e)[:300]}")
                r["compile_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            torch._dynamo.reset()
    r["tokens"] = toks
    if dev.type == "cuda":
        r["peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return r


class Int4Linear(torch.nn.Module):
    """torch's int4 weight-only tinygemm (``_weight_int4pack_mm``, group 128, bf16), as gpt-fast/torchao use it:
    the peer a PyTorch user has for free. Asymmetric round-to-nearest per 128-column group of the layer's weight."""

    GS = 128

    def __init__(self, lin: torch.nn.Linear) -> None:
        super().__init__()
        w = lin.weight.detach().to(torch.float32)
        m, n = w.shape
        g = w.reshape(m, n // self.GS, self.GS)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp_min(1e-6)
        q = ((g - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(m, n)
        self.w = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
        zero = lo + 8 * scale  # tinygemm: w = (q - 8) * scale + zero
        self.sz = torch.stack([scale, zero], -1).reshape(m, n // self.GS, 2).transpose(0, 1).contiguous().to(
            torch.bfloat16)
        self.bias = None if lin.bias is None else lin.bias.detach().to(torch.bfloat16)
        self.out_features, self.in_features = m, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int4pack_mm(x.reshape(-1, self.in_features), self.w, self.GS, self.sz)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def to_int4(model) -> None:
    """Swap every decoder-layer Linear for :class:`Int4Linear` (the model must be bf16 on CUDA)."""
    for i, layer in enumerate(model.model.layers):
        for lin in LINEARS:
            parent_path, _, child = lin.rpartition(".")
            parent = layer.get_submodule(parent_path)
            dense = getattr(parent, child)
            q = Int4Linear(dense)
            if i == 0:  # the int4 layer computes its dense layer up to 4-bit rounding (a guard on the timed peer)
                x = torch.randn(4, q.in_features, dtype=torch.bfloat16, device=dense.weight.device)
                with torch.inference_mode():
                    ref = dense(x).double()
                    rel = float((q(x).double() - ref).norm() / ref.norm())
                log(f"int4 {lin}: relative error vs its bf16 layer {rel:.3f}")
            setattr(parent, child, q)
    torch.cuda.empty_cache()


def parse_run(text: str) -> tuple[str, int]:
    """``fp16`` | ``int4`` | ``CODEC:BITS`` (spqr:3, squeezellm:4, quip:2 = QuIP# E8P12)."""
    if text in ("fp16", "int4"):
        return text, 16 if text == "fp16" else 4
    codec, _, bits = text.partition(":")
    if codec not in ("spqr", "squeezellm", "quip") or not bits.isdigit():
        raise argparse.ArgumentTypeError(f"run {text!r}: expected fp16, int4 or CODEC:BITS (e.g. spqr:3)")
    return codec, int(bits)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model; runs on CPU (GPU timings skipped)")
    ap.add_argument("--runs", type=parse_run, nargs="+", default=None,
                    help="models to time: fp16 (dense decode of the first codec file), int4 (the same dense weights "
                         "through torch's int4 tinygemm), CODEC:BITS (default: fp16 spqr:4 spqr:3 int4)")
    ap.add_argument("--compile", nargs="*", default=None, metavar="RUN",
                    help="also time these runs' decode step through torch.compile (no RUN: every run)")
    ap.add_argument("--model", choices=["tinyllama-1.1b", "llama-8b"], default="tinyllama-1.1b",
                    help="the Llama shape to build (random weights)")
    ap.add_argument("--outlier-fraction", type=float, default=0.01)
    ap.add_argument("--prefill", type=int, nargs="+", default=None, help="prompt lengths (default 128 1024)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default=None)
    ap.add_argument("--workdir", default=None, help="where the .spqr files go (default: a temp dir)")
    ap.add_argument("--out", default=None, help="folder for e2e.md and e2e.json")
    args = ap.parse_args()
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    c = QUICK if args.quick else (LLAMA_8B if args.model == "llama-8b" else FULL)
    runs = args.runs or [("fp16", 16), ("spqr", 4), ("spqr", 3), ("int4", 4)]
    names = {f"{k}:{b}" if k not in ("fp16", "int4") else k for k, b in runs}
    compile_runs = set() if args.compile is None else (set(args.compile) or names)
    if args.prefill is None:
        args.prefill = [32] if args.quick else [128, 1024]
    if args.quick:
        args.new_tokens = min(args.new_tokens, 16)
        args.reps = min(args.reps, 3)
    if dev.type != "cuda" and not args.quick:
        log("no GPU: use --quick for the CPU check")
        return 2
    t_all = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="spqr-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    coded = [(k, b) for k, b in runs if k not in ("fp16", "int4")] or [("spqr", 4)]
    files = {}
    for codec, bits in coded:
        t0 = time.perf_counter()
        enc = encode_shapes(c, codec, bits, args.outlier_fraction, seed=bits)
        t1 = time.perf_counter()
        path = work / f"llama-{codec}-w{bits}.spqr"
        info = write_model(path, c, enc, seed=0)
        info["encode_s"], info["write_s"] = t1 - t0, time.perf_counter() - t1
        files[codec, bits] = (path, info)
        del enc
        log(f"{codec} w{bits}: encoded {info['encode_s']:.1f} s, wrote {info['file_mib']:.0f} MiB in "
            f"{info['write_s']:.1f} s ({info['bits_per_param']:.3f} bits/param)")

    rows = []
    nparams = None
    dense_tokens: dict[tuple[str, int], list[int]] = {}
    base = coded[0]  # fp16 and int4 are the dense weights of the first codec file
    for kind, bits in runs:
        label = kind if kind in ("fp16", "int4") else f"{kind}:{bits}"
        key = base if kind in ("fp16", "int4") else (kind, bits)
        path, info = files[key]
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
        kernels = kind not in ("fp16", "int4") and dev.type == "cuda"
        if kind == "int4":
            if dev.type != "cuda":
                log("int4: tinygemm needs CUDA; skipped")
                continue
            model = load_model(path, device=str(dev), dtype=torch.bfloat16, use_kernels=False)
            to_int4(model)
        else:
            model = load_model(path, device=str(dev), dtype=dtype, use_kernels=kernels)
        _sync(dev)
        load_s = time.perf_counter() - t0
        if kind == "fp16":
            nparams = sum(p.numel() for p in model.parameters())
        name = {"fp16": f"fp16 (dense {base[0]} w{base[1]} weights)",
                "int4": f"int4 tinygemm g128 (dense {base[0]} w{base[1]} weights)"}.get(kind, f"{kind} w{bits}")
        r = {"load_s": load_s, "bits_per_param": {"fp16": 16.0, "int4": 4.0 + 32 / Int4Linear.GS}.get(
            kind, info["bits_per_param"]), "file_mib": info["file_mib"] if kernels else None}
        if dev.type == "cuda":
            r["weights_mib"] = torch.cuda.memory_allocated(dev) / 2**20
        log(f"{name}: loaded in {load_s:.1f} s")
        try:
            r.update(measure(name, model, c, dev, args, compiled=label in compile_runs))
        except Exception as e:  # noqa: BLE001 - keep the rows measured so far; say what failed
            log(f"{name}: measurement failed: {type(e).__name__}: {e}")
            r.update({"model": name, "error": f"{type(e).__name__}: {str(e)[:300]}", "decode_eager_tok_s": None,
                      "tokens_eager": [], **{f"prefill_{p}_ms": None for p in args.prefill}})
        r.update({"kernel": {"fp16": "fp16", "int4": "int4-tinygemm"}.get(kind, kind), "bits": bits, "run": label})
        if kind == "fp16":
            dense_tokens[base] = r["tokens_eager"]
        rows.append(r)
        del model
    for codec, bits in coded:  # the dense model of every other file, only for its reference greedy tokens
        if (codec, bits) in dense_tokens or not any(r["run"] == f"{codec}:{bits}" for r in rows):
            continue
        model = load_model(files[codec, bits][0], device=str(dev), dtype=torch.float16 if dev.type == "cuda"
                           else torch.float32, use_kernels=False)
        dense_tokens[codec, bits] = decode(model, _prompt(c, dev), min(32, args.new_tokens), graph=False)[1]
        del model
    for r in rows:
        ref = dense_tokens.get(base if r["kernel"] in ("fp16", "int4-tinygemm") else (r["kernel"], r["bits"])) or []
        ok = r["tokens_eager"] and len(ref) == len(r["tokens_eager"])
        same = sum(a == b for a, b in zip(r["tokens_eager"], ref, strict=True)) if ok else 0
        r["greedy_match"] = same / len(ref) if ok else None

    table = render(rows, c, nparams, dev, args)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "e2e.md").write_text(table + "\n", encoding="utf-8")
        shape = "llama-8b" if c is LLAMA_8B else ("quick" if c is QUICK else "tinyllama-1.1b")
        (out / "e2e.json").write_text(json.dumps({"rows": issue_rows(rows, shape), "raw": rows, "config": c,
                                                  "device": device_name(dev), "command": " ".join(sys.argv)},
                                                 indent=1, default=str), encoding="utf-8")
    log(f"total {time.perf_counter() - t_all:.0f} s")
    return 0


def issue_rows(rows: list[dict], shape: str) -> list[dict]:
    """One row per (model, mode): ``graph`` = eager step in a CUDA graph, ``compiled`` = torch.compile'd step in one;
    ``decode_graph_tok_s`` is that mode's decode rate; prefill is eager in both."""
    out = []
    for r in rows:
        for mode, key in (("graph", "decode_graph_tok_s"), ("compiled", "decode_compiled_tok_s")):
            if r.get(key) is None:
                continue
            out.append({"model_shape": shape, "kernel": r["kernel"], "bits": r["bits"], "mode": mode,
                        "decode_graph_tok_s": r[key], "decode_eager_tok_s": r.get("decode_eager_tok_s"),
                        "prefill_128_ms": r.get("prefill_128_ms"), "prefill_1024_ms": r.get("prefill_1024_ms"),
                        "weights_mib": r.get("weights_mib"), "peak_mib": r.get("peak_mib"),
                        "bits_per_param": r["bits_per_param"], "load_s": r["load_s"],
                        "greedy_match": r.get("greedy_match")})
    return out


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def render(rows: list[dict], c: dict, nparams: int | None, dev: torch.device, args) -> str:
    def f(v, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    lines = [f"Device: {device_name(dev)}. Model: Llama, {c['num_hidden_layers']} layers, hidden {c['hidden_size']}, "
             f"MLP {c['intermediate_size']}, vocab {c['vocab_size']}, {f(nparams and nparams / 1e6, '.1f')} M params. "
             f"Batch 1; decode over {args.new_tokens} new tokens; prefill median of {args.reps}.", ""]
    if dev.type != "cuda":
        lines[0] += (" CPU quick check: the quantized layers are decoded to dense weights on CPU, so the rows differ"
                     " only in their weights; these timings say nothing about the GPU kernels.")
        lines.insert(1, "")
    pre = [f"prefill {p} ms" for p in args.prefill]
    hdr = ["model", "bits/param (linear)", "file MiB", "weights MiB", "peak MiB", "load s", *pre,
           "decode tok/s (eager)", "decode tok/s (CUDA graph)",
           "decode tok/s (compiled + graph)", "greedy tokens = dense model of the same file"]
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
    for r in rows:
        cells = [r["model"], f(r["bits_per_param"], ".3f"), f(r["file_mib"], ".0f"), f(r.get("weights_mib"), ".0f"),
                 f(r.get("peak_mib"), ".0f"), f(r["load_s"], ".1f"),
                 *[f(r[f"prefill_{p}_ms"], ".2f") for p in args.prefill],
                 f(r["decode_eager_tok_s"], ".1f"), f(r.get("decode_graph_tok_s"), ".1f"),
                 f(r.get("decode_compiled_tok_s"), ".1f"),
                 f(r["greedy_match"] and 100 * r["greedy_match"], ".0f") + (" %" if r["greedy_match"] is not None
                                                                              else "")]
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        if r.get("error"):
            lines.append(f"\n{r['model']}: measurement failed: {r['error']}")
        if r.get("decode_mode") and r["decode_mode"] != "cuda-graph":
            lines.append(f"\n{r['model']}: CUDA graph capture failed; only eager decode was timed (see stderr).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
