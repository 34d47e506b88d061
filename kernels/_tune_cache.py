"""The on-disk cache of autotuned spqr tile configs (``tune.py`` fills it; the matvec reads it).

Why a module of its own: ``kernels/spqr.py`` looks configs up at each tensor's first call, and ``tune.py``
imports ``spqr.py`` to time it; this module imports neither, so there is no import cycle.

Cache: ``$SPQRFMT_CACHE_DIR/tune.json`` (default ``~/.cache/spqrfmt``), written atomically. It is
untrusted input like any file: entries whose fields are not the expected small integers and booleans
are ignored, and an unreadable file is treated as empty (one warning), never an error.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Any

import torch

CACHE_VERSION = 1
_FIELDS = {"BM": (16, 32, 64, 128, 256), "NH": (2, 4, 8, 16), "num_warps": (1, 2, 4, 8)}
_MEM: dict[str, dict[str, Any]] | None = None


def cache_path() -> str:
    base = os.environ.get("SPQRFMT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "spqrfmt")
    return os.path.join(base, "tune.json")


def _device_tag(dev: torch.device) -> str:
    import triton

    return f"{torch.cuda.get_device_name(dev)}|triton {triton.__version__}"


def key(prepared: Any, batch: int, dtype: torch.dtype) -> str:
    """What the best config depends on: the GPU and compiler, the shape, the format's parameters, batch, dtype."""
    p = prepared.params
    m, n = prepared.shape
    parts = [_device_tag(prepared.device), f"{m}x{n}", f"b{int(p['bits'])}", f"g{int(p['group_size'])}",
             f"s{int(p.get('scale_bits', 16))}/{int(p.get('zero_bits', 16))}/{int(p.get('stat_group_size', 1) or 1)}",
             "perm" if prepared.perm is not None else "noperm", "outl" if prepared.o_col.numel() else "nooutl",
             f"B{batch}", str(dtype).replace("torch.", "")]
    return "|".join(parts)


def _valid(e: Any) -> dict[str, Any] | None:
    """A cache entry's ``MatvecConfig`` fields, or None when any field is not what this version writes."""
    if not isinstance(e, dict):
        return None
    try:
        if any(type(e.get(f)) is not int or e[f] not in allowed for f, allowed in _FIELDS.items()):
            return None
        split, maxnreg = e.get("split"), e.get("maxnreg")
        if split is not None and (type(split) is not int or not 1 <= split <= 4096):
            return None
        if maxnreg is not None and (type(maxnreg) is not int or not 32 <= maxnreg <= 255):
            return None
        if not isinstance(e.get("x_inline", False), bool):
            return None
        return {"BM": e["BM"], "NH": e["NH"], "num_warps": e["num_warps"], "split": split,
                "x_inline": e.get("x_inline", False), "maxnreg": maxnreg}
    except (TypeError, KeyError):
        return None


def _load() -> dict[str, dict[str, Any]]:
    global _MEM
    if _MEM is None:
        _MEM = {}
        path = cache_path()
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    doc = json.load(f)
                ok = isinstance(doc, dict) and doc.get("version") == CACHE_VERSION
                if ok and isinstance(doc.get("entries"), dict):
                    _MEM = {k: v for k, v in doc["entries"].items() if isinstance(k, str) and _valid(v) is not None}
            except (OSError, ValueError, UnicodeDecodeError) as e:
                warnings.warn(f"spqrfmt: ignoring the tuning cache {path}: {e}", stacklevel=2)
    return _MEM


def lookup(prepared: Any, batch: int, dtype: torch.dtype) -> dict[str, Any] | None:
    """The cached ``MatvecConfig`` fields of this tensor's key, or None (then ``default_config`` applies)."""
    if prepared.device.type != "cuda" or prepared.layout != "tiled":
        return None
    e = _load().get(key(prepared, batch, dtype))
    return None if e is None else _valid(e)


def _save(entries: dict[str, dict[str, Any]]) -> None:
    path = cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tune.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
