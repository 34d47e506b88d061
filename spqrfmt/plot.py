"""Charts of a ``.spqr`` file and of quality runs (matplotlib, an optional extra: ``pip install 'spqrfmt[plot]'``).

Why: per-layer bits and errors, and bits against perplexity, are read at a glance from a picture and
slowly from a table. Nothing here is imported by the core reader.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_LAYER = re.compile(r"\.(\d+)\.")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("charts need matplotlib: pip install 'spqrfmt[plot]' (or pip install matplotlib)") from e
    return plt


def _save(fig: Any, out: str | os.PathLike[str]) -> None:
    """PNG written beside ``out`` and renamed onto it: no half-written picture is ever left."""
    from .paths import new_file_mode
    from .scratch import replaced_atomically

    with replaced_atomically(Path(out), ".png") as (fd, tmp):
        os.close(fd)
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.chmod(tmp, new_file_mode())  # scratch files are made 0600, which would ignore the umask


def layer_rows(f: Any) -> list[dict[str, Any]]:
    """One row per quantized tensor: name, layer index (or None), kind (the name after it), bits, error."""
    errors = f.metadata.get("spqrfmt.rel_error")
    errors = errors if isinstance(errors, Mapping) else {}
    rows = []
    for name, t in f.tensors.items():
        if t.codec == "raw":
            continue
        m = _LAYER.search(name)
        err = errors.get(name)
        rows.append({"name": name, "layer": int(m.group(1)) if m else None,
                     "kind": name[m.end():] if m else name, "codec": t.codec,
                     "bits": float(t.bits_per_param),
                     "rel_error": float(err) if isinstance(err, (int, float)) else None})
    return rows


def _label(kind: str) -> str:
    """A legend name: the tensor's name after its layer number, less ``.weight`` (``attention.self.query``)."""
    return kind[:-len(".weight")] if kind.endswith(".weight") else kind


def plot_layers(f: Any, out: str | os.PathLike[str], title: str | None = None) -> int:
    """Bits/param and relative error (when the file records it) per layer, one line per tensor kind.

    Returns the number of quantized tensors drawn; ValueError when there are none.
    """
    rows = layer_rows(f)
    if not rows:
        raise ValueError("the file has no quantized tensors to plot")
    plt = _pyplot()
    has_err = any(r["rel_error"] is not None for r in rows)
    fig, axes = plt.subplots(2 if has_err else 1, 1, figsize=(9, 6.5 if has_err else 3.6), sharex=True,
                             squeeze=False)
    kinds = sorted({r["kind"] for r in rows})
    for ax, key, label in ((axes[0][0], "bits", "bits / param"), (axes[-1][0], "rel_error", "relative error")):
        if key == "rel_error" and not has_err:
            continue
        for kind in kinds:
            pts = sorted((r["layer"] if r["layer"] is not None else -1, r[key]) for r in rows
                         if r["kind"] == kind and r[key] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=_label(kind))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=4, loc="best")
    axes[-1][0].set_xlabel("layer (-1: tensors outside the numbered layers)")
    fig.suptitle(title or f"{len(rows)} quantized tensors")
    _save(fig, out)
    plt.close(fig)
    return len(rows)


def plot_quality(rows: Iterable[Mapping[str, Any]], out: str | os.PathLike[str], reference: float | None = None,
                 title: str = "") -> None:
    """Perplexity against bits/param, one line per method (the rows of bench/quality.py's results)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_method: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        by_method.setdefault(str(r["method"]), []).append((float(r["bits"]), float(r["ppl"])))
    for method, pts in sorted(by_method.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    if reference is not None:
        ax.axhline(reference, color="gray", ls="--", lw=1, label=f"unquantized ({reference:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("bits / param (every stored byte of the quantized tensors)")
    ax.set_ylabel("perplexity (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, out)
    plt.close(fig)


__all__ = ["layer_rows", "plot_layers", "plot_quality"]
