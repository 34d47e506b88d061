"""``save_pretrained`` of a model loaded from an spqrfmt folder: the same folder again, never re-quantized.

Why: transformers saves ``model.state_dict()``, which for a model loaded
through :mod:`spqrfmt.hf` holds decoded weights (CPU) or lacks the compressed
layers (kernel modules): writing it would lose the file. The lossless form is
the source file itself. So the quantizer reports itself serializable and
hands transformers an empty state dict (the folder's ``model.safetensors``
stub, :func:`state_dict_and_metadata`), and :func:`save_folder` -- installed as
the model's ``save_pretrained`` by :func:`attach`, because transformers gives
a quantizer no hook that sees the save directory -- copies the ``.spqr`` (or a
split set's index and parts) byte for byte, lets transformers write
``config.json`` (with its ``quantization_config``) and the generation
config, and writes the tokenizer and chat-template files kept in the file's
metadata: the folder ``spqr export-hf`` writes.

Byte-identical only holds while the model still holds what the file says. A
SHA-256 of every state-dict tensor is taken at load and compared before
saving: a model whose tensors changed (fine-tuned, edited, cast) is refused,
naming them, since writing them would need re-quantizing. Each copy is
checked like any input (every CRC; a set's part digests) and its header bytes
compared with those loaded, so a source replaced on disk since is refused too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..paths import new_file_mode
from ..scratch import replaced_atomically
from ..split import is_index, open_model, part_paths
from .export import metadata_files, write_stub

CHUNK = 16 << 20
_SOURCE = "_spqrfmt_source"  # model attribute: the Source it was loaded from
_SAVING = "_spqrfmt_saving"  # model attribute: set while save_folder runs transformers' save_pretrained


@dataclass
class Source:
    """The files a model was loaded from, their header bytes then, and a digest of each state-dict tensor."""

    weights: Path                 # the config's ``file``: a .spqr, or the first part of a split set
    files: list[Path]             # every file read: the .spqr, or the set's index then its parts
    heads: dict[Path, bytes]      # per file: the bytes before the data (preamble + header), or all of an index
    digests: dict[str, str]       # state-dict name -> SHA-256 of dtype, shape and bytes


def _head(path: Path) -> bytes:
    """An index's bytes, or a .spqr's preamble and header (every section's CRC is in it)."""
    from ..format import PREAMBLE_SIZE, read_preamble

    with open(path, "rb") as fh:
        if is_index(path):
            return fh.read()
        pre = fh.read(PREAMBLE_SIZE)
        p = read_preamble(pre, os.fstat(fh.fileno()).st_size)
        return pre + fh.read(p.data_offset - PREAMBLE_SIZE)


def tensor_digests(model: Any) -> dict[str, str]:
    """SHA-256 of each state-dict tensor's dtype, shape and bytes (tied tensors once per name)."""
    import torch

    out = {}
    for name, t in model.state_dict().items():
        h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}".encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().data)
        out[name] = h.hexdigest()
    return out


def attach(model: Any, weights: Path) -> None:
    """Record where ``model`` (just populated from ``weights``) came from and make its save_pretrained lossless."""
    files = part_paths(weights)
    setattr(model, _SOURCE, Source(weights, files, {p: _head(p) for p in files}, tensor_digests(model)))
    model.save_pretrained = types.MethodType(save_folder, model)  # the instance's: transformers' stays the class's


def state_dict_and_metadata(model: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The quantizer's ``get_state_dict_and_metadata``: nothing for transformers to write (save_folder wrote the
    stub; transformers writes no file for an empty state dict)."""
    if not getattr(model, _SAVING, False):
        raise ValueError("spqrfmt: save this model with model.save_pretrained(dir), which writes its .spqr file; "
                         "transformers' own save would write a folder without it")
    return {}, {}


def _check_unchanged(model: Any, src: Source) -> None:
    now = tensor_digests(model)
    changed = sorted(n for n in set(now) | set(src.digests) if now.get(n) != src.digests.get(n))
    if changed:
        raise ValueError(f"spqrfmt: cannot save losslessly: {len(changed)} tensor(s) changed since the model was "
                         f"loaded from {src.weights.name} (e.g. {changed[:5]}); writing them would need "
                         "re-quantizing. Save the file it was loaded from (spqr export-hf), or convert a dense "
                         "checkpoint again with spqr convert")


def _stage_copies(src: Source, out: Path) -> Path:
    """Copy every source file into a new hidden folder in ``out``, check the copies, return the folder.

    The copies keep their names (a set's index names its parts), so the staged set opens as the
    source did: every rule and CRC of each file, a set's part sizes and digests, and each header
    as loaded. On failure the folder is removed and ``out`` is as it was.
    """
    for path in src.files:
        dst = out / path.name
        if dst.exists() and os.path.samefile(dst, path):
            raise ValueError(f"spqrfmt: save_pretrained({str(out)!r}) would overwrite {path.name}, the file the "
                             "model was loaded from; save to another folder")
    stage = Path(tempfile.mkdtemp(prefix=".spqrfmt-save.", suffix=".tmp", dir=out))
    try:
        for path in src.files:
            with open(stage / path.name, "xb") as fo, open(path, "rb") as fi:
                shutil.copyfileobj(fi, fo, CHUNK)
                os.fchmod(fo.fileno(), new_file_mode())
                os.fsync(fo.fileno())
            if _head(stage / path.name) != src.heads[path]:
                raise ValueError(f"spqrfmt: {path} changed on disk since the model was loaded from it; cannot "
                                 "save the weights the model holds")
        with open_model(stage / src.weights.name, mmap=False) as f:
            f.validate()
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


def save_folder(model: Any, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
    """``model.save_pretrained``: the source ``.spqr`` (or set), config, generation config, tokenizer files and
    the empty ``model.safetensors`` transformers' loader opens (``model.VARIANT.safetensors`` with ``variant``).

    Refuses (ValueError) a model whose tensors changed since loading, a ``state_dict`` argument,
    ``push_to_hub`` and distributed checkpoints, and a folder holding the source file itself.
    """
    from transformers import PreTrainedModel

    src: Source = getattr(model, _SOURCE)
    if kwargs.get("state_dict") is not None or kwargs.get("push_to_hub") or kwargs.get("distributed_checkpoint"):
        raise ValueError("spqrfmt: save_pretrained writes the model's .spqr file as loaded; state_dict, "
                         "push_to_hub and distributed_checkpoint are not supported (save, then upload the folder)")
    if not kwargs.get("is_main_process", True):
        return
    _check_unchanged(model, src)
    out = Path(save_directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"spqrfmt: {out} exists and is not a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        stage = _stage_copies(src, out)
    except BaseException:
        if created:
            out.rmdir()  # nothing was written into it
        raise
    try:
        with open_model(stage / src.weights.name) as f:  # config.json: transformers writes the live one
            files = metadata_files(f, lambda msg: None)
        for path in src.files:
            os.replace(stage / path.name, out / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for name, data in files.items():
        _write_small(out / name, data)
    stub = f"model.{kwargs['variant']}.safetensors" if kwargs.get("variant") else "model.safetensors"
    write_stub(out / stub)
    setattr(model, _SAVING, True)
    try:  # config.json (quantization_config included) and generation_config.json; no tensors (see above)
        PreTrainedModel.save_pretrained(model, out, **kwargs)
    finally:
        setattr(model, _SAVING, False)


def _write_small(path: Path, data: bytes) -> None:
    with replaced_atomically(path) as (fd, _tmp), os.fdopen(fd, "wb") as fh:
        fh.write(data)
        os.fchmod(fh.fileno(), new_file_mode())


__all__ = ["Source", "attach", "save_folder", "state_dict_and_metadata", "tensor_digests"]
