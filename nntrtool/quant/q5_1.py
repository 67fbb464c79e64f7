"""Q5_1 kernels: 32 weights in an fp16 scale, an fp16 min, 32 high bits and 16 bytes of low
nibbles.

Byte-identical to ggml's ``quantize_row_q5_1_ref`` / ``dequantize_row_q5_1`` and, with an
importance matrix, to ``quantize_q5_1`` given ``quant_weights``. Block layout: ``d`` (fp16),
``m`` (fp16), then ``qh`` and ``qs`` as Q5_0. Value = ``q * d + m``.

The plain quantizer takes the block's min and max (the first of equal values, so the sign of
a zero is ggml's), ``d = (max - min) / 31`` and code ``trunc((x - min)/d + 0.5)``; a block whose
``1/d`` overflows gets code 0 (as x86 converts inf and NaN). The weighted one is ggml's
``make_qkx3_quants`` search (nmax 31), shared with the K-quants.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrtool.qtypes import Q5_1

from . import kquants as kq
from .common import check_finite, row_sigma2, scaled_values
from .q5_0 import pack, unpack

QK = Q5_1.block_size
BLOCK_BYTES = Q5_1.block_bytes
NMAX = 31

_HALF = np.float32(0.5)
_NMAX = np.float32(NMAX)


def _first_equal(xb: Any, target: Any, xp: Any) -> Any:
    """The first element of each block equal to ``target`` (so a zero keeps its sign)."""
    first = xp.argmax(xb == target[..., None], axis=2)
    return xp.take_along_axis(xb, first[..., None], axis=2)[..., 0]


def quantize_xp(x: Any, xp: Any = np) -> Any:
    """Q5_1 bytes (rows, row_bytes) of a 2-D float32 array; raises on NaN/inf."""
    check_finite(x, xp)
    rows, cols = x.shape
    nb = cols // QK
    xb = x.reshape(rows, nb, QK)
    mn = _first_equal(xb, xb.min(axis=2), xp)
    mx = _first_equal(xb, xb.max(axis=2), xp)
    with np.errstate(over="ignore", invalid="ignore"):
        d = ((mx - mn) / _NMAX).astype(xp.float32)
        v = scaled_values(xb - mn[..., None], d, xp, bias=_HALF)
    return pack(d, v.astype(xp.int32), xp, m=mn)


def quantize_imatrix_xp(x: Any, qw: Any, xp: Any = np) -> Any:
    """Q5_1 bytes of float32 ``(rows, cols)`` weighted by importance ``qw`` (float32, one per
    column), as ggml's ``quantize_row_q5_1_impl``."""
    check_finite(x, xp)
    rows, cols = x.shape
    nb = cols // QK
    with np.errstate(all="ignore"):
        sigma2 = row_sigma2(x, xp)
        w = xp.asarray(qw, dtype=xp.float32)[None, :] * xp.sqrt(sigma2[:, None] + x * x)
        xt = xp.ascontiguousarray(x.reshape(rows * nb, QK).T)
        wt = xp.ascontiguousarray(w.reshape(rows * nb, QK).T)
        rmin, rdelta, nstep = kq.WEIGHTED_SEARCH
        nums = kq.search_numerators(NMAX, rmin, rdelta, nstep)
        scale, the_min, codes = kq.qkx_search(xt, wt, NMAX, nums, False, xp)
    codes = xp.ascontiguousarray(codes.T).reshape(rows, nb, QK)
    return pack(scale.reshape(rows, nb), codes, xp, m=(-the_min).reshape(rows, nb))


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 (rows, cols) of Q5_1 bytes (rows, row_bytes)."""
    d, m, q = unpack(data, BLOCK_BYTES, xp)
    with np.errstate(invalid="ignore"):
        values = q.astype(xp.float32) * d + m
    return values.reshape(data.shape[0], -1)
