"""Values a block type cannot hold: finite input whose stored scale would be inf.

GGML's block types keep one or two fp16 scales per block (Q4_0 ``d = max / -8``, Q8_0
``d = amax / 127``, Q6_K a super-block ``d``; Q4_K ``d`` and ``dmin``; Q5_0 ``d``). When the
block's values are large enough that the scale passes fp16's largest finite value (65504, and
everything from 65520 on rounds to inf), the block decodes to inf or NaN although its input was
finite. ggml writes such blocks as they are; nntrtool checks the scales of every quantized
chunk (a strided read of two bytes per block, cheap beside the quantization) and stores the
tensor in a type that holds it instead, or refuses it under ``--strict``.

Values within range are untouched: the check reads the blocks, it never changes them.
"""

from __future__ import annotations

import numpy as np

#: Per type: block size in bytes and the byte offsets of its fp16 scale fields in a block.
SCALE_FIELDS: dict[str, tuple[int, tuple[int, ...]]] = {
    "q4_0": (18, (0,)),
    "q8_0": (34, (0,)),
    "q6_k": (210, (208,)),
    "q4_k": (144, (0, 2)),
    "q5_0": (22, (0,)),
    "q5_1": (24, (0, 2)),
    "q5_k": (176, (0, 2)),
}

#: Largest finite float16 value; a float16 output holds no more.
F16_MAX = 65504.0


def first_overflow(q: np.ndarray, quant_name: str) -> int | None:
    """The first row of ``q`` (blocks of ``quant_name``, one row per tensor row) whose scales
    are not finite, or ``None``. Types without fp16 scales always answer ``None``; a float16
    output (``f16``) answers the first row holding inf or NaN."""
    name = quant_name.lower()
    if name == "f16":
        h = np.asarray(q).view(np.float16).reshape(q.shape[0], -1)
        bad = ~np.isfinite(h).all(axis=1)
        return int(np.argmax(bad)) if bad.any() else None
    spec = SCALE_FIELDS.get(name)
    if spec is None or q.size == 0:
        return None
    block_bytes, offsets = spec
    rows = q.shape[0]
    blocks = np.asarray(q).view(np.uint8).reshape(rows, -1, block_bytes)
    bad = np.zeros(rows, dtype=bool)
    for off in offsets:
        scale = blocks[:, :, off : off + 2].copy().view(np.float16)
        bad |= ~np.isfinite(scale).all(axis=(1, 2))
    return int(np.argmax(bad)) if bad.any() else None


def largest_magnitude(x: np.ndarray) -> float:
    """The largest absolute value of a float array (0 for an empty one)."""
    return float(np.max(np.abs(x))) if x.size else 0.0
