"""numba kernels of F16: round to nearest even (numpy's cast and ggml's), exact decode.
Imported on first use only."""

from __future__ import annotations

import numpy as np

from nntrtool.qtypes import F16

from . import _numba_common as nc
from ._numba_common import njit

_F0 = np.float32(0.0)


@njit(parallel=True, cache=True, nogil=True)
def _quantize_rows(x, src_kind, out, bad):
    rows, cols = x.shape
    for r in nc.prange(rows):
        row = x[r]
        orow = out[r]
        chk = _F0
        for k in range(cols):
            v = nc.load_f32(row, k, src_kind)
            chk = chk + (v - v)
            nc.store_f16_bits(orow, 2 * k, nc.f32_to_f16_bits(v))
        if chk != _F0:
            bad[r] = 0


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_rows(data, out):
    cols = data.shape[1] // 2
    for r in nc.prange(data.shape[0]):
        row, orow = data[r], out[r]
        for k in range(cols):
            orow[k] = nc.load_f16(row, 2 * k)


def quantize(x: np.ndarray, src_kind: int, qw: np.ndarray | None = None) -> np.ndarray:
    """F16 bytes ``(rows, cols * 2)`` of a C-contiguous 2-D float32 array (or uint16 fp16/bf16
    bits per ``src_kind``); ``qw`` is ignored (rounding has nothing to weigh)."""
    return nc.run_quantize(_quantize_rows, F16, np.ascontiguousarray(x), src_kind)


def dequantize(data: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) of a C-contiguous F16 array (rows, cols * 2)."""
    return nc.run_dequantize(_dequantize_rows, F16, np.ascontiguousarray(data))
