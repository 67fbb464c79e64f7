"""The kernel registry: one kernel module per quantized type, looked up by the type's name.

Every type module exposes the same four functions (``quantize_xp(x, xp)``,
``dequantize_xp(data, xp)``, ``quantize_numba(x, src_kind)``, ``dequantize_numba(data)``),
and types whose bytes an importance matrix changes also ``quantize_imatrix_xp(x, qw, xp)``
and ``quantize_imatrix_numba(x, src_kind, qw)``; types nntrtool only reads (Q5_K, Q5_1)
have the two dequantize functions alone;
generic code picks the module here and never branches on a type's name. Modules are imported
on first use, so looking a type up costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from nntrtool.errors import QuantError
from nntrtool.qtypes import F16, Q4_0, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, TensorType


@dataclass(frozen=True)
class QuantKernels:
    """The kernels of one quantized type, living in ``module``."""

    ttype: TensorType
    module: str

    @property
    def impl(self) -> ModuleType:
        """The kernel module (imported on first use)."""
        return importlib.import_module(self.module)

    def quantize_xp(self, x: Any, xp: Any) -> Any:
        """Bytes (rows, row_bytes) of a 2-D float32 ``xp`` array."""
        return self.impl.quantize_xp(x, xp)

    def dequantize_xp(self, data: Any, xp: Any) -> Any:
        """float32 (rows, cols) of a (rows, row_bytes) ``xp`` uint8 array."""
        return self.impl.dequantize_xp(data, xp)

    def quantize_numba(self, x: Any, src_kind: int) -> Any:
        """Bytes of a C-contiguous 2-D float32 (or uint16 fp16/bf16 bits) numpy array."""
        return self.impl.quantize_numba(x, src_kind)

    @property
    def can_quantize(self) -> bool:
        """Whether nntrtool writes this type (Q5_K and Q5_1 are read and kept, not written)."""
        return hasattr(self.impl, "quantize_xp")

    @property
    def uses_imatrix(self) -> bool:
        """Whether an importance matrix changes this type's bytes (ggml ignores it for Q8_0)."""
        return hasattr(self.impl, "quantize_imatrix_xp")

    def quantize_imatrix_xp(self, x: Any, qw: Any, xp: Any) -> Any:
        """Bytes of a 2-D float32 ``xp`` array weighted by importance ``qw`` (one per column)."""
        return self.impl.quantize_imatrix_xp(x, qw, xp)

    def quantize_imatrix_numba(self, x: Any, src_kind: int, qw: Any) -> Any:
        """Importance-weighted bytes of a C-contiguous 2-D source array, numba kernels."""
        return self.impl.quantize_imatrix_numba(x, src_kind, qw)

    def dequantize_numba(self, data: Any) -> Any:
        """float32 (rows, cols) of a C-contiguous (rows, row_bytes) numpy array."""
        return self.impl.dequantize_numba(data)


KERNELS: dict[str, QuantKernels] = {}


def register(ttype: TensorType, module: str) -> None:
    """Register the kernel module of a quantized type under the type's name."""
    KERNELS[ttype.name] = QuantKernels(ttype, module)


register(Q4_0, "nntrtool.quant.q4_0")
register(Q6_K, "nntrtool.quant.q6_k")
register(Q8_0, "nntrtool.quant.q8_0")
register(Q4_K, "nntrtool.quant.q4_k")
register(Q5_0, "nntrtool.quant.q5_0")
register(Q5_K, "nntrtool.quant.q5_k")
register(Q5_1, "nntrtool.quant.q5_1")
register(F16, "nntrtool.quant.f16")


def get_kernels(qtype: str | TensorType) -> QuantKernels:
    """The kernels of ``qtype`` (a name such as ``"q4_0"``, any case, or a TensorType)."""
    name = qtype.name if isinstance(qtype, TensorType) else str(qtype).lower()
    try:
        return KERNELS[name]
    except KeyError:
        raise QuantError(
            f"cannot quantize to {qtype!r}: use one of {', '.join(sorted(KERNELS))}"
        ) from None
