"""Where a CPU decode's time goes on this machine (spqr or quip): page faults of the output, memory writes, arithmetic.

Why: the same Numba decoder runs at ~1 Gparam/s per core-second on one machine
and ~0.4 on another; these rows separate the output's first touch (page faults
and the kernel's zeroing, huge pages or not) from the decode's own work. For
each shape (spqr ``convert`` defaults: 4-bit, β1 = 16, 3-bit statistics,
β2 = 16, 1 % outliers) and thread count, best of ``--reps`` (wall and CPU ms):

* ``alloc_fill``: a fresh output (``decoder.output.empty_f32``) written once by a parallel loop;
* ``alloc_fill_4k``: the same on plain ``np.empty`` (4 KiB pages);
* ``fill``: the write alone, into an output already touched;
* ``decode_rows``: the decoder's parallel pass into an output already touched (arithmetic + writes);
* ``decode``: ``decoder.spqr.decode`` as callers run it (fresh output included).

With ``--codec quip`` (4-bit grid, data-free, ``spqr convert``'s defaults) ``decode_rows`` is replaced by the
decoder's two passes on an output already touched: ``rows`` (step 1, the grid values, and step 2, the
transform along n, row by row) and ``cols`` (steps 3 and 4 on column slabs: the transform along m, the signs).

    python bench/decode_breakdown.py --out decode_breakdown.json
    NUMBA_NUM_THREADS=2 taskset -c 0,1 python bench/decode_breakdown.py --codec quip
    NUMBA_NUM_THREADS=2 taskset -c 0,1 python bench/decode_breakdown.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

from spqrfmt.convert import QuantConfig, data_free_encoder
from spqrfmt.decoder import quip, spqr
from spqrfmt.decoder.output import empty_f32


@numba.njit(parallel=True, nogil=True)
def _fill(out: np.ndarray) -> None:
    for r in numba.prange(out.shape[0]):
        for j in range(out.shape[1]):
            out[r, j] = np.float32(1.0)


def best(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """(wall ms, CPU ms) of the fastest of ``reps`` calls after a warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return round(min(walls) * 1e3, 2), round(min(cpus) * 1e3, 2)


def _spqr_passes(params: dict, secs: dict, shape: tuple[int, int], touched: np.ndarray) -> dict[str, Callable]:
    """spqr's one parallel pass (statistics, codes, outliers) into an output already touched."""
    n = shape[1]
    rows_args = (np.ascontiguousarray(secs["codes"]), int(params["bits"]), n, int(params["group_size"]),
                 *spqr._stat_args(params, secs, "scale"), *spqr._stat_args(params, secs, "zero"),
                 np.ascontiguousarray(secs["outlier_row_ptr"]).astype(np.int64),
                 np.ascontiguousarray(secs["outlier_col"]).astype(np.int64),
                 np.asarray(secs["outlier_val"]).astype(np.float32), False, False, np.zeros(0, np.int64), touched)
    return {"decode_rows": lambda: spqr._decode_rows(*rows_args)}


def _quip_synthetic(shape: tuple[int, int]) -> tuple[dict, dict]:
    """Valid 4-bit grid sections of ``shape`` as the data-free encoder lays them out (h = the largest power of two
    dividing each side, an orthogonal odd factor), with random codes, scales and signs: the decoder's work and
    speed do not depend on the values."""
    rng = np.random.default_rng(0)
    m, n = shape
    km, kn = (m & -m).bit_length() - 1, (n & -n).bit_length() - 1
    secs: dict[str, np.ndarray] = {
        "codes": rng.integers(0, 1 << 32, (m, n * 4 // 32), dtype=np.uint64).astype(np.uint32),
        "scale": rng.uniform(0.01, 0.1, m).astype(np.float32),
        "su": rng.choice(np.array([-1, 1], np.int8), n), "sv": rng.choice(np.array([-1, 1], np.int8), m)}
    for role, d, k in (("factor_n", n, kn), ("factor_m", m, km)):
        if d >> k > 1:
            secs[role] = np.linalg.qr(rng.standard_normal((d >> k, d >> k)))[0].astype(np.float32)
    return {"bits": 4, "log2_hn": kn, "log2_hm": km}, secs


def _quip_passes(params: dict, secs: dict, shape: tuple[int, int], touched: np.ndarray) -> dict[str, Callable]:
    """quip's row pass (steps 1-2) and column pass (steps 3-4) into an output already touched."""
    kn, km = int(params["log2_hn"]), int(params["log2_hm"])
    one = np.ones(1, dtype=np.float32)
    fn = np.ascontiguousarray(secs["factor_n"], dtype=np.float32).reshape(-1) if "factor_n" in secs else one
    fm = np.ascontiguousarray(secs["factor_m"], dtype=np.float32).reshape(-1) if "factor_m" in secs else one
    words, scale = np.ascontiguousarray(secs["codes"]), np.ascontiguousarray(secs["scale"], dtype=np.float32)
    sv, su = np.asarray(secs["sv"]).astype(np.float32), np.asarray(secs["su"]).astype(np.float32)
    bits = int(params["bits"])

    def rows() -> None:
        quip._rows_vec(touched, kn, quip.hadamard_constant(kn), fn, words, bits, scale, numba.get_num_threads())

    def cols() -> None:
        quip._cols_vec(touched, km, quip.hadamard_constant(km), fm, sv, su, numba.get_num_threads())

    return {"rows": rows, "cols": cols}


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "unavailable"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="decode_breakdown.json")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--shapes", default="4096x4096,4096x14336")
    ap.add_argument("--codec", choices=("spqr", "quip"), default="spqr")
    ap.add_argument("--synthetic", action="store_true",
                    help="quip: random valid sections, no encoding (no encoder JIT: a short run on a fresh machine)")
    args = ap.parse_args()
    info = {"codec": args.codec, "thp_enabled": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
            "thp_defrag": _read("/sys/kernel/mm/transparent_hugepage/defrag"),
            "cpus_allowed": len(os.sched_getaffinity(0)), "numba_threads": numba.get_num_threads(),
            "loadavg_start": os.getloadavg()}
    print(json.dumps(info), flush=True)
    rows = []
    decoder = quip if args.codec == "quip" else spqr
    for spec in args.shapes.split(","):
        shape = tuple(int(v) for v in spec.split("x"))
        if args.synthetic and args.codec == "quip":
            params, secs = _quip_synthetic(shape)
        else:
            w = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
            enc = data_free_encoder("layer.weight", w, QuantConfig(codec=args.codec))
            params, secs = dict(enc.params), enc.sections
        touched = empty_f32(shape)
        _fill(touched)
        passes = (_quip_passes if args.codec == "quip" else _spqr_passes)(params, secs, shape, touched)
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            parts = {
                "alloc_fill": lambda s=shape: _fill(empty_f32(s)),
                "alloc_fill_4k": lambda s=shape: _fill(np.empty(s, dtype=np.float32)),
                "fill": lambda t=touched: _fill(t),
                **passes,
                "decode": lambda p=params, s=secs, sh=shape: decoder.decode(p, s, sh),
            }
            row: dict[str, Any] = {"shape": list(shape), "threads": threads}
            for name, fn in parts.items():
                row[name + "_ms"] = best(fn, args.reps)
            row["decode_gparam_per_s"] = round(shape[0] * shape[1] / row["decode_ms"][0] / 1e6, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    info["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
