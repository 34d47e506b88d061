"""Host-side rules of the tiled spqr layout shared by its two kernel modules (``_spqr_tiled``, ``_spqr_dot``);
``_check_sizes`` also serves the grouped layout's checks in ``spqr.py``.

Why a module of its own: ``kernels/spqr.py`` dispatches to both kernel modules, so the checks they run
before a launch cannot live there without an import cycle.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import triton

if TYPE_CHECKING:
    from .spqr import PreparedSpQR

MAX_FUSED_BATCH = 16


def _check_tiled(prepared: PreparedSpQR) -> None:
    """Sizes the tiled kernels index without bounds checks (a PreparedSpQR is a plain, mutable dataclass)."""
    m, n = prepared.shape
    p = prepared.params
    bits = int(p["bits"])
    G = triton.cdiv(n, int(p["group_size"]))
    K2 = triton.cdiv(m, int(p.get("stat_group_size", 1) or 1))
    nut = triton.cdiv(n, 32)
    need = {"tiled": (prepared.tiled, m * bits * nut), "o_row_ptr": (prepared.o_row_ptr, m + 1)}
    if prepared.stats_q:
        need.update(st_codes=(prepared.st_codes, m * G), st2_64=(prepared.st2_64, G * K2))
    else:
        need["sz32"] = (prepared.sz32, m * G)
    if m * G >= 2**31 or m * nut * bits >= 2**31 or nut * 32 * MAX_FUSED_BATCH >= 2**31 \
            or MAX_FUSED_BATCH * m >= 2**31:
        raise ValueError(f"{m}x{n} is too large for the kernels' 32-bit (row, group) and column indices")
    _check_sizes(prepared, need)
    if prepared.perm is not None and prepared.perm.numel() != n:
        raise ValueError(f"PreparedSpQR.perm has {prepared.perm.numel()} elements, expected {n}")


def plan_src(prepared: PreparedSpQR) -> tuple[Any, ...]:
    """Every field a launch plan of the tiled layout reads (the matvec's and the dequantization's): a
    PreparedSpQR is a plain, mutable dataclass, so a plan is rebuilt when any of them was replaced."""
    return (prepared.tiled, prepared.st_codes, prepared.st2_64, prepared.sz32, prepared.o_row_ptr, prepared.o_col,
            prepared.o_delta, prepared.sections["outlier_val"], prepared.perm, prepared.shape)


def plan_current(src: tuple[Any, ...], prepared: PreparedSpQR) -> bool:
    """Whether a plan built from ``src`` (:func:`plan_src` then) still reads what ``prepared`` holds now."""
    return all(map(operator.is_, src, plan_src(prepared)))


def _check_sizes(prepared: PreparedSpQR, need: dict[str, tuple[Any, int]]) -> None:
    """Each named device tensor holds exactly the elements its kernels index, and every outlier column has a delta
    (shared by the tiled and the grouped layout's checks)."""
    for name, (t, size) in need.items():
        if t is None or t.numel() != size:
            raise ValueError(f"PreparedSpQR.{name} has {None if t is None else t.numel()} elements, expected {size}")
    if prepared.o_col.numel() != prepared.o_delta.numel():
        raise ValueError("PreparedSpQR outlier columns and deltas differ in length")


def _row_blocks(b2: int, bm: int) -> int:
    """β2 row blocks per program of ``bm`` rows when they nest (1: inside one block), else 0 (gathered per row)."""
    if b2 % bm == 0:
        return 1
    if bm % b2 == 0 and b2 & (b2 - 1) == 0:
        return bm // b2
    return 0
