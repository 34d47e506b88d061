"""Where calibration gets a model's decoder blocks from: the whole model in memory, or one block at a time.

``StreamingModel`` (the default) builds the model's skeleton with every
parameter on the meta device (buffers such as rotary frequencies are real: they
are computed, not stored), then reads a module's weights from the memory-mapped
safetensors shards only when it is needed: the modules before the first block
(embeddings) when that block's inputs are captured, and block i when it is
calibrated, freed (back to meta) after. The output head and final norm are
never read. Peak host memory is about one block plus the activations, whatever
the model size. ``WholeModel`` loads everything with ``from_pretrained`` (f32):
the reference the streaming path must match bit for bit.

Both hold f32 weights, so they compute the same numbers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["StreamingModel", "WholeModel", "decoder_layers", "load_for_calibration", "max_positions"]


def _model_class(config: Any) -> Any:
    """The class the checkpoint was saved as (``architectures``), else a causal LM, else the bare model.

    Loading a BERT-style encoder checkpoint as a causal LM would change its
    attention (and add an untrained head), so the saved class wins: encoders
    are calibrated as the encoders they are.
    """
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    if getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def _config(model_dir: str | os.PathLike[str]) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"{model_dir}: transformers cannot read this config.json ({e})") from e


def _eval(model: Any) -> Any:
    model.eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


def load_for_calibration(model_dir: str | os.PathLike[str]) -> Any:
    """The checkpoint as an eval-mode f32 transformers model, without a KV cache."""
    import torch

    config = _config(model_dir)
    return _eval(_model_class(config).from_pretrained(model_dir, dtype=torch.float32))


def max_positions(config: Any) -> int | None:
    """The longest sequence the model accepts, when its config says (None: unlimited or unknown)."""
    get = config.get if isinstance(config, Mapping) else (lambda k: getattr(config, k, None))
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = get(key)
        if isinstance(v, int) and v > 0:
            return v
    return None


def decoder_layers(model: Any) -> tuple[str, Any]:
    """(module prefix, ModuleList) of the transformer blocks: the ModuleList with num_hidden_layers entries."""
    import torch

    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n_layers and n_layers:
            return name, mod
    raise ValueError(f"could not find the transformer blocks of {type(model).__name__} (a ModuleList of "
                     "num_hidden_layers blocks); calibration supports decoder-only LMs and BERT-style encoders")


def resolve(name: str, names: set[str] | Mapping[str, Any], prefix: str) -> str | None:
    """The checkpoint's name for a module parameter (the base-model prefix may be absent or extra)."""
    if not names or name in names:
        return name
    if prefix:
        if name.startswith(prefix + ".") and name[len(prefix) + 1:] in names:
            return name[len(prefix) + 1:]
        if f"{prefix}.{name}" in names:
            return f"{prefix}.{name}"
    return None


class WholeModel:
    """Every weight in memory (``from_pretrained``, f32); blocks move to the device while they are calibrated."""

    def __init__(self, model_dir: Path, device: Any) -> None:
        from spqrfmt.hf.checkpoint import checkpoint_entries

        self.model = load_for_calibration(model_dir)
        self.prefix, self.layers = decoder_layers(self.model)
        self.names = {n for _sf, n in checkpoint_entries(model_dir)}
        self.base = getattr(self.model, "base_model_prefix", "")
        self.device = device

    def prepare(self) -> None:
        """Ready the modules before the first block (nothing to do: they are loaded)."""

    def inputs_done(self) -> None:
        """The first block's inputs are captured (the embeddings stay: the whole model is in memory)."""

    def load(self, i: int) -> Any:
        return self.layers[i].to(self.device)

    def release(self, i: int) -> None:
        if self.device.type != "cpu":
            self.layers[i].to("cpu")


@contextlib.contextmanager
def _meta_parameters() -> Iterator[None]:
    """While active, every parameter a module registers lives on the meta device (no memory, no init cost)."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(self: Any, name: str, param: Any) -> None:
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=False)
        register(self, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


class StreamingModel:
    """The model's skeleton on the meta device; a module's weights are read from the shards when it is needed.

    ``reads`` counts the tensors read so far (the tests' memory probe wraps
    the shard reader instead).
    """

    def __init__(self, model_dir: Path, device: Any) -> None:
        import torch

        from spqrfmt.hf.checkpoint import checkpoint_entries

        config = _config(model_dir)
        cls = _model_class(config)
        build = cls.from_config if cls.__name__.startswith("Auto") else cls._from_config
        with _meta_parameters():
            model = build(config, dtype=torch.float32)
        self.model = _eval(model)
        self.prefix, self.layers = decoder_layers(self.model)
        self.where = {n: sf for sf, n in checkpoint_entries(model_dir)}
        self.names = set(self.where)
        self.base = getattr(self.model, "base_model_prefix", "")
        self.device = device
        self.reads = 0

    def _tensor(self, name: str) -> Any:
        import torch

        from spqrfmt.dtypes import to_float32

        src = resolve(name, self.where, self.base)
        if src is None:
            raise ValueError(f"the checkpoint has no tensor for {name}; cannot calibrate this model")
        sf = self.where[src]
        dtype, arr = sf[src]
        self.reads += 1
        w = to_float32(arr, dtype)  # a new array for every dtype (widening / astype): never the read-only map
        t = torch.from_numpy(w if w.flags.writeable else w.copy())
        sf.evict(src)  # the mapped pages leave this process's RSS
        return t

    def _materialise(self, module: Any, prefix: str, device: Any) -> None:
        """Read ``module``'s own parameters (and stored buffers) from the shards onto ``device``."""
        import torch

        for pname, p in list(module._parameters.items()):
            if p is not None and p.device.type == "meta":
                t = self._tensor(f"{prefix}{pname}")
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"checkpoint tensor {prefix}{pname} has shape {list(t.shape)}, the model "
                                     f"expects {list(p.shape)}")
                module._parameters[pname] = torch.nn.Parameter(t.to(device), requires_grad=False)
        for bname, b in list(module._buffers.items()):
            stored = resolve(f"{prefix}{bname}", self.where, self.base) if b is not None else None
            if stored is not None and bname not in module._non_persistent_buffers_set:
                module._buffers[bname] = self._tensor(f"{prefix}{bname}").to(b.dtype).to(device)

    def prepare(self) -> None:
        """Hook every module outside the blocks to read its weights on its first call (embeddings: yes, head: no)."""
        inside = {id(m) for m in self.layers.modules()}
        self.outside = []
        for name, mod in self.model.named_modules():
            if id(mod) in inside or not any(p.device.type == "meta" for p in mod.parameters(recurse=False)):
                continue

            def pre(m: Any, _args: Any, name: str = name) -> None:
                self._materialise(m, f"{name}." if name else "", "cpu")

            self.outside.append((mod, mod.register_forward_pre_hook(pre)))

    def inputs_done(self) -> None:
        """The first block's inputs are captured: the embeddings (every module outside the blocks) are freed."""
        for mod, hook in self.outside:
            hook.remove()
            _to_meta(mod, recurse=False)
        self.outside = []

    def load(self, i: int) -> Any:
        block = self.layers[i]
        for sub, mod in block.named_modules():
            self._materialise(mod, f"{self.prefix}.{i}.{sub + '.' if sub else ''}", self.device)
        return block

    def release(self, i: int) -> None:
        """Block i's weights back to meta: their memory is freed."""
        _to_meta(self.layers[i], recurse=True)


def _to_meta(module: Any, recurse: bool) -> None:
    import torch

    for mod in module.modules() if recurse else (module,):
        for pname, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[pname] = torch.nn.Parameter(p.to("meta"), requires_grad=False)
