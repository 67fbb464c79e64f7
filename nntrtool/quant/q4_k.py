"""Q4_K: 256 weights in 144 bytes, byte-identical to ggml's ``quantize_row_q4_K_ref`` and,
with an importance matrix, to ``quantize_q4_K`` given ``quant_weights``.

Block layout: ``d`` (fp16), ``dmin`` (fp16), ``scales[12]`` (8 six-bit scales and mins, see
:func:`nntrtool.quant.kquants.pack_scales`), ``qs[128]``: codes 0..15, byte ``32g + l`` of
which holds value ``64g + l`` in its low nibble and value ``64g + 32 + l`` in its high one.
Value = ``d*sc[j]*q - dmin*m[j]`` for sub-block ``j``. The array code (numpy / cupy) is
shared with Q5_K in :mod:`nntrtool.quant.kquants`; the numba kernels in ``_kquants_numba``.
"""

from __future__ import annotations

from typing import Any

from nntrtool.qtypes import Q4_K

from . import kquants as kq

QK = Q4_K.block_size
BLOCK_BYTES = Q4_K.block_bytes
NMAX = 15
QS_OFF = kq.QS_AFTER_SCALES
assert QS_OFF + QK // 2 == BLOCK_BYTES


def _pack(head: Any, codes: Any, xp: Any) -> Any:
    n = codes.shape[0]
    c = codes.reshape(n, 4, 2, 32)
    out = xp.empty((n, BLOCK_BYTES), dtype=xp.uint8)
    out[:, :QS_OFF] = head
    out[:, QS_OFF:] = (c[:, :, 0] | (c[:, :, 1] << xp.uint8(4))).reshape(n, QK // 2)
    return out


def _unpack(b: Any, xp: Any) -> Any:
    qs = b[:, QS_OFF:].reshape(b.shape[0], 4, 1, 32)
    return xp.concatenate([qs & xp.uint8(15), qs >> xp.uint8(4)], axis=2).reshape(-1, QK)


quantize_xp, quantize_imatrix_xp = kq.row_quantizers("q4_k", NMAX, BLOCK_BYTES, _pack)
dequantize_xp = kq.row_dequantizer("q4_k", BLOCK_BYTES, _unpack)
