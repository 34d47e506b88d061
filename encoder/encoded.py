"""The result of every encoder: a codec tensor ready for ``Writer.add_encoded``.

Why its own module: the RTN, GPTQ/SpQR, SqueezeLLM, QuIP and E8P12 encoders all return it and the
converter, the calibration driver and the writer consume it; it belongs to none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Encoded:
    """A codec tensor ready for ``Writer.add_encoded``: params + spec sections + own dequantization."""

    shape: tuple[int, ...]
    params: dict[str, Any]
    sections: dict[str, Any]
    dequantized: np.ndarray
    codec: str = "spqr"
    codec_version: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        total = 0
        for v in self.sections.values():
            arr = v[1] if isinstance(v, tuple) else v
            total += np.asarray(arr).nbytes
        return total

    @property
    def bits_per_param(self) -> float:
        return 8.0 * self.nbytes / float(np.prod(self.shape))


__all__ = ["Encoded"]
