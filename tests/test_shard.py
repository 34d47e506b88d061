"""Codec sharding (spec/sharding.md): every shard of a tensor decodes to exactly its slice of the unsharded decode.

Records are built with random but valid content (codes, f16 statistics, CSR outliers, permutations,
block-diagonal QuIP factors) for the codec's own section layout, so the rules are exercised on
every section; one file-backed case checks that a lazy read touches only part of the bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spqrfmt import Writer, codecs
from spqrfmt import open as open_file
from spqrfmt.codecs import quip, spqr, squeezellm
from spqrfmt.codecs.sharding import ShardError
from spqrfmt.dtypes import STORAGE
from spqrfmt.records import SectionRecord, TensorRecord
from spqrfmt.shard import ReadCounter, read_shard, shard_arrays

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fill(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "f16":
        return rng.normal(0, 1, shape).astype(np.float16)
    if dtype == "f32":
        return rng.normal(0, 1, shape).astype(np.float32)
    if dtype == "i8":
        return rng.choice(np.array([-1, 1], np.int8), shape)
    return rng.integers(0, np.iinfo(STORAGE[dtype]).max, shape, dtype=STORAGE[dtype], endpoint=True)


def _csr(rng: np.random.Generator, m: int, n: int, col_dtype: str) -> dict[str, np.ndarray]:
    rows = [np.sort(rng.choice(n, size=rng.integers(0, min(n, 3) + 1), replace=False)) for _ in range(m)]
    ptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.uint32)
    col = np.concatenate(rows).astype(STORAGE[col_dtype]) if ptr[-1] else np.zeros(0, STORAGE[col_dtype])
    return {"outlier_row_ptr": ptr, "outlier_col": col, "outlier_val": rng.normal(0, 1, col.shape).astype(np.float16)}


def _record(codec: str, version: int, shape: tuple[int, int], params: dict, layout, rng, extra=None):
    """A record of ``codec`` with random content for every section of ``layout(rec, checked)``."""
    m, n = shape
    probe = TensorRecord("w", shape, "f16", codec, version, params, {})
    checked = layout[0](probe)
    req, opt = layout[1](probe, checked)
    arrays = {role: _fill(rng, dt[0], shp) for role, (dt, shp) in req.items() if not role.startswith("outlier")}
    if "outlier_row_ptr" in req:
        arrays.update(_csr(rng, m, n, req["outlier_col"][0][0]))
    arrays.update(extra or {})
    if "bias" in opt:
        arrays["bias"] = rng.normal(0, 1, (m,)).astype(np.float16)
    secs = {r: SectionRecord(("f16" if r == "bias" else (req.get(r) or opt[r])[0][0]), a.shape, 0, a.nbytes, 0)
            for r, a in arrays.items()}
    rec = TensorRecord("w", shape, "f16", codec, version, params, secs)
    c = codecs.get(rec)
    c.check_record(rec)
    c.check_content(rec, arrays)
    return rec, arrays


def _assert_shards(rec, arrays, axis: int, count: int) -> None:
    full = codecs.get(rec).decode(rec, arrays)
    seen = []
    for i in range(count):
        s = shard_arrays(rec, arrays, axis, i, count)
        got = s.decode()
        want = np.take(full, s.index, axis=axis)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)  # exact: NaN-free content, equal values
        seen.append(s.index)
    assert sorted(np.concatenate(seen).tolist()) == list(range(rec.shape[axis]))  # the parts cover the axis once


spqr_layout = (spqr.checked_params, lambda rec, p: spqr.section_layout(rec, p))


@SETTINGS
@given(st.data())
def test_spqr_shards_decode_to_slices(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    count = data.draw(st.sampled_from([1, 2, 4]))
    b1, b2 = data.draw(st.sampled_from([1, 3, 4, 16])), data.draw(st.sampled_from([1, 2, 8]))
    stat = data.draw(st.sampled_from([(3, 3), (16, 16), (2, 16), (16, 5)]))
    m = count * b2 * data.draw(st.integers(1, 3))
    n = count * b1 * data.draw(st.integers(1, 3))
    version = data.draw(st.sampled_from([1, 2]))
    params = dict(bits=data.draw(st.integers(1, 8)), group_size=b1, scale_bits=stat[0], zero_bits=stat[1],
                  stat_group_size=b2)
    if version == 2:
        params.update(arith=data.draw(st.sampled_from(spqr.ARITH)), outlier_op=data.draw(st.sampled_from(
            spqr.OUTLIER_OPS)))
    extra = {"perm": rng.permutation(n).astype(np.uint32)} if data.draw(st.booleans()) else {}
    rec, arrays = _record("spqr", version, (m, n), params, spqr_layout, rng, extra)
    _assert_shards(rec, arrays, data.draw(st.sampled_from([0, 1])), count)


@SETTINGS
@given(st.data())
def test_squeezellm_shards_decode_to_slices(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    count = data.draw(st.sampled_from([1, 2, 3]))
    m, n = count * data.draw(st.integers(1, 5)), count * data.draw(st.integers(1, 40))
    layout = (squeezellm.checked_params, lambda rec, p: squeezellm.section_layout(rec, p["bits"]))
    rec, arrays = _record("squeezellm", 1, (m, n), {"bits": data.draw(st.integers(1, 8))}, layout, rng)
    _assert_shards(rec, arrays, data.draw(st.sampled_from([0, 1])), count)


def _block_diagonal(rng: np.random.Generator, a: int, blocks: int) -> np.ndarray:
    """An orthogonal ``a x a`` factor made of ``blocks`` equal orthogonal blocks (identity blocks of size 1)."""
    b = a // blocks
    F = np.zeros((a, a), np.float32)
    for i in range(blocks):
        q = np.linalg.qr(rng.normal(size=(b, b)))[0] if b > 1 else np.ones((1, 1))
        F[i * b:(i + 1) * b, i * b:(i + 1) * b] = q
    return F


@SETTINGS
@given(st.data())
def test_quip_shards_decode_to_slices(data):
    """Along an axis whose transform stays inside each part: h divides the part and F is block-diagonal."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    count = data.draw(st.sampled_from([1, 2, 4]))
    axis = data.draw(st.sampled_from([0, 1]))
    e8p = data.draw(st.booleans())
    k = [data.draw(st.integers(0, 3)), data.draw(st.integers(3 if e8p else 0, 4))]  # log2 h_m, log2 h_n
    per = [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))]  # factor blocks per part
    parts = [count if axis == 0 else 1, count if axis == 1 else 1]
    m, n = ((1 << k[i]) * per[i] * parts[i] for i in (0, 1))
    params = {"log2_hm": k[0], "log2_hn": k[1], **({"codebook": "e8p12"} if e8p else {"bits": 3})}
    if not e8p:
        params["codebook"] = "grid"
    extra = {}
    for i, side in ((0, "m"), (1, "n")):
        a = (m, n)[i] >> k[i]
        if a > 1:
            extra[f"factor_{side}"] = _block_diagonal(rng, a, parts[i])
    layout = (quip.checked_params, lambda rec, p: quip.section_layout(p, *rec.shape))
    rec, arrays = _record("quip", 2, (m, n), params, layout, rng, extra)
    _assert_shards(rec, arrays, axis, count)


def test_quip_refuses_a_transform_that_crosses_shards():
    rng = np.random.default_rng(0)
    layout = (quip.checked_params, lambda rec, p: quip.section_layout(p, *rec.shape))
    # a_n = 4 with a dense orthogonal factor: every input column mixes with every other
    rec, arrays = _record("quip", 1, (4, 16), {"bits": 2, "log2_hm": 2, "log2_hn": 2}, layout, rng,
                          {"factor_n": np.linalg.qr(rng.normal(size=(4, 4)))[0].astype(np.float32)})
    with pytest.raises(ShardError, match="does not stay inside the shard"):
        shard_arrays(rec, arrays, 1, 0, 2)
    with pytest.raises(ShardError, match="Hadamard of side m stays inside a shard"):  # h_m = 4 = m
        shard_arrays(rec, arrays, 0, 0, 2)


def test_spqr_refuses_boundaries_off_its_groups():
    rng = np.random.default_rng(1)
    rec, arrays = _record("spqr", 1, (24, 48), dict(bits=3, group_size=16, scale_bits=3, zero_bits=3,
                                                   stat_group_size=8), spqr_layout, rng)
    with pytest.raises(ShardError, match="multiples of 8 .β2"):
        shard_arrays(rec, arrays, 0, 0, 2)  # 12 rows per part
    with pytest.raises(ShardError, match="multiples of 16 .β1"):
        shard_arrays(rec, arrays, 1, 0, 2)  # 24 columns per part
    with pytest.raises(ShardError, match="equal parts"):
        shard_arrays(rec, arrays, 0, 0, 5)


def test_lazy_shard_reads_only_its_part(tmp_path):
    """From a file: the shard equals the in-memory one and reads about 1/count of the codes."""
    rng = np.random.default_rng(2)
    params = dict(bits=4, group_size=16, scale_bits=3, zero_bits=3, stat_group_size=16)
    rec, arrays = _record("spqr", 1, (64, 128), params, spqr_layout, rng,
                          {"perm": rng.permutation(128).astype(np.uint32)})
    path = tmp_path / "w.spqr"
    w = Writer(path)
    w.add("w", shape=rec.shape, dtype=rec.dtype, codec="spqr", params=params,
          sections={r: (rec.sections[r].dtype, a) for r, a in arrays.items()})
    w.close()
    full = codecs.get(rec).decode(rec, arrays)
    for mmap in (True, False):
        with open_file(path, mmap=mmap) as f:
            t = f["w"]
            for axis in (0, 1):
                counter = ReadCounter()
                s = read_shard(t, axis, 1, 4, counter)
                np.testing.assert_array_equal(s.decode(), np.take(full, s.index, axis=axis))
                assert counter.nbytes < t.nbytes / 2  # codes are 256 of the tensor's bytes per part of 4 ...
                assert counter.nbytes >= arrays["codes"].nbytes / 4  # ... and the part's codes were read
