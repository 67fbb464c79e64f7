"""numba kernels of Q4_0: one row per parallel task, one block per loop step, each block
done with the whole-block vector operations of ``_simd``. Imported on first use only."""

from __future__ import annotations

import numpy as np

from nntrtool.qtypes import Q4_0

from . import _numba_common as nc
from . import _simd as simd
from ._numba_common import njit
from .q4_0 import BLOCK_BYTES, D_BYTES, QK

_absmax_bits = simd.make_absmax_bits(QK)
_first_abs_equal = simd.make_first_abs(QK, "==")
_pack = simd.make_q4_0_pack(QK)
_unpack = simd.make_q4_0_unpack(QK)
_NON_FINITE = np.uint32(0x7F800000)  # |x| bits at or above this: inf or NaN

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_MINUS8 = np.float32(-8.0)
_BIAS = np.float32(8.5)


# The block loop is written out here rather than taken from ``nc.encode_row`` (as Q8_0 does):
# through it, the bf16-source kernel measured about 1.4x slower (4096 x 4096, best of 30).
@njit(parallel=True, cache=True, nogil=True)
def _quantize_rows(x, src_kind, out, bad):
    nb = x.shape[1] // QK
    for r in nc.prange(x.shape[0]):
        row, orow = x[r], out[r]
        for b in range(nb):
            base, o = b * QK, b * BLOCK_BYTES
            mbits = _absmax_bits(row, base, src_kind)
            if mbits >= _NON_FINITE:
                bad[r] = base
                break
            mx = _F0  # the walk starts from +0.0 and only moves on a strictly larger |x|
            if mbits != np.uint32(0):
                first = _first_abs_equal(row, base, src_kind, mbits)
                mx = nc.load_f32(row, base + first, src_kind)
            d = mx / _MINUS8
            inv = _F1 / d if d != _F0 else _F0
            nc.store_f16_bits(orow, o, nc.f32_to_f16_bits(d))
            if np.isinf(inv):
                orow[o + D_BYTES : o + BLOCK_BYTES] = 0
            else:
                _pack(row, base, src_kind, inv, orow, o + D_BYTES)


@njit(inline="always")
def _decode(row, o, orow, y):
    _unpack(row, o + D_BYTES, nc.load_f16(row, o), orow, y)


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_rows(data, out):
    for r in nc.prange(data.shape[0]):
        nc.decode_row(_decode, BLOCK_BYTES, QK, data[r], out[r])


def quantize(x: np.ndarray, src_kind: int, qw: np.ndarray | None = None) -> np.ndarray:
    """Q4_0 bytes of ``x`` (the numba contract: :mod:`nntrtool.quant.registry`)."""
    if qw is not None:
        from ._q4_0_imatrix_numba import quantize as quantize_weighted

        return quantize_weighted(x, src_kind, qw)
    return nc.run_quantize(_quantize_rows, Q4_0, x, src_kind)


def dequantize(data: np.ndarray) -> np.ndarray:
    """float32 values of Q4_0 bytes (the numba contract: :mod:`nntrtool.quant.registry`)."""
    return nc.run_dequantize(_dequantize_rows, Q4_0, data)
