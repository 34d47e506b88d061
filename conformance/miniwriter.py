"""Minimal byte-level `.spqr` writer for building conformance vectors.

Why not the library's Writer: golden vectors must not inherit the library's
habits (section order, minimal padding, canonical msgpack), and invalid
vectors need fields the real writer refuses to produce. This module lays
bytes out exactly as told, including unusual-but-legal layouts (reverse
section order, gaps, maximal padding, zero-length sections anywhere,
unknown keys) and every kind of defect. It carries its own msgpack encoder
so it can emit duplicate keys, ext types, invalid UTF-8 and wide integer
encodings. Depends on numpy/stdlib only.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"SPQRFMT\x00"


# ---------------------------------------------------------------- msgpack encoder

@dataclass(frozen=True)
class Ext:
    """A msgpack ext object (forbidden in headers: for invalid vectors)."""

    code: int
    data: bytes


@dataclass(frozen=True)
class Raw:
    """Bytes inserted verbatim into the msgpack stream."""

    data: bytes


@dataclass(frozen=True)
class Wide:
    """An int forced into a given msgpack encoding: 'u8'..'u64', 'i8'..'i64' (legal, just not minimal)."""

    value: int
    fmt: str


@dataclass(frozen=True)
class F32:
    """A float encoded as msgpack float32."""

    value: float


@dataclass(frozen=True)
class BadStr:
    """A msgpack str whose payload bytes are given (e.g. invalid UTF-8)."""

    data: bytes


@dataclass
class Pairs:
    """A map given as (key, value) pairs: allows duplicate and non-str keys."""

    items: list[tuple[Any, Any]]


_WIDE = {"u8": (0xCC, ">B"), "u16": (0xCD, ">H"), "u32": (0xCE, ">I"), "u64": (0xCF, ">Q"),
         "i8": (0xD0, ">b"), "i16": (0xD1, ">h"), "i32": (0xD2, ">i"), "i64": (0xD3, ">q")}


def _len_prefix(n: int, fix_base: int, fix_max: int, b16: int, b32: int, b8: int | None = None) -> bytes:
    if n <= fix_max:
        return bytes([fix_base | n])
    if b8 is not None and n < 256:
        return bytes([b8, n])
    if n < 65536:
        return bytes([b16]) + struct.pack(">H", n)
    return bytes([b32]) + struct.pack(">I", n)


def packb(obj: Any) -> bytes:
    """Encode ``obj`` as msgpack (minimal encodings unless a wrapper says otherwise)."""
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(obj: Any, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, Raw):
        out += obj.data
    elif isinstance(obj, Wide):
        tag, fmt = _WIDE[obj.fmt]
        out.append(tag)
        out += struct.pack(fmt, obj.value)
    elif isinstance(obj, int):
        if 0 <= obj <= 0x7F or -32 <= obj < 0:
            out += struct.pack(">b" if obj < 0 else ">B", obj)
        elif obj > 0:
            for fmt in ("u8", "u16", "u32", "u64"):
                if obj < 1 << (8 * struct.calcsize(_WIDE[fmt][1])):
                    return _pack(Wide(obj, fmt), out)
            raise OverflowError(obj)
        else:
            for fmt in ("i8", "i16", "i32", "i64"):
                if obj >= -(1 << (8 * struct.calcsize(_WIDE[fmt][1]) - 1)):
                    return _pack(Wide(obj, fmt), out)
            raise OverflowError(obj)
    elif isinstance(obj, F32):
        out.append(0xCA)
        out += struct.pack(">f", obj.value)
    elif isinstance(obj, float):
        out.append(0xCB)
        out += struct.pack(">d", obj)
    elif isinstance(obj, (str, BadStr)):
        data = obj.data if isinstance(obj, BadStr) else obj.encode("utf-8")
        out += _len_prefix(len(data), 0xA0, 31, 0xDA, 0xDB, 0xD9)
        out += data
    elif isinstance(obj, (bytes, bytearray)):
        n = len(obj)
        out += bytes([0xC4, n]) if n < 256 else (bytes([0xC5]) + struct.pack(">H", n) if n < 65536
                                                 else bytes([0xC6]) + struct.pack(">I", n))
        out += obj
    elif isinstance(obj, Ext):
        n = len(obj.data)
        fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
        if n in fixed:
            out.append(fixed[n])
        elif n < 256:
            out += bytes([0xC7, n])
        else:
            out += bytes([0xC8]) + struct.pack(">H", n)
        out += struct.pack(">b", obj.code) + obj.data
    elif isinstance(obj, (list, tuple)):
        out += _len_prefix(len(obj), 0x90, 15, 0xDC, 0xDD)
        for x in obj:
            _pack(x, out)
    elif isinstance(obj, (dict, Pairs)):
        items = obj.items if isinstance(obj, Pairs) else list(obj.items())
        out += _len_prefix(len(items), 0x80, 15, 0xDE, 0xDF)
        for k, v in items:
            _pack(k, out)
            _pack(v, out)
    else:
        raise TypeError(f"cannot msgpack {type(obj).__name__}")


# ---------------------------------------------------------------- file model

def align64(x: int) -> int:
    return (x + 63) & ~63


@dataclass
class Sec:
    """One section: its role, declared dtype/shape, and payload bytes.

    ``set`` overrides record fields after layout (e.g. a wrong offset),
    ``drop`` removes record keys, ``extra`` adds unknown keys.
    """

    role: str
    dtype: str
    shape: list[int]
    data: bytes
    set: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tens:
    """One tensor record plus its sections (same override hooks as :class:`Sec`)."""

    name: Any
    shape: Any
    dtype: Any
    codec: Any
    params: Any
    sections: list[Sec]
    codec_version: Any = 1
    set: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Layout:
    """How to place bytes; defaults give a canonical, writer-conforming file."""

    order: str = "header"          # 'header' | 'reverse' | 'interleave' (odd positions first)
    gap: int = 0                    # extra bytes after every section (readers must skip them)
    lead: int = 0                   # bytes before the first section
    tail: int = 0                   # padding bytes at the end of the data section
    empty_at: str = "inline"        # zero-length sections: 'inline' | 'end' | 'zero' (offset 0, shared)
    pad_byte: int = 0               # fill of every padding byte (non-zero: readers must still accept)
    max_header_pad: bool = False    # make the header end 1 byte past a 64-byte boundary (63 pad bytes)


@dataclass
class Spoil:
    """Preamble/byte-level defects applied after everything else."""

    magic: bytes | None = None
    major: int | None = None
    minor: int | None = None
    header_crc: int | None = None
    header_length: int | None = None
    data_length: int | None = None
    header_bytes: bytes | None = None   # replaces the encoded header (CRC recomputed unless header_crc)
    truncate: int | None = None         # keep only this many bytes
    append: bytes = b""


def build(tensors: list[Tens], metadata: Any = None, *, layout: Layout | None = None,
          extra_top: dict[str, Any] | None = None, header_obj: Any = None, minor: int = 0,
          spoil: Spoil | None = None) -> bytes:
    """Lay out a whole file and return its bytes."""
    lay = layout or Layout()
    sp = spoil or Spoil()
    secs = [(ti, s) for ti, t in enumerate(tensors) for s in t.sections]
    nonempty = [x for x in secs if len(x[1].data) > 0]
    if lay.order == "reverse":
        nonempty = nonempty[::-1]
    elif lay.order == "interleave":
        nonempty = nonempty[1::2] + nonempty[0::2]
    offsets: dict[int, int] = {}
    cursor = lay.lead
    for x in nonempty:
        off = align64(cursor)
        offsets[id(x[1])] = off
        cursor = off + len(x[1].data) + lay.gap
    data_len = cursor + lay.tail
    data = bytearray([lay.pad_byte]) * data_len
    for _ti, s in nonempty:
        off = offsets[id(s)]
        data[off:off + len(s.data)] = s.data
    for _ti, s in secs:
        if len(s.data) == 0:
            if lay.empty_at == "end":
                offsets[id(s)] = data_len & ~63
            elif lay.empty_at == "zero":
                offsets[id(s)] = 0
            else:
                o = align64(cursor)
                offsets[id(s)] = o if o <= data_len else data_len & ~63
    records = []
    for t in tensors:
        srecs: dict[str, Any] = {}
        for s in t.sections:
            r: dict[str, Any] = {"dtype": s.dtype, "shape": list(s.shape), "offset": offsets[id(s)],
                                 "length": len(s.data), "crc32": zlib.crc32(s.data)}
            r.update(s.extra)
            r.update(s.set)
            for k in s.drop:
                r.pop(k, None)
            srecs[s.role] = r
        rec: dict[str, Any] = {"name": t.name, "shape": t.shape, "dtype": t.dtype, "codec": t.codec,
                               "codec_version": t.codec_version, "params": t.params, "sections": srecs}
        rec.update(t.extra)
        rec.update(t.set)
        for k in t.drop:
            rec.pop(k, None)
        records.append(rec)
    if header_obj is None:
        header_obj = {"tensors": records, "metadata": {} if metadata is None else metadata}
        header_obj.update(extra_top or {})
    hb = packb(header_obj)
    if lay.max_header_pad:
        # grow an ignorable string until (32 + H) % 64 == 1: 63 bytes of padding follow the header
        assert isinstance(header_obj, dict)
        for n in range(0, 200):
            header_obj["x.pad"] = "p" * n
            hb = packb(header_obj)
            if (32 + len(hb)) % 64 == 1:
                break
        else:  # pragma: no cover - 200 lengths always hit every residue mod 64
            raise AssertionError("could not reach maximal padding")
    if sp.header_bytes is not None:
        hb = sp.header_bytes
    pre = struct.pack("<8sHHIQQ", MAGIC if sp.magic is None else sp.magic,
                      1 if sp.major is None else sp.major, minor if sp.minor is None else sp.minor,
                      zlib.crc32(hb) if sp.header_crc is None else sp.header_crc,
                      len(hb) if sp.header_length is None else sp.header_length,
                      data_len if sp.data_length is None else sp.data_length)
    pad = bytes([lay.pad_byte]) * (align64(32 + len(hb)) - 32 - len(hb))
    blob = pre + hb + pad + bytes(data) + sp.append
    if sp.truncate is not None:
        blob = blob[:sp.truncate]
    return blob
