"""Q5_1: 32 weights in an fp16 scale ``d``, an fp16 min ``m``, 4 bytes of fifth bits and 16
bytes of low nibbles; a value is ``d * q + m``. Dequantize only (bit-identical to ggml's
``dequantize_row_q5_1``): nntrtool stores Q5_1 blocks it reads, it does not write new ones."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from nntrtool.qtypes import Q5_1

from .common import f16_to_f32

QK = Q5_1.block_size
BLOCK_BYTES = Q5_1.block_bytes
QH_OFF = 4
QS_OFF = 8
assert QS_OFF + QK // 2 == BLOCK_BYTES


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 (rows, cols) of Q5_1 bytes (rows, row_bytes)."""
    rows = data.shape[0]
    b = data.reshape(rows, data.shape[1] // BLOCK_BYTES, BLOCK_BYTES)
    d = f16_to_f32(xp.ascontiguousarray(b[..., 0:2]).view(xp.uint16), xp)
    m = f16_to_f32(xp.ascontiguousarray(b[..., 2:4]).view(xp.uint16), xp)
    qh = xp.ascontiguousarray(b[..., QH_OFF:QS_OFF]).view("<u4")
    hi = ((qh >> xp.arange(QK, dtype=xp.uint32)) & xp.uint32(1)).astype(xp.uint8) << xp.uint8(4)
    qs = b[..., QS_OFF:]
    q = xp.concatenate([qs & xp.uint8(15), qs >> xp.uint8(4)], axis=2) | hi
    with np.errstate(invalid="ignore"):
        values = d * q.astype(xp.float32) + m
    return values.reshape(rows, data.shape[1] // BLOCK_BYTES * QK)


def dequantize_numba(data: Any) -> np.ndarray:
    """float32 (rows, cols) of C-contiguous Q5_1 bytes, with the numba kernel."""
    gguf = importlib.import_module("nntrtool.quant._gguf_numba")
    return gguf.dequantize(np.ascontiguousarray(data), "Q5_1")
