"""Typed tensor/section records parsed from the header, with the generic checks of spec/SPEC.md §4.

These checks involve no codec knowledge: names, dtypes, shapes, and where
each section lies in the data section. After :func:`parse_records` returns,
every section is known to lie inside the file, aligned, non-overlapping and
with a length that matches its shape, so slicing it out of the map is safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .dtypes import ITEMSIZE
from .errors import ErrorCode, fail
from .format import ALIGNMENT, MAX_ELEMENTS, MAX_NAME_BYTES, MAX_NDIM, MAX_TENSORS


@dataclass(frozen=True)
class SectionRecord:
    dtype: str
    shape: tuple[int, ...]
    offset: int
    length: int
    crc32: int

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class TensorRecord:
    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: str
    codec_version: int
    params: dict[str, Any]
    sections: dict[str, SectionRecord] = field(default_factory=dict)

    def to_header(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "codec": self.codec,
            "codec_version": self.codec_version,
            "params": self.params,
            "sections": {
                role: {"dtype": s.dtype, "shape": list(s.shape), "offset": s.offset, "length": s.length,
                       "crc32": s.crc32}
                for role, s in self.sections.items()
            },
        }


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_shape(shape: Any, what: str, tensor: str | None) -> tuple[int, ...]:
    """SPEC §4 shape rule: ints >= 0, at most MAX_NDIM of them, product of the non-zero entries <= MAX_ELEMENTS.

    Zero entries are left out of the bound so that the verdict does not depend on the entries' order
    (``[2**63, 0]`` and ``[0, 2**63]`` are both SHAPE_OVERFLOW) and every accepted shape, empty ones
    included, is one numpy (whose sizes are int64) can hold.
    """
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise fail(ErrorCode.BAD_SHAPE, f"{what} shape must be an array of integers, got {shape!r}", tensor)
    if len(shape) > MAX_NDIM:
        raise fail(ErrorCode.BAD_SHAPE, f"{what} shape has {len(shape)} dims, at most {MAX_NDIM} allowed", tensor)
    if any(d < 0 for d in shape):
        raise fail(ErrorCode.BAD_SHAPE, f"{what} shape {shape} has a negative dimension", tensor)
    n = 1
    for d in shape:
        n *= d or 1
        if n > MAX_ELEMENTS:
            raise fail(ErrorCode.SHAPE_OVERFLOW,
                       f"{what} shape {shape}: the product of its non-zero dims exceeds 2^40", tensor)
    return tuple(shape)


def check_name(name: str, what: str) -> None:
    """SPEC §4 name rule (BAD_NAME): 1..MAX_NAME_BYTES UTF-8 bytes, no NUL."""
    try:
        nbytes = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (only reachable from Python callers, never from a file)
        raise fail(ErrorCode.BAD_NAME, f"{what} name is not valid Unicode text") from None
    if not 1 <= nbytes <= MAX_NAME_BYTES or "\x00" in name:
        raise fail(ErrorCode.BAD_NAME, f"{what} name must be 1..{MAX_NAME_BYTES} UTF-8 bytes without NUL "
                   f"(has {nbytes} bytes)")


def _check_dtype(dtype: Any, what: str, tensor: str | None) -> str:
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        raise fail(ErrorCode.BAD_DTYPE, f"{what} dtype {dtype!r} is not one of {sorted(ITEMSIZE)}", tensor)
    return dtype


def _require(rec: dict[str, Any], key: str, types: type | tuple[type, ...], tensor: str | None) -> Any:
    if key not in rec:
        raise fail(ErrorCode.BAD_HEADER, f"record lacks required key {key!r}", tensor)
    v = rec[key]
    if not isinstance(v, types) or (types is int and isinstance(v, bool)):
        raise fail(ErrorCode.BAD_HEADER, f"key {key!r} has type {type(v).__name__}", tensor)
    return v


def _parse_section(role: str, s: Any, data_length: int, tensor: str) -> SectionRecord:
    if not isinstance(s, dict):
        raise fail(ErrorCode.BAD_HEADER, f"section {role!r} is not a map", tensor)
    dtype = _check_dtype(_require(s, "dtype", str, tensor), f"section {role!r}", tensor)
    shape = check_shape(_require(s, "shape", list, tensor), f"section {role!r}", tensor)
    offset = _require(s, "offset", int, tensor)
    length = _require(s, "length", int, tensor)
    crc = _require(s, "crc32", int, tensor)
    if not 0 <= crc < 2**32:
        raise fail(ErrorCode.BAD_HEADER, f"section {role!r} crc32 {crc} is not a u32", tensor)
    n = 1
    for d in shape:
        n *= d
    if length != n * ITEMSIZE[dtype]:
        raise fail(
            ErrorCode.SECTION_LENGTH_MISMATCH,
            f"section {role!r} length {length} != {n} x {ITEMSIZE[dtype]} bytes ({dtype}{list(shape)})",
            tensor,
        )
    if offset % ALIGNMENT != 0:
        raise fail(ErrorCode.SECTION_MISALIGNED, f"section {role!r} offset {offset} is not a multiple of 64", tensor)
    if offset < 0 or offset + length > data_length:
        raise fail(
            ErrorCode.SECTION_OUT_OF_BOUNDS,
            f"section {role!r} [{offset}, {offset + length}) exceeds the data section of {data_length} bytes",
            tensor,
        )
    return SectionRecord(dtype, shape, offset, length, crc)


def parse_records(header: dict[str, Any], data_length: int) -> tuple[list[TensorRecord], dict[str, Any]]:
    """Generic header validation (spec §3–§4; §10 stage 4). Returns (records, metadata).

    Wrong types follow spec §3.1: a missing or wrong-typed required key is
    BAD_HEADER (msgpack bool/float are never ints), except ``metadata`` that
    is not a map (BAD_METADATA) and non-int shape entries (BAD_SHAPE);
    ``codec_version`` < 1 is BAD_HEADER, not a future version.
    """
    if "tensors" not in header or "metadata" not in header:
        raise fail(ErrorCode.BAD_HEADER, "header must contain 'tensors' and 'metadata'")
    tensors = header["tensors"]
    if not isinstance(tensors, list):
        raise fail(ErrorCode.BAD_HEADER, "'tensors' must be an array")
    metadata = header["metadata"]
    if not isinstance(metadata, dict):
        raise fail(ErrorCode.BAD_METADATA, "'metadata' must be a map with string keys")
    if len(tensors) > MAX_TENSORS:
        raise fail(ErrorCode.LIMIT_EXCEEDED, f"{len(tensors)} tensors, at most {MAX_TENSORS} allowed")

    records: list[TensorRecord] = []
    names: set[str] = set()
    for i, rec in enumerate(tensors):
        if not isinstance(rec, dict):
            raise fail(ErrorCode.BAD_HEADER, f"tensor record #{i} is not a map")
        name = _require(rec, "name", str, f"#{i}")
        check_name(name, f"tensor #{i}")
        if name in names:
            raise fail(ErrorCode.DUPLICATE_NAME, f"tensor name {name!r} appears twice", name)
        names.add(name)
        shape = check_shape(_require(rec, "shape", list, name), "tensor", name)
        dtype = _check_dtype(_require(rec, "dtype", str, name), "tensor", name)
        codec = _require(rec, "codec", str, name)
        version = _require(rec, "codec_version", int, name)
        if version < 1:
            raise fail(ErrorCode.BAD_HEADER, f"codec_version {version} must be >= 1", name)
        params = _require(rec, "params", dict, name)
        sections = _require(rec, "sections", dict, name)
        parsed = {role: _parse_section(role, s, data_length, name) for role, s in sections.items()}
        records.append(TensorRecord(name, shape, dtype, codec, version, params, parsed))

    _check_overlaps(records)
    return records, metadata


def _check_overlaps(records: list[TensorRecord]) -> None:
    spans = sorted(
        (s.offset, s.offset + s.length, r.name, role)
        for r in records
        for role, s in r.sections.items()
        if s.length > 0
    )
    for (a0, a1, an, ar), (b0, _b1, bn, br) in zip(spans, spans[1:], strict=False):
        if b0 < a1:
            raise fail(
                ErrorCode.SECTION_OVERLAP,
                f"section {an}/{ar} [{a0}, {a1}) overlaps section {bn}/{br} starting at {b0}",
                bn,
            )
