"""Q5_0 kernels: 32 weights in an fp16 scale, 32 high bits and 16 bytes of low nibbles.

Byte-identical to ggml's ``quantize_row_q5_0_ref`` / ``dequantize_row_q5_0`` and, with an
importance matrix, to ``quantize_q5_0`` given ``quant_weights``. Block layout: ``d`` (fp16),
``qh`` (uint32, little-endian: bit j is the fifth bit of code j), ``qs[16]`` (code j in the low
nibble of byte j, code j + 16 in its high nibble). Value = ``(q - 16) * d``.

The plain quantizer is Q4_0's with 16 levels a side: ``d = max / -16`` from the signed value
of largest magnitude, code ``min(31, trunc(x/d + 16.5))``. As for Q4_0, a block whose ``1/d``
overflows gets code 0 everywhere (what x86 stores for an inf or NaN converted to an integer).
The weighted quantizer is ggml's ``make_qx_quants`` search with nmax 16, shared with Q4_0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrtool.qtypes import Q5_0

from .common import (
    SCALE_BYTES,
    f16_bits,
    f16_to_f32,
    signed_scale_codes,
    weighted_block_search,
)

QK = Q5_0.block_size
BLOCK_BYTES = Q5_0.block_bytes
HALF = QK // 2
NMAX = 16
QH_OFF = SCALE_BYTES
QS_OFF = QH_OFF + 4
assert QS_OFF + HALF == BLOCK_BYTES


def pack(d: Any, codes: Any, xp: Any, m: Any = None) -> Any:
    """Rows of Q5_0 blocks (Q5_1 when ``m`` is given) from float32 scales (and mins)
    ``(rows, blocks)`` and codes 0..31 ``(rows, blocks, 32)``."""
    rows, nb, _ = codes.shape
    extra = 0 if m is None else SCALE_BYTES
    out = xp.empty((rows, nb, BLOCK_BYTES + extra), dtype=xp.uint8)
    out[..., :SCALE_BYTES] = f16_bits(d, xp)[..., None].view(xp.uint8)
    if m is not None:
        out[..., SCALE_BYTES : 2 * SCALE_BYTES] = f16_bits(m, xp)[..., None].view(xp.uint8)
    c = codes.astype(xp.uint8)
    hi = ((c >> xp.uint8(4)) & xp.uint8(1)).astype(xp.uint32)
    shifts = xp.asarray(np.arange(QK, dtype=np.uint32))
    qh = (hi << shifts).sum(axis=2, dtype=xp.uint32)  # distinct bits: the sum is an OR
    out[..., QH_OFF + extra : QS_OFF + extra] = qh.astype("<u4")[..., None].view(xp.uint8)
    lo = c & xp.uint8(15)
    out[..., QS_OFF + extra :] = lo[..., :HALF] | (lo[..., HALF:] << xp.uint8(4))
    return out.reshape(rows, nb * (BLOCK_BYTES + extra))


def unpack(data: Any, block_bytes: int, xp: Any) -> tuple[Any, Any, Any]:
    """The fp16 fields as float32 ``(rows, blocks, 1)`` each (d, and m for Q5_1) and the codes
    ``(rows, blocks, 32)`` (int32 0..31) of Q5_0 / Q5_1 rows."""
    rows = data.shape[0]
    b = xp.ascontiguousarray(data).reshape(rows, data.shape[1] // block_bytes, block_bytes)
    extra = block_bytes - BLOCK_BYTES
    d = f16_to_f32(xp.ascontiguousarray(b[..., :SCALE_BYTES]).view(xp.uint16), xp)
    m = None
    if extra:
        m_bits = xp.ascontiguousarray(b[..., SCALE_BYTES : 2 * SCALE_BYTES]).view(xp.uint16)
        m = f16_to_f32(m_bits, xp)
    qh = xp.ascontiguousarray(b[..., QH_OFF + extra : QS_OFF + extra]).view("<u4")
    qs = b[..., QS_OFF + extra :]
    shifts = xp.asarray(np.arange(QK, dtype=np.uint32))
    hi = ((qh.astype(xp.uint32) >> shifts) & xp.uint32(1)).astype(xp.int32) << 4
    lo = xp.concatenate([qs & xp.uint8(15), qs >> xp.uint8(4)], axis=2).astype(xp.int32)
    return d, m, lo | hi


# --------------------------------------------------------------------------- array code (xp)


def quantize_xp(x: Any, xp: Any = np) -> Any:
    """Q5_0 bytes (rows, row_bytes) of a 2-D float32 array; raises on NaN/inf."""
    return pack(*signed_scale_codes(x, QK, NMAX, xp), xp)


def quantize_imatrix_xp(x: Any, qw: Any, xp: Any = np) -> Any:
    """Q5_0 bytes of float32 ``(rows, cols)`` weighted by importance ``qw`` (float32, one per
    column), as ggml's ``quantize_row_q5_0_impl``."""
    d, codes = weighted_block_search(x, qw, QK, NMAX, xp)
    return pack(d, codes, xp)


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 (rows, cols) of Q5_0 bytes (rows, row_bytes)."""
    d, _, q = unpack(data, BLOCK_BYTES, xp)
    with np.errstate(invalid="ignore"):  # an inf scale times code 0 is NaN, as in ggml
        values = (q - 16).astype(xp.float32) * d
    return values.reshape(data.shape[0], -1)
