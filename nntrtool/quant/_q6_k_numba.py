"""The numba Q6_K kernels: the same bytes as ``q6_k.quantize_xp``, on every core.

Imported only when a numba kernel is first used (the registry's ``quantize_numba``), so commands that
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
from nntrtool.qtypes import Q6_K
from nntrtool.quant._numba_common import (
    f16_bits_to_f32,
    f32_to_f16_bits,
    load_f16,
    load_f32,
    make_clamp,
    nearest_int,
    njit,
    run_dequantize,
    run_quantize,
    store_f16_bits,
)
from nntrtool.quant.common import (
    NEAREST_INT_BIAS,
    SRC_BF16,
    SRC_F16,
    SRC_F32,
    SRC_NAMES,
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
_CODE_OFFSET = np.float32(NMAX)
_EXACT_LIMIT = np.float32(4194303.0)
_EPS = GROUP_MAX_EPS
_NUMS = SEARCH_NUMERATORS
_NCAND = len(SEARCH_NUMERATORS)
_GROUP = 4  # candidates searched side by side
_NCAND_PADDED = -(-_NCAND // _GROUP) * _GROUP
# Padding candidates repeat the first one; their sums are computed and never looked at.
_NUMS_PADDED = np.concatenate([_NUMS, np.full(_NCAND_PADDED - _NCAND, _NUMS[0], dtype=np.float32)])

# Superblocks per parallel work item: enough to amortize the scratch allocation, few enough
# that a short tensor still spreads over the cores.
_CHUNK = 16


# min(max(v, -32), 31) as two SIMD instructions; only for the search, where v is never NaN.
_clamp_code = make_clamp(-NMAX, NMAX - 1)


# Offsets into the flat float32 scratch of one superblock. One array with constant offsets lets
# LLVM prove that the tiles never overlap, which it needs to vectorize the loops over runs.
_XT = 0  # (16 positions, 16 runs) values, position-major
_W = _XT + QK  # x*x
_WX = _W + QK  # (x*x)*x
_Q = _WX + QK  # final codes 0..63, position-major
_AMAX = _Q + QK  # per run (16 lanes each) from here on
_VMAX = _AMAX + NSUB
_INV = _VMAX + NSUB  # (19 candidates, 16 runs) inverse scales of the search
_SX = _INV + _NCAND_PADDED * NSUB  # (candidate, run) sums of w*x*l
_S2 = _SX + _NCAND_PADDED * NSUB  # (candidate, run) sums of w*l*l
_SCALE = _S2 + _NCAND_PADDED * NSUB
_BEST = _SCALE + NSUB
_BESTC = _BEST + NSUB  # index of the chosen inverse scale, as float32
_CHK = _BESTC + NSUB
_DJ = _CHK + NSUB
_BIG = _DJ + NSUB  # runs where the fast rounding of the requantization is not exact
_SCRATCH = _BIG + NSUB


@register_jitable
def _quantize_superblock(x, r, c0, src_kind, qw, dst, o, s):
    """Quantize x[r, c0:c0+256] into dst[o:o+210] using scratch ``s``; False if not all finite.

    ``qw``: importance per column (ggml's ``quant_weights``) in the tile order of
    :func:`_tile_weights`, or empty for the plain weights x*x.
    """
    src = x[r, c0 : c0 + QK]
    for k in range(QK):
        s[_Q + k] = load_f32(src, k, src_kind)  # _Q is free until the requantization
    for j in range(NSUB):
        for i in range(SUB):
            s[_XT + SUB * i + j] = s[_Q + SUB * j + i]
    for j in range(NSUB):
        s[_CHK + j] = _ZERO
        s[_AMAX + j] = _ZERO
        s[_VMAX + j] = _ZERO
    for i in range(SUB):
        for j in range(NSUB):
            v = s[_XT + SUB * i + j]
            s[_CHK + j] = s[_CHK + j] + (v - v)  # stays 0 unless some v is inf or NaN
            ax = abs(v)
            take = ax > s[_AMAX + j]  # strict: the first of equal magnitudes wins
            s[_AMAX + j] = ax if take else s[_AMAX + j]
            s[_VMAX + j] = v if take else s[_VMAX + j]
            wv = v * v
            s[_W + SUB * i + j] = wv
            s[_WX + SUB * i + j] = wv * v
    if qw.size:  # already in tile order (see quantize), so this is one contiguous loop
        for k in range(QK):
            wv = qw[c0 + k]
            s[_W + k] = wv
            s[_WX + k] = wv * s[_XT + k]
    finite = True
    for j in range(NSUB):
        if s[_CHK + j] != _ZERO:
            finite = False
    if not finite:
        for k in range(BLOCK_BYTES):
            dst[o + k] = 0
        return False
    for j in range(NSUB):
        # Runs below GROUP_MAX_EPS get scale 0 and codes 0 later; 1 keeps their search finite.
        s[_VMAX + j] = _ONE if s[_AMAX + j] < _EPS else s[_VMAX + j]

    # make_qx_quants(16, 32, x, L, rmse_type=1) on the 16 runs at once. The sums of _GROUP
    # candidates are built side by side (independent chains keep the adders busy; each
    # chain is still one run's sequential sum), then the candidates are judged in order.
    for c in range(_NCAND_PADDED):
        num = _NUMS_PADDED[c]
        for j in range(NSUB):
            s[_INV + NSUB * c + j] = num / s[_VMAX + j]
    for g in range(0, _NCAND_PADDED, _GROUP):
        for k in range(_GROUP * NSUB):
            s[_SX + NSUB * g + k] = _ZERO
            s[_S2 + NSUB * g + k] = _ZERO
        for i in range(SUB):
            for c in range(g, g + _GROUP):
                for j in range(NSUB):
                    # nearest_int as a float difference: exact since |v| <= 32.9 here.
                    v = (s[_INV + NSUB * c + j] * s[_XT + SUB * i + j] + _BIAS) - _BIAS
                    v = _clamp_code(v)
                    s[_SX + NSUB * c + j] = s[_SX + NSUB * c + j] + s[_WX + SUB * i + j] * v
                    s[_S2 + NSUB * c + j] = s[_S2 + NSUB * c + j] + (s[_W + SUB * i + j] * v) * v
    for j in range(NSUB):
        sx = s[_SX + j]
        s2 = s[_S2 + j]
        sc = sx / s2 if s2 != _ZERO else _ZERO  # `suml2 ? ... : 0`: NaN counts as true
        s[_SCALE + j] = sc
        s[_BEST + j] = sc * sx
        s[_BESTC + j] = _ZERO
    for c in range(1, _NCAND):
        cf = np.float32(c)
        for j in range(NSUB):
            sx = s[_SX + NSUB * c + j]
            s2 = s[_S2 + NSUB * c + j]
            sc = sx / s2
            take = s2 > _ZERO and sx * sx > s[_BEST + j] * s2
            s[_SCALE + j] = sc if take else s[_SCALE + j]
            s[_BEST + j] = sc * sx if take else s[_BEST + j]
            s[_BESTC + j] = cf if take else s[_BESTC + j]

    max_abs = _ZERO
    max_scale = _ZERO
    for j in range(NSUB):
        sc = _ZERO if s[_AMAX + j] < _EPS else s[_SCALE + j]
        s[_SCALE + j] = sc
        a = abs(sc)
        if a > max_abs:
            max_abs = a
            max_scale = sc
    if max_abs < _EPS:
        for k in range(BLOCK_BYTES):
            dst[o + k] = 0
        return True

    iscale = _SUPER_NUM / max_scale
    d_bits = f32_to_f16_bits(_ONE / iscale)
    d = f16_bits_to_f32(d_bits)
    for j in range(NSUB):
        q = min(np.int32(127), nearest_int(iscale * s[_SCALE + j]))
        dst[o + SC_OFF + j] = np.uint8(q & 0xFF)  # wraps like the C store into int8
        s[_DJ + j] = d * np.float32(np.int8(q))
    store_f16_bits(dst, o + D_OFF, d_bits)

    # Requantize with the fp16-rounded scale (a division, as in C). The float difference
    # rounds like nearest_int while |v| <= 2^22 - 1; runs with anything else (a NaN or
    # inf scale from an fp16 overflow) are redone below with the bit-exact nearest_int.
    for j in range(NSUB):
        s[_BIG + j] = _ZERO
    for i in range(SUB):
        for j in range(NSUB):
            v = s[_XT + SUB * i + j] / s[_DJ + j]
            s[_BIG + j] = s[_BIG + j] if abs(v) <= _EXACT_LIMIT else _ONE
            v = (v + _BIAS) - _BIAS
            v = v if v > _LO else _LO
            v = v if v < _HI else _HI
            s[_Q + SUB * i + j] = v + _CODE_OFFSET
    for j in range(NSUB):
        dj = s[_DJ + j]
        if dj == _ZERO:
            # `if (!d)` in C: the run keeps the codes of the search (0 below GROUP_MAX_EPS).
            tiny = s[_AMAX + j] < _EPS
            inv = s[_INV + NSUB * np.int32(s[_BESTC + j]) + j]
            for i in range(SUB):
                v = (inv * s[_XT + SUB * i + j] + _BIAS) - _BIAS
                v = v if v > _LO else _LO
                v = v if v < _HI else _HI
                s[_Q + SUB * i + j] = _ZERO if tiny else v + _CODE_OFFSET
        elif s[_BIG + j] != _ZERO:
            for i in range(SUB):
                q = nearest_int(s[_XT + SUB * i + j] / dj)
                q = min(max(q, -NMAX), NMAX - 1)
                s[_Q + SUB * i + j] = np.float32(q + NMAX)

    for h in range(2):
        ql = o + QL_OFF + 64 * h
        qh = o + QH_OFF + 32 * h
        for li in range(32):
            k = 128 * h + li  # value index; it sits at position k % 16 of run k // 16
            c1 = np.int32(s[_Q + SUB * (k % SUB) + k // SUB])
            c2 = np.int32(s[_Q + SUB * ((k + 32) % SUB) + (k + 32) // SUB])
            c3 = np.int32(s[_Q + SUB * ((k + 64) % SUB) + (k + 64) // SUB])
            c4 = np.int32(s[_Q + SUB * ((k + 96) % SUB) + (k + 96) // SUB])
            dst[ql + li] = np.uint8((c1 & 15) | ((c3 & 15) << 4))
            dst[ql + li + 32] = np.uint8((c2 & 15) | ((c4 & 15) << 4))
            dst[qh + li] = np.uint8(
                (c1 >> 4) | ((c2 >> 4) << 2) | ((c3 >> 4) << 4) | ((c4 >> 4) << 6)
            )
    return True


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _quantize_kernel(x, src_kind, qw, out, bad):
    rows, cols = x.shape
    per_row = cols // QK
    total = rows * per_row
    nchunks = (total + _CHUNK - 1) // _CHUNK
    for t in prange(nchunks):
        s = np.empty(_SCRATCH, dtype=np.float32)
        for k in range(t * _CHUNK, min(total, (t + 1) * _CHUNK)):
            r = k // per_row
            b = k - r * per_row
            if not _quantize_superblock(x, r, b * QK, src_kind, qw, out[r], b * BLOCK_BYTES, s):
                bad[r] = b * QK  # chunks may race here; any value >= 0 marks the row


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _dequantize_kernel(data, out):
    rows = data.shape[0]
    per_row = data.shape[1] // BLOCK_BYTES
    total = rows * per_row
    for k in prange(total):
        r = k // per_row
        b = k - r * per_row
        blk = data[r, b * BLOCK_BYTES : (b + 1) * BLOCK_BYTES]
        y = out[r, b * QK : (b + 1) * QK]
        d = load_f16(blk, D_OFF)
        for h in range(2):
            for g in range(2):
                # Values 128h + 16g + l (+32, +64, +96) for l < 16 share one scale each, so
                # the inner loop is 16 independent lanes.
                sc = SC_OFF + 8 * h + g
                d1 = d * np.float32(np.int8(blk[sc]))
                d2 = d * np.float32(np.int8(blk[sc + 2]))
                d3 = d * np.float32(np.int8(blk[sc + 4]))
                d4 = d * np.float32(np.int8(blk[sc + 6]))
                for li in range(16 * g, 16 * g + 16):
                    a = np.int32(blk[QL_OFF + 64 * h + li])
                    c = np.int32(blk[QL_OFF + 64 * h + li + 32])
                    hb = np.int32(blk[QH_OFF + 32 * h + li])
                    q1 = np.float32((a & 15) | ((hb & 3) << 4)) - _CODE_OFFSET
                    q2 = np.float32((c & 15) | (((hb >> 2) & 3) << 4)) - _CODE_OFFSET
                    q3 = np.float32((a >> 4) | (((hb >> 4) & 3) << 4)) - _CODE_OFFSET
                    q4 = np.float32((c >> 4) | (((hb >> 6) & 3) << 4)) - _CODE_OFFSET
                    y[128 * h + li] = d1 * q1  # (d * sc) * q, as ggml evaluates it
                    y[128 * h + li + 32] = d2 * q2
                    y[128 * h + li + 64] = d3 * q3
                    y[128 * h + li + 96] = d4 * q4


_STRIDED_SLICE_BYTES = 16 << 20
_DTYPE_OF_KIND = {SRC_F32: np.float32, SRC_F16: np.uint16, SRC_BF16: np.uint16}


_NO_WEIGHTS = np.empty(0, dtype=np.float32)


def _tile_weights(qw: np.ndarray) -> np.ndarray:
    """Importance per column laid out as each superblock's position-major tile
    (``[b*256 + 16*i + j]`` holds column ``b*256 + 16*j + i``), made once per call."""
    qw = np.asarray(qw, dtype=np.float32)
    tiles = qw.reshape(-1, NSUB, SUB).transpose(0, 2, 1)
    return np.ascontiguousarray(tiles).reshape(-1)


def quantize(x: Any, src_kind: int, qw: np.ndarray | None = None) -> np.ndarray:
    """Q6_K bytes ``(rows, cols // 256 * 210)`` of ``x`` (see the registry's ``quantize_numba``),
    weighted by the importance ``qw`` (float32, one per column) when given."""
    x = np.asarray(x)
    if src_kind not in _DTYPE_OF_KIND:
        raise QuantError(f"q6_k: unknown source kind {src_kind}")
    if x.dtype == np.float16 and src_kind == SRC_F16:
        x = x.view(np.uint16)
    want = np.dtype(_DTYPE_OF_KIND[src_kind])
    if x.dtype != want:
        raise QuantError(
            f"q6_k: {SRC_NAMES[src_kind]} source data must be {want.name}, got {x.dtype}"
        )
    if x.ndim != 2:
        raise QuantError(f"q6_k quantize takes a 2-D array (rows, cols), got {x.ndim}-D")
    rows, cols = x.shape
    if cols <= 0 or cols % QK:
        raise QuantError(
            f"q6_k needs rows that are a whole number of {QK}-value blocks, got {cols} columns"
        )
    if qw is not None and np.size(qw) != cols:
        raise QuantError(f"q6_k: {np.size(qw)} importance values for {cols} columns")
    weights = _NO_WEIGHTS if qw is None else _tile_weights(qw)

    def kernel(x, src_kind, out, bad):
        _quantize_kernel(x, src_kind, weights, out, bad)

    if x.flags.c_contiguous:
        return run_quantize(kernel, Q6_K, x, src_kind)
    # A strided view is copied a slice of rows at a time: bounded extra memory, and the kernel
    # keeps the one compiled (C-contiguous) version per source dtype.
    out = np.empty((rows, Q6_K.row_bytes(cols)), dtype=np.uint8)
    step = max(1, _STRIDED_SLICE_BYTES // (cols * x.itemsize))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        part = np.ascontiguousarray(x[r0:r1])
        run_quantize(kernel, Q6_K, part, src_kind, out=out[r0:r1], row_offset=r0)
    return out


def dequantize(data: Any) -> np.ndarray:
    """float32 ``(rows, cols)`` of Q6_K bytes (see the kernel registry)."""
    data = np.asarray(data)
    if data.ndim != 2 or data.dtype != np.uint8 or data.shape[1] % BLOCK_BYTES:
        raise QuantError(
            f"q6_k data must be 2-D uint8 rows of whole {BLOCK_BYTES}-byte blocks, "
            f"got {data.dtype} of shape {data.shape}"
        )
    if data.strides[1] != 1:
        data = np.ascontiguousarray(data)
    return run_dequantize(_dequantize_kernel, Q6_K, data)
