"""What every generator shares: deterministic randomness, bit packing, scalar f32/f16 rounding, raw tensors,
the vector records and the small edits that invalid vectors apply to a valid file.

Why one module: the per-codec generators must draw the same bytes from the same seeds and corrupt files
the same way; the refreader is deliberately not used here except to aim an edit (``offset_of``).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    from .. import miniwriter as mw
    from .. import refreader
    from ..hashing import sha256_of
except ImportError:  # `python conformance/generate.py`: this package is then top level, its siblings are too
    import miniwriter as mw  # type: ignore[no-redef]
    import refreader  # type: ignore[no-redef]
    from hashing import sha256_of  # type: ignore[no-redef]

Item = tuple[mw.Tens, Any, "np.ndarray | None"]  # (tensor, expected decode or error code, expected bias)
MISSING = object()   # an invalid-vector edit that removes the key
F16_MIN_NORMAL = 2.0**-14
F16_MAX = 65504.0

# ---------------------------------------------------------------- deterministic randomness


class Det:
    """SHA-256 counter-mode random source: stable forever, unlike numpy's Generator methods."""

    def __init__(self, seed: str) -> None:
        self.seed = seed.encode()
        self.counter = 0

    def raw(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "little")).digest()
            self.counter += 1
        return bytes(out[:n])

    def u32(self, size: int) -> np.ndarray:
        return np.frombuffer(self.raw(4 * size), dtype="<u4").astype(np.int64)

    def ints(self, lo: int, hi: int, size: int) -> np.ndarray:
        """Integers in [lo, hi) (hi - lo < 2^32)."""
        return lo + self.u32(size) % (hi - lo)

    def unit(self, size: int) -> np.ndarray:
        return self.u32(size).astype(np.float64) / 2.0**32

    def f16(self, lo: float, hi: float, size: int) -> np.ndarray:
        return (lo + (hi - lo) * self.unit(size)).astype(np.float16)

    def perm(self, n: int) -> list[int]:
        p = list(range(n))
        r = self.u32(n)
        for i in range(n - 1, 0, -1):
            j = int(r[i]) % (i + 1)
            p[i], p[j] = p[j], p[i]
        return p

    def sample(self, n: int, k: int) -> list[int]:
        return sorted(self.perm(n)[:k])


# ---------------------------------------------------------------- packing


def pack_rows(codes: list[list[int]], k: int, pad_bits: bool = False) -> bytes:
    """spqr.md §4 from first principles: a row is one little-endian integer of W*32 bits."""
    out = bytearray()
    for row in codes:
        words = (len(row) * k + 31) // 32
        acc = 0
        for i, c in enumerate(row):
            assert 0 <= c < (1 << k)
            acc |= int(c) << (i * k)
        if pad_bits:  # set every padding bit: readers MUST ignore them
            used = len(row) * k
            acc |= ((1 << (words * 32)) - 1) ^ ((1 << used) - 1)
        out += acc.to_bytes(words * 4, "little")
    return bytes(out)


def float_bytes(x: np.ndarray, dtype: str) -> bytes:
    if dtype == "bf16":
        return (np.asarray(x, dtype=np.float32).view("<u4") >> 16).astype("<u2").tobytes()  # values are bf16-exact
    return np.asarray(x, dtype={"f16": "<f2", "f32": "<f4"}[dtype]).tobytes()


# ---------------------------------------------------------------- scalar f32 / f16 arithmetic for the oracles


def r32(x: float) -> float:
    """Round a binary64 value to binary32 (nearest even, overflow to +-inf), back as a Python float."""
    with np.errstate(all="ignore"):
        return float(np.float32(x))


def f32_bits(x: float) -> int:
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


def f32_from_bits(b: int) -> float:
    return float(np.array([b], dtype=np.uint32).view(np.float32)[0])


def _f16_scaled(x: float) -> tuple[float, float]:
    """(|x| / ulp, ulp) for the binary16 grid around a finite nonzero x (subnormal grid 2^-24 below 2^-14)."""
    ax = abs(x)
    e = math.frexp(ax)[1] - 1                     # 2^e <= |x| < 2^(e+1)
    ulp = 2.0 ** (max(e, -14) - 10)
    return ax / ulp, ulp                          # exact: division by a power of two


def r16(x: float) -> float:
    """rne16 of spqr.md §5: round a binary32 value to binary16 (nearest, ties to even, overflow to +-inf)."""
    if math.isnan(x) or math.isinf(x) or x == 0.0:
        return x
    q, ulp = _f16_scaled(x)
    y = round(q) * ulp                            # Python rounds halves to even, exactly
    if y > F16_MAX:
        y = math.inf
    return math.copysign(y, x)


def is_tie16(x: float) -> bool:
    """x lies exactly halfway between two binary16 neighbours (or between 65504 and the overflow point)."""
    if math.isnan(x) or math.isinf(x) or x == 0.0:
        return False
    q, _ = _f16_scaled(x)
    return q - math.floor(q) == 0.5


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return sha256_of(a, True) == sha256_of(b, True)


# ---------------------------------------------------------------- sections shared by the codecs with outliers


def sec_f16(role: str, arr: np.ndarray) -> mw.Sec:
    return mw.Sec(role, "f16", list(arr.shape), np.asarray(arr, dtype="<f2").tobytes())


def csr_sections(outliers: list[list[tuple[int, float]]], col_dtype: str) -> list[mw.Sec]:
    ptr = [0]
    cols: list[int] = []
    vals: list[float] = []
    for row in outliers:
        cols += [c for c, _ in row]
        vals += [v for _, v in row]
        ptr.append(len(cols))
    return [mw.Sec("outlier_row_ptr", "u32", [len(outliers) + 1], np.array(ptr, dtype="<u4").tobytes()),
            mw.Sec("outlier_col", col_dtype, [len(cols)],
                   np.array(cols, dtype="<u2" if col_dtype == "u16" else "<u4").tobytes()),
            mw.Sec("outlier_val", "f16", [len(vals)], np.array(vals, dtype="<f2").tobytes())]


def make_outliers(rng: Det, m: int, n: int, kind: str, lo: float = -0.5, hi: float = 0.5
                   ) -> list[list[tuple[int, float]]]:
    rows: list[list[tuple[int, float]]] = []
    for r in range(m):
        if kind == "none":
            k = 0
        elif kind == "full_rows":
            k = n if r % 3 == 1 else (0 if r % 3 == 0 else 2 % (n + 1))
        else:
            k = int(rng.ints(0, min(n, 4) + 1, 1)[0]) if r % 4 else 0  # every 4th row empty
        cols = rng.sample(n, min(k, n))
        vals = rng.f16(lo, hi, len(cols))
        rows.append([(c, float(v)) for c, v in zip(cols, vals, strict=True)])
    return rows


def make_bias(rng: Det, m: int, bias: str | None) -> np.ndarray | None:
    if bias is None:
        return None
    b = rng.f16(-1.0, 1.0, m).astype(np.float32)
    if bias == "bf16":
        b = ((b.view(np.uint32) >> 16) << 16).view(np.float32)
    return b


# ---------------------------------------------------------------- raw tensors


RAW_NP = {"bool": "u1", "u8": "u1", "i8": "i1", "u16": "<u2", "i16": "<i2", "u32": "<u4", "i32": "<i4",
          "u64": "<u8", "i64": "<i8", "f16": "<f2", "bf16": "<u2", "f32": "<f4", "f64": "<f8"}


def raw_array(seed: str, dtype: str, shape: list[int]) -> np.ndarray:
    """Stored array for a raw tensor (bf16 as uint16 bits, bool as 0/1 bytes); floats include specials."""
    rng = Det(seed)
    count = int(np.prod(shape, dtype=np.int64))
    npd = np.dtype(RAW_NP[dtype])
    if dtype == "bool":
        a = (rng.u32(count) & 1).astype("u1")
    elif dtype in ("f16", "f32", "f64"):
        a = ((rng.unit(count) - 0.5) * 200).astype(npd)
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(npd).tiny / 4, np.finfo(npd).max], dtype=npd)
        a[: min(count, len(specials))] = specials[: min(count, len(specials))]
    elif dtype == "bf16":
        a = (rng.u32(count) & 0xFFFF).astype("<u2")
        fixed = np.array([0x7FC1, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x3F80], dtype="<u2")  # NaN, ±inf, -0, subnormal, 1
        a[: min(count, 6)] = fixed[: min(count, 6)]
    else:
        a = np.frombuffer(rng.raw(count * npd.itemsize), dtype=npd).copy()
    return a.reshape(shape)


def raw_tens(name: str, dtype: str, shape: list[int], seed: str | None = None, **kw: Any) -> tuple[mw.Tens, np.ndarray]:
    a = raw_array(seed or name, dtype, shape)
    return mw.Tens(name, list(shape), dtype, "raw", {}, [mw.Sec("data", dtype, list(shape), a.tobytes())], **kw), a


def raw_item(name: str, dtype: str, shape: list[int], **kw: Any) -> Item:
    """A raw tensor and its expected decode (bool as numpy bool)."""
    t, a = raw_tens(name, dtype, shape, **kw)
    return t, (a.astype(np.bool_) if dtype == "bool" else a), None


# ---------------------------------------------------------------- vector records


@dataclass
class Valid:
    name: str
    description: str
    tensors: list[mw.Tens]
    expected: dict[str, Any]          # name -> decoded array, or an error code str (per-tensor)
    bias: dict[str, np.ndarray] = field(default_factory=dict)
    build_kw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Invalid:
    name: str
    description: str
    blob: bytes
    error: str
    accept: list[str] = field(default_factory=list)


def valid_adder(out: list[Valid]) -> Callable[..., None]:
    """``add(name, description, items, **build_kw)`` appending a valid vector to ``out``."""

    def add(name: str, desc: str, items: list[Item], **build_kw: Any) -> None:
        tens = [t for t, _, _ in items]
        exp = {t.name: e for t, e, _ in items}
        bias = {t.name: b for t, _, b in items if b is not None}
        out.append(Valid(name, desc, tens, exp, bias, build_kw))

    return add


def invalid_adder(out: list[Invalid]) -> Callable[..., None]:
    """``add(name, description, blob, error, also=())`` appending an invalid vector to ``out``."""

    def add(name: str, desc: str, blob: bytes, error: str, also: tuple[str, ...] = ()) -> None:
        out.append(Invalid(name, desc, blob, error, [error, *also]))

    return add


def header_adder(add: Callable[..., None]) -> Callable[..., None]:
    """``hdr(name, description, header_bytes, error="BAD_HEADER", also=())``: a file around raw header bytes."""

    def hdr(name: str, desc: str, hb: bytes, error: str = "BAD_HEADER", also: tuple[str, ...] = ()) -> None:
        add(name, desc, mw.build([], spoil=mw.Spoil(header_bytes=hb)), error, also)

    return hdr


# ---------------------------------------------------------------- edits of a valid file


def sec_of(ts: list[mw.Tens], tensor: str, role: str) -> mw.Sec:
    t = next(t for t in ts if t.name == tensor)
    return next(s for s in t.sections if s.role == role)


def tens_of(ts: list[mw.Tens], tensor: str) -> mw.Tens:
    return next(t for t in ts if t.name == tensor)


def replace_data(ts: list[mw.Tens], tensor: str, role: str, arr: np.ndarray) -> None:
    sec_of(ts, tensor, role).data = arr.tobytes()


def header_blob(header: Any) -> bytes:
    return mw.build([], header_obj=header)


def valid_header() -> dict[str, Any]:
    return {"tensors": [], "metadata": {}}


def set_byte(s: mw.Sec, pos: int, byte: int) -> None:
    b = bytearray(s.data)
    b[pos] = byte
    s.data = bytes(b)


def row_ptr_of(outliers: list[list[tuple[int, float]]]) -> list[int]:
    ptr = [0]
    for row in outliers:
        ptr.append(ptr[-1] + len(row))
    return ptr


def cols_of(outliers: list[list[tuple[int, float]]]) -> list[int]:
    return [c for row in outliers for c, _ in row]


def offset_of(ts: list[mw.Tens], tensor: str, role: str) -> int:
    """Offset a canonical layout gives a section (used to aim overlaps)."""
    blob = mw.build(ts)
    rf = refreader.RefFile(blob)
    return rf.tensors[tensor].sections[role].offset


def drop_sec(ts: list[mw.Tens], tensor: str, role: str) -> None:
    t = tens_of(ts, tensor)
    t.sections = [s for s in t.sections if s.role != role]


def resize(s: mw.Sec, shape: list[int], itemsize: int) -> None:
    n = int(np.prod(shape))
    s.shape = shape
    s.data = (s.data + bytes(n * itemsize))[: n * itemsize]


def retype(s: mw.Sec, dtype: str, npd: str) -> None:
    s.dtype = dtype
    s.data = np.zeros(int(np.prod(s.shape)), dtype=npd).tobytes()


def flip_bit(s: mw.Sec) -> None:
    s.set["crc32"] = zlib.crc32(s.data)
    b = bytearray(s.data)
    b[0] ^= 1
    s.data = bytes(b)
