"""Shared helpers: build .spqr files byte by byte so tests can corrupt any field."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# The repository root holds the folder kernels/ (installed as spqrfmt.kernels). With the root on sys.path
# (python -m pytest puts the working directory there) it shadows the PyPI package ``kernels`` that
# transformers >= 5.25 imports, so every transformers import from the root fails. The tests import the
# installed spqrfmt only.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

from spqrfmt.format import MAGIC, PREAMBLE_SIZE, align64, crc32, pack_header  # noqa: E402


def _cpu_only() -> bool:
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


# Without a GPU the Triton kernels run in Triton's interpreter. It has to be chosen before any module
# defines a @triton.jit kernel, whichever test file is collected first, so it is set here, once.
if _cpu_only():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def kernels_module(codec: str) -> Any:
    """``spqrfmt.kernels.<codec>``, or skip the test when torch or triton is missing (without a GPU the kernels
    run in Triton's interpreter, chosen above)."""
    import importlib

    pytest.importorskip("torch")
    pytest.importorskip("triton")
    return importlib.import_module(f"spqrfmt.kernels.{codec}")


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


# ---- the real `spqr` entry point in a subprocess, and tiny checkpoints built with numpy ----------

SPQR = [sys.executable, "-m", "spqrfmt.cli"]


def run_spqr(*args: str | Path, cwd: Path | None = None, timeout: float = 60, env: dict[str, str] | None = None,
             stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """``spqr ARGS`` as a user runs it (a hang fails by timeout instead of blocking the suite)."""
    full = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([*SPQR, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full, stdin=stdin)


def assert_one_error(proc: subprocess.CompletedProcess[str], code: int, match: str = "") -> str:
    """Exactly one ``error:`` line on stderr, no traceback, exit ``code``; returns the line."""
    lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert match in lines[0], lines[0]
    return lines[0]


def snapshot(*paths: Path) -> dict[Path, bytes]:
    """Bytes of every regular file at or under ``paths`` (to prove a command left its inputs alone)."""
    out: dict[Path, bytes] = {}
    for p in paths:
        for q in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []):
            if q.is_file() and not q.is_symlink():
                out[q] = q.read_bytes()
    return out


def write_checkpoint(folder: Path, tensors: dict[str, tuple[str, np.ndarray]] | None = None, *,
                     config: dict[str, Any] | str | bool | None = None, shards: int = 1, index: bool = False) -> Path:
    """A tiny Hugging Face folder: config.json + ``shards`` safetensors files (+ the shard index)."""
    from spqrfmt.safetensors_io import write_safetensors

    if tensors is None:
        r = np.random.default_rng(0)
        tensors = {"model.layers.0.mlp.up_proj.weight": ("f32", r.standard_normal((64, 64)).astype(np.float32)),
                   "model.layers.0.mlp.down_proj.weight": ("f32", r.standard_normal((64, 64)).astype(np.float32)),
                   "model.norm.weight": ("f32", np.ones(64, np.float32))}
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    wmap = {}
    for i in range(shards):
        fname = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        write_safetensors(folder / fname, part)
        wmap.update({n: fname for n in part})
    if index:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    if config is not False:
        text = config if isinstance(config, str) else json.dumps(config or {"model_type": "llama"})
        (folder / "config.json").write_text(text)
    return folder


def raw_safetensors(path: Path, header: dict[str, Any] | bytes, data: bytes = b"") -> Path:
    """A safetensors file with exactly this header (dict as JSON, or raw bytes) and data."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)
    return path
