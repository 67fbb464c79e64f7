"""The 2-D view every tensor is quantized, stored and read in: ``rows`` x ``cols``, where
``cols`` is the last dimension (the one quantization blocks run along) and ``rows`` the product
of all the others."""

from __future__ import annotations

import math
from collections.abc import Sequence


class Shaped:
    """The sizes of anything with a ``shape``: a source tensor, a planned one, a stored one."""

    __slots__ = ()
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of values."""
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        """Rows of the 2-D view: the product of all dimensions but the last (1 for 0-D and 1-D)."""
        return math.prod(self.shape[:-1])

    @property
    def cols(self) -> int:
        """Columns of the 2-D view: the last dimension (1 for a 0-D tensor)."""
        return self.shape[-1] if self.shape else 1


class TensorTotals:
    """Totals over a collection's ``tensors`` (a source, a conversion plan, an export plan)."""

    __slots__ = ()
    tensors: Sequence[Shaped]

    @property
    def params(self) -> int:
        """Values over all tensors."""
        return sum(t.numel for t in self.tensors)

    @property
    def nbytes(self) -> int:
        """Bytes over all tensors, as this collection holds them (in its source, its file)."""
        return sum(t.nbytes for t in self.tensors)
