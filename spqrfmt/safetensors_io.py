"""Minimal strict safetensors reader/writer (numpy only, bf16 as uint16 bit patterns).

Checkpoints are the converter's input, so they are treated as untrusted too:
header size, JSON, dtypes and offsets are checked before any tensor is mapped.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

# safetensors dtype -> spqrfmt dtype name
ST_TO_SPQR = {
    "BOOL": "bool", "U8": "u8", "I8": "i8", "U16": "u16", "I16": "i16", "U32": "u32", "I32": "i32",
    "U64": "u64", "I64": "i64", "F16": "f16", "BF16": "bf16", "F32": "f32", "F64": "f64",
}
SPQR_TO_ST = {v: k for k, v in ST_TO_SPQR.items()}
MAX_ST_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    pass


class SafetensorsFile(Mapping[str, tuple[str, np.ndarray]]):
    """name -> (spqrfmt dtype name, read-only array view) over a memory-mapped .safetensors file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise SafetensorsError(f"{self.path}: too short for a safetensors file")
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        (hlen,) = struct.unpack("<Q", self._map[:8])
        if hlen > min(MAX_ST_HEADER, size - 8):
            raise SafetensorsError(f"{self.path}: header length {hlen} is out of range")
        try:
            header = json.loads(self._map[8:8 + hlen])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{self.path}: header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._base = 8 + hlen
        data_len = size - self._base
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                dtype = ST_TO_SPQR[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                start, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{self.path}: bad entry for tensor {name!r}") from None
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            itemsize = np.dtype(_np_dtype(dtype)).itemsize
            if min(shape, default=0) < 0 or not 0 <= start <= end <= data_len or end - start != count * itemsize:
                raise SafetensorsError(f"{self.path}: tensor {name!r} offsets/shape are inconsistent")
            self._entries[name] = (dtype, shape, start, count)

    def __getitem__(self, name: str) -> tuple[str, np.ndarray]:
        dtype, shape, start, count = self._entries[name]
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
    if metadata:
        header["__metadata__"] = dict(metadata)
    pos = 0
    for name, dtype, shape in specs:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(_np_dtype(dtype)).itemsize
        header[name] = {"dtype": SPQR_TO_ST[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(struct.pack("<Q", len(hbytes)))
            out.write(hbytes)
            for name, dtype, shape in specs:
                arr = np.ascontiguousarray(fetch(name), dtype=_np_dtype(dtype))
                if arr.shape != tuple(shape):
                    raise ValueError(f"tensor {name!r} has shape {arr.shape}, declared {shape}")
                out.write(memoryview(arr.reshape(-1).view(np.uint8)))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
