"""Perplexity of a Hugging Face causal LM, original or rebuilt from a ``.spqr`` file.

Why here: quality claims about an encoder are only as good as the evaluation
that backs them, so the evaluation is part of the package, deterministic
(fixed windows, no sampling) and runs the decoded weights exactly as the
file defines them (``Tensor.decode``: the spec's bit-exact f32 arithmetic).

torch and transformers are imported inside the functions; ``import
spqrfmt.hf.evaluate`` itself needs neither.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_causal_lm", "load_hf_model", "load_model_with_weights", "load_spqr_model", "perplexity",
           "read_documents", "tokenize_texts"]


def read_documents(path: str | os.PathLike[str]) -> list[str]:
    """A text file's non-empty lines, stripped, one document each (an EOS token goes between documents).

    UTF-8, or Latin-1 when the file is not valid UTF-8 (every byte sequence
    is valid Latin-1; the Lee corpus used in docs/quality.md is Latin-1).
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    docs = [line.strip() for line in text.splitlines() if line.strip()]
    if not docs:
        raise ValueError(f"{path} has no text")
    return docs


def check_causal_lm(config: Mapping[str, Any] | str, what: str = "the model") -> None:
    """Raise ValueError unless ``config`` (config.json contents) describes a causal LM with its head.

    Perplexity needs next-token logits: a checkpoint saved as a bare encoder
    (``BertModel``, e.g. the MiniLM demo) would get a randomly initialised head.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from .checkpoint import parse_config

    cfg = parse_config(config if isinstance(config, str) else json.dumps(dict(config)), what)
    model_type = cfg.get("model_type")
    heads = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    archs = cfg.get("architectures") or []
    ok = any(a in heads or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) if archs else \
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not ok:
        kind = "/".join(archs) if archs else f"model_type {model_type!r}"
        raise ValueError(f"{what} is {kind}, not a causal language model with an LM head; perplexity needs "
                         "next-token predictions (convert, inspect and verify work on any checkpoint)")


def load_hf_model(model_dir: str | os.PathLike[str], dtype: str = "float32", device: str = "cpu") -> Any:
    """The checkpoint in ``model_dir`` as an eval-mode ``AutoModelForCausalLM``."""
    import torch
    from transformers import AutoModelForCausalLM

    config = Path(model_dir) / "config.json"
    if config.is_file():
        check_causal_lm(config.read_text(encoding="utf-8"), str(model_dir))
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    except (KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ValueError(f"{model_dir}: transformers cannot build a model from it ({type(e).__name__}: {e})") from None
    return model.to(device).eval()


def load_model_with_weights(
    model_dir_or_config: str | os.PathLike[str] | Mapping[str, Any] | Any,
    tensors: Mapping[str, np.ndarray],
    dtype: str = "float32",
    device: str = "cpu",
) -> Any:
    """A causal LM whose parameters come from ``tensors`` (name -> array), e.g. decoded from a .spqr.

    ``model_dir_or_config``: a Hugging Face folder (its weights are loaded first
    and ``tensors`` overwrite them, so a partial dict works), or a config (dict,
    JSON string or ``PretrainedConfig``), in which case ``tensors`` must cover
    every parameter (tied ones may be absent). Unknown names raise ``KeyError``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

    tdtype = getattr(torch, dtype)
    full = False
    is_json = isinstance(model_dir_or_config, str) and model_dir_or_config.lstrip().startswith("{")
    if isinstance(model_dir_or_config, (str, os.PathLike)) and not is_json and Path(model_dir_or_config).is_dir():
        model = AutoModelForCausalLM.from_pretrained(model_dir_or_config, dtype=tdtype)
    else:
        cfg = model_dir_or_config
        if isinstance(cfg, str):
            cfg = json.loads(cfg)
        if isinstance(cfg, Mapping):
            d = dict(cfg)
            cfg = AutoConfig.for_model(d.pop("model_type"), **d)
        if not isinstance(cfg, PretrainedConfig):
            raise TypeError("model_dir_or_config must be a folder, a config dict/JSON or a PretrainedConfig")
        model = AutoModelForCausalLM.from_config(cfg, dtype=tdtype)  # random init, overwritten below
        full = True
    state = model.state_dict()
    unknown = [k for k in tensors if k not in state]
    if unknown:
        raise KeyError(f"tensors not in the model: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    new_state = {}
    for k, v in tensors.items():
        t = torch.from_numpy(np.ascontiguousarray(v)).to(tdtype)
        if tuple(t.shape) != tuple(state[k].shape):
            raise ValueError(f"{k}: shape {tuple(t.shape)} != model's {tuple(state[k].shape)}")
        new_state[k] = t
    model.load_state_dict(new_state, strict=False)
    if full:
        # Everything must come from ``tensors`` except parameters tied to one that does.
        ptrs = {state[k].data_ptr() for k in new_state}
        missing = [k for k, v in state.items() if k not in new_state and v.data_ptr() not in ptrs]
        missing = [k for k in missing if k in dict(model.named_parameters())]
        if missing:
            raise KeyError(f"parameters missing from tensors: {missing[:5]}")
    return model.to(device).eval()


def load_spqr_model(path: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None,
                    dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer or None) rebuilt from a .spqr file: every tensor decoded per the spec.

    Without ``model_dir`` this is ``spqrfmt.model.load_model`` with the kernels
    off (architecture from the file's ``hf.config`` metadata, Conv1D weights
    transposed back, tied embeddings re-tied) and the tokenizer stored in the
    file's ``hf.files/*`` metadata. With ``model_dir``, that folder's model is
    loaded and the decoded tensors overwrite its weights.
    """
    import torch

    from .. import open as spqr_open

    if model_dir is None:
        from ..model import load_model as load_file_model
        from .tokenizer import load_tokenizer

        with spqr_open(path) as f:
            if "hf.config" in f.metadata:
                check_causal_lm(f.metadata["hf.config"], str(path))
        model = load_file_model(path, device=device, dtype=getattr(torch, dtype), use_kernels=False)
        try:
            tokenizer = load_tokenizer(path)
        except ValueError:
            tokenizer = None
        return model, tokenizer

    from ..dtypes import to_float32
    from ..transposed import stored_transposed

    tensors: dict[str, np.ndarray] = {}
    with spqr_open(path) as f:
        transposed = stored_transposed(f)
        for name in f:
            t = f[name]
            if not t.quantized:
                arr = t.decode()
                if t.dtype in ("f16", "bf16", "f32", "f64"):
                    arr = to_float32(np.asarray(arr), t.dtype)
                tensors[name] = np.array(arr)
            else:
                tensors[name] = t.decode("f32")
            if name in transposed:  # stored [out, in]; the checkpoint's Conv1D holds [in, out]
                tensors[name] = np.ascontiguousarray(tensors[name].T)
    model = load_model_with_weights(model_dir, tensors, dtype=dtype, device=device)
    from transformers import AutoTokenizer

    return model, AutoTokenizer.from_pretrained(model_dir)


def tokenize_texts(tokenizer: Any, texts: Sequence[str], add_eos: bool = True) -> Any:
    """One 1-D LongTensor: the texts' tokens, an EOS between documents (no BOS)."""
    import torch

    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if add_eos and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def perplexity(model: Any, tokens: Any, seq_len: int = 512, stride: int | None = None, batch_size: int = 4,
               tokenizer: Any = None, progress: bool = False) -> float:
    """exp(mean next-token NLL) over ``tokens`` with windows of ``seq_len`` tokens.

    ``stride`` (default ``seq_len``: disjoint windows) < ``seq_len`` gives
    overlapping windows where only the last ``stride`` targets of each window
    are scored (each token is scored once, with up to ``seq_len - stride``
    tokens of extra context). ``tokens`` may be a 1-D tensor/array of ids, or a
    list of strings together with ``tokenizer``. Deterministic: no sampling,
    the windows depend only on the token count.
    """
    import torch

    if isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str):
        if tokenizer is None:
            raise ValueError("texts need a tokenizer")
        tokens = tokenize_texts(tokenizer, tokens)
    ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long).reshape(-1)
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise ValueError("need 1 <= stride <= seq_len")
    n = ids.numel()
    if n < 2:
        raise ValueError("need at least 2 tokens")
    # Windows start every ``stride`` tokens; each scores the targets not scored by the previous
    # one (with disjoint windows, every window's first token has no context and is not scored).
    windows: list[tuple[int, int, int]] = []  # (start, end, first scored position inside the window)
    begin, prev_end = 0, 0
    while True:
        end = min(begin + seq_len, n)
        first = max(prev_end, begin + 1)
        if first < end:
            windows.append((begin, end, first - begin))
        prev_end = end
        if end == n:
            break
        begin += stride
    device = next(model.parameters()).device
    total_nll = 0.0
    count = 0
    model.eval()
    starts: Any = range(0, len(windows), batch_size)
    if progress:
        try:
            from tqdm import tqdm

            starts = tqdm(starts, desc="perplexity", unit="batch", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            pass
    with torch.no_grad():
        for b in starts:
            chunk = windows[b:b + batch_size]
            L = max(e - s for s, e, _ in chunk)
            x = torch.zeros((len(chunk), L), dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for r, (s, e, _) in enumerate(chunk):
                x[r, :e - s] = ids[s:e]
                mask[r, :e - s] = 1
            logits = model(input_ids=x.to(device), attention_mask=mask.to(device), use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, (s, e, first) in enumerate(chunk):
                tgt = x[r, first:e - s].to(device)
                lp = logp[r, first - 1:e - s - 1].gather(-1, tgt[:, None])[:, 0]
                total_nll -= float(lp.double().sum())
                count += tgt.numel()
    return math.exp(total_nll / count)
