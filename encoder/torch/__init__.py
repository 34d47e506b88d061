"""Torch data-free encoders: the CPU encoders' exact arithmetic on any torch device (``--device cuda``).

Each module mirrors one CPU encoder (same signature and defaults, plus
``device=``) and returns an ``Encoded`` whose sections are byte-identical to
the CPU encoder's: ``spqr.quantize_spqr`` (encoder/spqr.py),
``squeezellm.quantize_squeezellm``, ``quip.quantize_quip``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def encoder_for(codec_id: str, device: str = "cuda") -> Callable[[str, Any, Any], Any]:
    """The data-free encoder of ``codec_id`` on ``device``: ``(name, weight [out, in], cfg) -> Encoded``.

    A drop-in for ``spqrfmt.convert.data_free_encoder`` (the same ``cfg``, the same bytes): the registry's
    codec with ``device=`` (``spqrfmt.convert.device_encoder``), so the codec modules stay the only dispatch.
    """
    from ... import codecs
    from ...convert import device_encoder

    codec = codecs.by_id(codec_id)
    if codec is None or codec.Options is None:
        raise ValueError(f"no torch encoder for codec {codec_id!r}; choose one of {', '.join(codecs.encodable())}")
    return device_encoder(device)


# numpy's SIMD min-reduction gives +0.0 or -0.0, depending on the CPU and the position, for a group holding
# both; in spqr's second level that is the f16 zero-point of a statistic group mixing a first-level zero-point
# of +0.0 (an all-zero weight group) and -0.0 (a group whose minimum is >= 0). Both decode the same.
SIGNED_ZERO_SECTIONS = ("scale_zero", "zero_zero")


def differences(a: Any, b: Any, signed_zeros: tuple[str, ...] = ()) -> list[str]:
    """What differs between two ``Encoded``: params, section names, dtypes, shapes or bytes, the dequantization.

    In the sections named in ``signed_zeros`` a +0.0 against a -0.0 is listed apart, as ``"NAME: signed zero"``.
    """
    import numpy as np

    out = [f"{k}: {getattr(a, k)!r} != {getattr(b, k)!r}" for k in ("shape", "params", "codec", "codec_version")
           if getattr(a, k) != getattr(b, k)]
    if a.sections.keys() != b.sections.keys():
        out.append(f"sections {sorted(a.sections)} != {sorted(b.sections)}")
    for k in sorted(a.sections.keys() & b.sections.keys()):
        x, y = np.asarray(a.sections[k]), np.asarray(b.sections[k])
        if x.dtype != y.dtype or x.shape != y.shape:
            out.append(f"section {k}")
        elif x.tobytes() != y.tobytes():
            zeros = k in signed_zeros and bool(((x == y) & (x == 0) | (x.view(np.uint8) == y.view(np.uint8)).reshape(
                *x.shape, -1).all(-1)).all())
            out.append(f"{k}: signed zero" if zeros else f"section {k}")
    if np.asarray(a.dequantized).tobytes() != np.asarray(b.dequantized).tobytes():
        out.append("dequantized")
    return out
