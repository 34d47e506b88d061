"""SPEC §7's stored-transposed rule, decided once (spqrfmt.transposed) and honoured by ``spqr decode``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import spqrfmt
from spqrfmt.cli import main
from spqrfmt.encoder.spqr import quantize_spqr
from spqrfmt.safetensors_io import SafetensorsFile
from spqrfmt.transposed import StoredTransposed, stored_transposed

CONV = "h.0.attn.c_attn.weight"
LINEAR = "h.0.mlp.other.weight"  # not a Conv1D name
NORM = "h.0.ln_1.weight"


def _file(path: Path, metadata: dict) -> np.ndarray:
    w = np.random.default_rng(0).standard_normal((48, 32)).astype(np.float32)  # as stored: [out, in]
    with spqrfmt.Writer(path, metadata={"hf.config": json.dumps({"model_type": "gpt2"}), **metadata}) as wr:
        wr.add_encoded(CONV, quantize_spqr(w, bits=4, outlier_fraction=0.0), "f32")
        wr.add_encoded(LINEAR, quantize_spqr(w, bits=4, outlier_fraction=0.0), "f32")
        wr.add_raw(NORM, np.ones(32, np.float32))
    return w


@pytest.mark.parametrize(("metadata", "expected"), [
    ({"spqrfmt.transposed": [CONV], "spqrfmt.conv1d": "out_in"}, {CONV}),
    ({"spqrfmt.transposed": [], "spqrfmt.conv1d": "out_in"}, set()),  # the list wins over the no-list rule
    ({"spqrfmt.conv1d": "out_in"}, {CONV}),  # no list: every quantized Conv1D weight
    ({}, set()),  # neither key: stored as in the checkpoint
])
def test_rule_and_decode(tmp_path: Path, metadata: dict, expected: set[str]) -> None:
    path = tmp_path / "m.spqr"
    _file(path, metadata)
    with spqrfmt.open(path) as f:
        assert stored_transposed(f) == expected
        rule = StoredTransposed.of(f.metadata)
        assert rule.applies(CONV, quantized_conv1d_weight=True) == (CONV in expected)
        stored = {n: f[n].decode() for n in (CONV, LINEAR)}
    out = tmp_path / "m.safetensors"
    assert main(["decode", str(path), "-o", str(out), "-q"]) == 0
    sf = SafetensorsFile(out)
    assert np.array_equal(sf[CONV][1], stored[CONV].T if CONV in expected else stored[CONV])
    assert np.array_equal(sf[LINEAR][1], stored[LINEAR]) and sf.shape(NORM) == (32,)


def test_a_malformed_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.spqr"
    _file(path, {"spqrfmt.transposed": "h.0.attn.c_attn.weight"})
    with spqrfmt.open(path) as f, pytest.raises(ValueError, match="not a list of tensor names"):
        stored_transposed(f)
