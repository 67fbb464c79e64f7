"""numba kernels of Q5_0 and Q5_1: the same bytes as their ``quantize_xp`` /
``quantize_imatrix_xp`` and ggml's dequantized values; one row per parallel task.

The two types share their block layout but for Q5_1's min (``with_min``): one factory builds
each type's block store, plain row quantizer and block decoder (the other type's branches
pruned at compile time), and each kernel serves both types, choosing per row. The weighted
searches differ: Q5_0's is ggml's ``make_qx_quants`` per block, Q5_1's the K-quants'
(``_kquants_numba``), 64 blocks side by side. :mod:`._q5_0_numba` and :mod:`._q5_1_numba`
expose them. Imported on first use only.
"""

from __future__ import annotations

import numpy as np

from . import _kquants_numba as kn
from . import _numba_common as nc
from . import q5_0, q5_1
from ._numba_common import njit
from .common import GROUP_MAX_EPS, search_numerators

QK = q5_0.QK
assert q5_1.QK == QK
_U4 = np.uint8(0x0F)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_Q5_0_DIV = np.float32(-16.0)  # d = max / -16
_Q5_0_BIAS = np.float32(16.5)
_Q5_1_DIV = np.float32(q5_1.NMAX)  # d = (max - min) / 31
_HALF = np.float32(0.5)
_Q5_0_NUMS = search_numerators(q5_0.NMAX)
_Q5_1_NUMS = kn.NUMS_Q5_WEIGHTED
_L = kn.LANES


def _make_block_code(with_min):
    """``(store, quantize_row, decode)`` of Q5_1 (``with_min``) or Q5_0.

    ``store(orow, o, d, m, codes, c0, stride)`` writes one block: fp16 ``d`` (and ``m``), then
    codes ``codes[c0 + stride*j]`` (0..31). ``quantize_row(row, src_kind, orow)`` is ggml's
    quantize_row_q5_0_ref / q5_1_ref; it returns the offset of the first block holding NaN or
    inf (the row stops there), else -1. ``decode(row, o, orow, y)`` is ggml's dequantize."""
    head = 4 if with_min else 2  # the fp16 d (and m)
    qh_off = head
    qs_off = head + 4
    block_bytes = q5_1.BLOCK_BYTES if with_min else q5_0.BLOCK_BYTES
    assert qs_off + QK // 2 == block_bytes

    @nc.register_jitable(inline="always")
    def store(orow, o, d, m, codes, c0, stride):
        nc.store_f16_bits(orow, o, nc.f32_to_f16_bits(d))
        if with_min:
            nc.store_f16_bits(orow, o + 2, nc.f32_to_f16_bits(m))
        nc.store_5bit_codes(orow, o + qh_off, o + qs_off, codes, c0, stride)

    @njit(inline="always")
    def quantize_row(row, src_kind, orow):
        xb = np.empty(QK, dtype=np.float32)
        codes = np.empty(QK, dtype=np.int32)
        for b in range(row.shape[0] // QK):
            amax = _F0
            mn = _FLT_MAX
            mx = -_FLT_MAX if with_min else _F0
            chk = _F0
            for j in range(QK):
                v = nc.load_f32(row, b * QK + j, src_kind)
                xb[j] = v
                chk = chk + (v - v)
                if with_min:
                    if v < mn:
                        mn = v
                    if v > mx:
                        mx = v
                elif amax < abs(v):
                    amax = abs(v)
                    mx = v
            if chk != _F0:
                return b * QK
            if with_min:
                d = (mx - mn) / _Q5_1_DIV
            else:
                d = mx / _Q5_0_DIV
            inv = _F1 / d if d != _F0 else _F0
            for j in range(QK):
                if with_min:
                    v = (xb[j] - mn) * inv + _HALF
                else:
                    v = xb[j] * inv + _Q5_0_BIAS
                # x86 converts inf and NaN to 0x80000000, whose low bits are code 0.
                q = np.int32(v) if np.isfinite(v) else np.int32(0)
                codes[j] = q if with_min else min(q, 31)
            store(orow, b * block_bytes, d, mn, codes, 0, 1)
        return -1

    @njit(inline="always")
    def decode(row, o, orow, y):
        d = nc.load_f16(row, o)
        m = nc.load_f16(row, o + 2) if with_min else _F0
        qh = nc.load_u32(row, o + qh_off)
        for j in range(16):
            q = row[o + qs_off + j]
            lo = np.int32(q & _U4) | np.int32(((qh >> j) & 1) << 4)
            hi = np.int32(q >> 4) | np.int32(((qh >> (j + 16)) & 1) << 4)
            if with_min:
                orow[y + j] = np.float32(lo) * d + m
                orow[y + j + 16] = np.float32(hi) * d + m
            else:
                orow[y + j] = np.float32(lo - 16) * d
                orow[y + j + 16] = np.float32(hi - 16) * d

    return store, quantize_row, decode


_store_q5_0, _quantize_row_q5_0, _decode_q5_0 = _make_block_code(False)
_store_q5_1, _quantize_row_q5_1, _decode_q5_1 = _make_block_code(True)


@njit(inline="always")
def _weighted_row_q5_0(xr, qw, sigma2, orow):
    """ggml's quantize_q5_0 of one decoded row: make_qx_quants(32, 16, x, L, 1, w) a block."""
    w = np.empty(QK, dtype=np.float32)
    codes = np.empty(QK, dtype=np.int32)
    nmax = q5_0.NMAX
    for b in range(xr.shape[0] // QK):
        base = b * QK
        amax = _F0
        mx = _F0
        for j in range(QK):
            v = xr[base + j]
            w[j] = qw[base + j] * np.float32(np.sqrt(sigma2 + v * v))
            if abs(v) > amax:
                amax = abs(v)
                mx = v
        if amax < GROUP_MAX_EPS:
            for j in range(QK):
                codes[j] = 0
            _store_q5_0(orow, b * q5_0.BLOCK_BYTES, _F0, _F0, codes, 0, 1)
            continue
        # 19 candidate inverse scales, in order.
        best_c = 0
        scale = _F0
        best = _F0
        for c in range(_Q5_0_NUMS.size):
            inv = _Q5_0_NUMS[c] / mx
            sumlx = _F0
            suml2 = _F0
            for j in range(QK):
                v = xr[base + j]
                q = np.float32(min(max(nc.nearest_int(inv * v), -nmax), nmax - 1))
                sumlx = sumlx + (w[j] * v) * q
                suml2 = suml2 + (w[j] * q) * q
            if c == 0:
                scale = sumlx / suml2 if suml2 != _F0 else _F0
                best = scale * sumlx
            elif suml2 > _F0 and sumlx * sumlx > best * suml2:
                scale = sumlx / suml2
                best = scale * sumlx
                best_c = c
        inv = _Q5_0_NUMS[best_c] / mx
        for j in range(QK):
            codes[j] = min(max(nc.nearest_int(inv * xr[base + j]), -nmax), nmax - 1) + nmax
        _store_q5_0(orow, b * q5_0.BLOCK_BYTES, scale, _F0, codes, 0, 1)


@njit(inline="always")
def _weighted_row_q5_1(x, r, src_kind, qw, sigma2, orow):
    """ggml's quantize_q5_1 of row ``x[r]``: make_qkx3_quants on 64 blocks side by side."""
    s = np.empty(kn.SCRATCH, dtype=np.float32)
    nb = x.shape[1] // QK
    for b0 in range(0, nb, _L):
        n = min(_L, nb - b0)
        kn.load_tile(x, r, b0 * QK, n, src_kind, s)
        for i in range(QK):
            for j in range(_L):
                v = s[kn.XT + _L * i + j]
                wq = qw[(b0 + j) * QK + i] if j < n else _F0
                s[kn.W + _L * i + j] = wq * np.float32(np.sqrt(sigma2 + v * v))
        kn.qkx_search(s, q5_1.NMAX, _Q5_1_NUMS, False)
        for j in range(n):
            _store_q5_1(
                orow,
                (b0 + j) * q5_1.BLOCK_BYTES,
                s[kn.SCALE + j],
                -s[kn.MINS + j],
                s,
                kn.CODES + j,
                _L,
            )


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def quantize_kernel(x, src_kind, out, bad, with_min):
    """Q5_1 (``with_min``) or Q5_0 bytes of every row of ``x``."""
    for r in nc.prange(x.shape[0]):
        if with_min:
            bad[r] = _quantize_row_q5_1(x[r], src_kind, out[r])
        else:
            bad[r] = _quantize_row_q5_0(x[r], src_kind, out[r])


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def quantize_weighted_kernel(x, src_kind, qw, out, bad, with_min):
    """Q5_1 (``with_min``) or Q5_0 bytes of every row of ``x`` weighted by importance ``qw``."""
    for r in nc.prange(x.shape[0]):
        xr = np.empty(x.shape[1], dtype=np.float32)
        sigma2 = nc.load_row_sigma2(x, r, src_kind, xr, bad)
        if bad[r] >= 0:
            continue
        if with_min:
            _weighted_row_q5_1(x, r, src_kind, qw, sigma2, out[r])
        else:
            _weighted_row_q5_0(xr, qw, sigma2, out[r])


@njit(parallel=True, cache=True, nogil=True)
def dequantize_kernel(data, out, with_min):
    """float32 values of every row of Q5_1 (``with_min``) or Q5_0 bytes."""
    for r in nc.prange(data.shape[0]):
        if with_min:
            nc.decode_row(_decode_q5_1, q5_1.BLOCK_BYTES, QK, data[r], out[r])
        else:
            nc.decode_row(_decode_q5_0, q5_0.BLOCK_BYTES, QK, data[r], out[r])


def entry_points(ttype, with_min):
    """The numba contract's ``quantize`` and ``dequantize`` (:mod:`nntrtool.quant.registry`) of
    Q5_1 (``with_min``) or Q5_0, ``ttype``."""

    def plain(x, src_kind, out, bad):
        quantize_kernel(x, src_kind, out, bad, with_min)

    def weighted(x, src_kind, qw, out, bad):
        quantize_weighted_kernel(x, src_kind, qw, out, bad, with_min)

    def dequantize_rows(data, out):
        dequantize_kernel(data, out, with_min)

    def quantize(x: np.ndarray, src_kind: int, qw: np.ndarray | None = None) -> np.ndarray:
        return nc.run_quantize_weighted(plain, weighted, ttype, x, src_kind, qw)

    def dequantize(data: np.ndarray) -> np.ndarray:
        return nc.run_dequantize(dequantize_rows, ttype, np.ascontiguousarray(data))

    quantize.__doc__ = f"{ttype.name.upper()} bytes of ``x``."
    dequantize.__doc__ = f"float32 values of {ttype.name.upper()} bytes."
    return quantize, dequantize
