"""The benchmark behind ``nntrtool bench``: kernel cases (:mod:`.kernels`), the end-to-end
conversion (:mod:`.end_to_end`), their timing method (:mod:`.timing`) and the report with the
machine it ran on (:mod:`.report`); :func:`run_bench` runs them in order (:mod:`.run`)."""

from nntrtool.bench.end_to_end import run_child
from nntrtool.bench.options import (
    E2E_TYPES,
    PUBLISHED,
    QUANT_TYPES,
    SCHEMA,
    BenchOptions,
    parse_count,
    parse_size,
)
from nntrtool.bench.report import BenchReport, CaseResult
from nntrtool.bench.run import run_bench
from nntrtool.bench.timing import measure

__all__ = [
    "E2E_TYPES",
    "PUBLISHED",
    "QUANT_TYPES",
    "SCHEMA",
    "BenchOptions",
    "BenchReport",
    "CaseResult",
    "measure",
    "parse_count",
    "parse_size",
    "run_bench",
    "run_child",
]
