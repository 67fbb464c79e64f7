"""Q5_0: 32 weights in an fp16 scale, 4 bytes of fifth bits and 16 bytes of low nibbles.

Byte-identical to ggml's ``quantize_row_q5_0_ref`` and, with an importance matrix, to
``quantize_q5_0`` given ``quant_weights``; dequantize bit-identical to ``dequantize_row_q5_0``.

Block: ``d`` (fp16), ``qh`` (uint32 LE: bit j is the fifth bit of value j), ``qs[16]`` (value
j in the low nibble of byte j, value j+16 in the high nibble). A value is ``(q - 16) * d``.

* plain: as Q4_0 with 16 levels each side: ``d = max / -16`` (``max`` the signed value of
  the first largest magnitude), code ``min(31, trunc(x/d + 16.5))``;
* importance: ggml's ``make_qx_quants`` with nmax 16 and weights
  ``qw * sqrt(sigma2 + x*x)`` (``sigma2 = mean(x*x)`` over the whole row), the scale stored as
  found; blocks below 1e-15 store scale 0 and codes 0.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from nntrtool.qtypes import Q5_0

from .common import (
    NEAREST_INT_BIAS,
    check_finite,
    f16_bits,
    f16_to_f32,
    numba_entry_points,
    qx_scale_search,
    scaled_values,
    search_numerators,
)

QK = Q5_0.block_size
BLOCK_BYTES = Q5_0.block_bytes
HALF = QK // 2
QH_OFF = 2
QS_OFF = 6
assert QS_OFF + HALF == BLOCK_BYTES
NMAX = 16
GROUP_MAX_EPS = np.float32(1e-15)
SEARCH_NUMERATORS = search_numerators(NMAX)

_F0 = np.float32(0.0)
_MINUS16 = np.float32(-16.0)
_BIAS = np.float32(16.5)


def _join(d: Any, codes: Any, xp: Any) -> Any:
    """Blocks of fp16 ``d`` (rows, nb) and 5-bit codes (rows, nb, 32) as bytes."""
    rows, nb, _ = codes.shape
    out = xp.empty((rows, nb, BLOCK_BYTES), dtype=xp.uint8)
    out[..., :QH_OFF] = f16_bits(d, xp)[..., None].view(xp.uint8)
    bits = (codes >> xp.uint8(4)).astype(xp.uint32)
    shifts = xp.arange(QK, dtype=xp.uint32)
    qh = (bits << shifts).sum(axis=-1, dtype=xp.uint32)  # distinct bits: the sum is an OR
    out[..., QH_OFF:QS_OFF] = qh.astype("<u4")[..., None].view(xp.uint8)
    lo = codes & xp.uint8(15)
    out[..., QS_OFF:] = lo[..., :HALF] | (lo[..., HALF:] << xp.uint8(4))
    return out.reshape(rows, nb * BLOCK_BYTES)


def quantize_xp(x: Any, xp: Any = np) -> Any:
    """Q5_0 bytes (rows, row_bytes) of a 2-D float32 array; raises on NaN/inf."""
    check_finite(x, xp)
    rows, cols = x.shape
    xb = x.reshape(rows, cols // QK, QK)
    ax = xp.abs(xb)
    amax = ax.max(axis=2)
    first = xp.argmax(ax == amax[..., None], axis=2)
    mx = xp.take_along_axis(xb, first[..., None], axis=2)[..., 0]
    mx = xp.where(amax == _F0, _F0, mx)  # the walk's initial +0.0 survives all-zero blocks
    d = (mx / _MINUS16).astype(xp.float32)
    v = scaled_values(xb, d, xp, bias=_BIAS)
    q = xp.minimum(v.astype(xp.int32), 31).astype(xp.uint8)
    return _join(d, q, xp)


def quantize_imatrix_xp(x: Any, qw: Any, xp: Any = np) -> Any:
    """Q5_0 bytes weighted by importance ``qw`` (float32, one per column), as ggml's
    ``quantize_q5_0`` with ``quant_weights``."""
    from .q4_0 import row_sigma2

    check_finite(x, xp)
    rows, cols = x.shape
    nb = cols // QK
    m = rows * nb
    with np.errstate(all="ignore"):  # overflowing rows give inf/NaN weights, as in C
        sigma2 = row_sigma2(x, xp)
        qw = xp.asarray(qw, dtype=xp.float32)
        w = qw[None, :] * xp.sqrt(sigma2[:, None] + x * x)
        xt = xp.ascontiguousarray(x.reshape(m, QK).T)
        wt = xp.ascontiguousarray(w.reshape(m, QK).T)
        amax = xp.zeros(m, dtype=xp.float32)
        vmax = xp.zeros(m, dtype=xp.float32)
        for i in range(QK):
            ax = xp.abs(xt[i])
            take = ax > amax
            amax = xp.where(take, ax, amax)
            vmax = xp.where(take, xt[i], vmax)
        tiny = amax < GROUP_MAX_EPS
        vmax = xp.where(tiny, np.float32(1.0), vmax)
        scale, best_c = qx_scale_search(xt, wt, wt * xt, vmax, NMAX, xp)
        nums = SEARCH_NUMERATORS if xp is np else xp.asarray(SEARCH_NUMERATORS)
        inv = nums[best_c] / vmax
        v = (inv * xt + NEAREST_INT_BIAS) - NEAREST_INT_BIAS
        codes = xp.minimum(xp.maximum(v, np.float32(-NMAX)), np.float32(NMAX - 1))
        codes = codes.astype(xp.int32) + NMAX
    codes = xp.where(tiny, 0, codes).astype(xp.uint8).T.reshape(rows, nb, QK)
    d = xp.where(tiny, _F0, scale).reshape(rows, nb)
    return _join(d, codes, xp)


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 (rows, cols) of Q5_0 bytes (rows, row_bytes): ``(q - 16) * d``."""
    rows = data.shape[0]
    b = data.reshape(rows, data.shape[1] // BLOCK_BYTES, BLOCK_BYTES)
    d = f16_to_f32(xp.ascontiguousarray(b[..., :QH_OFF]).view(xp.uint16), xp)
    qh = xp.ascontiguousarray(b[..., QH_OFF:QS_OFF]).view("<u4")
    hi = ((qh >> xp.arange(QK, dtype=xp.uint32)) & xp.uint32(1)).astype(xp.uint8) << xp.uint8(4)
    qs = b[..., QS_OFF:]
    q = xp.concatenate([qs & xp.uint8(15), qs >> xp.uint8(4)], axis=2) | hi
    with np.errstate(invalid="ignore"):
        values = (q.astype(xp.int32) - 16).astype(xp.float32) * d
    return values.reshape(rows, data.shape[1] // BLOCK_BYTES * QK)


quantize_numba, dequantize_numba = numba_entry_points("Q5_0", "_q5_0_numba")


def quantize_imatrix_numba(x: Any, src_kind: int, qw: Any) -> np.ndarray:
    """Importance-weighted Q5_0 bytes with the numba kernel (imported on first use)."""
    return importlib.import_module("nntrtool.quant._q5_0_numba").quantize(x, src_kind, qw)
