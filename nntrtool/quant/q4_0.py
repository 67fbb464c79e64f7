"""Q4_0 kernels: 32 weights in an fp16 scale and 16 bytes of 4-bit codes.

Byte-identical to ggml's ``quantize_row_q4_0_ref`` / ``dequantize_row_q4_0``. Two
implementations with one interface (shared by every type module):

- ``quantize_xp`` / ``dequantize_xp``: array code for numpy or cupy (the readable reference);
- ``quantize_numba`` / ``dequantize_numba``: parallel JIT kernels, one block per inner loop.

The reference walks a block keeping ``max``, the signed value of the first largest magnitude,
starting from +0.0, so an all-zero block gets ``d = 0 / -8 = -0.0``. When ``1/d`` overflows (a
block whose largest magnitude is below ~2^-125) every ``x * id + 8.5`` is inf or NaN; x86's
float-to-int conversion gives 0x80000000 there, so ggml stores code 0, and so do we.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrtool.qtypes import Q4_0

from .common import (
    SCALE_BYTES,
    join_scale_blocks,
    search_numerators,
    signed_scale_codes,
    split_scale_blocks,
    weighted_block_search,
)

QK = Q4_0.block_size
BLOCK_BYTES = Q4_0.block_bytes
HALF = QK // 2
D_BYTES = SCALE_BYTES  # the fp16 scale in front of the codes
assert D_BYTES + HALF == BLOCK_BYTES


#: make_qx_quants' nmax for Q4_0: codes l + 8 with l in [-8, 7].
NMAX = 8
#: ggml's GROUP_MAX_EPS: a block below this magnitude gets scale 0 and codes 0.
GROUP_MAX_EPS = np.float32(1e-15)
SEARCH_NUMERATORS = search_numerators(NMAX)


# --------------------------------------------------------------------------- array code (xp)


def quantize_xp(x: Any, xp: Any = np) -> Any:
    """Q4_0 bytes (rows, row_bytes) of a 2-D float32 array; raises on NaN/inf."""
    d, q = signed_scale_codes(x, QK, NMAX, xp)
    q = q.astype(xp.uint8)
    return join_scale_blocks(d, q[..., :HALF] | (q[..., HALF:] << 4), xp)


def quantize_imatrix_xp(x: Any, qw: Any, xp: Any = np) -> Any:
    """Q4_0 bytes of float32 ``(rows, cols)`` weighted by importance ``qw`` (float32, one per
    column): ggml's ``quantize_row_q4_0_impl``, a weighted scale search per block with weights
    ``qw * sqrt(sigma2 + x*x)``; the scale is stored as found, not refined afterwards."""
    d, codes = weighted_block_search(x, qw, QK, NMAX, xp)
    return join_scale_blocks(d, codes[..., :HALF] | (codes[..., HALF:] << 4), xp)


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 (rows, cols) of Q4_0 bytes (rows, row_bytes)."""
    d, qs = split_scale_blocks(data, BLOCK_BYTES, xp)
    q = xp.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(xp.int8) - xp.int8(8)
    with np.errstate(invalid="ignore"):  # an inf scale times code 0 is NaN, as in ggml
        values = q.astype(xp.float32) * d
    return values.reshape(data.shape[0], data.shape[1] // BLOCK_BYTES * QK)
