"""GGUF -> Hugging Face folder, fast: llama.cpp blocks dequantized with vectorised torch (on a GPU if given).

Why: transformers' GGUF loader dequantizes with gguf-py's numpy code tensor by
tensor and took 22 min for Qwen2.5-Coder-1.5B on this 2-core machine. Here the
GGUF's tensor bytes are read through ``gguf.GGUFReader`` (a memory map: the
``gguf`` wheel is pure python) and each block type is decoded by the formulas
of ggml's block layouts, in the same f32 operation order as gguf-py's
``dequantize`` (so the result is bit-identical to it; docs/quality.md says how
that was checked on every tensor of both models). Config and tokenizer come
from transformers' own GGUF metadata conversion (metadata only, seconds).

Supported tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K (what
the two bench models use, plus their nearest relatives). Architectures:
llama (q/k rows un-permuted as transformers does) and qwen2.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

QK_K = 256
# GGML type id -> (name, elements per block, bytes per block)
BLOCKS = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
          8: ("Q8_0", 32, 34), 12: ("Q4_K", QK_K, 144), 14: ("Q6_K", QK_K, 210)}

# GGUF tensor name (block part) -> Hugging Face name, for the llama and qwen2 layouts
_BLOCK_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m is not None and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m is not None and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    raise ValueError(f"no Hugging Face name for GGUF tensor {gguf_name!r}")


def _f16(b: Any) -> Any:
    """[..., 2k] uint8 (little-endian) -> [..., k] f32 via f16."""
    import torch

    return b.contiguous().view(torch.float16).to(torch.float32)


def _nibbles(qs: Any, groups: int, width: int) -> Any:
    """[nb, groups*width] bytes -> [nb, groups, 2*width] f32: low nibbles first, then high (ggml's order)."""
    import torch

    q = qs.reshape(qs.shape[0], groups, 1, width)
    shift = torch.tensor([0, 4], dtype=torch.uint8, device=qs.device).reshape(1, 1, 2, 1)
    return ((q >> shift) & 0x0F).reshape(qs.shape[0], groups, 2 * width).to(torch.float32)


def _scale_min_k4(sc: Any) -> tuple[Any, Any]:
    """Q4_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins per super-block ([nb, 8] uint8 each)."""
    import torch

    d, m, md = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scales = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 6) << 4)], dim=1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 6) << 4)], dim=1)
    return scales, mins


def dequantize_blocks(raw: Any, type_id: int) -> Any:
    """[nb, bytes per block] uint8 torch tensor -> [nb * elements per block] f32, per ggml's block layout."""
    import torch

    nb = raw.shape[0]
    if type_id == 0:
        return raw.contiguous().view(torch.float32).reshape(-1)
    if type_id == 1:
        return _f16(raw).reshape(-1)
    if type_id == 30:
        return raw.contiguous().view(torch.bfloat16).to(torch.float32).reshape(-1)
    if type_id == 8:  # Q8_0: f16 d, 32 x i8
        d = _f16(raw[:, :2])
        return (raw[:, 2:].contiguous().view(torch.int8).to(torch.float32) * d).reshape(-1)
    if type_id == 2:  # Q4_0: f16 d, 16 bytes of nibbles; d * (q - 8)
        d = _f16(raw[:, :2])
        q = _nibbles(raw[:, 2:], 1, 16).reshape(nb, 32)
        return ((q - 8.0) * d).reshape(-1)
    if type_id == 3:  # Q4_1: f16 d, f16 m, 16 bytes of nibbles; d * q + m
        d, m = _f16(raw[:, :2]), _f16(raw[:, 2:4])
        q = _nibbles(raw[:, 4:], 1, 16).reshape(nb, 32)
        return (d * q + m).reshape(-1)
    if type_id == 12:  # Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        d, dmin = _f16(raw[:, :2]), _f16(raw[:, 2:4])
        sc, mn = _scale_min_k4(raw[:, 4:16])
        dd = (d * sc.to(torch.float32)).reshape(nb, 8, 1)
        dm = (dmin * mn.to(torch.float32)).reshape(nb, 8, 1)
        q = _nibbles(raw[:, 16:], 4, 32).reshape(nb, 8, 32)
        return (dd * q - dm).reshape(-1)
    if type_id == 14:  # Q6_K: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 x i8 scales, f16 d
        ql, qh, sc, d = raw[:, :128], raw[:, 128:192], raw[:, 192:208], _f16(raw[:, 208:210])
        lo = _nibbles(ql, 2, 64).to(torch.uint8).reshape(nb, 8, 32)
        shift = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=raw.device).reshape(1, 1, 4, 1)
        hi = ((qh.reshape(nb, 2, 1, 32) >> shift) & 0x03).reshape(nb, 8, 32)
        q = ((lo | (hi << 4)).to(torch.int8) - 32).reshape(nb, 16, 16).to(torch.float32)
        dd = (d * sc.contiguous().view(torch.int8).to(torch.float32)).reshape(nb, 16, 1)
        return (dd * q).reshape(-1)
    raise ValueError(f"GGML tensor type {type_id} is not supported (supported: "
                     f"{', '.join(n for n, _e, _b in BLOCKS.values())})")


def dequantize(data: np.ndarray, type_id: int, shape: tuple[int, ...], device: str = "cpu") -> np.ndarray:
    """A GGUF tensor's bytes (``GGUFReader`` tensor ``.data``) -> f32 array of ``shape`` (row-major, HF order)."""
    import torch

    if type_id not in BLOCKS:
        dequantize_blocks(torch.zeros((0, 1), dtype=torch.uint8), type_id)  # raises the clear error
    _name, per, nbytes = BLOCKS[type_id]
    count = int(np.prod(shape))
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if count % per or raw.size != count // per * nbytes:
        raise ValueError(f"tensor of {count} elements has {raw.size} bytes, not {count // per * nbytes}")
    t = torch.from_numpy(raw.copy()).to(device).reshape(count // per, nbytes)
    return dequantize_blocks(t, type_id).reshape(shape).cpu().numpy()


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row interleave (the rotary halves), as transformers' GGUF loader does."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def gguf_to_hf(gguf_path: Path, folder: Path, device: str = "cpu", log: Any = None) -> Path:
    """Write ``folder`` (config.json, model.safetensors f32, tokenizer files) from ``gguf_path``; atomic."""
    import shutil

    import torch
    from gguf import GGUFReader
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    t0 = time.perf_counter()
    src, name = gguf_path.parent, gguf_path.name
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    arch = config.model_type
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"architecture {arch!r}: only llama and qwen2 are mapped")
    reader = GGUFReader(gguf_path)
    tensors: dict[str, Any] = {}
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # ggml ne order -> row-major
        w = dequantize(t.data, int(t.tensor_type), shape, device)
        key = hf_name(t.name)
        if arch == "llama" and ".self_attn.q_proj." in key:
            w = _unpermute(w, config.num_attention_heads)
        elif arch == "llama" and ".self_attn.k_proj." in key:
            w = _unpermute(w, config.num_key_value_heads)
        tensors[key] = torch.from_numpy(np.ascontiguousarray(w))
    if "lm_head.weight" in tensors:
        config.tie_word_embeddings = False
    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    if log is not None:
        log(f"{gguf_path.name} -> {folder}: {len(tensors)} tensors in {time.perf_counter() - t0:.1f}s ({device})")
    return folder


def check_against_gguf(gguf_path: Path, device: str = "cpu") -> dict[str, int]:
    """Compare :func:`dequantize` with gguf-py's ``dequantize`` on every tensor; {type name: tensors identical}.

    Raises on the first tensor whose f32 bytes differ. Slow (gguf-py's numpy path): a one-off check.
    """
    from gguf import GGUFReader
    from gguf import dequantize as reference

    counts: dict[str, int] = {}
    for t in GGUFReader(gguf_path).tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        ours = dequantize(t.data, int(t.tensor_type), shape, device)
        ref = np.asarray(reference(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if ours.tobytes() != ref.tobytes():
            bad = int((ours.view(np.uint32) != ref.view(np.uint32)).sum())
            raise AssertionError(f"{t.name} ({BLOCKS[int(t.tensor_type)][0]}): {bad} elements differ")
        name = BLOCKS[int(t.tensor_type)][0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf", type=Path)
    ap.add_argument("folder", type=Path, nargs="?")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--check", action="store_true", help="compare every tensor with gguf-py's dequantize, exit")
    args = ap.parse_args(argv)
    if args.check:
        t0 = time.perf_counter()
        counts = check_against_gguf(args.gguf, args.device)
        print(f"{args.gguf.name}: bit-identical to gguf-py on every tensor {counts} "
              f"({time.perf_counter() - t0:.0f}s)")
        return 0
    if args.folder is None:
        ap.error("folder is required unless --check")
    gguf_to_hf(args.gguf, args.folder, args.device, log=lambda s: print(s, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
