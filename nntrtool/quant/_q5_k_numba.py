"""numba kernels of Q5_K: the same bytes as ``q5_k.quantize_xp`` / ``quantize_imatrix_xp``, and
ggml's dequantized values. They are shared with Q4_K and live in ``_kquants_numba``.
Imported on first use only."""

from __future__ import annotations

from nntrtool.qtypes import Q5_K

from ._kquants_numba import entry_points
from .q5_k import NMAX

quantize, dequantize = entry_points(Q5_K, NMAX)
