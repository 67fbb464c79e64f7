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
    NEAREST_INT_BIAS,
    SCALE_BYTES,
    check_finite,
    join_scale_blocks,
    qx_scale_search,
    scaled_values,
    search_numerators,
    split_scale_blocks,
)

QK = Q4_0.block_size
BLOCK_BYTES = Q4_0.block_bytes
HALF = QK // 2
D_BYTES = SCALE_BYTES  # the fp16 scale in front of the codes
assert D_BYTES + HALF == BLOCK_BYTES

_F0 = np.float32(0.0)
_MINUS8 = np.float32(-8.0)
_BIAS = np.float32(8.5)

#: make_qx_quants' nmax for Q4_0: codes l + 8 with l in [-8, 7].
NMAX = 8
#: ggml's GROUP_MAX_EPS: a block below this magnitude gets scale 0 and codes 0.
GROUP_MAX_EPS = np.float32(1e-15)
SEARCH_NUMERATORS = search_numerators(NMAX)


# --------------------------------------------------------------------------- array code (xp)


def quantize_xp(x: Any, xp: Any = np) -> Any:
    """Q4_0 bytes (rows, row_bytes) of a 2-D float32 array; raises on NaN/inf."""
    check_finite(x, xp)
    rows, cols = x.shape
    nb = cols // QK
    xb = x.reshape(rows, nb, QK)
    ax = xp.abs(xb)
    amax = ax.max(axis=2)
    first = xp.argmax(ax == amax[..., None], axis=2)
    mx = xp.take_along_axis(xb, first[..., None], axis=2)[..., 0]
    mx = xp.where(amax == _F0, _F0, mx)  # the walk's initial +0.0 survives all-zero blocks
    d = (mx / _MINUS8).astype(xp.float32)
    v = scaled_values(xb, d, xp, bias=_BIAS)
    q = xp.minimum(v.astype(xp.int32), 15).astype(xp.uint8)
    return join_scale_blocks(d, q[..., :HALF] | (q[..., HALF:] << 4), xp)


def row_sigma2(x: Any, xp: Any = np) -> Any:
    """``sum(x*x) / cols`` per row, summed in float32 in column order as ggml does."""
    rows, cols = x.shape
    sq = xp.ascontiguousarray((x * x).T)
    total = xp.zeros(rows, dtype=xp.float32)
    for j in range(cols):
        xp.add(total, sq[j], out=total)
    return total / np.float32(cols)


def quantize_imatrix_xp(x: Any, qw: Any, xp: Any = np) -> Any:
    """Q4_0 bytes of float32 ``(rows, cols)`` weighted by importance ``qw`` (float32, one per
    column): ggml's ``quantize_row_q4_0_impl``, a weighted scale search per block with weights
    ``qw * sqrt(sigma2 + x*x)``; the scale is stored as found, not refined afterwards."""
    check_finite(x, xp)
    rows, cols = x.shape
    nb = cols // QK
    m = rows * nb
    with np.errstate(all="ignore"):  # overflowing rows give inf/NaN weights, as in C
        sigma2 = row_sigma2(x, xp)
        qw = xp.asarray(qw, dtype=xp.float32)
        w = qw[None, :] * xp.sqrt(sigma2[:, None] + x * x)
        # Position-major (32, m): row i holds value i of every block.
        xt = xp.ascontiguousarray(x.reshape(m, QK).T)
        wt = xp.ascontiguousarray(w.reshape(m, QK).T)
        amax = xp.zeros(m, dtype=xp.float32)
        vmax = xp.zeros(m, dtype=xp.float32)
        for i in range(QK):
            ax = xp.abs(xt[i])
            take = ax > amax  # strict: the first of equal magnitudes wins
            amax = xp.where(take, ax, amax)
            vmax = xp.where(take, xt[i], vmax)
        tiny = amax < GROUP_MAX_EPS
        vmax = xp.where(tiny, np.float32(1.0), vmax)  # keeps the search finite; masked below
        scale, best_c = qx_scale_search(xt, wt, wt * xt, vmax, NMAX, xp)
        nums = SEARCH_NUMERATORS if xp is np else xp.asarray(SEARCH_NUMERATORS)
        inv = nums[best_c] / vmax
        v = (inv * xt + NEAREST_INT_BIAS) - NEAREST_INT_BIAS
        lo, hi = np.float32(-NMAX), np.float32(NMAX - 1)
        codes = xp.minimum(xp.maximum(v, lo), hi).astype(xp.int32) + NMAX
    codes = xp.where(tiny, 0, codes).astype(xp.uint8).T.reshape(rows, nb, QK)
    d = xp.where(tiny, _F0, scale).reshape(rows, nb)
    return join_scale_blocks(d, codes[..., :HALF] | (codes[..., HALF:] << 4), xp)


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 (rows, cols) of Q4_0 bytes (rows, row_bytes)."""
    d, qs = split_scale_blocks(data, BLOCK_BYTES, xp)
    q = xp.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(xp.int8) - xp.int8(8)
    with np.errstate(invalid="ignore"):  # an inf scale times code 0 is NaN, as in ggml
        values = q.astype(xp.float32) * d
    return values.reshape(data.shape[0], data.shape[1] // BLOCK_BYTES * QK)
