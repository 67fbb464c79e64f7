"""Q4_0 CPU repacking: plain Q4_0 rows <-> ggml's interleaved layouts (4x4, 4x8, 8x8).

Rows go in groups of R. For each group and block column, one interleaved block holds the R
rows' fp16 scales in row order, then their 16-byte code arrays cut in chunks of B bytes taken
round-robin across the rows (chunk i = row i % R, bytes (i // R) * B ..), every code byte XORed
with 0x88 (each nibble becomes the signed value q - 8). A pure byte permutation plus XOR, so
``unpack(repack(q))`` is ``q``.

The (rows, row_bytes) shape is kept: group g's interleaved blocks fill the bytes of rows
g*R .. g*R+R-1. ``repack_xp``/``unpack_xp`` are array code (numpy or cupy);
``repack_numba``/``unpack_numba`` are the parallel kernels in ``_repack_numba``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrtool.errors import QuantError
from nntrtool.qtypes import Q4_0, RepackLayout, get_layout

from .common import REPACK_XOR as XOR
from .common import SCALE_BYTES as D_BYTES

BLOCK_BYTES = Q4_0.block_bytes
QS_BYTES = BLOCK_BYTES - D_BYTES


def layout_of(layout: str | RepackLayout) -> RepackLayout:
    """The registered layout for a name (``q4_0_4``, ``q4_0_8``, ``q4_0_4x4``) or itself."""
    if isinstance(layout, RepackLayout):
        return layout
    try:
        return get_layout(layout)
    except (KeyError, AttributeError):
        from nntrtool.qtypes import LAYOUTS

        raise QuantError(
            f"unknown repack layout {layout!r}: use one of {', '.join(LAYOUTS)}"
        ) from None


def check_repackable(shape: tuple[int, ...], layout: RepackLayout) -> None:
    """Raise :class:`QuantError` unless ``shape`` is a (rows, row_bytes) Q4_0 array that
    ``layout`` can hold (rows a multiple of the group, whole blocks)."""
    if len(shape) != 2:
        raise QuantError(
            f"{layout.name}: expected a 2-D (rows, row_bytes) Q4_0 array, got shape {shape}"
        )
    rows, row_bytes = shape
    if row_bytes % BLOCK_BYTES or row_bytes == 0:
        raise QuantError(
            f"{layout.name}: a Q4_0 row is whole {BLOCK_BYTES}-byte blocks; got {row_bytes} bytes"
        )
    if rows % layout.rows:
        raise QuantError(
            f"{layout.name} interleaves {layout.rows} rows; a tensor of {rows} rows cannot be "
            f"repacked (keep it as plain q4_0)"
        )


def repack_xp(data: Any, layout: RepackLayout, xp: Any = np) -> Any:
    """Interleave plain Q4_0 (rows, row_bytes) into ``layout``; same shape."""
    rows, row_bytes = data.shape
    R, B = layout.rows, layout.interleave
    nb = row_bytes // BLOCK_BYTES
    g = rows // R
    blocks = data.reshape(g, R, nb, BLOCK_BYTES)
    d = blocks[..., :D_BYTES].transpose(0, 2, 1, 3).reshape(g, nb, R * D_BYTES)
    qs = blocks[..., D_BYTES:].reshape(g, R, nb, QS_BYTES // B, B)
    qs = qs.transpose(0, 2, 3, 1, 4).reshape(g, nb, R * QS_BYTES) ^ xp.uint8(XOR)
    return xp.concatenate([d, qs], axis=2).reshape(rows, row_bytes)


def unpack_xp(data: Any, layout: RepackLayout, xp: Any = np) -> Any:
    """Plain Q4_0 (rows, row_bytes) of data interleaved in ``layout``; same shape."""
    rows, row_bytes = data.shape
    R, B = layout.rows, layout.interleave
    nb = row_bytes // BLOCK_BYTES
    g = rows // R
    blocks = data.reshape(g, nb, R * BLOCK_BYTES)
    d = blocks[..., : R * D_BYTES].reshape(g, nb, R, D_BYTES).transpose(0, 2, 1, 3)
    qs = blocks[..., R * D_BYTES :].reshape(g, nb, QS_BYTES // B, R, B) ^ xp.uint8(XOR)
    qs = qs.transpose(0, 3, 1, 2, 4).reshape(g, R, nb, QS_BYTES)
    return xp.concatenate([d, qs], axis=3).reshape(rows, row_bytes)


def repack_numba(data: np.ndarray, layout: RepackLayout) -> np.ndarray:
    """``repack_xp`` with the parallel numba kernel (C-contiguous uint8 input)."""
    from . import _repack_numba
    from .kernel_cost import mark_compiled

    out = _repack_numba.repack(data, layout.rows, layout.interleave)
    mark_compiled("repack")
    return out


def unpack_numba(data: np.ndarray, layout: RepackLayout) -> np.ndarray:
    """``unpack_xp`` with the parallel numba kernel (C-contiguous uint8 input)."""
    from . import _repack_numba
    from .kernel_cost import mark_compiled

    out = _repack_numba.unpack(data, layout.rows, layout.interleave)
    mark_compiled("unpack")
    return out
