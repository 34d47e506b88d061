"""The compressed-linear custom op: torch.compile traces through it with no graph break and gets the same result."""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")

from spqrfmt.kernels import ops  # noqa: E402


class _Dense(torch.nn.Module):
    """A stand-in layer: the op only needs ``out_features`` and ``forward_impl``."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w
        self.out_features = w.shape[0]
        self.calls = 0
        self._handle = ops.register(self)

    def forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x @ self.w.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.forward(self, self._handle, x)


def test_compiled_fullgraph_matches_eager() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = _Dense(torch.randn(24, 16, generator=g)), _Dense(torch.randn(8, 24, generator=g))

    def f(x: torch.Tensor) -> torch.Tensor:
        return b(torch.relu(a(x)) * 2.0) + 1.0

    x = torch.randn(3, 5, 16, generator=g)
    want = f(x)
    torch._dynamo.reset()
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x)  # fullgraph: a graph break is an error
    assert got.shape == (3, 5, 8)
    assert torch.equal(got, want)
    assert a.calls >= 2 and b.calls >= 2  # the compiled graph called the real layers through the op


def test_freed_layer_is_unregistered() -> None:
    layer = _Dense(torch.eye(4))
    h = layer._handle
    assert torch.equal(ops.codec_linear(torch.ones(1, 4), h), torch.ones(1, 4))
    del layer
    gc.collect()
    with pytest.raises(RuntimeError, match="not registered"):
        ops.codec_linear(torch.ones(1, 4), h)
