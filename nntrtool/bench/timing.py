"""How a benchmark case is timed: a first call, an untimed warm-up, then timed repeats (tiny
calls are looped until long enough to time); the median is the figure."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nntrtool.bench.options import MIN_SAMPLE_S

# --------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds per call of the timed repeats, plus the first-call and warm-up times."""

    samples: list[float]
    first_call_s: float | None = None
    warmup_s: float | None = None

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.samples, q))


def measure(
    fn: Callable[[], Any],
    *,
    repeats: int,
    budget_s: float = math.inf,
    first: Callable[[], Any] | None = None,
) -> tuple[Timing, Any]:
    """Time ``fn``: ``first`` (a tiny call, if given), one warm-up, then the repeats.

    Returns the timing and the warm-up's result. When a call is longer than
    ``budget_s / repeats``, fewer repeats are made, never fewer than ``min(3, repeats)``.
    """
    clock = time.perf_counter
    first_s = None
    if first is not None:
        t0 = clock()
        first()
        first_s = clock() - t0
    t0 = clock()
    result = fn()
    warm = clock() - t0
    n = int(repeats)
    if warm * n > budget_s:
        n = max(min(3, n), int(budget_s // max(warm, 1e-9)))
    inner = max(1, math.ceil(MIN_SAMPLE_S / max(warm, 1e-9))) if warm < MIN_SAMPLE_S else 1
    samples = []
    for _ in range(n):
        t0 = clock()
        for _ in range(inner):
            fn()
        samples.append((clock() - t0) / inner)
    return Timing(samples, first_s, warm), result
