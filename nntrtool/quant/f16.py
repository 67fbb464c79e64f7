"""F16 kernels: IEEE half precision, two bytes per value, little-endian.

Rounds to nearest even as numpy's ``astype(float16)`` and ggml's ``GGML_FP32_TO_FP16`` do;
values beyond the half range (|x| > 65504, after rounding) become inf exactly as numpy's cast
makes them. Dequantizing is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import check_finite, f16_bits, f16_to_f32


def quantize_xp(x: Any, xp: Any = np) -> Any:
    """F16 bytes ``(rows, cols * 2)`` of a 2-D float32 array; raises on NaN/inf."""
    check_finite(x, xp)
    rows, cols = x.shape
    bits = f16_bits(xp.ascontiguousarray(x), xp).astype("<u2")
    return bits.view(xp.uint8).reshape(rows, cols * 2)


def dequantize_xp(data: Any, xp: Any = np) -> Any:
    """float32 ``(rows, cols)`` of F16 bytes ``(rows, cols * 2)``."""
    rows = data.shape[0]
    bits = xp.ascontiguousarray(data).view("<u2").reshape(rows, -1)
    return f16_to_f32(bits.astype(xp.uint16), xp)
