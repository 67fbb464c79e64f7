"""Whole-block vector operations for the numba kernels, written as LLVM vector IR.

numba turns off LLVM's SLP vectorizer, and the loop vectorizer never sees a 16- or 32-long
loop (LLVM unrolls it first), so block kernels written as scalar loops run one value at a
time. These intrinsics load a block as one LLVM vector and do the same float32 operations,
one IEEE rounding each (no fast-math flags, so nothing is fused or reassociated): the results
are the bits of the scalar code, only faster. LLVM lowers the generic vectors to whatever the
CPU has (SSE, AVX2, AVX-512, NEON).

Every intrinsic takes a C-contiguous 1-D array and an element offset; callers guarantee the
block lies inside the array (there is no bounds check, as in the rest of numba's indexing).
Source rows are float32, or uint16 holding fp16 or bf16 bits (``kind``, a ``SRC_*`` code): a
block of those is decoded to float32 in registers, exactly, so a half-precision tensor is read
once, at half the bytes, with no float32 copy anywhere.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .common import SRC_F16

_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_F32 = ir.FloatType()


def _block_ptr(context, builder, aryty, ary, offset, vecty):
    """Pointer to ``vecty`` starting at element ``offset`` of a 1-D array."""
    arr = context.make_array(aryty)(context, builder, ary)
    ptr = builder.gep(arr.data, [offset])
    return builder.bitcast(ptr, vecty.as_pointer())


def _splat(builder, value, vecty):
    vec = builder.insert_element(ir.Constant(vecty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, vecty.count), None))


def _const_vec(vecty, value):
    return ir.Constant(vecty, [ir.Constant(vecty.element, value)] * vecty.count)


def _call(builder, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


def _check_array(ary, dtype, name):
    # Vector loads assume consecutive elements: only C-contiguous 1-D arrays are accepted.
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if not (
        isinstance(ary, types.Array) and ary.ndim == 1 and ary.dtype in dtypes and ary.layout == "C"
    ):
        raise TypeError(f"{name}: expected a C-contiguous 1-D {dtypes} array, got {ary}")


def _check_source(row, name):
    _check_array(row, (types.float32, types.uint16), name)


def _check_f32(value, name):
    if value != types.float32:
        raise TypeError(f"{name}: expected a float32 scalar, got {value}")


def _f16_to_f32(builder, h32):
    """fp16 bits (zero-extended to an i32 vector) -> float32 vector, exact and branch-free:
    normals by rebiasing the exponent, subnormals (and zero) as ``mantissa * 2^-24`` (no
    subnormal float operand, which some CPUs handle slowly), inf/NaN by setting the exponent."""
    vecty = h32.type
    fvec = ir.VectorType(_F32, vecty.count)
    mag = builder.shl(builder.and_(h32, _const_vec(vecty, 0x7FFF)), _const_vec(vecty, 13))
    normal = builder.add(mag, _const_vec(vecty, 0x38000000))
    mant = builder.and_(h32, _const_vec(vecty, 0x3FF))
    sub = builder.bitcast(
        builder.fmul(builder.sitofp(mant, fvec), _const_vec(fvec, 2.0**-24)), vecty
    )
    special = builder.or_(mag, _const_vec(vecty, 0x7F800000))
    is_sub = builder.icmp_unsigned("<", mag, _const_vec(vecty, 0x00800000))
    is_special = builder.icmp_unsigned(">=", mag, _const_vec(vecty, 0x0F800000))
    bits = builder.select(is_sub, sub, builder.select(is_special, special, normal))
    sign = builder.shl(builder.and_(h32, _const_vec(vecty, 0x8000)), _const_vec(vecty, 16))
    return builder.bitcast(builder.or_(bits, sign), fvec)


def _load_f32(context, builder, rowty, row, base, kind, n):
    """The n source values at ``row[base:]`` as a float32 vector (decoded if half precision)."""
    fvec = ir.VectorType(_F32, n)
    if rowty.dtype == types.float32:
        return builder.load(_block_ptr(context, builder, rowty, row, base, fvec), align=1)
    hvec = ir.VectorType(ir.IntType(16), n)
    ivec = ir.VectorType(_I32, n)
    raw = builder.load(_block_ptr(context, builder, rowty, row, base, hvec), align=1)
    h32 = builder.zext(raw, ivec)
    is_f16 = builder.icmp_signed("==", kind, ir.Constant(kind.type, SRC_F16))
    with builder.if_else(is_f16, likely=None) as (then, otherwise):
        with then:
            f16 = _f16_to_f32(builder, h32)
            f16_block = builder.block
        with otherwise:
            bf16 = builder.bitcast(builder.shl(h32, _const_vec(ivec, 16)), fvec)
            bf16_block = builder.block
    phi = builder.phi(fvec)
    phi.add_incoming(f16, f16_block)
    phi.add_incoming(bf16, bf16_block)
    return phi


def _load_abs_bits(context, builder, rowty, row, base, kind, n):
    vecty = ir.VectorType(_I32, n)
    bits = builder.bitcast(_load_f32(context, builder, rowty, row, base, kind, n), vecty)
    return builder.and_(bits, _const_vec(vecty, 0x7FFFFFFF)), vecty


def make_absmax_bits(n: int):
    """Intrinsic ``f(row, base, kind) -> uint32``: the largest of ``bits(x) & 0x7fffffff`` over
    ``row[base:base+n]`` (the float order of |x|; >= 0x7f800000 means an inf or NaN)."""

    @intrinsic
    def absmax_bits(typingctx, row, base, kind):
        _check_source(row, "absmax_bits")

        def codegen(context, builder, sig, args):
            keys, vecty = _load_abs_bits(context, builder, sig.args[0], *args, n)
            return _call(builder, f"llvm.vector.reduce.umax.v{n}i32", _I32, [keys])

        return types.uint32(row, base, kind), codegen

    return absmax_bits


def make_first_abs(n: int, op: str):
    """Intrinsic ``f(row, base, kind, key) -> int``: the first j < n with
    ``bits(row[base+j]) & 0x7fffffff <op> key`` (unsigned compare; n if none)."""
    mask_ty = ir.IntType(n)

    @intrinsic
    def first_abs(typingctx, row, base, kind, key):
        _check_source(row, "first_abs")

        def codegen(context, builder, sig, args):
            keys, vecty = _load_abs_bits(context, builder, sig.args[0], *args[:3], n)
            key = builder.trunc(args[3], _I32) if args[3].type.width > 32 else args[3]
            eq = builder.icmp_unsigned(op, keys, _splat(builder, key, vecty))
            mask = builder.bitcast(eq, mask_ty)
            first = _call(builder, f"llvm.cttz.i{n}", mask_ty, [mask, ir.Constant(_I1, 0)])
            return builder.zext(first, ir.IntType(64)) if n < 64 else first

        return types.int64(row, base, kind, key), codegen

    return first_abs


def _make_pack(name: str, pack_block):
    """Intrinsic ``f(row, base, kind, inv, out, obase)`` storing at ``out[obase:]`` the byte
    vector ``pack_block(builder, load, base, vinv)`` builds, where ``load(offset, n)`` is the n
    source values at ``row[offset:]`` as a float32 vector and ``vinv(n)`` is ``inv`` splatted
    to n lanes."""

    @intrinsic
    def pack(typingctx, row, base, kind, inv, out, obase):
        _check_source(row, name)
        _check_array(out, types.uint8, name)
        _check_f32(inv, name)

        def codegen(context, builder, sig, args):
            rowty, outty = sig.args[0], sig.args[4]
            ary, base, kind, inv, oary, obase = args

            def load(offset, n):
                return _load_f32(context, builder, rowty, ary, offset, kind, n)

            def vinv(n):
                return _splat(builder, inv, ir.VectorType(_F32, n))

            packed = pack_block(builder, load, base, vinv)
            dst = _block_ptr(context, builder, outty, oary, obase, packed.type)
            builder.store(packed, dst, align=1)
            return context.get_dummy_value()

        return types.none(row, base, kind, inv, out, obase), codegen

    return pack


def _make_nibble_pack(name: str, qk: int, codes):
    """A :func:`_make_pack` intrinsic storing ``lo | hi << 4``, with lo/hi the int8 codes
    ``codes(builder, x, inv)`` of the two halves of the block (float32 vectors ``x``)."""
    half = qk // 2

    def pack_block(builder, load, base, vinv):
        inv = vinv(half)
        lo = codes(builder, load(base, half), inv)
        hi = codes(builder, load(builder.add(base, ir.Constant(base.type, half)), half), inv)
        return builder.or_(lo, builder.shl(hi, _const_vec(lo.type, 4)))

    return _make_pack(name, pack_block)


def make_q4_0_pack(qk: int):
    """Intrinsic ``f(row, base, kind, inv, out, obase)``: ``out[obase:obase+qk/2] = lo | hi << 4``
    with lo/hi the Q4_0 codes ``min(15, int(x * inv + 8.5))`` of the block's two halves."""
    half = qk // 2
    ivec = ir.VectorType(_I32, half)
    bias = _const_vec(ir.VectorType(_F32, half), 8.5)
    fifteen = _const_vec(ivec, 15)

    def codes(builder, x, inv):
        q = builder.fptosi(builder.fadd(builder.fmul(x, inv), bias), ivec)
        q = builder.select(builder.icmp_signed("<", q, fifteen), q, fifteen)
        return builder.trunc(q, ir.VectorType(_I8, half))

    return _make_nibble_pack("q4_0_pack", qk, codes)


def make_q4_0_pack_nearest(qk: int, nmax: int):
    """Intrinsic ``f(row, base, kind, inv, out, obase)``: ``out[obase:obase+qk/2] = lo | hi << 4``
    with lo/hi the codes ``clamp(nearest_int(x * inv), -nmax, nmax-1) + nmax`` of the block's
    two halves (ggml's make_qx_quants codes; ``x * inv`` finite and within +-2^22)."""
    half = qk // 2
    fvec = ir.VectorType(_F32, half)
    bias = _const_vec(fvec, 12582912.0)  # 1.5 * 2^23: rounds half to even
    lo_lim = _const_vec(fvec, float(-nmax))
    hi_lim = _const_vec(fvec, float(nmax - 1))
    offset = _const_vec(fvec, float(nmax))

    def codes(builder, x, inv):
        v = builder.fsub(builder.fadd(builder.fmul(x, inv), bias), bias)
        v = builder.select(builder.fcmp_ordered(">", v, lo_lim), v, lo_lim)
        v = builder.select(builder.fcmp_ordered("<", v, hi_lim), v, hi_lim)
        q = builder.fptosi(builder.fadd(v, offset), ir.VectorType(_I32, half))
        return builder.trunc(q, ir.VectorType(_I8, half))

    return _make_nibble_pack("q4_0_pack_nearest", qk, codes)


def make_q8_0_pack(qk: int):
    """Intrinsic ``f(row, base, kind, inv, out, obase)``: ``out[obase:obase+qk]`` = the Q8_0
    codes ``roundf(x * inv)`` (halves away from zero) of ``row[base:base+qk]`` as int8."""
    fvec = ir.VectorType(_F32, qk)

    def pack_block(builder, load, base, vinv):
        v = builder.fmul(load(base, qk), vinv(qk))
        r = _call(builder, f"llvm.round.v{qk}f32", fvec, [v])  # C roundf
        return builder.trunc(builder.fptosi(r, ir.VectorType(_I32, qk)), ir.VectorType(_I8, qk))

    return _make_pack("q8_0_pack", pack_block)


def _make_unpack(name: str, nbytes: int, unpack_block):
    """Intrinsic ``f(data, obase, d, out, base)`` loading the ``nbytes`` code bytes at
    ``data[obase:]`` as an int8 vector ``qs`` and storing each ``(at, v)`` of
    ``unpack_block(builder, qs, d)`` (float32 vectors) at ``out[base+at:]``."""

    @intrinsic
    def unpack(typingctx, data, obase, d, out, base):
        _check_array(data, types.uint8, name)
        _check_array(out, types.float32, name)
        _check_f32(d, name)

        def codegen(context, builder, sig, args):
            dataty, outty = sig.args[0], sig.args[3]
            dary, obase, d, oary, base = args
            bvec = ir.VectorType(_I8, nbytes)
            qs = builder.load(_block_ptr(context, builder, dataty, dary, obase, bvec), align=1)
            for at, v in unpack_block(builder, qs, d):
                dst = builder.add(base, ir.Constant(base.type, at)) if at else base
                builder.store(v, _block_ptr(context, builder, outty, oary, dst, v.type), align=1)
            return context.get_dummy_value()

        return types.none(data, obase, d, out, base), codegen

    return unpack


def make_q4_0_unpack(qk: int):
    """Intrinsic ``f(data, obase, d, out, base)``: ``out[base:base+qk]`` = ``(nibble - 8) * d``
    of the ``qk/2`` code bytes at ``data[obase:]`` (low nibbles first)."""
    half = qk // 2
    bvec = ir.VectorType(_I8, half)
    ivec = ir.VectorType(_I32, half)
    fvec = ir.VectorType(_F32, half)

    def unpack_block(builder, qs, d):
        vd = _splat(builder, d, fvec)
        nibbles = (
            (0, builder.and_(qs, _const_vec(bvec, 0x0F))),
            (half, builder.lshr(qs, _const_vec(bvec, 4))),
        )
        for at, nib in nibbles:
            q = builder.sub(builder.zext(nib, ivec), _const_vec(ivec, 8))
            yield at, builder.fmul(builder.sitofp(q, fvec), vd)

    return _make_unpack("q4_0_unpack", half, unpack_block)


def make_q8_0_unpack(qk: int):
    """Intrinsic ``f(data, obase, d, out, base)``: ``out[base:base+qk] = int8(data[obase+j]) * d``."""
    fvec = ir.VectorType(_F32, qk)

    def unpack_block(builder, qs, d):
        yield 0, builder.fmul(builder.sitofp(qs, fvec), _splat(builder, d, fvec))

    return _make_unpack("q8_0_unpack", qk, unpack_block)


def make_copy_xor(n: int, xor: int):
    """Intrinsic ``f(src_u8, s, dst_u8, o)``: ``dst[o:o+n] = src[s:s+n] ^ xor`` as one move."""

    @intrinsic
    def copy_xor(typingctx, src, s, dst, o):
        _check_array(src, types.uint8, "copy_xor")
        _check_array(dst, types.uint8, "copy_xor")

        def codegen(context, builder, sig, args):
            srcty, _, dstty, _ = sig.args
            # One integer of n bytes: a plain scalar move (and xor) for n = 2, 4, 8.
            word = ir.IntType(8 * n)
            v = builder.load(_block_ptr(context, builder, srcty, args[0], args[1], word), align=1)
            if xor:
                v = builder.xor(v, ir.Constant(word, int.from_bytes(bytes([xor]) * n, "little")))
            builder.store(v, _block_ptr(context, builder, dstty, args[2], args[3], word), align=1)
            return context.get_dummy_value()

        return types.none(src, s, dst, o), codegen

    return copy_xor
