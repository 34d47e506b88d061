"""``spqr decode``: .spqr -> .safetensors of dequantized weights (or a dense Hugging Face folder)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..paths import input_file, output_file
from ..summary import safe as _safe
from ._common import _error


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "decode", help=".spqr -> .safetensors of dequantized weights",
                       description="Decode every tensor (bit-exact per spec) and write a safetensors file with the "
                       "source checkpoint's names and layout. Quantized tensors are written as f32 by default; "
                       "raw tensors keep their dtype.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("-o", "--output", help="output path (default: FILE with a .safetensors suffix; "
                   "FILE.decoded.safetensors when FILE is a .safetensors file); never one of the inputs")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "original"],
                   help="dtype for quantized tensors (default f32; 'original' = the dtype before quantization)")
    p.add_argument("--only", action="append", metavar="NAME", help="decode only this tensor (repeatable)")
    p.add_argument("--as-stored", action="store_true",
                   help="keep tensors listed in metadata 'spqrfmt.transposed' (GPT-2 Conv1D) in the file's "
                   "[out, in] orientation instead of restoring the checkpoint's [in, out]")
    p.add_argument("--hf", action="store_true",
                   help="write a dense Hugging Face folder at -o DIR (new or empty): sharded safetensors + "
                   "model.safetensors.index.json, config.json and the tokenizer, generation and chat-template files "
                   "from the metadata, loadable with AutoModelForCausalLM.from_pretrained(DIR)")
    p.add_argument("--max-shard-size", metavar="SIZE", help="with --hf: largest shard, e.g. 2GB or 500MiB "
                   "(default 5GB, as save_pretrained)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _decode_output(file: Path) -> Path:
    """FILE with a .safetensors suffix, or FILE.decoded.safetensors when FILE is a .safetensors already."""
    return file.with_name(file.name + ".decoded.safetensors") if file.suffix == ".safetensors" else \
        file.with_suffix(".safetensors")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..safetensors_io import METADATA_KEY, write_safetensors_streaming
    from ..split import open_model, part_paths
    from ..transposed import stored_transposed

    src = input_file(args.file)
    if args.hf:
        return _decode_hf(args, src)
    if args.max_shard_size is not None:
        return _error("--max-shard-size applies to --hf only", 2)
    out = output_file(Path(args.output) if args.output else _decode_output(src), [src, *part_paths(src)])
    with open_model(src) as f:
        try:
            flip = set() if args.as_stored else stored_transposed(f)
        except ValueError as e:
            return _error(f"{src}: {e}; pass --as-stored to decode every tensor as stored", 1)
        unknown = sorted(set(args.only or ()) - set(f.tensors))
        if unknown:
            return _error(f"--only {unknown[0]!r}: no such tensor in {src}", 2)
        specs = []
        for t in f.tensors.values():
            if args.only and t.name not in args.only:
                continue
            if t.name == METADATA_KEY:
                return _error(f"{src} has a tensor named {METADATA_KEY!r}, a name safetensors reserves for its "
                              "metadata; decode the others with --only NAME", 1)
            dtype = t.dtype if not t.quantized else (t.dtype if args.dtype == "original" else args.dtype)
            specs.append((t.name, dtype, tuple(t.shape[::-1]) if t.name in flip else t.shape))
        want = {n: d for n, d, _ in specs}

        def fetch(name: str) -> Any:
            t = f[name]
            arr = t.decode(want[name]) if t.quantized else t.decode()
            return np.ascontiguousarray(arr.T) if name in flip else arr

        try:
            from tqdm import tqdm

            bar = tqdm(total=len(specs), desc="decode", unit="tensor", file=sys.stderr, disable=args.quiet)
        except ImportError:
            bar = None

        def fetch_progress(name: str) -> Any:
            arr = fetch(name)
            if bar is not None:
                bar.update(1)
            return arr

        write_safetensors_streaming(out, specs, fetch_progress, {"format": "pt", "source": src.name})
        if bar is not None:
            bar.close()
    print(f"wrote {out} ({len(specs)} tensors)")
    return 0


def _decode_hf(args: argparse.Namespace, src: Path) -> int:
    from ..hf.export import DEFAULT_SHARD_BYTES, parse_size, write_hf_folder
    from ..reader import open_file

    if not args.output:
        return _error("--hf writes a folder: pass -o DIR (a new or empty folder)", 2)
    if args.only or args.as_stored:
        return _error("--hf writes the whole checkpoint in its own layout; --only/--as-stored do not apply", 2)
    try:
        max_bytes = DEFAULT_SHARD_BYTES if args.max_shard_size is None else parse_size(args.max_shard_size)
    except ValueError as e:
        return _error(f"--max-shard-size {e}", 2)
    with open_file(src) as f:
        try:
            from tqdm import tqdm

            bar = tqdm(desc="decode", unit="tensor", file=sys.stderr, disable=args.quiet)
        except ImportError:
            bar = None
        names = write_hf_folder(f, args.output, args.dtype, max_bytes, progress=None if bar is None else bar.update)
        if bar is not None:
            bar.close()
    print(f"wrote {_safe(args.output)}: {', '.join(_safe(n) for n in names)}")
    return 0
