"""``CodecLinear``: a drop-in ``nn.Linear`` whose weight stays compressed on the device, for every codec.

The codec's :class:`~spqrfmt.codecs.GpuBinding` supplies ``prepare`` / ``matvec`` /
``dequantize``; ``SpQRLinear`` is the same module for codec spqr with a faster
large-batch path (one shared scratch buffer, x permuted instead of W).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from . import ops
from . import spqr as K

FUSED_MAX_ROWS = 16  # activation rows up to which the fused matvec beats dequantize + cuBLAS
_SCRATCH: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _scratch(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A dense [m, n] buffer shared by every layer on ``device``: layers run one after another, so one
    dequantized weight at a time is all the prefill path needs (not a dense copy per layer)."""
    need = shape[0] * shape[1]
    buf = _SCRATCH.get((device, dtype))
    if buf is None or buf.numel() < need:
        buf = _SCRATCH[(device, dtype)] = torch.empty(need, dtype=dtype, device=device)
    return buf[:need].view(shape)


def bias_tensor(bias: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """A codec's ``bias`` section (f16, f32, or bf16 as uint16 bit patterns) as an f32 tensor on ``device``."""
    from spqrfmt.dtypes import bf16_to_f32

    b = bf16_to_f32(np.array(bias)) if bias.dtype == np.uint16 else np.array(bias, dtype=np.float32)
    return torch.from_numpy(b).to(device)


class CodecLinear(nn.Module):
    """y = x W^T + b with W decoded on the fly by the codec's kernels (``gpu``, a ``GpuBinding``).

    Up to ``fused_max_rows`` activation rows go through the fused matvec (reads
    only the compressed weight); larger inputs dequantize W bit-exactly into a
    dense matrix and call cuBLAS, which wins once the GEMM is compute-bound.
    """

    def __init__(self, gpu: Any, prepared: Any, shape: tuple[int, int], bias: torch.Tensor | None = None,
                 fused_max_rows: int = FUSED_MAX_ROWS, codec: str = "") -> None:
        super().__init__()
        self.gpu = gpu
        self.codec = codec
        self.prepared = prepared
        self.out_features, self.in_features = shape
        self.fused_max_rows = int(fused_max_rows)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().to(self._device(bias)), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._handle = ops.register(self)  # torch.compile sees the layer as one custom op (kernels/ops.py)

    def _device(self, t: torch.Tensor) -> torch.device:
        return getattr(self.prepared, "device", t.device)

    @classmethod
    def from_codec(cls, codec: Any, params: Mapping[str, Any], sections: Mapping[str, Any], shape: tuple[int, int],
                   device: str | torch.device) -> CodecLinear:
        """The module for one tensor of ``codec`` (a registry codec with ``gpu``), from its checked params and
        validated sections; a ``bias`` section becomes the layer bias."""
        gpu = codec.gpu
        if gpu.linear is not None and gpu.linear is not cls:
            return gpu.linear.from_sections(params, sections, shape, device=device)
        secs = dict(sections)
        bias = secs.pop("bias", None)
        prepared = gpu.prepare(params, secs, shape, device)
        return cls(gpu, prepared, shape, None if bias is None else bias_tensor(bias, device), codec=codec.id)

    def dense(self, x2: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The large-batch product: exact dense W (from the load-time layout), then cuBLAS."""
        return torch.nn.functional.linear(x2, self.gpu.dequantize(self.prepared, x2.dtype), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.forward(self, self._handle, x)

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's product (what the custom op runs)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if x2.shape[0] <= self.fused_max_rows:
            y = self.gpu.matvec(self.prepared, x2, bias)
        else:
            y = self.dense(x2, bias)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"codec={self.codec}, in_features={self.in_features}, out_features={self.out_features}"


class SpQRLinear(CodecLinear):
    """``CodecLinear`` for codec spqr: prefill dequantizes W in stored column order into one scratch
    buffer shared by all layers and permutes x instead."""

    def __init__(self, prepared: K.PreparedSpQR, bias: torch.Tensor | None = None,
                 fused_max_rows: int = K.MAX_FUSED_BATCH) -> None:
        from spqrfmt import codecs  # through the registry: codecs.spqr names this class as its linear

        codec = codecs.by_id("spqr")
        super().__init__(codec.gpu, prepared, prepared.shape, bias, fused_max_rows, codec=codec.id)

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

    def dense(self, x2: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        w = K.dequantize_stored(self.prepared, x2.dtype, out=_scratch(self.prepared.shape, x2.dtype, x2.device))
        if self.prepared.perm is not None:
            x2 = x2.index_select(1, self.prepared.x_index(0))
        return torch.nn.functional.linear(x2, w, bias)

    def extra_repr(self) -> str:
        p = self.prepared.params
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={p['bits']}, group_size={p['group_size']}")
