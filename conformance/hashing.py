"""How decoded tensors are hashed for the golden vectors (spec/conformance.md §3).

Kept in one place because the generator, the runner and every backend must
agree on it bit for bit.
"""

from __future__ import annotations

import hashlib

import numpy as np


def canonical_bytes(a: np.ndarray, quantized: bool) -> bytes:
    """C order, little-endian; quantized f32 NaNs become 0x7FC00000 (NaN payloads are unspecified)."""
    a = np.ascontiguousarray(a)
    if quantized:
        bits = a.astype("<f4").view("<u4").copy()
        bits[np.isnan(a)] = 0x7FC00000
        return bits.tobytes()
    if a.dtype == np.bool_:
        return a.astype("u1").tobytes()
    return a.astype(a.dtype.newbyteorder("<")).tobytes()


def canonical_f32_bytes(data: bytes) -> bytes:
    """Same canonicalisation for raw little-endian f32 bytes (e.g. from a safetensors file)."""
    return canonical_bytes(np.frombuffer(data, dtype="<f4"), True)


def sha256_of(a: np.ndarray, quantized: bool) -> str:
    return hashlib.sha256(canonical_bytes(a, quantized)).hexdigest()
