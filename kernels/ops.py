"""The compressed linears as one ``torch.library`` custom op, so ``torch.compile`` can compile around them.

Why: a decode step of a transformers model is ~1,000 small kernels; ``torch.compile``
fuses the norms, rotary and residual adds between the linears, but it cannot trace the
host code that picks a kernel config, views a load-time layout and launches Triton.
Wrapped as an opaque custom op (with a fake implementation that only gives the
output's shape and dtype), each compressed linear is one node in the compiled graph:
no graph break, and the compiled step can still be captured in a CUDA graph.

A layer registers itself once (:func:`register`) and passes the returned handle, a
plain int, with every call; the op looks the layer up (weakly: a freed model frees
its entry). The op never mutates its inputs and returns a fresh tensor. Eager callers
skip it (:func:`forward`): the custom-op dispatch costs more host time than a launch.
"""

from __future__ import annotations

import weakref
from typing import Protocol

import torch


class _Layer(Protocol):
    out_features: int

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor: ...


_LAYERS: dict[int, weakref.ReferenceType[_Layer]] = {}
_NEXT = [0]


def register(layer: _Layer) -> int:
    """The handle under which :func:`codec_linear` finds ``layer`` (kept as a weak reference)."""
    handle = _NEXT[0]
    _NEXT[0] += 1
    _LAYERS[handle] = weakref.ref(layer, lambda _ref, h=handle: _LAYERS.pop(h, None))
    return handle


def _layer(handle: int) -> _Layer:
    ref = _LAYERS.get(handle)
    layer = ref() if ref is not None else None
    if layer is None:
        raise RuntimeError(f"spqrfmt codec_linear: layer handle {handle} is not registered (its module was freed)")
    return layer


@torch.library.custom_op("spqrfmt::codec_linear", mutates_args=())
def codec_linear(x: torch.Tensor, handle: int) -> torch.Tensor:
    """``x @ W.T (+ bias)`` of the compressed layer ``handle``; x is ``[..., in_features]``."""
    return _layer(handle).forward_impl(x)


@codec_linear.register_fake
def _codec_linear_fake(x: torch.Tensor, handle: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], _layer(handle).out_features))



def forward(layer: _Layer, handle: int, x: torch.Tensor) -> torch.Tensor:
    """A compressed linear's ``forward``: the custom op while ``torch.compile`` traces, the direct call otherwise."""
    if torch.compiler.is_compiling():
        return codec_linear(x, handle)
    return layer.forward_impl(x)
