"""Q8_0 kernels: 32 weights in an fp16 scale and 32 int8 codes.

Byte-identical to ggml's ``quantize_row_q8_0_ref`` / ``dequantize_row_q8_0``; same four-function
interface as every type module (``quantize_xp``/``dequantize_xp`` for numpy or cupy,
``quantize_numba``/``dequantize_numba``).

Codes are C ``roundf(x * id)``: halves away from zero, which is neither ``np.round`` (halves to
even) nor ``floor(|v| + 0.5)`` (wrong just below one half). As for Q4_0, a block whose ``1/d``
overflows gets code 0 everywhere (what x86 stores for an inf or NaN converted to int).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrtool.qtypes import Q8_0

from .common import (
    SCALE_BYTES,
    check_finite,
    join_scale_blocks,
    scaled_values,
    split_scale_blocks,
)

QK = Q8_0.block_size
BLOCK_BYTES = Q8_0.block_bytes
D_BYTES = SCALE_BYTES  # the fp16 scale in front of the codes
assert D_BYTES + QK == BLOCK_BYTES

_HALF = np.float32(0.5)
_QMAX = np.float32(127.0)


def round_half_away(v: Any, xp: Any = np) -> Any:
    """C ``roundf`` on float32: nearest integer, halves away from zero (exact: ``v - trunc(v)``
    is exact in float32)."""
    t = xp.trunc(v)
    return xp.where(xp.abs(v - t) >= _HALF, t + xp.sign(v), t).astype(xp.float32)


# --------------------------------------------------------------------------- array code (xp)


def quantize_xp(x: Any, xp: Any = np) -> Any:
    """Q8_0 bytes (rows, row_bytes) of a 2-D float32 array; raises on NaN/inf."""
    check_finite(x, xp)
    rows, cols = x.shape
    nb = cols // QK
    xb = x.reshape(rows, nb, QK)
    amax = xp.abs(xb).max(axis=2)
    d = (amax / _QMAX).astype(xp.float32)
    v = scaled_values(xb, d, xp)
    q = round_half_away(v, xp).astype(xp.int8)
    return join_scale_blocks(d, q.view(xp.uint8), xp)


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 (rows, cols) of Q8_0 bytes (rows, row_bytes)."""
    d, codes = split_scale_blocks(data, BLOCK_BYTES, xp)
    q = xp.ascontiguousarray(codes).view(xp.int8)
    with np.errstate(invalid="ignore"):  # an inf scale times code 0 is NaN, as in ggml
        values = q.astype(xp.float32) * d
    return values.reshape(data.shape[0], data.shape[1] // BLOCK_BYTES * QK)
