"""ggml's own C code as the oracle: reference quantizers, dequantizers and the CPU repack.

A thin ctypes layer over the libraries that ``ggml-python==0.0.45`` builds from source, plus the
``gguf`` package's numpy quantizers. CI installs both, so nothing here skips: a missing oracle
makes the tests that use it fail loudly.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

# Repack templates are exported under their C++ names: repack<block_q4_0, INTERLEAVE, ROWS>.
_REPACK_SYMBOLS = {
    "q4_0_4x4": "_ZN4ggml3cpu6repack6repackI10block_q4_0Ll4ELl4EEEiP11ggml_tensorPKvm",
    "q4_0_4": "_ZN4ggml3cpu6repack6repackI10block_q4_0Ll8ELl4EEEiP11ggml_tensorPKvm",
    "q4_0_8": "_ZN4ggml3cpu6repack6repackI10block_q4_0Ll8ELl8EEEiP11ggml_tensorPKvm",
}

_BLOCK = {
    "q4_0": (32, 18),
    "q8_0": (32, 34),
    "q6_k": (256, 210),
    "q4_k": (256, 144),
    "q5_k": (256, 176),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "f16": (1, 2),
}


@functools.cache
def _ggml() -> Any:
    import ggml.ggml as g  # noqa: PLC0415 - only the oracle needs it

    return g


def available() -> bool:
    """Whether ggml-python's libraries load here."""
    try:
        _ggml()
    except Exception:
        return False
    return True


def _type_id(qtype: str) -> int:
    g = _ggml()
    return int(getattr(g, f"GGML_TYPE_{qtype.upper()}"))


def ggml_quantize(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """``ggml_quantize_chunk`` on a 2-D float32: the reference quantizer, or with ``imatrix``
    (float32, one importance per column) ggml's importance-weighted one."""
    g = _ggml()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    rows, cols = x.shape
    qk, nbytes = _BLOCK[qtype]
    out = np.zeros((rows, cols // qk * nbytes), dtype=np.uint8)
    qw = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        assert imatrix.shape == (cols,), imatrix.shape
        qw = imatrix.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    written = g.ggml_quantize_chunk(
        _type_id(qtype),
        x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        out.ctypes.data_as(ctypes.c_void_p),
        0,
        rows,
        cols,
        qw,
    )
    assert written == out.nbytes, (written, out.nbytes)
    return out


@functools.cache
def _dequantizer(qtype: str) -> Any:
    name = "dequantize_row_" + (qtype[:-1] + "K" if qtype.endswith("_k") else qtype)
    if qtype == "f16":
        name = "ggml_fp16_to_fp32_row"
    fn = getattr(_ggml().lib, name)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    return fn


def ggml_dequantize(data: np.ndarray, qtype: str, cols: int) -> np.ndarray:
    """ggml's ``dequantize_row_*`` over a (rows, row_bytes) uint8 array: float32 (rows, cols)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rows = data.size // (cols // _BLOCK[qtype][0] * _BLOCK[qtype][1])
    out = np.empty((rows, cols), dtype=np.float32)
    _dequantizer(qtype)(data.ctypes.data, out.ctypes.data, rows * cols)
    return out


@functools.cache
def _repacker(layout: str) -> Any:
    fn = getattr(_ggml().lib, _REPACK_SYMBOLS[layout])
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def ggml_repack(data: np.ndarray, layout: str) -> np.ndarray:
    """ggml-cpu's Q4_0 repack (``layout`` in q4_0_4, q4_0_8, q4_0_4x4) of a (rows, row_bytes)
    plain Q4_0 array; same shape. Raises ``ValueError`` when ggml refuses the shape."""
    g = _ggml()
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rows, row_bytes = data.shape
    cols = row_bytes // 18 * 32
    out = np.zeros_like(data)
    params = g.ggml_init_params(
        mem_size=4 * g.ggml_tensor_overhead(), mem_buffer=None, no_alloc=True
    )
    ctx = g.ggml_init(params)
    try:
        tensor = g.ggml_new_tensor_2d(ctx, g.GGML_TYPE_Q4_0, cols, rows)
        tensor.contents.data = out.ctypes.data
        rc = _repacker(layout)(ctypes.cast(tensor, ctypes.c_void_p), data.ctypes.data, data.nbytes)
    finally:
        g.ggml_free(ctx)
    if rc != 0:
        raise ValueError(f"ggml refused to repack {rows}x{cols} into {layout} (rc={rc})")
    return out


def gguf_quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """The ``gguf`` package's numpy Q4_0 quantizer (same bytes as ggml but for the sign of d
    in all-zero blocks)."""
    from gguf import GGMLQuantizationType, quants  # noqa: PLC0415

    x = np.asarray(x, dtype=np.float32)
    return np.asarray(quants.quantize(x, GGMLQuantizationType.Q4_0))


def gguf_dequantize(data: np.ndarray, qtype: str) -> np.ndarray:
    """The ``gguf`` package's numpy dequantizer (``qtype`` in q4_0, q6_k, q8_0)."""
    from gguf import GGMLQuantizationType, quants  # noqa: PLC0415

    t = {
        "q4_0": GGMLQuantizationType.Q4_0,
        "q6_k": GGMLQuantizationType.Q6_K,
        "q8_0": GGMLQuantizationType.Q8_0,
    }[qtype]
    return np.asarray(quants.dequantize(np.asarray(data, dtype=np.uint8), t), dtype=np.float32)
