"""What ``nntrtool bench`` measures: its options, the sizes and counts it parses, and the
reference figures it compares against."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nntrtool.errors import UsageError
from nntrtool.qtypes import LAYOUTS, QUANT_TYPE_NAMES, TYPES

SCHEMA = "nntrtool-bench/1"

#: The original converter's published throughput, in parameters per second.
PUBLISHED: dict[str, dict[str, Any]] = {
    "q4_0": {"cpu": [50e6, 100e6], "gpu": [200e6, 400e6]},
    "q6_k": {"cpu": [30e6, 60e6], "gpu": [150e6, 300e6]},
}
PUBLISHED_CPU_SETTING = "8 CPU cores"
PUBLISHED_GPU_SETTING = "GPU"

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((4096, 4096), (11008, 4096))
QUICK_SIZES: tuple[tuple[int, int], ...] = ((512, 2048),)
#: Every type a user can quantize to, from the type table (new types are measured as added).
QUANT_TYPES: tuple[str, ...] = QUANT_TYPE_NAMES
E2E_TYPES: tuple[str, ...] = ("q4_0", "q6_k")
REF_GGML = "ggml-c"
REF_GGUF = "gguf-numpy"
#: Shapes must hold whole Q6_K blocks along a row and whole repack groups of rows.
COL_MULTIPLE = max(t.block_size for t in TYPES)
ROW_MULTIPLE = max(layout.rows for layout in LAYOUTS.values())
#: Each timed sample lasts at least this long (short calls are repeated inside one sample).
MIN_SAMPLE_S = 0.005
#: A machine busier than this before the run is flagged: its figures may be low.
BUSY_PERCENT = 25.0

Log = Callable[[str], None]


def no_log(_: str) -> None:
    pass


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. ``backends=None`` means every available backend."""

    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    repeats: int = 5
    e2e_params: float = 1e9
    e2e_types: tuple[str, ...] = E2E_TYPES
    e2e_repeats: int = 1
    qtypes: tuple[str, ...] = QUANT_TYPES
    layouts: tuple[str, ...] = tuple(LAYOUTS)
    backends: tuple[str, ...] | None = None
    references: bool = True
    threads: int | None = None
    workdir: str | None = None
    case_budget_s: float = 20.0
    quick: bool = False
    seed: int = 0
    #: Also time Q4_0 / Q6_K quantization weighted by an importance matrix.
    imatrix: bool = True

    def __post_init__(self) -> None:
        if not self.sizes:
            raise UsageError("--size: give at least one size, e.g. --size 4096x4096")
        for rows, cols in self.sizes:
            check_size(rows, cols)
        if int(self.repeats) < 1:
            raise UsageError(f"--repeats {self.repeats}: give at least 1")
        if not math.isfinite(self.e2e_params) or self.e2e_params < 0:
            raise UsageError(f"--e2e-params {self.e2e_params}: give a parameter count, 0 to skip")
        if self.threads is not None and int(self.threads) < 1:
            raise UsageError(f"--threads {self.threads}: give at least 1")
        for q in (*self.qtypes, *self.e2e_types):
            if q not in QUANT_TYPES:
                raise UsageError(f"unknown type {q!r}; choose from {', '.join(QUANT_TYPES)}")

    @classmethod
    def quick_defaults(cls, **changes: Any) -> BenchOptions:
        """A run of seconds: small matrices, three repeats, a 20 M parameter model."""
        base: dict[str, Any] = {
            "sizes": QUICK_SIZES,
            "repeats": 3,
            "e2e_params": 2e7,
            "case_budget_s": 2.0,
            "quick": True,
        }
        base.update({k: v for k, v in changes.items() if v is not None})
        return cls(**base)


def check_size(rows: int, cols: int) -> None:
    """UsageError unless ``rows x cols`` fits every case (Q6_K blocks, repack groups)."""
    if rows < 1 or cols < 1 or cols % COL_MULTIPLE or rows % ROW_MULTIPLE:
        raise UsageError(
            f"--size {rows}x{cols}: columns must be a positive multiple of {COL_MULTIPLE} "
            f"(a Q6_K block) and rows of {ROW_MULTIPLE} (a repack group), e.g. 4096x4096"
        )


def parse_size(text: str) -> tuple[int, int]:
    """``'4096x4096'`` -> ``(4096, 4096)`` (rows x columns); UsageError when malformed."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--size {text!r}: expected ROWSxCOLS, e.g. 4096x4096") from None
    check_size(rows, cols)
    return rows, cols


_SUFFIXES = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


def parse_count(text: str) -> float:
    """``'1e9'``, ``'250M'``, ``'1.5B'`` or ``'0'`` -> a parameter count."""
    t = str(text).strip().lower()
    scale = 1.0
    if t and t[-1] in _SUFFIXES:
        scale, t = _SUFFIXES[t[-1]], t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"--e2e-params {text!r}: give a count such as 1e9, 250M or 0 to skip")
    return value
