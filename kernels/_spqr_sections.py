"""spqr sections as the host side of the spqr kernels reads them: statistics as f32, outliers as COO.

Why its own module: v1 (:mod:`.spqr`) and v2 (:mod:`.spqr_v2`) dequantization both start here; with
these in ``spqr.py`` the two modules imported each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._common import u32_values, unpack_rows, unsigned_values


def stat_f32(params: Mapping[str, Any], secs: Mapping[str, torch.Tensor], which: str, m: int) -> torch.Tensor:
    """First-level statistic S or Z as f32 [G, m], exactly spqr.md §5 step 1 (§8 step 1 for v2 ``arith``).

    torch runs the subtraction and the multiplication as separate IEEE f32
    kernels, so nothing is contracted; ``.half()`` is the RNE rounding.
    """
    bits = int(params[f"{which}_bits"])
    if bits == 16:
        return secs[which].to(torch.float32)
    c = unpack_rows(secs[f"{which}_codes"], m, bits)
    k = torch.arange(m, device=c.device) // int(params["stat_group_size"])
    zz = secs[f"{which}_zero"].to(torch.float32)[:, k]
    ss = secs[f"{which}_scale"].to(torch.float32)[:, k]
    t = c.to(torch.float32) - zz
    if params.get("arith", "f32") == "f16":
        t = t.half().float()
    return (t * ss).half().float()


def outlier_coo(secs: Mapping[str, torch.Tensor], m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) int64 of the CSR outliers, in storage order (cols as stored: before perm)."""
    rp = u32_values(secs["outlier_row_ptr"])
    cols = unsigned_values(secs["outlier_col"])
    # output_size known from the section shape: no device sync, so this is CUDA-graph capturable
    rows = torch.repeat_interleave(torch.arange(m, device=rp.device), rp[1:] - rp[:-1], output_size=cols.numel())
    return rows, cols


__all__ = ["outlier_coo", "stat_f32"]
