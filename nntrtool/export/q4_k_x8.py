"""Q4_K blocks of a weight matrix to and from the 8-row interleaved layout nntrainer's CPU
kernels read (ggml's ``block_q4_Kx8``), in numpy.

A plain ``block_q4_K`` (144 bytes, 256 values) is ``d`` (fp16), ``dmin`` (fp16), 12 bytes
holding eight 6-bit scales and eight 6-bit mins, then 128 bytes of 4-bit codes. Eight of them,
block ``b`` of eight consecutive rows of ``W[out, in]``, make one ``block_q4_Kx8`` of 1152 bytes:

- ``d`` of the eight rows (16 bytes), then their ``dmin`` (16 bytes);
- 96 bytes of scales: for each sub-block ``k`` (0..7), 12 bytes holding the eight rows' scale
  and min of sub-block ``k``, packed the same way a plain block packs its eight sub-blocks;
- 1024 bytes of codes: 8-byte chunks taken in turn from row 0, 1, ..., 7, chunk ``c`` of each
  row before chunk ``c + 1`` of any.

The interleaved blocks of a matrix run row group by row group, and within a group block by
block. Both directions are lossless: the 12-byte packing is a bijection on 6-bit values.
"""

from __future__ import annotations

import numpy as np

#: Bytes of one plain Q4_K block and of one 8-row interleaved block.
Q4_K_BLOCK_BYTES = 144
Q4_K_BLOCK_VALUES = 256
X8_ROWS = 8
X8_BLOCK_BYTES = X8_ROWS * Q4_K_BLOCK_BYTES
#: The value nntrainer writes before Q4_K weights (its ``QScheme::Q4_Kx8``); the loader skips it.
QSCHEME_Q4_KX8 = 3


def unpack_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and mins held in the last axis (12 bytes) of ``packed``."""
    q = packed.astype(np.uint8, copy=False)
    lo, mid, hi = q[..., 0:4], q[..., 4:8], q[..., 8:12]
    sc = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=-1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc, mn


def pack_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins (last axis) into the 12-byte packing of a Q4_K block."""
    sc = sc.astype(np.uint8, copy=False)
    mn = mn.astype(np.uint8, copy=False)
    out = np.empty(sc.shape[:-1] + (12,), dtype=np.uint8)
    out[..., 0:4] = (sc[..., :4] & 63) | ((sc[..., 4:] >> 4) << 6)
    out[..., 4:8] = (mn[..., :4] & 63) | ((mn[..., 4:] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:] & 15) | ((mn[..., 4:] & 15) << 4)
    return out


def _check(rows: int, nbytes: int) -> int:
    if rows % X8_ROWS:
        raise ValueError(f"{rows} rows do not divide into groups of {X8_ROWS}")
    if nbytes % Q4_K_BLOCK_BYTES:
        raise ValueError(f"a row of {nbytes} bytes is not whole Q4_K blocks")
    return nbytes // Q4_K_BLOCK_BYTES


def to_x8(plain: np.ndarray) -> np.ndarray:
    """Plain Q4_K rows ``(rows, row_bytes)`` to interleaved bytes of the same shape."""
    plain = np.ascontiguousarray(plain, dtype=np.uint8)
    rows, row_bytes = plain.shape
    nb = _check(rows, row_bytes)
    g = rows // X8_ROWS
    b = plain.reshape(g, X8_ROWS, nb, Q4_K_BLOCK_BYTES).transpose(0, 2, 1, 3)  # [g, nb, row, 144]
    out = np.empty((g, nb, X8_BLOCK_BYTES), dtype=np.uint8)
    out[..., 0:16] = b[..., 0:2].reshape(g, nb, 16)
    out[..., 16:32] = b[..., 2:4].reshape(g, nb, 16)
    sc, mn = unpack_scales(b[..., 4:16])  # [g, nb, row, sub]
    out[..., 32:128] = pack_scales(sc.swapaxes(2, 3), mn.swapaxes(2, 3)).reshape(g, nb, 96)
    codes = b[..., 16:144].reshape(g, nb, X8_ROWS, 16, 8).transpose(0, 1, 3, 2, 4)
    out[..., 128:] = codes.reshape(g, nb, 1024)
    return out.reshape(rows, row_bytes)


def from_x8(packed: np.ndarray) -> np.ndarray:
    """Interleaved bytes ``(rows, row_bytes)`` back to plain Q4_K rows; inverse of :func:`to_x8`."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    rows, row_bytes = packed.shape
    nb = _check(rows, row_bytes)
    g = rows // X8_ROWS
    x = packed.reshape(g, nb, X8_BLOCK_BYTES)
    b = np.empty((g, nb, X8_ROWS, Q4_K_BLOCK_BYTES), dtype=np.uint8)
    b[..., 0:2] = x[..., 0:16].reshape(g, nb, X8_ROWS, 2)
    b[..., 2:4] = x[..., 16:32].reshape(g, nb, X8_ROWS, 2)
    sc, mn = unpack_scales(x[..., 32:128].reshape(g, nb, 8, 12))  # [g, nb, sub, row]
    b[..., 4:16] = pack_scales(sc.swapaxes(2, 3), mn.swapaxes(2, 3))
    codes = x[..., 128:].reshape(g, nb, 16, X8_ROWS, 8).transpose(0, 1, 3, 2, 4)
    b[..., 16:] = codes.reshape(g, nb, X8_ROWS, 128)
    return b.transpose(0, 2, 1, 3).reshape(rows, row_bytes)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """Plain Q4_K blocks ``(rows, cols / 256 * 144)`` of float32 ``x``, as ggml's reference
    quantizer writes them: nntrtool's own kernel when the type registry has one, else ggml's C
    code from the optional ``ggml-python`` package."""
    from nntrtool.quant.registry import KERNELS

    x = np.ascontiguousarray(x, dtype=np.float32)
    if "q4_k" in KERNELS:
        from nntrtool.quant import quantize

        return quantize(x, "q4_k")
    return _ggml_quantize_q4_k(x)


def _ggml_quantize_q4_k(x: np.ndarray) -> np.ndarray:
    import ctypes

    from nntrtool.errors import UsageError

    try:
        import ggml.ggml as g
    except Exception:
        raise UsageError(
            "writing Q4_K needs a Q4_K quantizer: this nntrtool has none of its own and the "
            "ggml-python package is not installed (pip install ggml-python)"
        ) from None
    rows, cols = x.shape
    out = np.empty((rows, cols // Q4_K_BLOCK_VALUES * Q4_K_BLOCK_BYTES), dtype=np.uint8)
    written = g.ggml_quantize_chunk(
        g.GGML_TYPE_Q4_K,
        x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        out.ctypes.data_as(ctypes.c_void_p),
        0,
        rows,
        cols,
        None,
    )
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
    return out
