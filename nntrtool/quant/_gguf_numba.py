"""numba dequantizers of the common GGUF types nntrtool does not store (Q4_1): one row per
parallel task, float32 arithmetic in the same order as ``gguf.quants``, so the values are
bit-identical to ``gguf.quants.dequantize`` (the tests compare every type).
Here, beside the package's other kernels, so that numba's cache is invalidated with the shared
helpers they inline. Imported on first use only."""

from __future__ import annotations

import numpy as np

from . import _numba_common as nc
from ._numba_common import njit

_U4 = np.uint8(0x0F)


@njit(inline="always")
def _decode_q4_1(row, o, orow, y):
    d = nc.load_f16(row, o)
    m = nc.load_f16(row, o + 2)
    for j in range(16):
        q = row[o + 4 + j]
        orow[y + j] = d * np.float32(q & _U4) + m
        orow[y + j + 16] = d * np.float32(q >> 4) + m


@njit(parallel=True, cache=True, nogil=True)
def _q4_1(data, out):
    for r in nc.prange(data.shape[0]):
        nc.decode_row(_decode_q4_1, 20, 32, data[r], out[r])


#: ``{ggml type name: (kernel, values per block, bytes per block)}``.
KERNELS = {"Q4_1": (_q4_1, 32, 20)}


def dequantize(raw: np.ndarray, type_name: str) -> np.ndarray:
    """float32 ``(rows, cols)`` of C-contiguous uint8 block rows of ``type_name``."""
    kernel, block, nbytes = KERNELS[type_name]
    rows, width = raw.shape
    out = np.empty((rows, width // nbytes * block), np.float32)
    if rows:
        with nc.launch_guard():
            kernel(raw, out)
    return out
