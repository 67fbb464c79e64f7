"""The arithmetic of a LoRA merge: ``W + s * (B @ A)`` for row ranges, as derived tensors.

:mod:`nntrtool.sources.lora` finds, checks and pairs adapters with the model's tensors; this
module computes the merged rows. Each merged element is computed by the same sequence of
float32 operations whatever rows it is read with, so ``convert`` and ``verify``, which cut
tensors differently, see bit-identical weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nntrtool.sources.base import SourceTensor
from nntrtool.tensors.transforms import DerivedTensor


@functools.cache
def _low_rank_kernel() -> Callable[[np.ndarray, np.ndarray, np.ndarray, np.float32], None]:
    """``out += s * (left @ right)`` for a small inner dimension, compiled (and cached) once.

    Each element is ``out + (s * p)`` with ``p`` summed over the rank in order, one fused
    multiply-add at a time, and ``s * p`` rounded before the addition (no reassociation: the
    value of a row never depends on the rows computed with it, so convert and verify, which cut
    tensors differently, read the same bits). That is the order of the BLAS kernels PEFT's
    ``B @ A * s`` runs on, so on CPUs with FMA the merge equals PEFT's bit for bit. Single-
    threaded: it runs beside the quantizing worker threads, which a multi-threaded BLAS call
    would compete with for the same cores.
    """
    from nntrtool.quant.kernel_cost import use_numba_cache

    use_numba_cache()
    import numba

    @numba.njit(nogil=True, cache=True, fastmath={"contract"})
    def add_low_rank(out, left, right, scale):  # pragma: no cover - compiled
        rows, rank = left.shape
        cols = right.shape[1]
        acc = np.empty(cols, dtype=np.float32)
        for i in range(rows):
            acc[:] = 0
            for k in range(rank):
                b = left[i, k]
                for j in range(cols):
                    acc[j] += b * right[k, j]
            # Scaled, stored, then added: PEFT rounds s * (B @ A) before adding it to W, so the
            # two steps must not contract into one fused multiply-add.
            for j in range(cols):
                acc[j] *= scale
            for j in range(cols):
                out[i, j] += acc[j]

    return add_low_rank


class LowRankUpdate:
    """``s * B @ A`` of one adapter on one weight, added to row ranges of the weight.

    ``transposed`` is the orientation of embeddings and ``fan_in_fan_out`` layers, whose
    stored weight is ``(B @ A).T``: its rows come from columns of ``A``. A range of rows reads
    only those rows of ``B``; ``A`` (and ``B.T`` when transposed), ``rank`` rows, is held while
    the tensor is read and dropped after its last row.
    """

    def __init__(self, a: SourceTensor, b: SourceTensor, scaling: float, transposed: bool):
        self.a, self.b, self.scaling, self.transposed = a, b, float(scaling), transposed
        self.rows = a.cols if transposed else b.rows
        self._cache: dict[str, np.ndarray] = {}

    def add_to(self, out: np.ndarray, start: int, stop: int) -> None:
        """Add the update's rows ``start:stop`` to ``out`` (C-contiguous float32 of those rows)."""
        from nntrtool.memory import release_pages

        if stop <= start:
            return
        if self.transposed:
            left = np.ascontiguousarray(self._whole("a")[:, start:stop].T)
            right = self._whole("bt")
        else:
            left = np.ascontiguousarray(self.b.read_f32(start, stop), dtype=np.float32)
            release_pages(self.b.read(start, stop))
            right = self._whole("a")
        # PEFT multiplies the product by a Python float: float32 arithmetic with s as float32.
        _low_rank_kernel()(out, left, right, np.float32(self.scaling))
        if stop >= self.rows:
            self._cache.clear()

    def _whole(self, which: str) -> np.ndarray:
        arr = self._cache.get(which)
        if arr is None:
            if which == "a":
                arr = np.array(self.a.read_f32(), dtype=np.float32)
            else:
                arr = np.ascontiguousarray(np.array(self.b.read_f32(), dtype=np.float32).T)
            self._cache[which] = arr
        return arr


class BiasUpdate:
    """``s * lora_B.bias`` added to a layer's bias (``lora_bias``)."""

    def __init__(self, bias: SourceTensor, scaling: float):
        self.bias, self.scaling = bias, float(scaling)

    def add_to(self, out: np.ndarray, start: int, stop: int) -> None:
        """Add to the bias's (single) row."""
        if stop > start:
            out += self.bias.read_f32() * np.float32(self.scaling)


def merged_tensor(
    name: str, base: SourceTensor, updates: Sequence[Any], note: str, source_nbytes: int
) -> DerivedTensor:
    """``base`` with ``updates`` added in order, in float32, stored as ``name``."""

    def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
        from nntrtool.memory import release_pages

        src = inputs[0]
        out = np.empty((stop - start, src.cols), dtype=np.float32)
        src.read_f32(start, stop, out=out)
        release_pages(src.read(start, stop))
        for update in updates:
            update.add_to(out, start, stop)
        return out

    return DerivedTensor(name, "F32", base.shape, [base], read, note, source_nbytes=source_nbytes)


def replaced_tensor(base: SourceTensor, new: SourceTensor, note: str) -> DerivedTensor:
    """``base`` replaced whole by an adapter's saved tensor (stored in the saved dtype)."""

    def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
        return inputs[0].read(start, stop)

    return DerivedTensor(
        base.name, new.dtype, base.shape, [new], read, note, source_nbytes=base.nbytes
    )
