"""Minimal strict safetensors reader/writer (numpy only, bf16 as uint16 bit patterns).

Checkpoints are the converter's input, so they are treated as untrusted too:
header size, JSON, dtypes and offsets are checked before any tensor is mapped.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import stat
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from .dtypes import ITEMSIZE
from .paths import new_file_mode
from .scratch import replaced_atomically

# safetensors dtype -> spqrfmt dtype name
ST_TO_SPQR = {
    "BOOL": "bool", "U8": "u8", "I8": "i8", "U16": "u16", "I16": "i16", "U32": "u32", "I32": "i32",
    "U64": "u64", "I64": "i64", "F16": "f16", "BF16": "bf16", "F32": "f32", "F64": "f64",
}
SPQR_TO_ST = {v: k for k, v in ST_TO_SPQR.items()}
MAX_ST_HEADER = 100 * 1024 * 1024  # safetensors' own limit (100 MB)
MAX_ST_DEPTH = 8  # a header is {name: {dtype, shape, data_offsets}}: depth 3
METADATA_KEY = "__metadata__"  # reserved by safetensors: never a tensor name


class SafetensorsError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise SafetensorsError(f"duplicate key {k!r}")
        out[k] = v
    return out


def json_depth(v: object, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping at ``limit`` (iterative: no RecursionError)."""
    deepest, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (x.values() if isinstance(x, dict) else x))
    return deepest


def _dtype_name(path: Path, name: str, st: object) -> str:
    if isinstance(st, str) and st in ST_TO_SPQR:
        return ST_TO_SPQR[st]
    if isinstance(st, str) and st.upper().startswith(("F8", "F4", "F6", "E8", "FP8")):
        raise SafetensorsError(f"{path}: tensor {name!r} has dtype {st} (8-bit or smaller float): not supported; "
                               "dequantize the checkpoint to bf16/f16/f32 first")
    raise SafetensorsError(f"{path}: tensor {name!r} has dtype {st!r}, not one of {', '.join(ST_TO_SPQR)}")


class SafetensorsFile(Mapping[str, tuple[str, np.ndarray]]):
    """name -> (spqrfmt dtype name, read-only array view) over a memory-mapped .safetensors file.

    Applies safetensors' own rules before any tensor is mapped: header at most
    100 MB of JSON without duplicate keys, known dtypes, integer dims,
    ``data_offsets`` that match the shape and tile the data area exactly (no
    gap, no overlap, no alias), ``__metadata__`` a map of str to str.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SafetensorsError(f"{self.path}: not a regular file")
            size = st.st_size
            if size < 8:
                raise SafetensorsError(f"{self.path}: too short for a safetensors file")
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        (hlen,) = struct.unpack("<Q", self._map[:8])
        if hlen > min(MAX_ST_HEADER, size - 8):
            raise SafetensorsError(f"{self.path}: header length {hlen} is out of range")
        try:
            header = json.loads(self._map[8:8 + hlen], object_pairs_hook=_no_duplicates)
        except SafetensorsError as e:
            raise SafetensorsError(f"{self.path}: header has a {e}") from None
        except RecursionError:
            raise SafetensorsError(f"{self.path}: header JSON is nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise SafetensorsError(f"{self.path}: header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: header is not a JSON object")
        if json_depth(header, MAX_ST_DEPTH) > MAX_ST_DEPTH:
            raise SafetensorsError(f"{self.path}: header JSON is nested too deeply")
        meta = header.pop(METADATA_KEY, None)
        if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            raise SafetensorsError(f"{self.path}: {METADATA_KEY} must map str to str")
        self.metadata: dict[str, str] = meta or {}
        self._base = 8 + hlen
        data_len = size - self._base
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise SafetensorsError(f"{self.path}: bad entry for tensor {name!r} (need exactly dtype, shape, "
                                       "data_offsets)")
            dtype = _dtype_name(self.path, name, info["dtype"])
            shape, offsets = info["shape"], info["data_offsets"]
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
                raise SafetensorsError(f"{self.path}: tensor {name!r} shape {shape!r} is not a list of integers >= 0")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(x) is int for x in offsets)):
                raise SafetensorsError(f"{self.path}: tensor {name!r} data_offsets {offsets!r} are not 2 integers")
            start, end = offsets
            count = math.prod(shape)  # exact: dims like 2**64 cannot overflow
            if not 0 <= start <= end <= data_len or end - start != count * ITEMSIZE[dtype]:
                raise SafetensorsError(f"{self.path}: tensor {name!r} offsets {offsets} do not match its shape "
                                       f"{shape} and dtype, or lie outside the {data_len}-byte data")
            if count == 0:
                try:  # numpy bounds every dim even when one is 0
                    np.empty(shape, dtype=_np_dtype(dtype))
                except ValueError:
                    raise SafetensorsError(f"{self.path}: tensor {name!r} shape {shape} has a dimension too large "
                                           "to hold (even with 0 elements)") from None
            self._entries[name] = (dtype, tuple(shape), start, count)
        pos = 0
        for name, (_d, _s, start, count) in sorted(self._entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
            if start != pos:
                what = "overlaps (or aliases) another tensor" if start < pos else f"leaves a gap at byte {pos}"
                raise SafetensorsError(f"{self.path}: tensor {name!r} {what}: the data must be covered exactly")
            pos = start + count * ITEMSIZE[_d]
        if pos != data_len:
            raise SafetensorsError(f"{self.path}: {data_len - pos} bytes after the last tensor belong to none")

    def __getitem__(self, name: str) -> tuple[str, np.ndarray]:
        dtype, shape, start, count = self._entries[name]
        if count == 0:  # frombuffer needs an offset inside the map
            arr = np.zeros(shape, dtype=_np_dtype(dtype))
            arr.flags.writeable = False
            return dtype, arr
        arr = np.frombuffer(self._map, dtype=_np_dtype(dtype), count=count, offset=self._base + start)
        return dtype, arr.reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> str:
        return self._entries[name][0]

    def evict(self, name: str) -> None:
        """Drop tensor ``name``'s pages from this process's resident memory (a copy was taken; the OS page
        cache keeps them). Streaming readers call it so that RSS stays about one tensor, not the whole file."""
        dtype, _shape, start, count = self._entries[name]
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is None or not count:
            return
        lo = (self._base + start) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = self._base + start + count * ITEMSIZE[dtype]
        self._map.madvise(advice, lo, hi - lo)


def _np_dtype(name: str) -> np.dtype:
    from .dtypes import STORAGE

    return STORAGE[name]


def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, tuple[str, np.ndarray]],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write name -> (spqrfmt dtype name, array) atomically (temp file + rename)."""
    specs = [(name, dtype, tuple(np.shape(arr))) for name, (dtype, arr) in tensors.items()]
    write_safetensors_streaming(path, specs, lambda name: tensors[name][1], metadata)


def write_safetensors_streaming(
    path: str | os.PathLike[str],
    specs: list[tuple[str, str, tuple[int, ...]]],
    fetch: Callable[[str], np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write tensors one at a time: ``specs`` = (name, dtype, shape); ``fetch(name)`` produces each array.

    Only one tensor is in memory at a time, so decoding a whole model to
    safetensors needs no more memory than its largest tensor.
    """
    header: dict[str, object] = {}
    if any(name == METADATA_KEY for name, _d, _s in specs):
        raise SafetensorsError(f"a tensor named {METADATA_KEY!r} cannot be stored: safetensors reserves the name "
                               "for its metadata")
    if metadata:
        header["__metadata__"] = dict(metadata)
    pos = 0
    for name, dtype, shape in specs:
        n = math.prod(shape) * ITEMSIZE[dtype]
        header[name] = {"dtype": SPQR_TO_ST[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    path = Path(path)
    with replaced_atomically(path) as (fd, _tmp), os.fdopen(fd, "wb") as out:
        os.fchmod(fd, new_file_mode())
        out.write(struct.pack("<Q", len(hbytes)))
        out.write(hbytes)
        for name, dtype, shape in specs:
            arr = np.asarray(fetch(name), dtype=_np_dtype(dtype), order="C")  # ascontiguousarray makes 0-d 1-d
            if arr.shape != tuple(shape):
                raise ValueError(f"tensor {name!r} has shape {arr.shape}, declared {shape}")
            out.write(memoryview(arr.reshape(-1).view(np.uint8)))
