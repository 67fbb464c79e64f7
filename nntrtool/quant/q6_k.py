"""Q6_K: 256 weights in 210 bytes, byte-identical to ggml's ``quantize_row_q6_K_ref``.

This module owns the array version of the Q6_K kernels (``quantize_xp`` / ``dequantize_xp``,
run with ``xp`` = numpy or cupy) and the entry points of the numba version, which lives in
``_q6_k_numba`` so that numba is imported only when a numba kernel is first used.

Block layout: ``ql[128]`` (low 4 bits of each 6-bit code), ``qh[64]`` (high 2 bits),
``scales[16]`` (int8, one per run of 16 values), ``d`` (fp16, last).

How the array code stays bit-exact with ggml's scalar C:

* every operation is a float32 operation with one rounding; constants are ``np.float32``;
* the per-sub-block sums of the scale search are accumulated position by position in index
  order, vectorized *across* sub-blocks (arrays are laid out position-major, ``(16, n)``),
  never reduced as a tree within one run of 16;
* ``nearest_int`` inside the scale search is taken as ``(v + 1.5*2^23) - 1.5*2^23``: for the
  search ``|v| <= 32.9`` always (the inverse scale is derived from the run's own largest
  magnitude), where this float difference is exactly the integer ggml reads from the bits. The
  other two roundings (sub-block scales and the final requantization) can see inf or NaN when
  ``d`` overflows fp16, so they use the bit-level ``nearest_int`` like ggml.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrtool.qtypes import Q6_K
from nntrtool.quant.common import (
    NEAREST_INT_BIAS,
    check_finite,
    column_signed_max,
    f16_bits,
    f16_to_f32,
    nearest_int,
    qx_scale_search,
    search_numerators,
)

QK = Q6_K.block_size  # 256 values per superblock
BLOCK_BYTES = Q6_K.block_bytes  # 210
SUB = 16  # values per sub-block (one int8 scale each)
NSUB = QK // SUB  # 16 sub-blocks per superblock
NMAX = 32  # codes are l + 32, l in [-32, 31]

# Byte offsets inside a block, derived from the layout ql[QK/2], qh[QK/4], scales[QK/16], d.
QL_OFF = 0
QH_OFF = QL_OFF + QK // 2
SC_OFF = QH_OFF + QK // 4
D_OFF = SC_OFF + NSUB
assert D_OFF + 2 == BLOCK_BYTES

#: ggml's GROUP_MAX_EPS: runs (and superblocks) below this magnitude quantize to zero.
GROUP_MAX_EPS = np.float32(1e-15)


SEARCH_NUMERATORS = search_numerators(NMAX)

_F32_ZERO = np.float32(0.0)
_LO = np.float32(-NMAX)
_HI = np.float32(NMAX - 1)
_SUPER_NUM = np.float32(-128.0)
_ONE = np.float32(1.0)

# Superblocks per slice of the array code: big enough that numpy's per-call overhead is small,
# small enough that the (16, n) working arrays stay in cache.
_NUMPY_CHUNK = 1024
_DEVICE_CHUNK = 1 << 16


def _check_shape(x: Any, what: str) -> tuple[int, int]:
    from nntrtool.errors import QuantError

    if x.ndim != 2:
        raise QuantError(f"q6_k {what} takes a 2-D array (rows, cols), got {x.ndim}-D")
    rows, cols = (int(s) for s in x.shape)
    return rows, cols


def quantize_xp(x: Any, xp: Any = np) -> Any:
    """Quantize float32 ``(rows, cols)`` to Q6_K bytes ``(rows, cols // 256 * 210)`` with ``xp``."""
    return quantize_imatrix_xp(x, None, xp)


def quantize_imatrix_xp(x: Any, qw: Any, xp: Any = np) -> Any:
    """Q6_K bytes of float32 ``(rows, cols)`` weighted by importance ``qw`` (float32, one per
    column), as ggml's ``quantize_q6_K`` with ``quant_weights``; ``qw=None`` is the plain
    quantizer (weights ``x*x``)."""
    from nntrtool.errors import QuantError

    rows, cols = _check_shape(x, "quantize")
    if not Q6_K.fits(cols):
        raise QuantError(
            f"q6_k needs rows that are a whole number of {QK}-value blocks, got {cols} columns"
        )
    if x.dtype != xp.float32:
        raise QuantError(f"q6_k quantize_xp takes float32, got {x.dtype}")
    check_finite(x, xp)
    nb = rows * (cols // QK)
    blocks = xp.ascontiguousarray(x).reshape(nb, QK)
    out = xp.empty((nb, BLOCK_BYTES), dtype=xp.uint8)
    chunk = _NUMPY_CHUNK if xp is np else _DEVICE_CHUNK
    per_row = cols // QK
    qw_blocks = None if qw is None else xp.asarray(qw, dtype=xp.float32).reshape(per_row, QK)
    with np.errstate(all="ignore"):  # inf/NaN from overflowing weights are part of the format
        for start in range(0, nb, chunk):
            stop = min(nb, start + chunk)
            wb = None
            if qw_blocks is not None:  # each superblock takes its columns' importance
                wb = qw_blocks[xp.arange(start, stop) % per_row]
            out[start:stop] = _quantize_blocks(blocks[start:stop], xp, wb)
    return out.reshape(rows, Q6_K.row_bytes(cols))


def _quantize_blocks(blocks: Any, xp: Any, qw_blocks: Any = None) -> Any:
    """Q6_K bytes ``(n, 210)`` of ``n`` superblocks of 256 float32 values (weighted by
    ``qw_blocks``, ``(n, 256)``, when given)."""
    n = blocks.shape[0]
    m = n * NSUB
    # Position-major: xt[i] holds value i of every sub-block, so each step of a sequential
    # per-sub-block loop is one vector operation across all sub-blocks.
    xt = xp.ascontiguousarray(blocks.reshape(m, SUB).T)

    amax, vmax = column_signed_max(xt, xp)
    tiny = amax < GROUP_MAX_EPS
    vmax = xp.where(tiny, _ONE, vmax)  # keep the search finite there; the result is masked

    w = xt * xt if qw_blocks is None else xp.ascontiguousarray(qw_blocks.reshape(m, SUB).T)
    wx = w * xt
    scale, best_c = qx_scale_search(xt, w, wx, vmax, NMAX, xp)
    scale = xp.where(tiny, _F32_ZERO, scale)

    # Superblock scale: the sub-block scale of largest magnitude, first one wins.
    scale_sb = scale.reshape(n, NSUB)
    max_abs = xp.zeros(n, dtype=xp.float32)
    max_scale = xp.zeros(n, dtype=xp.float32)
    for j in range(NSUB):
        a = xp.abs(scale_sb[:, j])
        take = a > max_abs
        max_abs = xp.where(take, a, max_abs)
        max_scale = xp.where(take, scale_sb[:, j], max_scale)
    zero_block = max_abs < GROUP_MAX_EPS

    iscale = _SUPER_NUM / xp.where(zero_block, _ONE, max_scale)
    d_bits = f16_bits(_ONE / iscale, xp)
    d = f16_to_f32(d_bits, xp)
    sc32 = xp.minimum(xp.int32(127), nearest_int(iscale[:, None] * scale_sb, xp))
    sc = sc32.astype(xp.int8)  # wraps like the C store into int8
    dj = (d[:, None] * sc.astype(xp.float32)).reshape(m)

    # Codes: requantized with the fp16-rounded scale where dj != 0 (NaN included, as in C),
    # else the codes the search chose (0 for runs below GROUP_MAX_EPS).
    requant = dj != _F32_ZERO
    q = nearest_int(xt / xp.where(requant, dj, _ONE), xp)
    q = xp.clip(q, -NMAX, NMAX - 1) + NMAX
    if not bool(requant.all()):
        is_best = _numerators(xp)[best_c] / vmax
        v = is_best * xt + NEAREST_INT_BIAS
        v = v - NEAREST_INT_BIAS
        q_search = xp.minimum(xp.maximum(v, _LO), _HI).astype(xp.int32) + NMAX
        q_search = xp.where(tiny, 0, q_search)
        q = xp.where(requant, q, q_search)

    codes = q.astype(xp.uint8).T.reshape(n, QK)
    out = xp.empty((n, BLOCK_BYTES), dtype=xp.uint8)
    _pack(codes, out, xp)
    out[:, SC_OFF:D_OFF] = sc.view(xp.uint8)
    out[:, D_OFF:] = d_bits.astype("<u2").view(xp.uint8).reshape(n, 2)
    if bool(zero_block.any()):
        out[zero_block] = 0
    return out


def _numerators(xp: Any) -> Any:
    """The search numerators as an ``xp`` array."""
    return SEARCH_NUMERATORS if xp is np else xp.asarray(SEARCH_NUMERATORS)


def _pack(codes: Any, out: Any, xp: Any) -> None:
    """Write ``ql`` and ``qh`` of ``n`` blocks of 256 codes (0..63) into ``out``."""
    n = codes.shape[0]
    c = codes.reshape(n, 2, 4, 32)  # half, quarter, l
    lo = c & xp.uint8(15)
    hi = c >> xp.uint8(4)
    ql = lo[:, :, :2] | (lo[:, :, 2:] << xp.uint8(4))  # (n, half, 2, 32)
    out[:, QL_OFF:QH_OFF] = ql.reshape(n, QK // 2)
    out[:, QH_OFF:SC_OFF] = (
        hi[:, :, 0]
        | (hi[:, :, 1] << xp.uint8(2))
        | (hi[:, :, 2] << xp.uint8(4))
        | (hi[:, :, 3] << xp.uint8(6))
    ).reshape(n, QK // 4)


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 ``(rows, cols)`` of Q6_K bytes ``(rows, cols // 256 * 210)``, as ggml computes it."""
    from nntrtool.errors import QuantError

    rows, nbytes = _check_shape(data, "dequantize")
    if data.dtype != xp.uint8 or nbytes % BLOCK_BYTES:
        raise QuantError(
            f"q6_k data must be uint8 rows of whole {BLOCK_BYTES}-byte blocks, "
            f"got {data.dtype} rows of {nbytes} bytes"
        )
    nb_row = nbytes // BLOCK_BYTES
    b = xp.ascontiguousarray(data).reshape(rows * nb_row, BLOCK_BYTES)
    n = b.shape[0]
    ql = b[:, QL_OFF:QH_OFF].reshape(n, 2, 2, 32)
    qh = b[:, QH_OFF:SC_OFF].reshape(n, 2, 1, 32)
    three = xp.uint8(3)
    lo = xp.concatenate([ql & xp.uint8(15), ql >> xp.uint8(4)], axis=2)  # quarters 0,1,2,3
    shifts = xp.asarray(np.array([0, 2, 4, 6], dtype=np.uint8)).reshape(1, 1, 4, 1)
    hi = (qh >> shifts) & three
    q = (lo | (hi << xp.uint8(4))).astype(xp.float32) - np.float32(NMAX)  # (n, 2, 4, 32)
    sc = b[:, SC_OFF:D_OFF].view(xp.int8).astype(xp.float32)
    d = f16_to_f32(xp.ascontiguousarray(b[:, D_OFF:]).view("<u2").reshape(n), xp)
    with np.errstate(all="ignore"):  # an inf d stored by an overflowing block decodes as in C
        dsc = (d[:, None] * sc).reshape(n, 2, 4, 2, 1)  # sub-block = 8*half + 2*quarter + l//16
        y = dsc * q.reshape(n, 2, 4, 2, 16)
    return y.reshape(rows, nb_row * QK)
