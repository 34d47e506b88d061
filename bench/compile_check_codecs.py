"""Compile the squeezellm / quip Triton kernels for a GPU target without a GPU (sm_90 by default).

The CI runs the kernels under ``TRITON_INTERPRET=1``, which accepts code the GPU
compiler rejects (a constexpr re-assigned in a ``static_range``, a loop-carried
variable changing shape). This script builds every kernel in the configurations
the fused paths launch (batch 1 / ``tl.dot``, f16 / f32 activations, split or not,
each transform block size) with ``triton.compile`` and ptxas, and reports per kernel
PASS/FAIL, local-memory spills, and for the GEMVs the SASS instructions per weight in
the main loop (at batch 1 these kernels are issue-bound, so that number predicts their
speed). Uses Triton's compiler API (``ASTSource``, ``GPUTarget``), checked with triton
3.9; a Triton without them is reported as such.

    python bench/compile_check_codecs.py [--arch 90] [--only e8p]
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # must not be set: the real compiler is the point

import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

INSTR = re.compile(r"/\*[0-9a-f]{4,6}\*/\s+(?:@!?U?P\w\s+)?([A-Z0-9_.]+)")


class Const:
    """A constexpr argument value."""

    def __init__(self, v: Any) -> None:
        self.v = v


def build(kernel: Any, args: dict[str, Any], arch: int, num_warps: int = 4, fp_fusion: bool = True,
          num_stages: int = 3, maxnreg: int | None = None) -> Any:
    """triton.compile of a @triton.jit kernel: pointers are dtype strings ("*fp32"), ints/floats runtime values."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    backend = CUDABackend(target)
    dns = set(getattr(kernel, "do_not_specialize", None) or [])
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(kernel.params):
        v = args[p.name]
        free = p.name not in dns and i not in dns
        if isinstance(v, Const):
            sig[p.name] = "constexpr"
            consts[(i,)] = v.v
        elif isinstance(v, str):
            sig[p.name] = v
            attrs[(i,)] = backend.parse_attr("D")  # 16-byte aligned, as torch allocations are
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{p.name}: unsupported argument {v!r}")
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        elif v == 1 and free:
            sig[p.name] = "constexpr"  # what the launcher specialises an int equal to 1 to
            consts[(i,)] = 1
        else:
            sig[p.name] = "i32"
            if free and v % 16 == 0:
                attrs[(i,)] = backend.parse_attr("D")
    src = ASTSource(kernel, sig, consts, attrs)
    extra = {"maxnreg": maxnreg} if maxnreg else {}  # ptxas .maxnreg, as MatvecConfig.maxnreg passes it
    return triton.compile(src, target=target, options={**extra, "num_warps": num_warps, "enable_fp_fusion": fp_fusion,
                                                        "num_stages": num_stages})


def sass(compiled: Any) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([tool, "-c", f.name], capture_output=True, text=True, check=True).stdout


def loops(text: str) -> list[list[str]]:
    """The lines of each backward-branch loop of a SASS listing (label through branch), in listing order."""
    lines = text.split("\n")
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^\.(L_x_\d+):", line.strip()))}
    out = []
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+`\(\.(L_x_\d+)\)", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            out.append(lines[labels[m.group(1)]:i + 1])
    return out


def main_loop_instructions(text: str) -> int:
    """Instructions of the backward-branch loop of a SASS listing with the most multiply-adds (FFMA, HMMA = 8:
    the matvec's, not a longer residual or epilogue loop's), the longest on a tie."""
    best, key = [], (-1, -1)
    for body in loops(text):
        k = (sum(8 if "HMMA" in x else 1 for x in body if re.search(r"\b(FFMA|HMMA)\b", x)), len(body))
        if k > key:
            best, key = body, k
    return sum(1 for line in best if INSTR.search(line))


def cases() -> list[tuple[str, Any, dict[str, Any], dict[str, Any], float]]:
    """(label, kernel, args, build options, weights per thread per loop iteration or 0)."""
    import triton.language as tl

    from spqrfmt.kernels import quip as kq
    from spqrfmt.kernels import squeezellm as ks

    C = Const
    out = []
    for dot, f32, split, even, bias, tree, prmt, k in ((False, False, True, True, False, True, False, 8),
                                                      (False, False, True, True, False, False, False, 8),
                                                      (False, True, False, False, True, True, False, 8),
                                                      (True, False, True, True, False, True, False, 8),
                                                      (True, True, False, False, True, True, False, 8),
                                                      (False, False, True, True, False, False, True, 8),
                                                      (False, False, True, True, False, False, True, 16),
                                                      (True, False, True, True, False, False, True, 8),
                                                      (True, False, True, True, False, False, True, 16),
                                                      (True, True, False, False, True, False, True, 8),
                                                      (True, False, True, True, False, False, "pair", 8)):
        bm, nu, warps = (32, 32, 2) if dot else (64, 32, 4)  # squeezellm.default_config
        a = dict(x_ptr="*fp32" if f32 else "*fp16", y_ptr="*fp32" if f32 else "*fp16", bias_ptr="*fp16",
                 ws_ptr="*fp32", wsi_ptr="*i32", cnt_ptr="*i32", w_ptr="*i32", lut_ptr="*fp32", ptab_ptr="*i32",
                 orp_ptr="*i32",
                 ocol_ptr="*i16", oval_ptr="*fp16", m=14336, n=4096 if even else 4095, nw=512, nb=16 if dot else 1,
                 x_sb=4096, n_tiles=16, tiles_per_split=4, K=C(k), WST=C(4), F=C(8), NU=C(nu), BM=C(bm),
                 BB=C(16 if dot else 1), EPR=C(8 if dot else 16), DOT=C(dot),
                 DOT_DT=C(tl.float32 if f32 else tl.float16), IEEE=C(f32), EVEN=C(even), SPLIT=C(split),
                 HAS_BIAS=C(bias), COL16=C(True), TREE=C(tree), PRMT=C(bool(prmt)), ASM=C(bool(prmt)),
                 PAIR=C(prmt == "pair"))
        mode = ("prmt pair" if prmt == "pair" else "prmt") if prmt else f"tree={tree}"
        out.append((f"squeezellm gemv dot={dot} f32={f32} split={split} {mode} K={k}", ks._lut_gemv_kernel, a,
                    {"num_warps": warps}, bm * nu * 8 / (32 * warps)))
    for bf16 in (False, True):
        a = dict(w_ptr="*i32", lut_ptr="*fp32", orp_ptr="*i32", ocol_ptr="*i16", oval_ptr="*fp16",
                 out_ptr="*i16" if bf16 else "*fp16", m=4096, n=4096, nw=512, K=C(16), WST=C(4), BM=C(16), BC=C(256),
                 EPR=C(16), COL16=C(True), OUT_BF16=C(bf16), TREE=C(True))
        out.append((f"squeezellm dequant_fields bf16={bf16}", ks._dequant_fields_kernel, a, {"fp_fusion": False}, 0))
    out.append(("squeezellm residual_add", ks._residual_add_kernel,
                dict(out_ptr="*fp32", orp_ptr="*i32", ocol_ptr="*i32", oval_ptr="*fp16", m=4096, n=4096, BM=C(16),
                     EPR=C(16), COL16=C(False)), {"fp_fusion": False}, 0))
    out.append(("squeezellm dequant (spec layout)", ks._dequant_kernel,
                dict(codes_ptr="*i32", lut_ptr="*fp16", out_ptr="*fp32", m=4096, n=4096, words=384, BITS=C(3),
                     BR=C(16), BC=C(128)), {"fp_fusion": False}, 0))
    fp = dict(ws_ptr="*fp32", wsi_ptr="*i32", cnt_ptr="*i32", scale_ptr="*fp32", m=8192, x_sb=28672, n_tiles=112,
              tiles_per_split=7)
    for dot, f32 in ((False, False), (True, False), (True, True)):
        bm = 64 if dot else 128
        a = dict(fp, x_ptr="*fp32", y_ptr="*fp32", w_ptr="*i32", nw=1792, nb=16 if dot else 1, L=3.0, WST=C(2), F=C(16),
                 NU=C(32), BM=C(bm), BB=C(16 if dot else 1), DOT=C(dot), DOT_DT=C(tl.float32 if f32 else tl.float16),
                 IEEE=C(f32), SPLIT=C(True))
        out.append((f"quip grid gemv dot={dot} f32={f32}", kq._grid_gemv_kernel, a, {},
                    0 if dot else bm * 32 * 16 / 128))
        a = dict(fp, x_ptr="*fp32", y_ptr="*fp32", c_ptr="*i16", half_ptr="*fp32", odd_ptr="*i32", gp=3584,
                 nb=16 if dot else 1, NG=C(16), BM=C(bm), BB=C(16 if dot else 1), DOT=C(dot),
                 DOT_DT=C(tl.float32 if f32 else tl.float16), IEEE=C(f32), SPLIT=C(False))
        out.append((f"quip e8p12 gemv gather8 dot={dot} f32={f32}", kq._e8p_gemv_kernel, a, {},
                    0 if dot else bm * 16 * 8 / 128))
        for tab in (True, False):
            a = dict(a, abs_ptr="*i32", sgn_ptr="*i32", SIGN_TAB=C(tab))
            del a["half_ptr"], a["odd_ptr"]
            out.append((f"quip e8p12 gemv sign_{'table' if tab else 'arith'} dot={dot} f32={f32}",
                        kq._e8p_gemv2_kernel, a, {}, 0 if dot else bm * 16 * 8 / 128))
            a = dict(a, half_ptr="*fp32", odd_ptr="*i32")
    for tab in (True, False):
        a = dict(x_ptr="*i32", xsc_ptr="*fp32", y_ptr="*fp32", ws_ptr="*fp32", wsi_ptr="*i32", cnt_ptr="*i32",
                 c_ptr="*i16", abs_ptr="*i32", sgn_ptr="*i32", scale_ptr="*fp32", m=8192, gp=3584, n_tiles=224,
                 tiles_per_split=14, NG=C(16), BM=C(128), SPLIT=C(True), SIGN_TAB=C(tab), ASM=C(True))
        out.append((f"quip e8p12 gemv f16x2 sign_{'table' if tab else 'arith'}", kq._e8p_gemv_h2_kernel, a, {},
                    2 * 128 * 16 * 8 / 128))  # two tiles a loop step
    for k in (14, 13, 12, 11, 8, 7, 3, 0):
        R, Cc, CB, RC, use_dot = kq._blocks(k)
        for e8 in (False, True):
            a = dict(x_ptr="*fp16", out_ptr="*fp32", d_ptr="*fp16", post_ptr="*i8", bias_ptr="*fp16", x_sb=4096,
                     o_sb=4096, c_k=0.5, gp=512, R=C(R), C=C(Cc), CB=C(CB), RC=C(RC), USE_DOT=C(use_dot),
                     PREC=C(kq._HAD_PREC), HAS_D=C(True), HAS_POST=C(not e8), HAS_BIAS=C(not e8), E8ORD=C(e8))
            out.append((f"quip hadamard 2^{k} e8order={e8}", kq._had_kernel, a, {"num_warps": 8 if R >= 128 else 4}, 0))
    for e8 in (False, True):
        a = dict(z_ptr="*fp32", out_ptr="*fp32" if e8 else "*fp16", f_ptr="*fp32", post_ptr="*fp16",
                 bias_ptr="*fp16", a=7, h=2048, z_sb=14336, o_sb=14336, gp=1792, AB=C(8), BH=C(512), HAS_POST=C(not e8),
                 HAS_BIAS=C(not e8), E8ORD=C(e8))
        out.append((f"quip factor mix e8order={e8}", kq._mix_kernel, a, {}, 0))
    for k, na in ((14, 1), (13, 1), (12, 1), (12, 7), (11, 7), (10, 1), (4, 3), (0, 5)):
        L1, L2, nc, warps = kq._wht_plan(k, na)
        for e8 in (False, True):
            a = dict(x_ptr="*fp16" if e8 else "*fp32", out_ptr="*fp32" if e8 else "*fp16", d_ptr="*fp16",
                     f_ptr="*fp32", post_ptr="*fp32" if e8 else "*fp16", bias_ptr="*fp16", x_sb=28672, o_sb=28672,
                     c_k=0.5, gp=3584, A=C(na), NC=C(nc), L1=C(L1), L2=C(L2), HAS_D=C(e8), HAS_F=C(na > 1),
                     HAS_POST=C(True), HAS_BIAS=C(not e8), E8ORD=C(e8), xsc_ptr="*fp32", H2ORD=C(False))
            out.append((f"quip one-launch transform {na}x2^{k} e8order={e8}", kq._wht_kernel, a,
                        {"num_warps": warps}, 0))
    for k in (14, 12, 5, 1):
        h = 1 << k
        a = dict(x_ptr="*fp32", nrows=8192, n=28672, c_k=0.5, H=C(h), K=C(k), BR=C(max(1, min(64, 4096 // h))))
        out.append((f"quip exact fwht rows 2^{k}", kq._fwht_rows_kernel, a,
                    {"num_warps": 8 if h >= 8192 else 4, "fp_fusion": False}, 0))
    for s0, ns in ((0, 4), (12, 1), (8, 3)):
        a = dict(x_ptr="*fp32", m=8192, n=28672, c_k=0.5, lo_mask=(1 << s0) - 1, S0=C(s0), NS=C(ns), LAST=C(True),
                 BC=C(128))
        out.append((f"quip exact fwht cols stages {s0}..{s0 + ns - 1}", kq._fwht_cols_kernel, a,
                    {"fp_fusion": False}, 0))
    nf = {"fp_fusion": False}
    out.append(("quip dequant grid values", kq._grid_kernel, dict(codes_ptr="*i32", scale_ptr="*fp32", out_ptr="*fp32",
                m=8192, n=28672, words=1792, BITS=C(2), BR=C(16), BC=C(64)), nf, 0))
    out.append(("quip dequant e8p12 values", kq._e8p_kernel, dict(codes_ptr="*i16", alpha_ptr="*i32", odd_ptr="*i32",
                scale_ptr="*fp32", out_ptr="*fp32", m=8192, n=28672, groups=3584, BR=C(16), BC=C(64)), nf, 0))
    out.append(("quip dequant butterfly stage", kq._butterfly_kernel, dict(x_ptr="*fp32", nvec=8192, npairs=14336,
                stride_v=28672, stride_e=1, half=64, c=0.5, LAST=C(True), BV=C(16), BP=C(64)), nf, 0))
    out.append(("quip dequant factor", kq._factor_kernel, dict(x_ptr="*fp32", y_ptr="*fp32", f_ptr="*fp32", nvec=8192,
                a=7, h=4096, stride_v=28672, stride_e=1, BV=C(16), BH=C(64)), nf, 0))
    for name, kern, dt in (("signs", kq._sign_kernel, "*i8"), ("diagonals", kq._diag_kernel, "*fp16")):
        out.append((f"quip dequant {name}", kern, dict(x_ptr="*fp32", sv_ptr=dt, su_ptr=dt, m=8192, n=28672, BR=C(16),
                    BC=C(64)), nf, 0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: H100/H200)")
    ap.add_argument("--only", default="", help="substring of the case labels to build")
    args = ap.parse_args(argv)
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the installed Triton
        print(f"compile_check_codecs: this Triton has no usable compiler API ({e!r})", flush=True)
        return 2
    print(f"compile_check_codecs: triton {triton.__version__}, target sm_{args.arch}", flush=True)
    failed = 0
    todo = [c for c in cases() if args.only in c[0]]
    for label, kernel, kargs, opts, per_thread in todo:
        t0 = time.perf_counter()
        try:
            k = build(kernel, kargs, args.arch, **opts)
            text = sass(k)
            spills = text.count("STL")
            extra = f", {main_loop_instructions(text) / per_thread:.2f} instr/weight" if per_thread else ""
            status = "PASS" if not spills else "SPILL"
            print(f"{status:5s} {label}: {len(INSTR.findall(text))} instr, {spills} spill stores{extra} "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL  {label}: {type(e).__name__}: {str(e)[-600:]}", flush=True)
    print(f"compile_check_codecs: {len(todo) - failed}/{len(todo)} built", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
