"""numba dequantizers of the common GGUF types nntrtool does not store (Q4_1, Q5_0, Q5_1, Q4_K,
Q5_K): one row per parallel task, float32 arithmetic in the same order as ``gguf.quants``, so
the values are bit-identical to ``gguf.quants.dequantize`` (the tests compare every type).
Imported on first use only."""

from __future__ import annotations

import numpy as np

from nntrtool.quant import _numba_common as nc
from nntrtool.quant._numba_common import njit

_U4 = np.uint8(0x0F)


@njit(inline="always")
def _k_scale_min(sc_bytes, o, j):
    """Scale and min (6 bits each) of sub-block ``j`` of a Q4_K/Q5_K block's 12 scale bytes."""
    if j < 4:
        sc = sc_bytes[o + j] & 63
        mn = sc_bytes[o + j + 4] & 63
    else:
        sc = (sc_bytes[o + j + 4] & 0x0F) | ((sc_bytes[o + j - 4] >> 6) << 4)
        mn = (sc_bytes[o + j + 4] >> 4) | ((sc_bytes[o + j] >> 6) << 4)
    return np.float32(sc), np.float32(mn)


@njit(parallel=True, cache=True, nogil=True)
def _q4_1(data, out):
    nb = data.shape[1] // 20
    for r in nc.prange(data.shape[0]):
        row, orow = data[r], out[r]
        for b in range(nb):
            o, y = b * 20, b * 32
            d = nc.load_f16(row, o)
            m = nc.load_f16(row, o + 2)
            for j in range(16):
                q = row[o + 4 + j]
                orow[y + j] = d * np.float32(q & _U4) + m
                orow[y + j + 16] = d * np.float32(q >> 4) + m


@njit(inline="always")
def _qh32(row, o):
    return (
        np.uint32(row[o])
        | (np.uint32(row[o + 1]) << 8)
        | (np.uint32(row[o + 2]) << 16)
        | (np.uint32(row[o + 3]) << 24)
    )


@njit(parallel=True, cache=True, nogil=True)
def _q5_0(data, out):
    nb = data.shape[1] // 22
    for r in nc.prange(data.shape[0]):
        row, orow = data[r], out[r]
        for b in range(nb):
            o, y = b * 22, b * 32
            d = nc.load_f16(row, o)
            qh = _qh32(row, o + 2)
            for j in range(16):
                q = row[o + 6 + j]
                lo = np.int32(q & _U4) | np.int32(((qh >> j) & 1) << 4)
                hi = np.int32(q >> 4) | np.int32(((qh >> (j + 16)) & 1) << 4)
                orow[y + j] = d * np.float32(lo - 16)
                orow[y + j + 16] = d * np.float32(hi - 16)


@njit(parallel=True, cache=True, nogil=True)
def _q5_1(data, out):
    nb = data.shape[1] // 24
    for r in nc.prange(data.shape[0]):
        row, orow = data[r], out[r]
        for b in range(nb):
            o, y = b * 24, b * 32
            d = nc.load_f16(row, o)
            m = nc.load_f16(row, o + 2)
            qh = _qh32(row, o + 4)
            for j in range(16):
                q = row[o + 8 + j]
                lo = np.int32(q & _U4) | np.int32(((qh >> j) & 1) << 4)
                hi = np.int32(q >> 4) | np.int32(((qh >> (j + 16)) & 1) << 4)
                orow[y + j] = d * np.float32(lo) + m
                orow[y + j + 16] = d * np.float32(hi) + m


@njit(parallel=True, cache=True, nogil=True)
def _q4_k(data, out):
    nb = data.shape[1] // 144
    for r in nc.prange(data.shape[0]):
        row, orow = data[r], out[r]
        for b in range(nb):
            o, y = b * 144, b * 256
            d = nc.load_f16(row, o)
            dmin = nc.load_f16(row, o + 2)
            for g in range(4):
                sc0, m0 = _k_scale_min(row, o + 4, 2 * g)
                sc1, m1 = _k_scale_min(row, o + 4, 2 * g + 1)
                d0, dm0 = d * sc0, dmin * m0
                d1, dm1 = d * sc1, dmin * m1
                q = o + 16 + g * 32
                for lane in range(32):
                    v = row[q + lane]
                    orow[y + g * 64 + lane] = d0 * np.float32(v & _U4) - dm0
                    orow[y + g * 64 + 32 + lane] = d1 * np.float32(v >> 4) - dm1


@njit(parallel=True, cache=True, nogil=True)
def _q5_k(data, out):
    nb = data.shape[1] // 176
    for r in nc.prange(data.shape[0]):
        row, orow = data[r], out[r]
        for b in range(nb):
            o, y = b * 176, b * 256
            d = nc.load_f16(row, o)
            dmin = nc.load_f16(row, o + 2)
            for g in range(4):
                sc0, m0 = _k_scale_min(row, o + 4, 2 * g)
                sc1, m1 = _k_scale_min(row, o + 4, 2 * g + 1)
                d0, dm0 = d * sc0, dmin * m0
                d1, dm1 = d * sc1, dmin * m1
                q = o + 48 + g * 32
                for lane in range(32):
                    v = row[q + lane]
                    h = row[o + 16 + lane]
                    lo = (v & _U4) | (((h >> (2 * g)) & 1) << 4)
                    hi = (v >> 4) | (((h >> (2 * g + 1)) & 1) << 4)
                    orow[y + g * 64 + lane] = d0 * np.float32(lo) - dm0
                    orow[y + g * 64 + 32 + lane] = d1 * np.float32(hi) - dm1


#: ``{ggml type name: (kernel, values per block, bytes per block)}``.
KERNELS = {
    "Q4_1": (_q4_1, 32, 20),
    "Q5_0": (_q5_0, 32, 22),
    "Q5_1": (_q5_1, 32, 24),
    "Q4_K": (_q4_k, 256, 144),
    "Q5_K": (_q5_k, 256, 176),
}


def dequantize(raw: np.ndarray, type_name: str) -> np.ndarray:
    """float32 ``(rows, cols)`` of C-contiguous uint8 block rows of ``type_name``."""
    kernel, block, nbytes = KERNELS[type_name]
    rows, width = raw.shape
    out = np.empty((rows, width // nbytes * block), np.float32)
    if rows:
        with nc.launch_guard():
            kernel(raw, out)
    return out
