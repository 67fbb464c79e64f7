"""One chunk of a tensor's rows through the conversion: where the chunks fall, reading them,
and :class:`Work`, the job that turns one into the stored bytes (decode, quantize, check the
range, repack). The pipeline runs these on its workers; the dry run's range scan runs the same
:class:`Work` so that it reaches the conversion's own answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np

from nntrtool.errors import NonFiniteError
from nntrtool.memory import prefault
from nntrtool.plan.tensors import TensorPlan
from nntrtool.quant.range_check import first_overflow, largest_magnitude


class NonFiniteChunk(Exception):
    """A chunk held NaN or inf; carries the tensor name and the position in the whole tensor."""

    def __init__(self, name: str, row: int, col: int, value: float):
        super().__init__(name)
        self.name, self.row, self.col, self.value = name, row, col, value

    def user_error(self) -> NonFiniteError:
        what = "NaN" if math.isnan(self.value) else f"{self.value}"
        return NonFiniteError(
            f"tensor {self.name!r} holds {what} at row {self.row}, column {self.col}: "
            f"fix the weights, or pass --allow-nonfinite to store such tensors as f32",
            self.row,
            self.col,
            self.value,
        )


class OutOfRangeChunk(Exception):
    """A chunk's values do not fit its type: a block scale came out inf from finite input."""

    def __init__(self, name: str, quant_name: str, row: int, value: float):
        super().__init__(name)
        self.name, self.quant_name, self.row, self.value = name, quant_name, row, value

    def reason(self) -> str:
        from nntrtool.messages import out_of_range_reason

        return out_of_range_reason(self.value, self.row, self.quant_name)

    def user_error(self) -> NonFiniteError:
        from nntrtool.messages import out_of_range

        return NonFiniteError(
            out_of_range(self.name, self.value, self.row, self.quant_name),
            self.row,
            -1,
            self.value,
        )


def chunk_rows(tp: TensorPlan, row_bytes: int, budget: int) -> int:
    """Rows per chunk: the budget's worth, a multiple of 8 so repack groups are never split."""
    rows = tp.rows
    per = max(1, budget // max(1, row_bytes))
    if per >= rows:
        return rows
    return max(8, per // 8 * 8)


def chunks(tp: TensorPlan, src_tensor: Any, budget: int) -> Iterator[tuple[int, int]]:
    """``(begin, stop)`` row ranges of ``tp`` of about ``budget`` source bytes each."""
    rows = tp.rows
    if rows == 0 or tp.numel == 0:
        return
    row_bytes = max(1, int(src_tensor.nbytes) // max(1, rows))
    if getattr(src_tensor, "blocked", False) and not tp.copy_blocks:
        row_bytes = max(row_bytes, tp.cols * 4)  # blocks are dequantized to float32 first
    step = chunk_rows(tp, row_bytes, budget)
    for begin in range(0, rows, step):
        yield begin, min(rows, begin + step)


def to_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    """A chunk of source rows as float32 (GGUF blocks dequantized to their exact values)."""
    from nntrtool.quant.common import source_kind
    from nntrtool.quant.common import to_f32 as decode
    from nntrtool.sources.base import BLOCK_DTYPES, decode_blocks

    block = BLOCK_DTYPES.get(dtype)
    if block is not None:  # GGUF blocks: dequantized to their exact float32 values
        return decode_blocks(x, dtype, x.shape[1] // block[1] * block[0])
    return decode(x, source_kind(dtype))


def first_nonfinite(x: np.ndarray) -> tuple[int, int, float] | None:
    """Row, column and value of the first NaN or inf of a 2-D array, or ``None``."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    row, col = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return int(row), int(col), float(x[row, col])


class Work:
    """One chunk's job, run on the worker thread: wait for its pages, convert, quantize, repack."""

    def __init__(
        self,
        tp: TensorPlan,
        x: np.ndarray | None,
        begin: int,
        backend: str,
        check_f32: bool,
        prefetched: Future[Any] | None,
        imatrix: np.ndarray | None = None,
        encoded: bool = False,
    ):
        self.tp, self.x, self.begin, self.backend = tp, x, begin, backend
        self.imatrix = imatrix
        #: ``x`` holds the rows already as ``tp``'s blocks, straight from the source.
        self.encoded = encoded
        self.check_f32 = check_f32
        self.prefetched = prefetched
        self.f32_nonfinite: tuple[int, int, float] | None = None
        self.seconds: dict[str, float] = {}

    def __call__(self) -> np.ndarray:
        t0 = time.perf_counter()
        if self.prefetched is not None:
            fetched = self.prefetched.result()
            if self.x is None:
                self.x = fetched
        t1 = time.perf_counter()
        self.seconds["prefetch_wait"] = t1 - t0
        try:
            return self._run()
        finally:
            self.seconds["quantize"] = time.perf_counter() - t1

    def _run(self) -> np.ndarray:
        from nntrtool.quant import quantize, repack

        tp = self.tp
        if tp.copy_blocks or self.encoded:  # the bytes as they are: the source's own blocks,
            q = np.ascontiguousarray(self.x)  # or blocks a transform encoded exactly
            return repack(q, tp.layout.name, backend=self.backend) if tp.layout is not None else q
        if not tp.encoded:
            data = to_f32(self.x, tp.source_dtype)
            if self.check_f32:
                self.f32_nonfinite = first_nonfinite(data.reshape(data.shape[0], -1))
            return data
        x, dtype = self.x, tp.source_dtype
        if tp.requantized:
            x, dtype = to_f32(x, dtype), "F32"
        try:
            q = quantize(
                x,
                tp.quant_name,
                backend=self.backend,
                source_dtype=dtype,
                imatrix=self.imatrix,
            )
        except NonFiniteError as err:
            raise NonFiniteChunk(
                tp.name, self.begin + max(err.row, 0), max(err.col, 0), err.value
            ) from None
        row = first_overflow(q, tp.quant_name)
        if row is not None:
            xf = x if dtype == "F32" else to_f32(x, dtype)
            raise OutOfRangeChunk(tp.name, tp.quant_name, self.begin + row, largest_magnitude(xf))
        if tp.layout is not None:
            q = repack(q, tp.layout.name, backend=self.backend)
        return q


def fetch(st: Any, begin: int, stop: int) -> np.ndarray:
    """Rows ``begin:stop`` of a source tensor, with their pages in memory."""
    x = st.read(begin, stop)
    prefault(x)
    return x


def encoded_rows(st: Any, tp: TensorPlan, begin: int, stop: int) -> np.ndarray | None:
    """The rows as ``tp``'s blocks when the source holds them exactly so (MXFP4 in Q8_0)."""
    encode = getattr(st, "encoded_rows", None)
    if encode is None or not tp.quantized:
        return None
    return encode(tp.quant_name, begin, stop)
