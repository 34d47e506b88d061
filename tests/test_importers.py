"""Importers on synthetic checkpoints written in each source format.

The source files are produced here by small, independent writers that follow
the source formats' layouts (loops over tiles and bits, not the importer's
vectorised code), from random codes and statistics. Each test then checks
what the importer claims in docs/importers.md: which fields survive bit for
bit, and how the decoded tensor relates to the source's own dequantization.
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
import pytest

import spqrfmt
from spqrfmt.importers import spqr_quant as sq
from spqrfmt.importers.squeezellm import NotRepresentable
from spqrfmt.safetensors_io import write_safetensors

# ---- spqr_quant --------------------------------------------------------------------------

H = np.float16


def _pack_spqr_quant(m: int, n: int, codes, sc, zc, ss, sz, zs, zz, entries, perm, ptcsr: bool):
    """Source tensors in spqr_quant's layout (64-bit tile words, CSR/PTCSR col_vals, u16-pair in_perm).

    ``entries`` is a list of (row, col, f16 value) in file order (duplicates allowed, as the format does).
    """
    K, G = m // 16, n // 16
    words = []
    for k in range(K):
        for g in range(G):
            so = (int(ss[g, k].view(np.uint16)) | int(zs[g, k].view(np.uint16)) << 16
                  | int(sz[g, k].view(np.uint16)) << 32 | int(zz[g, k].view(np.uint16)) << 48)
            for i in range(16):
                r = 16 * k + i
                word = int(sc[g, r]) | int(zc[g, r]) << 3
                for lcol in range(16):
                    word |= int(codes[r, 16 * g + lcol]) << (6 + 3 * lcol)
                word |= ((so >> (8 * (i // 2))) & 0xFF) << 54
                words.append(word)
    dense = np.array(words, dtype=np.uint64).view(np.int64)
    per_row: list[list[int]] = [[] for _ in range(m)]
    for r, c, v in entries:
        per_row[r].append(int(np.array(v, dtype=np.float16).view(np.uint16)) << 16 | int(c))
    if not ptcsr:
        row_offsets = np.zeros(m + 1, dtype=np.int32)
        row_offsets[1:] = np.cumsum([len(x) for x in per_row])
        col_vals = np.array([w for x in per_row for w in x], dtype=np.uint32).view(np.int32)
    else:  # interleave each 16-row block: entry e of a block belongs to row 16b + e % 16, zeros pad
        ro, out = [0], []
        for b in range(K):
            rows_b = per_row[16 * b:16 * b + 16]
            depth = max(len(x) for x in rows_b)
            blk = np.zeros((depth, 16), dtype=np.uint32)
            for i, x in enumerate(rows_b):
                blk[: len(x), i] = x
            out.append(blk.reshape(-1))
            ro.append(ro[-1] + blk.size)
        row_offsets = np.array(ro, dtype=np.int32)
        col_vals = np.concatenate(out).view(np.int32)
    tensors = {"dense_weights": dense, "row_offsets": row_offsets, "col_vals": col_vals}
    if perm is not None:
        tensors["in_perm"] = np.asarray(perm).astype(np.uint16).view(np.int32)  # pairs of u16 in one int32
    return tensors


def _write_spqr_quant_layer(rng: np.random.Generator, m: int, n: int, density: float, perm: bool,
                            ptcsr: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One random layer as an encoder writes it. Returns (source tensors, the plain fields they were built from)."""
    K, G = m // 16, n // 16
    codes = rng.integers(0, 8, (m, n))
    sc = rng.integers(0, 8, (G, m))
    zc = rng.integers(0, 8, (G, m))
    # second-order values: positive scales, zeros within the code range, as an encoder produces
    ss = (rng.uniform(0.002, 0.02, (G, K))).astype(np.float16)
    sz = rng.uniform(-1, 8, (G, K)).astype(np.float16)
    zs = rng.uniform(0.1, 1.5, (G, K)).astype(np.float16)
    zz = rng.uniform(-1, 8, (G, K)).astype(np.float16)
    rows, cols = np.nonzero(rng.random((m, n)) < density)
    vals = (rng.standard_normal(rows.size) * 0.5).astype(np.float16)
    p = rng.permutation(n) if perm else None
    entries = list(zip(rows.tolist(), cols.tolist(), vals, strict=True))
    tensors = _pack_spqr_quant(m, n, codes, sc, zc, ss, sz, zs, zz, entries, p, ptcsr)
    fields = {"codes": codes, "sc": sc, "zc": zc, "ss": ss, "sz": sz, "zs": zs, "zz": zz, "rows": rows,
              "cols": cols, "vals": vals, "perm": p}
    return tensors, fields


def _source_dequant(src: dict[str, np.ndarray], m: int, n: int) -> np.ndarray:
    """spqr_quant's host dequantization, element by element from the source tensors, in stored column order.

    Half arithmetic as the library's host code does it (each operation in f32, rounded to f16), the
    tile's second-order word assembled from its 16 rows, then every col_vals entry -- PTCSR padding
    included -- added to an f32 copy, which is rounded to f16 once at the end.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # statistics may be inf/NaN or overflow f16
        return _source_dequant_raw(src, m, n)


def _source_dequant_raw(src: dict[str, np.ndarray], m: int, n: int) -> np.ndarray:
    words = src["dense_weights"].view(np.uint64)
    out = np.zeros(m * n, dtype=np.float32)
    idx = 0
    for ii in range(0, m, 16):
        for jj in range(0, n, 16):
            so = 0
            for k in range(16):
                so |= (int(words[idx + k]) >> 54) << (8 * (k // 2))
            f = [np.array((so >> (16 * h)) & 0xFFFF, dtype=np.uint16).view(np.float16) for h in range(4)]
            ss, zs, sz, zz = (np.float32(x) for x in f)
            for i in range(16):
                w = int(words[idx])
                s = np.float32(H(ss * np.float32(H(np.float32(w & 7) - sz))))
                z = np.float32(H(zs * np.float32(H(np.float32((w >> 3) & 7) - zz))))
                for j in range(16):
                    t = np.float32(H(np.float32((w >> (6 + 3 * j)) & 7) - z))
                    out[(ii + i) * n + jj + j] = np.float32(H(s * t))
                idx += 1
    for r, c, v in _source_entries(src, m):
        out[r * n + c] = np.float32(out[r * n + c] + np.float32(v))
    return out.reshape(m, n).astype(np.float16)


def _source_entries(src: dict[str, np.ndarray], m: int) -> list[tuple[int, int, np.float16]]:
    """Every (row, col, value) the source adds, in its order: CSR, or PTCSR with its zero padding words."""
    ro = src["row_offsets"].astype(np.int64)
    cv = src["col_vals"].view(np.uint32)
    out = []
    for b in range(ro.size - 1):
        for j in range(ro[b], ro[b + 1]):
            r = b if ro.size == m + 1 else 16 * b + j % 16
            out.append((r, int(cv[j] & 0xFFFF), np.array(cv[j] >> 16, dtype=np.uint16).view(np.float16)))
    return out


def _input_order(w: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    if perm is None:
        return w
    res = np.empty_like(w)
    res[:, perm] = w
    return res


def _same16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float16), np.asarray(b, np.float16)
    return (a.view(np.uint16) == b.view(np.uint16)) | (np.isnan(a) & np.isnan(b))


def _decode_v2(tmp_dir, layer: sq.SpqrQuantLayer) -> tuple[np.ndarray, dict, dict]:
    """Write the imported layer to a file and decode it as any reader would: (f16 decode, params, sections)."""
    params, secs = sq.to_spqr_sections(layer, "l")
    path = tmp_dir / "l.spqr"
    with spqrfmt.Writer(path) as w:
        w.add("l.weight", shape=(layer.m, layer.n), dtype="f16", codec="spqr", params=params, sections=secs,
              codec_version=sq.CODEC_VERSION)
    with spqrfmt.open(path) as f:
        t = f["l.weight"]
        assert t.codec_version == 2 and t.params["arith"] == "f16" and t.params["outlier_op"] == "add"
        return t.decode("f16"), params, secs


@pytest.mark.parametrize("perm,ptcsr", [(False, False), (True, False), (True, True)])
def test_spqr_quant_layer_fields_survive_bit_for_bit(tmp_path, perm, ptcsr):
    rng = np.random.default_rng(7)
    m, n = 48, 64
    src, f = _write_spqr_quant_layer(rng, m, n, 0.03, perm, ptcsr)
    assert sq.infer_shape(src["dense_weights"].size, src["row_offsets"].size,
                          src["in_perm"].size if perm else 0) == ((m, n) if perm else None) or not perm
    layer = sq.unpack_layer(src["dense_weights"], src["row_offsets"], src["col_vals"], src.get("in_perm"), m, n)
    np.testing.assert_array_equal(layer.codes, f["codes"])
    np.testing.assert_array_equal(layer.scale_codes, f["sc"])
    np.testing.assert_array_equal(layer.zero_codes, f["zc"])
    for i, key in enumerate(("ss", "zs", "sz", "zz")):
        np.testing.assert_array_equal(layer.second[..., i], f[key].view(np.uint16))
    if perm:
        np.testing.assert_array_equal(layer.perm, f["perm"])
    # the importer's vectorised reading of the source's dequantization equals the element-by-element one
    source = _source_dequant(src, m, n)
    assert _same16(sq.reference_dequantize(layer, apply_perm=False), source).all()
    # the imported tensor decodes to the source's dequantization in every bit
    ours, _, secs = _decode_v2(tmp_path, layer)
    assert _same16(ours, _input_order(source, f["perm"])).all()
    # every outlier addend v is kept as is (positions are unique here; PTCSR padding dropped)
    rp = secs["outlier_row_ptr"].astype(np.int64)
    np.testing.assert_array_equal(np.repeat(np.arange(m), np.diff(rp)), f["rows"])
    np.testing.assert_array_equal(secs["outlier_col"], f["cols"])
    np.testing.assert_array_equal(secs["outlier_val"].view(np.uint16), f["vals"].view(np.uint16))
    # dense words rebuild exactly from the codec sections' content
    from spqrfmt.decoder.spqr import unpack_rows

    codes = unpack_rows(secs["codes"], n, 3)
    scs = unpack_rows(secs["scale_codes"], m, 3)
    zcs = unpack_rows(secs["zero_codes"], m, 3)
    second = np.stack([secs["scale_scale"].view(np.uint16), secs["zero_scale"].view(np.uint16),
                       secs["scale_zero"].view(np.uint16), secs["zero_zero"].view(np.uint16)], axis=-1)
    rebuilt = sq.to_dense_weights(codes, scs, zcs, second)
    np.testing.assert_array_equal(rebuilt.view(np.uint64), src["dense_weights"].view(np.uint64))


def test_spqr_quant_v1_arithmetic_would_differ():
    """Why v2 exists: the same sections decoded with v1's f32 arithmetic and replace semantics differ."""
    from spqrfmt.decoder.spqr import decode

    rng = np.random.default_rng(5)
    src, f = _write_spqr_quant_layer(rng, 32, 64, 0.03, False)
    layer = sq.unpack_layer(src["dense_weights"], src["row_offsets"], src["col_vals"], None, 32, 64)
    params, secs = sq.to_spqr_sections(layer)
    v2 = decode(params, secs, (32, 64)).astype(np.float16)
    v1 = decode({k: v for k, v in params.items() if k not in ("arith", "outlier_op")}, secs, (32, 64))
    assert _same16(v2, _source_dequant(src, 32, 64)).all()
    assert (~_same16(v1.astype(np.float16), v2)).mean() > 0.05


def test_spqr_quant_folds_duplicates_and_signed_zero_padding(tmp_path):
    """Entries at one position and PTCSR padding on a -0.0 weight: folded, still bit-exact."""
    m, n = 32, 32
    K, G = m // 16, n // 16
    codes = np.full((m, n), 5)
    sc = np.full((G, m), 1)
    zc = np.full((G, m), 5)
    ss = np.full((G, K), 0.5, np.float16)   # S = 0.5 * (1 - 3) = -1
    sz = np.full((G, K), 3.0, np.float16)
    zs = np.full((G, K), 1.0, np.float16)   # Z = 1 * (5 - 0) = 5, so q - Z = +0 and W = -1 * +0 = -0.0
    zz = np.zeros((G, K), np.float16)
    entries = [(0, 3, H(0.1)), (0, 3, H(0.2)), (0, 3, H(-1e-4)),      # three adds at one position
               (1, 5, H(1.0)), (17, 9, H(2.0)), (17, 9, H(-2.0)),      # an exact cancellation
               (2, 7, H(0.25))]                                       # rows 3..15 and 16, 18.. get padding
    src = _pack_spqr_quant(m, n, codes, sc, zc, ss, sz, zs, zz, entries, None, ptcsr=True)
    source = _source_dequant(src, m, n)
    assert source[3, 0].view(np.uint16) == 0x0000 and source[0, 1].view(np.uint16) == 0x8000  # +0 only by padding
    layer = sq.unpack_layer(src["dense_weights"], src["row_offsets"], src["col_vals"], None, m, n)
    assert layer.info["padding_entries"] > 0 and layer.pad.sum() == layer.info["padding_entries"]
    ours, _, secs = _decode_v2(tmp_path, layer)
    assert _same16(ours, source).all()
    rows, cols, vals = sq.fold_outliers(layer)
    got = {(r, c): v for r, c, v in zip(rows.tolist(), cols.tolist(), vals.tolist(), strict=True)}
    pad_rows = set(layer.rows[layer.pad].tolist())
    assert pad_rows == set(range(1, m)) - {17}  # rows 0 and 17 have their block's longest lists: no padding
    assert len(got) == 4 + len(pad_rows)  # 4 positions with entries, one +0.0 per padded -0.0 weight
    assert all(got[(r, 0)] == 0.0 for r in pad_rows)
    assert got[(1, 5)] == 1.0 and got[(2, 7)] == 0.25 and got[(17, 9)] == 0.0
    assert secs["outlier_val"].size == len(got)


def test_spqr_quant_refuses_unfoldable_duplicates(tmp_path):
    """Entries at one position whose f32 sum no single f16 addend reproduces: refused, nothing written."""
    m, n = 16, 16
    codes = np.full((m, n), 7)
    one = np.ones((1, 1), np.float16)
    zero = np.zeros((1, 1), np.float16)
    # S = 1 * (0 - 1) = -1, Z = 1 * (5 - 0) = 5: every dense weight is -1 * (7 - 5) = -2
    args = (codes, np.zeros((1, m)), np.full((1, m), 5), one, one, one, zero)
    entries = [(0, 4, H(2.0)), (0, 4, H(1e-4))]  # f32: -2 + 2 = 0, then 1e-4; no f16 v has rne16(-2 + v) = 1e-4
    src = _pack_spqr_quant(m, n, *args, entries, None, ptcsr=False)
    source = _source_dequant(src, m, n)
    assert source[0, 4] == H(1e-4) and source[0, 5] == -2.0
    assert not _foldable(src, source, m, n)
    layer = sq.unpack_layer(src["dense_weights"], src["row_offsets"], src["col_vals"], None, m, n)
    with pytest.raises(NotRepresentable, match=r"l.col_vals: 2 entries at \(0, 4\)"):
        sq.to_spqr_sections(layer, "l")
    # a foldable pair at the same position is folded exactly
    src = _pack_spqr_quant(m, n, *args, [(0, 4, H(0.5)), (0, 4, H(0.25))], None, ptcsr=False)
    layer = sq.unpack_layer(src["dense_weights"], src["row_offsets"], src["col_vals"], None, m, n)
    ours, _, secs = _decode_v2(tmp_path, layer)
    assert _same16(ours, _source_dequant(src, m, n)).all() and secs["outlier_val"].tolist() == [0.75]


def _f16_values():
    """f16 values: chosen specials, any finite bit pattern, and any bit pattern at all (NaN, inf)."""
    from hypothesis import strategies as st

    special = [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, 65504.0, -65504.0, 6e-8, -6e-8, 6.1e-5, 1e-3, -2.5, 7.0]
    bits = st.one_of(st.integers(0, 0x7BFF), st.integers(0x8000, 0xFBFF), st.integers(0, 0xFFFF))
    return st.one_of(st.sampled_from(special).map(H), bits.map(lambda u: np.uint16(u).view(np.float16)))


def _foldable(src: dict[str, np.ndarray], source: np.ndarray, m: int, n: int) -> bool:
    """Whether every position the source adds to more than once has one f16 addend giving its result.

    Brute force over all 65536 f16 values: the oracle for the importer's refusal.
    """
    from collections import Counter

    count = Counter((r, c) for r, c, _ in _source_entries(src, m))
    bare = _source_dequant(dict(src, row_offsets=np.zeros(m + 1, np.int32), col_vals=np.zeros(0, np.int32)), m, n)
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    for (r, c), k in count.items():
        if k > 1:
            with np.errstate(over="ignore", invalid="ignore"):
                got = (np.float32(bare[r, c]) + every).astype(np.float16)
            if not _same16(got, np.full(got.shape, source[r, c])).any():
                return False
    return True


def test_spqr_quant_decode_bit_exact_property(tmp_path):
    """Random codes, statistics (any f16, NaN/inf included), outliers (duplicates, padding): decode == source."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    f16s = _f16_values()

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
    @given(data=st.data(), K=st.integers(1, 2), G=st.integers(1, 2), ptcsr=st.booleans(), perm=st.booleans(),
           seed=st.integers(0, 2**31 - 1))
    def check(data, K, G, ptcsr, perm, seed):
        m, n = 16 * K, 16 * G
        rng = np.random.default_rng(seed)
        stat = [np.array(data.draw(st.lists(f16s, min_size=G * K, max_size=G * K)), np.float16).reshape(G, K)
                for _ in range(4)]
        n_ent = data.draw(st.integers(0, 40))
        ent_rows = rng.integers(0, m, n_ent)
        ent_cols = np.where(rng.random(n_ent) < 0.3, 0, rng.integers(0, n, n_ent))  # column 0 meets padding
        ent_vals = data.draw(st.lists(f16s, min_size=n_ent, max_size=n_ent))
        if n_ent > 2 and data.draw(st.booleans()):  # duplicate positions
            ent_rows[1], ent_cols[1] = ent_rows[0], ent_cols[0]
        entries = list(zip(ent_rows.tolist(), ent_cols.tolist(), [H(v) for v in ent_vals], strict=True))
        codes = rng.integers(0, 8, (m, n))
        sc, zc = rng.integers(0, 8, (G, m)), rng.integers(0, 8, (G, m))
        p = rng.permutation(n) if perm else None
        src = _pack_spqr_quant(m, n, codes, sc, zc, *stat, entries, p, ptcsr)
        layer = sq.unpack_layer(src["dense_weights"], src["row_offsets"], src["col_vals"], src.get("in_perm"), m, n)
        source = _source_dequant(src, m, n)
        if _foldable(src, source, m, n):
            ours, _, _ = _decode_v2(tmp_path, layer)
            assert _same16(ours, _input_order(source, p)).all()
        else:
            with pytest.raises(NotRepresentable, match="no single f16 addend"):
                sq.to_spqr_sections(layer)

    check()


def _spqr_quant_folder(tmp_path, rng, perm=True):
    """A tiny Llama folder in spqr_quant's HF layout (quantized q/k/v/o/gate/up/down, raw rest)."""
    from transformers import LlamaConfig

    hidden, inter, layers, vocab = 64, 128, 2, 96
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      max_position_embeddings=64)
    shapes = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
              "self_attn.o_proj": (64, 64), "mlp.gate_proj": (128, 64), "mlp.up_proj": (128, 64),
              "mlp.down_proj": (64, 128)}
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    fields = {}
    qshapes = {}
    for i in range(layers):
        for mod, (m, n) in shapes.items():
            p = f"model.layers.{i}.{mod}"
            src, f = _write_spqr_quant_layer(rng, m, n, 0.02, perm, ptcsr=i == 1)
            fields[p] = (src, f, m, n)
            for role, arr in src.items():
                tensors[f"{p}.{role}"] = ("i64" if arr.dtype == np.int64 else "i32", arr)
                qshapes[f"{p}.{role}.shape"] = list(arr.shape)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{norm}.weight"] = ("f16", np.ones(hidden, np.float16))
    tensors["model.embed_tokens.weight"] = ("f16", (rng.standard_normal((vocab, hidden)) * 0.5).astype(np.float16))
    tensors["lm_head.weight"] = ("f16", (rng.standard_normal((vocab, hidden)) * 0.1).astype(np.float16))
    tensors["model.norm.weight"] = ("f16", np.ones(hidden, np.float16))
    d = tmp_path / "spqr_quant_model"
    d.mkdir()
    write_safetensors(d / "model.safetensors", tensors)
    conf = cfg.to_dict()
    conf["architectures"] = ["LlamaForCausalLM"]
    conf["quantization_config"] = {"quant_method": "spqr", "bits": 3, "beta1": 16, "beta2": 16,
                                   "shapes": qshapes, "modules_to_not_convert": ["lm_head"]}
    (d / "config.json").write_text(json.dumps(conf))
    return d, fields


def test_spqr_quant_checkpoint_import_and_decode(tmp_path):
    rng = np.random.default_rng(3)
    d, fields = _spqr_quant_folder(tmp_path, rng)
    out = tmp_path / "imported.spqr"
    rep = sq.import_spqr_quant(d, out)
    assert len(rep.quantized) == 14 and "lm_head.weight" in rep.raw
    spqrfmt.validate(out)
    total = 0
    with spqrfmt.open(out) as f:
        assert "quantization_config" not in json.loads(f.metadata["hf.config"])
        for p, (src, fld, m, n) in fields.items():
            t = f[f"{p}.weight"]
            assert t.codec == "spqr" and t.codec_version == 2 and t.shape == (m, n)
            assert t.params == sq.PARAMS
            ours = t.decode("f16")                          # input-feature order
            assert _same16(ours, _input_order(_source_dequant(src, m, n), fld["perm"])).all()
            assert t.decode().dtype == np.float32 and _same16(t.decode(), ours).all()  # f32 holds f16 values
            np.testing.assert_array_equal(t.arrays()["outlier_val"].view(np.uint16), fld["vals"].view(np.uint16))
            total += ours.size
    assert rep.checked == total and rep.outliers == sum(x[1]["vals"].size for x in fields.values())


def test_spqr_quant_model_runs(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from spqrfmt.model import load_model

    rng = np.random.default_rng(4)
    d, _ = _spqr_quant_folder(tmp_path, rng, perm=False)  # no in_perm: shapes come from the architecture
    out = tmp_path / "m.spqr"
    sq.import_spqr_quant(d, out)
    model = load_model(out, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 96) and torch.isfinite(logits).all()


def test_spqr_quant_rejects_other_configs(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "spqr", "bits": 4}}))
    with pytest.raises(ValueError, match="bits=3"):
        sq.import_spqr_quant(d, tmp_path / "x.spqr")
    with pytest.raises(ValueError, match="multiples of 16"):
        sq.unpack_layer(np.zeros(4, np.int64), np.zeros(9, np.int32), np.zeros(0, np.int32), None, 8, 8)


# ---- SqueezeLLM --------------------------------------------------------------------------

sqz = pytest.importorskip("spqrfmt.importers.squeezellm")


def _pack_squeezellm(intweight: np.ndarray, bits: int) -> np.ndarray:
    """SqueezeLLM's qweight layout, written word by word: [in*b/32, out] int32, packed down each column."""
    iw = intweight.T.astype(np.uint32)  # [in, out]
    n, m = iw.shape
    q = np.zeros((n // 32 * bits, m), dtype=np.uint32)
    i = row = 0
    while row < q.shape[0]:
        if bits == 4:
            for j in range(8):
                q[row] |= iw[i + j] << (4 * j)
            i, row = i + 8, row + 1
        else:  # 3 bits: 10 codes, a split code, 10 codes, a split code, 10 codes per 3 words
            for j in range(10):
                q[row] |= iw[i + j] << (3 * j)
            i += 10
            q[row] |= (iw[i] << 30) & 0xFFFFFFFF
            q[row + 1] |= (iw[i] >> 2) & 1
            i += 1
            for j in range(10):
                q[row + 1] |= iw[i + j] << (3 * j + 1)
            i += 10
            q[row + 1] |= (iw[i] << 31) & 0xFFFFFFFF
            q[row + 2] |= (iw[i] >> 1) & 3
            i += 1
            for j in range(10):
                q[row + 2] |= iw[i + j] << (3 * j + 2)
            i, row = i + 10, row + 3
    return q.view(np.int32)


def _squeeze_layer(rng, m, n, bits, density, f16_vals=True):
    idx = rng.integers(0, 1 << bits, (m, n))
    lut = np.sort(rng.standard_normal((m, 1 << bits)).astype(np.float16), axis=1).astype(np.float32)
    mask = rng.random((m, n)) < density
    r, c = np.nonzero(mask)
    vals = rng.standard_normal(r.size).astype(np.float32)
    if f16_vals:
        vals = vals.astype(np.float16).astype(np.float32)
    rows = np.zeros(m + 1, np.int32)
    np.cumsum(np.bincount(r, minlength=m), out=rows[1:])
    return idx, lut, rows, c.astype(np.int32), vals


@pytest.mark.parametrize("bits", [3, 4])
def test_squeezellm_layer_bit_exact(bits):
    rng = np.random.default_rng(bits)
    m, n = 24, 96
    idx, lut, rows, cols, vals = _squeeze_layer(rng, m, n, bits, 0.02)
    qweight = _pack_squeezellm(idx, bits)
    params, secs, shape, dl, dv = sqz.to_squeezellm_sections(qweight, lut, rows, cols, vals, name="l")
    assert shape == (m, n) and params == {"bits": bits} and dl == dv == 0.0
    from spqrfmt.decoder.spqr import unpack_rows

    np.testing.assert_array_equal(unpack_rows(secs["codes"], n, bits), idx)  # indices survive bit for bit
    # independent reference: table lookup plus one f32 add per residual
    ref = lut[np.arange(m)[:, None], idx].astype(np.float32)
    for rr in range(m):
        for e in range(rows[rr], rows[rr + 1]):
            ref[rr, cols[e]] = np.float32(ref[rr, cols[e]] + vals[e])
    np.testing.assert_array_equal(sqz.reference_dequantize(qweight, lut, rows, cols, vals).view(np.uint32),
                                  ref.view(np.uint32))
    from spqrfmt.codecs import squeezellm as codec
    from spqrfmt.records import TensorRecord

    rec = TensorRecord("l.weight", shape, "f16", "squeezellm", 1, params, {})
    ours = codec.CODEC.decode(rec, secs)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_squeezellm_checkpoint_import(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    m, n = 32, 64
    idx, lut, rows, cols, vals = _squeeze_layer(rng, m, n, 4, 0.03)
    state = {"model.layers.0.mlp.up_proj.qweight": torch.from_numpy(_pack_squeezellm(idx, 4)),
             "model.layers.0.mlp.up_proj.lookup_table": torch.from_numpy(lut),
             "model.layers.0.mlp.up_proj.rows": torch.from_numpy(rows),
             "model.layers.0.mlp.up_proj.cols": torch.from_numpy(cols),
             "model.layers.0.mlp.up_proj.vals": torch.from_numpy(vals),
             "model.norm.weight": torch.ones(n, dtype=torch.float16)}
    torch.save(state, tmp_path / "sq.pt")
    rep = sqz.import_squeezellm(tmp_path / "sq.pt", tmp_path / "sq.spqr")
    assert rep.lossless and rep.residuals == vals.size and rep.raw == ["model.norm.weight"]
    spqrfmt.validate(tmp_path / "sq.spqr")
    with spqrfmt.open(tmp_path / "sq.spqr") as f:
        t = f["model.layers.0.mlp.up_proj.weight"]
        assert t.codec == "squeezellm" and t.shape == (m, n)
        ref = sqz.reference_dequantize(_pack_squeezellm(idx, 4), lut, rows, cols, vals)
        np.testing.assert_array_equal(t.decode().view(np.uint32), ref.view(np.uint32))
        np.testing.assert_array_equal(f["model.norm.weight"].decode(), np.ones(n, np.float16))


def test_squeezellm_refuses_silent_rounding(tmp_path):
    rng = np.random.default_rng(5)
    idx, lut, rows, cols, vals = _squeeze_layer(rng, 8, 32, 4, 0.1, f16_vals=False)
    q = _pack_squeezellm(idx, 4)
    with pytest.raises(sqz.NotRepresentable, match=r"l\.vals: .* not representable in f16"):
        sqz.to_squeezellm_sections(q, lut, rows, cols, vals, name="l")
    lut_bad = lut.copy()
    lut_bad[0, 0] = 0.1  # not an f16 value
    with pytest.raises(sqz.NotRepresentable, match="lookup_table"):
        sqz.to_squeezellm_sections(q, lut_bad, None, None, None, name="l")
    *_, dl, dv = sqz.to_squeezellm_sections(q, lut_bad, rows, cols, vals, name="l", allow_lossy=True)
    assert 0 < dl < 1e-4 and 0 < dv < 1e-2


# ---- QuIP# (E8P12 -> quip v2, HI4B1C -> quip v1/v2) ----------------------------------------

qs = pytest.importorskip("spqrfmt.importers.quipsharp")


_ST_DTYPES = {"f16": "F16", "f32": "F32", "i64": "I64", "i32": "I32"}


def _write_st(path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """A minimal safetensors writer (8-byte header length, JSON header, raw data), 0-d tensors kept 0-d
    as QuIP#'s ``Wscale`` and ``codebook_id`` are."""
    header, blobs, pos = {}, [], 0
    for name, (dt, arr) in tensors.items():
        b = np.asarray(arr).astype(np.asarray(arr).dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _ST_DTYPES[dt], "shape": list(np.shape(arr)), "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb + b"".join(blobs))


def _pack_hi4b1c(idx: np.ndarray) -> np.ndarray:
    """QuIP#'s HI4B1C packing: 8 indices per int32, nibbles (top down) hold indices 0,2,4,6,1,3,5,7."""
    m, n = idx.shape
    out = np.zeros((m, n // 8), dtype=np.uint32)
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    for g in range(n // 8):
        for r in range(m):
            word = 0
            for slot, j in enumerate(order):
                word |= int(idx[r, 8 * g + j]) << (4 * (7 - slot))
            out[r, g] = word
    return out.view(np.int32)


def _hadamard(d):
    h = np.array([[1.0]])
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h


def _e8p_tile_positions(m: int, n: int):
    """(word index, k, row, 8-column group) of every code in QuIP#'s tiled E8P12 Qidxs, word by word."""
    w = 0
    for a in range(m // 16):
        for c in range(n // 64):
            for b in range(8):
                for d in range(4):
                    for k in range(4):
                        yield w, k, 16 * a + 2 * b + (k & 1), 8 * c + 2 * d + (k >> 1)
                    w += 1


def _pack_e8p(codes: np.ndarray) -> np.ndarray:
    """QuIP#'s packed E8P12 Qidxs (int64 [m, n/32]) from 16-bit codes [m, n/8]: abs bytes low, signs interleaved."""
    m, n = codes.shape[0], codes.shape[1] * 8
    words = [0] * (m * n // 32)
    for w, k, r, g in _e8p_tile_positions(m, n):
        c = int(codes[r, g])
        words[w] |= (c >> 8) << (8 * k)
        for j in range(8):
            words[w] |= ((c >> j) & 1) << (32 + 4 * j + k)
    return np.array(words, dtype=np.uint64).view(np.int64).reshape(m, n // 32)


def _e8p_source_values(qidxs: np.ndarray, m: int, n: int) -> np.ndarray:
    """QuIP#'s decompression of packed E8P12 words, re-enacted (f16 [m, n]).

    As its CUDA kernel does it: a 256-entry table of 8 nibbles per int32 (columns in the order
    0,2,4,6,1,3,5,7, value 2A + 8, column 7 negated for rows with odd sum), a sign flip as
    ``nibble XOR 14`` per set sign bit (after fixing bit 0 by the parity of each code's sign
    byte), and the value as the f16 sum of bits ``0x5008 | nibble << 4`` (= 32.25 + nibble / 2)
    and -36 (parity 0) or -36.5 (parity 1).
    """
    from spqrfmt.decoder.e8p import abs_table

    alpha = abs_table().astype(np.int64)
    col_of_nibble = [0, 2, 4, 6, 1, 3, 5, 7]
    packed = []
    for row in alpha:
        odd = (row.sum() // 2) % 2
        word = 0
        for j, col in enumerate(col_of_nibble):
            nib = 8 - row[col] if (col == 7 and odd) else 8 + row[col]
            word |= int(nib) << (4 * j)
        packed.append(word)
    f16 = np.float16
    base = np.array([0xD080, 0xD090], np.uint16).view(f16)  # -36.0, -36.5
    out = np.zeros((m, n), dtype=np.float16)
    flat = qidxs.reshape(-1).view(np.uint64)
    for w, k, r, g in _e8p_tile_positions(m, n):
        lo, hi = int(flat[w]) & 0xFFFFFFFF, int(flat[w]) >> 32
        s = hi ^ (hi >> 4)
        s ^= s >> 8
        s ^= s >> 16
        sb = s & 15
        s = hi ^ sb
        x = packed[(lo >> (8 * k)) & 255] ^ (((s >> k) & 0x11111111) * 14)
        for j, col in enumerate(col_of_nibble):
            h = np.array([0x5008 | (((x >> (4 * j)) & 15) << 4)], np.uint16).view(f16)[0]
            out[r, 8 * g + col] = f16(h + base[(sb >> k) & 1])
    return out


def _e8p_layer(rng, m: int, n: int, tuned: bool):
    """Random codes and the SU/SV/Wscale fields of one QuIP# E8P12 layer (SV carries Wscale; tuned = real)."""
    codes = rng.integers(0, 1 << 16, (m, n // 8)).astype(np.uint16)
    if tuned:
        su = (rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n)).astype(np.float16)
        sv = (rng.choice([-1.0, 1.0], m) * rng.uniform(0.005, 0.02, m)).astype(np.float16)
    else:
        su = rng.choice([-1.0, 1.0], n).astype(np.float16)
        sv = (rng.choice([-1.0, 1.0], m) * 0.0123).astype(np.float16)
    return codes, su, sv


def test_quipsharp_e8p_tiling_round_trip():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 1 << 16, (32, 16)).astype(np.uint16)
    q = _pack_e8p(codes)
    assert q.dtype == np.int64 and q.shape == (32, 4)
    np.testing.assert_array_equal(qs.untile_e8p(q, 32, 128), codes)
    from spqrfmt.decoder.quip import e8p_values

    # the spec's code -> point rule (§10.4) against the re-enacted source kernel, every value exactly
    got = e8p_values(codes, np.ones(32, np.float32), 128)
    np.testing.assert_array_equal(got, _e8p_source_values(q, 32, 128).astype(np.float32))


def test_quipsharp_e8p12_import(tmp_path):
    rng = np.random.default_rng(2)
    m, n = 32, 128
    layers = {"model.layers.0.mlp.down_proj": _e8p_layer(rng, m, n, tuned=False),
              "model.layers.0.mlp.up_proj": _e8p_layer(rng, m, n, tuned=True)}
    tensors = {"model.norm.weight": ("f16", np.ones(n, np.float16))}
    for pre, (codes, su, sv) in layers.items():
        tensors.update({f"{pre}.Qidxs": ("i64", _pack_e8p(codes)), f"{pre}.SU": ("f16", su),
                        f"{pre}.SV": ("f16", sv), f"{pre}.Wscale": ("f16", np.array(1.0, np.float16)),
                        f"{pre}.codebook_id": ("i64", np.array(7, np.int64))})
    d = tmp_path / "quip"
    d.mkdir()
    _write_st(d / "model.safetensors", tensors)
    qp = {"codebook": "E8P12", "codebook_version": 1, "codesz": 8}
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quip_params": qp}))
    rep = qs.import_quipsharp(d, tmp_path / "q.spqr")
    assert sorted(rep.quantized) == sorted(f"{p}.weight" for p in layers) and rep.raw == ["model.norm.weight"]
    assert set(rep.versions.values()) == {2}
    spqrfmt.validate(tmp_path / "q.spqr")
    with spqrfmt.open(tmp_path / "q.spqr") as f:
        for pre, (codes, su, sv) in layers.items():
            t = f[f"{pre}.weight"]
            assert t.codec == "quip" and t.codec_version == 2
            assert t.params == {"codebook": "e8p12", "log2_hn": 7, "log2_hm": 5}
            a = t.arrays()
            np.testing.assert_array_equal(a["codes"], codes)  # codes bit for bit
            assert _pack_e8p(a["codes"]).tobytes() == tensors[f"{pre}.Qidxs"][1].tobytes()  # Qidxs rebuilt
            assert a["sv"].dtype == np.float16 and a["sv"].tobytes() == sv.tobytes()  # SV (with Wscale) exact
            if pre.endswith("up_proj"):
                assert a["su"].dtype == np.float16 and a["su"].tobytes() == su.tobytes()
            else:
                assert a["su"].dtype == np.int8 and np.array_equal(a["su"], su.astype(np.int8))
            assert np.all(a["scale"] == 1.0)
            # QuIP#'s effective weight diag(SV * Wscale) Had_m G Had_n diag(SU), G from its own decompression
            G = _e8p_source_values(_pack_e8p(codes), m, n).astype(np.float64)
            ref = (sv.astype(np.float64)[:, None] * (_hadamard(m) / np.sqrt(m)) @ G @ (_hadamard(n) / np.sqrt(n))
                   * su.astype(np.float64)[None, :])
            got = t.decode().astype(np.float64)
            assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()  # exact up to f32 rounding
        assert json.loads(f.metadata["source.quip_params"]) == qp


def test_quipsharp_e8p12_model_runs(tmp_path):
    """An unfused E8P12 Llama checkpoint imports and runs through load_model (decode path)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import LlamaConfig

    from spqrfmt.model import load_model

    rng = np.random.default_rng(8)
    hidden, vocab = 64, 96
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      max_position_embeddings=64)
    shapes = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
              "self_attn.o_proj": (64, 64), "mlp.gate_proj": (128, 64), "mlp.up_proj": (128, 64),
              "mlp.down_proj": (64, 128)}
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    for mod, (m, n) in shapes.items():
        p = f"model.layers.0.{mod}"
        codes, su, sv = _e8p_layer(rng, m, n, tuned=True)
        tensors.update({f"{p}.Qidxs": ("i64", _pack_e8p(codes)), f"{p}.SU": ("f16", su), f"{p}.SV": ("f16", sv),
                        f"{p}.Wscale": ("f16", np.array(1.0, np.float16)),
                        f"{p}.codebook_id": ("i64", np.array(7, np.int64))})
    for norm in ("model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm", "model.norm"):
        tensors[f"{norm}.weight"] = ("f16", np.ones(hidden, np.float16))
    tensors["model.embed_tokens.weight"] = ("f16", (rng.standard_normal((vocab, hidden)) * 0.5).astype(np.float16))
    tensors["lm_head.weight"] = ("f16", (rng.standard_normal((vocab, hidden)) * 0.1).astype(np.float16))
    d = tmp_path / "quip_llama"
    d.mkdir()
    _write_st(d / "model.safetensors", tensors)
    conf = cfg.to_dict()
    conf["architectures"] = ["LlamaForCausalLM"]
    conf["quip_params"] = {"codebook": "E8P12", "codebook_version": 1}
    (d / "config.json").write_text(json.dumps(conf))
    rep = qs.import_quipsharp(d, tmp_path / "m.spqr")
    assert len(rep.quantized) == 7
    model = load_model(tmp_path / "m.spqr", dtype=torch.float32)
    assert model.spqr_load_report.decoded_layers and not model.spqr_load_report.skipped
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, vocab) and torch.isfinite(logits).all()


def test_quipsharp_hi4b1c_import(tmp_path):
    rng = np.random.default_rng(2)
    m, n = 32, 64
    idx = rng.integers(0, 16, (m, n))
    su = rng.choice([-1.0, 1.0], n).astype(np.float16)
    sv = (rng.choice([-1.0, 1.0], m) * 0.75).astype(np.float16)  # |SV| constant (Wscale fused into SV)
    wscale = np.float32(0.0123)
    pre = "model.layers.0.mlp.down_proj"
    tensors = {f"{pre}.Qidxs": ("i32", _pack_hi4b1c(idx)), f"{pre}.SU": ("f16", su), f"{pre}.SV": ("f16", sv),
               f"{pre}.Wscale": ("f32", np.array(wscale, np.float32)),
               f"{pre}.codebook_id": ("i64", np.array(10, np.int64)),
               "model.norm.weight": ("f16", np.ones(n, np.float16))}
    d = tmp_path / "quip"
    d.mkdir()
    _write_st(d / "model.safetensors", tensors)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quip_params": {"codebook": "HI4B1C"}}))
    rep = qs.import_quipsharp(d, tmp_path / "q.spqr")
    assert rep.quantized == [f"{pre}.weight"] and rep.raw == ["model.norm.weight"]
    spqrfmt.validate(tmp_path / "q.spqr")
    # QuIP#'s effective weight, from its definition, written independently here
    G = idx.astype(np.float64) - 7.5
    ref = (sv.astype(np.float64)[:, None] * (_hadamard(m) / np.sqrt(m)) @ (float(wscale) * G)
           @ (_hadamard(n) / np.sqrt(n)) * su.astype(np.float64)[None, :])
    np.testing.assert_allclose(qs.reference_weight(_pack_hi4b1c(idx), su, sv, float(wscale)), ref, rtol=0, atol=1e-12)
    with spqrfmt.open(tmp_path / "q.spqr") as f:
        t = f[f"{pre}.weight"]
        assert t.codec == "quip" and t.codec_version == 1 and t.params == {"bits": 4, "log2_hn": 6, "log2_hm": 5}
        from spqrfmt.decoder.spqr import unpack_rows

        np.testing.assert_array_equal(unpack_rows(t.arrays()["codes"], n, 4), idx)  # indices bit for bit
        got = t.decode().astype(np.float64)
        assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()  # exact up to f32 rounding
        assert json.loads(f.metadata["source.quip_params"]) == {"codebook": "HI4B1C"}


def test_quipsharp_hi4b1c_fine_tuned_goes_to_v2_grid():
    """Real-valued SU/SV (fine-tuned) no longer fit v1's signs: v2 "grid" keeps them as f16 diagonals."""
    rng = np.random.default_rng(6)
    m, n = 16, 32
    idx = rng.integers(0, 16, (m, n))
    su = rng.uniform(-1.5, 1.5, n).astype(np.float16)
    sv = rng.uniform(-0.02, 0.02, m).astype(np.float16)
    qt = qs.to_quip_sections(_pack_hi4b1c(idx), su, sv, np.float32(0.5), 10, n, name="l")
    assert qt.codec_version == 2 and qt.params == {"codebook": "grid", "bits": 4, "log2_hn": 5, "log2_hm": 4}
    assert qt.sections["su"].tobytes() == su.tobytes() and qt.sections["sv"].tobytes() == sv.tobytes()
    from spqrfmt.codecs import quip as codec
    from spqrfmt.records import TensorRecord

    rec = TensorRecord("l.weight", qt.shape, "f16", "quip", 2, qt.params, {})
    got = codec.CODEC.decode(rec, qt.sections).astype(np.float64)
    ref = qs.reference_weight(_pack_hi4b1c(idx), su, sv, 0.5)
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()


def test_quipsharp_not_representable_cases(tmp_path):
    one16, one_n = np.ones(16, np.float16), np.ones(64, np.float16)
    q = _pack_e8p(np.zeros((16, 8), np.uint16))
    for cid, name in ((0, "D4"), (5, "unknown")):
        with pytest.raises(qs.NotRepresentable, match=rf"l\.codebook_id = {cid} \({name}\)"):
            qs.to_quip_sections(q, one_n, one16, 1.0, cid, 64, name="l")
    with pytest.raises(qs.NotRepresentable, match=r"l\.Qidxs"):  # codebook version 0: int16, one code per entry
        qs.to_quip_sections(np.zeros((16, 8), np.int16), one_n, one16, 1.0, 7, 64, name="l")
    with pytest.raises(qs.NotRepresentable, match=r"l\.Qidxs"):  # m not a multiple of 16
        qs.to_quip_sections(np.zeros((8, 2), np.int64), one_n, np.ones(8, np.float16), 1.0, 7, 64, name="l")
    with pytest.raises(qs.NotRepresentable, match=r"out_features = 48 = 12 \* 4: .*H_12 .*--hadamard"):
        qs.to_quip_sections(np.zeros((48, 2), np.int64), one_n, np.ones(48, np.float16), 1.0, 7, 64, name="l")
    with pytest.raises(qs.NotRepresentable, match=r"out_features = 6: QuIP# has no Hadamard transform"):
        qs.to_quip_sections(np.zeros((6, 2), np.int64), one_n, np.ones(6, np.float16), 1.0, 7, 64, name="l")
    with pytest.raises(qs.NotRepresentable, match=r"l\.Wscale"):
        qs.to_quip_sections(q, one_n, one16, np.float64(0.1), 7, 64, name="l")

    def folder(extra: dict, qp: dict | None = None):
        pre = "model.layers.0.self_attn.qkv_proj"
        t = {f"{pre}.Qidxs": ("i64", q), f"{pre}.SU": ("f16", one_n), f"{pre}.SV": ("f16", one16),
             f"{pre}.codebook_id": ("i64", np.array(7, np.int64))}
        t.update({f"{pre}.{k}": v for k, v in extra.items()})
        d = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        _write_st(d / "model.safetensors", t)
        (d / "config.json").write_text(json.dumps({"quip_params": qp or {"codebook_version": 1}}))
        return d

    cases = [({"fuse_scales": ("f16", np.array([1.0, 0.5, 0.5], np.float16))}, None,
              r"qkv_proj\.fuse_scales: fused layer of 3 parts, but its split is unknown"),
             ({"scaleWH": ("f32", np.full(64, 2.0, np.float32))}, None, r"qkv_proj\.scaleWH"),
             ({"A": ("f16", np.ones((16, 2), np.float16))}, None, r"qkv_proj\.A"),
             ({}, {"codebook": "E8P12"}, r"quip_params\.codebook_version = 0")]
    for extra, qp, msg in cases:
        d = folder(extra, qp)
        with pytest.raises(qs.NotRepresentable, match=msg):
            qs.import_quipsharp(d, tmp_path / "x.spqr")
        assert not (tmp_path / "x.spqr").exists()
    d = folder({"scaleWH": ("f32", np.ones(64, np.float32))})  # all-ones scaleWH changes nothing: accepted
    assert qs.import_quipsharp(d, tmp_path / "ok.spqr").raw == []


def _pack_e81b_bytes(codes2: np.ndarray) -> np.ndarray:
    """QuIP#'s E8P12RVQ3B residual plane: int64 [m, n/64], byte i (from the least significant) of word j = the
    code of 8-column group 8j + i."""
    m, groups = codes2.shape
    out = np.zeros((m, groups // 8), dtype=np.uint64)
    for r in range(m):
        for j in range(groups // 8):
            word = 0
            for i in range(8):
                word |= int(codes2[r, 8 * j + i]) << (8 * i)
            out[r, j] = word
    return out.view(np.int64)


@functools.lru_cache(maxsize=1)
def _e81b_source_grid() -> np.ndarray:
    """QuIP#'s 3-bit residual grid re-enacted from its description: points of Z^8 then (Z + 1/2)^8 with coordinates
    in [-4, 4), even sum and squared norm <= 2 (enumeration order, last coordinate fastest), then 2 e_i for i < 8
    and -2 e_i for i < 7. Only coordinates in {-1, 0, 1} / {-1/2, 1/2} can have squared norm <= 2, so those
    values (in the same order) are enumerated: the same points, without a 2 x 8^8-point grid."""
    pts = []
    for values in (np.arange(-1, 2, dtype=np.float64), np.array([-0.5, 0.5])):
        grid = np.stack(np.meshgrid(*[values] * 8, indexing="ij"), axis=-1).reshape(-1, 8)
        keep = (grid.sum(axis=1) % 2 == 0) & ((grid ** 2).sum(axis=1) <= 2)
        pts.append(grid[keep])
    pts.append(2 * np.eye(8))
    pts.append(-2 * np.eye(8)[:7])
    return np.concatenate(pts)


def _e81b_source_values(words: np.ndarray, m: int, n: int) -> np.ndarray:
    """QuIP#'s E81B decompression re-enacted: 8 byte codes per int64 word, low byte first, each an 8-vector."""
    grid = _e81b_source_grid()
    w = np.ascontiguousarray(words).view(np.uint64)
    out = np.zeros((m, n))
    for r in range(m):
        for j in range(w.shape[1]):
            for i in range(8):
                g = 8 * j + i
                out[r, 8 * g:8 * g + 8] = grid[(int(w[r, j]) >> (8 * i)) & 255]
    return out


@pytest.mark.parametrize("cid", [17, 18])
def test_quipsharp_rvq_import(tmp_path, cid):
    """E8P12RVQ4B / E8P12RVQ3B -> quip v2 e8p12_rvq4 / e8p12_rvq3: codes bit for bit, decode = QuIP# in float64."""
    rng = np.random.default_rng(20 + cid)
    m, n = 32, 128
    layers = {"model.layers.0.mlp.down_proj": _e8p_layer(rng, m, n, tuned=False),
              "model.layers.0.mlp.up_proj": _e8p_layer(rng, m, n, tuned=True)}
    second = {}
    tensors = {"model.norm.weight": ("f16", np.ones(n, np.float16))}
    for pre, (codes, su, sv) in layers.items():
        if cid == 17:
            c2 = rng.integers(0, 1 << 16, (m, n // 8)).astype(np.uint16)
            q2 = _pack_e8p(c2)
        else:
            c2 = rng.integers(0, 256, (m, n // 8)).astype(np.uint8)
            q2 = _pack_e81b_bytes(c2)
        second[pre] = c2
        tensors.update({f"{pre}.Qidxs": ("i64", np.concatenate([_pack_e8p(codes), q2], axis=1)),
                        f"{pre}.SU": ("f16", su), f"{pre}.SV": ("f16", sv),
                        f"{pre}.Wscale": ("f32", np.array(1.0, np.float32)),
                        f"{pre}.codebook_id": ("i64", np.array(cid, np.int64))})
    for override in (None, 2.5):
        d = tmp_path / f"quip{override}"
        d.mkdir()
        _write_st(d / "model.safetensors", tensors)
        qp = {"codebook": "E8P12RVQ4B" if cid == 17 else "E8P12RVQ3B", "codebook_version": 1 if cid == 17 else 0}
        if override:
            qp["resid_scale_override"] = override
        (d / "config.json").write_text(json.dumps({"model_type": "llama", "quip_params": qp}))
        out = tmp_path / f"q{override}.spqr"
        qs.import_quipsharp(d, out)
        spqrfmt.validate(out)
        rho = override or (3.45 if cid == 17 else 2.04)
        with spqrfmt.open(out) as f:
            for pre, (codes, su, sv) in layers.items():
                t = f[f"{pre}.weight"]
                assert t.codec_version == 2 and t.params == {
                    "codebook": "e8p12_rvq4" if cid == 17 else "e8p12_rvq3", "resid_scale": float(np.float32(rho)),
                    "log2_hn": 7, "log2_hm": 5}
                a = t.arrays()
                np.testing.assert_array_equal(a["codes"], codes)
                np.testing.assert_array_equal(a["codes2"], second[pre])
                q = tensors[f"{pre}.Qidxs"][1]
                G0 = _e8p_source_values(np.ascontiguousarray(q[:, : n // 32]), m, n).astype(np.float64)
                rest = np.ascontiguousarray(q[:, n // 32:])
                G1 = (_e8p_source_values(rest, m, n).astype(np.float64) if cid == 17 else
                      _e81b_source_values(rest, m, n))
                ref = _quip_effective(G0 + G1 / rho, su, sv, 1.0, None, None)
                got = t.decode().astype(np.float64)
                assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()


def test_quipsharp_rvq_refusals(tmp_path):
    one16, one_n = np.ones(16, np.float16), np.ones(64, np.float16)
    with pytest.raises(qs.NotRepresentable, match=r"l\.Qidxs: .*E8P12RVQ4B"):  # E8P12-sized Qidxs for RVQ4B
        qs.to_quip_sections(np.zeros((16, 2), np.int64), one_n, one16, 1.0, 17, 64, name="l")
    with pytest.raises(qs.NotRepresentable, match=r"l\.Qidxs: .*E8P12RVQ3B"):
        qs.to_quip_sections(np.zeros((16, 4), np.int64), one_n, one16, 1.0, 18, 64, name="l")
    with pytest.raises(qs.NotRepresentable, match=r"residual scale"):
        qs.to_quip_sections(np.zeros((16, 3), np.int64), one_n, one16, 1.0, 18, 64, name="l", resid_scale=1e6)
    pre = "model.layers.0.mlp.down_proj"
    d = tmp_path / "v"
    d.mkdir()
    _write_st(d / "model.safetensors", {f"{pre}.Qidxs": ("i64", np.zeros((16, 3), np.int64)),
                                        f"{pre}.SU": ("f16", one_n), f"{pre}.SV": ("f16", one16),
                                        f"{pre}.codebook_id": ("i64", np.array(18, np.int64))})
    (d / "config.json").write_text(json.dumps({"quip_params": {"codebook_version": 1}}))
    with pytest.raises(qs.NotRepresentable, match=r"codebook_version = 1: only E8P12RVQ3B codebook version 0"):
        qs.import_quipsharp(d, tmp_path / "x.spqr")


def _paley12() -> np.ndarray:
    """A Hadamard matrix of order 12 by Paley's first construction (q = 11): I + [[0, 1ᵀ], [-1, Q]],
    Q[i, j] = chi(j - i) the quadratic character of GF(11). Not symmetric, so orientation matters."""
    squares = {(x * x) % 11 for x in range(1, 11)}
    chi = [0] + [1 if a in squares else -1 for a in range(1, 11)]
    s = np.zeros((12, 12), np.int64)
    s[0, 1:], s[1:, 0] = 1, -1
    s[1:, 1:] = [[chi[(j - i) % 11] for j in range(11)] for i in range(11)]
    h = np.eye(12, dtype=np.int64) + s
    assert np.array_equal(h @ h.T, 12 * np.eye(12, dtype=np.int64)) and not np.array_equal(h, h.T)
    return h


def _quip_had(x: np.ndarray, hk: np.ndarray | None) -> np.ndarray:
    """QuIP#'s Hadamard transform of the last axis, re-enacted in float64: butterflies (a, b) -> (a + b, a - b)
    on adjacent entries until K entries of stride d/K remain, then ``hk`` applied on that slow index, / sqrt(d)."""
    d = x.shape[-1]
    k = 1 if hk is None else hk.shape[0]
    y = x.reshape(-1, d, 1).astype(np.float64)
    while y.shape[1] > k:
        y = y.reshape(y.shape[0], y.shape[1] // 2, 2, y.shape[2])
        y = np.concatenate([y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]], axis=-1)
    if hk is not None:
        y = np.einsum("ab,rbc->rac", hk.astype(np.float64), y)
    return y.reshape(x.shape) / np.sqrt(d)


def _quip_effective(g: np.ndarray, su, sv, wscale: float, hk_n, hk_m) -> np.ndarray:
    """W with y = W x for QuIP#'s forward y = SV * had(Wscale G had(SU * x, H_Kn^T), H_Km), applied to e_i."""
    n = g.shape[1]
    x = np.eye(n) * np.asarray(su, np.float64)[None, :]
    x = _quip_had(x, None if hk_n is None else hk_n.T)
    y = x @ (wscale * g).T
    y = _quip_had(y, hk_m) * np.asarray(sv, np.float64)[None, :]
    return y.T


@pytest.mark.parametrize("codebook", ["HI4B1C", "E8P12"])
def test_quipsharp_hadamard_k_import(tmp_path, codebook):
    """n, m = 12 * 2^k: a user-supplied H_12 becomes factor_n/factor_m = H_12 / sqrt(12); decode equals QuIP#."""
    rng = np.random.default_rng(11)
    h12 = _paley12()
    m, n = (24, 96) if codebook == "HI4B1C" else (48, 192)
    su = (rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n)).astype(np.float16)
    sv = (rng.choice([-1.0, 1.0], m) * rng.uniform(0.005, 0.02, m)).astype(np.float16)
    pre = "model.layers.0.mlp.down_proj"
    if codebook == "HI4B1C":
        idx = rng.integers(0, 16, (m, n))
        q, cid, g = ("i32", _pack_hi4b1c(idx)), 10, idx.astype(np.float64) - 7.5
    else:
        codes = rng.integers(0, 1 << 16, (m, n // 8)).astype(np.uint16)
        q, cid = ("i64", _pack_e8p(codes)), 7
        g = _e8p_source_values(q[1], m, n).astype(np.float64)
    d = tmp_path / "quip"
    d.mkdir()
    _write_st(d / "model.safetensors", {f"{pre}.Qidxs": q, f"{pre}.SU": ("f16", su), f"{pre}.SV": ("f16", sv),
                                        f"{pre}.codebook_id": ("i64", np.array(cid, np.int64))})
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quip_params": {"codebook_version": 1}}))
    with pytest.raises(qs.NotRepresentable, match=rf"in_features = {n} = 12 \* {n // 12}: .*H_12 of order K = 12.*"
                       r"--hadamard.*matmul_had\.py.*had\.12\."):
        qs.import_quipsharp(d, tmp_path / "x.spqr")
    assert not (tmp_path / "x.spqr").exists()
    hfile = tmp_path / "had.12.txt"
    if codebook == "HI4B1C":  # Sloane's format: rows of '+'/'-'
        hfile.write_text("\n".join("".join("+" if v > 0 else "-" for v in row) for row in h12) + "\n")
    else:  # +-1 integers
        hfile.write_text("\n".join(" ".join(str(int(v)) for v in row) for row in h12) + "\n")
    from spqrfmt.cli.import_ import run as cli_import
    from spqrfmt.importers import add_arguments

    ap = argparse.ArgumentParser()
    add_arguments(ap)
    # the test's Paley H_12 is a Hadamard matrix but not QuIP#'s own H_12: refused unless explicitly allowed
    with pytest.raises(ValueError, match=r"not the one QuIP# used \(QuIP#'s H_12 has sha256 c1be30fe.*"
                       r"get_had12\(\).*--allow-unverified-hadamard"):
        cli_import(ap.parse_args(["quipsharp", str(d), "-o", str(tmp_path / "q.spqr"), "--hadamard", str(hfile)]))
    assert not (tmp_path / "q.spqr").exists()
    assert cli_import(ap.parse_args(["quipsharp", str(d), "-o", str(tmp_path / "q.spqr"),
                                     "--hadamard", str(hfile), "--allow-unverified-hadamard"])) == 0
    spqrfmt.validate(tmp_path / "q.spqr")
    ref = _quip_effective(g, su, sv, 1.0, h12, h12)
    with spqrfmt.open(tmp_path / "q.spqr") as f:
        t = f[f"{pre}.weight"]
        assert t.codec == "quip" and t.params["log2_hn"] == (n // 12).bit_length() - 1
        assert t.params["log2_hm"] == (m // 12).bit_length() - 1
        fac = t.arrays()["factor_n"]
        assert fac.dtype == np.float32 and fac.shape == (12, 12)
        np.testing.assert_array_equal(t.arrays()["factor_m"], fac)
        assert np.abs(fac.astype(np.float64) * np.sqrt(12) - h12).max() < 1e-6
        got = t.decode().astype(np.float64)
        assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()
        assert set(json.loads(json.dumps(f.metadata["source.hadamard_sha256"]))) == {"12"}
    # the transposed table is also a Hadamard matrix but not QuIP#'s transform: the decode must differ
    wrong = _quip_effective(g, su, sv, 1.0, h12.T, h12.T)
    assert np.abs(wrong - ref).max() > 1e-2 * np.abs(ref).max()


def test_quipsharp_hadamard_file_checked(tmp_path):
    h = _paley12()
    bad = h.copy()
    bad[3, 5] = -bad[3, 5]
    cases = {"not_had.txt": ("\n".join("".join("+" if v > 0 else "-" for v in r) for r in bad),
                             r"not a Hadamard matrix \(H Hᵀ != 12 I\)"),
             "two.txt": ("1 2\n1 -1\n", r"two\.txt:1: entries must be \+1 or -1"),
             "rect.txt": ("++\n+-\n++\n", "not a square matrix"),
             "junk.txt": ("+x\n", r"junk\.txt:1: not a row")}
    for fname, (text, msg) in cases.items():
        (tmp_path / fname).write_text(text)
        with pytest.raises(ValueError, match=msg):
            qs.read_hadamard(tmp_path / fname)
    assert qs.quip_hadamard_order(11008) == 172 and qs.quip_hadamard_order(14336) == 28
    assert qs.quip_hadamard_order(28672) == 28 and qs.quip_hadamard_order(4096) == 1


def test_import_cli(tmp_path, capsys):
    import argparse

    from spqrfmt.cli.import_ import run as cli_import
    from spqrfmt.importers import add_arguments

    rng = np.random.default_rng(9)
    idx, lut, rows, cols, vals = _squeeze_layer(rng, 16, 64, 3, 0.05, f16_vals=False)
    write_safetensors(tmp_path / "sq.safetensors", {
        "l.qweight": ("i32", _pack_squeezellm(idx, 3)), "l.lookup_table": ("f32", lut), "l.rows": ("i32", rows),
        "l.cols": ("i32", cols), "l.vals": ("f32", vals)})
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["squeezellm", str(tmp_path / "sq.safetensors"), "-o", str(tmp_path / "o.spqr")])
    assert cli_import(args) == 1  # residuals are not f16 values: refused, nothing written
    assert "l.vals" in capsys.readouterr().err and not (tmp_path / "o.spqr").exists()
    args = p.parse_args(["squeezellm", str(tmp_path / "sq.safetensors"), "-o", str(tmp_path / "o.spqr"),
                         "--allow-lossy"])
    assert cli_import(args) == 0
    assert "LOSSY" in capsys.readouterr().out
    with spqrfmt.open(tmp_path / "o.spqr") as f:
        assert f["l.weight"].codec == "squeezellm" and f["l.weight"].params == {"bits": 3}


def test_quipsharp_hadamard_digest_table_accepts_the_listed_matrix(tmp_path, monkeypatch):
    """A supplied matrix whose digest is the listed one for its order is accepted without the override flag."""
    h12 = _paley12()
    hfile = tmp_path / "had.12.txt"
    hfile.write_text("\n".join("".join("+" if v > 0 else "-" for v in row) for row in h12) + "\n")
    assert qs.hadamard_sha256(h12) != qs.QUIPSHARP_HADAMARD_SHA256[12]
    monkeypatch.setitem(qs.QUIPSHARP_HADAMARD_SHA256, 12, qs.hadamard_sha256(h12))
    d = tmp_path / "empty"
    d.mkdir()
    # the matrix check runs before the checkpoint is read: an empty folder then fails on the missing shards
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        qs.import_quipsharp(d, tmp_path / "x.spqr", hadamard_files=[hfile])
    # every listed digest is of a matrix of the order it is listed under (64 hex digits, orders 4 * odd)
    for k, dg in qs.QUIPSHARP_HADAMARD_SHA256.items():
        assert len(dg) == 64 and k % 4 == 0 and (k // 4) % 2 == 1 and qs.quip_hadamard_order(k) == k


def test_quipsharp_hadamard_tables_read_from_matmul_had_py(tmp_path, monkeypatch):
    """--hadamard can name quip-sharp's matmul_had.py: its get_had<K>() literals are parsed (never executed),
    checked like a text table, and each must match QuIP#'s digest unless the override is given."""
    h12 = _paley12()
    rows = ",\n".join("        [" + ", ".join("+1" if v > 0 else "-1" for v in row) + "]" for row in h12)
    src = tmp_path / "matmul_had.py"
    src.write_text("import torch\nraise SystemExit('must not run')\n\n\ndef get_hadK(n):\n    return None\n\n\n"
                   f"def get_had12():\n    return torch.FloatTensor([\n{rows}\n    ])\n")
    tables = qs.read_hadamard_py(src)
    assert list(tables) == [12] and np.array_equal(tables[12], h12)
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(ValueError, match=r"not the one QuIP# used"):
        qs.import_quipsharp(d, tmp_path / "x.spqr", hadamard_files=[src])
    with pytest.raises(FileNotFoundError, match="no .safetensors"):  # accepted: the checkpoint read comes next
        qs.import_quipsharp(d, tmp_path / "x.spqr", hadamard_files=[src], allow_unverified_hadamard=True)
    monkeypatch.setitem(qs.QUIPSHARP_HADAMARD_SHA256, 12, qs.hadamard_sha256(h12))
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        qs.import_quipsharp(d, tmp_path / "x.spqr", hadamard_files=[src])
    bad = tmp_path / "bad.py"
    bad.write_text("def get_had4():\n    return torch.FloatTensor([[1, 1], [1, 1]])\n")
    with pytest.raises(ValueError, match=r"get_had4\(\) is not a \+-1 Hadamard matrix"):
        qs.read_hadamard_py(bad)
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="no get_had"):
        qs.read_hadamard_py(tmp_path / "none.py")


# ---- spqr_quant export -------------------------------------------------------------------


def _rewrite_params(src, dst, change) -> None:
    """Copy ``src`` to ``dst`` with ``change(params) -> (params, codec_version)`` applied to every spqr tensor."""
    with spqrfmt.open(src) as f, spqrfmt.Writer(dst, metadata=dict(f.metadata)) as w:
        for t in f.values():
            a = {k: np.array(v) for k, v in t.arrays().items()}
            if t.codec == "raw":
                w.add_raw(t.name, a["data"], t.dtype)
            else:
                params, version = change(dict(t.params))
                w.add(t.name, shape=t.shape, dtype=t.dtype, codec=t.codec, params=params, sections=a,
                      codec_version=version)


def test_spqr_quant_export_round_trip_byte_identical(tmp_path, capsys):
    from spqrfmt.cli import main
    from spqrfmt.safetensors_io import SafetensorsFile

    rng = np.random.default_rng(11)
    d, fields = _spqr_quant_folder(tmp_path, rng)  # layer 0 CSR, layer 1 PTCSR, with in_perm
    (d / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    first = tmp_path / "first.spqr"
    sq.import_spqr_quant(d, first)
    out = tmp_path / "exported" / d.name  # the importer records the folder's name (source.model)
    out.parent.mkdir()
    assert main(["export", "spqr_quant", str(first), "-o", str(out)]) == 0
    assert "14 spqr_quant layers" in capsys.readouterr().out
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "spqr" and (qc["bits"], qc["beta1"], qc["beta2"]) == (3, 16, 16)
    src = {name: SafetensorsFile(d / "model.safetensors")[name] for name in SafetensorsFile(d / "model.safetensors")}
    exp = SafetensorsFile(out / "model.safetensors")
    assert sorted(exp) == sorted(src)
    for name in exp:  # the source's own tensors back, bit for bit (no duplicates or foldable padding here)
        assert exp[name][0] == src[name][0] and np.array_equal(exp[name][1], src[name][1]), name
    second = tmp_path / "second.spqr"
    sq.import_spqr_quant(out, second)
    assert second.read_bytes() == first.read_bytes()


def test_spqr_quant_export_replace_outliers(tmp_path):
    from spqrfmt.importers import spqr_quant_export as sx

    rng = np.random.default_rng(12)
    d, _ = _spqr_quant_folder(tmp_path, rng)
    first = tmp_path / "a.spqr"
    sq.import_spqr_quant(d, first)
    # replace semantics whose values are the add-semantics results: exactly representable, exported
    with spqrfmt.open(first) as f:
        want = {n: f[n].decode("f16") for n in f if f[n].codec == "spqr"}
    rep = tmp_path / "rep.spqr"
    with spqrfmt.open(first) as f, spqrfmt.Writer(rep, metadata=dict(f.metadata)) as w:
        for t in f.values():
            a = {k: np.array(v) for k, v in t.arrays().items()}
            if t.codec == "raw":
                w.add_raw(t.name, a["data"], t.dtype)
                continue
            dec = want[t.name]
            rows = np.repeat(np.arange(t.shape[0]), np.diff(a["outlier_row_ptr"].astype(np.int64)))
            cols = a["outlier_col"].astype(np.int64)
            stored = dec if "perm" not in a else dec[:, a["perm"].astype(np.int64)]  # stored column order
            a["outlier_val"] = stored[rows, cols].astype(np.float16)
            w.add(t.name, shape=t.shape, dtype=t.dtype, codec="spqr", params={**t.params, "outlier_op": "replace"},
                  sections=a, codec_version=2)
    with spqrfmt.open(rep) as f:
        sx.export_spqr_quant(f, tmp_path / "out")
    back = tmp_path / "back.spqr"
    sq.import_spqr_quant(tmp_path / "out", back)
    with spqrfmt.open(back) as f:
        for n, w in want.items():
            assert _same16(f[n].decode("f16"), w).all() and f[n].params["outlier_op"] == "add"
    # a replacement value no f16 addend reaches (a tiny subnormal replacing a weight of ~0.1): refused
    tiny = tmp_path / "tiny.spqr"
    with spqrfmt.open(rep) as f, spqrfmt.Writer(tiny, metadata=dict(f.metadata)) as w:
        for t in f.values():
            a = {k: np.array(v) for k, v in t.arrays().items()}
            if t.codec == "raw":
                w.add_raw(t.name, a["data"], t.dtype)
                continue
            a["outlier_val"] = np.full(a["outlier_val"].shape, 2, np.uint16).view(np.float16)  # 2**-23
            w.add(t.name, shape=t.shape, dtype=t.dtype, codec="spqr", params=t.params, sections=a, codec_version=2)
    with spqrfmt.open(tiny) as f, pytest.raises(NotRepresentable, match=r"outlier_val\[\d+\].*replace"):
        sx.export_spqr_quant(f, tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_spqr_quant_export_refusals(tmp_path, capsys):
    from types import SimpleNamespace

    from spqrfmt.cli import main
    from spqrfmt.importers import spqr_quant_export as sx

    rng = np.random.default_rng(13)
    d, _ = _spqr_quant_folder(tmp_path, rng, perm=False)
    first = tmp_path / "a.spqr"
    sq.import_spqr_quant(d, first)
    f32 = tmp_path / "f32.spqr"
    _rewrite_params(first, f32, lambda p: ({**p, "arith": "f32"}, 2))
    v1 = tmp_path / "v1.spqr"
    _rewrite_params(first, v1, lambda p: ({k: v for k, v in p.items() if k not in ("arith", "outlier_op")}, 1))
    for bad, field in ((f32, "param arith = 'f32'"), (v1, "codec_version 1")):
        assert main(["export", "spqr_quant", str(bad), "-o", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: not representable") and field in err and err.count("\n") == 1, err
        assert not (tmp_path / "o").exists()
    raw = tmp_path / "raw.spqr"
    with spqrfmt.open(first) as f, spqrfmt.Writer(raw, metadata=dict(f.metadata)) as w:
        w.add_raw("lm_head.weight", np.array(f["lm_head.weight"].arrays()["data"]), "f16")
    assert main(["export", "spqr_quant", str(raw), "-o", str(tmp_path / "o")]) == 1
    assert "no quantized tensor" in capsys.readouterr().err
    # the output may not be an existing non-empty folder (an input's folder included): exit 2, nothing touched
    assert main(["export", "spqr_quant", str(first), "-o", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err and first.is_file()
    base = {"bits": 3, "group_size": 16, "scale_bits": 3, "zero_bits": 3, "stat_group_size": 16, "arith": "f16",
            "outlier_op": "add"}
    for change, field in (({"bits": 4}, "param bits = 4"), ({"group_size": 32}, "param group_size = 32"),
                          ({"stat_group_size": 8}, "param stat_group_size = 8"),
                          ({"scale_bits": 16}, "param scale_bits = 16")):
        t = SimpleNamespace(name="l.weight", codec="spqr", codec_version=2, dtype="f16", params={**base, **change},
                            shape=(32, 64), record=SimpleNamespace(sections={}))
        with pytest.raises(NotRepresentable, match=field):
            sx.check_tensor(t)
    for attrs, field in (({"dtype": "bf16"}, "dtype 'bf16'"), ({"shape": (24, 64)}, "multiples of 16"),
                         ({"codec": "rtn"}, "codec 'rtn'"), ({"name": "l.w"}, "'.weight'"),
                         ({"record": SimpleNamespace(sections={"bias": None})}, "'bias'")):
        t = SimpleNamespace(**{"name": "l.weight", "codec": "spqr", "codec_version": 2, "dtype": "f16",
                               "params": base, "shape": (32, 64), "record": SimpleNamespace(sections={}), **attrs})
        with pytest.raises(NotRepresentable, match=field):
            sx.check_tensor(t)
