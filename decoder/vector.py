"""Explicit LLVM vector code for one packed u32 word of 1, 2, 4 or 8-bit codes (spqr.md §4), both ways.

Numba runs LLVM's loop vectoriser but not its SLP vectoriser, so a loop over
the 8 codes of one 32-bit word is unrolled into 8 scalar convert / subtract /
multiply / store chains. These intrinsics emit the vector form directly: the
same IEEE operations lane by lane (no fast-math flags, so no contraction and
no flush to zero), hence the same bits as the scalar loop, several times faster.
The decoder (decoder/spqr.py) unpacks with :func:`dequant_word`, the encoder
(encoder/spqr.py) packs with :func:`pack_word`. Numba's on-disk cache tracks only a caller's own
source file: after editing this one, clear the callers' caches (``__pycache__/*.nbi``, ``*.nbc``).
The float-lane arithmetic (QuIP's butterflies) is in :mod:`decoder.simd`, with the shared IR helpers.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import _splat  # the one splat of the decoders' vector IR

_I32 = ir.IntType(32)


@intrinsic
def dequant_word(typingctx: Any, row: types.Array, base: types.Integer, word: types.Integer,
                 bits: types.IntegerLiteral, z: types.Float, s: types.Float) -> Any:
    """row[base + t] = (f32(code t of ``word``) - z) * s for t < 32 // bits (spqr.md §4, §5 step 2), one vector.

    ``bits`` must be a literal 1, 2, 4 or 8 (codes then never straddle a word), ``word`` 32 bits wide;
    ``row`` a C-contiguous f32 array with base + 32 // bits <= row.size (not checked).
    """
    if not (isinstance(bits, types.IntegerLiteral) and bits.literal_value in (1, 2, 4, 8)
            and isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C" and row.dtype == types.float32
            and isinstance(word, types.Integer) and word.bitwidth == 32 and z == types.float32 and s == types.float32):
        return None
    b = bits.literal_value
    per = 32 // b
    sig = types.void(row, base, word, bits, z, s)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> None:
        rowv, basev, wordv, _, zv, sv = args
        data = context.make_array(signature.args[0])(context, builder, rowv).data
        vt = ir.VectorType(_I32, per)
        ft = ir.VectorType(ir.FloatType(), per)
        w = _splat(builder, wordv, per)
        codes = builder.and_(builder.lshr(w, ir.Constant(vt, [t * b for t in range(per)])),
                             ir.Constant(vt, [(1 << b) - 1] * per))
        y = builder.fmul(builder.fsub(builder.sitofp(codes, ft), _splat(builder, zv, per)), _splat(builder, sv, per))
        ptr = builder.gep(data, [context.cast(builder, basev, signature.args[1], types.intp)])
        builder.store(y, builder.bitcast(ptr, ft.as_pointer()), align=4)

    return sig, codegen


@intrinsic
def pack_word(typingctx: Any, q: types.Array, base: types.Integer, bits: types.IntegerLiteral) -> Any:
    """The u32 word holding codes q[base + t], t < 32 // bits, code t at bit t * bits (spqr.md §4).

    ``q`` is a C-contiguous f32 array of integral codes in [0, 2^bits) (as the encoder's clamped ``rint``
    leaves them); ``bits`` a literal 1, 2, 4 or 8; base + 32 // bits <= q.size (not checked).
    """
    if not (isinstance(bits, types.IntegerLiteral) and bits.literal_value in (1, 2, 4, 8)
            and isinstance(q, types.Array) and q.ndim == 1 and q.layout == "C" and q.dtype == types.float32):
        return None
    b = bits.literal_value
    per = 32 // b
    sig = types.uint32(q, base, bits)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        qv, basev, _ = args
        data = context.make_array(signature.args[0])(context, builder, qv).data
        vt = ir.VectorType(_I32, per)
        ft = ir.VectorType(ir.FloatType(), per)
        ptr = builder.gep(data, [context.cast(builder, basev, signature.args[1], types.intp)])
        codes = builder.fptoui(builder.load(builder.bitcast(ptr, ft.as_pointer()), align=4), vt)
        parts = builder.shl(codes, ir.Constant(vt, [t * b for t in range(per)]))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [vt]),
                                            f"llvm.vector.reduce.or.v{per}i32")
        return builder.call(fn, [parts])  # the pieces never overlap: OR is their sum

    return sig, codegen


STAT_LANES = 16  # lanes of :func:`dequant_chunk`: up to 16 codes per call


def _rne16(builder: ir.IRBuilder, x: ir.Value, count: int) -> ir.Value:
    """The spec's rne16 lane by lane, the same integer steps as ``decoder.spqr._rne16`` with selects for branches."""
    vt = ir.VectorType(_I32, count)
    ft = x.type

    def k(v: int) -> ir.Constant:
        return ir.Constant(vt, [v] * count)

    u = builder.bitcast(x, vt)
    sign = builder.and_(u, k(0x80000000))
    a = builder.and_(u, k(0x7FFFFFFF))
    odd = builder.and_(builder.lshr(a, k(13)), k(1))
    nrm = builder.or_(sign, builder.and_(builder.add(builder.add(a, k(0xFFF)), odd), k(0xFFFFE000)))
    rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ft, [ft]), f"llvm.rint.v{count}f32")
    sub = builder.fmul(builder.call(rint, [builder.fmul(x, ir.Constant(ft, [16777216.0] * count))]),
                       ir.Constant(ft, [2.0**-24] * count))  # below 2^-14: the f16 subnormal grid, exact scaling
    y = builder.select(builder.icmp_unsigned("<", a, k(0x38800000)), sub, builder.bitcast(nrm, ft))
    y = builder.select(builder.icmp_unsigned(">=", a, k(0x477FF000)), builder.bitcast(builder.or_(sign, k(0x7F800000)),
                                                                                       ft), y)
    return builder.select(builder.icmp_unsigned(">=", a, k(0x7F800000)), x, y)  # inf and NaN as they are


def _maybe(builder: ir.IRBuilder, context: Any, flag_type: Any, flag: ir.Value, fn: Any, x: ir.Value) -> ir.Value:
    """fn(x) where the boolean ``flag`` holds: decided at compile time for a literal, by a select otherwise."""
    if isinstance(flag_type, types.BooleanLiteral):
        return fn(x) if flag_type.literal_value else x
    return builder.select(context.cast(builder, flag, flag_type, types.boolean), fn(x), x)


@intrinsic
def dequant_chunk(typingctx: Any, row: types.Array, base: types.Integer, chunk: types.Integer, bits: types.Integer,
                  z: types.Float, s: types.Float, f16: types.Boolean, round_out: types.Boolean) -> Any:
    """row[base + t] = R((R16(f32(code t) - z)) * s) for t < 16, code t = bits t*bits.. of ``chunk``: 16 values
    of spqr.md §5 as one vector.

    R16 is rne16 when ``f16`` (v2 ``arith = "f16"``, §8), R rne16 when ``round_out``: second-level statistics
    take (f16, True) (step 1), codes (f16, f16) (step 2); literal flags drop the unused rounding at compile time.
    ``chunk`` is a u64 holding consecutive codes from its bit 0; lanes past 64 // bits codes hold garbage and
    are written too, so ``row`` needs base + 16 <= row.size (not checked) and the caller overwrites or ignores
    them. ``bits`` is 1..8 at run time.
    """
    if not (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C" and row.dtype == types.float32
            and isinstance(chunk, types.Integer) and chunk.bitwidth == 64 and isinstance(bits, types.Integer)
            and z == types.float32 and s == types.float32 and isinstance(f16, types.Boolean)
            and isinstance(round_out, types.Boolean)):
        return None
    n = STAT_LANES
    sig = types.void(row, base, chunk, bits, z, s, f16, round_out)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> None:
        rowv, basev, chunkv, bitsv, zv, sv, f16v, roundv = args
        data = context.make_array(signature.args[0])(context, builder, rowv).data
        i64 = ir.IntType(64)
        v64 = ir.VectorType(i64, n)
        b64 = _splat(builder, context.cast(builder, bitsv, signature.args[3], types.int64), n)
        shift = builder.mul(ir.Constant(v64, list(range(n))), b64)
        umin = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v64, [v64, v64]), f"llvm.umin.v{n}i64")
        shift = builder.call(umin, [shift, ir.Constant(v64, [63] * n)])  # a shift >= 64 would be poison
        mask = builder.sub(builder.shl(ir.Constant(v64, [1] * n), b64), ir.Constant(v64, [1] * n))
        codes = builder.trunc(builder.and_(builder.lshr(_splat(builder, chunkv, n), shift), mask),
                              ir.VectorType(_I32, n))
        ft = ir.VectorType(ir.FloatType(), n)

        def rne(x: ir.Value) -> ir.Value:
            return _rne16(builder, x, n)

        t = _maybe(builder, context, signature.args[6], f16v,
                   rne, builder.fsub(builder.sitofp(codes, ft), _splat(builder, zv, n)))
        y = _maybe(builder, context, signature.args[7], roundv, rne, builder.fmul(t, _splat(builder, sv, n)))
        ptr = builder.gep(data, [context.cast(builder, basev, signature.args[1], types.intp)])
        builder.store(y, builder.bitcast(ptr, ft.as_pointer()), align=4)

    return sig, codegen
