"""Run a transformers model straight from a ``.spqr`` file.

``load_model(path, device, dtype)`` rebuilds the architecture from the config
stored in the file (metadata ``hf.config``) with its parameters on the meta
device (no fp16 copy of the model is ever materialised), then fills it tensor
by tensor:

* quantized ``nn.Linear`` weights on CUDA stay compressed on the GPU, in a
  :class:`spqrfmt.kernels.linear.CodecLinear` over the codec's ``gpu`` binding
  (fused matvec for <= 16 rows, bit-exact dequantize + cuBLAS above; codec spqr's
  subclass ``SpQRLinear``);
* every other quantized weight (CPU, or a codec without ``gpu``) is
  decoded once with ``Tensor.decode()`` -- codec-agnostic and bit-exact per
  spec -- and cast to the model dtype with round-to-nearest-even;
* raw tensors (embeddings, norms, biases) are loaded as stored, floating
  ones cast to the model dtype; tied output embeddings are re-tied.

Fused layers (metadata ``spqrfmt.fused``, written by the QuIP# importer: one quantized
tensor for q/k/v or up/gate, whose output Hadamard mixes the parts) are decoded densely
on every device -- no kernel module -- and their row slices assigned to the parts.

GPT-2-style ``Conv1D`` layers store their weight transposed, ``[in, out]``.
``spqr convert`` quantizes such a weight as its transpose, in the spec's
``[out, in]`` orientation, and lists it in the metadata key
``spqrfmt.transposed`` (with ``spqrfmt.conv1d = "out_in"``); the loader
transposes those back (or gives them ``SpQRLinear`` on the GPU). A file with
only ``spqrfmt.conv1d = "out_in"`` means every quantized Conv1D weight is
``[out, in]``. Without either key (files from earlier converters) Conv1D
weights are decoded densely as stored.

torch and transformers are imported lazily: ``import spqrfmt`` stays light.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import codecs
from . import constants as K
from .hf.checkpoint import parse_config
from .reader import SpqrFile, Tensor
from .split import open_model as _open
from .transposed import StoredTransposed

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn



@dataclass
class LoadReport:
    """What ``load_model`` did with each tensor (attached to the model as ``model.spqr_load_report``)."""

    kernel_layers: list[str] = field(default_factory=list)
    decoded_layers: list[str] = field(default_factory=list)
    raw_tensors: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    sharded_layers: list[str] = field(default_factory=list)  # tensor-parallel: the tensors cut for this rank
    sharded_bytes_read: int = 0  # ... and the bytes of their sections this rank read


def config_of(f: SpqrFile) -> dict[str, Any]:
    """The checkpoint's config.json stored in the file (metadata ``hf.config``)."""
    text = f.metadata.get(K.HF_CONFIG)
    if text is None:
        raise ValueError(f"{f.path}: no 'hf.config' metadata; the file was not converted from a transformers folder")
    if not isinstance(text, (str, bytes)):
        raise ValueError(f"{f.path}: 'hf.config' is not config.json text")
    return parse_config(text, f"{f.path} (hf.config)")


def hf_config(f: SpqrFile) -> Any:
    """A transformers ``PretrainedConfig`` from the stored config.json (no network, no remote code)."""
    from transformers import AutoConfig

    cfg = config_of(f)
    cfg.pop("quantization_config", None)  # the file's own codecs replace any source quantization
    with tempfile.TemporaryDirectory(prefix="spqr-config-") as d:
        Path(d, "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        try:
            return AutoConfig.from_pretrained(d, trust_remote_code=False)
        except (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError) as e:
            raise ValueError(f"{f.path}: transformers cannot read its 'hf.config' ({type(e).__name__}: {e})") from None


# Buffers are built for real from the config alone (rotary tables, position ids, masks): a config
# asking for more than this is refused before anything is allocated.
MAX_BUFFER_BYTES = 1 << 30
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
MAX_POSITIONS = 1 << 24


def check_config_sizes(config: Any, f: SpqrFile, dtype: torch.dtype) -> None:
    """Refuse a config whose model would be far larger than the file describes (ValueError).

    A transformer has at least one tensor per block, so more blocks than the
    file has tensors cannot be this file's model; the buffers the constructor
    would allocate are measured on the meta device first.
    """
    import torch

    texts = [config] + ([config.get_text_config()] if hasattr(config, "get_text_config") else [])
    for c in texts:
        for key in LAYER_KEYS:
            v = getattr(c, key, None)
            if isinstance(v, int) and v > len(f.tensors):
                raise ValueError(f"{f.path}: hf.config has {key} = {v}, more blocks than the file has tensors "
                                 f"({len(f.tensors)})")
    positions = {k: getattr(c, k) for c in texts for k in POSITION_KEYS if isinstance(getattr(c, k, None), int)}
    cls = _model_class(config)
    build = cls.from_config if cls.__name__.startswith("Auto") else cls._from_config
    try:
        with torch.device("meta"):
            probe = build(config, dtype=dtype)
        nbytes = sum(b.numel() * b.element_size() for b in probe.buffers())
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta: bound its positions instead
        if any(v > MAX_POSITIONS for v in positions.values()):
            raise ValueError(f"{f.path}: hf.config asks for {positions} positions, more than {MAX_POSITIONS}; "
                             "refusing to build it") from None
        return
    if nbytes > MAX_BUFFER_BYTES:
        raise ValueError(f"{f.path}: hf.config asks for {nbytes / 2**30:.1f} GiB of buffers ({positions or 'sizes'}), "
                         f"more than {MAX_BUFFER_BYTES >> 30} GiB; refusing to build it")


def _model_class(config: Any) -> Any:
    """The class named in ``architectures`` if transformers has it, else AutoModelForCausalLM."""
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Create every ``nn.Parameter`` on the meta device while buffers stay real.

    Buffers computed at construction (rotary ``inv_freq``, position ids) are
    not in checkpoints, so they must be built for real; parameters come from
    the file and would only waste memory and init time.
    """
    from torch import nn

    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_empty_model(config: Any, dtype: torch.dtype) -> nn.Module:
    """The architecture with meta parameters and real buffers, in ``dtype``."""
    import torch

    cls = _model_class(config)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else old)
    try:
        with empty_parameters():
            # Auto* classes only have from_config; concrete classes build through _from_config.
            build = cls.from_config if cls.__name__.startswith("Auto") else cls._from_config
            model = build(config, dtype=dtype)
    finally:
        torch.set_default_dtype(old)
    return model


def _numpy_to_torch(arr: np.ndarray, file_dtype: str) -> torch.Tensor:
    import torch

    if file_dtype == "bf16":  # uint16 bit patterns
        return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16).copy()).view(torch.bfloat16)
    a = np.ascontiguousarray(arr)
    if a.dtype == np.uint16:
        a = a.astype(np.int32)
    elif a.dtype == np.uint32:
        a = a.astype(np.int64)
    return torch.from_numpy(a.copy())


def _resolve(model: nn.Module, name: str) -> str | None:
    """Map a checkpoint tensor name to the model's parameter/buffer name (base-model prefix differences)."""
    names = _state_names(model)
    if name in names:
        return name
    prefix = getattr(model, "base_model_prefix", "")
    if prefix:
        if f"{prefix}.{name}" in names:
            return f"{prefix}.{name}"
        if name.startswith(prefix + ".") and name[len(prefix) + 1:] in names:
            return name[len(prefix) + 1:]
    return None


def _state_names(model: nn.Module) -> set[str]:
    cache = getattr(model, "_spqr_state_names", None)
    if cache is None:
        cache = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        cache |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
        model._spqr_state_names = cache  # type: ignore[attr-defined]
    return cache


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace a parameter (or buffer) by a real tensor of the same shape."""
    from torch import nn

    mod, attr = _owner(model, name)
    if attr in mod._buffers:
        old = mod._buffers[attr]
        if old is not None and tuple(old.shape) != tuple(value.shape):
            raise ValueError(f"{name}: file has shape {list(value.shape)}, model expects {list(old.shape)}")
        mod._buffers[attr] = value
        return
    old = mod._parameters.get(attr)
    if old is not None and tuple(old.shape) != tuple(value.shape):
        raise ValueError(f"{name}: file has shape {list(value.shape)}, model expects {list(old.shape)}")
    mod._parameters[attr] = nn.Parameter(value, requires_grad=False)


def _is_conv1d(mod: Any) -> bool:
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf")


def _decode_to(t: Tensor, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Codec-agnostic decode (f32, bit-exact) then one RNE cast to the model dtype."""
    import torch

    w = torch.from_numpy(np.ascontiguousarray(t.decode()))
    return w.to(device=device, dtype=dtype)


def load_model(
    path: str | os.PathLike[str],
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    *,
    use_kernels: bool | None = None,
    verify_checksums: bool = True,
    tp: int | None = None,
    rank: int | None = None,
    autotune: bool | None = None,
) -> nn.Module:
    """Build the transformers model stored in a ``.spqr`` file, ready for inference (``eval()``).

    ``device``: "cpu" or "cuda[:i]". ``dtype``: torch.float16, bfloat16 or float32 (default:
    float16 on CUDA, float32 on CPU, where f16 matmuls are slow or missing).
    ``use_kernels``: keep quantized Linear weights compressed in ``CodecLinear`` modules over each
    codec's ``gpu`` binding (default: on CUDA only; on CPU only under
    ``TRITON_INTERPRET=1``). Otherwise quantized weights are decoded once (bit-exact f32, one
    RNE cast) into plain dense weights. A file that lacks model parameters, or whose config asks
    for far more than the file holds, raises ValueError before anything is moved to ``device``.

    ``tp`` (tensor parallelism, spec/sharding.md, docs/parallel.md): under ``torchrun`` with
    torch.distributed initialised, ``tp=N`` (default: the world size when ``rank`` is given)
    builds this rank's shard: q/k/v/gate/up cut along out, o/down along in with an all-reduce
    of their outputs, everything else replicated; each rank reads only its byte ranges of the
    cut tensors (section CRCs are then not checked: validate the file once). ``tp`` and ``rank``
    must match the process group. ``tp=None`` or 1 is the ordinary single-process load.

    ``autotune`` (default: ``SPQRFMT_AUTOTUNE=1`` in the environment): with kernels on CUDA, time the
    batch-1 tile configs of each distinct spqr layer shape once on this GPU and cache the fastest on
    disk (``spqrfmt.kernels.tune``); a later load finds them in the cache and times nothing.
    """
    import torch

    dev = torch.device(device)
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    if use_kernels is None:
        use_kernels = dev.type == "cuda"
    if use_kernels and dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"use_kernels=True needs a CUDA device (the Triton kernels are GPU code), not {device!r}; "
                         "leave use_kernels unset to decode the weights")
    with _open(path, verify_checksums=verify_checksums) as f:
        config = hf_config(f)
        check_config_sizes(config, f, dtype)
        model = build_empty_model(config, dtype)
        sharded: list[str] = []
        nbytes = 0
        if (tp or 1) > 1 or (tp is None and rank is not None):
            from . import parallel

            tp, rank, group = parallel.world(tp, rank)
            if tp > 1:
                parallel.check_config(config, tp)
                parallel.refuse_fused(f.metadata, f.path)
                sharded, nbytes = parallel.shard_layers(model, f, lambda name: _resolve(model, name), dtype,
                                                        dev, use_kernels, tp, rank, group)
        report = populate(model, f, dtype, dev, use_kernels, exclude=sharded)
        report.sharded_layers, report.sharded_bytes_read = sharded, nbytes
    model.to(dev)  # buffers built at construction (rotary tables, position ids)
    model.eval()
    model.spqr_load_report = report  # type: ignore[attr-defined]
    if autotune is None:
        autotune = os.environ.get("SPQRFMT_AUTOTUNE", "0") == "1"
    if autotune and use_kernels and dev.type == "cuda":
        from .kernels import tune

        tune.tune_model(model, dtype=dtype)
    return model


def populate(model: nn.Module, f: SpqrFile, dtype: torch.dtype, dev: torch.device, use_kernels: bool,
             exclude: Collection[str] = ()) -> LoadReport:
    """Give every parameter of ``model`` whose parameters are on the meta device its tensor from ``f``
    (except the file tensors named in ``exclude``, already loaded, e.g. tensor-parallel shards).

    Raw tensors are cast to ``dtype``; quantized ones are decoded once (bit-exact f32, one RNE
    cast) or, with ``use_kernels``, kept compressed in kernel modules. Output embeddings are tied
    when the config asks and the file has no head. ValueError when a parameter stays missing.
    """
    import torch

    path = f.path
    report = LoadReport()
    try:
        transposed = StoredTransposed.of(f.metadata)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    fused = fused_splits(f.metadata.get(K.FUSED), path)
    experts: dict[str, dict[int, dict[str, Any]]] = {}
    exclude = set(exclude)
    for name, t in f.tensors.items():
        if name in exclude:
            continue
        if name in fused:
            _load_fused(model, name, t, fused[name], dtype, dev, report)
            continue
        target = _resolve(model, name)
        if target is None and _collect_expert(experts, name, t, dtype):
            continue
        if target is None:
            target = _resolve(model, name.replace(".block_sparse_moe.", ".mlp."))
        if target is None:
            report.skipped.append(name)
            continue
        mod, attr = _owner(model, target)
        if not t.quantized:
            value = _numpy_to_torch(t.decode(), t.dtype)
            if value.is_floating_point():
                value = value.to(dtype)
            _set_tensor(model, target, value.to(dev))
            report.raw_tensors.append(name)
            continue
        is_linear = isinstance(mod, torch.nn.Linear) and attr == "weight"
        # A Conv1D weight stored [out, in], to be transposed back to the module's [in, out]:
        out_in = _is_conv1d(mod) and attr == "weight" and transposed.applies(name, quantized_conv1d_weight=True)
        if use_kernels and codecs.get(t.record).gpu is not None and (is_linear or out_in):
            _swap_for_kernel(model, target, t, dev)
            report.kernel_layers.append(name)
        elif out_in:
            _set_tensor(model, target, _decode_to(t, dtype, str(dev)).t().contiguous())
            report.decoded_layers.append(name)
        else:
            _set_tensor(model, target, _decode_to(t, dtype, str(dev)))
            report.decoded_layers.append(name)
        bias = t.bias()  # a bias carried inside the codec tensor, if any
        if bias is not None and not _has_real(model, target.rpartition(".")[0] + ".bias"):
            _set_bias(model, target, torch.from_numpy(bias).to(device=dev, dtype=dtype))
    _stack_experts(model, experts, dev, report, path)
    _tie(model, report)
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:  # before .to(), which cannot copy a meta tensor
        raise ValueError(f"{path}: the file lacks {len(missing)} model parameters, e.g. {missing[:5]}")
    return report


# Mixtral-style checkpoints keep one Linear per expert (``...block_sparse_moe.experts.E.w1/w2/w3.weight``);
# transformers 5 builds the experts as stacked parameters (``...mlp.experts.gate_up_proj`` [E, 2I, H] =
# w1 then w3 per expert, ``...mlp.experts.down_proj`` [E, H, I] = w2), as its own loader converts them.
_EXPERT = re.compile(r"^(?P<prefix>.+)\.block_sparse_moe\.experts\.(?P<e>\d+)\.(?P<w>w[123])\.weight$")


def _collect_expert(experts: dict, name: str, t: Any, dtype: Any) -> bool:
    """Set a per-expert weight aside for :func:`_stack_experts` (decoded, in ``dtype``); False if not one."""
    m = _EXPERT.match(name)
    if m is None:
        return False
    experts.setdefault(m["prefix"], {}).setdefault(int(m["e"]), {})[m["w"]] = (name, _decode_to(t, dtype, "cpu"))
    return True


def _stack_experts(model: Any, experts: dict, dev: Any, report: LoadReport, path: Any) -> None:
    """Per-expert weights -> the model's stacked expert parameters (or, where the model has per-expert
    Linears itself, those), decoded; a set that does not match the model is an error naming it."""
    import torch

    names = _state_names(model)
    for prefix, by_e in experts.items():
        gate_up = _resolve(model, f"{prefix}.mlp.experts.gate_up_proj")
        down = _resolve(model, f"{prefix}.mlp.experts.down_proj")
        n_e = len(by_e)
        if gate_up is None or down is None:
            for ws in by_e.values():  # a model that keeps one module per expert
                for name, value in ws.values():
                    target = _resolve(model, name)
                    if target is None:
                        report.skipped.append(name)
                    else:
                        _set_tensor(model, target, value.to(dev))
                        report.decoded_layers.append(name)
            continue
        if sorted(by_e) != list(range(n_e)) or any(sorted(ws) != ["w1", "w2", "w3"] for ws in by_e.values()):
            raise ValueError(f"{path}: the experts of {prefix!r} are incomplete (need w1, w2, w3 for experts "
                             f"0..{n_e - 1})")
        gu = torch.stack([torch.cat([by_e[e]["w1"][1], by_e[e]["w3"][1]], dim=0) for e in range(n_e)])
        dn = torch.stack([by_e[e]["w2"][1] for e in range(n_e)])
        for target, value in ((gate_up, gu), (down, dn)):
            want = tuple(dict(model.named_parameters())[target].shape) if target in names else None
            if want is not None and tuple(value.shape) != want:
                raise ValueError(f"{path}: {target} would be {tuple(value.shape)}, the model expects {want}")
            _set_tensor(model, target, value.to(dev))
        report.decoded_layers += [name for ws in by_e.values() for name, _ in ws.values()]


def fused_splits(meta: Any, path: Any) -> dict[str, list[tuple[str, int]]]:
    """Checked ``spqrfmt.fused`` metadata: {fused tensor: [(part name, rows), ...]}."""
    if meta is None:
        return {}
    out: dict[str, list[tuple[str, int]]] = {}
    ok = isinstance(meta, dict)
    for fused, parts in (meta.items() if ok else ()):
        if not (isinstance(fused, str) and isinstance(parts, list) and parts and all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and type(p[1]) is int and p[1] > 0
                for p in parts)):
            ok = False
            break
        out[fused] = [(p[0], p[1]) for p in parts]
    if not ok:
        raise ValueError(f"{path}: metadata 'spqrfmt.fused' is not a map of name -> [[part, rows], ...]")
    return out


def _load_fused(model: nn.Module, name: str, t: Tensor, parts: list[tuple[str, int]], dtype: torch.dtype,
                dev: torch.device, report: LoadReport) -> None:
    """Decode a fused tensor once and give each part its rows (dense on every device)."""
    if len(t.shape) != 2 or sum(r for _, r in parts) != t.shape[0]:
        raise ValueError(f"{name}: fused split {parts} does not cover its {t.shape[0]} rows")
    w = _decode_to(t, dtype, str(dev))
    start = 0
    for part, rows in parts:
        target = _resolve(model, part)
        if target is None:
            raise ValueError(f"{name}: fused part {part!r} is not a parameter of the model")
        _set_tensor(model, target, w[start:start + rows].clone())
        start += rows
    report.decoded_layers.append(name)


def _has_real(model: nn.Module, name: str) -> bool:
    try:
        mod, attr = _owner(model, name)
    except AttributeError:
        return False
    p = getattr(mod, attr, None)
    return p is not None and getattr(p, "device", None) is not None and p.device.type != "meta"


def _set_bias(model: nn.Module, weight_name: str, bias: torch.Tensor) -> None:
    from torch import nn

    mod, _ = _owner(model, weight_name)
    mod.bias = nn.Parameter(bias, requires_grad=False)


def _swap_for_kernel(model: nn.Module, target: str, t: Tensor, dev: torch.device) -> None:
    """Replace the Linear owning ``target`` by a module holding the compressed sections on ``dev``."""
    mod_path, _, _ = target.rpartition(".")
    old, _ = _owner(model, target)
    sections = {k: np.array(v) for k, v in t.arrays().items()}  # writable copies: torch.from_numpy needs them
    from .kernels.linear import CodecLinear

    new = CodecLinear.from_codec(codecs.get(t.record), t.codec_params, sections, tuple(t.shape), dev)
    old_bias = getattr(old, "bias", None)
    if old_bias is not None and new.bias is None and old_bias.device.type != "meta":
        new.bias = old_bias  # pragma: no cover - raw bias loaded before its weight
    elif old_bias is not None and new.bias is None:
        # The layer has a bias that will come as a raw tensor: keep a meta placeholder so the
        # later raw load finds the parameter name.
        from torch import nn

        new.bias = nn.Parameter(old_bias, requires_grad=False)
    parent_path, _, child = mod_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)
    model._spqr_state_names = None  # type: ignore[attr-defined]


def _tie(model: nn.Module, report: LoadReport) -> None:
    """Re-tie output embeddings to input embeddings when the config asks and the head was not in the file."""
    cfg = getattr(model, "config", None)
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    if cfg is None or get_out is None or get_in is None:
        return
    out, inp = get_out(), get_in()
    if out is None or inp is None:
        return
    tie = getattr(cfg, "tie_word_embeddings", False)
    text_cfg = getattr(cfg, "get_text_config", None)
    if text_cfg is not None:
        tie = getattr(text_cfg(), "tie_word_embeddings", tie)
    w = getattr(out, "weight", None)
    if tie and w is not None and w.device.type == "meta":
        out.weight = inp.weight
        report.tied.append("output embeddings <- input embeddings")


__all__ = ["LoadReport", "build_empty_model", "config_of", "empty_parameters", "fused_splits", "hf_config",
           "load_model", "populate"]
