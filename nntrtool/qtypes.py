"""The tensor-type registry: the single source of truth for every stored type.

Each stored type is one :class:`TensorType` entry: its NNTR type id, block geometry, the GGML
type it corresponds to, the module holding its kernels, the type a row that does not fit its
blocks falls back to, and the error verify allows by default. Sizes, file validation, plans,
GGUF block copies, kernels and displays all derive from this table; adding a type is one entry
here plus its kernel module (see docs/ARCHITECTURE.md).
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
    #: The GGML/GGUF type number of the same bytes (``None``: GGML has no such type).
    ggml_type: int | None = None
    #: The module with this type's array kernels (numpy / cupy; ``None``: no kernels, as for
    #: F32 or a repacked layout) and the one with its numba kernels (imported on first use).
    kernels: str | None = None
    numba_kernels: str | None = None
    #: Whether an importance matrix changes this type's bytes (ggml ignores it for Q8_0).
    uses_imatrix: bool = False
    #: Offered to users as a ``--quant-type`` / ``--type`` target.
    target: bool = False
    #: What a matrix whose rows do not fit this type's blocks is stored as instead.
    fallback: str | None = None
    #: The largest relative error ``||x - x'|| / ||x||`` verify accepts by default (about twice
    #: what the type gives on Gaussian weights, so real weights pass and a wrong scale does not).
    max_rel_err: float = 0.0
    #: The plain type whose blocks a layout type interleaves (itself for every other type).
    plain_name: str | None = None
    #: Byte offsets in a block of its float16 fields (scales, mins; for F16 the value itself):
    #: finite input whose field would pass 65504 decodes to inf, so such a tensor is stored in
    #: another type (nntrtool/quant/range_check.py).
    fp16_fields: tuple[int, ...] = ()

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


# Default verify limits were measured on 512 x 4096 N(0, 0.02) weights (q4_0 0.086, q6_k 0.018,
# q8_0 0.0054; heavy-tailed Student-t(3) weights give 0.127, 0.026, 0.0085; q4_k 0.071 / 0.092,
# q5_k 0.036 / 0.047, q5_0 0.043 / 0.066, q5_1 0.038 / 0.049, f16 0.00021). F32 is bit-exact.
F32 = TensorType("f32", 6, 1, 4, False, "IEEE float32", ggml_type=0, target=True)
Q4_0 = TensorType(
    "q4_0",
    4,
    32,
    18,
    True,
    "GGML Q4_0: fp16 scale + 32 x 4-bit",
    ggml_type=2,
    kernels="nntrtool.quant.q4_0",
    numba_kernels="nntrtool.quant._q4_0_numba",
    uses_imatrix=True,
    target=True,
    fallback="f32",
    max_rel_err=0.18,
    fp16_fields=(0,),
)
Q4_0_REPACKED = TensorType(
    "q4_0_repacked",
    3,
    32,
    18,
    True,
    "GGML Q4_0 blocks interleaved across rows for CPU SIMD",
    max_rel_err=0.18,
    plain_name="q4_0",
)
Q6_K = TensorType(
    "q6_k",
    5,
    256,
    210,
    True,
    "GGML Q6_K: 16 x 6-bit sub-blocks, int8 scales",
    ggml_type=14,
    kernels="nntrtool.quant.q6_k",
    numba_kernels="nntrtool.quant._q6_k_numba",
    uses_imatrix=True,
    target=True,
    fallback="q8_0",
    max_rel_err=0.04,
    fp16_fields=(208,),
)
Q8_0 = TensorType(
    "q8_0",
    7,
    32,
    34,
    True,
    "GGML Q8_0: fp16 scale + 32 x int8",
    ggml_type=8,
    kernels="nntrtool.quant.q8_0",
    numba_kernels="nntrtool.quant._q8_0_numba",
    target=True,
    fallback="f32",
    max_rel_err=0.012,
    fp16_fields=(0,),
)

Q4_K = TensorType(
    "q4_k",
    8,
    256,
    144,
    True,
    "GGML Q4_K: 8 x 32 4-bit sub-blocks, 6-bit scales and mins",
    ggml_type=12,
    kernels="nntrtool.quant.q4_k",
    numba_kernels="nntrtool.quant._q4_k_numba",
    uses_imatrix=True,
    target=True,
    fallback="q5_0",
    max_rel_err=0.15,
    fp16_fields=(0, 2),
)
Q5_K = TensorType(
    "q5_k",
    9,
    256,
    176,
    True,
    "GGML Q5_K: 8 x 32 5-bit sub-blocks, 6-bit scales and mins",
    ggml_type=13,
    kernels="nntrtool.quant.q5_k",
    numba_kernels="nntrtool.quant._q5_k_numba",
    uses_imatrix=True,
    target=True,
    fallback="q5_1",
    max_rel_err=0.075,
    fp16_fields=(0, 2),
)
Q5_0 = TensorType(
    "q5_0",
    10,
    32,
    22,
    True,
    "GGML Q5_0: fp16 scale + 32 x 5-bit",
    ggml_type=6,
    kernels="nntrtool.quant.q5_0",
    numba_kernels="nntrtool.quant._q5_0_numba",
    uses_imatrix=True,
    target=True,
    fallback="f32",
    max_rel_err=0.09,
    fp16_fields=(0,),
)
Q5_1 = TensorType(
    "q5_1",
    11,
    32,
    24,
    True,
    "GGML Q5_1: fp16 scale and min + 32 x 5-bit",
    ggml_type=7,
    kernels="nntrtool.quant.q5_1",
    numba_kernels="nntrtool.quant._q5_1_numba",
    uses_imatrix=True,
    target=True,
    fallback="f32",
    max_rel_err=0.08,
    fp16_fields=(0, 2),
)
F16 = TensorType(
    "f16",
    12,
    1,
    2,
    False,
    "IEEE float16 (round to nearest even)",
    ggml_type=1,
    kernels="nntrtool.quant.f16",
    numba_kernels="nntrtool.quant._f16_numba",
    target=True,
    max_rel_err=0.0005,
    fp16_fields=(0,),
)

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
