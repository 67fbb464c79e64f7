"""numba kernels of Q5_1: the same bytes as ``q5_1.quantize_xp`` / ``quantize_imatrix_xp`` and
ggml's dequantized values; the weighted search is the K-quants' (``_kquants_numba``), 64 blocks
side by side. Imported on first use only."""

from __future__ import annotations

import numpy as np

from nntrtool.qtypes import Q5_1

from . import _kquants_numba as kn
from . import _numba_common as nc
from ._numba_common import njit
from .q5_1 import BLOCK_BYTES, NMAX, QK

_U4 = np.uint8(0x0F)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_NMAX = np.float32(NMAX)
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_QH_OFF = 4
_QS_OFF = 8
_NUMS = kn.NUMS_Q5_WEIGHTED
_L = kn.LANES


@nc.register_jitable
def _store(orow, o, d, m, codes, c0, stride):
    """Write one block: fp16 ``d`` and ``m``, then codes ``codes[c0 + stride*j]`` (0..31)."""
    nc.store_f16_bits(orow, o, nc.f32_to_f16_bits(d))
    nc.store_f16_bits(orow, o + 2, nc.f32_to_f16_bits(m))
    nc.store_5bit_codes(orow, o + _QH_OFF, o + _QS_OFF, codes, c0, stride)


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
            mn = _FLT_MAX
            mx = -_FLT_MAX
            chk = _F0
            for j in range(QK):
                v = nc.load_f32(row, b * QK + j, src_kind)
                xb[j] = v
                chk = chk + (v - v)
                if v < mn:
                    mn = v
                if v > mx:
                    mx = v
            if chk != _F0:
                bad[r] = b * QK
                break
            d = (mx - mn) / _NMAX
            inv = _F1 / d if d != _F0 else _F0
            for j in range(QK):
                v = (xb[j] - mn) * inv + _HALF
                # x86 converts inf and NaN to 0x80000000, whose low bits are code 0.
                codes[j] = np.int32(v) if np.isfinite(v) else np.int32(0)
            _store(orow, b * BLOCK_BYTES, d, mn, codes, 0, 1)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _quantize_weighted_rows(x, src_kind, qw, out, bad):
    rows, cols = x.shape
    nb = cols // QK
    for r in nc.prange(rows):
        orow = out[r]
        s = np.empty(kn.SCRATCH, dtype=np.float32)
        xr = np.empty(cols, dtype=np.float32)
        sigma2 = nc.load_row_sigma2(x, r, src_kind, xr, bad)
        if bad[r] >= 0:
            continue
        for b0 in range(0, nb, _L):
            n = min(_L, nb - b0)
            kn.load_tile(x, r, b0 * QK, n, src_kind, s)
            for i in range(QK):
                for j in range(_L):
                    v = s[kn.XT + _L * i + j]
                    wq = qw[(b0 + j) * QK + i] if j < n else _F0
                    s[kn.W + _L * i + j] = wq * np.float32(np.sqrt(sigma2 + v * v))
            kn.qkx_search(s, NMAX, _NUMS, False)
            for j in range(n):
                _store(
                    orow,
                    (b0 + j) * BLOCK_BYTES,
                    s[kn.SCALE + j],
                    -s[kn.MINS + j],
                    s,
                    kn.CODES + j,
                    _L,
                )


@njit(inline="always")
def _decode(row, o, orow, y):
    d = nc.load_f16(row, o)
    m = nc.load_f16(row, o + 2)
    qh = nc.load_u32(row, o + _QH_OFF)
    for j in range(16):
        q = row[o + _QS_OFF + j]
        lo = np.int32(q & _U4) | np.int32(((qh >> j) & 1) << 4)
        hi = np.int32(q >> 4) | np.int32(((qh >> (j + 16)) & 1) << 4)
        orow[y + j] = np.float32(lo) * d + m
        orow[y + j + 16] = np.float32(hi) * d + m


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_rows(data, out):
    for r in nc.prange(data.shape[0]):
        nc.decode_row(_decode, BLOCK_BYTES, QK, data[r], out[r])


def quantize(x: np.ndarray, src_kind: int, qw: np.ndarray | None = None) -> np.ndarray:
    """Q5_1 bytes of ``x`` (the numba contract: :mod:`nntrtool.quant.registry`)."""
    return nc.run_quantize_weighted(_quantize_rows, _quantize_weighted_rows, Q5_1, x, src_kind, qw)


def dequantize(data: np.ndarray) -> np.ndarray:
    """float32 values of Q5_1 bytes (the numba contract: :mod:`nntrtool.quant.registry`)."""
    return nc.run_dequantize(_dequantize_rows, Q5_1, np.ascontiguousarray(data))
