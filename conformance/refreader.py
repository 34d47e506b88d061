"""Independent reference reader for `.spqr`, written from spec/ only.

Why it exists: the conformance suite needs a second implementation that
shares no code with the library, so that a bug in one shows up as a
disagreement instead of being baked into the golden vectors. It imports
only numpy and the standard library (it even carries its own msgpack
parser, so that every header rule of SPEC.md §3 is checked here rather
than trusted to a third-party decoder).

Favour clarity over speed: this is the reader other implementers should be
able to read side by side with the spec. Each codec is one validation
function plus one decode function registered in ``CODECS``; adding a codec
means adding those two functions.

Why this module is long: it is one file on purpose — a foreign implementer reads it beside the
spec, top to bottom, with nothing to chase across modules (and it must stay free of the library).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import mmap
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from stat import S_ISREG
from typing import Any

import numpy as np

# ---------------------------------------------------------------- constants (SPEC §2)

MAGIC = b"SPQRFMT\x00"
PREAMBLE = 32
MAX_HEADER_LENGTH = 64 * 1024 * 1024
MAX_TENSORS = 1 << 20
MAX_NAME_BYTES = 1024
MAX_NDIM = 8
MAX_ELEMENTS = 1 << 40
MAX_NESTING = 32
MAX_CONTAINER_LEN = 1 << 24

# SPEC §5: name -> (numpy storage dtype, itemsize). bf16 is kept as its uint16 bit pattern,
# bool as its raw byte (validated to 0/1 on decode).
DTYPES: dict[str, np.dtype] = {
    "bool": np.dtype("u1"), "u8": np.dtype("u1"), "i8": np.dtype("i1"),
    "u16": np.dtype("<u2"), "i16": np.dtype("<i2"), "u32": np.dtype("<u4"), "i32": np.dtype("<i4"),
    "u64": np.dtype("<u8"), "i64": np.dtype("<i8"), "f16": np.dtype("<f2"), "bf16": np.dtype("<u2"),
    "f32": np.dtype("<f4"), "f64": np.dtype("<f8"),
}

ERROR_CODES = (
    "TRUNCATED", "BAD_MAGIC", "UNSUPPORTED_VERSION", "HEADER_TOO_LARGE", "TRAILING_DATA",
    "HEADER_CHECKSUM", "BAD_HEADER", "LIMIT_EXCEEDED", "BAD_NAME", "DUPLICATE_NAME", "BAD_DTYPE",
    "BAD_SHAPE", "SHAPE_OVERFLOW", "SECTION_LENGTH_MISMATCH", "SECTION_MISALIGNED",
    "SECTION_OUT_OF_BOUNDS", "SECTION_OVERLAP", "UNKNOWN_CODEC", "UNSUPPORTED_CODEC_VERSION",
    "BAD_PARAMS", "BAD_SECTION_SET", "BAD_SECTION_LAYOUT", "SECTION_CHECKSUM", "BAD_CSR",
    "BAD_INDEX", "BAD_PERMUTATION", "BAD_VALUE", "BAD_METADATA", "BAD_SPLIT",
)


class RefError(Exception):
    """A reject with the spec's stable code name (``.code`` is a plain str)."""

    def __init__(self, code: str, message: str, tensor: str | None = None) -> None:
        assert code in ERROR_CODES, code
        self.code = code
        self.tensor = tensor
        where = f" (tensor {tensor!r})" if tensor is not None else ""
        super().__init__(f"{code}: {message}{where}")


def _is_int(x: Any) -> bool:
    """msgpack int: Python bool is an int subclass but msgpack true/false are not ints."""
    return isinstance(x, int) and not isinstance(x, bool)


def align64(x: int) -> int:
    return (x + 63) & ~63


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


# ---------------------------------------------------------------- msgpack (SPEC §3)

class _MsgpackParser:
    """Strict msgpack decoder enforcing SPEC §3 (no ext, str keys, no duplicates, limits).

    Every length is checked against the bytes left before anything is
    allocated, so a hostile length costs nothing.
    """

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def fail(self, msg: str) -> RefError:
        return RefError("BAD_HEADER", f"msgpack at byte {self.pos}: {msg}")

    def take(self, n: int) -> bytes:
        if n > len(self.buf) - self.pos:
            raise self.fail(f"needs {n} bytes, {len(self.buf) - self.pos} left")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def str_(self, n: int) -> str:
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("str is not valid UTF-8") from None

    def container_len(self, n: int) -> int:
        if n > MAX_CONTAINER_LEN:
            raise self.fail(f"container of {n} items > MAX_CONTAINER_LEN")
        if n > len(self.buf) - self.pos:  # every item takes at least one byte
            raise self.fail(f"container of {n} items cannot fit in the bytes left")
        return n

    def value(self, depth: int) -> Any:
        b = self.take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self.map_(b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return self.array(b & 0x0F, depth)
        if 0xA0 <= b <= 0xBF:
            return self.str_(b & 0x1F)
        if b == 0xC0:
            return None
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        if b in (0xC4, 0xC5, 0xC6):
            return bytes(self.take(self.uint(1 << (b - 0xC4))))
        if b in (0xC7, 0xC8, 0xC9) or 0xD4 <= b <= 0xD8:
            raise self.fail("ext types are not allowed")
        if b == 0xCA:
            return struct.unpack(">f", self.take(4))[0]
        if b == 0xCB:
            return struct.unpack(">d", self.take(8))[0]
        if 0xCC <= b <= 0xCF:
            return self.uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            n = 1 << (b - 0xD0)
            return int.from_bytes(self.take(n), "big", signed=True)
        if 0xD9 <= b <= 0xDB:
            return self.str_(self.uint(1 << (b - 0xD9)))
        if b in (0xDC, 0xDD):
            return self.array(self.uint(2 if b == 0xDC else 4), depth)
        if b in (0xDE, 0xDF):
            return self.map_(self.uint(2 if b == 0xDE else 4), depth)
        raise self.fail(f"byte 0x{b:02x} is not a msgpack type")  # 0xC1

    def array(self, n: int, depth: int) -> list[Any]:
        if depth + 1 > MAX_NESTING:
            raise self.fail("nesting deeper than MAX_NESTING")
        n = self.container_len(n)
        return [self.value(depth + 1) for _ in range(n)]

    def map_(self, n: int, depth: int) -> dict[str, Any]:
        if depth + 1 > MAX_NESTING:
            raise self.fail("nesting deeper than MAX_NESTING")
        n = self.container_len(n)
        out: dict[str, Any] = {}
        for _ in range(n):
            k = self.value(depth + 1)
            if not isinstance(k, str):
                raise self.fail(f"map key {k!r} is not a str")
            if k in out:
                raise self.fail(f"duplicate map key {k!r}")
            out[k] = self.value(depth + 1)
        return out


def parse_msgpack(buf: bytes) -> Any:
    """Exactly one msgpack object, no trailing bytes (SPEC §3). Depth: the top object is 1."""
    p = _MsgpackParser(buf)
    obj = p.value(0)
    if p.pos != len(buf):
        raise RefError("BAD_HEADER", f"{len(buf) - p.pos} trailing bytes after the header object")
    return obj


# ---------------------------------------------------------------- records (SPEC §4)

@dataclass
class Section:
    role: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    length: int
    crc32: int


@dataclass
class TensorRec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: str
    codec_version: int
    params: dict[str, Any]
    sections: dict[str, Section] = field(default_factory=dict)


# SPEC §3 "Types": a required key that is missing or of the wrong msgpack type is BAD_HEADER
# (msgpack bool and float are never ints); the entries of a shape array are BAD_SHAPE.
_TENSOR_KEYS = {"name": str, "shape": list, "dtype": str, "codec": str, "codec_version": int,
                "params": dict, "sections": dict}
_SECTION_KEYS = {"dtype": str, "shape": list, "offset": int, "length": int, "crc32": int}


def _check_type(value: Any, want: type, what: str) -> None:
    ok = _is_int(value) if want is int else isinstance(value, want)
    if not ok:
        raise RefError("BAD_HEADER", f"{what} has type {type(value).__name__}, wants {want.__name__}")


def _shape(value: list[Any], what: str) -> tuple[int, ...]:
    if not all(_is_int(d) for d in value):
        raise RefError("BAD_SHAPE", f"{what} shape {value!r} is not an array of ints")
    if len(value) > MAX_NDIM:
        raise RefError("BAD_SHAPE", f"{what} shape has {len(value)} > MAX_NDIM dims")
    if any(d < 0 for d in value):
        raise RefError("BAD_SHAPE", f"{what} shape {value!r} has a negative entry")
    prod = 1
    for d in value:
        if d != 0:  # SPEC §4: zero entries are left out of the product that MAX_ELEMENTS bounds
            prod *= d
    if prod > MAX_ELEMENTS:
        raise RefError("SHAPE_OVERFLOW", f"{what} shape {value!r}: non-zero entries multiply to {prod} "
                       "> MAX_ELEMENTS")
    return tuple(value)


def _prod(shape: tuple[int, ...]) -> int:
    p = 1
    for d in shape:
        p *= d
    return p


def parse_records(header: Any, data_length: int) -> tuple[list[TensorRec], dict[str, Any]]:
    """Every container-level rule of SPEC §3, §4 and §10 (codec rules are per tensor)."""
    if not isinstance(header, dict):
        raise RefError("BAD_HEADER", "header is not a map")
    if "tensors" not in header or "metadata" not in header:
        raise RefError("BAD_HEADER", "header lacks 'tensors' or 'metadata'")
    tensors = header["tensors"]
    if not isinstance(tensors, list):
        raise RefError("BAD_HEADER", "'tensors' is not an array")
    if not isinstance(header["metadata"], dict):
        raise RefError("BAD_METADATA", "'metadata' is not a map")
    if len(tensors) > MAX_TENSORS:
        raise RefError("LIMIT_EXCEEDED", f"{len(tensors)} tensors > MAX_TENSORS")
    # Pass 1: types of every required key (BAD_HEADER).
    for i, t in enumerate(tensors):
        if not isinstance(t, dict):
            raise RefError("BAD_HEADER", f"tensor record {i} is not a map")
        for key, want in _TENSOR_KEYS.items():
            if key not in t:
                raise RefError("BAD_HEADER", f"tensor record {i} lacks {key!r}")
            _check_type(t[key], want, f"tensor {i} {key!r}")
        if t["codec_version"] < 1:
            raise RefError("BAD_HEADER", f"tensor {i} codec_version {t['codec_version']} < 1")
        for role, s in t["sections"].items():
            if not isinstance(s, dict):
                raise RefError("BAD_HEADER", f"tensor {i} section {role!r} is not a map")
            for key, want in _SECTION_KEYS.items():
                if key not in s:
                    raise RefError("BAD_HEADER", f"tensor {i} section {role!r} lacks {key!r}")
                _check_type(s[key], want, f"tensor {i} section {role!r} {key!r}")
            if not 0 <= s["crc32"] < (1 << 32):
                raise RefError("BAD_HEADER", f"tensor {i} section {role!r} crc32 out of range")
    # Pass 2: names, dtypes, shapes, section geometry (SPEC §10 order).
    recs: list[TensorRec] = []
    seen: set[str] = set()
    for t in tensors:
        name = t["name"]
        nb = len(name.encode("utf-8"))
        if nb == 0 or nb > MAX_NAME_BYTES or "\x00" in name:
            raise RefError("BAD_NAME", f"tensor name {name[:40]!r} ({nb} bytes) is not allowed")
        if name in seen:
            raise RefError("DUPLICATE_NAME", f"tensor name {name!r} appears twice")
        seen.add(name)
        if t["dtype"] not in DTYPES:
            raise RefError("BAD_DTYPE", f"unknown dtype {t['dtype']!r}", name)
        shape = _shape(t["shape"], "tensor")
        secs: dict[str, Section] = {}
        for role, s in t["sections"].items():
            if s["dtype"] not in DTYPES:
                raise RefError("BAD_DTYPE", f"section {role!r} unknown dtype {s['dtype']!r}", name)
            sshape = _shape(s["shape"], f"section {role!r}")
            if s["length"] != _prod(sshape) * DTYPES[s["dtype"]].itemsize:
                raise RefError("SECTION_LENGTH_MISMATCH", f"section {role!r} length {s['length']}", name)
            if s["offset"] % 64 != 0:
                raise RefError("SECTION_MISALIGNED", f"section {role!r} offset {s['offset']}", name)
            if s["offset"] < 0 or s["offset"] + s["length"] > data_length:
                raise RefError("SECTION_OUT_OF_BOUNDS", f"section {role!r} ends past the data section", name)
            secs[role] = Section(role, s["dtype"], sshape, s["offset"], s["length"], s["crc32"])
        recs.append(TensorRec(name, shape, t["dtype"], t["codec"], t["codec_version"], t["params"], secs))
    spans = sorted((s.offset, s.offset + s.length, r.name, s.role)
                   for r in recs for s in r.sections.values() if s.length > 0)
    for a, b in zip(spans, spans[1:], strict=False):
        if b[0] < a[1]:
            raise RefError("SECTION_OVERLAP", f"{a[2]}/{a[3]} and {b[2]}/{b[3]} share bytes")
    return recs, header["metadata"]


# ---------------------------------------------------------------- codecs

Arrays = dict[str, np.ndarray]
Checker = Callable[[TensorRec], None]          # params, section set, layouts (no bytes read)
ContentChecker = Callable[[TensorRec, Arrays], None]  # CSR, indices, ... (after CRC check)
Decoder = Callable[[TensorRec, Arrays], np.ndarray]


@dataclass
class Codec:
    versions: frozenset[int]
    check: Checker
    check_content: ContentChecker
    decode: Decoder


def _roles(rec: TensorRec, required: set[str], optional: frozenset[str] | set[str] = frozenset()) -> None:
    have = set(rec.sections)
    if not required <= have:
        raise RefError("BAD_SECTION_SET", f"missing sections {sorted(required - have)}", rec.name)
    if have - required - optional:
        raise RefError("BAD_SECTION_SET", f"undefined sections {sorted(have - required - optional)}", rec.name)


def _layout(rec: TensorRec, role: str, dtypes: tuple[str, ...], shape: tuple[int, ...]) -> None:
    s = rec.sections[role]
    if s.dtype not in dtypes or s.shape != shape:
        raise RefError("BAD_SECTION_LAYOUT", f"section {role!r} is {s.dtype}{list(s.shape)}, "
                       f"wants {'|'.join(dtypes)}{list(shape)}", rec.name)


# raw (SPEC §8)

def _raw_check(rec: TensorRec) -> None:
    _roles(rec, {"data"})
    _layout(rec, "data", (rec.dtype,), rec.shape)


def _raw_content(rec: TensorRec, arrays: Arrays) -> None:
    if rec.dtype == "bool" and arrays["data"].size and int(arrays["data"].max()) > 1:
        raise RefError("BAD_VALUE", "bool byte other than 0/1", rec.name)


def _raw_decode(rec: TensorRec, arrays: Arrays) -> np.ndarray:
    a = arrays["data"]
    return a.astype(np.bool_) if rec.dtype == "bool" else a.copy()


# helpers shared by the quantized codecs (each codec document's §1, §2 and CSR rules)

def _matrix_tensor(rec: TensorRec) -> tuple[int, int]:
    """Quantized-codec tensor: shape [m >= 1, n >= 1] (BAD_SHAPE), dtype f16/bf16/f32 (BAD_PARAMS, SPEC §10)."""
    if len(rec.shape) != 2 or rec.shape[0] < 1 or rec.shape[1] < 1:
        raise RefError("BAD_SHAPE", f"{rec.codec} needs shape [m>=1, n>=1], got {list(rec.shape)}", rec.name)
    if rec.dtype not in ("f16", "bf16", "f32"):
        raise RefError("BAD_PARAMS", f"{rec.codec} tensor dtype must be f16/bf16/f32, got {rec.dtype}", rec.name)
    return rec.shape[0], rec.shape[1]


def _int_param(rec: TensorRec, key: str, allowed: Callable[[int], bool]) -> int:
    """A required msgpack-int parameter (bool and float are not ints) satisfying ``allowed``."""
    v = rec.params.get(key)
    if not _is_int(v) or not allowed(v):
        raise RefError("BAD_PARAMS", f"params[{key!r}] = {v!r} is missing or out of range", rec.name)
    return v


def _outlier_layouts(rec: TensorRec, m: int, n: int) -> None:
    """CSR sections shared by spqr and squeezellm: row_ptr u32[m+1], col u16|u32[nnz], val f16[nnz]."""
    _layout(rec, "outlier_row_ptr", ("u32",), (m + 1,))
    col = rec.sections["outlier_col"]
    if len(col.shape) != 1:
        raise RefError("BAD_SECTION_LAYOUT", "outlier_col must be 1-D", rec.name)
    nnz = col.shape[0]
    _layout(rec, "outlier_col", ("u16", "u32") if n <= 65536 else ("u32",), (nnz,))
    _layout(rec, "outlier_val", ("f16",), (nnz,))


def _csr_content(rec: TensorRec, a: Arrays, m: int, n: int) -> None:
    """BAD_CSR for the row pointer, then BAD_INDEX for columns (range, strictly increasing per row)."""
    ptr = a["outlier_row_ptr"].astype(np.int64)
    col = a["outlier_col"].astype(np.int64)
    nnz = col.shape[0]
    if ptr[0] != 0 or np.any(np.diff(ptr) < 0) or ptr[m] != nnz:
        raise RefError("BAD_CSR", "outlier_row_ptr must start at 0, not decrease and end at nnz", rec.name)
    if nnz:
        if int(col.max()) >= n:
            raise RefError("BAD_INDEX", "outlier column >= n", rec.name)
        # strictly increasing inside each row: every step that is not a row start must be > 0
        step = np.diff(col)
        row_start = np.zeros(nnz, dtype=bool)
        row_start[ptr[:-1][ptr[:-1] < nnz]] = True
        if np.any(step[~row_start[1:]] <= 0):
            raise RefError("BAD_INDEX", "outlier columns of a row are not strictly increasing", rec.name)


def _bias_layout(rec: TensorRec, m: int) -> None:
    if "bias" in rec.sections:
        _layout(rec, "bias", ("f16", "bf16", "f32"), (m,))


def unpack_rows(words: np.ndarray, count: int, k: int) -> np.ndarray:
    """spqr.md §4: code i of a row is bits i*k .. i*k+k-1 of the row's LE bit stream."""
    words = words.astype(np.uint64)
    i = np.arange(count, dtype=np.int64)
    p = i * k
    q = p >> 5
    s = (p & 31).astype(np.uint64)
    nxt = np.minimum(q + 1, words.shape[1] - 1)  # only used when the code straddles (then q+1 exists)
    v = (words[:, q] | (words[:, nxt] << np.uint64(32))) >> s
    return (v & np.uint64((1 << k) - 1)).astype(np.uint32)


# spqr (codecs/spqr.md)

SPQR_ARITH = ("f32", "f16")
SPQR_OUTLIER_OPS = ("replace", "add")


def _str_param(rec: TensorRec, key: str, allowed: tuple[str, ...]) -> str:
    """A required msgpack-str parameter with one of ``allowed`` (exact, case-sensitive; bin is not str)."""
    v = rec.params.get(key)
    if not isinstance(v, str) or v not in allowed:
        raise RefError("BAD_PARAMS", f"params[{key!r}] = {v!r} is missing or not one of {list(allowed)}", rec.name)
    return v


def _spqr_geometry(rec: TensorRec) -> dict[str, Any]:
    """§2 params; version 2 adds the required strings ``arith`` and ``outlier_op`` (§8.2)."""
    p: dict[str, Any] = {}
    p["b"] = _int_param(rec, "bits", lambda v: 1 <= v <= 8)
    p["beta1"] = _int_param(rec, "group_size", lambda v: 1 <= v <= 65536)
    p["sb"] = _int_param(rec, "scale_bits", lambda v: 1 <= v <= 8 or v == 16)
    p["zb"] = _int_param(rec, "zero_bits", lambda v: 1 <= v <= 8 or v == 16)
    if p["sb"] < 16 or p["zb"] < 16:
        p["beta2"] = _int_param(rec, "stat_group_size", lambda v: 1 <= v <= 65536)
    else:
        p["beta2"] = 1  # "ignored" (SPEC §4.2): not read at all when both stats are 16-bit
    if rec.codec_version == 2:
        p["arith"] = _str_param(rec, "arith", SPQR_ARITH)
        p["outlier_op"] = _str_param(rec, "outlier_op", SPQR_OUTLIER_OPS)
    else:  # version 1 never reads these keys (unknown keys are ignored); §8: v1 = f32 / replace
        p["arith"], p["outlier_op"] = "f32", "replace"
    return p


def _spqr_check(rec: TensorRec) -> None:
    m, n = _matrix_tensor(rec)
    p = _spqr_geometry(rec)
    G = ceil_div(n, p["beta1"])
    K = ceil_div(m, p["beta2"])
    required = {"codes", "outlier_row_ptr", "outlier_col", "outlier_val"}
    for stat, bits in (("scale", p["sb"]), ("zero", p["zb"])):
        required |= {stat} if bits == 16 else {f"{stat}_codes", f"{stat}_scale", f"{stat}_zero"}
    _roles(rec, required, {"perm", "bias"})
    _layout(rec, "codes", ("u32",), (m, ceil_div(n * p["b"], 32)))
    for stat, bits in (("scale", p["sb"]), ("zero", p["zb"])):
        if bits == 16:
            _layout(rec, stat, ("f16",), (G, m))
        else:
            _layout(rec, f"{stat}_codes", ("u32",), (G, ceil_div(m * bits, 32)))
            _layout(rec, f"{stat}_scale", ("f16",), (G, K))
            _layout(rec, f"{stat}_zero", ("f16",), (G, K))
    _outlier_layouts(rec, m, n)
    if "perm" in rec.sections:
        _layout(rec, "perm", ("u32",), (n,))
    _bias_layout(rec, m)


def _spqr_content(rec: TensorRec, a: Arrays) -> None:
    m, n = rec.shape
    _csr_content(rec, a, m, n)
    if "perm" in a:  # every defect of a permutation, out-of-range entries included, is BAD_PERMUTATION
        perm = a["perm"].astype(np.int64)
        if perm.size and int(perm.max()) >= n:
            raise RefError("BAD_PERMUTATION", "perm entry >= n", rec.name)
        if np.unique(perm).size != n:
            raise RefError("BAD_PERMUTATION", "perm repeats an entry", rec.name)


def _rne16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to +-inf is the specified result
        return x.astype(np.float16).astype(np.float32)


def _spqr_stat(rec: TensorRec, a: Arrays, stat: str, bits: int, beta2: int, f16: bool) -> np.ndarray:
    """Step 1 (§5, §8.3): [G, m] f32 statistics; ``f16`` rounds the subtraction too (arith "f16")."""
    m = rec.shape[0]
    if bits == 16:
        return a[stat].astype(np.float32)
    c = unpack_rows(a[f"{stat}_codes"], m, bits).astype(np.float32)   # [G, m]
    k = np.arange(m) // beta2
    zz = a[f"{stat}_zero"].astype(np.float32)[:, k]
    ss = a[f"{stat}_scale"].astype(np.float32)[:, k]
    with np.errstate(all="ignore"):  # inf/NaN statistics are legal and propagate (spqr.md §6)
        t = (c - zz).astype(np.float32)
        if f16:
            t = _rne16(t)
        return _rne16((t * ss).astype(np.float32))


def _spqr_decode(rec: TensorRec, a: Arrays) -> np.ndarray:
    """§5 (version 1) and §8.3 (version 2): R = rne16 after every operation when arith is "f16"."""
    m, n = rec.shape
    p = _spqr_geometry(rec)
    f16 = p["arith"] == "f16"

    def R(x: np.ndarray) -> np.ndarray:
        return _rne16(x) if f16 else x

    S = _spqr_stat(rec, a, "scale", p["sb"], p["beta2"], f16)
    Z = _spqr_stat(rec, a, "zero", p["zb"], p["beta2"], f16)
    g = np.arange(n) // p["beta1"]
    q = unpack_rows(a["codes"], n, p["b"]).astype(np.float32)          # [m, n]
    ptr = a["outlier_row_ptr"].astype(np.int64)
    rows = np.repeat(np.arange(m), np.diff(ptr))
    cols = a["outlier_col"].astype(np.int64)
    vals = a["outlier_val"].astype(np.float32)
    with np.errstate(all="ignore"):
        t = R((q - Z.T[:, g]).astype(np.float32))
        wp = R((t * S.T[:, g]).astype(np.float32))
        if p["outlier_op"] == "add":  # one addition per position (columns strictly increase within a row)
            wp[rows, cols] = R((wp[rows, cols] + vals).astype(np.float32))
        else:
            wp[rows, cols] = vals
    if "perm" in a:
        wd = np.empty_like(wp)
        wd[:, a["perm"].astype(np.int64)] = wp
        return wd
    return wp


# squeezellm (codecs/squeezellm.md)

def _sq_check(rec: TensorRec) -> None:
    """§6: shape, dtype, bits; section set; layouts (nnz from outlier_col)."""
    m, n = _matrix_tensor(rec)
    b = _int_param(rec, "bits", lambda v: 1 <= v <= 8)
    _roles(rec, {"lut", "codes", "outlier_row_ptr", "outlier_col", "outlier_val"}, {"bias"})
    _layout(rec, "lut", ("f16",), (m, 1 << b))
    _layout(rec, "codes", ("u32",), (m, ceil_div(n * b, 32)))
    _outlier_layouts(rec, m, n)
    _bias_layout(rec, m)


def _sq_content(rec: TensorRec, a: Arrays) -> None:
    m, n = rec.shape
    _csr_content(rec, a, m, n)  # indices and LUT values are never invalid


def _sq_decode(rec: TensorRec, a: Arrays) -> np.ndarray:
    """§5: Wd[r, j] = f32(lut[r, idx(r, j)]); then Wd[r, c] += f32(val) as one f32 addition per residual."""
    m, n = rec.shape
    b = rec.params["bits"]
    idx = unpack_rows(a["codes"], n, b).astype(np.int64)                   # [m, n]
    lut = a["lut"].astype(np.float32)                                       # exact widening
    wd = np.take_along_axis(lut, idx, axis=1)
    ptr = a["outlier_row_ptr"].astype(np.int64)
    rows = np.repeat(np.arange(m), np.diff(ptr))
    cols = a["outlier_col"].astype(np.int64)
    with np.errstate(all="ignore"):  # inf + -inf -> NaN is the specified IEEE result
        wd[rows, cols] = (wd[rows, cols] + a["outlier_val"].astype(np.float32)).astype(np.float32)
    return wd


# quip (codecs/quip.md)

QUIP_CODEBOOKS = ("grid", "e8p12", "e8p12_rvq4", "e8p12_rvq3")
QUIP_E8P = ("e8p12", "e8p12_rvq4", "e8p12_rvq3")          # codes = one E8P12 code per 8 weights
QUIP_CODES2 = {"e8p12_rvq4": "u16", "e8p12_rvq3": "u8"}   # §10.11 second-stage plane
QUIP_MAX_FACTOR = 256  # MAX_FACTOR of quip.md §2: a_n, a_m <= 256


def _quip_geometry(rec: TensorRec) -> dict[str, Any]:
    """§2 (version 1) / §10.1 (version 2), in the order of §10.6 step 1 (shape and dtype checked before).

    Version 2: ``codebook``; with "e8p12" no ``bits`` key and ``n % 8 == 0`` (BAD_SHAPE); with "grid"
    ``bits`` as version 1. Then log2_hn / log2_hm in 0..30 with 2^k dividing n / m; a = dimension / 2^k.
    """
    m, n = rec.shape
    p: dict[str, Any] = {"codebook": "grid", "v2": rec.codec_version == 2}
    if p["v2"]:
        p["codebook"] = _str_param(rec, "codebook", QUIP_CODEBOOKS)
        if p["codebook"] in QUIP_E8P:
            if "bits" in rec.params:
                raise RefError("BAD_PARAMS", f"params has 'bits' although codebook is {p['codebook']!r}", rec.name)
            if n % 8:
                raise RefError("BAD_SHAPE", f"codebook {p['codebook']!r} needs n % 8 == 0, n = {n}", rec.name)
        if p["codebook"] in QUIP_CODES2:
            rho = rec.params.get("resid_scale")
            ok = isinstance(rho, float) and not math.isnan(rho) and 2.0**-16 <= rho <= 2.0**16
            if not ok or struct.unpack("<f", struct.pack("<f", rho))[0] != rho:
                raise RefError("BAD_PARAMS", f"params['resid_scale'] = {rho!r} is not a float holding a binary32 "
                               "value in [2^-16, 2^16]", rec.name)
            p["rho"] = np.float32(rho)
    if p["codebook"] == "grid":
        p["b"] = _int_param(rec, "bits", lambda v: 1 <= v <= 8)
    p["kn"] = _int_param(rec, "log2_hn", lambda v: 0 <= v <= 30)
    p["km"] = _int_param(rec, "log2_hm", lambda v: 0 <= v <= 30)
    if n % (1 << p["kn"]) or m % (1 << p["km"]):
        raise RefError("BAD_PARAMS", f"2^log2_hn must divide n={n} and 2^log2_hm must divide m={m}", rec.name)
    p["an"] = n >> p["kn"]
    p["am"] = m >> p["km"]
    if p["an"] > QUIP_MAX_FACTOR or p["am"] > QUIP_MAX_FACTOR:  # §2: bounds the factor work of the decode
        raise RefError("BAD_PARAMS", f"explicit factor sizes a_n={p['an']}, a_m={p['am']}: at most "
                       f"{QUIP_MAX_FACTOR}", rec.name)
    return p


def _quip_check(rec: TensorRec) -> None:
    """§6 / §10.6: shape, dtype, params; the section set (depends on a_n, a_m); layouts."""
    m, n = _matrix_tensor(rec)
    p = _quip_geometry(rec)
    required = {"codes", "scale", "su", "sv"}
    if p["codebook"] in QUIP_CODES2:
        required.add("codes2")
    if p["an"] > 1:
        required.add("factor_n")
    if p["am"] > 1:
        required.add("factor_m")
    _roles(rec, required, {"bias"})
    if p["codebook"] in QUIP_E8P:
        _layout(rec, "codes", ("u16",), (m, n // 8))
        if p["codebook"] in QUIP_CODES2:
            _layout(rec, "codes2", (QUIP_CODES2[p["codebook"]],), (m, n // 8))
    else:
        _layout(rec, "codes", ("u32",), (m, ceil_div(n * p["b"], 32)))
    _layout(rec, "scale", ("f32",), (m,))
    diag = ("i8", "f16", "f32") if p["v2"] else ("i8",)
    _layout(rec, "su", diag, (n,))
    _layout(rec, "sv", diag, (m,))
    if p["an"] > 1:
        _layout(rec, "factor_n", ("f32",), (p["an"], p["an"]))
    if p["am"] > 1:
        _layout(rec, "factor_m", ("f32",), (p["am"], p["am"]))
    _bias_layout(rec, m)


def _quip_content(rec: TensorRec, a: Arrays) -> None:
    """i8 sign vectors hold only 0x01 / 0xFF; real (f16/f32) diagonals of version 2 are not checked."""
    for role in ("su", "sv"):
        if rec.sections[role].dtype != "i8":
            continue
        s = a[role]
        if np.any((s != 1) & (s != -1)):
            raise RefError("BAD_VALUE", f"sign vector {role!r} holds a byte other than 0x01/0xFF", rec.name)


# §10.3: rows 0-226 of the E8P12 table follow from the construction rule; rows 227-255 are a fixed list.
E8P12_TAIL = (
    "31113333 13113333 11313333 11133333 33313311 33313131 33311331 33313113 33311313 33311133 "
    "33133311 33133131 33131331 33133113 33131313 33131133 31333311 31333131 31331331 31333113 "
    "31331313 13331133 13333311 13333131 13331331 13333113 13331313 11331333 33113331"
)
E8P12_SHA256 = "4310f9ed6450a9f87bd51399a5e549b66d43ae0800cb3f7494aa7b94aa7c0db4"


def e8p12_table() -> np.ndarray:
    """u8 [256, 8] alpha table of §10.3 (rule for rows 0-226 + the listed tail), checked against its SHA-256."""
    rows = [v for v in itertools.product((1, 3, 5), repeat=8) if sum(x * x for x in v) <= 40]
    rows += [tuple(int(ch) for ch in word) for word in E8P12_TAIL.split()]
    table = np.array(rows, dtype=np.uint8)
    if table.shape != (256, 8) or hashlib.sha256(table.tobytes()).hexdigest() != E8P12_SHA256:
        raise AssertionError("E8P12 table does not match the digest of quip.md §10.3")
    return table


_E8P12 = e8p12_table()
_E8P12_ODD = ((_E8P12.astype(np.int64).sum(axis=1) // 2) % 2).astype(np.int64)   # odd[a]
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def e8p12_points(codes: np.ndarray) -> np.ndarray:
    """§10.4: int64 [..., 8] odd integers t (the lattice point is t / 4) of 16-bit codes."""
    c = codes.astype(np.int64)
    a = c >> 8
    s = c & 0xFF
    p = _POPCOUNT[s] % 2
    s2 = s ^ p
    alpha = _E8P12.astype(np.int64)[a]                      # [..., 8]
    t = np.empty(c.shape + (8,), dtype=np.int64)
    for i in range(8):
        beta = (i >> 1) | ((i & 1) << 2)
        neg = (s2 >> beta) & 1
        if i == 7:
            neg = neg ^ _E8P12_ODD[a]
        t[..., i] = np.where(neg == 1, -2 * alpha[..., i], 2 * alpha[..., i]) + np.where(p == 1, -1, 1)
    return t


# §10.11: the E81B table, rule-built (origin and roots of E8, then +-2 e_i) and digest-checked.
E81B_SHA256 = "37ce1a66345c1bbc51427c9e13e355558727bc02828e09f751b4d46fd7f816ec"


def e81b_table() -> np.ndarray:
    """i8 [256, 8] of w = 2x: integer then half-integer E8 points with x.x <= 2 (lexicographic), then +-2 e_i.

    §10.11 ranges x over {-4, ..., 3}^8 (8^8 candidates); a coordinate outside {-1, 0, 1} (integer x) or
    {-1/2, 1/2} (half-integer x) already gives x.x > 2, so the products over those values, in the same
    increasing order, list the same rows in the same order (3^8 + 2^8 candidates).
    """
    pts: list[tuple[int, ...]] = []
    for values in ((-1.0, 0.0, 1.0), (-0.5, 0.5)):
        for x in itertools.product(values, repeat=8):
            if sum(x) % 2 == 0 and sum(c * c for c in x) <= 2:
                pts.append(tuple(int(2 * c) for c in x))
    eye = np.eye(8, dtype=np.int64) * 4
    table = np.concatenate([np.array(pts, dtype=np.int64), eye, -eye[:7]]).astype(np.int8)
    if table.shape != (256, 8) or hashlib.sha256(table.tobytes()).hexdigest() != E81B_SHA256:
        raise AssertionError("E81B table does not match the digest of quip.md §10.11")
    return table


_E81B = e81b_table()


def quip_c(k: int) -> np.float32:
    """§5.2(b): c_k = 2^(-k/2) rounded to binary32, built from its bit pattern."""
    bits = 0x3F800000 - (k // 2) * 0x00800000 if k % 2 == 0 else 0x3F3504F3 - ((k - 1) // 2) * 0x00800000
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


def quip_transform(x: np.ndarray, k: int, F: np.ndarray | None) -> np.ndarray:
    """§5.2 T(k, F) applied to every row of ``x`` ([vectors, d], f32; d = a * 2^k), one f32 op at a time."""
    h = 1 << k
    a = x.shape[1] // h
    y = x.reshape(x.shape[0], a, h).copy()        # [vector, alpha, beta]
    with np.errstate(all="ignore"):
        for s in range(k):                         # (a) stages half = 1, 2, 4, ...
            half = 1 << s
            blocks = y.reshape(x.shape[0], a, h // (2 * half), 2, half)
            u = blocks[:, :, :, 0, :].copy()       # beta with bit s clear
            v = blocks[:, :, :, 1, :].copy()       # beta + half
            blocks[:, :, :, 0, :] = u + v
            blocks[:, :, :, 1, :] = u - v
        if k > 0:                                  # (b) one multiply by c_k
            y = (y * quip_c(k)).astype(np.float32)
        if a > 1:                                  # (c) y[alpha] = sum_alpha' F[alpha, alpha'] * x[alpha'], in order
            Fm = F.astype(np.float32)
            out = np.empty_like(y)
            for al in range(a):
                acc = (Fm[al, 0] * y[:, 0, :]).astype(np.float32)
                for ap in range(1, a):
                    acc = (acc + (Fm[al, ap] * y[:, ap, :]).astype(np.float32)).astype(np.float32)
                out[:, al, :] = acc
            y = out
    return y.reshape(x.shape)


def _quip_decode(rec: TensorRec, a: Arrays) -> np.ndarray:
    """§5.3 / §10.5: values X, T along n for every row, T along m for every column, then the diagonals."""
    m, n = rec.shape
    p = _quip_geometry(rec)
    scale = a["scale"].astype(np.float32)[:, None]
    with np.errstate(all="ignore"):
        if p["codebook"] == "e8p12":
            t = e8p12_points(a["codes"]).reshape(m, n)                        # X[r, 8g + i] = t_i of codes[r, g]
            e = (t.astype(np.float32) * np.float32(0.25)).astype(np.float32)  # exact t / 4
            X = (e * scale).astype(np.float32)
        elif p["codebook"] in QUIP_CODES2:                                     # §10.11: e0 + e1 / rho, times scale
            e0 = (e8p12_points(a["codes"]).reshape(m, n).astype(np.float32) * np.float32(0.25)).astype(np.float32)
            if p["codebook"] == "e8p12_rvq4":
                u, q = e8p12_points(a["codes2"]).reshape(m, n), np.float32(0.25)
            else:
                u, q = _E81B.astype(np.int64)[a["codes2"].astype(np.int64)].reshape(m, n), np.float32(0.5)
            e1 = (u.astype(np.float32) * q).astype(np.float32)
            d = (e1 / p["rho"]).astype(np.float32)                             # IEEE f32 division
            X = ((e0 + d).astype(np.float32) * scale).astype(np.float32)
        else:
            L = (1 << p["b"]) - 1
            q = unpack_rows(a["codes"], n, p["b"]).astype(np.int64)
            X = ((2 * q - L).astype(np.float32) * scale).astype(np.float32)
        X = quip_transform(X, p["kn"], a.get("factor_n"))
        X = quip_transform(X.T, p["km"], a.get("factor_m")).T
        if p["v2"]:  # two multiplies, sv first: (X * sv[r]) * su[c]; f32() of i8 and f16 is exact
            X = (X * a["sv"].astype(np.float32)[:, None]).astype(np.float32)
            return np.ascontiguousarray((X * a["su"].astype(np.float32)[None, :]).astype(np.float32))
        sign = (a["sv"].astype(np.int64)[:, None] * a["su"].astype(np.int64)[None, :]).astype(np.float32)
        return np.ascontiguousarray((X * sign).astype(np.float32))


CODECS: dict[str, Codec] = {
    "raw": Codec(frozenset({1}), _raw_check, _raw_content, _raw_decode),
    "spqr": Codec(frozenset({1, 2}), _spqr_check, _spqr_content, _spqr_decode),
    "squeezellm": Codec(frozenset({1}), _sq_check, _sq_content, _sq_decode),
    "quip": Codec(frozenset({1, 2}), _quip_check, _quip_content, _quip_decode),
}


# ---------------------------------------------------------------- file

class RefFile:
    """An opened file: preamble + header checked, tensors listed, decode on demand."""

    def __init__(self, buf: bytes | memoryview, *, verify_checksums: bool = True) -> None:
        self.buf = memoryview(buf)
        self.verify_checksums = verify_checksums
        size = len(self.buf)
        if size < PREAMBLE:
            raise RefError("TRUNCATED", f"{size} bytes < 32-byte preamble")
        magic, major, minor, hcrc, hlen, dlen = struct.unpack("<8sHHIQQ", self.buf[:PREAMBLE])
        if magic != MAGIC:
            raise RefError("BAD_MAGIC", f"magic {magic!r}")
        if major != 1:
            raise RefError("UNSUPPORTED_VERSION", f"major version {major}")
        if hlen == 0 or hlen > MAX_HEADER_LENGTH:
            raise RefError("HEADER_TOO_LARGE", f"header_length {hlen}")
        self.data_start = align64(PREAMBLE + hlen)
        end = self.data_start + dlen
        if size < end:
            raise RefError("TRUNCATED", f"file has {size} bytes, preamble says {end}")
        if size > end:
            raise RefError("TRAILING_DATA", f"file has {size} bytes, preamble says {end}")
        header = bytes(self.buf[PREAMBLE:PREAMBLE + hlen])
        if zlib.crc32(header) != hcrc:
            raise RefError("HEADER_CHECKSUM", "header CRC-32 mismatch")
        self.version = (major, minor)
        self.data_length = dlen
        self.header = parse_msgpack(header)
        recs, self.metadata = parse_records(self.header, dlen)
        self.tensors: dict[str, TensorRec] = {r.name: r for r in recs}

    def _section(self, s: Section) -> np.ndarray:
        start = self.data_start + s.offset
        raw = self.buf[start:start + s.length]
        return np.frombuffer(raw, dtype=DTYPES[s.dtype]).reshape(s.shape)

    def arrays(self, name: str) -> Arrays:
        """Checked section arrays of one tensor (every rule of its codec, CRCs included)."""
        rec = self.tensors[name]
        codec = CODECS.get(rec.codec)
        if codec is None:
            raise RefError("UNKNOWN_CODEC", f"codec {rec.codec!r}", name)
        if rec.codec_version not in codec.versions:
            raise RefError("UNSUPPORTED_CODEC_VERSION", f"{rec.codec} version {rec.codec_version}", name)
        codec.check(rec)
        if self.verify_checksums:
            for s in rec.sections.values():
                start = self.data_start + s.offset
                if zlib.crc32(self.buf[start:start + s.length]) != s.crc32:
                    raise RefError("SECTION_CHECKSUM", f"section {s.role!r} CRC-32 mismatch", name)
        arrays = {role: self._section(s) for role, s in rec.sections.items()}
        codec.check_content(rec, arrays)
        return arrays

    def check(self, name: str) -> None:
        self.arrays(name)

    def decode(self, name: str) -> np.ndarray:
        """The spec's decoded tensor: f32 for quantized codecs, own dtype for raw (bf16 as uint16 bits)."""
        rec = self.tensors[name]
        arrays = self.arrays(name)
        return CODECS[rec.codec].decode(rec, arrays)

    def bias(self, name: str) -> np.ndarray | None:
        """Optional layer bias, widened exactly to f32."""
        rec = self.tensors[name]
        arrays = self.arrays(name)
        if "bias" not in arrays:
            return None
        b = arrays["bias"]
        if rec.sections["bias"].dtype == "bf16":
            return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return b.astype(np.float32)


def _open_single(path: str | os.PathLike[str], *, verify_checksums: bool = True) -> RefFile:
    """One .spqr file from disk (memory-mapped when non-empty)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return RefFile(b"", verify_checksums=verify_checksums)
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return RefFile(mm, verify_checksums=verify_checksums)


# ---------------------------------------------------------------- split sets (SPEC §12)

SPLIT_FORMAT = "spqrfmt-split"
INDEX_SUFFIX = ".spqr.index.json"
MAX_INDEX_BYTES = 64 * 1024 * 1024
MAX_PARTS = 99999
FIRST_PART = re.compile(r"(.+)-00001-of-([0-9]{5})\.spqr")


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("an object repeats a key")
    return out


def read_split_index(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The index's part entries and tensor map, every §12 structure rule checked (BAD_SPLIT)."""
    try:
        st = os.stat(path)
    except OSError:
        raise RefError("BAD_SPLIT", "the index is missing") from None
    if not S_ISREG(st.st_mode):
        raise RefError("BAD_SPLIT", "the index is not a regular file")
    if st.st_size > MAX_INDEX_BYTES:
        raise RefError("BAD_SPLIT", f"the index has {st.st_size} bytes")
    with open(path, "rb") as fh:
        raw = fh.read(MAX_INDEX_BYTES + 1)
    try:  # strict JSON: no NaN/Infinity, no repeated key (the parsers of other languages disagree on both)
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RefError("BAD_SPLIT", f"the index is not UTF-8 JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise RefError("BAD_SPLIT", "the index is not an object with format spqrfmt-split")
    if not _is_int(doc.get("version")) or doc["version"] != 1:
        raise RefError("BAD_SPLIT", f"index version {doc.get('version')!r}")
    parts, tensors = doc.get("parts"), doc.get("tensors")
    if not isinstance(parts, list) or not 1 <= len(parts) <= MAX_PARTS:
        raise RefError("BAD_SPLIT", "parts is not an array of 1..99999 entries")
    if not isinstance(tensors, dict):
        raise RefError("BAD_SPLIT", "tensors is not an object")
    files = set()
    for e in parts:
        if not isinstance(e, dict):
            raise RefError("BAD_SPLIT", "a part entry is not an object")
        f = e.get("file")
        if not isinstance(f, str) or f in ("", ".", "..") or any(c in f for c in "/\\\0"):
            raise RefError("BAD_SPLIT", f"part file {f!r} is not a plain file name")
        if f in files:
            raise RefError("BAD_SPLIT", f"part {f!r} is listed twice")
        files.add(f)
        if not isinstance(e.get("sha256"), str) or re.fullmatch("[0-9a-f]{64}", e["sha256"]) is None:
            raise RefError("BAD_SPLIT", f"part {f!r}: sha256 is not 64 lowercase hex digits")
        if not _is_int(e.get("bytes")) or e["bytes"] < 0:
            raise RefError("BAD_SPLIT", f"part {f!r}: bytes is not a non-negative integer")
    for name, k in tensors.items():
        if not _is_int(k) or not 0 <= k < len(parts):
            raise RefError("BAD_SPLIT", f"part index {k!r} out of range", name)
    return parts, tensors


class RefSet:
    """An opened split set (SPEC §12): every check of its reject table, in the table's order, then the
    parts' tensors served as one file's (``tensors``, ``decode``, ``bias`` as on :class:`RefFile`)."""

    def __init__(self, index: str | os.PathLike[str], *, verify_checksums: bool = True) -> None:
        entries, where = read_split_index(index)
        paths = [os.path.join(os.path.dirname(os.fspath(index)), e["file"]) for e in entries]
        for e, path in zip(entries, paths, strict=True):      # row 2: every part there, a regular file
            try:
                mode = os.stat(path).st_mode
            except OSError:
                raise RefError("BAD_SPLIT", f"part {e['file']!r} is missing") from None
            if not S_ISREG(mode):
                raise RefError("BAD_SPLIT", f"part {e['file']!r} is not a regular file")
        for e, path in zip(entries, paths, strict=True):      # row 3: size and SHA-256, before any part is parsed
            h, size = hashlib.sha256(), 0
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
            if size != e["bytes"] or h.hexdigest() != e["sha256"]:
                raise RefError("BAD_SPLIT", f"part {e['file']!r}: size or SHA-256 differs from the index")
        self.parts = [_open_single(p, verify_checksums=verify_checksums) for p in paths]  # row 4: §10 stages 1-4
        self.owner: dict[str, int] = {}
        for i, f in enumerate(self.parts):       # row 5: each tensor in one part
            for name in f.tensors:
                if name in self.owner:
                    raise RefError("DUPLICATE_NAME", "tensor in two parts", name)
                self.owner[name] = i
        for name, i in self.owner.items():       # row 6: the parts hold exactly the index's tensors, where it says
            if where.get(name) != i:
                raise RefError("BAD_SPLIT", f"held by part {i}, the index says {where.get(name)!r}", name)
        for name in where:
            if name not in self.owner:
                raise RefError("BAD_SPLIT", "listed by the index, held by no part", name)
        self.tensors: dict[str, TensorRec] = {n: r for f in self.parts for n, r in f.tensors.items()}
        self.metadata = self.parts[0].metadata

    def check(self, name: str) -> None:
        self.parts[self.owner[name]].check(name)

    def decode(self, name: str) -> np.ndarray:
        return self.parts[self.owner[name]].decode(name)

    def bias(self, name: str) -> np.ndarray | None:
        return self.parts[self.owner[name]].bias(name)


def open_file(path: str | os.PathLike[str], *, verify_checksums: bool = True) -> RefFile | RefSet:
    """Open a file from disk, or a split set given its index or its first part (``NAME-00001-of-N.spqr``,
    N > 1, whose index ``NAME.spqr.index.json`` is beside it); any other part opens as the file it is."""
    name = os.path.basename(os.fspath(path))
    if name.endswith(INDEX_SUFFIX):
        return RefSet(path, verify_checksums=verify_checksums)
    m = FIRST_PART.fullmatch(name)
    if m is not None and m[2] != "00001":
        index = os.path.join(os.path.dirname(os.fspath(path)), m[1] + INDEX_SUFFIX)
        return RefSet(index, verify_checksums=verify_checksums)
    return _open_single(path, verify_checksums=verify_checksums)


def decode_all(path: str | os.PathLike[str]) -> dict[str, np.ndarray | RefError]:
    """Open (file-level errors raise) and decode every tensor; per-tensor errors come back as values."""
    f = open_file(path)
    out: dict[str, np.ndarray | RefError] = {}
    for name in f.tensors:
        try:
            out[name] = f.decode(name)
        except RefError as e:
            out[name] = e
    return out
