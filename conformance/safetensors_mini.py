"""A tiny safetensors reader/writer for the foreign-decoder contract.

Why its own: the conformance suite must run with numpy alone, and the
contract (spec/conformance.md) only needs the plain layout: an 8-byte
little-endian u64 header size N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
then the tensor bytes (offsets relative to the end of the header).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

# spqr element type -> safetensors dtype name
ST_DTYPE = {"bool": "BOOL", "u8": "U8", "i8": "I8", "u16": "U16", "i16": "I16", "u32": "U32", "i32": "I32",
            "u64": "U64", "i64": "I64", "f16": "F16", "bf16": "BF16", "f32": "F32", "f64": "F64"}
ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "U32": 4, "I32": 4, "U64": 8, "I64": 8,
               "F16": 2, "BF16": 2, "F32": 4, "F64": 8}
MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """The file does not follow the safetensors layout."""


def write(path: str | os.PathLike[str], tensors: dict[str, tuple[str, list[int], bytes]],
          metadata: dict[str, str] | None = None) -> None:
    """Write ``{name: (SAFETENSORS_DTYPE, shape, little-endian C-order bytes)}``."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hb)))
        fh.write(hb)
        for _dtype, _shape, data in tensors.values():
            fh.write(data)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, tuple[str, list[int], bytes]], dict[str, str]]:
    """Read back ``({name: (dtype, shape, bytes)}, metadata)``, checking every offset."""
    blob = Path(path).read_bytes()
    if len(blob) < 8:
        raise SafetensorsError("shorter than 8 bytes")
    (n,) = struct.unpack_from("<Q", blob, 0)
    if n > MAX_HEADER or 8 + n > len(blob):
        raise SafetensorsError(f"header size {n} does not fit the file")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SafetensorsError("__metadata__ must map str to str")
    out: dict[str, tuple[str, list[int], bytes]] = {}
    for name, info in header.items():
        try:
            dtype, shape, (b, e) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"bad entry for {name!r}") from None
        if dtype not in ST_ITEMSIZE or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsError(f"bad dtype/shape for {name!r}")
        if not (isinstance(b, int) and isinstance(e, int) and 0 <= b <= e <= len(data)):
            raise SafetensorsError(f"bad data_offsets for {name!r}")
        if e - b != int(np.prod(shape, dtype=object)) * ST_ITEMSIZE[dtype]:
            raise SafetensorsError(f"size of {name!r} does not match its shape")
        out[name] = (dtype, shape, data[b:e])
    return out, meta
