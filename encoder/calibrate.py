"""Calibration: per-layer Hessians from real activations, then the SpQR/GPTQ solver, block by block.

Why sequential: block i+1 is calibrated on the outputs of the *already
quantized* blocks 0..i (as GPTQ and SpQR do), so each block's solver sees the
inputs it will really get and can compensate for the error upstream.

Memory: the model's skeleton lives on the meta device and one block's weights
are read from the shards at a time (``spqrfmt.encoder.blocks``); the hidden
states between blocks are kept in f16 (``act_dtype``) on the calibration
device, with one block's Hessians. Layer Hessians are summed exactly
(``spqrfmt.encoder.hessian``), so a torch.distributed run over N ranks
(``spqrfmt.encoder.distributed``) writes the same bytes as one process.

Resumable: after each block, its encodings are written to
``work_dir/block_XXXX.npz`` (atomically, no pickle). A re-run with the same
work directory (and the same model, text and settings: checked against
``work_dir/run.json``) skips the finished blocks, only replaying them forward
with their decoded weights to rebuild the next block's inputs.

torch/transformers are imported inside the functions: the core package does
not depend on them.

Why this module is long: it is the one driver loop (capture inputs, solve a block, write it, replay it
forward) with its resume bookkeeping; the pieces it drives already live apart (``blocks``, ``hessian``,
``distributed``, the solvers).
"""

from __future__ import annotations

import hashlib
import inspect
import io
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

from ..scratch import replaced_atomically
from .blocks import StreamingModel, WholeModel, decoder_layers, load_for_calibration, max_positions, resolve
from .distributed import World
from .encoded import Encoded
from .gptq import release_buffers
from .hessian import fixed_gram, from_fixed, grid_exponent, input_bound, relative_output_error

__all__ = ["CalibConfig", "EncodingStore", "calibration_batches", "load_for_calibration", "max_positions",
           "quantize_model_calibrated"]

_SKIP_DEFAULT = (r"lm_head", r"embed")
ACT_DTYPES = ("float16", "float32")  # hidden states kept between blocks
RUN_FORMAT = 4  # run.json: 4 = integer f16 zero-points (3: codec + options; 2: int64 Hessian sums); older: not resumed


@dataclass
class CalibConfig:
    """Which codec solves the layers and with what settings, plus how much calibration data, which layers, where.

    ``codec``/``method``: a registered codec and one of its calibrated methods (spqr: ``spqr`` or ``gptq``;
    squeezellm: ``weighted-kmeans``; quip: ``ldlq``); ``options``: fields of that codec's ``Options``
    (missing ones take its defaults). Each layer is encoded by the codec's ``encode(weight, options,
    hessian, device)``: this driver never names a codec. ``spqrfmt.convert.QuantConfig.calib_config``
    builds one from the converter's settings, so the command line has one set of knobs for both paths.
    """

    codec: str = "spqr"
    method: str = "spqr"
    options: dict[str, Any] = field(default_factory=dict)
    nsamples: int = 128
    seqlen: int = 512
    batch_size: int = 8
    min_features: int = 64
    skip: tuple[str, ...] = _SKIP_DEFAULT
    device: str = "cpu"
    include: tuple[str, ...] = ()
    act_dtype: str = "float16"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalibConfig:
        """Accept a flat dict: the codec's option fields go to ``options``, the rest to the calibration settings."""
        own = set(cls.__dataclass_fields__)
        opts = dict(d.get("options") or {})
        opts.update({k: v for k, v in d.items() if k not in own})
        rest = {k: (tuple(v) if k in ("skip", "include") else v) for k, v in d.items() if k in own and k != "options"}
        return cls(options=opts, **rest)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["skip"] = list(self.skip)
        out["include"] = list(self.include)
        return out

    def solver(self) -> tuple[Any, Any]:
        """(the codec, its checked ``Options``) that encode each layer; ValueError naming what is wrong."""
        from ..codecs import by_id, encodable

        impl = by_id(self.codec)
        if impl is None or impl.Options is None:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {', '.join(encodable())}")
        calibrated = [m for m in impl.methods if m != "rtn"]
        if self.method not in calibrated:
            raise ValueError(f"codec {self.codec} has no calibrated method {self.method!r}"
                             + (f"; choose one of {', '.join(calibrated)}" if calibrated else ""))
        opts = impl.Options(**self.options)
        opts.check(self.method)
        return impl, opts

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


def _pack(items: Mapping[str, Encoded]) -> bytes:
    """Encodings -> npz bytes (arrays) + JSON (params/shape/info): a block file, or one encoding between ranks."""
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
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack(data: bytes) -> dict[str, Encoded]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        return {name: _encoded(z, name, meta) for name in meta}


def _save_block(path: Path, items: Mapping[str, Encoded]) -> None:
    """One block's encodings, written atomically."""
    with replaced_atomically(path) as (fd, _tmp), os.fdopen(fd, "wb") as f:
        f.write(_pack(items))


def _load_block_meta(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(bytes(z["__meta__"]).decode())


def _encoded(z: Any, name: str, meta: Mapping[str, Any]) -> Encoded:
    """One stored encoding, checked by the reader's rules (a work dir is a file like any other) and decoded."""
    from ..codecs import get
    from ..writer import checked_record

    m = meta[name]
    sections = {role: np.array(z[f"t{m['index']}.{role}"]) for role in m["roles"]}
    rec, typed, params = checked_record(name, tuple(m["shape"]), "f32", m["codec"], m["codec_version"],
                                        m["params"], sections)
    deq = get(rec).decode(rec, {r: a for r, (_d, a) in typed.items()}, params)
    return Encoded(rec.shape, m["params"], sections, deq, codec=m["codec"], codec_version=m["codec_version"],
                   info=dict(m["info"]))


def _load_encoded(path: Path, name: str, meta: Mapping[str, Any]) -> Encoded:
    with np.load(path, allow_pickle=False) as z:
        return _encoded(z, name, meta)


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


_decoder_layers = decoder_layers  # earlier name (bench/quality.py)


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


def _capture_first_inputs(model: Any, layers: Any, batches: Sequence[Any],
                          keep: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None
                          ) -> list[tuple[Any, dict[str, Any]]]:
    """Run the model up to block 0 for each batch; keep (hidden_states, keyword arguments) it would receive.

    ``keep`` maps each batch's pair as it is captured (to the device, to f16), so that
    only one batch is ever held as the model produced it.
    """
    import torch

    store: list[tuple[Any, dict[str, Any]]] = []

    def hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hs, kw = _as_keywords(mod, args, kwargs)
        store.append(keep(hs.detach(), kw) if keep is not None else (hs.detach(), kw))
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


def _run_block(block: Any, inputs: list[tuple[Any, dict[str, Any]]], device: Any, act_dtype: str | None = "float32"
               ) -> list[Any]:
    """The block's outputs for each batch, kept as ``act_dtype`` (None: not kept, for the hooks' passes).

    Stored inputs may be f16: the block computes in f32.
    """
    import torch

    outs = []
    with torch.no_grad():
        for hs, kw in inputs:
            o = block(hs.to(device=device, dtype=torch.float32), **_to(kw, device))
            if act_dtype is not None:
                outs.append(_stored((o[0] if isinstance(o, tuple) else o).detach(), act_dtype))
            del o
    return outs


def _stored(h: Any, dtype: str) -> Any:
    """Hidden states as kept between blocks: ``dtype``, or f32 for a batch that would overflow f16."""
    import torch

    if dtype == "float32":
        return h
    low = h.to(torch.float16)
    return low if bool(torch.isfinite(low).all()) or not bool(torch.isfinite(h).all()) else h


def _hash_texts(batches: Any) -> str:
    return hashlib.sha256(batches.numpy().astype("<i8").tobytes()).hexdigest()


def _set_weight(mod: Any, deq: np.ndarray, transposed: bool, device: Any) -> None:
    import torch

    w = np.ascontiguousarray(deq.T) if transposed else deq
    mod.weight.data = torch.from_numpy(w).to(mod.weight.dtype).to(device)


class _Bars:
    """A bar over blocks and one over the current block's tensors (by parameters), both with ETA (tqdm)."""

    def __init__(self, blocks: int, enabled: bool, log: Callable[[str], None] | None) -> None:
        self.log = log
        self.enabled = enabled
        self.tqdm: Any = None
        if enabled:
            try:
                from tqdm import tqdm

                self.tqdm = tqdm
            except ImportError:
                pass
        self.blocks = self._new(blocks, "calibrate", "block", 0, True) if self.tqdm else None
        self.tensors: Any = None

    def _new(self, total: int, desc: str, unit: str, position: int, leave: bool) -> Any:
        return self.tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "param", position=position,
                         leave=leave, file=sys.stderr, dynamic_ncols=True)

    def say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)
        elif self.blocks is not None:
            self.blocks.write(line, file=sys.stderr)
        elif self.enabled:
            print(line, file=sys.stderr, flush=True)

    def block_start(self, i: int, params: int) -> None:
        if self.tqdm and params:
            self.tensors = self._new(params, f"block {i}", "param", 1, False)

    def tensor_done(self, name: str, params: int) -> None:
        if self.tensors is not None:
            self.tensors.set_postfix_str(name.rsplit(".", 2)[-2], refresh=False)
            self.tensors.update(params)

    def block_done(self) -> None:
        if self.tensors is not None:
            self.tensors.close()
            self.tensors = None
        if self.blocks is not None:
            self.blocks.update(1)

    def close(self) -> None:
        if self.tensors is not None:
            self.tensors.close()
        if self.blocks is not None:
            self.blocks.close()


def _weight_in(mod: Any, transposed: bool) -> int:
    return int(mod.weight.shape[0 if transposed else 1])


def _block_hessians(block: Any, linears: Mapping[str, tuple[Any, bool]], inputs: list[tuple[Any, dict[str, Any]]],
                    device: Any, world: World, nbatches: int) -> dict[str, Any]:
    """Each linear layer's ``2/N Σ x xᵀ`` over every rank's batches (exact sums: see ``hessian``).

    Two passes over this rank's batches: the first bounds every layer's
    inputs (max over all ranks), which fixes the int64 grid; the second sums.
    """
    import torch

    names = list(linears)
    bound = dict.fromkeys(names, 0.0)

    def run(make: Callable[[str], Callable[..., None]]) -> None:
        handles = [mod.register_forward_hook(make(name)) for name, (mod, _t) in linears.items()]
        try:
            _run_block(block, inputs, device, None)
        finally:
            for h in handles:
                h.remove()

    def bounding(name: str) -> Callable[..., None]:
        def hook(_mod: Any, args: tuple[Any, ...], _out: Any) -> None:
            bound[name] = max(bound[name], input_bound(args[0]))
        return hook

    run(bounding)
    grid = dict(zip(names, (grid_exponent(b, nbatches) for b in world.max_([bound[n] for n in names])), strict=True))
    total = {n: torch.zeros((_weight_in(m, t),) * 2, dtype=torch.int64, device=device) for n, (m, t) in linears.items()}
    rows = dict.fromkeys(names, 0)

    def summing(name: str) -> Callable[..., None]:
        def hook(_mod: Any, args: tuple[Any, ...], _out: Any) -> None:
            total[name] += fixed_gram(args[0], grid[name])
            rows[name] += args[0].reshape(-1, args[0].shape[-1]).shape[0]
        return hook

    run(summing)
    counts = world.sum_int(torch.tensor([rows[n] for n in names], dtype=torch.int64)).tolist()
    out: dict[str, Any] = {}
    for name, count in zip(names, counts, strict=True):
        if count == 0:
            raise ValueError(f"{name} was not called when its block ran; cannot calibrate it")
        out[name] = from_fixed(world.sum_int(total.pop(name)), grid[name], count)
    return out


def _solve_block(linears: Mapping[str, tuple[Any, bool]], hess: Mapping[str, Any], cfg: CalibConfig, device: Any,
                 world: World, bars: _Bars) -> dict[str, Encoded]:
    """Solve layer j on rank j % N; every rank ends with every encoding (in ``linears``' order)."""
    import torch

    impl, opts = cfg.solver()
    encs: dict[str, Encoded] = {}
    for j, (name, (mod, transposed)) in enumerate(linears.items()):
        if world.owner(j) != world.rank:
            continue
        w = mod.weight.detach().to(torch.float32).cpu().numpy()
        w = np.ascontiguousarray(w.T) if transposed else w
        enc = impl.encode(w, opts, hessian=hess[name], device=None if device.type == "cpu" else str(device))
        # What the solver minimised, kept with the encoding: convert's "no better than zeros" check uses it.
        enc.info["rel_output_error"] = relative_output_error(w, enc.dequantized, hess[name])
        encs[name] = enc
        if not world.active:
            bars.tensor_done(name, mod.weight.numel())
    if world.active:
        for j, (name, (mod, _t)) in enumerate(linears.items()):
            src = world.owner(j)
            data = world.bytes_from(src, _pack({name: encs[name]}) if src == world.rank else b"")
            if src != world.rank:
                encs[name] = _unpack(data)[name]
            bars.tensor_done(name, mod.weight.numel())
    return {name: encs[name] for name in linears}


def quantize_model_calibrated(
    model_dir: str | os.PathLike[str],
    calib_texts: Sequence[str] | Any,
    config: CalibConfig | Mapping[str, Any] | None = None,
    progress: bool = True,
    *,
    work_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
    streaming: bool = True,
) -> EncodingStore:
    """Quantize every linear layer of a Hugging Face model's transformer blocks with calibration data.

    ``model_dir``: a Hugging Face folder (config.json + *.safetensors + tokenizer):
    a causal LM, or any model whose blocks form a ModuleList (BERT-style
    encoders are loaded as the class they were saved as). ``nn.Linear`` and
    GPT-2 ``Conv1D`` layers are calibrated; a Conv1D weight ``[in, out]`` is
    encoded transposed, as ``[out, in]``.
    ``calib_texts``: list of strings (tokenized with the folder's tokenizer into
    ``nsamples`` windows of ``seqlen`` tokens), or a LongTensor [N, seqlen] of
    token ids. ``config``: :class:`CalibConfig` or a flat dict of its fields and the codec's options.
    ``work_dir``: checkpoint directory (resumable); default a fresh temporary directory.
    ``streaming``: read one block's weights at a time from the shards (bounded
    memory; see ``spqrfmt.encoder.blocks``); False loads the whole model first
    (the reference path: same bits). Under torch.distributed (more than one
    rank) the work is split over the ranks (``spqrfmt.encoder.distributed``);
    only rank 0 writes to ``work_dir``.

    Returns an :class:`EncodingStore` (Mapping tensor name -> Encoded) whose
    names are the checkpoint's tensor names, e.g.
    ``model.layers.0.self_attn.q_proj.weight``. Layers outside the blocks
    (lm_head, a pooler) and those the config skips are not in it.
    ``progress``: progress bars over blocks and over each block's tensors on
    stderr; ``log`` receives one line per block.
    """
    import torch
    from transformers import AutoTokenizer

    cfg = config if isinstance(config, CalibConfig) else CalibConfig.from_dict(config or {})
    cfg.solver()  # reject unknown codecs, methods and settings before any work
    if cfg.act_dtype not in ACT_DTYPES:
        raise ValueError(f"act_dtype must be one of {', '.join(ACT_DTYPES)}, not {cfg.act_dtype!r}")
    world = World()
    device = world.device(cfg.device)  # before any collective: NCCL exchanges device tensors
    if work_dir is None:  # rank 0's fresh directory, for every rank
        made = tempfile.mkdtemp(prefix="spqr-calib-") if world.main else ""
        work = Path(world.bytes_from(0, made.encode()).decode())
    else:
        work = Path(work_dir)
    if world.main:
        work.mkdir(parents=True, exist_ok=True)
    folder = Path(model_dir)

    src = (StreamingModel if streaming else WholeModel)(folder, device)
    model = src.model
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
           "config": cfg.to_dict(), "format": RUN_FORMAT}
    run_file = work / "run.json"
    problem = None
    if world.main:
        if run_file.exists():
            if json.loads(run_file.read_text()) != run:
                problem = (f"{work} holds a calibration run with other settings, model or text; "
                           "use a fresh work_dir")
        else:
            run_file.write_text(json.dumps(run, indent=1))
    world.flag(problem)

    prefix, layers = src.prefix, src.layers
    all_batches = list(torch.split(tokens, max(1, cfg.batch_size)))
    batches = [all_batches[j] for j in world.share(len(all_batches))]
    t0 = time.perf_counter()
    src.prepare()
    inputs = _capture_first_inputs(model, layers, batches,
                                   lambda hs, kw: (_stored(hs.to(device), cfg.act_dtype), _to(kw, device)))
    src.inputs_done()
    bars = _Bars(len(layers), progress and world.main, log if world.main else None)
    say = bars.say
    share = f" over {world.size} ranks" if world.active else ""
    say(f"calibration: {tokens.shape[0]} x {tokens.shape[1]} tokens, {len(layers)} blocks{share}, work dir {work}")

    try:
        for i in range(len(layers)):
            path = work / f"block_{i:04d}.npz"
            block = src.load(i)
            linears: dict[str, tuple[Any, bool]] = {}
            for sub, (mod, transposed) in _hookable(block).items():
                name = resolve(f"{prefix}.{i}.{sub}.weight", src.names, src.base)
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
                bars.block_start(i, sum(m.weight.numel() for m, _t in linears.values()))
                hess = _block_hessians(block, linears, inputs, device, world, len(all_batches))
                encs = _solve_block(linears, hess, cfg, device, world, bars)
                del hess
                for name, (mod, transposed) in linears.items():
                    _set_weight(mod, encs[name].dequantized, transposed, device)
                if world.main:
                    _save_block(path, encs)
                n_out = sum(e.info.get("outliers", 0) for e in encs.values())
                say(f"block {i}: {len(encs)} layers, {n_out} outliers, {time.perf_counter() - tb:.1f}s")
            outs = _run_block(block, inputs, device, cfg.act_dtype)
            inputs = [(o, kw) for o, (_hs, kw) in zip(outs, inputs, strict=True)]
            del outs
            src.release(i)
            bars.block_done()
    finally:
        bars.close()
        release_buffers()
    world.barrier()  # rank 0 has written every block before anyone reads the store
    say(f"calibration done in {time.perf_counter() - t0:.1f}s")
    return EncodingStore(work)
