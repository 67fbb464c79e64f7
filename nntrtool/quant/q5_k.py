"""Q5_K: 256 weights in 176 bytes, byte-identical to ggml's ``quantize_row_q5_K_ref`` and,
with an importance matrix, to ``quantize_q5_K`` given ``quant_weights``.

Block layout: ``d`` (fp16), ``dmin`` (fp16), ``scales[12]`` (as Q4_K), ``qh[32]``, ``qs[128]``:
codes 0..31; the low 4 bits are laid out as Q4_K's, and bit ``2g`` (``2g + 1``) of ``qh[l]``
is the fifth bit of value ``64g + l`` (``64g + 32 + l``). The array code is shared with Q4_K
in :mod:`nntrtool.quant.kquants`; the numba kernels in ``_kquants_numba``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrtool.qtypes import Q5_K

from . import kquants as kq

QK = Q5_K.block_size
BLOCK_BYTES = Q5_K.block_bytes
NMAX = 31
QH_OFF = kq.QS_AFTER_SCALES
QS_OFF = QH_OFF + QK // 8
assert QS_OFF + QK // 2 == BLOCK_BYTES


def _pack(head: Any, codes: Any, xp: Any) -> Any:
    n = codes.shape[0]
    c = codes.reshape(n, 4, 2, 32)
    lo = c & xp.uint8(15)
    hi = (c >> xp.uint8(4)).astype(xp.uint8)  # (n, g, half, 32), 0 or 1
    qh = xp.zeros((n, 32), dtype=xp.uint8)
    for g in range(4):
        qh |= hi[:, g, 0] << xp.uint8(2 * g)
        qh |= hi[:, g, 1] << xp.uint8(2 * g + 1)
    out = xp.empty((n, BLOCK_BYTES), dtype=xp.uint8)
    out[:, :QH_OFF] = head
    out[:, QH_OFF:QS_OFF] = qh
    out[:, QS_OFF:] = (lo[:, :, 0] | (lo[:, :, 1] << xp.uint8(4))).reshape(n, QK // 2)
    return out


def _unpack(b: Any, xp: Any) -> Any:
    n = b.shape[0]
    qs = b[:, QS_OFF:].reshape(n, 4, 1, 32)
    qh = b[:, QH_OFF:QS_OFF].reshape(n, 1, 1, 32)
    shifts = xp.asarray(np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1))
    hi = ((qh >> shifts) & xp.uint8(1)) << xp.uint8(4)
    q = xp.concatenate([qs & xp.uint8(15), qs >> xp.uint8(4)], axis=2) | hi
    return q.reshape(n, QK)


quantize_xp, quantize_imatrix_xp = kq.row_quantizers("q5_k", NMAX, BLOCK_BYTES, _pack)
dequantize_xp = kq.row_dequantizer("q5_k", BLOCK_BYTES, _unpack)
