"""ggml's C reference kernels through ctypes, for side-by-side timing in ``nntrtool bench``.

Only what the benchmark needs: quantize (``ggml_quantize_chunk``, one thread, with or without
an importance matrix), dequantize (``dequantize_row_*``) and the Q4_0 CPU repacks. The libraries come from the
optional ``ggml-python`` package; :func:`load` raises :class:`GgmlUnavailable` when it is absent,
so callers can skip the comparison cleanly. Nothing here is imported unless a benchmark asks.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.qtypes import Q4_0, get_layout, get_type


def _ggml_type_attr(qtype: str) -> str:
    """ggml-python's constant for a type (``GGML_TYPE_Q4_K``); its value is read from there."""
    return f"GGML_TYPE_{qtype.upper()}"


def _dequant_symbol(qtype: str) -> str:
    """ggml's row dequantizer of a type: ``dequantize_row_q4_0``, ``dequantize_row_q6_K``
    (``ggml_fp16_to_fp32_row`` for F16)."""
    name = qtype.lower()
    if name == "f16":
        return "ggml_fp16_to_fp32_row"
    return f"dequantize_row_{name[:-1] + 'K' if name.endswith('_k') else name}"


# ggml::cpu::repack::repack<block_q4_0, INTERLEAVE, NCOLS>, exported under its C++ name.
_REPACK_SYMBOL = "_ZN4ggml3cpu6repack6repackI10block_q4_0Ll{b}ELl{r}EEEiP11ggml_tensorPKvm"


class GgmlUnavailable(RuntimeError):
    """ggml-python is not installed or its libraries cannot be loaded."""


class GgmlRef:
    """Handles on ggml's C kernels; build it with :func:`load`."""

    def __init__(self, module: Any, lib_dir: Path, version: str):
        self._g = module
        self.version = version
        mode = getattr(ctypes, "RTLD_GLOBAL", 0)
        self._base = ctypes.CDLL(str(lib_dir / "libggml-base.so"), mode=mode)
        self._cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"), mode=mode)
        self._quantize = self._base.ggml_quantize_chunk
        self._quantize.restype = ctypes.c_size_t
        self._quantize.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
        ]
        self._ctx = None

    def type_id(self, qtype: str) -> int:
        return int(getattr(self._g, _ggml_type_attr(qtype)))

    def quantize(self, x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
        """Quantize a 2-D float32 array on one thread with ggml's reference quantizer, or with
        ``imatrix`` (float32, one importance per column) its importance-weighted one."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, cols = x.shape
        ttype = get_type(qtype)
        out = np.empty((rows, ttype.row_bytes(cols)), dtype=np.uint8)
        qw = None
        if imatrix is not None:
            imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
            if imatrix.shape != (cols,):
                raise ValueError(f"imatrix of shape {imatrix.shape} for {cols} columns")
            qw = imatrix.ctypes.data
        written = self._quantize(
            self.type_id(qtype), x.ctypes.data, out.ctypes.data, 0, rows, cols, qw
        )
        if written != out.nbytes:
            raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
        return out

    def dequantize(self, data: np.ndarray, qtype: str, cols: int) -> np.ndarray:
        """Dequantize ``(rows, row_bytes)`` blocks with ggml's ``dequantize_row_*``."""
        data = np.ascontiguousarray(data, dtype=np.uint8)
        rows = data.shape[0]
        out = np.empty((rows, cols), dtype=np.float32)
        fn = getattr(self._base, _dequant_symbol(qtype))
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn(data.ctypes.data, out.ctypes.data, rows * cols)
        return out

    def repack(self, data: np.ndarray, layout: str) -> np.ndarray:
        """Repack plain Q4_0 ``(rows, row_bytes)`` into a CPU layout with ggml's repack."""
        lay = get_layout(layout)
        data = np.ascontiguousarray(data, dtype=np.uint8)
        rows, row_bytes = data.shape
        cols = row_bytes // Q4_0.block_bytes * Q4_0.block_size
        fn = getattr(self._cpu, _REPACK_SYMBOL.format(b=lay.interleave, r=lay.rows))
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        out = np.empty_like(data)
        tensor = self._tensor(rows, cols)
        tensor.contents.data = ctypes.c_void_p(out.ctypes.data)
        rc = fn(ctypes.cast(tensor, ctypes.c_void_p), data.ctypes.data, data.nbytes)
        if rc != 0:
            raise RuntimeError(f"ggml repack to {layout} failed with status {rc}")
        return out

    def _tensor(self, rows: int, cols: int) -> Any:
        """A Q4_0 tensor header of this shape (no data), made once per shape and reused."""
        g = self._g
        if self._ctx is None:
            params = g.ggml_init_params(mem_size=1 << 20, mem_buffer=None, no_alloc=True)
            self._ctx = g.ggml_init(params)
            self._tensors: dict[tuple[int, int], Any] = {}
        key = (rows, cols)
        if key not in self._tensors:
            self._tensors[key] = g.ggml_new_tensor_2d(self._ctx, self.type_id("q4_0"), cols, rows)
        return self._tensors[key]

    def close(self) -> None:
        if self._ctx is not None:
            self._g.ggml_free(self._ctx)
            self._ctx = None


def load() -> GgmlRef:
    """Load ggml's kernels from ggml-python; :class:`GgmlUnavailable` when that is not possible."""
    try:
        import importlib.metadata

        import ggml.ggml as module

        version = importlib.metadata.version("ggml-python")
    except Exception as err:  # any import failure means the comparison is skipped
        raise GgmlUnavailable(f"ggml-python is not installed ({err})") from err
    lib_dir = Path(module.__file__).resolve().parent / "lib"
    try:
        return GgmlRef(module, lib_dir, version)
    except (OSError, AttributeError) as err:
        raise GgmlUnavailable(f"ggml-python's libraries cannot be loaded ({err})") from err
