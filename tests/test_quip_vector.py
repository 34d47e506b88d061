"""The vectorised quip decoder (decoder/quip.py + decoder/simd.py) against the numpy reference reader, bit for bit.

The vector paths cover rows with h_n >= 16 (grid codes 16 per vector for 1, 2, 4, 8 bits, the bit stream
otherwise; h_n = 2^8 takes the one-pass eight stages), column slabs of SLAB with a partial last vector and the
two cache-sized halves of their butterflies, factors on both sides (in registers up to 16, else a loop), v2
codebooks with f16/f32 diagonals, NaN and signed zeros; the shapes straddle the LANES / SLAB thresholds, so the scalar
fallbacks are compared too. Multi-threaded runs split rows and slabs differently: the bits must not change.
"""

from __future__ import annotations

import numba
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spqrfmt.conformance import refreader
from spqrfmt.decoder.quip import decode

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sections(rng: np.random.Generator, m: int, n: int, km: int, kn: int, codebook: str | None, bits: int,
              diag: str) -> tuple[dict, dict, int]:
    sec: dict[str, np.ndarray] = {"scale": (rng.standard_normal(m) * 0.1).astype(np.float32)}
    if m > 2:
        sec["scale"][1] = np.nan
        sec["scale"][2] = -0.0
    if codebook == "e8p12":
        sec["codes"] = rng.integers(0, 1 << 16, (m, n // 8)).astype(np.uint16)
        params: dict = {"codebook": "e8p12", "log2_hn": kn, "log2_hm": km}
    else:
        sec["codes"] = rng.integers(0, 1 << 32, (m, -(-n * bits // 32)), dtype=np.uint64).astype(np.uint32)
        params = {"bits": bits, "log2_hn": kn, "log2_hm": km}
        if codebook:
            params["codebook"] = "grid"
    if diag == "i8":
        sec["su"] = rng.choice(np.array([-1, 1], np.int8), n)
        sec["sv"] = rng.choice(np.array([-1, 1], np.int8), m)
    else:
        sec["su"] = rng.standard_normal(n).astype(diag)
        sec["sv"] = rng.standard_normal(m).astype(np.float16)
    for role, d, k in (("factor_n", n, kn), ("factor_m", m, km)):
        if d >> k > 1:
            sec[role] = rng.standard_normal((d >> k, d >> k)).astype(np.float32)
    return params, sec, 2 if codebook else 1


def _reference(params: dict, sec: dict, m: int, n: int, version: int) -> np.ndarray:
    rec = refreader.TensorRec("w", (m, n), "f32", "quip", version, params)
    return refreader._quip_decode(rec, sec)


@SETTINGS
@example(seed=1, odd_m=3, odd_n=7, km=7, kn=8, bits=4, form="v1")  # 384 x 1792: factors 3 and 7, whole slabs
@example(seed=2, odd_m=5, odd_n=3, km=4, kn=5, bits=3, form="v2 grid f16")  # 80 x 96: a partial slab
@example(seed=3, odd_m=2, odd_n=17, km=5, kn=4, bits=4, form="v1")  # factor_n 17 > MIX_MAX: the dot_lanes loop
@example(seed=4, odd_m=1, odd_n=16, km=9, kn=5, bits=2, form="v1")  # factor_n 16, the largest mixed in registers
@given(seed=st.integers(0, 2**31), odd_m=st.sampled_from([1, 3, 5]), odd_n=st.sampled_from([1, 3, 7]),
       km=st.integers(0, 7), kn=st.integers(0, 8), bits=st.integers(1, 8),
       form=st.sampled_from(["v1", "v2 grid f16", "v2 e8p12 f32", "v2 e8p12 i8"]))
def test_vector_decode_matches_reference(seed: int, odd_m: int, odd_n: int, km: int, kn: int, bits: int,
                                         form: str) -> None:
    rng = np.random.default_rng(seed)
    m, n = odd_m << km, odd_n << kn
    codebook = None if form == "v1" else form.split()[1]
    if codebook == "e8p12" and n % 8:
        n *= 8
        kn += 3
    diag = {"v1": "i8", "v2 grid f16": np.float16, "v2 e8p12 f32": np.float32, "v2 e8p12 i8": "i8"}[form]
    params, sec, version = _sections(rng, m, n, km, kn, codebook, bits, diag)
    want = _reference(params, sec, m, n, version)
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            got = decode(params, sec, (m, n))
            nan = np.isnan(want)
            assert np.array_equal(nan, np.isnan(got))  # NaN compares as any NaN (SPEC §6 rule 5)
            assert np.array_equal(np.where(nan, 0, got).view(np.uint32), np.where(nan, 0, want).view(np.uint32))
    finally:
        numba.set_num_threads(before)

