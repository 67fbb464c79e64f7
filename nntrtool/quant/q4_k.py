"""Q4_K: 256 weights in 144 bytes, byte-identical to ggml's ``quantize_row_q4_K_ref`` and,
given an importance matrix, to ggml's ``quantize_q4_K`` with ``quant_weights``.

Block: ``d`` and ``dmin`` (fp16), 12 bytes of 6-bit sub-block scales and mins (see
:mod:`kquant_common`), then ``qs[128]``: byte ``32*g + l`` holds value ``l`` of sub-block
``2g`` in its low nibble and value ``l`` of sub-block ``2g+1`` in its high nibble. A value is
``(d*scale) * q - dmin*min``.

Quantizing, per superblock of 256:

* each run of 32 gets weights and a scale/min search (``make_qkx2_quants``, 21 candidate
  inverse scales, for the plain quantizer with weights ``sqrt(mean(x*x)) + |x|``; with an
  importance matrix ``make_qkx3_quants``, 37 candidates, weights ``qw * sqrt(sigma2 + x*x)``
  with ``sigma2 = 2*mean(x*x)`` over the superblock);
* the eight scales and eight mins become 6-bit integers against the superblock's ``d`` and
  ``dmin`` (plain: ``63/max``; importance: ``make_qp_quants`` weighted by each run's weight sum);
* every run is requantized with the fp16-rounded ``d*scale`` and ``dmin*min`` (a division, as
  in C), except runs whose ``d*scale`` is zero, which keep the codes of the search.

The array code here runs with ``xp`` = numpy or cupy; the numba kernels live in
``_q4_k_numba``. Both are float32 throughout, in C's order of operations, with the bit-level
``nearest_int``.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from nntrtool.errors import QuantError
from nntrtool.qtypes import Q4_K

from .common import check_finite, f16_bits, f16_to_f32, numba_entry_points
from .kquant_common import (
    HEADER_BYTES,
    NSUB,
    QK_K,
    SCALES_OFF,
    SUB,
    block_scales,
    candidate_numerators,
    nearest_code,
    nearest_int_xp,
    pack_scales,
    qkx_search,
    qp_search,
    unpack_scales,
)

QK = QK_K
BLOCK_BYTES = Q4_K.block_bytes
QS_OFF = HEADER_BYTES
assert QS_OFF + QK // 2 == BLOCK_BYTES
NMAX = 15

#: Candidate numerators of the plain search (make_qkx2_quants: rmin -1, rdelta 0.1, 20 steps).
PLAIN_NUMS = candidate_numerators(NMAX, -1.0, 0.1, 20)
#: ... and of the importance-weighted one (make_qkx3_quants: rmin -0.9, rdelta 0.05, 36 steps).
IMATRIX_NUMS = candidate_numerators(NMAX, -0.9, 0.05, 36)

_F0 = np.float32(0.0)
_F63 = np.float32(63.0)
_NUMPY_CHUNK = 512  # superblocks per slice of the array code
_DEVICE_CHUNK = 1 << 15


def _check(x: Any, xp: Any) -> tuple[int, int]:
    if x.ndim != 2:
        raise QuantError(f"q4_k quantize takes a 2-D array (rows, cols), got {x.ndim}-D")
    rows, cols = (int(s) for s in x.shape)
    if not Q4_K.fits(cols):
        raise QuantError(
            f"q4_k needs rows that are a whole number of {QK}-value blocks, got {cols} columns"
        )
    if x.dtype != xp.float32:
        raise QuantError(f"q4_k quantize_xp takes float32, got {x.dtype}")
    check_finite(x, xp)
    return rows, cols


def quantize_xp(x: Any, xp: Any = np) -> Any:
    """Q4_K bytes ``(rows, cols // 256 * 144)`` of float32 ``(rows, cols)``, as ggml's
    ``quantize_row_q4_K_ref``."""
    return quantize_imatrix_xp(x, None, xp)


def quantize_imatrix_xp(x: Any, qw: Any, xp: Any = np) -> Any:
    """Q4_K bytes weighted by importance ``qw`` (float32, one per column), as ggml's
    ``quantize_q4_K`` with ``quant_weights``; ``qw=None`` is the plain quantizer."""
    rows, cols = _check(x, xp)
    per_row = cols // QK
    nb = rows * per_row
    blocks = xp.ascontiguousarray(x).reshape(nb, QK)
    out = xp.empty((nb, BLOCK_BYTES), dtype=xp.uint8)
    qwb = None if qw is None else xp.asarray(qw, dtype=xp.float32).reshape(per_row, QK)
    chunk = _NUMPY_CHUNK if xp is np else _DEVICE_CHUNK
    with np.errstate(all="ignore"):  # overflowing blocks give inf/NaN, as they do in C
        for start in range(0, nb, chunk):
            stop = min(nb, start + chunk)
            wb = None if qwb is None else qwb[xp.arange(start, stop) % per_row]
            out[start:stop] = _quantize_blocks(blocks[start:stop], wb, xp)
    return out.reshape(rows, Q4_K.row_bytes(cols))


def _quantize_blocks(blocks: Any, qwb: Any, xp: Any) -> Any:
    n = blocks.shape[0]
    m = n * NSUB
    xt = xp.ascontiguousarray(blocks.reshape(m, SUB).T)  # (32 positions, m runs)
    if qwb is None:
        sum_x2 = xp.zeros(m, dtype=xp.float32)
        for i in range(SUB):
            sum_x2 = sum_x2 + xt[i] * xt[i]
        av_x = xp.sqrt(sum_x2 / np.float32(SUB))
        w = av_x[None, :] + xp.abs(xt)
        scales, mins, codes = qkx_search(xt, w, NMAX, PLAIN_NUMS, xp)
        sc2 = scales.reshape(n, NSUB)
        mn2 = mins.reshape(n, NSUB)
        max_scale = xp.zeros(n, dtype=xp.float32)
        max_min = xp.zeros(n, dtype=xp.float32)
        for j in range(NSUB):
            max_scale = xp.where(sc2[:, j] > max_scale, sc2[:, j], max_scale)
            max_min = xp.where(mn2[:, j] > max_min, mn2[:, j], max_min)
        inv_scale = xp.where(max_scale > _F0, _F63 / max_scale, _F0)
        inv_min = xp.where(max_min > _F0, _F63 / max_min, _F0)
        ls = xp.minimum(nearest_int_xp(inv_scale[:, None] * sc2, xp) & 0xFF, 63)
        lm = xp.minimum(nearest_int_xp(inv_min[:, None] * mn2, xp) & 0xFF, 63)
        d_bits = f16_bits(max_scale / _F63, xp)
        dmin_bits = f16_bits(max_min / _F63, xp)
    else:
        # sigma2 = 2 * sum(x*x) / 256, summed over the superblock in index order.
        sq = xp.ascontiguousarray((blocks * blocks).T)
        sum_x2 = xp.zeros(n, dtype=xp.float32)
        for i in range(QK):
            sum_x2 = sum_x2 + sq[i]
        sigma2 = (np.float32(2.0) * sum_x2) / np.float32(QK)
        wt = xp.ascontiguousarray(qwb.reshape(m, SUB).T)
        s2 = xp.repeat(sigma2, NSUB)[None, :]
        w = wt * xp.sqrt(s2 + xt * xt)
        sw = xp.zeros(m, dtype=xp.float32)
        for i in range(SUB):
            sw = sw + w[i]
        scales, mins, codes = qkx_search(xt, w, NMAX, IMATRIX_NUMS, xp)
        swt = xp.ascontiguousarray(sw.reshape(n, NSUB).T)
        d_block, ls = qp_search(xp.ascontiguousarray(scales.reshape(n, NSUB).T), swt, 63, xp)
        m_block, lm = qp_search(xp.ascontiguousarray(mins.reshape(n, NSUB).T), swt, 63, xp)
        ls, lm = ls.T, lm.T
        d_bits = f16_bits(d_block, xp)
        dmin_bits = f16_bits(m_block, xp)

    out = xp.empty((n, BLOCK_BYTES), dtype=xp.uint8)
    out[:, 0:2] = d_bits.astype("<u2").view(xp.uint8).reshape(n, 2)
    out[:, 2:4] = dmin_bits.astype("<u2").view(xp.uint8).reshape(n, 2)
    sbytes = pack_scales(ls, lm, xp)
    out[:, SCALES_OFF:HEADER_BYTES] = sbytes
    # Requantize with what a reader will see: the scales as packed, d and dmin as fp16.
    sc, mn = unpack_scales(sbytes, xp)
    dd = (f16_to_f32(d_bits, xp)[:, None] * sc.astype(xp.float32)).reshape(m)
    dm = (f16_to_f32(dmin_bits, xp)[:, None] * mn.astype(xp.float32)).reshape(m)
    requant = dd != _F0  # `if (!d) continue`: NaN requantizes
    q = nearest_code((xt + dm) / xp.where(requant, dd, np.float32(1.0)), NMAX, xp)
    codes = xp.where(requant[None, :], q, codes)
    c = codes.astype(xp.uint8).T.reshape(n, 4, 2, SUB)  # (block, pair g, half, l)
    out[:, QS_OFF:] = (c[:, :, 0] | (c[:, :, 1] << xp.uint8(4))).reshape(n, QK // 2)
    return out


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 ``(rows, cols)`` of Q4_K bytes ``(rows, cols // 256 * 144)``, as ggml computes
    it: ``(d*scale) * q - dmin*min``."""
    if data.ndim != 2 or data.dtype != xp.uint8 or data.shape[1] % BLOCK_BYTES:
        raise QuantError(
            f"q4_k data must be 2-D uint8 rows of whole {BLOCK_BYTES}-byte blocks, "
            f"got {data.dtype} of shape {tuple(data.shape)}"
        )
    rows, nbytes = data.shape
    b = xp.ascontiguousarray(data).reshape(-1, BLOCK_BYTES)
    n = b.shape[0]
    ds, dm = block_scales(b, xp)
    qs = b[:, QS_OFF:].reshape(n, 4, 1, SUB)
    q = xp.concatenate([qs & xp.uint8(15), qs >> xp.uint8(4)], axis=2).astype(xp.float32)
    with np.errstate(all="ignore"):
        y = ds.reshape(n, 4, 2, 1) * q - dm.reshape(n, 4, 2, 1)
    return y.reshape(rows, nbytes // BLOCK_BYTES * QK)


quantize_numba, dequantize_numba = numba_entry_points("Q4_K", "_q4_k_numba")


def quantize_imatrix_numba(x: Any, src_kind: int, qw: Any) -> np.ndarray:
    """Importance-weighted Q4_K bytes with the numba kernel (imported on first use)."""
    return importlib.import_module("nntrtool.quant._q4_k_numba").quantize(x, src_kind, qw)
