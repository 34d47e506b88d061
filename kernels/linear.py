"""``SpQRLinear``: a drop-in ``nn.Linear`` whose weight stays in SpQR form on the device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import ops
from . import spqr as K

_SCRATCH: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _scratch(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A dense [m, n] buffer shared by every layer on ``device``: layers run one after another, so one
    dequantized weight at a time is all the prefill path needs (not a dense copy per layer)."""
    need = shape[0] * shape[1]
    buf = _SCRATCH.get((device, dtype))
    if buf is None or buf.numel() < need:
        buf = _SCRATCH[(device, dtype)] = torch.empty(need, dtype=dtype, device=device)
    return buf[:need].view(shape)


class SpQRLinear(nn.Module):
    """y = x W^T + b with W decoded on the fly.

    Up to ``fused_max_rows`` activation rows go through the fused kernel (reads
    only the compressed weight); larger inputs dequantize W bit-exactly into a
    temporary dense matrix and call cuBLAS, which wins once the GEMM is
    compute-bound. The packed data lives on the device given at construction.
    """

    def __init__(self, prepared: K.PreparedSpQR, bias: torch.Tensor | None = None,
                 fused_max_rows: int = K.MAX_FUSED_BATCH) -> None:
        super().__init__()
        self.prepared = prepared
        self.out_features, self.in_features = prepared.shape
        self.fused_max_rows = int(fused_max_rows)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().to(prepared.device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._handle = ops.register(self)

    @classmethod
    def from_sections(cls, params: Mapping[str, Any], sections: Mapping[str, Any], shape: tuple[int, int],
                      bias: torch.Tensor | None = None, device: str | torch.device = "cuda",
                      fused_max_rows: int = K.MAX_FUSED_BATCH) -> SpQRLinear:
        """Build from a tensor's ``params`` and spec sections; a ``bias`` section is used when ``bias`` is None."""
        secs = dict(sections)
        bias_sec = secs.pop("bias", None)
        prepared = K.prepare(params, secs, shape, device)
        if bias is None and bias_sec is not None:
            bias = K.to_device({"bias": bias_sec}, device)["bias"]
        return cls(prepared, bias, fused_max_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.forward(self, self._handle, x)

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if x2.shape[0] <= self.fused_max_rows:
            y = K.matvec(self.prepared, x2, bias)
        else:
            # prefill: W in stored column order into one scratch buffer shared by all layers, x through perm
            w = K.dequantize_stored(self.prepared, x.dtype, out=_scratch(self.prepared.shape, x.dtype, x.device))
            if self.prepared.perm is not None:
                x2 = x2.index_select(1, self.prepared.x_index(0))
            y = torch.nn.functional.linear(x2, w, bias)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        p = self.prepared.params
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={p['bits']}, group_size={p['group_size']}")
