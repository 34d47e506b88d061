"""When the Numba encoders and decoders run their row loops on one thread instead of all.

A parallel region costs a wake-up and a barrier across the thread team; for a
small matrix that is more than the work itself, and on a busy machine a
descheduled team member stalls the whole region (measured: a 384 x 384 spqr
encode took 6 ms on one thread and 56-150 ms on two under load). Results do
not depend on the thread count: every parallel loop writes disjoint rows.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numba
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

PARALLEL_MIN_ELEMENTS = 1 << 20  # below this a matrix is encoded / decoded on the calling thread alone


@contextlib.contextmanager
def threads_for(elements: int) -> Iterator[None]:
    """Run the enclosed Numba calls single-threaded when ``elements`` is below :data:`PARALLEL_MIN_ELEMENTS`."""
    if elements >= PARALLEL_MIN_ELEMENTS:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)  # thread-local: other Python threads keep their setting
    try:
        yield
    finally:
        numba.set_num_threads(before)


def sized(elements: Callable[..., int]) -> Callable[[F], F]:
    """Decorator: run the function under :func:`threads_for` of ``elements(*args, **kwargs)``."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with threads_for(elements(*args, **kwargs)):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def weight_size(weight: Any, *args: Any, **kwargs: Any) -> int:
    """Elements of an encoder's first argument (the weight)."""
    return int(np.size(weight))


def shape_size(params: Any, sections: Any, shape: tuple[int, ...], *args: Any, **kwargs: Any) -> int:
    """Elements of a decoder's ``shape`` argument."""
    return math.prod(shape)
