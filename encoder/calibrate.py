"""Calibration: per-layer Hessians from real activations, then the SpQR/GPTQ solver, block by block.

Why sequential: block i+1 is calibrated on the outputs of the *already
quantized* blocks 0..i (as GPTQ and SpQR do), so each block's solver sees the
inputs it will really get and can compensate for the error upstream.

Memory: only one decoder block's activations (the calibration batch's hidden
states) and Hessians live at once; with ``device='cuda'`` only the current
block is moved to the GPU.

Resumable: after each block, its encodings are written to
``work_dir/block_XXXX.npz`` (atomically, no pickle). A re-run with the same
work directory (and the same model, text and settings: checked against
``work_dir/run.json``) skips the finished blocks, only replaying them forward
with their decoded weights to rebuild the next block's inputs.

torch/transformers are imported inside the functions: the core package does
not depend on them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .gptq import GPTQConfig, factor_hessian, quantize_gptq
from .rtn import Encoded

__all__ = ["CalibConfig", "EncodingStore", "calibration_batches", "quantize_model_calibrated"]

_SKIP_DEFAULT = (r"lm_head", r"embed")


@dataclass
class CalibConfig:
    """Solver settings (``gptq``) plus how much calibration data to use, which layers, and where to run.

    ``spqrfmt.convert.QuantConfig.calib_config`` builds one from the converter's
    settings, so the command line has one set of knobs for both paths.
    """

    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    nsamples: int = 128
    seqlen: int = 512
    batch_size: int = 8
    min_features: int = 64
    skip: tuple[str, ...] = _SKIP_DEFAULT
    device: str = "cpu"
    include: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalibConfig:
        """Accept a flat dict: GPTQConfig keys go to ``gptq``, the rest to the calibration settings."""
        g_keys = set(GPTQConfig.__dataclass_fields__)
        gptq = GPTQConfig(**{k: v for k, v in d.items() if k in g_keys})
        rest = {k: (tuple(v) if k in ("skip", "include") else v) for k, v in d.items()
                if k not in g_keys and k != "gptq"}
        if isinstance(d.get("gptq"), Mapping):
            gptq = GPTQConfig(**d["gptq"])
        return cls(gptq=gptq, **rest)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["skip"] = list(self.skip)
        out["include"] = list(self.include)
        if not self.include:  # keeps run.json of work dirs made before ``include`` existed valid
            del out["include"]
        return out

    def wants(self, name: str, shape: tuple[int, ...]) -> bool:
        """Same rule as the converter's: 2-D, both dims >= min_features, not skipped unless included."""
        if len(shape) != 2:
            return False
        if any(re.search(p, name) for p in self.include):
            return True
        return min(shape) >= self.min_features and not any(re.search(p, name) for p in self.skip)


# ---------------------------------------------------------------- calibration data


def calibration_batches(tokenizer: Any, texts: Sequence[str], nsamples: int, seqlen: int) -> Any:
    """[nsamples, seqlen] token windows, evenly spaced over the concatenated texts (deterministic).

    Texts are joined with the EOS token between documents. If there are fewer
    than ``nsamples · seqlen`` tokens, windows overlap; if fewer than ``seqlen``,
    it is an error.
    """
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    total = len(ids)
    if total < seqlen + 1:
        raise ValueError(f"calibration text has {total} tokens, need at least seqlen+1 = {seqlen + 1}")
    stream = torch.tensor(ids, dtype=torch.long)
    starts = np.linspace(0, total - seqlen, num=nsamples).round().astype(np.int64) if nsamples > 1 else [0]
    return torch.stack([stream[s:s + seqlen] for s in starts])


# ---------------------------------------------------------------- checkpoint store


def _save_block(path: Path, items: Mapping[str, Encoded]) -> None:
    """One block's encodings -> npz (arrays) + JSON (params/shape/info), written atomically."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for i, (name, enc) in enumerate(items.items()):
        roles = []
        for role, arr in enc.sections.items():
            a = np.asarray(arr[1] if isinstance(arr, tuple) else arr)
            arrays[f"t{i}.{role}"] = a
            roles.append(role)
        info = {k: v for k, v in enc.info.items() if isinstance(v, (int, float, str, bool))}
        meta[name] = {"index": i, "shape": list(enc.shape), "params": enc.params, "roles": roles, "info": info,
                      "codec": enc.codec, "codec_version": enc.codec_version}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_block_meta(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(bytes(z["__meta__"]).decode())


def _load_encoded(path: Path, name: str, meta: Mapping[str, Any]) -> Encoded:
    from spqrfmt.decoder.spqr import decode

    m = meta[name]
    with np.load(path, allow_pickle=False) as z:
        sections = {role: np.array(z[f"t{m['index']}.{role}"]) for role in m["roles"]}
    shape = tuple(m["shape"])
    deq = decode(m["params"], sections, shape)
    return Encoded(shape, m["params"], sections, deq, codec=m["codec"], codec_version=m["codec_version"],
                   info=dict(m["info"]))


class EncodingStore(Mapping[str, Encoded]):
    """Read-only mapping tensor name -> Encoded, loaded lazily from a calibration work directory.

    This is what :func:`quantize_model_calibrated` returns; pass it as
    ``encoded=`` to ``spqrfmt.convert.convert`` so tensors are loaded (and
    decoded for the error report) one at a time.
    """

    def __init__(self, work_dir: str | os.PathLike[str]) -> None:
        self.work_dir = Path(work_dir)
        self._where: dict[str, tuple[Path, dict[str, Any]]] = {}
        for p in sorted(self.work_dir.glob("block_*.npz")):
            meta = _load_block_meta(p)
            for name in meta:
                self._where[name] = (p, meta)

    def __getitem__(self, name: str) -> Encoded:
        path, meta = self._where[name]
        return _load_encoded(path, name, meta)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def info(self, name: str) -> dict[str, Any]:
        """Solver info (outliers, seconds, ...) without loading the arrays."""
        return dict(self._where[name][1][name]["info"])


# ---------------------------------------------------------------- model plumbing


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


def load_for_calibration(model_dir: str | os.PathLike[str]) -> Any:
    """The checkpoint as an eval-mode f32 transformers model, without a KV cache."""
    import torch
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"{model_dir}: transformers cannot read this config.json ({e})") from e
    model = _model_class(config).from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


def max_positions(config: Any) -> int | None:
    """The longest sequence the model accepts, when its config says (None: unlimited or unknown)."""
    get = config.get if isinstance(config, Mapping) else (lambda k: getattr(config, k, None))
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = get(key)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _decoder_layers(model: Any) -> tuple[str, Any]:
    """(module prefix, ModuleList) of the transformer blocks: the ModuleList with num_hidden_layers entries."""
    import torch

    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n_layers and n_layers:
            return name, mod
    raise ValueError(f"could not find the transformer blocks of {type(model).__name__} (a ModuleList of "
                     "num_hidden_layers blocks); calibration supports decoder-only LMs and BERT-style encoders")


def is_conv1d(mod: Any) -> bool:
    """transformers' GPT-2-style Conv1D: a linear layer whose weight is stored [in, out]."""
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf")


def _hookable(block: Any) -> dict[str, tuple[Any, bool]]:
    """Sub-module name -> (module, weight stored [in, out]) for every linear layer of a block."""
    import torch

    out: dict[str, tuple[Any, bool]] = {}
    for sub, mod in block.named_modules():
        if isinstance(mod, torch.nn.Linear):
            out[sub] = (mod, False)
        elif is_conv1d(mod):
            out[sub] = (mod, True)
    return out


class _Captured(Exception):
    pass


def _to(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _is_cache(obj: Any) -> bool:
    return "Cache" in type(obj).__name__


def _as_keywords(block: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A block call's (hidden_states, every other argument by name), caches dropped.

    Models pass block arguments positionally (BERT: the attention mask, GPT-2:
    the cache and mask); binding them to the forward signature lets the
    replay call the block with keywords only, whatever the architecture.
    """
    sig = inspect.signature(block.forward)
    bound = sig.bind(*args, **kwargs)
    kw: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            kw.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise ValueError(f"{type(block).__name__} takes extra positional arguments; cannot replay it")
        else:
            kw[name] = value
    first = next(iter(sig.parameters))
    hs = kw.pop(first)
    kw = {k: (None if _is_cache(v) else v) for k, v in kw.items() if k not in ("past_key_values", "past_key_value")}
    if "use_cache" in kw:
        kw["use_cache"] = False
    return hs, kw


def _capture_first_inputs(model: Any, layers: Any, batches: Sequence[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """Run the model up to block 0 for each batch; keep (hidden_states, keyword arguments) it would receive."""
    import torch

    store: list[tuple[Any, dict[str, Any]]] = []

    def hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hs, kw = _as_keywords(mod, args, kwargs)
        store.append((hs.detach(), kw))
        raise _Captured

    call_kw = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    h = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in batches:
                try:
                    model(input_ids=ids, **call_kw)
                except _Captured:
                    pass
    finally:
        h.remove()
    if len(store) != len(batches):
        raise ValueError(f"{type(model).__name__} did not reach its first block on token ids")
    return store


def _run_block(block: Any, inputs: list[tuple[Any, dict[str, Any]]], device: Any) -> list[Any]:
    import torch

    outs = []
    with torch.no_grad():
        for hs, kw in inputs:
            o = block(hs.to(device), **_to(kw, device))
            outs.append((o[0] if isinstance(o, tuple) else o).detach())
    return outs


def _hash_texts(batches: Any) -> str:
    return hashlib.sha256(batches.numpy().astype("<i8").tobytes()).hexdigest()


def _checkpoint_names(model_dir: Path) -> set[str]:
    from spqrfmt.convert import checkpoint_entries  # the index's shards only, as the converter reads them

    return {n for _sf, n in checkpoint_entries(model_dir)}


def _resolve(name: str, names: set[str], prefix: str) -> str | None:
    """The checkpoint's name for a module parameter (the base-model prefix may be absent or extra)."""
    if not names or name in names:
        return name
    if prefix:
        if name.startswith(prefix + ".") and name[len(prefix) + 1:] in names:
            return name[len(prefix) + 1:]
        if f"{prefix}.{name}" in names:
            return f"{prefix}.{name}"
    return None


def _set_weight(mod: Any, deq: np.ndarray, transposed: bool, device: Any) -> None:
    import torch

    w = np.ascontiguousarray(deq.T) if transposed else deq
    mod.weight.data = torch.from_numpy(w).to(mod.weight.dtype).to(device)


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="calibrate", unit="block", file=sys.stderr, dynamic_ncols=True)


def quantize_model_calibrated(
    model_dir: str | os.PathLike[str],
    calib_texts: Sequence[str] | Any,
    config: CalibConfig | Mapping[str, Any] | None = None,
    progress: bool = True,
    *,
    work_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> EncodingStore:
    """Quantize every linear layer of a Hugging Face model's transformer blocks with calibration data.

    ``model_dir``: a Hugging Face folder (config.json + *.safetensors + tokenizer):
    a causal LM, or any model whose blocks form a ModuleList (BERT-style
    encoders are loaded as the class they were saved as). ``nn.Linear`` and
    GPT-2 ``Conv1D`` layers are calibrated; a Conv1D weight ``[in, out]`` is
    encoded transposed, as ``[out, in]``.
    ``calib_texts``: list of strings (tokenized with the folder's tokenizer into
    ``nsamples`` windows of ``seqlen`` tokens), or a LongTensor [N, seqlen] of
    token ids. ``config``: :class:`CalibConfig` or a flat dict of its and
    :class:`GPTQConfig`'s fields. ``work_dir``: checkpoint directory (resumable);
    default a fresh temporary directory.

    Returns an :class:`EncodingStore` (Mapping tensor name -> Encoded) whose
    names are the checkpoint's tensor names, e.g.
    ``model.layers.0.self_attn.q_proj.weight``. Layers outside the blocks
    (lm_head, a pooler) and those the config skips are not in it.
    ``progress``: a progress bar over blocks on stderr; ``log`` receives one
    line per block.
    """
    import torch
    from transformers import AutoTokenizer

    cfg = config if isinstance(config, CalibConfig) else CalibConfig.from_dict(config or {})
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="spqr-calib-"))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    folder = Path(model_dir)

    model = load_for_calibration(folder)
    if isinstance(calib_texts, torch.Tensor):
        tokens = calib_texts.to(torch.long)
        if tokens.ndim != 2:
            raise ValueError("token calibration data must be [N, seqlen]")
    else:
        tok = AutoTokenizer.from_pretrained(model_dir)
        tokens = calibration_batches(tok, list(calib_texts), cfg.nsamples, cfg.seqlen)

    limit = max_positions(model.config)
    if limit is not None and tokens.shape[1] > limit:
        raise ValueError(f"seqlen {tokens.shape[1]} exceeds the model's {limit} positions; use seqlen <= {limit}")
    run = {"model_dir": str(folder.resolve()), "tokens_sha256": _hash_texts(tokens),
           "config": cfg.to_dict(), "format": 1}
    run_file = work / "run.json"
    if run_file.exists():
        old = json.loads(run_file.read_text())
        if old != run:
            raise ValueError(f"{work} holds a calibration run with other settings, model or text; "
                             "use a fresh work_dir")
    else:
        run_file.write_text(json.dumps(run, indent=1))

    prefix, layers = _decoder_layers(model)
    names = _checkpoint_names(folder)
    base = getattr(model, "base_model_prefix", "")
    batches = list(torch.split(tokens, max(1, cfg.batch_size)))
    t0 = time.perf_counter()
    inputs = _to(_capture_first_inputs(model, layers, batches), device)
    bar = _bar(len(layers), progress)

    def say(line: str) -> None:
        if log is not None:
            log(line)
        elif bar is not None:
            bar.write(line, file=sys.stderr)
        elif progress:
            print(line, file=sys.stderr, flush=True)

    say(f"calibration: {tokens.shape[0]} x {tokens.shape[1]} tokens, {len(layers)} blocks, work dir {work}")

    for i, block in enumerate(layers):
        path = work / f"block_{i:04d}.npz"
        block.to(device)
        linears: dict[str, tuple[Any, bool]] = {}
        for sub, (mod, transposed) in _hookable(block).items():
            name = _resolve(f"{prefix}.{i}.{sub}.weight", names, base)
            shape = tuple(mod.weight.shape[::-1] if transposed else mod.weight.shape)
            if name is not None and cfg.wants(name, shape):
                linears[name] = (mod, transposed)
        tb = time.perf_counter()
        if path.exists():
            meta = _load_block_meta(path)
            for name, (mod, transposed) in linears.items():
                if name not in meta:
                    raise ValueError(f"{path} lacks {name}: the checkpoint does not match this model")
                _set_weight(mod, _load_encoded(path, name, meta).dequantized, transposed, device)
            say(f"block {i}: resumed from {path.name}")
        else:
            hess: dict[str, Any] = {}
            counts: dict[str, int] = {}
            handles = []

            def make_hook(name: str, hess: dict[str, Any] = hess, counts: dict[str, int] = counts
                          ) -> Callable[..., None]:
                def hook(_mod: Any, args: tuple[Any, ...], _out: Any) -> None:
                    x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
                    if name not in hess:
                        hess[name] = torch.zeros((x.shape[1], x.shape[1]), dtype=torch.float64, device=x.device)
                        counts[name] = 0
                    hess[name].addmm_(x.T, x)
                    counts[name] += x.shape[0]
                return hook

            for name, (mod, _t) in linears.items():
                handles.append(mod.register_forward_hook(make_hook(name)))
            try:
                _run_block(block, inputs, device)
            finally:
                for h in handles:
                    h.remove()
            encs: dict[str, Encoded] = {}
            factors: list[tuple[Any, Any]] = []  # (H, factor): layers fed the same input share one factorization
            for name, (mod, transposed) in linears.items():
                if name not in hess:
                    raise ValueError(f"{name} was not called when its block ran; cannot calibrate it")
                H = hess[name] * (2.0 / max(counts[name], 1))
                fac = next((f for h2, f in factors if h2.shape == H.shape and torch.equal(h2, H)), None)
                if fac is None:
                    fac = factor_hessian(H, cfg.gptq.percdamp, cfg.gptq.act_order, device=device)
                    factors.append((H, fac))
                w = mod.weight.detach().to(torch.float32).cpu().numpy()
                enc = quantize_gptq(np.ascontiguousarray(w.T) if transposed else w, config=cfg.gptq, factor=fac)
                encs[name] = enc
                _set_weight(mod, enc.dequantized, transposed, device)
            del hess, factors
            _save_block(path, encs)
            n_out = sum(e.info["outliers"] for e in encs.values())
            say(f"block {i}: {len(encs)} layers, {n_out} outliers, {time.perf_counter() - tb:.1f}s")
        inputs = [(o, kw) for o, (_hs, kw) in zip(_run_block(block, inputs, device), inputs, strict=True)]
        if device.type != "cpu":
            block.to("cpu")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    say(f"calibration done in {time.perf_counter() - t0:.1f}s")
    return EncodingStore(work)
