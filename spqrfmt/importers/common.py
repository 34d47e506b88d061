"""What every importer shares: the refusal of a field the target codec cannot hold, and reading the source's tensors.

Why here: each importer (spqr_quant, squeezellm, quipsharp) raises the same :class:`NotRepresentable`
(the CLI reports it as one line) and reads a ``.pt`` / ``.safetensors`` / shard folder the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np


class NotRepresentable(ValueError):
    """A source field whose values the target codec cannot hold exactly."""


def load_state(src: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Tensors of a .pt state dict (weights_only=True: no code is unpickled), a .safetensors file or a folder
    of shards (its index honoured); bf16 widened to f32."""
    p = Path(src)
    if p.is_dir() or p.suffix == ".safetensors":
        from ..dtypes import bf16_to_f32
        from ..hf.checkpoint import checkpoint_entries
        from ..safetensors_io import SafetensorsFile

        if p.is_dir():
            entries = checkpoint_entries(p)
        else:
            sf = SafetensorsFile(p)
            entries = [(sf, k) for k in sf]
        out = {}
        for sf, k in entries:
            dt, a = sf[k]
            out[k] = bf16_to_f32(a) if dt == "bf16" else np.asarray(a)
        return out
    try:
        import torch
    except ImportError as e:
        from ..paths import UsageError

        raise UsageError(f"reading {p.name} (a PyTorch file) needs torch; or pass the checkpoint as .safetensors") \
            from e
    import pickle
    import zipfile

    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError) as e:
        raise ValueError(f"{p}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{p}: expected a state dict (mapping of name -> tensor)")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        t = v.detach().cpu()
        out[k] = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
    return out


__all__ = ["NotRepresentable", "load_state"]
