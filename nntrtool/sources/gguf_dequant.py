"""Dequantizing GGUF block rows to float32, bit-identical to ``gguf.quants.dequantize``.

The common types run on numba kernels: every type nntrtool stores on its own dequantizers
(ggml's values, which are gguf's), Q4_1 on :mod:`nntrtool.quant._gguf_numba`. The rest (Q2_K, Q3_K, the IQ types ...) go through the
``gguf`` package's numpy code.
"""

from __future__ import annotations

import numpy as np

from nntrtool.errors import SourceError
from nntrtool.qtypes import TYPES

#: ggml types that nntrtool's own kernels dequantize (ggml's reference values).
_OWN_TYPES = {
    t.name.upper(): t.name for t in TYPES if t.kernels is not None and t.ggml_type is not None
}
_NUMBA_TYPES = ("Q4_1",)


def dequantize_rows(raw: np.ndarray, type_name: str, cols: int, *, fast: bool = True) -> np.ndarray:
    """float32 ``(rows, cols)`` values of uint8 block rows of the ggml type ``type_name``.

    ``fast=False`` always uses the ``gguf`` package (the reference the kernels are tested
    against).
    """
    rows = raw.shape[0]
    if rows == 0:
        return np.empty((0, cols), np.float32)
    raw = np.ascontiguousarray(raw)
    if fast and type_name in _OWN_TYPES:
        from nntrtool.quant import dequantize

        return dequantize(raw, _OWN_TYPES[type_name], (rows, cols), backend="numba")
    if fast and type_name in _NUMBA_TYPES:
        from nntrtool.quant._gguf_numba import dequantize

        return dequantize(raw, type_name)
    from gguf import GGMLQuantizationType, quants

    try:
        out = quants.dequantize(raw, GGMLQuantizationType[type_name])
    except (ValueError, NotImplementedError) as exc:
        raise SourceError(f"cannot dequantize {type_name} blocks: {exc}") from None
    return np.ascontiguousarray(out, dtype=np.float32).reshape(rows, cols)
