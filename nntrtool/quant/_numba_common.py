"""Scalar helpers for the numba kernels: fp16 <-> float32 bits, ``nearest_int``, and loading
one source element (float32, fp16 or bf16 bits) as float32 so kernels decode on the fly.

This is the only shared module that imports numba; kernels import it lazily. Every helper is
inlined into its caller and does float32 arithmetic only (numba keeps float32 op float32 in
float32; fastmath stays off so no operation is fused or reassociated).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from nntrtool.quant.kernel_cost import use_numba_cache

# A read-only install (system site-packages, a container image) leaves numba no __pycache__
# to write; it then tries its per-user cache, and where that is not writable either it raises
# on the first cached kernel.
use_numba_cache()

import numba  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import intrinsic, overload, register_jitable  # noqa: E402

from nntrtool.qtypes import TensorType  # noqa: E402
from nntrtool.quant.common import SRC_F16, non_finite_error, to_f32  # noqa: E402

_QUANT_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def _package_stamp() -> bytes:
    """A hash of every module of this package: the kernels inline helpers and intrinsics from
    modules other than their own, which numba's cache does not track."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(_QUANT_DIR)):
        if name.endswith(".py"):
            h.update(name.encode())
            with open(os.path.join(_QUANT_DIR, name), "rb") as fh:
                h.update(fh.read())
    return h.digest()


def _install_cache_locators() -> None:
    """Make cached kernels of this package stale when any of its modules changes.

    numba keys a cached kernel on its own source file only, so an edited helper would keep
    serving old machine code. These locators, tried first and only for this package's files,
    add the package stamp; if numba's caching internals ever change, default caching stays.
    """
    try:
        from numba.core import caching

        bases = (
            caching.UserProvidedCacheLocator,
            caching.InTreeCacheLocator,
            caching.UserWideCacheLocator,
        )
        impl = caching.CacheImpl
    except (ImportError, AttributeError):
        return

    def make(base):
        class PackageLocator(base):
            def get_source_stamp(self):
                return (super().get_source_stamp(), _package_stamp())

            @classmethod
            def from_function(cls, py_func, py_file):
                if os.path.dirname(os.path.abspath(py_file)) != _QUANT_DIR:
                    return None
                return super().from_function(py_func, py_file)

        PackageLocator.__name__ = f"Nntrtool{base.__name__}"
        return PackageLocator

    if not any(c.__name__.startswith("Nntrtool") for c in impl._locator_classes):
        impl._locator_classes = [make(b) for b in bases] + list(impl._locator_classes)


_install_cache_locators()

F32 = np.float32
U32 = np.uint32

_NEAREST_INT_BIAS = np.float32(12582912.0)
_HALF = np.float32(0.5)


@intrinsic
def _bitcast_f32_to_u32(typingctx, v):
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _bitcast_u32_to_f32(typingctx, u):
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@register_jitable(inline="always")
def f32_bits(v):
    """The uint32 bits of a float32 scalar."""
    return _bitcast_f32_to_u32(np.float32(v))


@register_jitable(inline="always")
def f32_from_bits(u):
    """The float32 whose bits are ``u`` (low 32 bits)."""
    return _bitcast_u32_to_f32(np.uint32(u))


@register_jitable(inline="always")
def f32_to_f16_bits(v):
    """fp16 bits (int) of a float32, round to nearest even; overflow to inf; NaN kept NaN."""
    u = f32_bits(np.float32(v))
    sign = (u >> U32(16)) & U32(0x8000)
    a = u & U32(0x7FFFFFFF)
    if a >= U32(0x47800000):  # |v| >= 65536, inf or NaN
        if a > U32(0x7F800000):
            h = U32(0x7C00) + ((a & U32(0x7FFFFF)) >> U32(13))
            if h == U32(0x7C00):
                h = U32(0x7C01)
            return np.uint16(sign | h)
        return np.uint16(sign | U32(0x7C00))
    if a < U32(0x38800000):  # below 2^-14: fp16 subnormal or zero
        # Adding 0.5 aligns the fp16 subnormal ulp (2^-24) with the float32 ulp of 0.5, so
        # the float32 adder does the round to nearest even.
        t = f32_from_bits(a) + _HALF
        return np.uint16(sign | (f32_bits(t) - U32(0x3F000000)))
    odd = (a >> U32(13)) & U32(1)
    # Rebias the exponent (127 -> 15) and round half to even: add 0xFFF plus the lowest kept
    # bit, so an exact half rounds up only when that bit is odd.
    a = a - U32(0x38000000) + U32(0xFFF) + odd
    return np.uint16(sign | (a >> U32(13)))


_TWO_POW_M24 = np.float32(2.0**-24)


@register_jitable(inline="always")
def f16_bits_to_f32(h):
    """The float32 value of fp16 bits ``h`` (exact, NaN payload kept)."""
    h = U32(h)
    mag = (h & U32(0x7FFF)) << U32(13)
    # Normals: rebias the exponent. Subnormals and zero: mantissa * 2^-24, exact, without a
    # subnormal float operand. Exponent 31: inf/NaN. Selects rather than branches, so a row
    # decode loop vectorizes (the same formula as the vector decode in _simd).
    bits = mag + U32(0x38000000)
    if mag < U32(0x00800000):
        bits = f32_bits(F32(h & U32(0x3FF)) * _TWO_POW_M24)
    if mag >= U32(0x0F800000):
        bits = mag | U32(0x7F800000)
    return f32_from_bits(bits | ((h & U32(0x8000)) << U32(16)))


@register_jitable(inline="always")
def store_f16_bits(out, o, h):
    """Store fp16 bits ``h`` little-endian at ``out[o:o+2]`` (a block's scale)."""
    out[o] = np.uint8(U32(h) & U32(0xFF))
    out[o + 1] = np.uint8(U32(h) >> U32(8))


@register_jitable(inline="always")
def load_f16(data, o):
    """The float32 value of the little-endian fp16 at ``data[o:o+2]`` (a block's scale)."""
    return f16_bits_to_f32(U32(data[o]) | (U32(data[o + 1]) << U32(8)))


@register_jitable(inline="always")
def bf16_bits_to_f32(h):
    """The float32 value of bfloat16 bits ``h``."""
    return f32_from_bits(U32(h) << U32(16))


@register_jitable(inline="always")
def nearest_int(v):
    """GGML's ``nearest_int`` of a float32 (round half to even for |v| <= 2^22)."""
    t = np.float32(v) + _NEAREST_INT_BIAS
    return np.int32(f32_bits(t) & U32(0x7FFFFF)) - np.int32(0x400000)


def make_clamp(lo: float, hi: float) -> Any:
    """Intrinsic ``f(v) -> float32``: ``min(max(v, lo), hi)`` for a float32 that is never NaN,
    as two SIMD min/max instructions.

    Plain compare-and-select code must keep NaN semantics and costs four instructions per
    vector; the ``nnan nsz`` flags on the two compares let LLVM emit max/min instead. Scale
    searches use it on finite integers (+0.0 for zero), where the result is the same value.
    """

    @intrinsic
    def clamp(typingctx, v):
        if v != types.float32:
            return None

        def codegen(context, builder, signature, args):
            (x,) = args
            low = ir.Constant(ir.FloatType(), float(lo))
            high = ir.Constant(ir.FloatType(), float(hi))
            flags = ("nnan", "nsz")
            x = builder.select(builder.fcmp_ordered(">", x, low, flags=flags), x, low, flags=flags)
            return builder.select(
                builder.fcmp_ordered("<", x, high, flags=flags), x, high, flags=flags
            )

        return types.float32(types.float32), codegen

    return clamp


def load_f32(row, j, src_kind):
    """Element ``j`` of a source row as float32 (float32 row, or uint16 fp16/bf16 bits)."""
    raise NotImplementedError  # replaced by the overload below inside jitted code


@overload(load_f32, inline="always")
def _load_f32_overload(row, j, src_kind):
    dtype = row.dtype
    if dtype == types.float32:

        def impl(row, j, src_kind):
            return row[j]

        return impl
    if dtype == types.uint16:

        def impl(row, j, src_kind):
            h = row[j]
            if src_kind == SRC_F16:
                return f16_bits_to_f32(h)
            return bf16_bits_to_f32(h)

        return impl
    return None


@register_jitable(inline="always")
def load_row_sigma2(x, r, src_kind, xr, bad):
    """Decode source row ``x[r]`` into float32 ``xr``; returns ggml's ``sigma2 = sum(x*x) / n``
    of the importance-weighted quantizers (summed in column order in float32, as ggml does).
    A row holding a NaN or inf is marked ``bad[r] = 0`` (see :func:`run_quantize`)."""
    row = x[r]
    total = F32(0.0)
    chk = F32(0.0)
    for k in range(row.shape[0]):
        v = load_f32(row, k, src_kind)
        xr[k] = v
        chk = chk + (v - v)  # stays 0 unless some v is inf or NaN
        total = total + v * v
    if chk != F32(0.0):
        bad[r] = 0
    return total / F32(row.shape[0])


_launch_lock = threading.Lock()
_threading_layer: str | None = None


@contextmanager
def launch_guard() -> Iterator[None]:
    """Serialize parallel kernel launches when numba runs on its "workqueue" threading layer
    (no OpenMP or TBB), which aborts the process if two threads launch at once."""
    global _threading_layer
    if _threading_layer not in (None, "workqueue"):
        yield
        return
    with _launch_lock:
        yield
        if _threading_layer is None:
            try:
                _threading_layer = numba.threading_layer()
            except ValueError:  # no parallel kernel has run yet
                pass


def raise_first_bad(x: np.ndarray, src_kind: int, bad: np.ndarray, row_offset: int = 0) -> None:
    """Raise the NonFiniteError for the first row a kernel flagged (``bad[r] >= 0``), naming the
    first NaN or inf in that row (the row is decoded again: kernels only say which rows)."""
    rows = np.flatnonzero(bad >= 0)
    if rows.size:
        r = int(rows[0])
        row = to_f32(np.ascontiguousarray(x[r]), src_kind, np)
        c = int(np.argmin(np.isfinite(row)))
        raise non_finite_error(r + row_offset, c, float(row[c]))


def run_quantize(
    kernel: Any,
    ttype: TensorType,
    x: np.ndarray,
    src_kind: int,
    *,
    out: np.ndarray | None = None,
    row_offset: int = 0,
) -> np.ndarray:
    """Run a quantize kernel ``kernel(x, src_kind, out, bad)`` on C-contiguous rows ``x``.

    Returns ``out`` (allocated when not given): ``ttype`` bytes, ``(rows, row_bytes)``. The
    kernel stores a value >= 0 in ``bad[r]`` (preset to -1) when row ``r`` holds a NaN or
    inf; the first such row raises NonFiniteError (its row counted from ``row_offset``).
    """
    rows, cols = x.shape
    if out is None:
        out = np.empty((rows, ttype.row_bytes(cols)), dtype=np.uint8)
    if rows:
        bad = np.full(rows, -1, dtype=np.int64)
        with launch_guard():
            kernel(x, src_kind, out, bad)
        raise_first_bad(x, src_kind, bad, row_offset)
    return out


@register_jitable
def store_5bit_codes(orow, qh_at, qs_at, codes, c0, stride):
    """The 32 five-bit codes ``codes[c0 + stride * j]`` (0..31) of a Q5_0 / Q5_1 block: low
    nibbles paired (value j with j + 16) from byte ``qs_at``, the 32 fifth bits as one
    little-endian uint32 at ``qh_at``."""
    qh = np.uint32(0)
    for j in range(16):
        a = np.int32(codes[c0 + stride * j])
        b = np.int32(codes[c0 + stride * (j + 16)])
        orow[qs_at + j] = np.uint8((a & 15) | ((b & 15) << 4))
        qh |= np.uint32((a >> 4) & 1) << np.uint32(j)
        qh |= np.uint32((b >> 4) & 1) << np.uint32(j + 16)
    for k in range(4):
        orow[qh_at + k] = np.uint8((qh >> np.uint32(8 * k)) & np.uint32(0xFF))


@njit(inline="always")
def load_u32(row, o):
    """The little-endian uint32 at byte ``o`` of a uint8 row."""
    return (
        np.uint32(row[o])
        | (np.uint32(row[o + 1]) << 8)
        | (np.uint32(row[o + 2]) << 16)
        | (np.uint32(row[o + 3]) << 24)
    )


def decode_row(decode, block_bytes, block_size, row, orow):
    raise NotImplementedError  # replaced by the overload below inside jitted code


@overload(decode_row, inline="always")
def _decode_row_overload(decode, block_bytes, block_size, row, orow):
    """The block loop of every block dequantizer: each block of ``row`` written to ``orow`` by
    the type's ``decode(row, byte_offset, out_row, value_offset)``. ``decode`` is called as the
    function itself so that it is inlined (through the argument it would be an indirect call
    per block, at half the speed); the row loop stays in the caller's ``prange`` for the same
    reason."""
    fn = decode.dispatcher

    def impl(decode, block_bytes, block_size, row, orow):
        for b in range(row.shape[0] // block_bytes):
            fn(row, b * block_bytes, orow, b * block_size)

    return impl


def encode_row(encode, block_size, block_bytes, row, src_kind, orow):
    raise NotImplementedError  # replaced by the overload below inside jitted code


@overload(encode_row, inline="always")
def _encode_row_overload(encode, block_size, block_bytes, row, src_kind, orow):
    """The block loop of a block quantizer: each block of source ``row`` encoded into ``orow``
    by the type's ``encode(row, value_offset, src_kind, out_row, byte_offset)``, which returns
    False for a block holding NaN or inf. Returns the offset of that block (the row stops
    there), else -1. ``encode`` is called as the function itself, as in :func:`decode_row`."""
    fn = encode.dispatcher

    def impl(encode, block_size, block_bytes, row, src_kind, orow):
        for b in range(row.shape[0] // block_size):
            if not fn(row, b * block_size, src_kind, orow, b * block_bytes):
                return b * block_size
        return -1

    return impl


def run_quantize_weighted(
    plain: Any, weighted: Any, ttype: TensorType, x: np.ndarray, src_kind: int, qw: Any
) -> np.ndarray:
    """:func:`run_quantize` of ``plain(x, src_kind, out, bad)``, or with an importance matrix
    ``qw`` (one float per column) of ``weighted(x, src_kind, qw, out, bad)``."""
    from nntrtool.errors import QuantError

    x = np.ascontiguousarray(x)
    if qw is None:
        return run_quantize(plain, ttype, x, src_kind)
    if np.size(qw) != x.shape[1]:
        raise QuantError(f"{ttype.name}: {np.size(qw)} importance values for {x.shape[1]} columns")
    weights = np.ascontiguousarray(qw, dtype=np.float32)

    def kernel(x, src_kind, out, bad):
        weighted(x, src_kind, weights, out, bad)

    return run_quantize(kernel, ttype, x, src_kind)


def run_dequantize(kernel: Any, ttype: TensorType, data: np.ndarray) -> np.ndarray:
    """Run a dequantize kernel ``kernel(data, out)`` on C-contiguous ``ttype`` bytes
    ``(rows, row_bytes)``; returns the float32 ``(rows, cols)`` it fills."""
    rows = data.shape[0]
    out = np.empty((rows, data.shape[1] // ttype.block_bytes * ttype.block_size), np.float32)
    if rows:
        with launch_guard():
            kernel(data, out)
    return out


__all__ = [
    "njit",
    "prange",
    "raise_first_bad",
    "run_quantize",
    "run_dequantize",
    "run_quantize_weighted",
    "load_u32",
    "store_5bit_codes",
    "decode_row",
    "encode_row",
    "f32_bits",
    "f32_from_bits",
    "f32_to_f16_bits",
    "f16_bits_to_f32",
    "bf16_bits_to_f32",
    "store_f16_bits",
    "load_f16",
    "nearest_int",
    "load_f32",
    "load_row_sigma2",
    "make_clamp",
]
