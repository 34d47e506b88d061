"""``spqr generate``: generate text from the compressed model"""

from __future__ import annotations

import argparse
import sys
import time

from ..argtypes import float_in, int_in
from ..hf.generate import generate
from ..hf.tokenizer import has_stored_tokenizer, load_tokenizer
from ..reader import open_file as _open
from ._common import HF_EXTRA, _error, resolve_device


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "generate", help="run the compressed model: generate text from a prompt (needs torch)",
                       description="Load the model from the .spqr file (config and tokenizer from its metadata) and "
                       "generate text. On CUDA quantized layers stay compressed and run through the Triton kernels.")
    add_arguments(p)
    return p


_DTYPES = {"f16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "f32": "float32", "float32": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``spqr generate FILE --prompt ...``."""
    parser.add_argument("file", help=".spqr file converted from a transformers causal LM")
    parser.add_argument("--prompt", required=True, help="text to continue (not empty)")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the file's stored tokenizer)")
    parser.add_argument("--max-new-tokens", type=int_in(1), default=32)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=sorted(_DTYPES),
                        help="model dtype (default: float16 on cuda, float32 on cpu)")
    parser.add_argument("--temperature", type=float_in(0.0), default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float_in(0.0, 1.0), default=1.0)
    parser.add_argument("--top-k", type=int_in(0), default=0)
    parser.add_argument("--seed", type=int_in(0, 2**63 - 1), default=None)


def run(args: argparse.Namespace) -> int:
    """``spqr generate``: load, generate, print the continuation; timing goes to stderr.

    Everything the run needs (torch, a causal LM, a tokenizer, a prompt, the
    device) is checked before the model is built.
    """
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
    from ..hf.evaluate import check_causal_lm
    from ..model import load_model

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
