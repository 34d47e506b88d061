"""Build the tiled spqr dot path (batch 3..16, ``gemv_kernel`` MODE 1) for sm_90 without a GPU and report it.

Per config: SASS instructions per weight in the main (HGMMA) loop, registers and stack per thread
(``cuobjdump -res-usage``: the number that sets programs per SM), shared memory, and the TTGIR layout
conversions. This is how the f16x2 decode (``H2``), the outlier gather width (``EPR``) and the register
prefetch (``PF``) were compared before timing them (docs/kernels.md). Uses bench/compile_check_codecs.py.

    python bench/compile_check_spqr_dot.py [--arch 90]
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler is the point
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from compile_check_codecs import INSTR, Const, build, loops, sass  # noqa: E402
from compile_check_spqr_b1 import gemv_args  # noqa: E402

# (BM, NU, num_warps, num_stages, H2, EPR, PF)
CONFIGS = [(64, 4, 4, 1, False, 16, False), (64, 4, 4, 1, False, 4, False), (64, 4, 4, 1, True, 4, False),
           (64, 4, 4, 1, True, 4, True), (64, 4, 4, 1, True, 8, True), (128, 4, 8, 1, True, 4, True)]


def hgmma_loop(text: str) -> list[str]:
    """The instructions of the first loop that holds the HGMMAs."""
    body = next((b for b in loops(text) if any("HGMMA" in x for x in b)), [])
    return [x for x in body if INSTR.search(x)]


def registers(compiled: object) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])  # type: ignore[attr-defined]
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f"{m.group(1)} registers, {m.group(2)} B stack" if m else "registers: n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    a = ap.parse_args(argv)
    from spqrfmt.kernels import _spqr_tiled as KT

    failed = 0
    for bm, nu, nw, ns, h2, epr, pf in CONFIGS:
        args = gemv_args(bm, nu, False, True)
        args.update(xq_ptr="*fp16", MODE=Const(1), BB=Const(16), NBC=Const(16), H2=Const(h2), EPR=Const(epr),
                    PF=Const(pf), R2=Const(bm // 16))
        try:
            k = build(KT.gemv_kernel, args, a.arch, num_warps=nw, num_stages=ns)
        except Exception as e:  # noqa: BLE001 - report every config
            failed += 1
            print(f"FAIL BM={bm} NU={nu} H2={h2}: {type(e).__name__}: {str(e)[-300:]}", flush=True)
            continue
        loop = hgmma_loop(sass(k))
        per = bm * nu * 32 / (32 * nw)  # weights per thread per step
        ttg = k.asm["ttgir"]
        print(f"BM={bm:3d} NU={nu} warps={nw} stages={ns} H2={h2!s:5} EPR={epr:2d} PF={pf!s:5}: "
              f"{len(loop) / per:.2f} instr/weight, {registers(k)}, shared {k.metadata.shared} B, "
              f"{ttg.count('convert_layout')} convert_layout, {ttg.count('local_alloc')} local_alloc", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
