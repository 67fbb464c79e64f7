"""Dequantizing GGUF block rows to float32: the ``gguf`` package's dequantizers.

``dequantize_rows`` is the one entry point; the result is exactly ``gguf.quants.dequantize``'s.
"""

from __future__ import annotations

import numpy as np

from nntrtool.errors import SourceError


def dequantize_rows(raw: np.ndarray, type_name: str, cols: int) -> np.ndarray:
    """float32 ``(rows, cols)`` values of uint8 block rows of the ggml type ``type_name``."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[type_name]
    rows = raw.shape[0]
    if rows == 0:
        return np.empty((0, cols), np.float32)
    try:
        out = quants.dequantize(np.ascontiguousarray(raw), qtype)
    except (ValueError, NotImplementedError) as exc:
        raise SourceError(f"cannot dequantize {type_name} blocks: {exc}") from None
    return np.ascontiguousarray(out, dtype=np.float32).reshape(rows, cols)
