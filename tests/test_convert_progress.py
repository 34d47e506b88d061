"""``spqr convert``'s progress bar advances by quantized parameters, so its rate and ETA follow the encoding work."""

from __future__ import annotations

import pytest

from spqrfmt.convert import _progress

pytest.importorskip("tqdm")


def test_bar_counts_quantized_params_and_names_the_tensor(capsys: pytest.CaptureFixture[str]) -> None:
    items = [(None, "embed.weight"), (None, "layers.0.q.weight"), (None, "layers.0.norm.weight")]
    assert list(_progress(items, [0, 4096 * 4096, 0], "convert", True)) == items
    err = capsys.readouterr().err
    assert "16.8M/16.8M" in err and "param/s" in err and "layers.0.norm.weight" in err  # the final refresh


def test_no_quantized_tensor_counts_tensors_and_disabled_bar_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    items = [(None, "a"), (None, "b")]
    assert list(_progress(items, [0, 0], "convert", True)) == items
    assert "2.00/2.00" in capsys.readouterr().err
    assert list(_progress(items, [0, 5], "convert", False)) == items
    assert capsys.readouterr().err == ""
