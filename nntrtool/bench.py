"""The benchmark behind ``nntrtool bench``: cases, timing method, machine info and results.

What is measured, for every available backend: quantize and dequantize (q4_0, q6_k, q8_0),
quantize weighted by an importance matrix (q4_0, q6_k), and Q4_0 repack on float32 matrices of realistic sizes, then an end-to-end conversion of a synthetic
bf16 safetensors model in a child process (so its peak memory is its own). Side by side, when
installed: ggml's C reference on one thread (through ggml-python) and gguf's numpy quantizers,
as ratios, and the original converter's published figures.

Method: a first call on a tiny input (JIT compilation or loading the compiled code, reported
apart as ``first_call_s``), one untimed warm-up at full size, then several timed repeats (each
long enough to time: tiny calls are looped); the median is the figure, min/max and quartiles
the spread. Results are plain dataclasses with a ``to_dict`` for ``--json`` (docs/BENCH.md).
The library never prints; it reports progress through the ``log`` callback it is given.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool import __version__
from nntrtool.errors import DiskFullError, NntrError, UsageError
from nntrtool.qtypes import LAYOUTS, Q4_0, get_type

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
QUANT_TYPES: tuple[str, ...] = ("q4_0", "q6_k", "q8_0")
E2E_TYPES: tuple[str, ...] = ("q4_0", "q6_k")
REF_GGML = "ggml-c"
REF_GGUF = "gguf-numpy"
#: Shapes must hold whole Q6_K blocks along a row and whole repack groups of rows.
COL_MULTIPLE = get_type("q6_k").block_size
ROW_MULTIPLE = max(layout.rows for layout in LAYOUTS.values())
#: Each timed sample lasts at least this long (short calls are repeated inside one sample).
MIN_SAMPLE_S = 0.005
#: A machine busier than this before the run is flagged: its figures may be low.
BUSY_PERCENT = 25.0

Log = Callable[[str], None]


def _no_log(_: str) -> None:
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


# ---------------------------------------------------------------------------- results


@dataclass
class CaseResult:
    """One measured case; ``seconds`` is the median of the repeats."""

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
    qtype: str | None = None
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


def _case(
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


# ------------------------------------------------------------------------------ cases


class _References:
    """ggml's C kernels and gguf's numpy quantizers, each loaded once or skipped with a reason."""

    def __init__(self, report: BenchReport, enabled: bool):
        self.ggml: Any = None
        self.gguf: Any = None
        if not enabled:
            report.skipped.append({"what": "references", "reason": "turned off (--no-reference)"})
            return
        from nntrtool import ggml_ref

        try:
            self.ggml = ggml_ref.load()
        except ggml_ref.GgmlUnavailable as err:
            report.skipped.append({"what": "ggml C reference", "reason": str(err)})
        try:
            import gguf.quants

            self.gguf = gguf
        except Exception as err:
            report.skipped.append(
                {"what": "gguf numpy reference", "reason": f"gguf is not installed ({err})"}
            )

    @property
    def gguf_quantizes(self) -> tuple[str, ...]:
        """The types gguf's numpy code can quantize (0.19 has no Q6_K quantizer)."""
        return ("q4_0", "q8_0")

    def gguf_type(self, qtype: str) -> Any:
        return getattr(self.gguf.GGMLQuantizationType, qtype.upper())

    def close(self) -> None:
        if self.ggml is not None:
            self.ggml.close()


def _select_backends(options: BenchOptions) -> tuple[list[str], str]:
    """The backends to measure and the one used end to end."""
    from nntrtool.quant import available_backends, resolve_backend

    avail = list(available_backends())
    if options.backends is None:
        return avail, resolve_backend("auto")
    chosen: list[str] = []
    for b in options.backends:
        name = resolve_backend("auto") if b == "auto" else b
        if name not in avail:
            raise UsageError(
                f"--backend {b}: not available on this machine; available: {', '.join(avail)}"
            )
        if name not in chosen:
            chosen.append(name)
    return chosen, chosen[0]


def _set_threads(threads: int | None) -> None:
    if threads is None or importlib.util.find_spec("numba") is None:
        return
    import numba

    try:
        numba.set_num_threads(int(threads))
    except ValueError:
        raise UsageError(
            f"--threads {threads}: numba allows at most {numba.config.NUMBA_NUM_THREADS} here"
        ) from None


@dataclass
class _Group:
    """One case measured for several implementations: references first, then nntrtool's."""

    name: str
    op: str
    params: int
    bytes_in: int
    bytes_out: int
    qtype: str | None = None
    layout: str | None = None
    shape: list[int] | None = None


class _Runner:
    """Measures groups of cases into a report, remembering which kernels were already warm."""

    def __init__(self, report: BenchReport, options: BenchOptions, log: Log):
        self.report = report
        self.options = options
        self.log = log
        self.warm: set[tuple[str, str]] = set()

    def group(
        self,
        g: _Group,
        refs: dict[str, Callable[[], Any]],
        impls: dict[str, tuple[Callable[[], Any], Callable[[], Any]]],
        *,
        check: Callable[[Any, Any], bool] | None = None,
    ) -> dict[str, np.ndarray]:
        """Time every reference and implementation; returns each implementation's output.

        ``impls`` maps a backend to (full-size call, tiny call); the tiny call is made first
        the first time a kernel is seen, to time its JIT compile or cache load apart.
        """
        meta = {"qtype": g.qtype, "layout": g.layout, "shape": g.shape}
        sizes = {"params": g.params, "bytes_in": g.bytes_in, "bytes_out": g.bytes_out}
        same = check or _same_output
        expected: dict[str, Any] = {}
        for ref, fn in refs.items():
            self.log(f"{g.name} [{ref}]")
            t, expected[ref] = measure(
                fn, repeats=self.options.repeats, budget_s=self.options.case_budget_s
            )
            note = "one thread" if ref == REF_GGML else None
            self.report.cases.append(
                _case(g.name, g.op, ref, t, **sizes, **meta, reference=True, note=note)
            )
        outputs: dict[str, np.ndarray] = {}
        for backend, (fn, tiny) in impls.items():
            self.log(f"{g.name} [{backend}]")
            key = (f"{g.op} {g.layout or g.qtype}", backend)
            first = None if key in self.warm else tiny
            self.warm.add(key)
            t, out = measure(
                fn, repeats=self.options.repeats, budget_s=self.options.case_budget_s, first=first
            )
            out = outputs[backend] = _to_host(out)
            self.report.cases.append(
                _case(
                    g.name, g.op, backend, t, **sizes, **meta,
                    same_output={r: bool(same(v, out)) for r, v in expected.items()},
                    published=published_for(g.qtype, backend) if g.op == "quantize" else None,
                )
            )  # fmt: skip
        return outputs


def _same_output(expected: Any, got: np.ndarray) -> bool:
    expected = np.asarray(expected)
    return expected.size == got.size and np.array_equal(expected.reshape(got.shape), got)


def _kernel_cases(
    report: BenchReport,
    options: BenchOptions,
    backends: Sequence[str],
    refs: _References,
    log: Log,
) -> None:
    from nntrtool import quant

    runner = _Runner(report, options, log)
    rng = np.random.default_rng(options.seed)
    for rows, cols in options.sizes:
        size = size_text(rows, cols)
        params = rows * cols
        x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
        tiny_x = np.ascontiguousarray(x[:ROW_MULTIPLE])
        q4_0_data = None
        for qtype in options.qtypes:
            qbytes = rows * get_type(qtype).row_bytes(cols)
            g = _Group(f"quantize {qtype} {size}", "quantize", params, x.nbytes, qbytes,
                       qtype=qtype, shape=[rows, cols])  # fmt: skip
            ref_fns: dict[str, Callable[[], Any]] = {}
            if refs.ggml is not None:
                ref_fns[REF_GGML] = partial(refs.ggml.quantize, x, qtype)
            if refs.gguf is not None and qtype in refs.gguf_quantizes:
                ref_fns[REF_GGUF] = partial(refs.gguf.quants.quantize, x, refs.gguf_type(qtype))
            impls = {
                b: (partial(quant.quantize, x, qtype, backend=b),
                    partial(quant.quantize, tiny_x, qtype, backend=b))
                for b in backends
            }  # fmt: skip
            outputs = runner.group(g, ref_fns, impls)
            del ref_fns
            if options.imatrix and quant.get_kernels(qtype).uses_imatrix:
                _imatrix_case(runner, refs, backends, x, tiny_x, qtype, qbytes, options.seed)
            data = next(iter(outputs.values()), None)
            if data is None:
                continue
            if qtype == Q4_0.name:
                q4_0_data = data
            tiny_data = np.ascontiguousarray(data[:ROW_MULTIPLE])
            g = _Group(f"dequantize {qtype} {size}", "dequantize", params, data.nbytes,
                       params * 4, qtype=qtype, shape=[rows, cols])  # fmt: skip
            ref_fns = {}
            if refs.ggml is not None:
                ref_fns[REF_GGML] = partial(refs.ggml.dequantize, data, qtype, cols)
            if refs.gguf is not None:
                ref_fns[REF_GGUF] = partial(
                    refs.gguf.quants.dequantize, data, refs.gguf_type(qtype)
                )
            impls = {
                b: (partial(quant.dequantize, data, qtype, (rows, cols), backend=b),
                    partial(quant.dequantize, tiny_data, qtype, (ROW_MULTIPLE, cols), backend=b))
                for b in backends
            }  # fmt: skip
            runner.group(g, ref_fns, impls)
            del outputs, ref_fns
        if q4_0_data is not None:
            _repack_cases(runner, refs, backends, q4_0_data, rows, cols)
        del x


def _imatrix_case(
    runner: _Runner, refs: _References, backends: Sequence[str], x: np.ndarray,
    tiny_x: np.ndarray, qtype: str, qbytes: int, seed: int,
) -> None:  # fmt: skip
    """Quantization weighted by an importance matrix (one value per column), against ggml's
    ``ggml_quantize_chunk`` given the same matrix."""
    from nntrtool import quant

    rows, cols = x.shape
    qw = np.random.default_rng(seed + 1).exponential(1.0, cols).astype(np.float32)
    g = _Group(f"quantize {qtype} imatrix {size_text(rows, cols)}", "imatrix",
               rows * cols, x.nbytes, qbytes, qtype=qtype, shape=[rows, cols])  # fmt: skip
    ref_fns = {REF_GGML: partial(refs.ggml.quantize, x, qtype, qw)} if refs.ggml else {}
    impls = {
        b: (partial(quant.quantize, x, qtype, backend=b, imatrix=qw),
            partial(quant.quantize, tiny_x, qtype, backend=b, imatrix=qw))
        for b in backends
    }  # fmt: skip
    runner.group(g, ref_fns, impls)


def _repack_cases(
    runner: _Runner, refs: _References, backends: Sequence[str], data: np.ndarray,
    rows: int, cols: int,
) -> None:  # fmt: skip
    from nntrtool import quant

    # repacking is a byte shuffle on the CPU: cupy runs the numba kernel, so it is not repeated
    cpu = [b for b in backends if b != "cupy"] or ["numba"]
    tiny = np.ascontiguousarray(data[:ROW_MULTIPLE])
    for layout in runner.options.layouts:
        common = {"params": rows * cols, "bytes_in": data.nbytes, "bytes_out": data.nbytes,
                  "qtype": Q4_0.name, "layout": layout, "shape": [rows, cols]}  # fmt: skip
        ref_fns = {REF_GGML: partial(refs.ggml.repack, data, layout)} if refs.ggml else {}
        impls = {
            b: (partial(quant.repack, data, layout, backend=b),
                partial(quant.repack, tiny, layout, backend=b))
            for b in cpu
        }  # fmt: skip
        g = _Group(f"repack {layout} {size_text(rows, cols)}", "repack", **common)
        packed = next(iter(runner.group(g, ref_fns, impls).values()))
        tiny_packed = np.ascontiguousarray(packed[:ROW_MULTIPLE])
        impls = {
            b: (partial(quant.unpack, packed, layout, backend=b),
                partial(quant.unpack, tiny_packed, layout, backend=b))
            for b in cpu
        }  # fmt: skip
        g = _Group(f"unpack {layout} {size_text(rows, cols)}", "unpack", **common)
        # unpacking has no outside reference: the plain Q4_0 that was packed is its check
        start = len(runner.report.cases)
        outputs = runner.group(g, {}, impls)
        for case, back in zip(runner.report.cases[start:], outputs.values(), strict=True):
            case.same_output["q4_0"] = bool(np.array_equal(back, data))


def _to_host(a: Any) -> np.ndarray:
    """A numpy array from a numpy or cupy result."""
    get = getattr(a, "get", None)
    return get() if callable(get) and not isinstance(a, np.ndarray) else np.asarray(a)


def size_text(rows: int, cols: int) -> str:
    return f"{rows}x{cols}"


# ------------------------------------------------------------------------ end to end


def _vm_hwm() -> int | None:
    """This process's peak resident memory from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in the child process: a tiny warm-up conversion, then the timed ones."""
    clock = time.perf_counter
    t0 = clock()
    from nntrtool.convert import ConvertOptions, convert

    import_s = clock() - t0
    opts = ConvertOptions(
        quant_type=spec["qtype"], backend=spec["backend"], threads=spec["threads"], force=True
    )
    t0 = clock()
    convert(spec["warm_src"], spec["warm_out"], opts, progress=None)
    first = clock() - t0
    runs = []
    for _ in range(int(spec["repeats"])):
        t0 = clock()
        convert(spec["src"], spec["out"], opts, progress=None)
        runs.append(clock() - t0)
    out_bytes = os.path.getsize(spec["out"])
    peak = _vm_hwm()
    source = "VmHWM"
    if peak is None:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        source = "ru_maxrss"
    return {
        "import_s": import_s,
        "first_call_s": first,
        "runs": runs,
        "output_bytes": out_bytes,
        "peak_rss_bytes": peak,
        "peak_rss_source": source,
    }


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "nntrtool.bench", "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise NntrError(f"end-to-end conversion to {spec['qtype']} failed: {last}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise NntrError("end-to-end conversion printed no result")


def check_e2e_space(options: BenchOptions) -> Path:
    """The folder the end-to-end run writes to, after checking it exists and has room."""
    from nntrtool.synthetic import synthetic_shape

    base = Path(options.workdir) if options.workdir else Path(tempfile.gettempdir())
    if not base.is_dir():
        raise UsageError(f"--workdir {base}: not a folder; give an existing folder")
    n = synthetic_shape(options.e2e_params).n_params
    # bf16 source, plus the largest output (q8_0, 8.5 bits) with room for f32 norms, plus slack
    need = 2 * n + int(1.2 * n) + (64 << 20)
    free = shutil.disk_usage(base).free
    if free < need:
        from nntrtool.units import human_bytes

        raise DiskFullError(
            f"the end-to-end run needs {human_bytes(need)} free in {base}, which has "
            f"{human_bytes(free)}; choose --workdir elsewhere, a smaller --e2e-params, or 0"
        )
    return base


def _e2e_cases(report: BenchReport, options: BenchOptions, backend: str, log: Log) -> None:
    from nntrtool.synthetic import make_synthetic_model, synthetic_shape

    base = check_e2e_space(options)
    shape = synthetic_shape(options.e2e_params)
    src_bytes = shape.n_params * 2
    with tempfile.TemporaryDirectory(prefix="nntrtool-bench-", dir=base) as tmp:
        root = Path(tmp)
        n = shape.n_params
        params_text = f"{n / 1e9:.3g}B" if n >= 1e8 else f"{n / 1e6:.3g}M"
        log(f"writing a synthetic bf16 model of {params_text} parameters in {root}")
        t0 = time.perf_counter()
        model = make_synthetic_model(root / "model", options.e2e_params, seed=options.seed)
        write_s = time.perf_counter() - t0
        warm = make_synthetic_model(root / "warm", layers=1, seed=options.seed + 1)
        for qtype in options.e2e_types:
            name = f"convert bf16 -> {qtype} {params_text}"
            log(f"{name} [{backend}]")
            spec = {
                "qtype": qtype,
                "backend": backend,
                "threads": options.threads,
                "repeats": options.e2e_repeats,
                "src": str(model),
                "out": str(root / f"out-{qtype}.nntr"),
                "warm_src": str(warm),
                "warm_out": str(root / f"warm-{qtype}.nntr"),
            }
            res = _run_child(spec)
            timing = Timing(res["runs"], res["first_call_s"], None)
            note = (
                f"in a child process; first_call_s: a 1-layer model converted first, after "
                f"{res['import_s']:.2f} s of imports; peak RSS from {res['peak_rss_source']}; "
                f"the {params_text} model was written in {write_s:.1f} s"
            )
            report.cases.append(
                _case(
                    name,
                    "convert",
                    backend,
                    timing,
                    params=n,
                    bytes_in=src_bytes,
                    bytes_out=res["output_bytes"],
                    qtype=qtype,
                    published=published_for(qtype, backend),
                    peak_rss_bytes=res["peak_rss_bytes"],
                    note=note,
                )
            )
            for p in (spec["out"], spec["warm_out"]):
                Path(p).unlink(missing_ok=True)


# --------------------------------------------------------------------------------- run


def _attach_ratios(cases: list[CaseResult]) -> None:
    refs = {(c.name, c.backend): c for c in cases if c.reference}
    for c in cases:
        if c.reference:
            continue
        for (name, ref_backend), ref in refs.items():
            if name == c.name and ref.params_per_s > 0:
                c.ratios[ref_backend] = c.params_per_s / ref.params_per_s


def run_bench(options: BenchOptions, log: Log | None = None) -> BenchReport:
    """Run every case ``options`` asks for and return the report (never prints)."""
    log = log or _no_log
    t_start = time.perf_counter()
    _set_threads(options.threads)
    backends, e2e_backend = _select_backends(options)
    run_e2e = options.e2e_params > 0 and bool(options.e2e_types)
    if run_e2e:
        check_e2e_space(options)  # fail before minutes of kernel timing, not after
    report = BenchReport(
        machine=machine_info(),
        options=_options_dict(options, backends, e2e_backend),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    report.machine["load_before"] = load_snapshot()
    busy = report.machine["load_before"]["cpu_busy_percent"]
    if busy is not None and busy > BUSY_PERCENT:
        report.notes.append(
            f"the machine was busy before the run ({busy:.0f}% of CPU time in use): "
            "figures may be lower than on an idle machine"
        )
    refs = _References(report, options.references)
    try:
        _kernel_cases(report, options, backends, refs, log)
    finally:
        refs.close()
    if run_e2e:
        _e2e_cases(report, options, e2e_backend, log)
    else:
        report.skipped.append({"what": "end-to-end conversion", "reason": "--e2e-params 0"})
    _attach_ratios(report.cases)
    report.machine["load_after"] = load_snapshot(interval=0.1)
    report.seconds = time.perf_counter() - t_start
    return report


def _options_dict(options: BenchOptions, backends: list[str], e2e_backend: str) -> dict[str, Any]:
    d = asdict(options)
    d["sizes"] = [size_text(r, c) for r, c in options.sizes]
    d["backends"] = backends
    d["e2e_backend"] = e2e_backend
    return d


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--child":
        result = _child_main(json.loads(argv[1]))
        print(json.dumps(result), flush=True)
        return 0
    print("usage: nntrtool bench (this module is the library behind it)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1:]))
    except NntrError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
