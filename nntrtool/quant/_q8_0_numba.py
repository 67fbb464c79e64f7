"""numba kernels of Q8_0: one row per parallel task, one block per loop step, each block
done with the whole-block vector operations of ``_simd``. Imported on first use only."""

from __future__ import annotations

import numpy as np

from nntrtool.qtypes import Q8_0

from . import _numba_common as nc
from . import _simd as simd
from ._numba_common import njit
from .q8_0 import BLOCK_BYTES, D_BYTES, QK

_absmax_bits = simd.make_absmax_bits(QK)
_pack = simd.make_q8_0_pack(QK)
_unpack = simd.make_q8_0_unpack(QK)
_NON_FINITE = np.uint32(0x7F800000)  # |x| bits at or above this: inf or NaN

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_QMAX = np.float32(127.0)


@njit(inline="always")
def _encode(row, base, src_kind, orow, o):
    mbits = _absmax_bits(row, base, src_kind)
    if mbits >= _NON_FINITE:
        return False
    d = nc.f32_from_bits(mbits) / _QMAX
    inv = _F1 / d if d != _F0 else _F0
    nc.store_f16_bits(orow, o, nc.f32_to_f16_bits(d))
    if np.isinf(inv):
        orow[o + D_BYTES : o + BLOCK_BYTES] = 0
    else:
        _pack(row, base, src_kind, inv, orow, o + D_BYTES)
    return True


@njit(parallel=True, cache=True, nogil=True)
def _quantize_rows(x, src_kind, out, bad):
    for r in nc.prange(x.shape[0]):
        bad[r] = nc.encode_row(_encode, QK, BLOCK_BYTES, x[r], src_kind, out[r])


@njit(inline="always")
def _decode(row, o, orow, y):
    _unpack(row, o + D_BYTES, nc.load_f16(row, o), orow, y)


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_rows(data, out):
    for r in nc.prange(data.shape[0]):
        nc.decode_row(_decode, BLOCK_BYTES, QK, data[r], out[r])


def quantize(x: np.ndarray, src_kind: int, qw: np.ndarray | None = None) -> np.ndarray:
    """Q8_0 bytes of a C-contiguous 2-D float32 array (or uint16 fp16/bf16 bits per ``src_kind``);
    an importance matrix does not change Q8_0 bytes (as in ggml), so ``qw`` is not used."""
    return nc.run_quantize(_quantize_rows, Q8_0, x, src_kind)


def dequantize(data: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) of a C-contiguous Q8_0 array (rows, row_bytes)."""
    return nc.run_dequantize(_dequantize_rows, Q8_0, data)
