"""The kernel registry: the kernels of every quantized type, found through the type table.

A type's :mod:`nntrtool.qtypes` entry names two modules. Its array module exposes
``quantize_xp(x, xp)`` and ``dequantize_xp(data, xp)`` (numpy or cupy), plus
``quantize_imatrix_xp(x, qw, xp)`` when an importance matrix changes its bytes; its numba
module exposes ``quantize(x, src_kind, qw=None)``, the type's bytes ``(rows, row_bytes)`` of a
C-contiguous 2-D float32 array (or uint16 fp16 / bf16 bits, per ``src_kind``) weighted by the
importance ``qw`` (float32, one per column) when given, and ``dequantize(data)``, float32
``(rows, cols)`` of C-contiguous bytes ``(rows, row_bytes)``. Both are imported
on first use, so looking a type up costs nothing, and generic code never branches on a type's
name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from nntrtool.errors import QuantError
from nntrtool.qtypes import TYPES, TensorType


@dataclass(frozen=True)
class QuantKernels:
    """The kernels of one quantized type, in the modules its type table entry names."""

    ttype: TensorType

    @property
    def impl(self) -> ModuleType:
        """The array kernel module (imported on first use)."""
        return importlib.import_module(str(self.ttype.kernels))

    def quantize_xp(self, x: Any, xp: Any) -> Any:
        """Bytes (rows, row_bytes) of a 2-D float32 ``xp`` array."""
        return self.impl.quantize_xp(x, xp)

    def dequantize_xp(self, data: Any, xp: Any) -> Any:
        """float32 (rows, cols) of a (rows, row_bytes) ``xp`` uint8 array."""
        return self.impl.dequantize_xp(data, xp)

    @property
    def numba(self) -> ModuleType:
        """The numba kernel module (imported, with numba, on first use)."""
        return importlib.import_module(str(self.ttype.numba_kernels))

    def quantize_numba(self, x: Any, src_kind: int, qw: Any = None) -> Any:
        """Bytes of a C-contiguous 2-D float32 (or uint16 fp16/bf16 bits) numpy array, weighted
        by importance ``qw`` (one per column) when given, with the numba kernels."""
        from .kernel_cost import mark_compiled

        if qw is None:
            out = self.numba.quantize(x, src_kind)
            mark_compiled(f"quantize-{self.ttype.name}-{x.dtype.name}")
        else:
            out = self.numba.quantize(x, src_kind, qw)
            mark_compiled(f"quantize-imatrix-{self.ttype.name}-{x.dtype.name}")
        return out

    @property
    def uses_imatrix(self) -> bool:
        """Whether an importance matrix changes this type's bytes (ggml ignores it for Q8_0)."""
        return self.ttype.uses_imatrix

    def quantize_imatrix_xp(self, x: Any, qw: Any, xp: Any) -> Any:
        """Bytes of a 2-D float32 ``xp`` array weighted by importance ``qw`` (one per column)."""
        return self.impl.quantize_imatrix_xp(x, qw, xp)

    def dequantize_numba(self, data: Any) -> Any:
        """float32 (rows, cols) of a C-contiguous (rows, row_bytes) numpy array."""
        from .kernel_cost import mark_compiled

        out = self.numba.dequantize(data)
        mark_compiled(f"dequantize-{self.ttype.name}")
        return out


KERNELS: dict[str, QuantKernels] = {t.name: QuantKernels(t) for t in TYPES if t.kernels is not None}


def get_kernels(qtype: str | TensorType) -> QuantKernels:
    """The kernels of ``qtype`` (a name such as ``"q4_0"``, any case, or a TensorType)."""
    name = qtype.name if isinstance(qtype, TensorType) else str(qtype).lower()
    try:
        return KERNELS[name]
    except KeyError:
        raise QuantError(
            f"cannot quantize to {qtype!r}: use one of {', '.join(sorted(KERNELS))}"
        ) from None
