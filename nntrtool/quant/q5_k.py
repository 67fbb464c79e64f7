"""Q5_K: 256 weights in 176 bytes: ``d`` and ``dmin`` (fp16), 12 bytes of 6-bit sub-block
scales and mins (see :mod:`kquant_common`), ``qh[32]`` (fifth bits: bit ``g`` of byte ``l``
belongs to value ``l`` of sub-block ``g``) and ``qs[128]`` as in Q4_K. A value is
``(d*scale) * q - dmin*min``. Dequantize only (bit-identical to ggml's
``dequantize_row_q5_K``): nntrtool stores Q5_K blocks it reads, it does not write new ones."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from nntrtool.qtypes import Q5_K

from .kquant_common import HEADER_BYTES, QK_K, SUB, block_scales

QK = QK_K
BLOCK_BYTES = Q5_K.block_bytes
QH_OFF = HEADER_BYTES
QS_OFF = QH_OFF + 32
assert QS_OFF + QK // 2 == BLOCK_BYTES


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 (rows, cols) of Q5_K bytes (rows, row_bytes)."""
    rows, nbytes = data.shape
    b = xp.ascontiguousarray(data).reshape(-1, BLOCK_BYTES)
    n = b.shape[0]
    ds, dm = block_scales(b, xp)
    qs = b[:, QS_OFF:].reshape(n, 4, 1, SUB)
    lo = xp.concatenate([qs & xp.uint8(15), qs >> xp.uint8(4)], axis=2)  # (n, 4, 2, 32)
    shifts = xp.arange(8, dtype=xp.uint8).reshape(1, 4, 2, 1)
    hi = ((b[:, QH_OFF:QS_OFF].reshape(n, 1, 1, SUB) >> shifts) & xp.uint8(1)) << xp.uint8(4)
    q = (lo | hi).astype(xp.float32)
    with np.errstate(all="ignore"):
        y = ds.reshape(n, 4, 2, 1) * q - dm.reshape(n, 4, 2, 1)
    return y.reshape(rows, nbytes // BLOCK_BYTES * QK)


def dequantize_numba(data: Any) -> np.ndarray:
    """float32 (rows, cols) of C-contiguous Q5_K bytes, with the numba kernel."""
    gguf = importlib.import_module("nntrtool.quant._gguf_numba")
    return gguf.dequantize(np.ascontiguousarray(data), "Q5_K")
