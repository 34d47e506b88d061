"""Streaming calibration at scale: an 8B-Llama-shaped sharded checkpoint (random weights), peak memory and time.

    python bench/scale_calibrate.py --dir /scratch/llama8b --layers 4        # GPU: 128 x 2048 tokens, cuda
    python bench/scale_calibrate.py --dir /tmp/small --small                 # CPU smoke test (tiny shape)
    python bench/scale_calibrate.py --dir /tmp/med --shape medium [--whole]  # CPU: streaming vs whole-model RSS

Writes a real HF folder (config.json, model-0000i-of-0000N.safetensors shards of
about 5 GB, model.safetensors.index.json; bf16 weights ~N(0, 0.02)), unless
it is already there with the same shape, then runs
``quantize_model_calibrated`` on it in a child process (random token ids: the
cost does not depend on the text) and records into ``--out`` (JSON):
``model_shape``, ``peak_host_rss_gb`` (the child's ru_maxrss), ``peak_gpu_gb``
(torch.cuda.max_memory_allocated), ``total_min`` and ``per_block_s``.
``--layers K`` writes and calibrates only the first K blocks of the 8B shape
(each block is the full-size one), so a short GPU slot suffices; the JSON
also gives ``total_min_all_blocks``, the per-block mean times the model's block count (32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0}
SMALL = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8,
         "num_key_value_heads": 4, "vocab_size": 4096, "max_position_embeddings": 512, "rope_theta": 10000.0}
MEDIUM = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 8,
          "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 512, "rope_theta": 10000.0}
SHAPES = {"8b": LLAMA_8B, "medium": MEDIUM, "small": SMALL}
SHARD_BYTES = 5 * 10**9


def _specs(shape: dict, layers: int) -> list[tuple[str, tuple[int, ...]]]:
    h, f, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def _random_bf16(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """bf16 bit patterns: norms 1.0, matrices ~N(0, 0.02) (f32 -> bf16 by truncation: fast, fine for a benchmark)."""
    if len(shape) == 1:
        return np.full(shape, 0x3F80, dtype=np.uint16)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():  # 8e9 normals: seconds on a GPU, minutes on one core
        g = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(shape, generator=g, device="cuda") * 0.02
        return (x.view(torch.int32) >> 16).to(torch.int16).cpu().numpy().view(np.uint16)
    rng = np.random.default_rng(seed)
    out = np.empty(shape, dtype=np.uint16)
    rows = max(1, (1 << 24) // shape[1])
    for r in range(0, shape[0], rows):
        x = rng.standard_normal((min(rows, shape[0] - r), shape[1]), np.float32)
        out[r:r + rows] = ((x * 0.02).view(np.uint32) >> 16).astype(np.uint16)
    return out


def write_checkpoint(folder: Path, shape: dict, layers: int) -> None:
    """A sharded HF Llama folder with random bf16 weights (skipped when config.json already matches)."""
    from spqrfmt.safetensors_io import write_safetensors_streaming

    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **shape, "num_hidden_layers": layers,
              "hidden_act": "silu", "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
              "bos_token_id": 1, "eos_token_id": 2}
    cfg_path = folder / "config.json"
    if cfg_path.exists() and json.loads(cfg_path.read_text()) == config and (
            folder / "model.safetensors.index.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    specs = _specs(shape, layers)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shp in specs:
        n = math.prod(shp) * 2
        if size and size + n > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shp))
        size += n
    wmap = {}
    seeds = {name: i for i, (name, _s) in enumerate(specs)}
    for k, part in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        t = time.perf_counter()
        write_safetensors_streaming(folder / fname, [(n, "bf16", s) for n, s in part],
                                    lambda n, shp=dict(part): _random_bf16(n, shp[n], seeds[n]))
        print(f"wrote {fname} ({len(part)} tensors, {time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)
        wmap.update({n: fname for n, _s in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    cfg_path.write_text(json.dumps(config, indent=1))


def calibrate_child(args: argparse.Namespace) -> None:
    """Runs in the child process: calibrate, print one JSON line of timings and GPU memory."""
    import torch

    from spqrfmt.convert import QuantConfig
    from spqrfmt.encoder.calibrate import quantize_model_calibrated

    config = json.loads((Path(args.dir) / "config.json").read_text())
    tokens = torch.randint(0, config["vocab_size"], (args.nsamples, args.seqlen),
                           generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(bits=3, method="spqr").calib_config(nsamples=args.nsamples, seqlen=args.seqlen,
                                                          batch_size=args.batch_size, device=args.device)
    stamps: list[float] = []
    t0 = time.perf_counter()

    def log(line: str) -> None:
        if line.startswith("block "):
            stamps.append(time.perf_counter())
        print(line, file=sys.stderr, flush=True)

    quantize_model_calibrated(args.dir, tokens, cfg, work_dir=args.work_dir, log=log, streaming=not args.whole)
    total = time.perf_counter() - t0
    per_block = [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)]
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    print(json.dumps({"total_s": total, "per_block_s": per_block, "peak_gpu_gb": gpu}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="where the checkpoint folder is (or is written)")
    ap.add_argument("--layers", type=int, help="write and calibrate only the first K blocks")
    ap.add_argument("--small", action="store_true", help="tiny shape, 16 x 128 tokens on cpu (smoke test)")
    ap.add_argument("--shape", choices=list(SHAPES), default="8b",
                    help="8b (default); medium (74M params, 12 blocks: the CPU memory comparison); small = --small")
    ap.add_argument("--whole", action="store_true", help="the whole-model (from_pretrained) path, for comparison")
    ap.add_argument("--nsamples", type=int)
    ap.add_argument("--seqlen", type=int)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device")
    ap.add_argument("--work-dir", help="calibration work dir (default: DIR.calib-<pid>, removed after)")
    ap.add_argument("--out", default="docs/results/scale.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.small:
        args.shape = "small"
    shape = SHAPES[args.shape]
    cpu = args.shape != "8b"
    args.nsamples = args.nsamples or (16 if cpu else 128)
    args.seqlen = args.seqlen or (128 if cpu else 2048)
    args.device = args.device or ("cpu" if cpu else "cuda")
    if args.child:
        calibrate_child(args)
        return
    layers = args.layers or shape["num_hidden_layers"]
    folder = Path(args.dir)
    write_checkpoint(folder, shape, layers)
    work = Path(args.work_dir or f"{folder}.calib-{os.getpid()}")
    cmd = [sys.executable, __file__, "--child", "--dir", str(folder), "--nsamples", str(args.nsamples), "--seqlen",
           str(args.seqlen), "--batch-size", str(args.batch_size), "--device", args.device, "--work-dir", str(work)]
    cmd += ["--shape", args.shape]
    if args.whole:
        cmd.append("--whole")
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    finally:
        if args.work_dir is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    child = json.loads(done.stdout.strip().splitlines()[-1])
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**30  # Linux: KiB
    blocks = child["per_block_s"]
    result = {
        "model_shape": {**{k: shape[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                 "num_key_value_heads", "vocab_size")},
                        "blocks_in_model": shape["num_hidden_layers"], "blocks_run": layers},
        "path": "whole" if args.whole else "streaming",
        "tokens": [args.nsamples, args.seqlen], "batch_size": args.batch_size, "device": args.device,
        "peak_host_rss_gb": round(rss_gb, 3), "peak_gpu_gb": round(child["peak_gpu_gb"], 3),
        "total_min": round(child["total_s"] / 60, 3), "per_block_s": [round(b, 2) for b in blocks],
        "total_min_all_blocks": round(float(np.mean(blocks)) * shape["num_hidden_layers"] / 60, 2) if blocks else None,
        "command": " ".join(["python", "bench/scale_calibrate.py", *sys.argv[1:]]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
