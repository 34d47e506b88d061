"""One Triton launch recorded once and replayed with new tensors: the host cost of an eager layer call.

Why: in eager PyTorch (transformers' ``generate`` without CUDA graphs, and every prefill) the model
waits for the host. On the H200 host a compressed linear cost 70-140 µs of host time per call against
~20 µs for ``nn.Linear`` (``bench/linear_host.py``), while its kernels ran 8-20 µs: ``JITFunction.run``
re-binds and re-specializes ~30 arguments on every launch, although a layer's arguments are the same on
every call except the activations, the output and the bias.

:class:`Launch` runs the first call through Triton as usual, keeps the compiled kernel and the bound
argument list, and afterwards only swaps the per-call tensors in and calls the compiled kernel. It checks
exactly what Triton specializes a tensor argument on (its dtype and whether its address is 16-byte
aligned); any difference, a launch hook (profilers), the interpreter or ``SPQRFMT_FAST_LAUNCH=0`` sends
the call through ``JITFunction.run`` again, so the result never depends on which way it went.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

ENABLED = os.environ.get("SPQRFMT_FAST_LAUNCH", "1") not in ("0", "") and \
    os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


def cdiv(a: int, b: int) -> int:
    """Ceiling division of ints (``triton.cdiv`` is a constexpr function: ~3 µs per host call)."""
    return -(-a // b)


class Launch:
    """``fn[grid](*args, **kwargs)`` whose arguments named in ``dynamic`` change from call to call.

    ``args`` are all of the kernel's arguments by position (constexprs may come as keywords in
    ``kwargs``, with the launch options ``num_warps`` etc.); call the instance with the dynamic
    tensors in the order of ``dynamic``. One call at a time per instance (it fills one argument
    list), the rule the layer's scratch buffers already set: a layer runs on one stream.
    """

    def __init__(self, fn: Any, grid: tuple[int, ...], args: Sequence[Any], kwargs: dict[str, Any],
                 dynamic: Sequence[int]) -> None:
        self.fn, self.grid, self.kwargs = fn, tuple(grid) + (1,) * (3 - len(grid)), kwargs
        self.args = list(args)
        self.dynamic = tuple(dynamic)
        self.kernel: Any = None
        self.values: list[Any] = []
        self.sig: list[tuple[Any, bool]] = []
        self.device = 0
        self.hooks: Any = None

    def _slow(self, tensors: Sequence[Any]) -> Any:
        args = self.args
        for i, t in zip(self.dynamic, tensors, strict=True):
            args[i] = t
        try:
            return self.fn[self.grid](*args, **self.kwargs)
        finally:
            for i in self.dynamic:  # hold no caller tensor between calls
                args[i] = None

    def __call__(self, *tensors: Any) -> None:
        k = self.kernel
        if k is not None and (self.hooks is None or (self.hooks.launch_enter_hook is None
                                                     and self.hooks.launch_exit_hook is None)):
            ok = True
            vals = self.values
            for i, t, (dt, aligned) in zip(self.dynamic, tensors, self.sig, strict=True):
                if t.dtype is not dt or (t.data_ptr() % 16 == 0) is not aligned:
                    ok = False
                    break
                vals[i] = t
            if ok:
                g = self.grid
                try:
                    k.run(g[0], g[1], g[2], _stream(self.device), k.function, k.packed_metadata, None, None, None,
                          *vals)
                finally:
                    for i in self.dynamic:
                        vals[i] = None
                return
            for i in self.dynamic:
                vals[i] = None
        k = self._slow(tensors)
        if self.kernel is None and ENABLED and k is not None and hasattr(k, "run") and hasattr(k, "packed_metadata"):
            self._record(k, tensors)

    def _record(self, k: Any, tensors: Sequence[Any]) -> None:
        """The argument list ``JITFunction.run`` hands the compiled kernel: every parameter in signature order."""
        try:
            sig = inspect.signature(self.fn.fn)
            kw = {n: v for n, v in self.kwargs.items() if n in sig.parameters}
            bound = sig.bind(*self.args, **kw)
            bound.apply_defaults()
        except (AttributeError, TypeError, ValueError):
            return
        self.values = list(bound.arguments.values())
        self.sig = [(t.dtype, t.data_ptr() % 16 == 0) for t in tensors]
        self.device = tensors[0].device.index if tensors else 0
        try:
            from triton import knobs
        except ImportError:  # a Triton without knobs has no launch hooks there either
            knobs = None
        self.hooks = None if knobs is None else knobs.runtime
        self.kernel = k


_STREAM: list[Any] = []


def _stream(index: int | None) -> int:
    """The raw current CUDA stream, the way Triton's own launcher gets it."""
    if not _STREAM:
        from triton.runtime import driver

        _STREAM.append(driver.active.get_current_stream)
    return _STREAM[0](index)
