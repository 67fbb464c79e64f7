"""numba kernels of Q5_0: the same bytes as ``q5_0.quantize_xp`` / ``quantize_imatrix_xp`` and
ggml's dequantized values; one row per parallel task. Imported on first use only."""

from __future__ import annotations

import numpy as np

from nntrtool.qtypes import Q5_0

from . import _numba_common as nc
from ._numba_common import njit
from .common import GROUP_MAX_EPS, search_numerators
from .q5_0 import BLOCK_BYTES, HALF, NMAX, QH_OFF, QK, QS_OFF

_U4 = np.uint8(0x0F)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_MINUS16 = np.float32(-16.0)
_BIAS = np.float32(16.5)
_NUMS = search_numerators(NMAX)


@nc.register_jitable
def _store(orow, o, d, codes):
    """Write one block: fp16 ``d`` then the 32 codes (int32, 0..31)."""
    nc.store_f16_bits(orow, o, nc.f32_to_f16_bits(d))
    nc.store_5bit_codes(orow, o + QH_OFF, o + QS_OFF, codes, 0, 1)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _quantize_rows(x, src_kind, out, bad):
    rows = x.shape[0]
    nb = x.shape[1] // QK
    for r in nc.prange(rows):
        row = x[r]
        orow = out[r]
        xb = np.empty(QK, dtype=np.float32)
        codes = np.empty(QK, dtype=np.int32)
        for b in range(nb):
            amax = _F0
            mx = _F0
            chk = _F0
            for j in range(QK):
                v = nc.load_f32(row, b * QK + j, src_kind)
                xb[j] = v
                chk = chk + (v - v)
                if amax < abs(v):
                    amax = abs(v)
                    mx = v
            if chk != _F0:
                bad[r] = b * QK
                break
            d = mx / _MINUS16
            inv = _F1 / d if d != _F0 else _F0
            for j in range(QK):
                v = xb[j] * inv + _BIAS
                # x86 converts inf and NaN to 0x80000000, whose low bits are code 0.
                q = np.int32(v) if np.isfinite(v) else np.int32(0)
                codes[j] = min(q, 31)
            _store(orow, b * BLOCK_BYTES, d, codes)


_BIAS_NI = np.float32(12582912.0)


@nc.register_jitable(inline="always")
def _ni(v):
    return np.int32(nc.f32_bits(v + _BIAS_NI) & np.uint32(0x7FFFFF)) - np.int32(0x400000)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _quantize_weighted_rows(x, src_kind, qw, out, bad):
    rows, cols = x.shape
    nb = cols // QK
    for r in nc.prange(rows):
        orow = out[r]
        xr = np.empty(cols, dtype=np.float32)
        w = np.empty(QK, dtype=np.float32)
        codes = np.empty(QK, dtype=np.int32)
        sigma2 = nc.load_row_sigma2(x, r, src_kind, xr, bad)
        if bad[r] >= 0:
            continue
        for b in range(nb):
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
                _store(orow, b * BLOCK_BYTES, _F0, codes)
                continue
            # make_qx_quants(32, 16, x, L, 1, w): 19 candidate inverse scales, in order.
            best_c = 0
            scale = _F0
            best = _F0
            for c in range(_NUMS.size):
                inv = _NUMS[c] / mx
                sumlx = _F0
                suml2 = _F0
                for j in range(QK):
                    v = xr[base + j]
                    q = np.float32(min(max(_ni(inv * v), -NMAX), NMAX - 1))
                    sumlx = sumlx + (w[j] * v) * q
                    suml2 = suml2 + (w[j] * q) * q
                if c == 0:
                    scale = sumlx / suml2 if suml2 != _F0 else _F0
                    best = scale * sumlx
                elif suml2 > _F0 and sumlx * sumlx > best * suml2:
                    scale = sumlx / suml2
                    best = scale * sumlx
                    best_c = c
            inv = _NUMS[best_c] / mx
            for j in range(QK):
                codes[j] = min(max(_ni(inv * xr[base + j]), -NMAX), NMAX - 1) + NMAX
            _store(orow, b * BLOCK_BYTES, scale, codes)


@njit(inline="always")
def _decode(row, o, orow, y):
    d = nc.load_f16(row, o)
    qh = nc.load_u32(row, o + QH_OFF)
    for j in range(HALF):
        q = row[o + QS_OFF + j]
        lo = np.int32(q & _U4) | np.int32(((qh >> j) & 1) << 4)
        hi = np.int32(q >> 4) | np.int32(((qh >> (j + HALF)) & 1) << 4)
        orow[y + j] = np.float32(lo - 16) * d
        orow[y + j + HALF] = np.float32(hi - 16) * d


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_rows(data, out):
    for r in nc.prange(data.shape[0]):
        nc.decode_row(_decode, BLOCK_BYTES, QK, data[r], out[r])


def quantize(x: np.ndarray, src_kind: int, qw: np.ndarray | None = None) -> np.ndarray:
    """Q5_0 bytes of ``x`` (the numba contract: :mod:`nntrtool.quant.registry`)."""
    return nc.run_quantize_weighted(_quantize_rows, _quantize_weighted_rows, Q5_0, x, src_kind, qw)


def dequantize(data: np.ndarray) -> np.ndarray:
    """float32 values of Q5_0 bytes (the numba contract: :mod:`nntrtool.quant.registry`)."""
    return nc.run_dequantize(_dequantize_rows, Q5_0, np.ascontiguousarray(data))
