"""spec/codecs/spqr.md §4 bit packing in torch: the same words as ``encoder.packing.pack_rows``, on any device."""

from __future__ import annotations

import numpy as np
import torch

from .device import to_host


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes [R, C] (< 2**bits) -> int64 [R, ceil(C * bits / 32)] holding the u32 words.

    Every 32 codes fill exactly ``bits`` words, so after padding C to a multiple
    of 32 (zero codes: zero padding bits) each word is a fixed OR of shifted codes:
    32 vectorised steps, no scatter, integer arithmetic only (exact).
    """
    R, C = codes.shape
    c = codes.to(torch.int64)
    pad = -C % 32
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(R, -1, 32)
    words = torch.zeros((R, c.shape[1], bits), dtype=torch.int64, device=codes.device)
    for t in range(32):
        p = t * bits
        q, s = p >> 5, p & 31
        words[:, :, q] |= (c[:, :, t] << s) & 0xFFFFFFFF
        if s + bits > 32:
            words[:, :, q + 1] |= c[:, :, t] >> (32 - s)
    return words.reshape(R, -1)[:, : (C * bits + 31) // 32]


def as_i32(words: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2**32) -> int32 with the same bits (half the copy of int64)."""
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def to_u32(words: torch.Tensor) -> np.ndarray:
    """int64 words in [0, 2**32) -> host u32."""
    return to_host(as_i32(words)).view(np.uint32)
