"""Exact f32 vector primitives for the Numba decoders: LANES independent lanes per operation.

LLVM does not vectorise the Walsh-Hadamard butterflies written as Numba loops
(the eight loads and stores of a radix-8 step share one array at run-time
offsets, so it cannot rule out overlap). These intrinsics emit the vector IR
directly: each lane gets exactly the scalar operations (IEEE ``fadd``, ``fsub``,
``fmul`` without fast-math flags, so no FMA contraction and no reassociation),
in the scalar order; only independent lanes run side by side. All loads of a
step precede its stores, so ``src`` and ``dst`` may be the same buffer.

Buffers are flat C-contiguous f32 arrays; an offset ``p`` addresses the
``LANES`` elements ``buf[p : p + LANES]``. Callers guarantee the bounds
(the validated shapes fix every offset); nothing here checks them.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

LANES = 16  # one AVX-512 register of f32 (two AVX2 registers where that is all there is)

_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, LANES)


def _data(context, builder, ty, val):  # noqa: ANN001, ANN202
    return context.make_array(ty)(context, builder, val).data


def _vptr(builder, data, off):  # noqa: ANN001, ANN202
    return builder.bitcast(builder.gep(data, [off], inbounds=True), _VEC.as_pointer())


def _splat(builder, x):  # noqa: ANN001, ANN202
    v = ir.Constant(_VEC, ir.Undefined)
    for lane in range(LANES):
        v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), lane))
    return v


def _load(builder, data, off):  # noqa: ANN001, ANN202
    return builder.load(_vptr(builder, data, off), align=4)


def _store(builder, x, data, off) -> None:  # noqa: ANN001
    builder.store(x, _vptr(builder, data, off), align=4)


def _butterfly(radix: int):  # noqa: ANN202
    """Intrinsic bfly(src, dst, p, s, ck, scale): the log2(radix) Sylvester stages half = s, 2s, ... on the
    vectors at p + k s (k < radix), each stage on the previous one's rounded values; with ``scale`` the
    outputs are then multiplied by ``ck`` (quip.md §5.2 (b): one multiply after the last stage)."""
    stages = radix.bit_length() - 1

    @intrinsic
    def bfly(typingctx, src, dst, p, s, ck, scale):  # noqa: ANN001, ANN202, ARG001
        sig = types.void(src, dst, p, s, ck, scale)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            a_src = _data(context, builder, signature.args[0], args[0])
            a_dst = _data(context, builder, signature.args[1], args[1])
            p, s, ck, scale = args[2:]
            offs = [builder.add(p, builder.mul(s, ir.Constant(s.type, k))) for k in range(radix)]
            v = [_load(builder, a_src, o) for o in offs]
            half = 1
            for _ in range(stages):
                w = list(v)
                for i in range(radix):
                    if not i & half:
                        w[i] = builder.fadd(v[i], v[i + half])
                        w[i + half] = builder.fsub(v[i], v[i + half])
                v = w
                half *= 2
            ckv = _splat(builder, ck)
            with builder.if_else(cgutils.is_true(builder, scale)) as (then, other):
                with then:
                    for o, x in zip(offs, v, strict=True):
                        _store(builder, builder.fmul(x, ckv), a_dst, o)
                with other:
                    for o, x in zip(offs, v, strict=True):
                        _store(builder, x, a_dst, o)
            return context.get_dummy_value()

        return sig, codegen

    return bfly


bfly8 = _butterfly(8)
bfly4 = _butterfly(4)
bfly2 = _butterfly(2)


@intrinsic
def dot_lanes(typingctx, src, p, s, count, coef, c0, dst, q):  # noqa: ANN001, ANN202, ARG001
    """dst[q:] = sequential f32 sum over t < count of coef[c0 + t] * src[p + t s:] (each product rounded, then
    added to the running sum, starting from the first product: quip.md §5.2 (c)); count >= 1."""
    sig = types.void(src, p, s, count, coef, c0, dst, q)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        a_src = _data(context, builder, signature.args[0], args[0])
        a_coef = _data(context, builder, signature.args[4], args[4])
        a_dst = _data(context, builder, signature.args[6], args[6])
        _, p, s, count, _, c0, _, q = args

        def product(t):  # noqa: ANN001, ANN202
            f = builder.load(builder.gep(a_coef, [builder.add(c0, t)], inbounds=True))
            return builder.fmul(_splat(builder, f), _load(builder, a_src, builder.add(p, builder.mul(s, t))))

        acc = cgutils.alloca_once_value(builder, product(ir.Constant(count.type, 0)))
        one = ir.Constant(count.type, 1)
        with cgutils.for_range_slice(builder, one, count, one, inc=True) as (t, _):
            builder.store(builder.fadd(builder.load(acc), product(t)), acc)
        _store(builder, builder.load(acc), a_dst, q)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_lanes(typingctx, src, p, dst, q):  # noqa: ANN001, ANN202, ARG001
    """dst[q : q + LANES] = src[p : p + LANES] (f32 arrays)."""
    sig = types.void(src, p, dst, q)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        a_src = _data(context, builder, signature.args[0], args[0])
        a_dst = _data(context, builder, signature.args[2], args[2])
        _store(builder, _load(builder, a_src, args[1]), a_dst, args[3])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def mul_lanes(typingctx, src, p, a, b, r, dst, q):  # noqa: ANN001, ANN202, ARG001
    """dst[q:] = (src[p:] * a) * b[r:] lanewise, two rounded multiplies (quip.md §10.5 step 4: ``a`` = sv[row],
    ``b`` = su; with +-1 signs both are exact sign changes, the bits of v1's single multiply by sv * su)."""
    sig = types.void(src, p, a, b, r, dst, q)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        a_src = _data(context, builder, signature.args[0], args[0])
        a_b = _data(context, builder, signature.args[3], args[3])
        a_dst = _data(context, builder, signature.args[5], args[5])
        _, p, a, _, r, _, q = args
        x = builder.fmul(builder.fmul(_load(builder, a_src, p), _splat(builder, a)), _load(builder, a_b, r))
        _store(builder, x, a_dst, q)
        return context.get_dummy_value()

    return sig, codegen


def _in_vector(stages: int):  # noqa: ANN202
    """Intrinsic f(v, p, ck, scale): the Sylvester stages half = 1, 2, .., 2^(stages-1) within the vector at p
    (element p + j pairs with p + (j ^ half)); with ``scale`` then times ``ck``. Each lane computes exactly its
    scalar result: u + v where bit ``half`` of j is clear, u - v where it is set (u the lower partner)."""

    @intrinsic
    def stage(typingctx, v, p, ck, scale):  # noqa: ANN001, ANN202, ARG001
        sig = types.void(v, p, ck, scale)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            data = _data(context, builder, signature.args[0], args[0])
            p, ck, scale = args[1:]
            x = _load(builder, data, p)
            idx = ir.VectorType(ir.IntType(32), LANES)
            for s in range(stages):
                half = 1 << s
                lo = builder.shuffle_vector(x, x, ir.Constant(idx, [j & ~half for j in range(LANES)]))
                hi = builder.shuffle_vector(x, x, ir.Constant(idx, [j | half for j in range(LANES)]))
                mask = ir.Constant(ir.VectorType(ir.IntType(1), LANES), [int(bool(j & half)) for j in range(LANES)])
                x = builder.select(mask, builder.fsub(lo, hi), builder.fadd(lo, hi))
            with builder.if_else(cgutils.is_true(builder, scale)) as (then, other):
                with then:
                    _store(builder, builder.fmul(x, _splat(builder, ck)), data, p)
                with other:
                    _store(builder, x, data, p)
            return context.get_dummy_value()

        return sig, codegen

    return stage


in_vector4 = _in_vector(4)  # stages half = 1, 2, 4, 8: all of a LANES = 16 vector


def _grid(bits: int):  # noqa: ANN202
    """Intrinsic f(words, w0, shift0, off, s, out, p): out[p + j] = f32(2 q_j - off) * s for the LANES b-bit codes
    q_j starting at bit ``shift0`` of word ``w0`` of the flat u32 ``words`` (b in 1, 2, 4, 8, so the codes never
    straddle a word); the integer is exact, then one rounded multiply (quip.md §5.1)."""
    nwords = max(1, LANES * bits // 32)

    @intrinsic
    def grid(typingctx, words, w0, shift0, off, s, out, p):  # noqa: ANN001, ANN202, ARG001
        sig = types.void(words, w0, shift0, off, s, out, p)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            a_w = _data(context, builder, signature.args[0], args[0])
            a_out = _data(context, builder, signature.args[5], args[5])
            w0, shift0, off, s, _, p = args[1:]
            i32 = ir.IntType(32)
            vi = ir.VectorType(i32, LANES)
            ws = [builder.load(builder.gep(a_w, [builder.add(w0, ir.Constant(w0.type, k))], inbounds=True))
                  for k in range(nwords)]
            vec = ir.Constant(vi, ir.Undefined)
            for j in range(LANES):
                vec = builder.insert_element(vec, ws[(j * bits) // 32], i32(j))
            sh = builder.add(_splat_int(builder, builder.trunc(shift0, i32)),
                             ir.Constant(vi, [(j * bits) % 32 for j in range(LANES)]))
            q = builder.and_(builder.lshr(vec, sh), ir.Constant(vi, [(1 << bits) - 1] * LANES))
            t = builder.sub(builder.shl(q, ir.Constant(vi, [1] * LANES)), _splat_int(builder, builder.trunc(off, i32)))
            x = builder.fmul(builder.sitofp(t, _VEC), _splat(builder, s))
            _store(builder, x, a_out, p)
            return context.get_dummy_value()

        return sig, codegen

    return grid


def _splat_int(builder, x):  # noqa: ANN001, ANN202
    v = ir.Constant(ir.VectorType(x.type, LANES), ir.Undefined)
    for lane in range(LANES):
        v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), lane))
    return v


grid1, grid2, grid4, grid8 = _grid(1), _grid(2), _grid(4), _grid(8)
