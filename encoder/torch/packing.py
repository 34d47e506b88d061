"""spec/codecs/spqr.md §4 bit packing in torch: the same words as ``encoder.packing.pack_rows``, on any device."""

from __future__ import annotations

import functools

import numpy as np
import torch

from .device import to_host


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes [R, C] (< 2**bits) -> int64 [R, ceil(C * bits / 32)] holding the u32 words.

    Every 32 codes fill exactly ``bits`` words, so after padding C to a multiple
    of 32 (zero codes: zero padding bits) code t of a unit lands at bit 32 q + s
    of the unit's words (q, s = divmod(t * bits, 32)), its high bits in word
    q + 1 when it straddles. The pieces never overlap, so adding them into
    their words (an integer scatter-add: exact, order-free) is the bitwise OR:
    a handful of whole-tensor operations for any width.
    """
    R, C = codes.shape
    dev = codes.device
    c = codes.to(torch.int64)
    pad = -C % 32
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(R, -1, 32)
    q, s, cross, q1, s1 = _layout(bits, dev)
    words = torch.zeros((R, c.shape[1], bits), dtype=torch.int64, device=dev)
    words.scatter_add_(2, q.expand_as(c), (c << s) & 0xFFFFFFFF)
    if cross is not None:
        hi = c.index_select(2, cross) >> s1
        words.scatter_add_(2, q1.expand_as(hi), hi)
    return words.reshape(R, -1)[:, : (C * bits + 31) // 32]


@functools.lru_cache(maxsize=32)
def _layout(bits: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per code t of a 32-code unit: word q and shift s; the straddling codes, their next word and right shift."""
    p = [t * bits for t in range(32)]
    cross = [t for t in range(32) if (p[t] & 31) + bits > 32]
    q = torch.tensor([v >> 5 for v in p], device=device)
    s = torch.tensor([v & 31 for v in p], device=device)
    if not cross:
        return q, s, None, None, None
    return (q, s, torch.tensor(cross, device=device), torch.tensor([(p[t] >> 5) + 1 for t in cross], device=device),
            torch.tensor([32 - (p[t] & 31) for t in cross], device=device))


def as_i32(words: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2**32) -> int32 with the same bits (half the copy of int64)."""
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def to_u32(words: torch.Tensor) -> np.ndarray:
    """int64 words in [0, 2**32) -> host u32."""
    return to_host(as_i32(words)).view(np.uint32)
