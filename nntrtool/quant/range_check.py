"""Values a block type cannot hold: finite input whose stored scale would be inf.

GGML's block types keep one or two fp16 scales per block (Q4_0 ``d = max / -8``, Q8_0
``d = amax / 127``, Q6_K a super-block ``d``; Q4_K ``d`` and ``dmin``; Q5_0 ``d``). When the
block's values are large enough that the scale passes fp16's largest finite value (65504, and
everything from 65520 on rounds to inf), the block decodes to inf or NaN although its input was
finite. ggml writes such blocks as they are; nntrtool checks the scales of every quantized
chunk (a strided read of two bytes per block, cheap beside the quantization) and stores the
tensor in a type that holds it instead, or refuses it under ``--strict``. Which fields each
type has is a column of the type table (``fp16_fields`` in :mod:`nntrtool.qtypes`).

Values within range are untouched: the check reads the blocks, it never changes them.
"""

from __future__ import annotations

import numpy as np

#: Largest finite float16 value; a float16 output holds no more.
F16_MAX = 65504.0

#: A block whose values all have magnitude at most this gets finite float16 fields in every
#: type: each field is at most the block's largest magnitude (Q5_1's min, F16's value; the
#: scales are that over 8 to 127 or less), and this leaves a factor of two for the K-quants'
#: refined scales. Only chunks holding larger values need their blocks checked.
SAFE_MAGNITUDE = F16_MAX / 2


def first_overflow(q: np.ndarray, quant_name: str) -> int | None:
    """The first row of ``q`` (blocks of ``quant_name``, one row per tensor row) whose float16
    fields (:attr:`~nntrtool.qtypes.TensorType.fp16_fields`) are not finite, or ``None``.
    Types without such fields always answer ``None``."""
    from nntrtool.qtypes import TYPES_BY_NAME

    ttype = TYPES_BY_NAME.get(quant_name.lower())
    if ttype is None or not ttype.fp16_fields or q.size == 0:
        return None
    rows = q.shape[0]
    blocks = np.asarray(q).view(np.uint8).reshape(rows, -1, ttype.block_bytes)
    bad = np.zeros(rows, dtype=bool)
    for off in ttype.fp16_fields:
        field = blocks[:, :, off : off + 2].copy().view(np.float16)
        bad |= ~np.isfinite(field).all(axis=(1, 2))
    return int(np.argmax(bad)) if bad.any() else None


def largest_magnitude(x: np.ndarray) -> float:
    """The largest absolute value of a float array (0 for an empty one)."""
    return float(np.max(np.abs(x))) if x.size else 0.0
