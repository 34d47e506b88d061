"""Chart: speed-up over fp16 (cuBLAS) by shape and batch, from the kernel benchmarks' JSON.

Why: the tables in docs/kernels.md and docs/codecs.md hold every number, but "where is it faster than fp16,
and by how much" is a picture. One panel per batch size (1, 4, 16); one group of bars per shape; one bar per
kernel (every codec of ``bench_codecs.json`` at each of its bit widths, the int4 tinygemm peer, and spqr from
``bench_kernels.json``). The dashed line is fp16.

    python bench/chart_speedup.py docs/results/bench_kernels.json docs/results/bench_codecs.json \\
        --out docs/speedup.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BATCHES = (1, 4, 16)


def series(kernels: dict[str, Any] | None, codecs: dict[str, Any] | None) -> dict[str, dict[str, dict[int, float]]]:
    """{label: {shape: {batch: fp16_us / us}}} from the two JSON files (rows without a timing are skipped)."""
    out: dict[str, dict[str, dict[int, float]]] = {}

    def put(label: str, row: dict[str, Any], key: str) -> None:
        shape = f"{row['m']}x{row['n']}"
        for b in BATCHES:
            us, ref = row.get(f"{key}_b{b}_us"), row.get(f"fp16_b{b}_us")
            if us and ref:
                out.setdefault(label, {}).setdefault(shape, {})[b] = float(ref) / float(us)

    for row in (kernels or {}).get("rows", []):
        put(f"spqr {row['bits']}-bit", row, "fused")
        if row["bits"] == min(r["bits"] for r in kernels["rows"]):
            put("torch int4 tinygemm g128", row, "int4")
    for row in (codecs or {}).get("rows", []):
        if row["codec"] == "spqr-g16" and kernels:
            continue  # the kernel benchmark's spqr rows cover it (more shapes)
        put(f"{row['codec']} {row['bits']}-bit", row, "fused")
    return out


def draw(data: dict[str, dict[str, dict[int, float]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spqrfmt.plot import _save

    shapes = sorted({s for per in data.values() for s in per}, key=lambda s: tuple(int(v) for v in s.split("x")))
    labels = sorted(data, key=lambda lab: (lab.startswith("torch"), lab))
    fig, axes = plt.subplots(len(BATCHES), 1, figsize=(max(8.0, 1.3 * len(shapes) * len(labels) / 4), 10),
                             sharex=True)
    width = 0.8 / max(1, len(labels))
    for ax, b in zip(axes, BATCHES, strict=True):
        for k, lab in enumerate(labels):
            xs = [i + (k - (len(labels) - 1) / 2) * width for i in range(len(shapes))]
            ys = [data[lab].get(s, {}).get(b, 0.0) for s in shapes]
            ax.bar(xs, ys, width, label=lab, hatch="//" if lab.startswith("torch") else None)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_ylabel(f"batch {b}: × fp16")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(shapes)), shapes, rotation=20)
    axes[-1].set_xlabel("weight shape (out × in)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.965))
    fig.suptitle(title, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    _save(fig, out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", type=Path, help="bench_kernels.json and/or bench_codecs.json")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    a = ap.parse_args(argv)
    kernels = codecs = None
    device = "GPU"
    for p in a.inputs:
        d = json.loads(p.read_text())
        device = d.get("device", device)
        if d.get("rows") and "codec" in d["rows"][0]:
            codecs = d
        else:
            kernels = d
    data = series(kernels, codecs)
    if not data:
        print("error: no timed rows in the inputs", file=sys.stderr)
        return 1
    draw(data, a.out, f"speed-up over fp16 cuBLAS ({device}; higher is better, dashed = fp16)")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
