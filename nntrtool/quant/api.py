"""The public quantization API: ``quantize``, ``dequantize``, ``repack``, ``unpack``.

These validate their input (one :class:`~nntrtool.errors.QuantError` line for anything
wrong), pick the type's kernels from the registry and run them on the chosen backend. The
array backends (numpy, cupy) work through the tensor in bounded row chunks, decoding fp16 /
bf16 chunk by chunk, so no full-size float32 copy of a half-precision tensor is ever made; the
numba kernels decode each row on the fly.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from nntrtool.errors import NonFiniteError, QuantError
from nntrtool.qtypes import RepackLayout, TensorType

from .backends import array_module, resolve_backend
from .common import SRC_BF16, SRC_F16, SRC_F32, SRC_NAMES, non_finite_error, source_kind, to_f32
from .registry import QuantKernels, get_kernels
from .repack import check_repackable, layout_of, repack_numba, repack_xp, unpack_numba, unpack_xp

#: Elements per chunk of the array backends: bounds their temporaries to a few tens of MB.
_CHUNK_ELEMENTS = {"numpy": 1 << 20, "cupy": 1 << 24}


def _from_torch(x: Any, source_dtype: str | None) -> tuple[Any, str | None]:
    """A CPU torch tensor as numpy (bfloat16, which numpy lacks, as its uint16 bits)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor):
        return x, source_dtype
    t = x.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy(), source_dtype or "bf16"
    return t.numpy(), source_dtype


def _as_source(x: Any, source_dtype: str | None) -> tuple[np.ndarray, int]:
    """A C-contiguous 2-D source array and its ``SRC_*`` kind (float32, or uint16 bits)."""
    x, source_dtype = _from_torch(x, source_dtype)
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise QuantError(f"quantize takes a 2-D (rows, cols) array; got shape {arr.shape}")
    dt = arr.dtype
    kind = source_kind(source_dtype) if source_dtype is not None else None
    if dt == np.float32 and kind in (None, SRC_F32):
        kind = SRC_F32
    elif dt == np.float16 and kind in (None, SRC_F16):
        arr, kind = arr.view(np.uint16), SRC_F16
    elif dt.name == "bfloat16" and kind in (None, SRC_BF16):  # ml_dtypes' bfloat16
        arr, kind = arr.view(np.uint16), SRC_BF16
    elif dt in (np.uint16, np.int16) and kind in (SRC_F16, SRC_BF16):
        arr = arr.view(np.uint16)
    elif dt == np.float64 and kind in (None, SRC_F32):
        arr, kind = arr.astype(np.float32), SRC_F32
    elif dt in (np.uint16, np.int16):
        raise QuantError(
            f"a {dt} array holds raw bits: say what they are with source_dtype='bf16' or 'f16'"
        )
    else:
        said = f" declared as {SRC_NAMES[kind]}" if kind is not None else ""
        raise QuantError(
            f"cannot quantize a {dt} array{said}: pass float32, float16, or uint16 bf16 bits "
            "with source_dtype='bf16'"
        )
    return np.ascontiguousarray(arr), kind


def _check_cols(ttype: TensorType, cols: int) -> None:
    if cols <= 0 or cols % ttype.block_size:
        raise QuantError(
            f"{ttype.name} stores rows in blocks of {ttype.block_size} values; a row of {cols} "
            f"values does not fit (choose another type for this tensor)"
        )


def _to_host(a: Any) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.get()


def _row_chunks(rows: int, cols: int, backend: str) -> range:
    step = max(1, _CHUNK_ELEMENTS[backend] // max(1, cols))
    return range(0, rows, step)


def _quantize_xp(
    k: QuantKernels, src: np.ndarray, kind: int, backend: str, qw: np.ndarray | None = None
) -> np.ndarray:
    xp = array_module(backend)
    qw_xp = None if qw is None else xp.asarray(qw)
    rows, cols = src.shape
    out = np.empty((rows, k.ttype.row_bytes(cols)), dtype=np.uint8)
    starts = _row_chunks(rows, cols, backend)
    for lo in starts:
        hi = min(rows, lo + starts.step)
        chunk = to_f32(xp.asarray(src[lo:hi]), kind, xp)
        try:
            if qw_xp is None:
                out[lo:hi] = _to_host(k.quantize_xp(chunk, xp))
            else:
                out[lo:hi] = _to_host(k.quantize_imatrix_xp(chunk, qw_xp, xp))
        except NonFiniteError as err:
            raise non_finite_error(err.row + lo, err.col, err.value) from None
    return out


def as_importance(imatrix: Any, cols: int) -> np.ndarray:
    """An importance vector as C-contiguous float32 of length ``cols``: finite and not
    negative, else :class:`QuantError`."""
    qw, _ = _from_torch(imatrix, None)
    qw = np.asarray(qw)
    if qw.ndim != 1 or qw.shape[0] != cols:
        raise QuantError(
            f"the importance matrix must hold one value per column ({cols}), got shape "
            f"{tuple(qw.shape)}"
        )
    if qw.dtype.kind not in "fiu":
        raise QuantError(f"the importance matrix must be numbers, got {qw.dtype}")
    qw = np.ascontiguousarray(qw, dtype=np.float32)
    bad = ~np.isfinite(qw) | (qw < 0)
    if bad.any():
        col = int(np.argmax(bad))
        raise QuantError(
            f"the importance matrix holds {qw[col]} at column {col}: importances must be "
            "finite and not negative"
        )
    return qw


def quantize(
    x: Any,
    qtype: str | TensorType,
    *,
    backend: str = "auto",
    source_dtype: str | None = None,
    imatrix: Any = None,
) -> np.ndarray:
    """Quantize a 2-D array (1-D is one row) to ``qtype`` bytes: uint8 (rows, row_bytes).

    ``x`` is float32, float16, or uint16 holding bf16 (or fp16) bits with ``source_dtype``
    ("F32", "F16", "BF16", any case). NaN/inf raise :class:`NonFiniteError` naming row/column.
    ``imatrix`` (one importance per column, e.g. mean squared activations) weights the error
    as ggml's ``ggml_quantize_chunk`` does with one: Q4_0, Q4_K, Q5_0, Q5_1, Q5_K and Q6_K
    search their scales for it; Q8_0 and F16 ignore it, as ggml does.
    """
    k = get_kernels(qtype)
    src, kind = _as_source(x, source_dtype)
    rows, cols = src.shape
    _check_cols(k.ttype, cols)
    qw = None
    if imatrix is not None:
        qw = as_importance(imatrix, cols)
        if not k.uses_imatrix:
            qw = None
    if rows == 0:
        return np.empty((0, k.ttype.row_bytes(cols)), dtype=np.uint8)
    chosen = resolve_backend(backend)
    if chosen == "numba":
        return k.quantize_numba(src, kind, qw)
    return _quantize_xp(k, src, kind, chosen, qw)


def _as_blocks(data: Any, ttype: TensorType, shape: tuple[int, ...]) -> np.ndarray:
    """``data`` as a C-contiguous uint8 (rows, row_bytes) array for a tensor of ``shape``."""
    arr = np.asarray(data)
    if arr.dtype != np.uint8:
        raise QuantError(f"{ttype.name} data must be uint8 bytes, got {arr.dtype}")
    if not shape:
        raise QuantError(f"{ttype.name}: a tensor shape needs at least one dimension")
    cols = shape[-1]
    _check_cols(ttype, cols)
    rows = math.prod(shape[:-1])
    expected = rows * ttype.row_bytes(cols)
    if arr.size != expected:
        raise QuantError(
            f"{ttype.name} data of {arr.size} bytes does not match shape {shape} "
            f"({expected} bytes expected)"
        )
    return np.ascontiguousarray(arr.reshape(rows, ttype.row_bytes(cols)))


def dequantize(
    data: Any, qtype: str | TensorType, shape: Any, *, backend: str = "auto"
) -> np.ndarray:
    """float32 values of ``qtype`` bytes, as an array of ``shape`` (blocks along the last
    dimension), bit-identical to ggml's ``dequantize_row_*``."""
    k = get_kernels(qtype)
    shape = tuple(int(s) for s in (shape if np.iterable(shape) else (shape,)))
    blocks = _as_blocks(data, k.ttype, shape)
    rows, cols = blocks.shape[0], shape[-1]
    if rows == 0:
        return np.empty(shape, dtype=np.float32)
    chosen = resolve_backend(backend)
    if chosen == "numba":
        return k.dequantize_numba(blocks).reshape(shape)
    xp = array_module(chosen)
    out = np.empty((rows, cols), dtype=np.float32)
    starts = _row_chunks(rows, cols, chosen)
    for lo in starts:
        hi = min(rows, lo + starts.step)
        out[lo:hi] = _to_host(k.dequantize_xp(xp.asarray(blocks[lo:hi]), xp))
    return out.reshape(shape)


def _repack_input(data: Any, layout: str | RepackLayout) -> tuple[np.ndarray, RepackLayout]:
    lay = layout_of(layout)
    arr = np.asarray(data)
    if arr.dtype != np.uint8:
        raise QuantError(f"{lay.name}: Q4_0 data must be uint8 bytes, got {arr.dtype}")
    check_repackable(arr.shape, lay)
    return np.ascontiguousarray(arr), lay


def _cpu_backend(backend: str) -> str:
    # Repacking is a memory-bound byte shuffle: a GPU round trip would only add transfers.
    chosen = resolve_backend(backend)
    return "numba" if chosen == "cupy" else chosen


def repack(data: Any, layout: str | RepackLayout, *, backend: str = "auto") -> np.ndarray:
    """Interleave plain Q4_0 bytes (rows, row_bytes) into a CPU layout (``q4_0_4``,
    ``q4_0_8``, ``q4_0_4x4``); same shape. Rows not a multiple of the group: QuantError."""
    arr, lay = _repack_input(data, layout)
    if _cpu_backend(backend) == "numba":
        return repack_numba(arr, lay)
    return repack_xp(arr, lay, np)


def unpack(data: Any, layout: str | RepackLayout, *, backend: str = "auto") -> np.ndarray:
    """Plain Q4_0 bytes of data interleaved in ``layout`` (the inverse of :func:`repack`)."""
    arr, lay = _repack_input(data, layout)
    if _cpu_backend(backend) == "numba":
        return unpack_numba(arr, lay)
    return unpack_xp(arr, lay, np)
