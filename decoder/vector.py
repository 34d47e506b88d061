"""Explicit LLVM vector code for one packed u32 word of 1, 2, 4 or 8-bit codes (spqr.md §4), both ways.

Numba runs LLVM's loop vectoriser but not its SLP vectoriser, so a loop over
the 8 codes of one 32-bit word is unrolled into 8 scalar convert / subtract /
multiply / store chains. These intrinsics emit the vector form directly: the
same IEEE operations lane by lane (no fast-math flags, so no contraction and
no flush to zero), hence the same bits as the scalar loop, several times faster.
The decoder (decoder/spqr.py) unpacks with :func:`dequant_word`, the encoder
(encoder/spqr.py) packs with :func:`pack_word`.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I32 = ir.IntType(32)


def _splat(builder: ir.IRBuilder, value: ir.Value, count: int) -> ir.Value:
    """``value`` in every lane of a ``count``-lane vector."""
    vt = ir.VectorType(value.type, count)
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(_I32, count),
                                                                                   [0] * count))


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
