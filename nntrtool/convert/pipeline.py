"""The conversion pipeline: source -> plan -> quantize in row chunks -> streaming NNTR writer.

Each tensor is cut into row chunks of a fixed budget of source bytes, so memory is bounded by
that budget and not by the model. Three things overlap: a prefetch thread maps the coming
chunks' file pages, worker threads quantize one chunk each (the numba kernels release the GIL),
and the calling thread writes finished chunks in order and then drops their source pages from
the process. Errors and Ctrl-C leave no output behind (the writer is atomic).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.convert.report import ConversionReport
from nntrtool.errors import DiskFullError, NonFiniteError, UsageError
from nntrtool.memory import prefault, release_pages
from nntrtool.plan.options import ConvertOptions
from nntrtool.plan.tensors import ConversionPlan, TensorPlan, make_plan
from nntrtool.progress import ProgressFactory
from nntrtool.quant.range_check import first_overflow, largest_magnitude

#: Chunks queued beyond one per worker: enough to overlap, few enough to bound memory.
_QUEUE_DEPTH = 2
#: Most worker threads; on machines with more cores each worker's kernels use several threads.
_MAX_WORKERS = 4


class _NonFiniteChunk(Exception):
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


class _OutOfRangeChunk(Exception):
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


def check_output(out_path: str | Path, force: bool) -> Path:
    """The output path, after checking it can be written (folder exists, not clobbered, and
    with ``force`` only an earlier NNTR file is replaced)."""
    from nntrtool.outputs import check_output_path

    return check_output_path(out_path, force, "nntr")


def check_disk_space(out: Path, needed: int) -> None:
    """DiskFullError unless the output's file system has ``needed`` bytes free."""
    from nntrtool.units import human_bytes

    parent = out.parent if str(out.parent) else Path(".")
    free = shutil.disk_usage(parent).free
    if out.is_file():
        free += out.stat().st_size  # an output being replaced frees its space at the end
    if free < needed:
        raise DiskFullError(
            f"not enough disk space for {str(out)!r}: it needs {human_bytes(needed)}, only "
            f"{human_bytes(free)} free on {str(parent)!r}; free some space or write elsewhere"
        )


def open_for(source_spec: str | Path, options: ConvertOptions) -> Any:
    """The source as ``options`` asks for it: revision, config, GGUF file, merged adapters."""
    return options.source(source_spec).open()


def plan_conversion(source_spec: str | Path, options: ConvertOptions) -> ConversionPlan:
    """Open the source and make its plan (what ``convert --dry-run`` and ``verify`` need)."""
    with open_for(source_spec, options) as src:
        return make_plan(src, options)


def convert(
    source_spec: str | Path,
    out_path: str | Path | None,
    options: ConvertOptions,
    progress: ProgressFactory | None = None,
) -> ConversionReport:
    """Convert a model (folder, file or hub id) to an NNTR file at ``out_path``.

    With ``options.dry_run`` only the plan is made and nothing is written (``out_path`` may be
    ``None``). Every user-caused problem raises an :class:`~nntrtool.errors.NntrError`.
    """
    start = time.perf_counter()
    out = None
    if not options.dry_run:
        if out_path is None:
            raise UsageError("give an output file name")
        out = check_output(out_path, options.force)
    with open_for(source_spec, options) as src:
        plan = make_plan(src, options)
        if options.dry_run:
            plan = _plan_range_fallbacks(plan, src, options, progress)
            return ConversionReport(plan, None, True, seconds=time.perf_counter() - start)
        assert out is not None
        # A plan of copied blocks and float tensors runs no kernel: numba is not even imported.
        backend, threads = (
            _setup_backend(options, plan)
            if _needs_kernels(plan)
            else ("numpy", int(options.threads or os.cpu_count() or 1))
        )
        by_name = {t.name: t for t in src.tensors}
        nonfinite: dict[str, str] = {}
        while True:
            check_disk_space(out, plan.predicted_size)
            write_start = time.perf_counter()
            try:
                stages: dict[str, float] = {}
                found = _write(
                    plan, by_name, out, options, backend, threads, progress, stages,
                    src.check_unchanged,
                )  # fmt: skip
            except _OutOfRangeChunk as big:
                if options.strict:
                    raise big.user_error() from None
                plan = plan.store_f32({big.name: big.reason()})
                continue
            except _NonFiniteChunk as bad:
                if not options.allow_nonfinite:
                    raise bad.user_error() from None
                # Sizes are fixed in the directory before data is written, so the plan is
                # redone once with every non-finite quantized tensor stored as f32.
                reasons = _scan_nonfinite(plan, by_name)
                reasons.setdefault(bad.name, _nonfinite_reason(bad.row, bad.col, bad.value))
                nonfinite.update(reasons)
                plan = plan.store_f32(reasons)
                continue
            for name, reason in found:
                nonfinite.setdefault(name, reason)
            break
        end = time.perf_counter()
    return ConversionReport(
        plan,
        out,
        False,
        seconds=end - start,
        write_seconds=end - write_start,
        backend=backend,
        threads=threads,
        file_size=out.stat().st_size,
        nonfinite=list(nonfinite.items()),
        stages=stages,
    )


def _plan_range_fallbacks(
    plan: ConversionPlan, src: Any, options: ConvertOptions, progress: ProgressFactory | None
) -> ConversionPlan:
    """The dry run's plan with the tensors the conversion would find out of their type's
    range stored as f32, as it would (refused under ``--strict``); reads every tensor once."""
    from nntrtool.convert.range_scan import scan_ranges

    by_name = {t.name: t for t in src.tensors}
    bar = progress(plan.params, "checking value ranges") if progress else None
    with bar if bar is not None else contextlib.nullcontext(None) as prog:
        advance = (lambda n, name: prog.advance(n, current=name)) if prog is not None else None
        found = scan_ranges(plan, by_name, options.chunk_bytes, advance)
    src.check_unchanged()
    if found and options.strict:
        raise next(iter(found.values())).user_error() from None
    return plan.store_f32({name: big.reason() for name, big in found.items()})


def _nonfinite_reason(row: int, col: int, value: float) -> str:
    what = "NaN" if math.isnan(value) else str(value)
    return f"holds {what} at row {row}, column {col}: stored as f32 (--allow-nonfinite)"


def _needs_kernels(plan: ConversionPlan) -> bool:
    """Whether any tensor is quantized, repacked or dequantized (rather than copied or
    widened from float)."""
    from nntrtool.sources import READABLE_DTYPES

    return any(
        not (tp.copy_blocks and tp.layout is None)
        and (tp.encoded or tp.source_dtype not in READABLE_DTYPES)
        for tp in plan.tensors
    )


def _setup_backend(options: ConvertOptions, plan: ConversionPlan) -> tuple[str, int]:
    from nntrtool.quant.kernel_cost import choose_backend

    backend = choose_backend(options.backend, _kernel_uses(plan))
    cores = os.cpu_count() or 1
    threads = int(options.threads) if options.threads else cores
    if backend == "numba":
        import numba

        threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    return backend, threads


def _kernel_uses(plan: ConversionPlan) -> list[Any]:
    """The kernels the plan runs, for the backend choice (a small model skips the compile)."""
    from nntrtool.quant.kernel_cost import quantize_use, repack_use

    uses = []
    for tp in plan.tensors:
        if tp.copy_blocks:
            if tp.layout is not None:
                uses.append(repack_use(tp.numel))
        elif tp.encoded:
            weighted = tp.importance is not None
            dtype = "F32" if tp.requantized else tp.source_dtype
            uses.append(quantize_use(tp.quant_name, dtype, tp.numel, imatrix=weighted))
            if tp.layout is not None:
                uses.append(repack_use(tp.numel))
    return uses


def _chunk_rows(tp: TensorPlan, row_bytes: int, budget: int) -> int:
    """Rows per chunk: the budget's worth, a multiple of 8 so repack groups are never split."""
    rows = tp.rows
    per = max(1, budget // max(1, row_bytes))
    if per >= rows:
        return rows
    return max(8, per // 8 * 8)


def _chunks(tp: TensorPlan, src_tensor: Any, budget: int) -> Iterator[tuple[int, int]]:
    rows = tp.rows
    if rows == 0 or tp.numel == 0:
        return
    row_bytes = max(1, int(src_tensor.nbytes) // max(1, rows))
    if getattr(src_tensor, "blocked", False) and not tp.copy_blocks:
        row_bytes = max(row_bytes, tp.cols * 4)  # blocks are dequantized to float32 first
    step = _chunk_rows(tp, row_bytes, budget)
    for begin in range(0, rows, step):
        yield begin, min(rows, begin + step)


def _to_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    from nntrtool.quant.common import source_kind, to_f32
    from nntrtool.sources.base import BLOCK_DTYPES, decode_blocks

    block = BLOCK_DTYPES.get(dtype)
    if block is not None:  # GGUF blocks: dequantized to their exact float32 values
        return decode_blocks(x, dtype, x.shape[1] // block[1] * block[0])
    return to_f32(x, source_kind(dtype))


def _first_nonfinite(x: np.ndarray) -> tuple[int, int, float] | None:
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    row, col = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return int(row), int(col), float(x[row, col])


class _Work:
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
            data = _to_f32(self.x, tp.source_dtype)
            if self.check_f32:
                self.f32_nonfinite = _first_nonfinite(data.reshape(data.shape[0], -1))
            return data
        x, dtype = self.x, tp.source_dtype
        if tp.requantized:
            x, dtype = _to_f32(x, dtype), "F32"
        try:
            q = quantize(
                x,
                tp.quant_name,
                backend=self.backend,
                source_dtype=dtype,
                imatrix=self.imatrix,
            )
        except NonFiniteError as err:
            raise _NonFiniteChunk(
                tp.name, self.begin + max(err.row, 0), max(err.col, 0), err.value
            ) from None
        row = first_overflow(q, tp.quant_name)
        if row is not None:
            xf = x if dtype == "F32" else _to_f32(x, dtype)
            raise _OutOfRangeChunk(tp.name, tp.quant_name, self.begin + row, largest_magnitude(xf))
        if tp.layout is not None:
            q = repack(q, tp.layout.name, backend=self.backend)
        return q


def _prepare_kernels(plan: ConversionPlan, backend: str, prog: Any) -> None:
    """Run every kernel the plan needs once, on one tiny block, before the first chunk.

    On a machine's first run the JIT compiles them (seconds; cached on disk afterwards), and
    the progress display says so instead of showing a bar that seems stuck at 0%.
    """
    from nntrtool.quant import quantize, repack
    from nntrtool.quant.kernel_cost import is_compiled, quantize_use
    from nntrtool.sources import READABLE_DTYPES

    if backend == "numpy":  # nothing to compile
        return
    seen: set[tuple[str, str, str, bool]] = set()
    for tp in plan.tensors:
        dtype = "F32" if tp.requantized else tp.source_dtype
        if not tp.encoded or dtype not in READABLE_DTYPES:
            continue
        layout = tp.layout.name if tp.layout is not None else ""
        weighted = tp.importance is not None
        key = (tp.quant_name, dtype, layout, weighted)
        if key in seen:
            continue
        seen.add(key)
        if prog is not None:
            use = quantize_use(tp.quant_name, dtype, 0, imatrix=weighted)
            cached = is_compiled(use.kernel)
            what = "loading" if cached else "compiling"
            prog.advance(
                0, current=f"{what} the {tp.quant_name} kernel (compiled once, then cached)"
            )
        rows = tp.layout.rows if tp.layout is not None else 1
        block = np.zeros((rows, tp.ttype.block_size), READABLE_DTYPES[dtype])
        qw = np.ones(tp.ttype.block_size, np.float32) if weighted else None
        q = quantize(block, tp.quant_name, backend=backend, source_dtype=dtype, imatrix=qw)
        if layout:
            repack(q, layout, backend=backend)


def _pool_shape(backend: str, threads: int) -> tuple[int, int]:
    """(worker threads, kernel threads per worker) for ``threads`` threads in all.

    Several single-threaded kernel calls on separate chunks beat one call spread over every
    core: a parallel call waits for its slowest thread, and the writing thread (or any other
    process) keeps taking a core away from one of them. Workers are capped so that the chunks
    in flight, and so memory, stay bounded on many-core machines.
    """
    if backend == "cupy":
        return 1, 1
    if backend == "numba" and not _numba_calls_may_overlap():
        return 1, threads
    workers = min(threads, _MAX_WORKERS)
    return workers, max(1, threads // workers)


def _numba_calls_may_overlap() -> bool:
    """Whether numba's threading layer takes parallel calls from several threads at once
    (omp and tbb do; the fallback workqueue layer aborts the process instead)."""
    import numba

    try:  # starts numba's threads, which picks the layer, without compiling a kernel
        from numba.np.ufunc.parallel import _launch_threads

        _launch_threads()
    except (ImportError, AttributeError):
        from nntrtool.quant import quantize

        quantize(np.zeros((1, 32), np.float32), "q4_0", backend="numba")
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:
        return False


def _worker_init(backend: str, threads: int) -> Callable[[], None]:
    def init() -> None:
        # numba's thread count is per calling thread, so it is set on the worker itself.
        if backend == "numba":
            import numba

            numba.set_num_threads(threads)

    return init


def _write(
    plan: ConversionPlan,
    by_name: dict[str, Any],
    out: Path,
    options: ConvertOptions,
    backend: str,
    threads: int,
    progress: ProgressFactory | None,
    stages: dict[str, float],
    check_source: Callable[[], None] = lambda: None,
) -> list[tuple[str, str]]:
    """Write the file; returns f32 tensors found holding NaN/inf (only with allow_nonfinite).
    ``check_source`` raises when the source changed while it was read: the file is then not
    given its name."""
    from nntrtool.format import NntrWriter

    workers, per_worker = _pool_shape(backend, threads)
    depth = workers + _QUEUE_DEPTH - 1
    stored_nonfinite: list[tuple[str, str]] = []
    prog_cm = progress(plan.params, "converting") if progress else contextlib.nullcontext(None)
    pool = ThreadPoolExecutor(
        workers, thread_name_prefix="nntr-quant", initializer=_worker_init(backend, per_worker)
    )
    fetcher = ThreadPoolExecutor(1, thread_name_prefix="nntr-prefetch")
    pending: deque[tuple[_Work, Future[np.ndarray]]] = deque()
    try:
        with (
            NntrWriter(out, plan.file_config(), plan.specs, force=options.force) as writer,
            prog_cm as prog,
        ):
            _prepare_kernels(plan, backend, prog)

            def drain() -> None:
                work, fut = pending.popleft()
                t0 = time.perf_counter()
                data = fut.result()
                t1 = time.perf_counter()
                if work.f32_nonfinite is not None:
                    row, col, value = work.f32_nonfinite
                    if not options.allow_nonfinite:
                        raise _NonFiniteChunk(work.tp.name, work.begin + row, col, value)
                    if not any(n == work.tp.name for n, _ in stored_nonfinite):
                        what = "NaN" if math.isnan(value) else str(value)
                        stored_nonfinite.append(
                            (
                                work.tp.name,
                                f"holds {what} at row {work.begin + row}, column "
                                f"{col}: kept as f32 (--allow-nonfinite)",
                            )
                        )
                writer.write(work.tp.name, data)
                t2 = time.perf_counter()
                release_pages(work.x)
                t3 = time.perf_counter()
                for key, value in (
                    ("wait", t1 - t0),
                    ("write", t2 - t1),
                    ("release", t3 - t2),
                    *work.seconds.items(),
                ):
                    stages[key] = stages.get(key, 0.0) + value
                if prog is not None:
                    done = work.x.shape[0] * work.tp.cols if work.tp.numel else 0
                    prog.advance(done, current=work.tp.name)

            for tp in plan.tensors:
                st = by_name[tp.name]
                for begin, stop in _chunks(tp, st, options.chunk_bytes):
                    encoded = _encoded_rows(st, tp, begin, stop)
                    # the rows are read on the prefetch thread, overlapping the kernels
                    x = encoded
                    pre = (
                        fetcher.submit(_fetch, st, begin, stop)
                        if x is None
                        else fetcher.submit(prefault, x)
                    )
                    work = _Work(
                        tp, x, begin, backend, True, pre, plan.importance.get(tp.name),
                        encoded=encoded is not None,
                    )  # fmt: skip
                    pending.append((work, pool.submit(work)))
                    while len(pending) > depth:
                        drain()
            while pending:
                drain()
            check_source()
            closing = time.perf_counter()
        stages["close"] = time.perf_counter() - closing
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        fetcher.shutdown(wait=True, cancel_futures=True)
    return stored_nonfinite


def _fetch(st: Any, begin: int, stop: int) -> np.ndarray:
    """Rows ``begin:stop`` of a source tensor, with their pages in memory."""
    x = st.read(begin, stop)
    prefault(x)
    return x


def _encoded_rows(st: Any, tp: TensorPlan, begin: int, stop: int) -> np.ndarray | None:
    """The rows as ``tp``'s blocks when the source holds them exactly so (MXFP4 in Q8_0)."""
    encode = getattr(st, "encoded_rows", None)
    if encode is None or not tp.quantized:
        return None
    return encode(tp.quant_name, begin, stop)


def _scan_nonfinite(plan: ConversionPlan, by_name: dict[str, Any]) -> dict[str, str]:
    """Every quantized tensor of the plan holding NaN/inf, with the reason it goes to f32."""
    found: dict[str, str] = {}
    for tp in plan.tensors:
        if not tp.encoded:
            continue
        st = by_name[tp.name]
        for begin, stop in _chunks(tp, st, 8 << 20):
            x = st.read(begin, stop)
            hit = _first_nonfinite(_to_f32(x, tp.source_dtype))
            release_pages(x)
            if hit is not None:
                found[tp.name] = _nonfinite_reason(begin + hit[0], hit[1], hit[2])
                break
    return found
