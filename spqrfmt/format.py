"""Constants, preamble and msgpack header encoding of spec/SPEC.md §2–§3.

Everything here works on bytes only; the reader and writer build on it.
"""

from __future__ import annotations

import gc
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import ErrorCode, fail

MAGIC = b"SPQRFMT\x00"
MAJOR = 1
MINOR = 0
PREAMBLE_SIZE = 32
ALIGNMENT = 64

MAX_HEADER_LENGTH = 64 * 1024 * 1024
MAX_TENSORS = 1 << 20
MAX_NAME_BYTES = 1024
MAX_NDIM = 8
MAX_ELEMENTS = 1 << 40
MAX_NESTING = 32
MAX_CONTAINER_LEN = 1 << 24

_PREAMBLE = struct.Struct("<8sHHIQQ")


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative ints: groups, packed words, blocks (the one copy in the package)."""
    return (a + b - 1) // b


def align64(x: int) -> int:
    return (x + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


def crc32(data: bytes | memoryview) -> int:
    """CRC-32 (ISO-HDLC, zlib's) as an unsigned int."""
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Preamble:
    major: int
    minor: int
    header_crc: int
    header_length: int
    data_length: int

    @property
    def data_offset(self) -> int:
        return align64(PREAMBLE_SIZE + self.header_length)

    @property
    def file_size(self) -> int:
        return self.data_offset + self.data_length


def pack_preamble(p: Preamble) -> bytes:
    return _PREAMBLE.pack(MAGIC, p.major, p.minor, p.header_crc, p.header_length, p.data_length)


def read_preamble(raw: bytes | memoryview, file_size: int, max_header_length: int = MAX_HEADER_LENGTH) -> Preamble:
    """Parse and bound-check the 32-byte preamble against the real file size.

    Done before anything else is read so that no length field from the file
    can drive an allocation or a read past the end.
    """
    if file_size < PREAMBLE_SIZE or len(raw) < PREAMBLE_SIZE:
        raise fail(ErrorCode.TRUNCATED, f"file has {file_size} bytes, the preamble alone needs {PREAMBLE_SIZE}")
    magic, major, minor, hcrc, hlen, dlen = _PREAMBLE.unpack(bytes(raw[:PREAMBLE_SIZE]))
    if magic != MAGIC:
        raise fail(ErrorCode.BAD_MAGIC, f"first 8 bytes are {magic!r}, expected {MAGIC!r}: not a .spqr file")
    if major != MAJOR:
        raise fail(
            ErrorCode.UNSUPPORTED_VERSION,
            f"format version {major}.{minor}; this reader implements major version {MAJOR} "
            "(upgrade spqrfmt to read it)",
        )
    if hlen == 0 or hlen > max_header_length:
        raise fail(ErrorCode.HEADER_TOO_LARGE, f"header_length {hlen} outside 1..{max_header_length}")
    p = Preamble(major, minor, hcrc, hlen, dlen)
    if file_size < p.file_size:
        raise fail(ErrorCode.TRUNCATED, f"file has {file_size} bytes, header declares {p.file_size}")
    if file_size > p.file_size:
        raise fail(ErrorCode.TRAILING_DATA, f"file has {file_size} bytes, header declares {p.file_size}")
    return p


class _Ext(Exception):
    pass


def _no_ext(code: int, data: bytes) -> Any:
    raise _Ext(f"msgpack ext type {code} is not allowed")


# Reader-specific limit (SPEC §2.2, §10 "Memory"): containers are the costliest header bytes for a reader
# that builds Python objects (~136 bytes of memory for a 1-byte empty map), so their count is bounded by
# the header's size. Legitimate headers have one container per ~25 bytes or more.
CONTAINER_BUDGET_BASE = 4096
HEADER_BYTES_PER_CONTAINER = 8


def container_budget(header_length: int) -> int:
    """How many arrays + maps this reader builds for a header of ``header_length`` bytes (LIMIT_EXCEEDED beyond)."""
    return CONTAINER_BUDGET_BASE + header_length // HEADER_BYTES_PER_CONTAINER


class _Budget(Exception):
    pass


class _Hooks:
    """msgpack hooks: str keys without duplicates (SPEC §3) and a running count of containers."""

    def __init__(self, budget: int) -> None:
        self.left = budget

    def _spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _Budget

    def pairs(self, pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        self._spend()
        out: dict[str, Any] = {}
        for k, v in pairs:
            if not isinstance(k, str):
                raise _Ext(f"map key {k!r} is not a string")
            if k in out:
                raise _Ext(f"duplicate map key {k!r}")
            out[k] = v
        return out

    def array(self, items: list[Any]) -> list[Any]:
        self._spend()
        return items


_EXT_TYPES = frozenset({msgpack.Timestamp, msgpack.ExtType})


def _check_depth(obj: Any) -> None:
    """Iterative walk: nesting bound, and no Timestamp objects (ext -1, which msgpack decodes itself).

    Only containers are stacked, and each container's element types are collected at C speed
    (``set(map(type, ...))``), so a header of millions of scalars costs no Python-level loop over them.
    """
    if type(obj) in _EXT_TYPES:
        raise _Ext("msgpack ext types (timestamps included) are not allowed")
    stack = [(obj, 1)] if type(obj) in (dict, list) else []
    while stack:
        cur, depth = stack.pop()
        if depth > MAX_NESTING:
            raise _Ext(f"containers nested deeper than {MAX_NESTING}")
        items = cur.values() if type(cur) is dict else cur
        kinds = set(map(type, items))
        if not kinds.isdisjoint(_EXT_TYPES):
            raise _Ext("msgpack ext types (timestamps included) are not allowed")
        if dict in kinds or list in kinds:
            if depth + 1 > MAX_NESTING:
                raise _Ext(f"containers nested deeper than {MAX_NESTING}")
            # empty children add a level (checked above) but nothing below it: not stacked
            stack.extend([(v, depth + 1) for v in items if (type(v) is dict or type(v) is list) and v])


def unpack_header(data: bytes | memoryview) -> dict[str, Any]:
    """Decode the msgpack header under the spec's encoding restrictions and this reader's container budget.

    Raises BAD_HEADER for a §3 violation, LIMIT_EXCEEDED past :func:`container_budget` or when the
    parse runs out of memory (a MemoryError never escapes).
    """
    n = len(data)
    hooks = _Hooks(container_budget(n))
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of fresh containers would trigger full collections over and over (minutes)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_pairs_hook=hooks.pairs,
            list_hook=hooks.array,
            ext_hook=_no_ext,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
        _check_depth(obj)
    except _Budget:
        raise fail(ErrorCode.LIMIT_EXCEEDED,
                   f"header holds more than {container_budget(n)} arrays and maps, this reader's limit for "
                   f"{n} header bytes (4096 + 1 per {HEADER_BYTES_PER_CONTAINER} bytes)") from None
    except MemoryError:
        raise fail(ErrorCode.LIMIT_EXCEEDED, f"not enough memory to parse a header of {n} bytes; "
                   "open it with a lower max_header_length or on a machine with more memory") from None
    except (_Ext, ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            UnicodeDecodeError, RecursionError) as e:
        raise fail(ErrorCode.BAD_HEADER, f"header is not valid restricted msgpack: {e}") from None
    finally:
        if gc_was_enabled:
            gc.enable()
    if not isinstance(obj, dict):
        raise fail(ErrorCode.BAD_HEADER, f"header must be a msgpack map, got {type(obj).__name__}")
    return obj


def pack_header(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)
