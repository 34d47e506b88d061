"""``spqr export-hf``: a transformers folder that from_pretrained loads through spqrfmt.hf"""

from __future__ import annotations

import argparse

from ..paths import input_file
from ..summary import safe as _safe


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export-hf", help="write a transformers folder that from_pretrained loads through spqrfmt.hf",
                       description="Write DIR (new or empty): config.json with quantization_config "
                       "{\"quant_method\": \"spqrfmt\", \"file\": \"model.spqr\"}, the file itself (verified, "
                       "copied byte for byte), the tokenizer, generation and chat-template files of its metadata and "
                       "an empty model.safetensors (transformers' loader needs one). After `import spqrfmt.hf`, "
                       "AutoModelForCausalLM.from_pretrained(DIR) loads it: quantized linears are decoded once on "
                       "CPU and stay compressed (kernel modules) on CUDA.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to write (new or empty)")


def run(args: argparse.Namespace) -> int:
    from ..hf.export import write_export_folder
    from ..reader import open_file

    src = input_file(args.file)
    with open_file(src) as f:
        names = write_export_folder(f, args.output)
    print(f"wrote {_safe(args.output)}: {', '.join(_safe(n) for n in names)}")
    print("load it with: import spqrfmt.hf; transformers.AutoModelForCausalLM.from_pretrained(DIR)")
    return 0


