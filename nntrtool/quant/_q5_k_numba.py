"""numba kernels of Q5_K: the same bytes as ``q5_k.quantize_xp`` / ``quantize_imatrix_xp`` (the
search is shared with Q4_K in ``_kquants_numba``), and ggml's dequantized values. Imported on
first use only."""

from __future__ import annotations

import numpy as np

from nntrtool.qtypes import Q5_K

from . import _kquants_numba as kn
from . import _numba_common as nc
from ._numba_common import njit
from .q5_k import BLOCK_BYTES, NMAX, QH_OFF, QK, QS_OFF

_U4 = np.uint8(0x0F)


@njit(inline="always")
def _decode(row, o, orow, y):
    d = nc.load_f16(row, o)
    dmin = nc.load_f16(row, o + 2)
    for g in range(4):
        sc0, m0 = kn.scale_min(row, o + 4, 2 * g)
        sc1, m1 = kn.scale_min(row, o + 4, 2 * g + 1)
        d0, dm0 = d * sc0, dmin * m0
        d1, dm1 = d * sc1, dmin * m1
        q = o + QS_OFF + g * 32
        for lane in range(32):
            v = row[q + lane]
            h = row[o + QH_OFF + lane]
            lo = (v & _U4) | (((h >> (2 * g)) & 1) << 4)
            hi = (v >> 4) | (((h >> (2 * g + 1)) & 1) << 4)
            orow[y + g * 64 + lane] = d0 * np.float32(lo) - dm0
            orow[y + g * 64 + 32 + lane] = d1 * np.float32(hi) - dm1


@njit(parallel=True, cache=True, nogil=True)
def _dequantize_rows(data, out):
    for r in nc.prange(data.shape[0]):
        nc.decode_row(_decode, BLOCK_BYTES, QK, data[r], out[r])


def quantize(x: np.ndarray, src_kind: int, qw: np.ndarray | None = None) -> np.ndarray:
    """Q5_K bytes of ``x`` (the numba contract: :mod:`nntrtool.quant.registry`)."""
    return kn.quantize("q5_k", Q5_K, NMAX, x, src_kind, qw)


def dequantize(data: np.ndarray) -> np.ndarray:
    """float32 values of Q5_K bytes (the numba contract: :mod:`nntrtool.quant.registry`)."""
    return nc.run_dequantize(_dequantize_rows, Q5_K, np.ascontiguousarray(data))
