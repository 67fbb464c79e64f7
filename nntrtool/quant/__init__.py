"""Quantization kernels: quantize, dequantize and repack GGML block formats.

- ``api``       the public functions below (validation, backend choice, chunking)
- ``registry``  one kernel module per type (``q4_0``, ``q6_k``, ``q8_0``), looked up by name
- ``repack``    Q4_0 <-> ggml's interleaved CPU layouts
- ``backends``  numpy (reference), numba (CPU default), cupy (GPU) and the fallback rules
- ``common``    fp16/bf16 conversions, ``nearest_int``, finiteness checks shared by all types

Importing this package does not import numba; the numba kernels load on first use.
"""

from __future__ import annotations

from .api import dequantize, quantize, repack, unpack
from .backends import BACKEND_CHOICES, BACKENDS, available_backends, resolve_backend
from .registry import KERNELS, get_kernels

__all__ = [
    "quantize",
    "dequantize",
    "repack",
    "unpack",
    "available_backends",
    "resolve_backend",
    "get_kernels",
    "KERNELS",
    "BACKENDS",
    "BACKEND_CHOICES",
]
