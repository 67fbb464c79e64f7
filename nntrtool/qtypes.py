"""The tensor-type registry: the single source of truth for every stored type.

Each stored type is one row of the table below: its NNTR type id, block geometry, the GGML
type it corresponds to, the type a row that does not fit its blocks falls back to, the error
verify allows by default, its fp16 fields, and whether it has kernels (modules named after it).
Sizes, file validation, plans, GGUF block copies, kernels and displays all derive from this
table; adding a type is one row here plus its kernel modules (see docs/ARCHITECTURE.md).
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
    #: The GGML/GGUF type number of the same bytes (``None``: GGML has no such type).
    ggml_type: int | None
    #: What a matrix whose rows do not fit this type's blocks is stored as instead.
    fallback: str | None
    #: The largest relative error ``||x - x'|| / ||x||`` verify accepts by default (about twice
    #: what the type gives on Gaussian weights, so real weights pass and a wrong scale does not).
    max_rel_err: float
    #: Byte offsets in a block of its float16 fields (scales, mins; for F16 the value itself):
    #: finite input whose field would pass 65504 decodes to inf, so such a tensor is stored in
    #: another type (nntrtool/quant/range_check.py).
    fp16_fields: tuple[int, ...]
    #: Whether an importance matrix changes this type's bytes (ggml ignores it for Q8_0).
    uses_imatrix: bool
    #: Whether the type has kernels: ``nntrtool/quant/<name>.py`` (numpy / cupy) and
    #: ``nntrtool/quant/_<name>_numba.py`` (numba, imported on first use). F32 and a layout
    #: type have none.
    has_kernels: bool
    #: The plain type whose blocks a layout type interleaves (``None`` for every other type).
    plain_name: str | None = None

    @property
    def quantized(self) -> bool:
        """Whether values are stored in blocks with scales (every type but F32 and F16)."""
        return self.block_size > 1

    @property
    def target(self) -> bool:
        """Offered to users as a ``--quant-type`` / ``--type`` target (every plain type)."""
        return self.plain_name is None

    @property
    def kernels(self) -> str | None:
        """The module with this type's array kernels (``None``: no kernels)."""
        return f"nntrtool.quant.{self.name}" if self.has_kernels else None

    @property
    def numba_kernels(self) -> str | None:
        """The module with this type's numba kernels (``None``: no kernels)."""
        return f"nntrtool.quant._{self.name}_numba" if self.has_kernels else None

    @property
    def plain(self) -> TensorType:
        """The type whose blocks this one holds (Q4_0 for repacked Q4_0, else itself)."""
        return TYPES_BY_NAME[self.plain_name] if self.plain_name else self

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


# The stored types, one a row, with the columns of TensorType. Default verify limits were
# measured on 512 x 4096 N(0, 0.02) weights (q4_0 0.086, q6_k 0.018, q8_0 0.0054; heavy-tailed
# Student-t(3) weights give 0.127, 0.026, 0.0085; q4_k 0.071 / 0.092, q5_k 0.036 / 0.047,
# q5_0 0.043 / 0.066, q5_1 0.038 / 0.049, f16 0.00021). F32 is bit-exact.
# fmt: off
#                 name    id block bytes ggml fallback verify  fp16   imatrix kernels
F32 = TensorType("f32",    6,   1,   4,  0,  None,   0.0,    (),     False, False) # IEEE float32
F16 = TensorType("f16",   12,   1,   2,  1,  None,   0.0005, (0,),   False, True)  # IEEE float16
Q4_0 = TensorType("q4_0",  4,  32,  18,  2,  "f32",  0.18,   (0,),   True,  True)  # d, 32 x 4 bit
Q8_0 = TensorType("q8_0",  7,  32,  34,  8,  "f32",  0.012,  (0,),   False, True)  # d, 32 x 8 bit
Q5_0 = TensorType("q5_0", 10,  32,  22,  6,  "f32",  0.09,   (0,),   True,  True)  # d, 32 x 5 bit
Q5_1 = TensorType("q5_1", 11,  32,  24,  7,  "f32",  0.08,   (0, 2), True,  True)  # d, m, 32 x 5
Q4_K = TensorType("q4_k",  8, 256, 144, 12,  "q5_0", 0.15,   (0, 2), True,  True)  # 8 x 32 x 4 bit
Q5_K = TensorType("q5_k",  9, 256, 176, 13,  "q5_1", 0.075,  (0, 2), True,  True)  # 8 x 32 x 5 bit
Q6_K = TensorType("q6_k",  5, 256, 210, 14,  "q8_0", 0.04,   (208,), True,  True)  # 16 x 16 x 6 bit
# Q4_0 blocks interleaved across rows for CPU SIMD kernels (the layouts below).
Q4_0_REPACKED = TensorType("q4_0_repacked", 3, 32, 18, None, None, 0.18, (), False, False, "q4_0")
# fmt: on

TYPES: tuple[TensorType, ...] = (Q4_0_REPACKED, Q4_0, Q6_K, F32, Q8_0, Q4_K, Q5_K, Q5_0, Q5_1, F16)
TYPES_BY_ID: dict[int, TensorType] = {t.type_id: t for t in TYPES}
TYPES_BY_NAME: dict[str, TensorType] = {t.name: t for t in TYPES}
TYPES_BY_GGML: dict[int, TensorType] = {t.ggml_type: t for t in TYPES if t.ggml_type is not None}

#: The types a user can ask a tensor to be stored in (``--quant-type``, ``--type RE=TYPE``).
QUANT_TYPE_NAMES: tuple[str, ...] = tuple(t.name for t in TYPES if t.target and t.quantized)
TARGET_TYPE_NAMES: tuple[str, ...] = (
    *QUANT_TYPE_NAMES,
    *(t.name for t in TYPES if t.target and not t.quantized),
)


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


def fitting_type(ttype: TensorType, cols: int) -> TensorType:
    """``ttype``, or the first type down its fallback chain whose blocks rows of ``cols`` fit."""
    while ttype.quantized and not ttype.fits(cols) and ttype.fallback is not None:
        ttype = TYPES_BY_NAME[ttype.fallback]
    return ttype


def get_layout(name: str) -> RepackLayout:
    """Look a repack layout up by name; ``KeyError`` if unknown."""
    return LAYOUTS[name.lower()]


def display_name(ttype: TensorType, layout: RepackLayout | None = None) -> str:
    """The name users see: ``q4_0_8`` for repacked tensors, else the type's name."""
    if ttype.plain_name and layout is not None:
        return layout.name
    return ttype.name
