"""Benchmark results and the machine they were measured on, as plain data for ``--json``
(schema in docs/BENCH.md)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nntrtool import __version__
from nntrtool.bench.options import (
    MIN_SAMPLE_S,
    PUBLISHED,
    PUBLISHED_CPU_SETTING,
    PUBLISHED_GPU_SETTING,
    SCHEMA,
)
from nntrtool.bench.timing import Timing

# ---------------------------------------------------------------------------- results


@dataclass(kw_only=True)
class CaseResult:
    """One measured case; ``seconds`` is the median of the repeats. Every case has a ``qtype``
    (repack and unpack: Q4_0; convert: the type converted to)."""

    name: str
    op: str
    backend: str
    params: int
    bytes_in: int
    bytes_out: int
    repeats: int
    seconds: float
    seconds_min: float
    seconds_max: float
    seconds_q1: float
    seconds_q3: float
    params_per_s: float
    gb_per_s: float
    qtype: str
    layout: str | None = None
    shape: list[int] | None = None
    reference: bool = False
    first_call_s: float | None = None
    warmup_s: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    same_output: dict[str, bool] = field(default_factory=dict)
    published: dict[str, Any] | None = None
    peak_rss_bytes: int | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchReport:
    """A whole run: machine, options, cases in the order measured, what was skipped and why."""

    machine: dict[str, Any]
    options: dict[str, Any]
    cases: list[CaseResult] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (schema in docs/BENCH.md)."""
        return {
            "schema": SCHEMA,
            "nntrtool_version": __version__,
            "created": self.created,
            "seconds": self.seconds,
            "method": {
                "statistic": "median",
                "spread": "min, max, first and third quartiles of the repeats",
                "warmup": "a first call on a tiny input (first_call_s), then one untimed "
                "full-size call, before the timed repeats",
                "timer": "time.perf_counter",
                "min_sample_s": MIN_SAMPLE_S,
                "gb_per_s": "bytes of the larger of input and output per second, 1e9 bytes",
                "peak_rss": "VmHWM of the end-to-end child process (ru_maxrss where /proc "
                "is absent)",
            },
            "machine": self.machine,
            "options": self.options,
            "published": {
                "source": "the original converter's published figures",
                "cpu_setting": PUBLISHED_CPU_SETTING,
                "gpu_setting": PUBLISHED_GPU_SETTING,
                "params_per_s": PUBLISHED,
            },
            "cases": [c.to_dict() for c in self.cases],
            "skipped": self.skipped,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def make_case(
    name: str,
    op: str,
    backend: str,
    timing: Timing,
    *,
    params: int,
    bytes_in: int,
    bytes_out: int,
    **extra: Any,
) -> CaseResult:
    median = timing.median
    return CaseResult(
        name=name,
        op=op,
        backend=backend,
        params=int(params),
        bytes_in=int(bytes_in),
        bytes_out=int(bytes_out),
        repeats=len(timing.samples),
        seconds=median,
        seconds_min=min(timing.samples),
        seconds_max=max(timing.samples),
        seconds_q1=timing.quantile(0.25),
        seconds_q3=timing.quantile(0.75),
        params_per_s=params / median,
        gb_per_s=max(bytes_in, bytes_out) / median / 1e9,
        first_call_s=timing.first_call_s,
        warmup_s=timing.warmup_s,
        **extra,
    )


def published_for(qtype: str | None, backend: str) -> dict[str, Any] | None:
    """The original converter's figures to show next to a case of ``qtype`` on ``backend``."""
    if qtype not in PUBLISHED:
        return None
    gpu = backend == "cupy"
    return {
        "params_per_s": PUBLISHED[qtype]["gpu" if gpu else "cpu"],
        "setting": PUBLISHED_GPU_SETTING if gpu else PUBLISHED_CPU_SETTING,
    }


# ------------------------------------------------------------------------ machine info


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cupy_info() -> tuple[str | None, dict[str, Any] | None]:
    """cupy's version and the first GPU's name and memory, without failing when absent."""
    if importlib.util.find_spec("cupy") is None:
        return None, None
    try:
        import cupy

        version = str(cupy.__version__)
    except Exception:
        return None, None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return version, None
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return version, {
            "name": name,
            "count": int(count),
            "memory_bytes": int(props["totalGlobalMem"]),
        }
    except Exception:
        return version, None


def load_snapshot(interval: float = 0.3) -> dict[str, float | None]:
    """How busy the machine is now: load averages and the share of CPU time in use."""
    import psutil

    try:
        la = os.getloadavg()
    except (AttributeError, OSError):
        la = (float("nan"),) * 3
    return {
        "loadavg_1m": la[0],
        "loadavg_5m": la[1],
        "cpu_busy_percent": float(psutil.cpu_percent(interval=interval)),
    }


def numba_threads() -> int | None:
    """Threads numba's parallel kernels use (None when numba is missing)."""
    if importlib.util.find_spec("numba") is None:
        return None
    import numba

    return int(numba.get_num_threads())


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, OS, versions of the backends and the GPU if any."""
    import psutil

    try:
        available_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        available_cores = os.cpu_count() or 1
    cupy_version, gpu = _cupy_info()
    mem = psutil.virtual_memory()
    threads = numba_threads()
    return {
        "cpu_model": _cpu_model(),
        "arch": platform.machine(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_available": available_cores,
        "cores_used": threads if threads is not None else 1,
        "memory_total_bytes": int(mem.total),
        "memory_available_bytes": int(mem.available),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "nntrtool": __version__,
            "numpy": np.__version__,
            "numba": _version("numba"),
            "cupy": cupy_version,
            "gguf": _version("gguf"),
            "ggml-python": _version("ggml-python"),
        },
        "gpu": gpu,
    }
