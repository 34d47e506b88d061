"""Text generation from a ``.spqr`` file: tokenizer from the file's metadata, greedy or sampled decoding.

The tokenizer comes from the file itself (:func:`spqrfmt.hf.tokenizer.load_tokenizer`, re-exported
here), so a ``.spqr`` file is self-contained; ``--tokenizer DIR`` overrides it.

The command line (``spqr generate``) is :mod:`spqrfmt.cli.generate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .tokenizer import load_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import torch


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 32,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
) -> tuple[str, list[int]]:
    """Continue ``prompt``; temperature 0 is greedy. Returns (new text, new token ids)."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    enc = tokenizer(prompt, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    mask = enc.get("attention_mask")
    kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "attention_mask": None if mask is None else
                              mask.to(device)}
    if temperature > 0:
        if seed is not None:
            torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
    else:
        kwargs.update(do_sample=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is not None:
        kwargs["pad_token_id"] = pad
    with torch.inference_mode():
        out = model.generate(ids, **kwargs)
    new = out[0, ids.shape[1]:].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new


def greedy_tokens(model: Any, input_ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Plain greedy loop with the KV cache, no generation config involved (used by tests and benchmarks)."""
    import torch

    with torch.inference_mode():
        out = model(input_ids, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        toks = [int(tok)]
        for _ in range(max_new_tokens - 1):
            out = model(tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            toks.append(int(tok))
    return toks


__all__ = ["generate", "greedy_tokens", "load_tokenizer"]
