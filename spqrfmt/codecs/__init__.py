"""Codec registry: a codec is one object that checks, decodes, encodes and runs one tensor kind.

The container (reader, writer, validation), the converter, the model loader
and the command line never name a codec: they ask this registry. Every module
in this package that defines a module-level ``CODEC`` is registered at import
time; third-party codecs register through the entry-point group
``spqrfmt.codecs`` (each entry point names a codec object), loaded once, the
first time a codec is looked up. A codec provides:

* ``id`` and ``versions``: what it is, which ``codec_version`` values it implements;
* ``quantized``: False only for tensors stored as they are (``raw``);
* ``check_record(rec) -> params``: params and section set/layout, from the header
  alone; returns the checked, version-aware params (what decoders and kernels read);
* ``check_content(rec, arrays)``: index-bearing sections (CSR, permutations)
  checked before any Numba loop or GPU kernel reads them;
* ``decode(rec, arrays, params)``: the reference decode, the f32 array of the spec
  (``params``: what ``check_record`` returned; None = check them again);
* ``Options`` (its encoder settings, a dataclass, see ``codecs.options``; None for
  a codec the converter never writes), ``methods`` (``"rtn"`` = data-free, then
  any calibrated ones, the default first) and ``encode(weight, options, hessian=None, device=None)``
  (``hessian``: the layer's input Hessian, numpy or torch, for a calibrated method); ``calibration``:
  one line on what its calibrated methods do (``spqr convert --help``), for a codec that has any;
* ``summary``: one line for ``spqr convert --help``;
* ``gpu``: a :class:`GpuBinding` over its Triton kernels (imported lazily), or None;
* optionally ``shard(rec, sections, axis, index, count) -> sharding.Shard``: part ``index`` of
  ``count`` along ``axis`` as a record of the same codec (spec/sharding.md; tensor-parallel loading),
  or ``sharding.ShardError`` naming the rule that forbids it.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import ErrorCode, fail
from ..records import TensorRecord

ENTRY_POINT_GROUP = "spqrfmt.codecs"
DEFAULT = "spqr"  # what ``spqr convert`` writes without --codec


class Codec(Protocol):
    id: str
    versions: tuple[int, ...]
    quantized: bool
    methods: tuple[str, ...]
    Options: Any

    def check_record(self, rec: TensorRecord) -> dict[str, Any]: ...

    def check_content(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray]) -> None: ...

    def decode(self, rec: TensorRecord, arrays: Mapping[str, np.ndarray],
               params: Mapping[str, Any] | None = None) -> np.ndarray: ...

    def encode(self, weight: np.ndarray, options: Any, hessian: np.ndarray | None = None) -> Any: ...

    @property
    def gpu(self) -> GpuBinding | None: ...


@dataclass(frozen=True)
class GpuBinding:
    """A codec's device path, as ``load_model``'s :class:`~spqrfmt.kernels.linear.CodecLinear` calls it.

    ``prepare(params, sections, shape, device)`` moves checked params and validated
    sections (bias excluded) into the kernel's layout; ``matvec(prepared, x, bias)``
    is the fused product for a few rows; ``dequantize(prepared, dtype)`` the
    bit-exact dense W for larger batches. ``linear`` optionally names a
    :class:`CodecLinear` subclass with a faster large-batch path.
    """

    prepare: Callable[..., Any]
    matvec: Callable[..., Any]
    dequantize: Callable[..., Any]
    linear: Any = None


_REGISTRY: dict[str, Codec] = {}
_PLUGINS_LOADED = False
_PLUGIN_LOCK = threading.Lock()
_LOADING: int | None = None  # the thread scanning the entry points


def register(codec: Codec) -> Codec:
    """Add a codec; ValueError when its id is taken (a codec cannot be replaced behind the reader's back)."""
    cid = getattr(codec, "id", None)
    if not isinstance(cid, str) or not cid:
        raise ValueError(f"a codec needs a non-empty string id, not {cid!r}")
    have = _REGISTRY.get(cid)
    if have is not None and have is not codec:
        raise ValueError(f"codec id {cid!r} is already registered (by {type(have).__module__}); "
                         "a codec id names one implementation")
    _REGISTRY[cid] = codec
    return codec


def _load_plugins() -> None:
    """Register the codecs of the entry-point group once; a plugin that fails to load (or reuses an id)
    is reported with a warning and left out, so files of the other codecs still read. Other threads wait
    for the scan; a plugin module that looks a codec up while it is being imported sees the registry so far."""
    global _PLUGINS_LOADED, _LOADING
    if _PLUGINS_LOADED or _LOADING == threading.get_ident():
        return
    with _PLUGIN_LOCK:
        if _PLUGINS_LOADED:
            return
        _LOADING = threading.get_ident()
        try:
            from importlib.metadata import entry_points

            for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                try:
                    register(ep.load())
                except Exception as e:  # noqa: BLE001 - a broken plugin must not stop files of other codecs
                    warnings.warn(f"codec entry point {ep.name!r} ({ep.value}) not registered: "
                                  f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
        finally:
            _PLUGINS_LOADED, _LOADING = True, None


def available() -> dict[str, tuple[int, ...]]:
    _load_plugins()
    return {cid: c.versions for cid, c in sorted(_REGISTRY.items())}


def encodable() -> list[str]:
    """Ids of the codecs the converter can write (those with ``Options``), the default first."""
    _load_plugins()
    ids = sorted(cid for cid, c in _REGISTRY.items() if getattr(c, "Options", None) is not None)
    return sorted(ids, key=lambda cid: cid != DEFAULT)


def by_id(codec_id: str) -> Codec | None:
    _load_plugins()
    return _REGISTRY.get(codec_id)


def get(rec: TensorRecord) -> Codec:
    """The codec for a record, or the spec's per-tensor error (§9)."""
    codec = by_id(rec.codec)
    if codec is None:
        raise fail(
            ErrorCode.UNKNOWN_CODEC,
            f"codec {rec.codec!r} is not implemented by this reader (known: {', '.join(sorted(_REGISTRY))})",
            rec.name,
        )
    if rec.codec_version not in codec.versions:
        raise fail(
            ErrorCode.UNSUPPORTED_CODEC_VERSION,
            f"codec {rec.codec!r} version {rec.codec_version} not implemented (have {list(codec.versions)}); "
            "upgrade spqrfmt",
            rec.name,
        )
    return codec


# ---- helpers shared by codec modules -------------------------------------------------


def int_param(rec: TensorRecord, key: str, lo: int, hi: int, allowed: tuple[int, ...] = ()) -> int:
    v = rec.params.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not (lo <= v <= hi or v in allowed):
        extra = f" or one of {list(allowed)}" if allowed else ""
        raise fail(ErrorCode.BAD_PARAMS, f"param {key!r} = {v!r} must be an int in {lo}..{hi}{extra}", rec.name)
    return v


SectionSpec = tuple[tuple[str, ...], tuple[int, ...]]  # (allowed dtypes, exact shape)


def expect_sections(
    rec: TensorRecord, required: Mapping[str, SectionSpec], optional: Mapping[str, SectionSpec] = {}
) -> None:
    """Check that the record has exactly these roles with these dtypes and shapes."""
    present = set(rec.sections)
    missing = set(required) - present
    unexpected = present - set(required) - set(optional)
    if missing or unexpected:
        raise fail(
            ErrorCode.BAD_SECTION_SET,
            f"codec {rec.codec!r} sections: missing {sorted(missing)}, unexpected {sorted(unexpected)}",
            rec.name,
        )
    for role, s in rec.sections.items():
        dtypes, shape = required[role] if role in required else optional[role]
        if s.dtype not in dtypes or s.shape != tuple(shape):
            raise fail(
                ErrorCode.BAD_SECTION_LAYOUT,
                f"section {role!r} is {s.dtype}{list(s.shape)}, expected {'|'.join(dtypes)}{list(shape)}",
                rec.name,
            )


QUANTIZED_DTYPES = ("f16", "bf16", "f32")


def matrix_shape(rec: TensorRecord) -> tuple[int, int]:
    """Quantized-codec tensor rule (SPEC §4): ``[m >= 1, n >= 1]`` (BAD_SHAPE), dtype f16/bf16/f32 (BAD_PARAMS)."""
    if len(rec.shape) != 2 or rec.shape[0] < 1 or rec.shape[1] < 1:
        raise fail(ErrorCode.BAD_SHAPE, f"{rec.codec} tensors are 2-D [m>=1, n>=1], got {list(rec.shape)}", rec.name)
    if rec.dtype not in QUANTIZED_DTYPES:
        raise fail(ErrorCode.BAD_PARAMS, f"{rec.codec} tensor dtype must be f16, bf16 or f32, got {rec.dtype}",
                   rec.name)
    return rec.shape[0], rec.shape[1]


def outlier_sections(rec: TensorRecord, m: int, n: int) -> dict[str, SectionSpec]:
    """CSR outlier sections shared by spqr and squeezellm: row_ptr u32[m+1], col u16|u32[nnz], val f16[nnz].

    ``nnz`` is taken from ``outlier_col``'s shape; an absent or non-1-D
    ``outlier_col`` gives nnz = 0 so that :func:`expect_sections` reports it.
    """
    col = rec.sections.get("outlier_col")
    nnz = col.shape[0] if col is not None and len(col.shape) == 1 else 0
    return {
        "outlier_row_ptr": (("u32",), (m + 1,)),
        "outlier_col": (("u16", "u32") if n <= 65536 else ("u32",), (nnz,)),
        "outlier_val": (("f16",), (nnz,)),
    }


def bias_section(m: int) -> dict[str, SectionSpec]:
    """The optional layer bias every quantized codec may carry."""
    return {"bias": (("f16", "bf16", "f32"), (m,))}


def check_csr(rec: TensorRecord, row_ptr: np.ndarray, cols: np.ndarray, ncols: int) -> None:
    """CSR structure (row pointer monotone, columns in range and strictly increasing per row)."""
    nnz = cols.shape[0]
    rp = row_ptr.astype(np.int64)
    if rp[0] != 0 or np.any(np.diff(rp) < 0) or rp[-1] != nnz:
        raise fail(
            ErrorCode.BAD_CSR,
            f"outlier row pointer must start at 0, never decrease and end at nnz={nnz}",
            rec.name,
        )
    if nnz == 0:
        return
    c = cols.astype(np.int64)
    if c.max() >= ncols:
        raise fail(ErrorCode.BAD_INDEX, f"outlier column {int(c.max())} >= {ncols} columns", rec.name)
    # Strictly increasing within each row: a non-increase is only allowed where a new row starts.
    bad = np.diff(c) <= 0
    if bad.any():
        row_starts = np.zeros(nnz, dtype=bool)
        starts = rp[:-1][np.diff(rp) > 0]
        row_starts[starts] = True
        if np.any(bad & ~row_starts[1:]):
            raise fail(ErrorCode.BAD_INDEX, "outlier columns of a row are not strictly increasing", rec.name)


def check_permutation(rec: TensorRecord, perm: np.ndarray, n: int) -> None:
    seen = np.zeros(n, dtype=bool)
    p = perm.astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= n):
        raise fail(ErrorCode.BAD_PERMUTATION, f"perm entry out of range 0..{n - 1}", rec.name)
    seen[p] = True
    if not seen.all():
        raise fail(ErrorCode.BAD_PERMUTATION, f"perm is not a permutation of 0..{n - 1}", rec.name)


def _load_builtin() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        codec = getattr(mod, "CODEC", None)
        if codec is not None:
            register(codec)


_load_builtin()
