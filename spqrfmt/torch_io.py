"""``Tensor.to_torch``: a file's tensor as a torch tensor, zero-copy for raw tensors (torch imported lazily).

Why a module of its own: the core reader must import without torch; this is the
only place that maps spec element types onto torch dtypes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .dtypes import STORAGE

if TYPE_CHECKING:
    import torch

    from .reader import Tensor

CASTS = ("f32", "f16", "bf16")  # what Tensor.decode can cast to


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a spec element type (§5)."""
    import torch

    table = {"bool": torch.bool, "u8": torch.uint8, "i8": torch.int8, "u16": torch.uint16, "i16": torch.int16,
             "u32": torch.uint32, "i32": torch.int32, "u64": torch.uint64, "i64": torch.int64,
             "f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64}
    return table[name]


def _cast_name(dtype: Any) -> str | None:
    """'f32' / 'f16' / 'bf16' (or None) from a name or a torch dtype."""
    if dtype is None or isinstance(dtype, str):
        if dtype is not None and dtype not in CASTS:
            raise ValueError(f"dtype must be one of {', '.join(CASTS)} (or the torch dtype), got {dtype!r}")
        return dtype
    for name in CASTS:
        if dtype == torch_dtype(name):
            return name
    raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")


def _from_numpy(arr: np.ndarray, name: str) -> torch.Tensor:
    import torch

    if name == "bf16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    if name == "bool":
        return torch.from_numpy(arr.view(np.bool_))
    return torch.from_numpy(arr)


def tensor_to_torch(t: Tensor, device: Any = None, dtype: Any = None) -> torch.Tensor:
    """See :meth:`spqrfmt.reader.Tensor.to_torch`."""
    want = _cast_name(dtype)
    if t.codec == "raw" and want in (None, t.dtype):
        t.check()  # CRC and codec rules once, before the zero-copy view is handed out
        s = t.record.sections["data"]
        buf = t._file._private(t._file._data_offset + s.offset, s.length)
        arr = np.frombuffer(buf, dtype=STORAGE[s.dtype], count=s.size).reshape(s.shape)
        out = _from_numpy(arr, s.dtype)
    else:
        out = _from_numpy(np.ascontiguousarray(t.decode(want)), want or "f32")
    return out if device is None else out.to(device)


__all__ = ["tensor_to_torch", "torch_dtype"]
