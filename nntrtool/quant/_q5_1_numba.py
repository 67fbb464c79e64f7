"""numba kernels of Q5_1: the same bytes as ``q5_1.quantize_xp`` / ``quantize_imatrix_xp``, and
ggml's dequantized values. They are shared with Q5_0 and live in ``_q5_numba``.
Imported on first use only."""

from __future__ import annotations

from nntrtool.qtypes import Q5_1

from ._q5_numba import entry_points

quantize, dequantize = entry_points(Q5_1, with_min=True)
