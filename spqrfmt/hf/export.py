"""``spqr decode --hf``: a .spqr file back to a dense Hugging Face folder that ``from_pretrained`` loads as is.

Why: a user who wants the dense model back (to fine-tune, or for a runtime
that reads only safetensors) needs the whole folder, not just the tensors:
sharded safetensors and their index in the checkpoint's names and layout,
``config.json`` and every tokenizer, generation and chat-template file kept in
the metadata (SPEC §7). The file's own conventions are undone here: Conv1D
weights stored transposed are transposed back, fused tensors
(``spqrfmt.fused``) are split into their parts, and a bias carried inside a
codec tensor becomes the layer's ``.bias``. The folder is built under a
temporary name beside the target and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dtypes import ITEMSIZE
from ..model import config_of, fused_splits
from ..paths import UsageError, new_dir_mode, new_file_mode
from ..reader import SpqrFile
from ..safetensors_io import METADATA_KEY, write_safetensors_streaming
from ..transposed import stored_transposed
from .checkpoint import FILES_PREFIX, HF_FILE, INDEX_FILE

DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default
QUANT_METHOD = "spqrfmt"  # the transformers quantization method of an export-hf folder (.quantizer registers it)
WEIGHTS_FILE = "model.spqr"  # its quantization_config's default ``file``


@dataclass
class DenseTensor:
    """One tensor of the dense checkpoint: its name, dtype, shape and how to produce it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    fetch: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


def parse_size(text: str) -> int:
    """``--max-shard-size``: bytes, or a number with KB/MB/GB (powers of 1000) or KiB/MiB/GiB."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size such as 2GB, 500MiB or 1000000")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    size = int(float(m.group(1)) * scale)
    if size < 1:
        raise ValueError(f"{text!r}: a shard holds at least one byte")
    return size


def dense_tensors(f: SpqrFile, dtype: str = "f32") -> list[DenseTensor]:
    """The checkpoint's tensors in file order, one decode each when fetched (fused parts share one decode).

    ``dtype``: of quantized tensors ('f32', 'f16', 'bf16' or 'original'); raw tensors keep theirs.
    """
    try:
        flip = stored_transposed(f)
    except ValueError as e:
        raise ValueError(f"{f.path}: {e}") from None
    fused = fused_splits(f.metadata.get("spqrfmt.fused"), f.path)
    out: list[DenseTensor] = []
    cache: dict[str, np.ndarray] = {}  # the one fused tensor being split

    def decoded(name: str, want: str) -> np.ndarray:
        t = f[name]
        arr = t.decode() if t.codec == "raw" else t.decode(want)
        return np.ascontiguousarray(arr.T) if name in flip else arr

    def fused_rows(name: str, want: str, start: int, rows: int) -> Callable[[], np.ndarray]:
        def fetch() -> np.ndarray:
            if name not in cache:
                cache.clear()
                cache[name] = decoded(name, want)
            return np.ascontiguousarray(cache[name][start:start + rows])

        return fetch

    names = set(f.tensors)
    for t in f.tensors.values():
        if t.name == METADATA_KEY:
            raise ValueError(f"{f.path} has a tensor named {METADATA_KEY!r}, a name safetensors reserves")
        want = t.dtype if t.codec == "raw" or dtype == "original" else dtype
        shape = tuple(t.shape[::-1]) if t.name in flip else tuple(t.shape)
        if t.name in fused:
            parts = fused[t.name]
            if len(shape) != 2 or sum(r for _, r in parts) != shape[0]:
                raise ValueError(f"{t.name}: fused split {parts} does not cover its {shape[0]} rows")
            start = 0
            for part, rows in parts:
                out.append(DenseTensor(part, want, (rows, shape[1]), fused_rows(t.name, want, start, rows)))
                start += rows
        else:
            out.append(DenseTensor(t.name, want, shape, lambda n=t.name, w=want: decoded(n, w)))
        bias_name = t.name.removesuffix(".weight") + ".bias"
        if t.codec != "raw" and "bias" in t.record.sections and t.name.endswith(".weight") and bias_name not in names:
            b = t.record.sections["bias"]
            out.append(DenseTensor(bias_name, want, tuple(b.shape), lambda t=t, w=want: _cast(t.bias(), w)))
    seen: set[str] = set()
    for d in out:
        if d.name in seen:
            raise ValueError(f"{f.path}: tensor {d.name!r} would be written twice (a fused part or codec bias "
                             "that is also a tensor of its own)")
        seen.add(d.name)
    return out


def _cast(arr: np.ndarray | None, dtype: str) -> np.ndarray:
    from ..dtypes import f32_to_bf16

    assert arr is not None
    if dtype == "bf16":
        return f32_to_bf16(arr)
    return arr.astype(np.float16 if dtype == "f16" else np.float32)


def shard(tensors: list[DenseTensor], max_bytes: int) -> list[list[DenseTensor]]:
    """Consecutive groups of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[DenseTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def side_files(f: SpqrFile, warn: Callable[[str], None]) -> dict[str, bytes]:
    """``config.json`` (less any ``quantization_config``: the folder is dense) and the :func:`metadata_files`."""
    cfg = config_of(f)
    cfg.pop("quantization_config", None)
    return {"config.json": (json.dumps(cfg, indent=2) + "\n").encode("utf-8"), **metadata_files(f, warn)}


def metadata_files(f: SpqrFile, warn: Callable[[str], None]) -> dict[str, bytes]:
    """The tokenizer, generation and chat-template files kept as ``hf.files/*`` metadata.

    Only plain file names a checkpoint folder would hold (the converter's own pattern) are
    returned: a name with a path in it, or any other name, is reported through ``warn`` and skipped.
    """
    files = {}
    for key, value in f.metadata.items():
        if not key.startswith(FILES_PREFIX):
            continue
        name = key.removeprefix(FILES_PREFIX)
        if not HF_FILE.fullmatch(name) or name in ("config.json", INDEX_FILE) or not isinstance(value, bytes):
            warn(f"skipped metadata {key[:120]!r}: not a tokenizer, generation or chat-template file's bytes")
            continue
        files[name] = value
    return files


def write_stub(path: Path) -> None:
    """The empty safetensors file of an spqrfmt folder: transformers' loader opens one before its quantizer runs."""
    write_safetensors_streaming(path, [], lambda name: np.empty(0),
                                {"format": "pt", "spqrfmt": f"the weights are in {WEIGHTS_FILE}: import spqrfmt.hf "
                                 "before from_pretrained"})


def _new_folder(out: Path) -> None:
    """Refuse an output that exists and is not an empty folder (nothing is ever merged into or replaced)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"output {out} exists and is not a folder; pass a new folder name to -o")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"output folder {out} is not empty; pass a new or empty folder to -o")
    if not out.parent.is_dir():
        raise UsageError(f"output folder's parent {out.parent} is not a folder")


def _build_folder(out: str | os.PathLike[str], fill: Callable[[Path], list[str]]) -> list[str]:
    """Run ``fill(tmp)`` in a temporary folder beside ``out`` (new or empty) and rename it onto ``out``.

    On any failure, an interruption included, the temporary folder is removed and ``out`` is untouched.
    """
    out = Path(out)
    _new_folder(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, new_dir_mode())
        names = fill(tmp)
        for name in names:
            os.chmod(tmp / name, new_file_mode())
        if out.is_dir():
            out.rmdir()  # empty (checked above); rename cannot replace a folder on every system
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(names)


def write_hf_folder(f: SpqrFile, out: str | os.PathLike[str], dtype: str = "f32",
                    max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: Callable[[int], None] | None = None,
                    warn: Callable[[str], None] | None = None) -> list[str]:
    """Write the dense Hugging Face folder of ``f`` at ``out`` (new or empty); return its file names.

    ``progress(n)`` is called after each tensor. Raises ValueError for a file without
    ``hf.config`` (the folder could not be loaded) and UsageError for an unusable ``out``.
    """
    _new_folder(Path(out))
    files = side_files(f, warn or _warn)
    tensors = dense_tensors(f, dtype)
    groups = shard(tensors, max_shard_bytes)

    def fill(tmp: Path) -> list[str]:
        names = ["model.safetensors"] if len(groups) == 1 else [
            f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
        for fname, group in zip(names, groups, strict=True):
            fetch = {t.name: t.fetch for t in group}

            def produce(name: str, fetch: dict[str, Callable[[], np.ndarray]] = fetch) -> np.ndarray:
                arr = fetch[name]()
                if progress is not None:
                    progress(1)
                return arr

            write_safetensors_streaming(tmp / fname, [(t.name, t.dtype, t.shape) for t in group], produce,
                                        {"format": "pt"})
        if len(groups) > 1:
            index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
                     "weight_map": {t.name: fname for fname, g in zip(names, groups, strict=True) for t in g}}
            files[INDEX_FILE] = (json.dumps(index, indent=2) + "\n").encode()
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        return [*names, *files]

    return _build_folder(out, fill)


def write_export_folder(f: SpqrFile, out: str | os.PathLike[str], warn: Callable[[str], None] | None = None
                        ) -> list[str]:
    """``spqr export-hf``: the folder ``from_pretrained`` loads through ``import spqrfmt.hf`` (new or empty ``out``).

    It holds ``config.json`` with ``quantization_config = {"quant_method": "spqrfmt", "file": "model.spqr",
    ...}``, the file itself copied byte for byte as ``model.spqr`` (verified first: every rule and CRC),
    the tokenizer, generation and chat-template files of its metadata, and an empty ``model.safetensors``,
    since transformers' loader opens one before its quantizer runs.
    """
    _new_folder(Path(out))
    f.validate()
    files = side_files(f, warn or _warn)
    cfg = json.loads(files["config.json"])
    cfg["quantization_config"] = {"quant_method": QUANT_METHOD, "file": WEIGHTS_FILE, "use_kernels": None,
                                  "format_version": list(f.version)}
    files["config.json"] = (json.dumps(cfg, indent=2) + "\n").encode("utf-8")

    def fill(tmp: Path) -> list[str]:
        size = f.preamble.data_offset + f.preamble.data_length
        with open(tmp / WEIGHTS_FILE, "wb") as dst:  # the bytes just verified, from the open file
            for pos in range(0, size, 16 << 20):
                dst.write(f._read(pos, min(16 << 20, size - pos)))
        write_stub(tmp / "model.safetensors")
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        return [WEIGHTS_FILE, "model.safetensors", *files]

    return _build_folder(out, fill)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


__all__ = ["DEFAULT_SHARD_BYTES", "QUANT_METHOD", "WEIGHTS_FILE", "DenseTensor", "dense_tensors", "parse_size", "shard",
           "metadata_files", "side_files", "write_export_folder", "write_hf_folder", "write_stub"]
