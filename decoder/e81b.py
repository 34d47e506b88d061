"""The E81B table of codec ``quip`` v2's 3-bit residual codebook (spec/codecs/quip.md §10.11).

QuIP#'s 3-bit checkpoints code the residual of each E8P12 point with one byte:
an index into 256 points of the E8 lattice (the origin, the 240 roots, and 15
of the 16 points ``±2 e_i``). The table is built by the spec's construction
rule and checked against the spec's SHA-256 when first used, so a rule slip
can never decode silently.
"""

from __future__ import annotations

import hashlib
import itertools
from functools import lru_cache

import numpy as np

TABLE_SHA256 = "37ce1a66345c1bbc51427c9e13e355558727bc02828e09f751b4d46fd7f816ec"


def construction_rows() -> list[tuple[int, ...]]:
    """Rows w = 2 x of §10.11 in table order: integer x, then half-integer x, then +-2 e_i."""
    def lattice(twice: tuple[int, ...]) -> list[tuple[int, ...]]:
        # 2x over even (integer x) or odd (half-integer x) values; even sum of x <=> sum(2x) % 4 == 0.
        return [v for v in itertools.product(twice, repeat=8) if sum(v) % 4 == 0 and sum(c * c for c in v) <= 8]

    # The spec's ranges are 2x in {-8, ..., 6} / {-7, ..., 7}; |2x_i| > 2 alone gives sum (2x)^2 > 8, so the
    # smaller products below (same increasing order) list the same rows: 3^8 + 2^8 candidates, not 2 * 8^8.
    rows = lattice((-2, 0, 2)) + lattice((-1, 1))
    rows += [tuple(4 * (i == j) for i in range(8)) for j in range(8)]
    rows += [tuple(-4 * (i == j) for i in range(8)) for j in range(7)]
    return rows


@lru_cache(maxsize=1)
def e81b_table() -> np.ndarray:
    """i8 [256, 8]: ``w = 2 x`` of each E81B point, verified against the spec's SHA-256."""
    table = np.array(construction_rows(), dtype=np.int8)
    digest = hashlib.sha256(table.tobytes()).hexdigest()
    if table.shape != (256, 8) or digest != TABLE_SHA256:  # pragma: no cover - guards the rule
        raise RuntimeError(f"E81B table digest {digest} != spec {TABLE_SHA256}")
    table.setflags(write=False)
    return table


__all__ = ["TABLE_SHA256", "construction_rows", "e81b_table"]
