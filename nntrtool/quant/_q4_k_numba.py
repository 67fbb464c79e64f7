"""numba kernels of Q4_K: the same bytes as ``q4_k.quantize_xp`` / ``quantize_imatrix_xp``, and
ggml's dequantized values. They are shared with Q5_K and live in ``_kquants_numba``.
Imported on first use only."""

from __future__ import annotations

from nntrtool.qtypes import Q4_K

from ._kquants_numba import entry_points
from .q4_k import NMAX

quantize, dequantize = entry_points(Q4_K, NMAX)
