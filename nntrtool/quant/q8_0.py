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

from .common import check_finite, f16_bits, f16_to_f32, numba_entry_points

QK = Q8_0.block_size
BLOCK_BYTES = Q8_0.block_bytes
D_BYTES = BLOCK_BYTES - QK

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
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
    nz = d != _F0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        inv = xp.where(nz, _F1 / xp.where(nz, d, _F1), _F0).astype(xp.float32)
        v = xb * inv[..., None]
    v = xp.where(xp.isfinite(v), v, _F0)
    q = round_half_away(v, xp).astype(xp.int8)
    out = xp.empty((rows, nb, BLOCK_BYTES), dtype=xp.uint8)
    out[..., :D_BYTES] = f16_bits(d, xp)[..., None].view(xp.uint8)
    out[..., D_BYTES:] = q.view(xp.uint8)
    return out.reshape(rows, nb * BLOCK_BYTES)


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 (rows, cols) of Q8_0 bytes (rows, row_bytes)."""
    rows = data.shape[0]
    nb = data.shape[1] // BLOCK_BYTES
    blocks = data.reshape(rows, nb, BLOCK_BYTES)
    d = f16_to_f32(xp.ascontiguousarray(blocks[..., :D_BYTES]).view(xp.uint16), xp)
    q = xp.ascontiguousarray(blocks[..., D_BYTES:]).view(xp.int8)
    with np.errstate(invalid="ignore"):  # an inf scale times code 0 is NaN, as in ggml
        return (q.astype(xp.float32) * d).reshape(rows, nb * QK)


# --------------------------------------------------------------------------- numba entry points


quantize_numba, dequantize_numba = numba_entry_points("Q8_0", "_q8_0_numba")
