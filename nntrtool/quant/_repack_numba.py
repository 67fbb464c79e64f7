"""numba kernels of the Q4_0 repack: each fp16 scale and each B-byte chunk moved (and XORed) as
one machine word. Imported on first use only.

Deliberately single-threaded: the shuffle runs at memory speed on one core (several GB/s), so
a second thread adds little, and waking it costs more than the work when cores are busy; the
GIL is released, so callers can repack on their own threads."""

from __future__ import annotations

import numpy as np

from nntrtool.qtypes import Q4_0

from . import _simd as simd
from ._numba_common import njit
from .common import REPACK_XOR as XOR
from .common import SCALE_BYTES as D_BYTES

BLOCK_BYTES = Q4_0.block_bytes
QS_BYTES = BLOCK_BYTES - D_BYTES

_copy_d = simd.make_copy_xor(D_BYTES, 0)
_copy4 = simd.make_copy_xor(4, XOR)
_copy8 = simd.make_copy_xor(8, XOR)


@njit(inline="always")
def _copy_chunk(src, s, dst, o, interleave):
    if interleave == 8:
        _copy8(src, s, dst, o)
    else:
        _copy4(src, s, dst, o)


@njit(cache=True, nogil=True)
def _repack_kernel(src, dst, rows, row_bytes, R, B):
    nb = row_bytes // BLOCK_BYTES
    nchunks = QS_BYTES // B
    for g in range(rows // R):
        gbase = g * R * row_bytes
        for b in range(nb):
            o = gbase + b * BLOCK_BYTES * R
            for r in range(R):
                _copy_d(src, gbase + r * row_bytes + b * BLOCK_BYTES, dst, o + D_BYTES * r)
            o += D_BYTES * R
            for c in range(nchunks):
                for r in range(R):
                    s = gbase + r * row_bytes + b * BLOCK_BYTES + D_BYTES + c * B
                    _copy_chunk(src, s, dst, o, B)
                    o += B


@njit(cache=True, nogil=True)
def _unpack_kernel(src, dst, rows, row_bytes, R, B):
    nb = row_bytes // BLOCK_BYTES
    nchunks = QS_BYTES // B
    for g in range(rows // R):
        gbase = g * R * row_bytes
        for b in range(nb):
            s = gbase + b * BLOCK_BYTES * R
            for r in range(R):
                _copy_d(src, s + D_BYTES * r, dst, gbase + r * row_bytes + b * BLOCK_BYTES)
            s += D_BYTES * R
            for c in range(nchunks):
                for r in range(R):
                    o = gbase + r * row_bytes + b * BLOCK_BYTES + D_BYTES + c * B
                    _copy_chunk(src, s, dst, o, B)
                    s += B


def repack(data: np.ndarray, rows_per_group: int, interleave: int) -> np.ndarray:
    """Interleaved copy of a C-contiguous plain Q4_0 (rows, row_bytes) array."""
    out = np.empty_like(data)
    _repack_kernel(
        data.reshape(-1), out.reshape(-1), data.shape[0], data.shape[1], rows_per_group, interleave
    )
    return out


def unpack(data: np.ndarray, rows_per_group: int, interleave: int) -> np.ndarray:
    """Plain Q4_0 copy of a C-contiguous interleaved (rows, row_bytes) array."""
    out = np.empty_like(data)
    _unpack_kernel(
        data.reshape(-1), out.reshape(-1), data.shape[0], data.shape[1], rows_per_group, interleave
    )
    return out
