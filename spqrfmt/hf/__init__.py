"""The Hugging Face edge: checkpoint folders in, transformers models and folders out.

Modules: :mod:`.checkpoint` (read a checkpoint folder: shards, index, config,
tokenizer files), :mod:`.export` (write a dense or ``export-hf`` folder from a
``.spqr``), :mod:`.quantizer` (the transformers quantization method
``spqrfmt``), :mod:`.save` (its lossless ``save_pretrained``), :mod:`.tokenizer`
(a file's stored tokenizer), :mod:`.evaluate` (perplexity), :mod:`.generate`
(text generation). Only the last five import torch/transformers, inside their
functions (the quantizer at its top).

``import spqrfmt.hf`` registers the quantization method ``spqrfmt`` with
transformers, so ``AutoModelForCausalLM.from_pretrained(folder)`` loads a folder
written by ``spqr export-hf``. Why it is deferred: the converter imports
:mod:`.checkpoint` (which runs this file first) and must not pay for
transformers (seconds, and torch) or need it installed. So this file only
arranges that :mod:`.quantizer` runs once ``transformers.quantizers`` exists —
at once if transformers' loader is imported already, else right after it is,
which ``from_pretrained`` always does before it reads a quantization config.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from typing import Any

_HOOKED = "transformers.quantizers"  # registration needs its public hooks (register_quantizer, ...)
_PUBLIC = ("QUANT_METHOD", "SpqrfmtConfig", "SpqrfmtHfQuantizer", "WEIGHTS_FILE")


def _register() -> None:
    from . import quantizer  # noqa: F401 - its decorators register the method with transformers


class _Loader(importlib.abc.Loader):
    """transformers.quantizers' own loader, then the registration."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        module.__loader__ = module.__spec__.loader = self._inner  # nothing later sees this wrapper
        try:
            _register()
        except Exception as e:  # an incompatible transformers must not fail its own import
            warnings.warn(f"spqrfmt: quantization method 'spqrfmt' not registered with transformers ({e})",
                          stacklevel=2)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...: the real loader's
        return getattr(self._inner, name)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``transformers.quantizers`` with the other finders and wraps its loader (once)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != _HOOKED:
            return None
        sys.meta_path.remove(self)  # once; whatever we return ends the import system's own loop over meta_path
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


def _install() -> None:
    if _HOOKED in sys.modules:
        _register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def __getattr__(name: str) -> Any:
    """``from spqrfmt.hf import SpqrfmtConfig``: the quantizer's names (importing transformers)."""
    if name in _PUBLIC:
        from . import quantizer

        return getattr(quantizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_install()

__all__ = list(_PUBLIC)
