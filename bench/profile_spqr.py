"""One fused SpQR matvec for a profiler (ncu): ``ncu --clock-control none -k regex:gemv python bench/profile_spqr.py``.

Why: the batch-1 kernel's time barely moves with tile shapes; the profiler's stall reasons and achieved
DRAM throughput say whether it is latency, issue or memory bound. ``--no-outliers`` removes the sparse part.
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_kernels import synth_sections  # noqa: E402

from spqrfmt.kernels import spqr as ks  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="8192x28672")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--no-outliers", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    m, n = (int(v) for v in args.shape.split("x"))
    params, secs = synth_sections(m, n, args.bits, outlier_frac=0.0 if args.no_outliers else 0.01)
    if args.no_outliers:
        secs["outlier_row_ptr"].zero_()
        secs["outlier_col"] = secs["outlier_col"][:0]
        secs["outlier_val"] = secs["outlier_val"][:0]
    prep = ks.prepare(params, secs, (m, n), "cuda")
    x = torch.randn(args.batch, n, device="cuda", dtype=torch.float16)
    for _ in range(3):
        ks.matvec(prep, x)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
