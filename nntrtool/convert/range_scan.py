"""What ``convert --dry-run`` reads: which tensors hold values their type cannot hold.

A tensor whose values would make a float16 field of its type pass 65504 is stored as F32 by
the conversion (or refused with ``--strict``; see :mod:`nntrtool.quant.range_check`). The dry
run names those tensors in advance by reading the data once, a chunk of rows at a time (memory
stays at one chunk): the largest magnitude of each chunk is compared with
:data:`~nntrtool.quant.range_check.SAFE_MAGNITUDE`, below which no type's field can overflow,
and only a chunk above it is quantized, with the conversion's own kernel, importance weights
and check, so the answer is the one the conversion will reach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nntrtool.memory import release_pages
from nntrtool.plan.tensors import ConversionPlan, TensorPlan
from nntrtool.quant.range_check import SAFE_MAGNITUDE


def _checked(tp: TensorPlan) -> bool:
    """Tensors whose bytes a kernel makes from values, in a type with float16 fields."""
    return tp.encoded and not tp.copy_blocks and bool(tp.ttype.plain.fp16_fields)


def _largest_finite(x: np.ndarray) -> float:
    """The largest finite magnitude of ``x`` (NaN and inf are the non-finite check's matter)."""
    if not x.size:
        return 0.0
    top = float(np.max(np.abs(x)))
    if np.isfinite(top):
        return top
    finite = x[np.isfinite(x)]
    return float(np.max(np.abs(finite))) if finite.size else 0.0


def scan_ranges(
    plan: ConversionPlan,
    by_name: dict[str, Any],
    chunk_bytes: int,
    advance: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """``{tensor name: the conversion's out-of-range exception}`` for every tensor of ``plan``
    that would not fit its type; ``advance(values, name)`` after each chunk read."""
    from nntrtool.convert.pipeline import _chunks, _encoded_rows, _OutOfRangeChunk, _to_f32, _Work

    found: dict[str, Any] = {}
    for tp in plan.tensors:
        if not _checked(tp):
            if advance is not None:
                advance(tp.numel, tp.name)
            continue
        st, done = by_name[tp.name], 0
        for begin, stop in _chunks(tp, st, chunk_bytes):
            if _encoded_rows(st, tp, begin, stop) is not None:  # exact blocks, no kernel
                break
            x = st.read(begin, stop)
            xf = _to_f32(x, tp.source_dtype)
            big = _largest_finite(xf) > SAFE_MAGNITUDE
            if big and np.isfinite(xf).all():
                work = _Work(
                    tp, x, begin, "numpy", False, None, plan.importance.get(tp.name)
                )  # the conversion's own step, on the reference kernels
                try:
                    work()
                except _OutOfRangeChunk as err:
                    found[tp.name] = err
            release_pages(x)
            if advance is not None:
                advance((stop - begin) * tp.cols, tp.name)
            done += (stop - begin) * tp.cols
            if tp.name in found:
                break
        if advance is not None and done < tp.numel:
            advance(tp.numel - done, tp.name)
    return found
