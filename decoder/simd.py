"""Exact vector primitives for the Numba quip decoder (f32) and encoder (f64): independent lanes side by side.

LLVM does not vectorise the Walsh-Hadamard butterflies written as Numba loops
(the eight loads and stores of a radix-8 step share one array at run-time
offsets, so it cannot rule out overlap). These intrinsics emit the vector IR
directly: each lane gets exactly the scalar operations (IEEE ``fadd``, ``fsub``,
``fmul``, ``fdiv`` without fast-math flags, so no FMA contraction and no
reassociation), in the scalar order; only independent lanes run side by side.
All loads of a step precede its stores, so ``src`` and ``dst`` may be the same
buffer.

Buffers are flat C-contiguous arrays; an offset ``p`` addresses the lanes
``buf[p : p + lanes]`` (LANES = 16 for f32, LANES64 = 8 for f64: one AVX-512
register). Callers guarantee the bounds (the validated shapes fix every
offset); nothing here checks them.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

LANES = 16  # f32 lanes: one AVX-512 register (two AVX2 registers where that is all there is)
LANES64 = 8  # f64 lanes

_I32 = ir.IntType(32)
_KINDS = {"f32": (ir.FloatType(), LANES), "f64": (ir.DoubleType(), LANES64)}


def _vector_of(array) -> tuple:  # noqa: ANN001
    """(vector type, divide) for a Numba f32 or f64 array type: one register of its lanes; ``divide`` for f64,
    whose butterflies end in the encoder's true division by sqrt(h) (f32: the decoder's multiply by c_k)."""
    elem, lanes = _KINDS["f64" if array.dtype == types.float64 else "f32"]
    return ir.VectorType(elem, lanes), array.dtype == types.float64


def _data(context, builder, ty, val):  # noqa: ANN001, ANN202
    return context.make_array(ty)(context, builder, val).data


def _splat(builder, x, lanes: int):  # noqa: ANN001, ANN202
    v = ir.Constant(ir.VectorType(x.type, lanes), ir.Undefined)
    for lane in range(lanes):
        v = builder.insert_element(v, x, _I32(lane))
    return v


def _load(builder, data, off, vt):  # noqa: ANN001, ANN202
    return builder.load(builder.bitcast(builder.gep(data, [off], inbounds=True), vt.as_pointer()), align=4)


def _store(builder, x, data, off) -> None:  # noqa: ANN001
    builder.store(x, builder.bitcast(builder.gep(data, [off], inbounds=True), x.type.as_pointer()), align=4)


def _finish(builder, values, offs, data, last, c, divide: bool) -> None:  # noqa: ANN001
    """Store ``values``; when ``last`` is true each times c (decoder: c_k) or divided by c (encoder: sqrt(h))."""
    lanes = values[0].type.count
    cv = _splat(builder, c, lanes)
    with builder.if_else(cgutils.is_true(builder, last)) as (then, other):
        with then:
            for o, x in zip(offs, values, strict=True):
                _store(builder, builder.fdiv(x, cv) if divide else builder.fmul(x, cv), data, o)
        with other:
            for o, x in zip(offs, values, strict=True):
                _store(builder, x, data, o)


def _stages(builder, v: list):  # noqa: ANN001, ANN202
    """The log2(len(v)) Sylvester stages half = 1, 2, .. between the vectors ``v`` (lane by lane, each stage on
    the previous one's rounded values): v[i] + v[i + half], v[i] - v[i + half] where bit ``half`` of i is clear."""
    half = 1
    while half < len(v):
        w = list(v)
        for i in range(len(v)):
            if not i & half:
                w[i] = builder.fadd(v[i], v[i + half])
                w[i + half] = builder.fsub(v[i], v[i + half])
        v = w
        half *= 2
    return v


def _within(builder, x):  # noqa: ANN001, ANN202
    """The log2(lanes) Sylvester stages half = 1, 2, .. inside the one vector ``x`` (lane j pairs with j ^ half).

    Lane j with bit ``half`` clear gets u + v (u = x[j], v = its partner), a lane with it set gets u - v (u =
    the partner, v = x[j]) computed as (-v) + u: IEEE 754 defines x - y as x + (-y), sign flips are exact
    and addition commutes, so the bits are those of the subtraction (NaN stays NaN). One shuffle, one sign
    flip and one addition per stage instead of two shuffles, two operations and a blend."""
    lanes = x.type.count
    bits = 64 if isinstance(x.type.element, ir.DoubleType) else 32
    it = ir.IntType(bits)
    iv = ir.VectorType(it, lanes)
    half = 1
    while half < lanes:
        swap = ir.Constant(ir.VectorType(_I32, lanes), [j ^ half for j in range(lanes)])
        partner = builder.shuffle_vector(x, x, swap)
        sign = ir.Constant(iv, [(1 << (bits - 1)) if j & half else 0 for j in range(lanes)])
        x = builder.fadd(builder.bitcast(builder.xor(builder.bitcast(x, iv), sign), x.type), partner)
        half *= 2
    return x


def _butterfly(radix: int):  # noqa: ANN202
    """Intrinsic bfly(src, dst, p, s, c, last) on f32 or f64 arrays (the lanes of one register): the
    log2(radix) Sylvester stages half = s, 2s, ... on the vectors at p + k s (k < radix), each stage on the
    previous one's rounded values; with ``last`` the outputs are then multiplied by c (f32, quip.md §5.2 (b))
    or divided by c (f64, the encoder's true division)."""

    @intrinsic
    def bfly(typingctx, src, dst, p, s, c, last):  # noqa: ANN001, ANN202, ARG001
        sig = types.void(src, dst, p, s, c, last)
        vt, divide = _vector_of(src)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            a_src = _data(context, builder, signature.args[0], args[0])
            a_dst = _data(context, builder, signature.args[1], args[1])
            p, s, c, last = args[2:]
            offs = [builder.add(p, builder.mul(s, ir.Constant(s.type, k))) for k in range(radix)]
            v = _stages(builder, [_load(builder, a_src, o, vt) for o in offs])
            _finish(builder, v, offs, a_dst, last, c, divide)
            return context.get_dummy_value()

        return sig, codegen

    return bfly


def _block(t: int):  # noqa: ANN202
    """Intrinsic f(v, p, c, last) on an f32 or f64 array: the 2^t consecutive vectors at p, each through the
    log2(lanes) stages inside it (:func:`_within`: element p + j pairs with p + (j ^ half)), then the t stages
    between them in registers, then c as :func:`_butterfly`: the first log2(lanes) + t stages of a block of
    h >= lanes << t elements in one pass."""

    @intrinsic
    def block(typingctx, v, p, c, last):  # noqa: ANN001, ANN202, ARG001
        sig = types.void(v, p, c, last)
        vt, divide = _vector_of(v)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            data = _data(context, builder, signature.args[0], args[0])
            p, c, last = args[1:]
            offs = [builder.add(p, ir.Constant(p.type, k * vt.count)) for k in range(1 << t)]
            v = _stages(builder, [_within(builder, _load(builder, data, o, vt)) for o in offs])
            _finish(builder, v, offs, data, last, c, divide)
            return context.get_dummy_value()

        return sig, codegen

    return block


MIX_MAX = 16  # largest factor size mixed in registers by :func:`mix_lanes`


@intrinsic
def mix_lanes(typingctx, v, p, s, a, coef, c0):  # noqa: ANN001, ANN202, ARG001
    """For 2 <= a <= MIX_MAX, in place: the a f32 vectors x_t at v[p + t s] become y_al = the sequential sum
    over t of coef[c0 + al a + t] * x_t (quip.md §5.2 (c): from the first product, each product rounded and
    then added, no FMA, t increasing), all loads before any store; returns False (nothing done) for other a.
    The same operations as :data:`dot_lanes` per output, with the inputs read once and kept in registers."""
    sig = types.boolean(v, p, s, a, coef, c0)
    vt = ir.VectorType(ir.FloatType(), LANES)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        data = _data(context, builder, signature.args[0], args[0])
        a_coef = _data(context, builder, signature.args[4], args[4])
        _, p, s, a, _, c0 = args
        fn = builder.function
        done = fn.append_basic_block("mix.done")
        other = fn.append_basic_block("mix.other")
        switch = builder.switch(a, other)
        results = []
        for size in range(2, MIX_MAX + 1):
            bb = fn.append_basic_block(f"mix.{size}")
            switch.add_case(ir.Constant(a.type, size), bb)
            builder.position_at_end(bb)
            offs = [builder.add(p, builder.mul(s, ir.Constant(s.type, t))) for t in range(size)]
            xs = [_load(builder, data, o, vt) for o in offs]
            ys = []
            for al in range(size):
                acc = None
                for t in range(size):
                    f = builder.load(builder.gep(a_coef, [builder.add(c0, ir.Constant(c0.type, al * size + t))],
                                                 inbounds=True))
                    prod = builder.fmul(_splat(builder, f, LANES), xs[t])
                    acc = prod if acc is None else builder.fadd(acc, prod)
                ys.append(acc)
            for o, y in zip(offs, ys, strict=True):
                _store(builder, y, data, o)
            builder.branch(done)
            results.append((ir.Constant(ir.IntType(1), 1), builder.block))
        builder.position_at_end(other)
        builder.branch(done)
        results.append((ir.Constant(ir.IntType(1), 0), other))
        builder.position_at_end(done)
        phi = builder.phi(ir.IntType(1))
        for val, bb in results:
            phi.add_incoming(val, bb)
        return context.cast(builder, phi, types.boolean, types.boolean)

    return sig, codegen


def _dot(kind: str, from_zero: bool):  # noqa: ANN202
    """Intrinsic f(src, p, s, count, coef, c0, cs, dst, q): dst[q:] = the sequential sum over t < count of
    coef[c0 + t cs] * src[p + t s:], each product rounded and then added to the running sum (no FMA), in
    increasing t. The decoder's sum starts from the first product (quip.md §5.2 (c)); the encoder's
    (``from_zero``) from +0.0, as numpy's einsum adds (0 + p0 differs from p0 only for p0 = -0.0)."""
    elem, lanes = _KINDS[kind]
    vt = ir.VectorType(elem, lanes)

    @intrinsic
    def dot(typingctx, src, p, s, count, coef, c0, cs, dst, q):  # noqa: ANN001, ANN202, ARG001
        sig = types.void(src, p, s, count, coef, c0, cs, dst, q)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            a_src = _data(context, builder, signature.args[0], args[0])
            a_coef = _data(context, builder, signature.args[4], args[4])
            a_dst = _data(context, builder, signature.args[7], args[7])
            _, p, s, count, _, c0, cs, _, q = args

            def product(t):  # noqa: ANN001, ANN202
                f = builder.load(builder.gep(a_coef, [builder.add(c0, builder.mul(cs, t))], inbounds=True))
                return builder.fmul(_splat(builder, f, lanes), _load(builder, a_src, builder.add(p, builder.mul(s, t)),
                                                                     vt))

            zero = ir.Constant(count.type, 0)
            one = ir.Constant(count.type, 1)
            if from_zero:
                acc = cgutils.alloca_once_value(builder, ir.Constant(vt, [0.0] * lanes))
                start = zero
            else:
                acc = cgutils.alloca_once_value(builder, product(zero))
                start = one
            with cgutils.for_range_slice(builder, start, count, one, inc=True) as (t, _):
                builder.store(builder.fadd(builder.load(acc), product(t)), acc)
            _store(builder, builder.load(acc), a_dst, q)
            return context.get_dummy_value()

        return sig, codegen

    return dot


bfly8, bfly4, bfly2 = _butterfly(8), _butterfly(4), _butterfly(2)
in_vector = _block(0)  # stages half = 1, 2, 4, 8 (f32) or 1, 2, 4 (f64)
block1, block2, block3, block4 = _block(1), _block(2), _block(3), _block(4)  # f32: 5 .. 8 stages
dot_lanes = _dot("f32", False)
dot_lanes_f64 = _dot("f64", True)


@intrinsic
def copy_lanes(typingctx, src, p, dst, q):  # noqa: ANN001, ANN202, ARG001
    """dst[q : q + lanes] = src[p : p + lanes] (both f32 or both f64)."""
    sig = types.void(src, p, dst, q)
    vt = _vector_of(src)[0]

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        a_src = _data(context, builder, signature.args[0], args[0])
        a_dst = _data(context, builder, signature.args[2], args[2])
        _store(builder, _load(builder, a_src, args[1], vt), a_dst, args[3])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def mul_lanes(typingctx, src, p, a, b, r, dst, q):  # noqa: ANN001, ANN202, ARG001
    """dst[q:] = (src[p:] * a) * b[r:] lanewise, f32, two rounded multiplies (quip.md §10.5 step 4: ``a`` =
    sv[row], ``b`` = su; with +-1 signs both are exact sign changes, the bits of v1's single multiply by
    sv * su)."""
    sig = types.void(src, p, a, b, r, dst, q)
    vt = ir.VectorType(ir.FloatType(), LANES)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        a_src = _data(context, builder, signature.args[0], args[0])
        a_b = _data(context, builder, signature.args[3], args[3])
        a_dst = _data(context, builder, signature.args[5], args[5])
        _, p, a, _, r, _, q = args
        x = builder.fmul(builder.fmul(_load(builder, a_src, p, vt), _splat(builder, a, LANES)),
                         _load(builder, a_b, r, vt))
        _store(builder, x, a_dst, q)
        return context.get_dummy_value()

    return sig, codegen


def _grid(bits: int):  # noqa: ANN202
    """Intrinsic f(words, w0, shift0, off, s, out, p): out[p + j] = f32(2 q_j - off) * s for the LANES b-bit codes
    q_j starting at bit ``shift0`` of word ``w0`` of the flat u32 ``words`` (b in 1, 2, 4, 8, so the codes never
    straddle a word); the integer is exact, then one rounded multiply (quip.md §5.1)."""
    nwords = max(1, LANES * bits // 32)
    vi = ir.VectorType(_I32, LANES)

    @intrinsic
    def grid(typingctx, words, w0, shift0, off, s, out, p):  # noqa: ANN001, ANN202, ARG001
        sig = types.void(words, w0, shift0, off, s, out, p)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            a_w = _data(context, builder, signature.args[0], args[0])
            a_out = _data(context, builder, signature.args[5], args[5])
            w0, shift0, off, s, _, p = args[1:]
            ws = [builder.load(builder.gep(a_w, [builder.add(w0, ir.Constant(w0.type, k))], inbounds=True))
                  for k in range(nwords)]
            vec = ir.Constant(vi, ir.Undefined)
            for j in range(LANES):
                vec = builder.insert_element(vec, ws[(j * bits) // 32], _I32(j))
            sh = builder.add(_splat(builder, builder.trunc(shift0, _I32), LANES),
                             ir.Constant(vi, [(j * bits) % 32 for j in range(LANES)]))
            q = builder.and_(builder.lshr(vec, sh), ir.Constant(vi, [(1 << bits) - 1] * LANES))
            t = builder.sub(builder.shl(q, ir.Constant(vi, [1] * LANES)),
                            _splat(builder, builder.trunc(off, _I32), LANES))
            x = builder.fmul(builder.sitofp(t, ir.VectorType(ir.FloatType(), LANES)), _splat(builder, s, LANES))
            _store(builder, x, a_out, p)
            return context.get_dummy_value()

        return sig, codegen

    return grid


grid1, grid2, grid4, grid8 = _grid(1), _grid(2), _grid(4), _grid(8)


def _prefetch(write: int):  # noqa: ANN202
    """Intrinsic f(buf, p): a hint to bring the cache line of buf[p] into L2 (prefetcht1; ``write``: for a store).
    No value changes and no fault, so p may be anything; used ahead of strided reads that the hardware
    prefetchers do not follow (step 3 reads 256 B of each row, rows 57 KB apart at n = 14336)."""

    @intrinsic
    def prefetch(typingctx, buf, p):  # noqa: ANN001, ANN202, ARG001
        sig = types.void(buf, p)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            ptr = builder.bitcast(builder.gep(_data(context, builder, signature.args[0], args[0]), [args[1]]),
                                  ir.IntType(8).as_pointer())
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type] + [_I32] * 3),
                                                "llvm.prefetch.p0i8")
            builder.call(fn, [ptr, _I32(write), _I32(2), _I32(1)])  # locality 2: L2; 1: data cache
            return context.get_dummy_value()

        return sig, codegen

    return prefetch


prefetch_read, prefetch_write = _prefetch(0), _prefetch(1)
