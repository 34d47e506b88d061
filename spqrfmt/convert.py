"""Hugging Face checkpoint folder (config.json + *.safetensors shards) -> one .spqr file.

Tensors stream through one at a time: read from the memory-mapped shard,
quantized (or stored raw), appended by the streaming Writer, released. Peak
memory is about one layer, whatever the model size.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import codecs, constants
from .dtypes import FLOAT_DTYPES, f32_to_bf16, to_float32
from .hf.checkpoint import CheckpointError, checkpoint_entries, folder_metadata, read_config, side_inputs
from .safetensors_io import SafetensorsFile
from .transposed import CONV1D_MODEL_TYPES, CONV1D_WEIGHT, conv1d_weights, transposed_names  # noqa: F401 - re-exported
from .writer import Writer

# Linear weights that stay unquantized by default: embeddings and the output head are
# lookup tables / the most sensitive projection, and quantizing them saves little.
DEFAULT_SKIP = (r"embed", r"(^|\.)wte\.", r"(^|\.)wpe\.", r"lm_head", r"(^|\.)norm", r"layernorm", r"LayerNorm")
F16_MAX = 65504.0


RAW_DTYPES = (None, "f16", "bf16", "f32")
TRANSPOSED_KEY = constants.TRANSPOSED
REL_ERROR_KEY = constants.REL_ERROR
CONV1D_KEY = constants.CONV1D
_SELECTION = ("min_features", "skip", "include", "raw_dtype")


class QuantConfig:
    """What to quantize and how: the tensor selection, the codec, the method and the codec's ``options``.

    ``codec``: a registered codec id (``spqrfmt.codecs.encodable()``); ``method``
    one of its ``methods`` ("rtn" = data-free, others calibrated: the GPTQ/SpQR
    solver); ``options``: its ``Options`` (default: the codec's defaults).
    Keyword ``settings`` are the options' fields, for short calls:
    ``QuantConfig(bits=3)`` is ``QuantConfig(options=spqr.Options(bits=3))``.
    Validated once, by :meth:`check` (ValueError naming the setting); reading an
    option as an attribute (``cfg.bits``) reads ``cfg.options``.
    """

    def __init__(self, codec: str = codecs.DEFAULT, method: str = "rtn", options: Any = None, *,
                 min_features: int = 64, skip: tuple[str, ...] = DEFAULT_SKIP, include: tuple[str, ...] = (),
                 raw_dtype: str | None = None, **settings: Any) -> None:
        self.codec = codec
        self.method = method
        self.min_features = min_features
        self.skip = tuple(skip)
        self.include = tuple(include)
        self.raw_dtype = raw_dtype
        impl = codecs.by_id(codec)
        if options is None and impl is not None and impl.Options is not None:
            options = impl.Options(**settings)
        elif settings:
            raise TypeError(f"settings {sorted(settings)} go into options=, not beside it")
        self.options = options

    @classmethod
    def gptq(cls, bits: int = 4, group_size: int = 128, **kw: Any) -> QuantConfig:
        """Plain GPTQ (codec spqr): f16 first-level statistics, no outliers."""
        return cls(method="gptq", bits=bits, group_size=group_size, scale_bits=16, zero_bits=16,
                   outlier_fraction=0.0, **kw)

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(options, name)

    def __repr__(self) -> str:
        return (f"QuantConfig(codec={self.codec!r}, method={self.method!r}, options={self.options!r}, "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in _SELECTION) + ")")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantConfig) and self.to_dict() == other.to_dict()

    @property
    def codec_impl(self) -> Any:
        return codecs.by_id(self.codec)

    def check(self) -> None:
        """Reject combinations that have no meaning (ValueError naming the setting)."""
        impl = self.codec_impl
        if impl is None or impl.Options is None:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {', '.join(codecs.encodable())}")
        methods = sorted({m for c in codecs.encodable() for m in codecs.by_id(c).methods})
        if self.method not in methods:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(methods)}")
        if self.method not in impl.methods:
            able = [c for c in codecs.encodable() if self.method in codecs.by_id(c).methods]
            raise ValueError(f"method {self.method} (calibrated) writes codec {', '.join(able)} only, "
                             f"not {self.codec}")
        if not isinstance(self.options, impl.Options):
            raise ValueError(f"options {type(self.options).__name__} are not codec {self.codec}'s Options")
        self.options.check(self.method)
        if self.raw_dtype not in RAW_DTYPES:
            raise ValueError(f"raw_dtype must be one of f16, bf16, f32 or None, not {self.raw_dtype!r}")
        if self.min_features < 0:
            raise ValueError("min_features must be >= 0")

    @property
    def calibrated(self) -> bool:
        return self.method != "rtn"

    def describe(self) -> str:
        return self.options.describe(self.method)

    def to_dict(self) -> dict[str, Any]:
        """The settings as flat JSON-able fields (metadata ``spqrfmt.convert``)."""
        opts = self.options.to_dict() if self.options is not None else {}
        return {**opts, "min_features": self.min_features, "skip": list(self.skip), "include": list(self.include),
                "codec": self.codec, "method": self.method, "raw_dtype": self.raw_dtype}

    def gptq_config(self) -> Any:
        """The calibrated solver's settings (``spqrfmt.encoder.gptq.GPTQConfig``), from the codec's options."""
        return self.options.gptq_config()

    def calib_config(self, nsamples: int = 128, seqlen: int = 512, batch_size: int = 8, device: str = "cpu",
                     act_dtype: str = "float16") -> Any:
        """``spqrfmt.encoder.calibrate.CalibConfig``: these solver settings and layer selection, plus how much
        calibration data and where (layered on this config, not checked again)."""
        from .encoder.calibrate import CalibConfig

        return CalibConfig(codec=self.codec, method=self.method, options=self.options.to_dict(), nsamples=nsamples,
                           seqlen=seqlen, batch_size=batch_size, min_features=self.min_features,
                           skip=tuple(self.skip), device=device, include=tuple(self.include), act_dtype=act_dtype)

    def wants(self, name: str, dtype: str, shape: tuple[int, ...]) -> bool:
        """Quantize 2-D floating ``*.weight`` matrices of linear layers, except skipped names."""
        if len(shape) != 2 or 0 in shape or dtype not in ("f16", "bf16", "f32") or not name.endswith(".weight"):
            return False
        if any(re.search(p, name) for p in self.include):
            return True
        if min(shape) < self.min_features:
            return False
        return not any(re.search(p, name) for p in self.skip)




@dataclass
class LayerReport:
    name: str
    shape: tuple[int, ...]  # as stored: [out, in] (a Conv1D weight is transposed)
    bits_per_param: float
    rel_error: float
    outliers: int
    seconds: float
    dequant_sha256: str = ""
    method: str = "rtn"  # rtn (data-free), gptq / spqr (calibrated), or "supplied" (encoded= with method rtn)
    transposed: bool = False


@dataclass
class ConvertReport:
    output: Path
    layers: list[LayerReport] = field(default_factory=list)
    raw_tensors: int = 0
    raw_bytes: int = 0
    quant_params: int = 0
    quant_bytes: int = 0
    source_bytes: int = 0
    file_bytes: int = 0
    transposed: list[str] = field(default_factory=list)  # Conv1D weights stored as [out, in]
    data_free: list[str] = field(default_factory=list)  # calibrated run: tensors outside the calibrated blocks

    @property
    def bits_per_param(self) -> float:
        return 8.0 * self.quant_bytes / self.quant_params if self.quant_params else 0.0

    @property
    def mean_rel_error(self) -> float:
        return float(np.mean([r.rel_error for r in self.layers])) if self.layers else 0.0


def _metadata(folder: Path, cfg: QuantConfig) -> dict[str, Any]:
    from .paths import display_name

    meta: dict[str, Any] = {constants.SOURCE_MODEL: display_name(folder), constants.CONVERT: json.dumps(cfg.to_dict())}
    meta.update(folder_metadata(folder))
    return meta


@dataclass
class Plan:
    """What a conversion will read and do, settled before any byte is written."""

    folder: Path
    entries: list[tuple[SafetensorsFile, str]]
    config: dict[str, Any] | None
    wanted: list[str]  # tensors to quantize
    transposed: set[str]  # Conv1D weights, quantized as their [out, in] transpose
    inputs: list[Path]  # every file read: no output may be one of them

    def source(self, name: str) -> np.ndarray:
        """Tensor ``name`` as f32 in the stored [out, in] orientation."""
        sf = next(sf for sf, n in self.entries if n == name)
        dtype, arr = sf[name]
        w = to_float32(arr, dtype)
        return np.ascontiguousarray(w.T) if name in self.transposed else w


# Largest |bit pattern| (sign cleared) that is finite, and that is at most f16's 65504, per dtype.
_FINITE_MAX = {"f16": 0x7BFF, "bf16": 0x7F7F, "f32": 0x7F7FFFFF}
_F16_RANGE_MAX = {"f16": 0x7BFF, "bf16": 0x477F, "f32": 0x477FE000}  # bf16 0x477F = 65280, next 65536


def _largest_bits(arr: np.ndarray, dtype: str) -> int:
    """max |x| as a bit pattern (sign cleared): ordered like |x|, NaN above inf; no f32 copy."""
    if not arr.size:
        return 0
    if dtype == "f32":
        return int((arr.view(np.uint32) & 0x7FFFFFFF).max())
    return int((arr.view(np.uint16) & 0x7FFF).max())


# Largest finite |bit pattern| per source dtype that stays finite when rounded (RNE) to the target dtype.
_CAST_MAX = {"f16": _F16_RANGE_MAX, "bf16": {"f16": 0x7BFF, "bf16": 0x7F7F, "f32": 0x7F7FFFFF},
             "f32": dict(_FINITE_MAX)}
_CAST_LIMIT = {"f16": F16_MAX, "bf16": 3.3895313892515355e38, "f32": 3.4028234663852886e38}


def check_raw_cast(name: str, arr: np.ndarray, dtype: str, target: str) -> None:
    """CheckpointError when casting an unquantized floating tensor to ``target`` would turn a finite value
    into an infinity (an f32 norm weight of 1e5 has no f16); integer tensors are never cast."""
    if dtype not in FLOAT_DTYPES or dtype == target or not arr.size:
        return
    if dtype == "f64":
        a = np.abs(arr[np.isfinite(arr)])
        big = bool(a.size) and float(a.max()) > _CAST_LIMIT[target]
    else:
        big = _FINITE_MAX[dtype] >= _largest_bits(arr, dtype) > _CAST_MAX[target][dtype]
    if big:
        raise CheckpointError(f"tensor {name!r} holds values beyond the {target} range, which --raw-dtype {target} "
                              f"would turn into infinities: keep its dtype (drop --raw-dtype) or use another one")


def cast_raw(arr: np.ndarray, dtype: str, target: str | None) -> tuple[str, np.ndarray]:
    """``(dtype, array)`` of an unquantized tensor as written: floating ones rounded (RNE) to ``target``."""
    if target is None or dtype == target or dtype not in FLOAT_DTYPES:
        return dtype, arr
    w = np.asarray(arr, dtype=np.float32) if dtype == "f64" else to_float32(arr, dtype)
    if target == "bf16":
        return target, f32_to_bf16(w)
    return target, w.astype(np.float16 if target == "f16" else np.float32)


def plan(input_dir: str | Path, cfg: QuantConfig, encoded: Iterable[str] = ()) -> Plan:
    """Check the checkpoint against ``cfg`` (shards, index, config, shapes, value ranges) before writing."""
    cfg.check()
    folder = Path(input_dir)
    entries = checkpoint_entries(folder)
    config = read_config(folder)
    wanted = [n for sf, n in entries if cfg.wants(n, sf.dtype(n), sf.shape(n))]
    transposed = conv1d_weights(config, wanted)
    done = set(encoded)
    todo = [(sf, n) for sf, n in entries if n in set(wanted) and n not in done]
    multiple, needs = cfg.options.in_features_multiple
    if multiple > 1:
        odd = [n for sf, n in todo if sf.shape(n)[0 if n in transposed else 1] % multiple]
        if odd:  # before any byte is written, not halfway through
            shape = next(sf.shape(n) for sf, n in todo if n == odd[0])
            raise ValueError(f"{needs} needs in_features to be a multiple of {multiple}; {len(odd)} matrices are "
                             f"not, e.g. {odd[0]} {list(shape)}: keep them unquantized with a skip pattern")
    f16_stats = cfg.options.F16_STATISTICS  # f16 statistics / LUT / outliers
    for sf, n in todo:
        dt = sf.dtype(n)
        big = _largest_bits(sf[n][1], dt)
        if big > _FINITE_MAX[dt]:
            raise CheckpointError(f"tensor {n!r} holds inf or NaN values, which no codec quantizes: keep it "
                                  f"unquantized with --skip '{re.escape(n)}'")
        if f16_stats and big > _F16_RANGE_MAX[dt]:
            raise CheckpointError(
                f"tensor {n!r} holds values beyond the f16 range (|w| > {F16_MAX:g}), which codec {cfg.codec} "
                f"(f16 statistics) cannot store: keep it unquantized with --skip '{re.escape(n)}' or use --codec "
                f"{' / '.join(c for c in codecs.encodable() if not codecs.by_id(c).Options.F16_STATISTICS)}")
    if cfg.raw_dtype is not None:
        for sf, n in entries:
            if n not in set(wanted):
                check_raw_cast(n, sf[n][1], sf.dtype(n), cfg.raw_dtype)
    inputs = [sf.path for sf in {id(sf): sf for sf, _ in entries}.values()]
    inputs += side_inputs(folder)
    return Plan(folder, entries, config, wanted, transposed, inputs)


def relative_error(approx: np.ndarray, exact: np.ndarray) -> float:
    """||approx - exact|| / ||exact|| in f64 (inf when approx is not finite)."""
    if not np.isfinite(approx).all():
        return math.inf
    return float(np.linalg.norm((approx - exact).astype(np.float64))
                 / max(np.linalg.norm(exact.astype(np.float64)), 1e-30))


Encoder = Callable[[str, np.ndarray, QuantConfig], Any]


def data_free_encoder(name: str, weight: np.ndarray, cfg: QuantConfig) -> Any:
    """Encode one [out, in] matrix without calibration data: ``cfg``'s codec with its options."""
    return cfg.codec_impl.encode(weight, cfg.options)


def device_encoder(device: str) -> Encoder:
    """:func:`data_free_encoder` computed by the codec's torch encoder on ``device`` (e.g. ``cuda``): the same
    bytes, much faster on a GPU (``bench/gpu_check_encoders.py``)."""
    def encode(name: str, weight: np.ndarray, cfg: QuantConfig) -> Any:
        return cfg.codec_impl.encode(weight, cfg.options, device=device)

    return encode


rtn_encoder = data_free_encoder  # the name earlier callers use


def _progress(items: list[tuple[Any, str]], work: list[int], desc: str, enabled: bool) -> Iterator[tuple[Any, str]]:
    """Yield ``(shard, name)`` items behind a bar that advances by each item's ``work``.

    The work is the tensor's quantized parameter count (0 for a raw copy), so the
    rate and ETA follow the encoder's cost rather than the tensor count; the
    current tensor's name is shown next to the bar.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if not enabled or tqdm is None:
        yield from items
        return
    if not sum(work):
        work = [1] * len(items)
    bar = tqdm(total=sum(work), desc=desc, unit="param", unit_scale=True, file=sys.stderr, dynamic_ncols=True)
    try:
        for item, amount in zip(items, work, strict=True):
            bar.set_postfix_str(item[1], refresh=False)
            yield item
            bar.update(amount)
    finally:
        bar.close()


def convert(
    input_dir: str | Path,
    output: str | Path,
    cfg: QuantConfig | None = None,
    *,
    encoder: Encoder = data_free_encoder,
    encoded: Mapping[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    metadata: Mapping[str, Any] | None = None,
    checked: Plan | None = None,
) -> ConvertReport:
    """Convert a checkpoint folder to ``output``.

    ``encoded`` supplies ready encodings by tensor name (a calibrated
    ``EncodingStore``); tensors the config quantizes that it lacks go through
    ``encoder`` (data-free) and are listed in ``report.data_free``. GPT-2-style
    Conv1D weights (``[in, out]``) are quantized as their transpose, in the
    spec's ``[out, in]`` orientation, and listed in the metadata key
    ``spqrfmt.transposed``. ``metadata`` is merged into the file's metadata.
    ``checked``: the :func:`plan` of this folder and config, when the caller made it already.
    Every check on the input and the output (never an input, never a device or FIFO)
    runs before the first byte is written.
    """
    cfg = cfg or QuantConfig()
    cfg.check()
    if cfg.calibrated and encoded is None:
        raise ValueError(f"method {cfg.method} is calibrated: run calibrate() and pass its result as encoded=")
    from .paths import output_file

    folder = Path(input_dir)
    pl = checked if checked is not None else plan(folder, cfg, encoded or ())
    output_file(output, pl.inputs)
    entries, transposed = pl.entries, pl.transposed
    meta = _metadata(folder, cfg)
    if transposed:
        meta[TRANSPOSED_KEY] = sorted(transposed)
        meta[CONV1D_KEY] = "out_in"
    meta.update(metadata or {})
    report = ConvertReport(Path(output), transposed=sorted(transposed))
    with Writer(output, metadata=meta) as writer:
        work = [math.prod(sf.shape(n)) if cfg.wants(n, sf.dtype(n), sf.shape(n)) else 0 for sf, n in entries]
        for sf, name in _progress(entries, work, "convert", progress):
            dtype, arr = sf[name]
            report.source_bytes += arr.nbytes
            if not cfg.wants(name, dtype, arr.shape):
                raw_dtype, raw = cast_raw(arr, dtype, cfg.raw_dtype)
                writer.add_raw(name, raw, raw_dtype)
                report.raw_tensors += 1
                report.raw_bytes += raw.nbytes
                continue
            t0 = time.perf_counter()
            w = to_float32(arr, dtype)
            if name in transposed:
                w = np.ascontiguousarray(w.T)
            if encoded is not None and name in encoded:
                enc = encoded[name]
                method = cfg.method if cfg.calibrated else "supplied"
                if tuple(enc.shape) != w.shape:
                    raise ValueError(f"{name}: the supplied encoding has shape {list(enc.shape)}, the checkpoint "
                                     f"matrix (as stored, [out, in]) {list(w.shape)}")
            else:
                enc = encoder(name, w, cfg)
                method = "rtn"
                if encoded is not None:
                    report.data_free.append(name)
            dq = enc.dequantized
            err = relative_error(dq, w)
            # No better than all zeros: the codec could not hold these values. A calibrated encoding is
            # judged by what its solver minimised, the layer's output error on the calibration data
            # (its weight error may exceed 1 where a few inputs carry massive activations).
            out_err = enc.info.get("rel_output_error")  # set by calibration only
            if not (out_err if out_err is not None else err) < 1.0:
                what = (f"relative output error {out_err:.3g} on the calibration data" if out_err is not None
                        else f"relative error {err:.3g}")
                raise CheckpointError(f"tensor {name!r}: the {cfg.codec} encoding has {what} "
                                      f"(no better than zeros); keep it unquantized with --skip '{re.escape(name)}'")
            writer.add_encoded(name, enc, dtype)
            rep = LayerReport(name, tuple(w.shape), enc.bits_per_param, err, int(enc.info.get("outliers", 0)),
                              time.perf_counter() - t0, hashlib.sha256(dq.tobytes()).hexdigest(), method,
                              name in transposed)
            report.layers.append(rep)
            writer.metadata.setdefault(REL_ERROR_KEY, {})[name] = float(err)  # the header is written at close
            report.quant_params += math.prod(arr.shape)
            report.quant_bytes += enc.nbytes
            if log:
                log(f"  {name:60s} {str(list(w.shape)):>14s}  {rep.bits_per_param:6.3f} bits  "
                    f"rel.err {err:.4f}  outliers {rep.outliers}{'  (transposed)' if rep.transposed else ''}"
                    f"{'  (data-free)' if encoded is not None and method == 'rtn' else ''}")
    report.file_bytes = Path(output).stat().st_size
    return report


def check_written(path: str | Path, report: ConvertReport, source: Plan) -> list[str]:
    """Read ``path`` back; one message per problem (empty: all good).

    Every rule of the spec; each quantized tensor decodes bit for bit to the
    encoder's own dequantization, and compared with the *source* weights its
    relative error is the one reported and below 1 (better than zeros).
    """
    from .reader import open_file

    with open_file(path) as f:
        bad = [f"{n}: {e}" for n, e in f.check_all() if e is not None]
        for r in report.layers:
            dq = f[r.name].decode()
            if hashlib.sha256(dq.tobytes()).hexdigest() != r.dequant_sha256:
                bad.append(f"{r.name}: decoded weights differ from the encoder's")
                continue
            err = relative_error(dq, source.source(r.name))
            if not (err < 1.0 and abs(err - r.rel_error) <= 1e-6 * max(r.rel_error, 1e-12)):
                bad.append(f"{r.name}: decoded weights are {err:.3g} away from the source (relative), "
                           f"the encoder reported {r.rel_error:.3g}")
    return bad


def calibrate(
    input_dir: str | Path,
    texts: list[str],
    cfg: QuantConfig,
    *,
    nsamples: int = 128,
    seqlen: int = 512,
    batch_size: int = 8,
    device: str = "cpu",
    work_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    act_dtype: str = "float16",
) -> Any:
    """Run the calibrated GPTQ/SpQR solver over the checkpoint; pass the result to :func:`convert` as ``encoded``.

    Needs torch and transformers (``pip install 'spqrfmt[hf]'``). Resumable
    through ``work_dir`` (see ``spqrfmt.encoder.calibrate``).
    """
    cfg.check()
    if not cfg.calibrated:
        raise ValueError("method rtn is data-free; choose method gptq or spqr to calibrate")
    from .encoder.calibrate import quantize_model_calibrated

    ccfg = cfg.calib_config(nsamples=nsamples, seqlen=seqlen, batch_size=batch_size, device=device,
                            act_dtype=act_dtype)
    return quantize_model_calibrated(input_dir, texts, ccfg, progress=progress, work_dir=work_dir, log=log)
