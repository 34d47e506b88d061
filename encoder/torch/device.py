"""What the torch encoders share about devices: inputs onto the device, exact constants, host outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_tensor(weight: Any, device: str | torch.device) -> torch.Tensor:
    """The weight as f32 on ``device`` (a tensor already there is used as it is)."""
    if isinstance(weight, torch.Tensor):
        return weight.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)).to(device)


def const(v: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor on ``like``'s device: dividing by it is a true IEEE division on CUDA too
    (CUDA turns ``x / python_scalar`` into ``x * (1 / scalar)``, which can differ in the last bit).
    Made by a fill kernel, not a host-to-device copy, so it can be recorded in a CUDA graph."""
    return torch.full((), v, dtype=like.dtype, device=like.device)


def host_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised host tensor for results copied back from ``device``: pinned (page-locked) memory when
    the device is a GPU, so the copies run at full bus speed (torch caches the pinned blocks between calls).
    Its ``.numpy()`` shares the memory and keeps it alive."""
    return torch.empty(shape, dtype=dtype, pin_memory=device.type == "cuda")


def to_host(t: torch.Tensor) -> np.ndarray:
    """A device tensor as a host array, through a pinned buffer on a GPU."""
    out = host_empty(tuple(t.shape), t.dtype, t.device)
    out.copy_(t)
    return out.numpy()
