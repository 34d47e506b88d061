"""Shared helpers: build .spqr files byte by byte so tests can corrupt any field."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spqrfmt.format import MAGIC, PREAMBLE_SIZE, align64, crc32, pack_header


def assemble(header: dict[str, Any], data: bytes, *, major: int = 1, minor: int = 0,
             header_crc: int | None = None, header_length: int | None = None,
             data_length: int | None = None) -> bytes:
    """Lay out preamble + header + padding + data exactly as spec §2 says (fields overridable)."""
    hb = pack_header(header)
    hl = len(hb) if header_length is None else header_length
    pre = struct.pack("<8sHHIQQ", MAGIC, major, minor, crc32(hb) if header_crc is None else header_crc,
                      hl, len(data) if data_length is None else data_length)
    pad = align64(PREAMBLE_SIZE + len(hb)) - PREAMBLE_SIZE - len(hb)
    return pre + hb + b"\0" * pad + data


def split(blob: bytes) -> tuple[dict[str, Any], bytearray]:
    """Inverse of assemble for a valid file: (header dict, mutable data bytes)."""
    import msgpack

    (hl,) = struct.unpack_from("<Q", blob, 16)
    header = msgpack.unpackb(blob[PREAMBLE_SIZE:PREAMBLE_SIZE + hl], raw=False)
    return header, bytearray(blob[align64(PREAMBLE_SIZE + hl):])


def restamp(header: dict[str, Any], data: bytearray) -> None:
    """Recompute every section CRC after a deliberate data edit (so only the intended rule breaks)."""
    for t in header["tensors"]:
        for s in t["sections"].values():
            s["crc32"] = crc32(bytes(data[s["offset"]:s["offset"] + s["length"]]))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
