"""Element types of spec/SPEC.md §5 and the f32 <-> f16/bf16 roundings of §6.

numpy has no bfloat16, so bf16 data travels as ``uint16`` bit patterns and is
widened/narrowed here with exact integer arithmetic.
"""

from __future__ import annotations

import numpy as np

# name -> numpy storage dtype (little-endian). bf16 is stored as its bit pattern.
STORAGE: dict[str, np.dtype] = {
    "bool": np.dtype("u1"),
    "u8": np.dtype("<u1"),
    "i8": np.dtype("<i1"),
    "u16": np.dtype("<u2"),
    "i16": np.dtype("<i2"),
    "u32": np.dtype("<u4"),
    "i32": np.dtype("<i4"),
    "u64": np.dtype("<u8"),
    "i64": np.dtype("<i8"),
    "f16": np.dtype("<f2"),
    "bf16": np.dtype("<u2"),
    "f32": np.dtype("<f4"),
    "f64": np.dtype("<f8"),
}

ITEMSIZE: dict[str, int] = {name: dt.itemsize for name, dt in STORAGE.items()}

FLOAT_DTYPES = ("f16", "bf16", "f32", "f64")


def name_of(dtype: np.dtype | str) -> str:
    """Spec name for a numpy dtype (bool -> 'bool'; uint16 is never guessed as bf16)."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return "bool"
    table = {
        "u1": "u8", "i1": "i8", "u2": "u16", "i2": "i16", "u4": "u32", "i4": "i32",
        "u8": "u64", "i8": "i64", "f2": "f16", "f4": "f32", "f8": "f64",
    }
    key = dt.newbyteorder("<").str[1:]
    if key not in table:
        raise TypeError(f"numpy dtype {dt} has no spqrfmt element type")
    return table[key]


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bf16 bit patterns (uint16) to float32 exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 bit patterns, nearest-even; NaN stays a (quiet) NaN."""
    f = np.asarray(x, dtype=np.float32)
    u = np.ascontiguousarray(f).reshape(-1).view(np.uint32)  # ascontiguousarray alone makes a 0-d array 1-d
    rounding = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    out = ((u + rounding) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(u.view(np.float32))
    if nan.any():
        out[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return out.reshape(f.shape)


def rne16(x: np.ndarray) -> np.ndarray:
    """f32 -> nearest-even f16 -> f32 (spec 'rne16'); numpy's cast is IEEE RNE."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def to_float32(array: np.ndarray, dtype_name: str) -> np.ndarray:
    """Exact widening of a stored float section to f32."""
    if dtype_name == "bf16":
        return bf16_to_f32(array)
    return np.asarray(array).astype(np.float32)
