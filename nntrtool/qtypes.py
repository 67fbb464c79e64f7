"""The tensor-type registry: the single source of truth for every stored type.

Block size, bytes per block and the type id of each type live here and nowhere else; sizes,
file validation, plans and displays all derive from this table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class TensorType:
    """A stored tensor type: ``block_size`` values along the last dimension in ``block_bytes``."""

    name: str
    type_id: int
    block_size: int
    block_bytes: int
    quantized: bool
    description: str
    #: numpy dtype of one value for the types stored value by value (``"<f4"``, ``"<f2"``).
    element_dtype: str | None = None

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.block_bytes / self.block_size

    def fits(self, cols: int) -> bool:
        """Whether a last dimension of ``cols`` values is a whole number of blocks."""
        return cols > 0 and cols % self.block_size == 0

    def row_bytes(self, cols: int) -> int:
        """Bytes of one row of ``cols`` values; raises ``ValueError`` if it is not whole blocks."""
        if cols % self.block_size:
            raise ValueError(
                f"{self.name}: a row of {cols} values is not a multiple of the block size "
                f"{self.block_size}"
            )
        return cols // self.block_size * self.block_bytes

    def nbytes(self, shape: Iterable[int]) -> int:
        """Bytes of a tensor of ``shape`` (blocks run along the last dimension)."""
        shape = tuple(int(s) for s in shape)
        if not shape:
            return self.block_bytes if self.block_size == 1 else self.row_bytes(0)
        rows = math.prod(shape[:-1])
        return rows * self.row_bytes(shape[-1])


F32 = TensorType("f32", 6, 1, 4, False, "IEEE float32", "<f4")
Q4_0 = TensorType("q4_0", 4, 32, 18, True, "GGML Q4_0: fp16 scale + 32 x 4-bit")
Q4_0_REPACKED = TensorType(
    "q4_0_repacked", 3, 32, 18, True, "GGML Q4_0 blocks interleaved across rows for CPU SIMD"
)
Q6_K = TensorType("q6_k", 5, 256, 210, True, "GGML Q6_K: 16 x 6-bit sub-blocks, int8 scales")
Q8_0 = TensorType("q8_0", 7, 32, 34, True, "GGML Q8_0: fp16 scale + 32 x int8")
Q4_K = TensorType(
    "q4_k", 8, 256, 144, True, "GGML Q4_K: 8 x 4-bit sub-blocks, 6-bit scales and mins"
)
Q5_K = TensorType(
    "q5_k", 9, 256, 176, True, "GGML Q5_K: 8 x 5-bit sub-blocks, 6-bit scales and mins"
)
Q5_0 = TensorType("q5_0", 10, 32, 22, True, "GGML Q5_0: fp16 scale + 32 x 5-bit")
Q5_1 = TensorType("q5_1", 11, 32, 24, True, "GGML Q5_1: fp16 scale and min + 32 x 5-bit")
F16 = TensorType("f16", 12, 1, 2, False, "IEEE float16 (half)", "<f2")

TYPES: tuple[TensorType, ...] = (Q4_0_REPACKED, Q4_0, Q6_K, F32, Q8_0, Q4_K, Q5_K, Q5_0, Q5_1, F16)
TYPES_BY_ID: dict[int, TensorType] = {t.type_id: t for t in TYPES}
TYPES_BY_NAME: dict[str, TensorType] = {t.name: t for t in TYPES}

#: The types a user can ask a tensor to be stored in (``--quant-type``, ``--type RE=TYPE``).
QUANT_TYPE_NAMES: tuple[str, ...] = ("q4_0", "q4_k", "q5_0", "q6_k", "q8_0")
TARGET_TYPE_NAMES: tuple[str, ...] = ("q4_0", "q4_k", "q5_0", "q6_k", "q8_0", "f32")


@dataclass(frozen=True)
class RepackLayout:
    """A CPU layout of Q4_0: ``rows`` rows interleaved in chunks of ``interleave`` bytes."""

    name: str
    rows: int
    interleave: int
    ggml_name: str
    description: str

    @property
    def group_block_bytes(self) -> int:
        """Bytes of one interleaved block (``rows`` scales and ``rows`` x 16 bytes of codes)."""
        return self.rows * Q4_0.block_bytes


LAYOUTS: dict[str, RepackLayout] = {
    "q4_0_4": RepackLayout("q4_0_4", 4, 8, "q4_0_4x8", "4 rows, 8-byte interleave (ARM i8mm)"),
    "q4_0_8": RepackLayout("q4_0_8", 8, 8, "q4_0_8x8", "8 rows, 8-byte interleave (x86 AVX2)"),
    "q4_0_4x4": RepackLayout(
        "q4_0_4x4", 4, 4, "q4_0_4x4", "4 rows, 4-byte interleave (ARM dotprod)"
    ),
}


def layout_for(rows: int, interleave: int) -> RepackLayout | None:
    """The registered layout with these parameters, or ``None``."""
    for layout in LAYOUTS.values():
        if layout.rows == rows and layout.interleave == interleave:
            return layout
    return None


def get_type(name_or_id: str | int) -> TensorType:
    """Look a type up by name (``"q4_0"``) or id (``4``); ``KeyError`` if unknown."""
    if isinstance(name_or_id, int):
        return TYPES_BY_ID[name_or_id]
    return TYPES_BY_NAME[name_or_id.lower()]


def get_layout(name: str) -> RepackLayout:
    """Look a repack layout up by name; ``KeyError`` if unknown."""
    return LAYOUTS[name.lower()]


def display_name(ttype: TensorType, layout: RepackLayout | None = None) -> str:
    """The name users see: ``q4_0_8`` for repacked tensors, else the type's name."""
    if ttype is Q4_0_REPACKED and layout is not None:
        return layout.name
    return ttype.name
