"""The numba Q6_K kernels: the same bytes as ``q6_k.quantize_xp``, on every core.

Imported only when a numba kernel is first used (``q6_k.quantize_numba``), so commands that
never quantize do not pay for importing numba.

Speed comes from the layout: one superblock at a time, its 256 values transposed into a
16 x 16 position-major tile, so that every step of ggml's sequential per-run loops is a
16-lane loop over independent sub-blocks. Those inner loops have fixed trip counts and plain
float32 arithmetic, which LLVM turns into SIMD code without reordering any single sum;
``fastmath`` stays off so nothing is fused or reassociated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import prange
from numba.extending import register_jitable

from nntrtool.errors import QuantError
from nntrtool.quant._numba_common import (
    f16_bits_to_f32,
    f32_to_f16_bits,
    load_f32,
    nearest_int,
    njit,
)
from nntrtool.quant.common import (
    NEAREST_INT_BIAS,
    SRC_BF16,
    SRC_F16,
    SRC_F32,
    non_finite_error,
    to_f32,
)
from nntrtool.quant.q6_k import (
    BLOCK_BYTES,
    D_OFF,
    GROUP_MAX_EPS,
    NMAX,
    NSUB,
    QH_OFF,
    QK,
    QL_OFF,
    SC_OFF,
    SEARCH_NUMERATORS,
    SUB,
)

_BIAS = NEAREST_INT_BIAS
_LO = np.float32(-NMAX)
_HI = np.float32(NMAX - 1)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_SUPER_NUM = np.float32(-128.0)
_EPS = GROUP_MAX_EPS
_NUMS = SEARCH_NUMERATORS
_NCAND = len(SEARCH_NUMERATORS)

# Superblocks per parallel work item: enough to amortize the scratch allocation, few enough
# that a short tensor still spreads over the cores.
_CHUNK = 16


@register_jitable(inline="always")
def _quantize_superblock(x, r, c0, src_kind, dst, o, xt, w, wx, st, codes):
    """Quantize x[r, c0:c0+256] into dst[o:o+210]; returns False if a value is not finite.

    Scratch: xt, w, wx (16, 16) position-major tiles; st (10, 16) per-sub-block state;
    codes (256,) uint8.
    """
    amax = st[0]
    vmax = st[1]
    inv = st[2]
    sumlx = st[3]
    suml2 = st[4]
    scale = st[5]
    best = st[6]
    chk = st[7]
    best_c = st[8]  # candidate index, held as float32
    dj = st[9]

    for j in range(NSUB):
        chk[j] = _ZERO
        amax[j] = _ZERO
        vmax[j] = _ZERO
    for j in range(NSUB):
        for i in range(SUB):
            xt[i, j] = load_f32(x[r], c0 + SUB * j + i, src_kind)
    for i in range(SUB):
        for j in range(NSUB):
            v = xt[i, j]
            chk[j] = chk[j] + (v - v)  # stays 0 unless some v is inf or NaN
            ax = abs(v)
            if ax > amax[j]:  # strict: the first of equal magnitudes wins
                amax[j] = ax
                vmax[j] = v
            wv = v * v
            w[i, j] = wv
            wx[i, j] = wv * v
    finite = True
    for j in range(NSUB):
        if chk[j] != _ZERO:
            finite = False
    if not finite:
        for k in range(BLOCK_BYTES):
            dst[o + k] = 0
        return False
    for j in range(NSUB):
        if amax[j] < _EPS:
            vmax[j] = _ONE  # keeps the search finite; the run is zeroed below

    # make_qx_quants(16, 32, x, L, rmse_type=1): 19 inverse scales, every run at once.
    for c in range(_NCAND):
        num = _NUMS[c]
        for j in range(NSUB):
            inv[j] = num / vmax[j]
            sumlx[j] = _ZERO
            suml2[j] = _ZERO
        for i in range(SUB):
            for j in range(NSUB):
                # nearest_int via the float difference: exact since |v| <= 32.9 here.
                v = (inv[j] * xt[i, j] + _BIAS) - _BIAS
                v = min(max(v, _LO), _HI)
                sumlx[j] = sumlx[j] + wx[i, j] * v
                suml2[j] = suml2[j] + (w[i, j] * v) * v
        if c == 0:
            for j in range(NSUB):
                s = sumlx[j] / suml2[j] if suml2[j] != _ZERO else _ZERO
                scale[j] = s
                best[j] = s * sumlx[j]
                best_c[j] = _ZERO
        else:
            cf = np.float32(c)
            for j in range(NSUB):
                s = sumlx[j] / suml2[j]
                if suml2[j] > _ZERO and sumlx[j] * sumlx[j] > best[j] * suml2[j]:
                    scale[j] = s
                    best[j] = s * sumlx[j]
                    best_c[j] = cf

    max_abs = _ZERO
    max_scale = _ZERO
    for j in range(NSUB):
        if amax[j] < _EPS:
            scale[j] = _ZERO
        a = abs(scale[j])
        if a > max_abs:
            max_abs = a
            max_scale = scale[j]
    if max_abs < _EPS:
        for k in range(BLOCK_BYTES):
            dst[o + k] = 0
        return True

    iscale = _SUPER_NUM / max_scale
    d_bits = f32_to_f16_bits(_ONE / iscale)
    d = f16_bits_to_f32(d_bits)
    for j in range(NSUB):
        q = min(np.int32(127), nearest_int(iscale * scale[j]))
        sc = np.int8(q)  # wraps like the C store into int8
        dst[o + SC_OFF + j] = np.uint8(q & 0xFF)
        dj[j] = d * np.float32(sc)
    dst[o + D_OFF] = np.uint8(d_bits & 0xFF)
    dst[o + D_OFF + 1] = np.uint8(d_bits >> 8)

    for j in range(NSUB):
        djj = dj[j]
        if djj != _ZERO:  # NaN too, as `if (!d)` in C
            for i in range(SUB):
                q = nearest_int(xt[i, j] / djj)
                q = min(max(q, np.int32(-NMAX)), np.int32(NMAX - 1))
                codes[SUB * j + i] = np.uint8(q + NMAX)
        elif amax[j] < _EPS:
            for i in range(SUB):
                codes[SUB * j + i] = 0
        else:
            ib = _NUMS[np.int32(best_c[j])] / vmax[j]
            for i in range(SUB):
                v = (ib * xt[i, j] + _BIAS) - _BIAS
                v = min(max(v, _LO), _HI)
                codes[SUB * j + i] = np.uint8(np.int32(v) + NMAX)

    for h in range(2):
        cb = 128 * h
        ql = o + QL_OFF + 64 * h
        qh = o + QH_OFF + 32 * h
        for li in range(32):
            c1 = codes[cb + li]
            c2 = codes[cb + li + 32]
            c3 = codes[cb + li + 64]
            c4 = codes[cb + li + 96]
            dst[ql + li] = (c1 & 15) | ((c3 & 15) << 4)
            dst[ql + li + 32] = (c2 & 15) | ((c4 & 15) << 4)
            dst[qh + li] = (c1 >> 4) | ((c2 >> 4) << 2) | ((c3 >> 4) << 4) | ((c4 >> 4) << 6)
    return True


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _quantize_kernel(x, src_kind, out, bad):
    rows, cols = x.shape
    per_row = cols // QK
    total = rows * per_row
    nchunks = (total + _CHUNK - 1) // _CHUNK
    for t in prange(nchunks):
        xt = np.empty((SUB, NSUB), dtype=np.float32)
        w = np.empty((SUB, NSUB), dtype=np.float32)
        wx = np.empty((SUB, NSUB), dtype=np.float32)
        st = np.empty((10, NSUB), dtype=np.float32)
        codes = np.empty(QK, dtype=np.uint8)
        for k in range(t * _CHUNK, min(total, (t + 1) * _CHUNK)):
            r = k // per_row
            b = k - r * per_row
            ok = _quantize_superblock(
                x, r, b * QK, src_kind, out[r], b * BLOCK_BYTES, xt, w, wx, st, codes
            )
            if not ok:
                bad[k] = 1


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _dequantize_kernel(data, out):
    rows = data.shape[0]
    per_row = data.shape[1] // BLOCK_BYTES
    total = rows * per_row
    for k in prange(total):
        r = k // per_row
        b = k - r * per_row
        src = data[r]
        dst = out[r]
        o = b * BLOCK_BYTES
        y = b * QK
        d = f16_bits_to_f32(np.uint16(src[o + D_OFF]) | (np.uint16(src[o + D_OFF + 1]) << 8))
        for h in range(2):
            ql = o + QL_OFF + 64 * h
            qh = o + QH_OFF + 32 * h
            sc = o + SC_OFF + 8 * h
            yb = y + 128 * h
            for li in range(32):
                s = li // 16
                a = src[ql + li]
                c = src[ql + li + 32]
                hb = src[qh + li]
                q1 = np.float32(np.int32((a & 15) | ((hb & 3) << 4)) - NMAX)
                q2 = np.float32(np.int32((c & 15) | (((hb >> 2) & 3) << 4)) - NMAX)
                q3 = np.float32(np.int32((a >> 4) | (((hb >> 4) & 3) << 4)) - NMAX)
                q4 = np.float32(np.int32((c >> 4) | (((hb >> 6) & 3) << 4)) - NMAX)
                dst[yb + li] = (d * np.float32(np.int8(src[sc + s]))) * q1
                dst[yb + li + 32] = (d * np.float32(np.int8(src[sc + s + 2]))) * q2
                dst[yb + li + 64] = (d * np.float32(np.int8(src[sc + s + 4]))) * q3
                dst[yb + li + 96] = (d * np.float32(np.int8(src[sc + s + 6]))) * q4


_DTYPE_OF_KIND = {SRC_F32: np.float32, SRC_F16: np.uint16, SRC_BF16: np.uint16}


def quantize(x: Any, src_kind: int) -> np.ndarray:
    """Q6_K bytes ``(rows, cols // 256 * 210)`` of ``x`` (see ``q6_k.quantize_numba``)."""
    x = np.asarray(x)
    if src_kind not in _DTYPE_OF_KIND:
        raise QuantError(f"unknown source kind {src_kind}")
    if x.dtype == np.float16 and src_kind == SRC_F16:
        x = x.view(np.uint16)
    if x.dtype != _DTYPE_OF_KIND[src_kind]:
        raise QuantError(
            f"q6_k: source kind {src_kind} needs {np.dtype(_DTYPE_OF_KIND[src_kind]).name} "
            f"data, got {x.dtype}"
        )
    if x.ndim != 2:
        raise QuantError(f"q6_k quantize takes a 2-D array (rows, cols), got {x.ndim}-D")
    rows, cols = x.shape
    if cols <= 0 or cols % QK:
        raise QuantError(
            f"q6_k needs rows that are a whole number of {QK}-value blocks, got {cols} columns"
        )
    if x.strides[1] != x.itemsize:
        x = np.ascontiguousarray(x)
    per_row = cols // QK
    out = np.empty((rows, per_row * BLOCK_BYTES), dtype=np.uint8)
    bad = np.zeros(rows * per_row, dtype=np.uint8)
    if rows:
        _quantize_kernel(x, src_kind, out, bad)
    if bad.any():
        r = int(np.argmax(bad)) // per_row
        row = to_f32(np.asarray(x[r]), src_kind)
        c = int(np.argmin(np.isfinite(row)))
        raise non_finite_error(r, c, float(row[c]))
    return out


def dequantize(data: Any) -> np.ndarray:
    """float32 ``(rows, cols)`` of Q6_K bytes (see ``q6_k.dequantize_numba``)."""
    data = np.asarray(data)
    if data.ndim != 2 or data.dtype != np.uint8 or data.shape[1] % BLOCK_BYTES:
        raise QuantError(
            f"q6_k data must be 2-D uint8 rows of whole {BLOCK_BYTES}-byte blocks, "
            f"got {data.dtype} of shape {data.shape}"
        )
    if data.strides[1] != 1:
        data = np.ascontiguousarray(data)
    out = np.empty((data.shape[0], data.shape[1] // BLOCK_BYTES * QK), dtype=np.float32)
    if data.shape[0]:
        _dequantize_kernel(data, out)
    return out
