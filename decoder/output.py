"""The decoders' f32 output arrays, on transparent huge pages when the kernel offers them.

A decoded 4096 x 14336 weight is 235 MB; on 4 KiB pages its first touch is
~57 000 page faults, a large part of a decode that is otherwise a few passes
of arithmetic. An anonymous mapping with ``madvise(MADV_HUGEPAGE)`` takes
2 MiB pages instead (Linux THP in ``madvise`` or ``always`` mode). The numpy
array is a view of the ``mmap`` object, which it keeps as its base, so the
mapping lives exactly as long as the array (and any view of it). Where
mmap/madvise are missing or refuse, a plain ``np.empty`` is returned: the
values written are the same either way.
"""

from __future__ import annotations

import math
import mmap

import numpy as np

HUGE_MIN_BYTES = 8 << 20  # below this the page faults are cheap and a whole 2 MiB page would be wasted
_HUGE = 2 << 20


def empty_f32(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised C-contiguous f32 array of ``shape`` (huge-page backed when large and possible)."""
    return empty(shape, np.float32)


def empty(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """:func:`empty_f32` of any fixed-size ``dtype`` (the quip encoder's f64 incoherent matrix uses it too)."""
    count = math.prod(shape)
    nbytes = count * np.dtype(dtype).itemsize
    advise = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_MIN_BYTES or advise is None:
        return np.empty(shape, dtype=dtype)
    try:
        mm = mmap.mmap(-1, -(-nbytes // _HUGE) * _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, AttributeError):
        return np.empty(shape, dtype=dtype)
    try:
        mm.madvise(advise)
    except OSError:
        pass  # THP off: still a valid (4 KiB-page) mapping
    return np.frombuffer(mm, dtype=dtype, count=count).reshape(shape)
