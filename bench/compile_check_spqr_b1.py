"""Build the tiled spqr batch-1 GEMV for sm_90 without a GPU and count SASS instructions per weight.

Batch 1 is issue-bound, so the main loop's instructions per weight predict speed; this compares the
tile configs and the one-launch variant (``XIN``: x's operands built in the GEMV) against the
two-launch one (xprep_h2_kernel + GEMV). Uses bench/compile_check_codecs.py's ``build``.

    python bench/compile_check_spqr_b1.py [--arch 90]
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler is the point
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import time  # noqa: E402

from compile_check_codecs import INSTR, Const, build, main_loop_instructions, sass  # noqa: E402

CONFIGS = [(64, 8, 4), (32, 8, 4), (32, 4, 4), (64, 4, 4), (128, 8, 4), (128, 8, 8), (64, 8, 8), (32, 8, 2),
           (64, 16, 4)]


def gemv_args(bm: int, nu: int, xin: bool, perm: bool) -> dict:
    import triton.language as tl

    C = Const
    x = "*fp16" if xin else "*i32"
    return dict(xq_ptr=x, xs_ptr="*fp16" if xin else "*fp32", xe_ptr="*fp16" if xin else "*fp32",
                xo_ptr="*fp16" if xin else "*fp32", idx_ptr="*i32", y_ptr="*fp16", bias_ptr="*fp16", ws_ptr="*fp32",
                cnt_ptr="*i32", w_ptr="*i32", st_ptr="*u8", st2_ptr="*i64", sz_ptr="*i32", orp_ptr="*i32",
                ocol_ptr="*i16", odelta_ptr="*fp32", m=4096, n=4096, NUT=128, G=256, K2=256, B2=16, hpg=1, nb=1,
                n_tiles=128 // nu, tiles_per_split=2, BITS=C(3), SB=C(3), STQ=C(True), SAME=C(False),
                R2=C(bm // 16), NU=C(nu), BM=C(bm), BB=C(1), NBC=C(1), EPR=C(16), MODE=C(0), ATOMIC=C(True),
                HAS_BIAS=C(False), COL16=C(True), DOT_DT=C(tl.float16), H2=C(True), ASM=C(True),
                EXACT_STATS=C(False), XIN=C(xin), HAS_PERM=C(perm), PF=C(False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    a = ap.parse_args(argv)
    from spqrfmt.kernels import _spqr_tiled as KT

    failed = 0
    for bm, nu, nw in CONFIGS:
        for xin, perm in ((False, True), (True, False), (True, True)):
            t0 = time.perf_counter()
            try:
                text = sass(build(KT.gemv_kernel, gemv_args(bm, nu, xin, perm), a.arch, num_warps=nw))
                per = bm * nu * 32 / (32 * nw)  # weights per thread per loop iteration
                print(f"BM={bm:3d} NU={nu:2d} warps={nw} xin={xin!s:5} perm={perm!s:5}: "
                      f"{main_loop_instructions(text) / per:.2f} instr/weight, {len(INSTR.findall(text))} instr, "
                      f"{text.count('STL')} spill stores ({time.perf_counter() - t0:.1f}s)", flush=True)
            except Exception as e:  # noqa: BLE001 - report every config
                failed += 1
                print(f"FAIL BM={bm} NU={nu} warps={nw} xin={xin}: {type(e).__name__}: {str(e)[-400:]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
