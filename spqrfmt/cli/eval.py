"""``spqr eval``: perplexity of a .spqr file (decoded) or a Hugging Face folder on a text file"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..paths import input_dir, input_file
from ._common import HF_EXTRA, _eprint, _error, _int_in, resolve_device


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="perplexity of a .spqr file (decoded) or a Hugging Face folder on a text file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Perplexity exp(mean next-token NLL) of each MODEL on TEXTFILE (one document a line, an EOS
token between documents), deterministic: disjoint windows of --seqlen tokens (or sliding ones
with --stride), no sampling. A .spqr file is run on its decoded weights (bit-exact per spec)
with the tokenizer stored in it; a folder is run as stored. Several MODELs: each one's change
relative to the first is printed too. Needs a causal LM and torch + transformers.""",
        epilog="Example: spqr eval ./SmolLM2-135M smol.spqr --text heldout.txt --seqlen 512",)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help=".spqr file or Hugging Face folder")
    p.add_argument("--text", required=True, metavar="TEXTFILE", help="evaluation text")
    p.add_argument("--seqlen", type=_int_in(1),
                   help="window length in tokens (default 512, at most the model's positions)")
    p.add_argument("--stride", type=_int_in(1),
                   help="sliding windows: score only the last STRIDE tokens of each window")
    p.add_argument("--max-tokens", type=_int_in(2), help="evaluate only the first N tokens of the text")
    p.add_argument("--batch-size", type=_int_in(1), default=4, help="windows per forward pass (default 4)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="compute dtype (default float32)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the file's stored one)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _quant_bits(path: Path) -> float | None:
    from ..reader import open_file

    nbytes = params = 0
    with open_file(path, verify_checksums=False) as f:
        for t in f.tensors.values():
            if t.quantized:
                nbytes += t.nbytes
                params += t.numel
    return 8.0 * nbytes / params if params else None


def run(args: argparse.Namespace) -> int:
    from ..hf.evaluate import read_documents

    text = input_file(args.text, "text file")  # every path and the text before torch is even imported
    docs = read_documents(text)
    tok_dir = input_dir(args.tokenizer, "--tokenizer folder") if args.tokenizer else None
    for src in args.models:
        if Path(src).is_dir():
            input_dir(src, "model folder", plain=True)
        else:
            input_file(src, "model")
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        return _error(f"spqr eval needs torch and transformers ({e.name} is missing): {HF_EXTRA}", 2)
    from ..encoder.calibrate import max_positions
    from ..hf.evaluate import load_hf_model, load_spqr_model, perplexity, tokenize_texts

    device = resolve_device(args.device)
    results: list[tuple[str, float, Any]] = []
    for src in args.models:
        path = Path(src)
        if path.is_dir():
            model = load_hf_model(path, dtype=args.dtype, device=device)
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tok_dir or path)
            bits = None
        else:
            model, tok = load_spqr_model(path, dtype=args.dtype, device=device)
            if tok_dir is not None:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(tok_dir)
            if tok is None:
                return _error(f"{path} stores no tokenizer; pass --tokenizer DIR", 2)
            bits = _quant_bits(path)
        limit = max_positions(model.config)
        seqlen = args.seqlen or min(512, limit or 512)
        if limit is not None and seqlen > limit:
            _eprint(f"error: --seqlen {seqlen} exceeds the model's {limit} positions")
            return 2
        ids = tokenize_texts(tok, docs)
        if args.max_tokens:
            ids = ids[: args.max_tokens]
        ppl = perplexity(model, ids, seq_len=seqlen, stride=args.stride, batch_size=args.batch_size,
                         progress=not args.quiet)
        what = f"{bits:.3f} bits/param quantized" if bits is not None else "unquantized folder"
        stride = f", stride {args.stride}" if args.stride else ""
        print(f"{src}: perplexity {ppl:.4f} over {ids.numel()} tokens of {text.name} "
              f"(windows of {seqlen}{stride}; {what}; {args.dtype} on {device})")
        results.append((src, ppl, ids))
        del model
    if len(results) > 1:
        base_name, base, base_ids = results[0]
        for name, ppl, ids in results[1:]:
            same = ids.shape == base_ids.shape and bool(torch.equal(ids, base_ids))
            note = "" if same else "  (different tokenization: not comparable)"
            print(f"{name}: {100 * (ppl / base - 1):+.2f}% vs {base_name}{note}")
    return 0


