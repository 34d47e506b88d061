"""The autotune cache (kernels/tune.py): what it accepts from disk, how it writes, and that it never breaks a load."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("triton")
os.environ.setdefault("TRITON_INTERPRET", "1")

from spqrfmt.kernels import _tune_cache as tune  # noqa: E402
from spqrfmt.kernels import tune as tuner  # noqa: E402


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPQRFMT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tune, "_MEM", None)
    return tmp_path


GOOD = {"BM": 64, "NH": 8, "num_warps": 4, "split": 5, "x_inline": False, "maxnreg": None, "us": 55.6}


def test_valid_entries_become_configs_and_bad_ones_are_refused():
    cfg = tune._valid(GOOD)
    assert cfg == {"BM": 64, "NH": 8, "num_warps": 4, "split": 5, "x_inline": False, "maxnreg": None}
    for bad in ({**GOOD, "BM": 48}, {**GOOD, "BM": "64"}, {**GOOD, "split": 0}, {**GOOD, "split": 10**9},
                {**GOOD, "maxnreg": 7}, {**GOOD, "x_inline": "yes"}, {**GOOD, "num_warps": True}, [], None,
                {k: v for k, v in GOOD.items() if k != "NH"}):
        assert tune._valid(bad) is None, bad


def test_cache_round_trip_keeps_valid_entries_only(cache_dir):
    tune._save({"a": GOOD, "b": {**GOOD, "BM": 3}})
    doc = json.loads((cache_dir / "tune.json").read_text())
    assert doc["version"] == tune.CACHE_VERSION and set(doc["entries"]) == {"a", "b"}
    assert not [p for p in os.listdir(cache_dir) if p.startswith(".tune.")]  # no temp file left behind
    tune._MEM = None
    assert set(tune._load()) == {"a"}


@pytest.mark.parametrize("text", ["{not json", "[]", '{"version": 99, "entries": {}}', '{"version": 1}', "\xff"])
def test_unreadable_or_foreign_cache_is_empty_not_an_error(cache_dir, text):
    (cache_dir / "tune.json").write_text(text, encoding="latin-1")
    with pytest.warns(UserWarning) if text in ("{not json", "\xff") else _no_warning():
        assert tune._load() == {}


class _no_warning:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
        return False


def test_lookup_and_tune_need_a_cuda_tiled_tensor(cache_dir):
    import numpy as np

    from spqrfmt.encoder.spqr import quantize_spqr
    from spqrfmt.kernels import spqr as ks

    w = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    enc = quantize_spqr(w, bits=3, group_size=16)
    prep = ks.prepare(enc.params, enc.sections, (32, 64), "cpu")
    import torch

    assert tune.lookup(prep, 1, torch.float16) is None  # CPU (interpreter): the built-in rules apply
    with pytest.raises(ValueError, match="CUDA"):
        tuner.tune(prep)
