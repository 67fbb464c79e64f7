"""F16: IEEE half precision, one value in 2 bytes (little-endian), not a block type.

Quantizing rounds float32 to nearest even, as numpy's ``astype(float16)`` and ggml's
``ggml_fp32_to_fp16_row`` do (values beyond the half range become +-inf, as there);
dequantizing is exact. fp16 sources are copied bit for bit, bf16 ones rounded once from their
exact float32 value. The same code serves every backend: a conversion this simple runs at
memory speed in numpy, so the numba entry points use it too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import SRC_F16, check_finite, f16_bits, f16_to_f32, to_f32


def quantize_xp(x: Any, xp: Any = np) -> Any:
    """fp16 bytes ``(rows, 2 * cols)`` of float32 ``(rows, cols)``; raises on NaN/inf."""
    check_finite(x, xp)
    rows = x.shape[0]
    return xp.ascontiguousarray(f16_bits(x, xp)).view(xp.uint8).reshape(rows, -1)


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 ``(rows, cols)`` of fp16 bytes ``(rows, 2 * cols)`` (exact)."""
    rows = data.shape[0]
    return f16_to_f32(xp.ascontiguousarray(data).view("<u2"), xp).reshape(rows, -1)


def quantize_numba(x: Any, src_kind: int) -> np.ndarray:
    """fp16 bytes of a C-contiguous 2-D float32 array (or uint16 fp16/bf16 bits)."""
    if src_kind == SRC_F16:
        bits = np.ascontiguousarray(x).view(np.uint16)
        check_finite(f16_to_f32(bits), np)
        return bits.view(np.uint8).reshape(bits.shape[0], -1).copy()
    return quantize_xp(np.ascontiguousarray(to_f32(x, src_kind, np)), np)


def dequantize_numba(data: Any) -> np.ndarray:
    """float32 ``(rows, cols)`` of fp16 bytes (exact)."""
    return dequantize_xp(np.ascontiguousarray(data), np)
