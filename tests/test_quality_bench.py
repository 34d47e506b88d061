"""bench/quality.py's Wikipedia split (pure function; no gensim, no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_quality", Path(__file__).parent.parent / "bench" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_split_wiki_drops_redirects_and_stubs_and_holds_out_the_tail() -> None:
    arts = [(f"A{i}", f"article {i} " + "word " * 200) for i in range(10)]
    arts.insert(3, ("R", "#REDIRECT Somewhere\n"))
    arts.insert(5, ("S", "too short"))
    calib, held = quality.split_wiki(arts, min_chars=500, held_fraction=0.2)
    assert [t.split()[1] for t in calib] == [str(i) for i in range(8)]
    assert [t.split()[1] for t in held] == ["8", "9"]
    assert not set(calib) & set(held)
    assert all("  " not in t and "\n" not in t for t in calib + held)


def test_merge_results_orders_rows_and_refuses_mixed_settings() -> None:
    import pytest

    args = {"model": "smollm2", "nsamples": 128}
    a = {"args": args, "ref": {"ppl": 10.0}, "ref16": {"ppl": 10.01},
         "rows": {"GPTQ-4": {"method": "GPTQ", "target": "4"}, "SpQR-3": {"method": "SpQR", "target": "3"}}}
    b = {"args": args, "ref": {"ppl": 10.0}, "ref16": {"ppl": 10.01},
         "rows": {"RTN-3": {"method": "RTN", "target": "3"}, "SpQR-authors-3": {"method": "SpQR-authors",
                                                                                "target": "3"}}}
    m = quality.merge_results([a, b])
    assert list(m["rows"]) == ["RTN-3", "SpQR-3", "SpQR-authors-3", "GPTQ-4"]
    assert m["ref"] == {"ppl": 10.0} and m["ref16"] == {"ppl": 10.01}
    with pytest.raises(SystemExit):
        quality.merge_results([a, {**b, "args": {**args, "nsamples": 16}}])


def test_outlier_threshold_per_target() -> None:
    """--outlier-threshold: one T for every width, or TARGET=T pairs (the equal-bits runs need one T per width)."""
    import pytest

    assert quality.threshold_for(0.2, "3") == 0.2
    spec = "3=1.1,3.5=0.8,4=0.5,4.6=0.2"
    assert [quality.threshold_for(spec, t) for t in ("3", "3.5", "4", "4.6", "2")] == [1.1, 0.8, 0.5, 0.2, 0.2]
    assert quality.threshold_for("0.3,~3=1.1", "3") == 1.1 and quality.threshold_for("0.3,~3=1.1", "4") == 0.3
    assert quality.threshold_for("3.0=1.1", "3") == 1.1  # targets compare as numbers
    with pytest.raises(SystemExit):
        quality.threshold_for("3=x", "3")
