"""numba kernels of Q5_0 (plain and importance-weighted): the same bytes as ``q5_0``'s array
code and ggml's, one row per parallel task. Imported on first use only."""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrtool.errors import QuantError
from nntrtool.qtypes import Q5_0

from . import _numba_common as nc
from ._gguf_numba import dequantize as _gguf_dequantize
from ._numba_common import njit
from .q5_0 import BLOCK_BYTES, GROUP_MAX_EPS, HALF, NMAX, QH_OFF, QK, QS_OFF, SEARCH_NUMERATORS

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_MINUS16 = np.float32(-16.0)
_HALF_BIAS = np.float32(16.5)
_BIAS = np.float32(12582912.0)  # nearest_int as (v + 1.5*2^23) - 1.5*2^23: |v| <= 17 here
_LO = np.float32(-NMAX)
_HI = np.float32(NMAX - 1)
_NCAND = len(SEARCH_NUMERATORS)


@nc.register_jitable
def _store(orow, o, d, codes):
    nc.store_f16_bits(orow, o, nc.f32_to_f16_bits(d))
    qh = np.uint32(0)
    for j in range(QK):
        qh |= np.uint32((codes[j] >> 4) & 1) << np.uint32(j)
    for k in range(4):
        orow[o + QH_OFF + k] = np.uint8((qh >> np.uint32(8 * k)) & np.uint32(0xFF))
    for j in range(HALF):
        orow[o + QS_OFF + j] = np.uint8((codes[j] & 15) | ((codes[j + HALF] & 15) << 4))


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _quantize_rows(x, src_kind, out, bad):
    rows, cols = x.shape
    nb = cols // QK
    for r in nc.prange(rows):
        row = x[r]
        orow = out[r]
        codes = np.empty(QK, dtype=np.int32)
        xb = np.empty(QK, dtype=np.float32)
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
                v = xb[j] * inv + _HALF_BIAS
                codes[j] = min(31, np.int32(v)) if np.isfinite(v) else 0
            _store(orow, b * BLOCK_BYTES, d, codes)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _quantize_rows_imatrix(x, src_kind, qw, out, bad):
    rows, cols = x.shape
    nb = cols // QK
    for r in nc.prange(rows):
        row = x[r]
        orow = out[r]
        xr = np.empty(cols, dtype=np.float32)
        w = np.empty(QK, dtype=np.float32)
        codes = np.empty(QK, dtype=np.int32)
        total = _F0
        chk = _F0
        for k in range(cols):
            v = nc.load_f32(row, k, src_kind)
            xr[k] = v
            chk = chk + (v - v)
            total = total + v * v
        if chk != _F0:
            bad[r] = 0
            continue
        sigma2 = total / np.float32(cols)
        for b in range(nb):
            base = b * QK
            amax = _F0
            vmax = _F0
            for j in range(QK):
                v = xr[base + j]
                w[j] = qw[base + j] * np.float32(np.sqrt(sigma2 + v * v))
                if abs(v) > amax:
                    amax = abs(v)
                    vmax = v
            if amax < GROUP_MAX_EPS:
                for j in range(QK):
                    codes[j] = 0
                _store(orow, b * BLOCK_BYTES, _F0, codes)
                continue
            scale = _F0
            best = _F0
            best_inv = _F0
            for c in range(_NCAND):
                inv = SEARCH_NUMERATORS[c] / vmax
                sumlx = _F0
                suml2 = _F0
                for j in range(QK):
                    v = xr[base + j]
                    lv = (inv * v + _BIAS) - _BIAS
                    lv = max(_LO, min(_HI, lv))
                    sumlx = sumlx + (w[j] * v) * lv
                    suml2 = suml2 + (w[j] * lv) * lv
                if c == 0:
                    scale = sumlx / suml2 if suml2 != _F0 else _F0  # NaN counts as true
                    best = scale * sumlx
                    best_inv = inv
                elif suml2 > _F0 and sumlx * sumlx > best * suml2:
                    scale = sumlx / suml2
                    best = scale * sumlx
                    best_inv = inv
            for j in range(QK):
                lv = (best_inv * xr[base + j] + _BIAS) - _BIAS
                codes[j] = np.int32(max(_LO, min(_HI, lv))) + NMAX
            _store(orow, b * BLOCK_BYTES, scale, codes)


def quantize(x: np.ndarray, src_kind: int, qw: np.ndarray | None = None) -> np.ndarray:
    """Q5_0 bytes of a C-contiguous 2-D float32 array (or uint16 fp16/bf16 bits per
    ``src_kind``), weighted by importance ``qw`` (float32, one per column) when given."""
    if qw is None:
        return nc.run_quantize(_quantize_rows, Q5_0, x, src_kind)
    if x.ndim != 2 or np.size(qw) != x.shape[1]:
        raise QuantError(f"q5_0: {np.size(qw)} importance values for an array of shape {x.shape}")
    weights = np.ascontiguousarray(qw, dtype=np.float32)

    def kernel(x: Any, src_kind: int, out: Any, bad: Any) -> None:
        _quantize_rows_imatrix(x, src_kind, weights, out, bad)

    return nc.run_quantize(kernel, Q5_0, x, src_kind)


def dequantize(data: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) of a C-contiguous Q5_0 array (rows, row_bytes)."""
    return _gguf_dequantize(np.ascontiguousarray(data), "Q5_0")
