"""Tensor-parallel layers of a Llama-style model built from shards of a ``.spqr`` file (spec/sharding.md).

Megatron's split: the projections that fan out (``q/k/v_proj``, ``gate/up_proj``) are
*column-parallel*, cut along out, so a rank computes its heads / its slice of the MLP width
with no communication; the projections that fan back in (``o_proj``, ``down_proj``) are
*row-parallel*, cut along in, and their partial outputs are summed with one all-reduce. Every
other tensor (embeddings, norms, the head) is replicated. transformers' Llama attention infers
its head count from the projection's width, so a model whose q/k/v hold ``heads / tp`` heads
runs unchanged.

A row-parallel shard of a tensor with an act-order permutation holds the stored columns
``lo..hi`` (spec/sharding.md §3.2), i.e. the input features ``perm[lo:hi]``, not the features this rank
computed upstream: such a layer all-gathers its input and takes those features (one all-gather
of the activations; none when the shard's features are the rank's own block).

Each shard is read by :func:`spqrfmt.shard.read_shard` (only its byte ranges) and becomes a dense
``nn.Linear`` (decoded, bit-exact f32, one RNE cast) or, with ``use_kernels``, a
:class:`~spqrfmt.kernels.linear.CodecLinear` over its codec's ``gpu`` binding. torch.distributed
must be initialised by the caller (``torchrun``: ``init_process_group``); any backend works
(tested: gloo on CPU; NCCL on GPUs is untested here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import codecs
from .dtypes import to_float32
from .reader import SpqrFile, Tensor
from .shard import ReadCounter, read_shard

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # cut along out (axis 0)
ROW_PARALLEL = ("o_proj", "down_proj")  # cut along in (axis 1), outputs all-reduced
HEAD_KEYS = ("num_attention_heads", "num_key_value_heads")


def axis_of(module_path: str) -> int | None:
    """0 for a column-parallel projection, 1 for a row-parallel one, None for a replicated module."""
    leaf = module_path.rpartition(".")[2]
    return 0 if leaf in COLUMN_PARALLEL else 1 if leaf in ROW_PARALLEL else None


def world(tp: int | None, rank: int | None) -> tuple[int, int, Any]:
    """(tp, rank, group) checked against torch.distributed's default group (ValueError when they differ)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("tp > 1 needs torch.distributed: run under torchrun and call "
                         "torch.distributed.init_process_group() before load_model")
    size, me = dist.get_world_size(), dist.get_rank()
    tp, rank = size if tp is None else tp, me if rank is None else rank
    if (tp, rank) != (size, me):
        raise ValueError(f"tp={tp}, rank={rank} do not match torch.distributed (world size {size}, rank {me})")
    return tp, rank, dist.group.WORLD


def check_config(config: Any, tp: int) -> None:
    """Heads must split evenly over the ranks (a rank holds whole heads): ValueError otherwise."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in HEAD_KEYS:
        v = getattr(text, key, None)
        if isinstance(v, int) and v % tp:
            raise ValueError(f"tp={tp} does not divide {key} = {v}: each rank must hold whole attention heads")


class RowParallelLinear(nn.Module):
    """y = all_reduce(local(x[features])) + bias: ``local`` holds this rank's input columns, no bias."""

    def __init__(self, local: nn.Module, bias: torch.Tensor | None, features: torch.Tensor | None, tp: int,
                 group: Any) -> None:
        super().__init__()
        self.local, self.tp, self.group = local, tp, group
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.register_buffer("features", features, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.features is not None:  # a permuted shard: its input features were computed on every rank
            parts = [torch.empty_like(x) for _ in range(self.tp)]
            dist.all_gather(parts, x.contiguous(), group=self.group)
            x = torch.cat(parts, dim=-1).index_select(-1, self.features)
        y = self.local(x)
        dist.all_reduce(y, group=self.group)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def _local_linear(shard: Any, dtype: torch.dtype, dev: torch.device, use_kernels: bool, with_bias: bool) -> nn.Module:
    """The rank's part as a module: a CodecLinear over the codec's kernels, or a dense Linear."""
    codec = codecs.get(shard.record)
    m, n = shard.record.shape
    sections = {k: v for k, v in shard.arrays.items() if with_bias or k != "bias"}
    if use_kernels and codec.quantized and codec.gpu is not None:
        from .kernels.linear import CodecLinear  # untested on GPUs here (no GPU in CI): same path as load_model's

        writable = {k: np.array(v) for k, v in sections.items()}
        return CodecLinear.from_codec(codec, shard.params, writable, (m, n), dev)
    w = shard.decode()
    if not codec.quantized:  # raw: the stored dtype (bf16 as bit patterns) widened exactly
        w = to_float32(w, shard.record.dtype)
    lin = nn.Linear(n, m, bias=False, device="meta")
    lin.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(w)).to(device=dev, dtype=dtype),
                              requires_grad=False)
    if "bias" in sections:
        lin.bias = nn.Parameter(_bias(shard.arrays["bias"], shard.record.sections["bias"].dtype, dtype, dev),
                                requires_grad=False)
    return lin


def _bias(arr: np.ndarray, file_dtype: str, dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(to_float32(arr, file_dtype))).to(device=dev, dtype=dtype)


def shard_layers(model: nn.Module, f: SpqrFile, resolve: Callable[[str], str | None], dtype: torch.dtype,
                 dev: torch.device, use_kernels: bool, tp: int, rank: int, group: Any) -> tuple[list[str], int]:
    """Replace each column/row-parallel Linear of ``model`` by this rank's shard of its file tensor.

    ``resolve`` maps a file tensor name to the model's parameter name. Returns the file tensors
    consumed (weights and separately stored biases of those layers; the caller loads the rest)
    and the bytes of their sections that this rank read.
    ShardError (ValueError) names the codec rule when a tensor cannot be cut.
    """
    weights: dict[str, Tensor] = {}
    biases: dict[str, Tensor] = {}
    for name, t in f.tensors.items():
        target = resolve(name)
        if target is None:
            continue
        path, _, attr = target.rpartition(".")
        if axis_of(path) is None or attr not in ("weight", "bias"):
            continue
        if not isinstance(model.get_submodule(path), nn.Linear):
            continue
        (weights if attr == "weight" else biases)[path] = t
    if not weights:
        raise ValueError(f"{f.path}: tp > 1 needs Llama-style projections ({', '.join(COLUMN_PARALLEL + ROW_PARALLEL)}"
                         ") stored as 2-D weights; this model has none")
    counter = ReadCounter()
    for path, t in weights.items():
        axis = axis_of(path)
        shard = read_shard(t, axis, rank, tp, counter)
        old = model.get_submodule(path)
        if tuple(t.shape) != (old.out_features, old.in_features):
            raise ValueError(f"{t.name}: file has shape {list(t.shape)}, model expects "
                             f"{[old.out_features, old.in_features]}")
        separate = biases.get(path)
        if axis == 0:
            new = _local_linear(shard, dtype, dev, use_kernels, with_bias=True)
            if separate is not None:
                b = read_shard(separate, 0, rank, tp, counter)
                new.bias = nn.Parameter(_bias(b.decode(), separate.dtype, dtype, dev), requires_grad=False)
        else:
            new_local = _local_linear(shard, dtype, dev, use_kernels, with_bias=False)
            bias = None
            if separate is not None:
                bias = _bias(separate.decode(), separate.dtype, dtype, dev)
                counter.nbytes += separate.nbytes
            elif "bias" in shard.arrays:
                bias = _bias(shard.arrays["bias"], shard.record.sections["bias"].dtype, dtype, dev)
            own = np.arange(rank * shard.index.size, (rank + 1) * shard.index.size)
            features = None if np.array_equal(shard.index, own) else torch.from_numpy(shard.index).to(dev)
            new = RowParallelLinear(new_local, bias, features, tp, group)
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    model._spqr_state_names = None  # type: ignore[attr-defined]
    names = [t.name for t in weights.values()] + [t.name for p, t in biases.items() if p in weights]
    return names, counter.nbytes


def refuse_fused(meta: Mapping[str, Any], path: Any) -> None:
    """Fused QuIP# tensors (one tensor for q/k/v, mixed by its output Hadamard) have no per-part shard."""
    from .constants import FUSED

    if meta.get(FUSED):
        raise ValueError(f"{path}: fused tensors (metadata {FUSED!r}) cannot be loaded with tp > 1: their output "
                         "transform mixes the fused parts (spec/sharding.md §5)")


__all__ = ["COLUMN_PARALLEL", "ROW_PARALLEL", "RowParallelLinear", "axis_of", "check_config", "refuse_fused",
           "shard_layers", "world"]
