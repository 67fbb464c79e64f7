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
def _ends(plain, packed, to_plain):
    """(source, destination) offsets of a copy between the two layouts."""
    return (packed, plain) if to_plain else (plain, packed)


@njit(inline="always")
def _copy_chunk(src, s, dst, o, interleave):
    if interleave == 8:
        _copy8(src, s, dst, o)
    else:
        _copy4(src, s, dst, o)


@njit(inline="always")
def _shuffle(src, dst, rows, row_bytes, R, B, to_plain):
    """Copy plain Q4_0 rows into the interleaved layout (each group of R rows: the R scales of
    a block, then its quants B bytes at a time, row after row), or back with ``to_plain``."""
    nb = row_bytes // BLOCK_BYTES
    nchunks = QS_BYTES // B
    for g in range(rows // R):
        gbase = g * R * row_bytes
        for b in range(nb):
            packed = gbase + b * BLOCK_BYTES * R
            for r in range(R):
                s, o = _ends(
                    gbase + r * row_bytes + b * BLOCK_BYTES, packed + D_BYTES * r, to_plain
                )
                _copy_d(src, s, dst, o)
            packed += D_BYTES * R
            for c in range(nchunks):
                for r in range(R):
                    plain = gbase + r * row_bytes + b * BLOCK_BYTES + D_BYTES + c * B
                    s, o = _ends(plain, packed, to_plain)
                    _copy_chunk(src, s, dst, o, B)
                    packed += B


@njit(cache=True, nogil=True)
def _repack_kernel(src, dst, rows, row_bytes, R, B):
    _shuffle(src, dst, rows, row_bytes, R, B, False)


@njit(cache=True, nogil=True)
def _unpack_kernel(src, dst, rows, row_bytes, R, B):
    _shuffle(src, dst, rows, row_bytes, R, B, True)


def _run(kernel, data: np.ndarray, rows_per_group: int, interleave: int) -> np.ndarray:
    out = np.empty_like(data)
    rows, row_bytes = data.shape
    kernel(data.reshape(-1), out.reshape(-1), rows, row_bytes, rows_per_group, interleave)
    return out


def repack(data: np.ndarray, rows_per_group: int, interleave: int) -> np.ndarray:
    """Interleaved copy of a C-contiguous plain Q4_0 (rows, row_bytes) array."""
    return _run(_repack_kernel, data, rows_per_group, interleave)


def unpack(data: np.ndarray, rows_per_group: int, interleave: int) -> np.ndarray:
    """Plain Q4_0 copy of a C-contiguous interleaved (rows, row_bytes) array."""
    return _run(_unpack_kernel, data, rows_per_group, interleave)
