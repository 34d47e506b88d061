"""bench/gguf_hf.py's block dequantizer against blocks packed here from known values (no gguf package needed).

Each test packs chosen codes and scales into ggml's byte layout independently of the decoder, and
expects the dequantized values computed in f32 in gguf-py's operation order (so equality is exact).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location("bench_gguf_hf", Path(__file__).parent.parent / "bench" / "gguf_hf.py")
gguf_hf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gguf_hf)

RNG = np.random.default_rng(17)


def _f16_bytes(x: float) -> np.ndarray:
    return np.array([x], dtype=np.float16).view(np.uint8)


def _nibble_bytes(q: np.ndarray) -> np.ndarray:
    """2w codes -> w bytes: code i in the low nibble of byte i, code w+i in its high nibble."""
    w = q.size // 2
    return (q[:w] | (q[w:] << 4)).astype(np.uint8)


def _check(blocks: list[np.ndarray], type_id: int, expected: np.ndarray) -> None:
    data = np.concatenate(blocks)
    got = gguf_hf.dequantize(data, type_id, (expected.size,))
    assert got.dtype == np.float32
    assert got.tobytes() == expected.astype(np.float32).tobytes()


def test_q8_0() -> None:
    q = RNG.integers(-128, 128, 32).astype(np.int8)
    d = np.float16(0.0371)
    _check([np.concatenate([_f16_bytes(d), q.view(np.uint8)])], 8, q.astype(np.float32) * np.float32(d))


def test_q4_0_and_q4_1() -> None:
    q = RNG.integers(0, 16, 32).astype(np.uint8)
    d, m = np.float16(0.125), np.float16(-1.5)
    _check([np.concatenate([_f16_bytes(d), _nibble_bytes(q)])], 2, np.float32(d) * (q.astype(np.float32) - 8))
    exp = np.float32(d) * q.astype(np.float32) + np.float32(m)
    _check([np.concatenate([_f16_bytes(d), _f16_bytes(m), _nibble_bytes(q)])], 3, exp)


def test_q4_k_two_superblocks() -> None:
    blocks, expected = [], []
    for _ in range(2):
        sc, mn = RNG.integers(0, 64, 8), RNG.integers(0, 64, 8)
        packed = np.zeros(12, dtype=np.uint8)
        for j in range(4):  # 6-bit scales/mins: j < 4 in bytes j, j+4; j >= 4 split over byte j+8 and the top bits
            packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6)
            packed[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6)
            packed[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4)
        q = RNG.integers(0, 16, 256).astype(np.uint8)
        qs = np.concatenate([_nibble_bytes(q[c * 64:(c + 1) * 64]) for c in range(4)])
        d, dmin = np.float16(0.0123), np.float16(0.0456)
        blocks.append(np.concatenate([_f16_bytes(d), _f16_bytes(dmin), packed, qs]))
        sub = np.arange(256) // 32
        expected.append((np.float32(d) * sc[sub].astype(np.float32)) * q.astype(np.float32)
                        - np.float32(dmin) * mn[sub].astype(np.float32))
    _check(blocks, 12, np.concatenate(expected))


def test_q6_k() -> None:
    q = RNG.integers(0, 64, 256).astype(np.uint8)
    sc = RNG.integers(-128, 128, 16).astype(np.int8)
    d = np.float16(0.0078)
    ql = np.zeros(128, dtype=np.uint8)
    qh = np.zeros(64, dtype=np.uint8)
    for e in range(256):
        h, r = divmod(e, 128)
        lo, hi = int(q[e] & 0xF), int(q[e] >> 4)
        ql[h * 64 + r % 64] |= lo << (4 * (r // 64))
        qh[h * 32 + r % 32] |= hi << (2 * (r // 32))
    block = np.concatenate([ql, qh, sc.view(np.uint8), _f16_bytes(d)])
    exp = (np.float32(d) * sc[np.arange(256) // 16].astype(np.float32)) * (q.astype(np.float32) - 32)
    _check([block], 14, exp)


def test_float_types_and_bad_input() -> None:
    x = RNG.standard_normal(6).astype(np.float32)
    _check([x.view(np.uint8)], 0, x)
    _check([x.astype(np.float16).view(np.uint8)], 1, x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="not supported"):
        gguf_hf.dequantize(np.zeros(110, dtype=np.uint8), 10, (256,))  # Q2_K
    with pytest.raises(ValueError, match="bytes"):
        gguf_hf.dequantize(np.zeros(33, dtype=np.uint8), 8, (32,))


def test_names_and_unpermute() -> None:
    assert gguf_hf.hf_name("blk.7.attn_k.bias") == "model.layers.7.self_attn.k_proj.bias"
    assert gguf_hf.hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert gguf_hf.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    with pytest.raises(ValueError):
        gguf_hf.hf_name("blk.0.attn_qkv.weight")
    # llama.cpp's permute for n_head heads: rows (h, 2, dim) -> (h, dim, 2); unpermute must invert it
    n_head, dim, cols = 3, 4, 5
    w = RNG.standard_normal((n_head * 2 * dim, cols)).astype(np.float32)
    permuted = w.reshape(n_head, 2, dim, cols).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(gguf_hf._unpermute(permuted, n_head), w)
