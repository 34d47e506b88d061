"""Text generation from a ``.spqr`` file: tokenizer from the file's metadata, greedy or sampled decoding.

The tokenizer comes from the file itself (:func:`spqrfmt.hf.tokenizer.load_tokenizer`, re-exported
here), so a ``.spqr`` file is self-contained; ``--tokenizer DIR`` overrides it.

CLI entry points (wired by ``spqrfmt.cli``): :func:`add_arguments`, :func:`cli_generate`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from ..reader import open_file as _open
from .tokenizer import has_stored_tokenizer, load_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import torch


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 32,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
) -> tuple[str, list[int]]:
    """Continue ``prompt``; temperature 0 is greedy. Returns (new text, new token ids)."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    enc = tokenizer(prompt, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    mask = enc.get("attention_mask")
    kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "attention_mask": None if mask is None else
                              mask.to(device)}
    if temperature > 0:
        if seed is not None:
            torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
    else:
        kwargs.update(do_sample=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is not None:
        kwargs["pad_token_id"] = pad
    with torch.inference_mode():
        out = model.generate(ids, **kwargs)
    new = out[0, ids.shape[1]:].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new


def greedy_tokens(model: Any, input_ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Plain greedy loop with the KV cache, no generation config involved (used by tests and benchmarks)."""
    import torch

    with torch.inference_mode():
        out = model(input_ids, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        toks = [int(tok)]
        for _ in range(max_new_tokens - 1):
            out = model(tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            toks.append(int(tok))
    return toks


_DTYPES = {"f16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "f32": "float32", "float32": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``spqr generate FILE --prompt ...``."""
    from ..cli import _float_in, _int_in

    parser.add_argument("file", help=".spqr file converted from a transformers causal LM")
    parser.add_argument("--prompt", required=True, help="text to continue (not empty)")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the file's stored tokenizer)")
    parser.add_argument("--max-new-tokens", type=_int_in(1), default=32)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=sorted(_DTYPES),
                        help="model dtype (default: float16 on cuda, float32 on cpu)")
    parser.add_argument("--temperature", type=_float_in(0.0), default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=_float_in(0.0, 1.0), default=1.0)
    parser.add_argument("--top-k", type=_int_in(0), default=0)
    parser.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=None)


def cli_generate(args: argparse.Namespace) -> int:
    """``spqr generate``: load, generate, print the continuation; timing goes to stderr.

    Everything the run needs (torch, a causal LM, a tokenizer, a prompt, the
    device) is checked before the model is built.
    """
    from ..cli import HF_EXTRA, _error, resolve_device
    from ..paths import UsageError, input_dir, input_file

    path = input_file(args.file)
    if not args.prompt.strip():
        return _error("--prompt is empty; give the text to continue", 2)
    tok_dir = input_dir(args.tokenizer, "--tokenizer folder") if args.tokenizer else None
    with _open(path) as f:
        config = f.metadata.get("hf.config")
        if config is None:
            return _error(f"{path} has no 'hf.config' metadata (converted without config.json): no model to run", 1)
        if tok_dir is None and not has_stored_tokenizer(f.metadata):
            raise UsageError(f"{path}: no tokenizer files in the metadata; pass a tokenizer folder (--tokenizer DIR)")
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        return _error(f"spqr generate needs torch and transformers ({e.name} is missing): {HF_EXTRA}", 2)
    from ..model import load_model
    from .evaluate import check_causal_lm

    device = resolve_device(args.device)
    dtype_name = _DTYPES[args.dtype] if args.dtype else ("float16" if device.startswith("cuda") else "float32")
    check_causal_lm(config if isinstance(config, str) else bytes(config).decode("utf-8", "replace"), str(path))
    t0 = time.perf_counter()
    try:
        tok = load_tokenizer(path, tok_dir)
    except ValueError as e:  # no tokenizer stored: the user can pass one
        raise UsageError(str(e)) from None
    except (OSError, KeyError, TypeError, AttributeError) as e:  # transformers on broken tokenizer files
        return _error(f"{path}: the stored tokenizer cannot be loaded ({type(e).__name__}: {e}); pass --tokenizer DIR",
                      1)
    if not len(tok(args.prompt)["input_ids"]):
        return _error("--prompt gives no tokens with this tokenizer", 2)
    model = load_model(path, device=device, dtype=getattr(torch, dtype_name))
    t1 = time.perf_counter()
    text, new = generate(model, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    t2 = time.perf_counter()
    print(args.prompt + text)
    print(f"[load {t1 - t0:.2f} s, {len(new)} tokens in {t2 - t1:.2f} s on {device}, {dtype_name}]", file=sys.stderr)
    return 0


__all__ = ["add_arguments", "cli_generate", "generate", "greedy_tokens", "load_tokenizer"]
