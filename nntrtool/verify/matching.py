"""Matching an NNTR file with its source by name and shape, and streaming the comparison.

Each tensor is compared in row chunks: dequantization and the float64 error sums both run on
every core (numba), while a second thread checks the tensors' CRC32s.
"""

from __future__ import annotations

import contextlib
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.model_config import ModelConfig
from nntrtool.progress import ProgressFactory, ProgressLike
from nntrtool.qtypes import F32
from nntrtool.sources.request import SourceRequest
from nntrtool.verify import report as status
from nntrtool.verify.metrics import DEFAULT_MAX_REL_ERR, ErrorStats, base_type
from nntrtool.verify.report import TensorResult, VerifyReport

#: Values per chunk: bounds memory (a chunk's source and dequantized copies, float32).
CHUNK_ELEMENTS = 1 << 22


def tied_head(config: dict) -> tuple[str, str] | None:
    """``(head, embedding)`` names when the file records that the output head is not stored."""
    return ModelConfig.of(config).tied_head()


def _not_stored_by_plan(config: dict) -> dict[str, str]:
    """Source tensors the file's plan says were deliberately not stored, with the reason."""
    skipped = ModelConfig.of(config).record.get("skipped")
    if not isinstance(skipped, dict):
        return {}
    return {str(name): str(reason) for name, reason in skipped.items()}


def _planned_types(config: dict) -> dict[str, str]:
    """Per-tensor stored type as the file's own plan record gives it (``q4_0_8``, ``f32`` ...)."""
    meta = ModelConfig.of(config).record
    plan = meta.get("tensors")
    if not isinstance(plan, dict):
        return {}
    return {
        str(name): str(item["type"])
        for name, item in plan.items()
        if isinstance(item, dict) and isinstance(item.get("type"), str)
    }


@dataclass
class _Job:
    """One comparison to run: a file tensor against a source tensor of the same shape."""

    result: TensorResult
    entry: Any  # format.TensorEntry
    source: Any  # sources.SourceTensor
    rows: int
    cols: int
    stats: ErrorStats = field(default_factory=ErrorStats)
    check: Future | None = None
    planned_type: str | None = None


def rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    cols = int(shape[-1]) if shape else 1
    numel = math.prod(shape) if shape else 1
    return (numel // cols if cols else 0), cols


def _chunk_rows(cols: int, group: int) -> int:
    rows = max(CHUNK_ELEMENTS // max(cols, 1), 1)
    # whole groups of 8 rows serve every repack layout
    return max(rows // group * group, group)


def verify(
    file_path: str | Path,
    source: SourceRequest | str | Path,
    *,
    max_rel_err: dict[str, float] | None = None,
    backend: str = "auto",
    threads: int | None = None,
    progress: ProgressFactory | None = None,
) -> VerifyReport:
    """Compare every tensor of the NNTR file with its source; the report says what passed.

    Streams each tensor in row chunks: dequantization and the float64 error sums both run on
    every core (numba), while a second thread checks the tensors' CRC32s. Mapped pages are
    released as soon as a chunk is done, so memory stays bounded by the chunk size.
    ``progress`` is opened once the inputs are known to be good.
    """
    from nntrtool.format import NntrFile
    from nntrtool.quant.backends import backend_choice
    from nntrtool.quant.kernel_cost import choose_backend

    source = SourceRequest.of(source)
    limits = dict(DEFAULT_MAX_REL_ERR if max_rel_err is None else max_rel_err)
    start_time = time.perf_counter()
    requested = backend_choice(backend)  # a bad name fails before any file is opened
    _set_threads(threads)
    with contextlib.ExitStack() as opened:
        nf = opened.enter_context(NntrFile(file_path))
        # a file converted with --gguf-raw-names: its GGUF read so again
        raw = source.gguf_raw_names or converted_raw(nf)
        src = opened.enter_context(SourceRequest.of(source, gguf_raw_names=raw).open())
        results, jobs = _match(nf, src, limits)
        backend = choose_backend(requested, _kernel_uses(jobs))
        total = sum(job.rows * job.cols for job in jobs)
        bar = progress(total, "verifying") if progress else contextlib.nullcontext(None)
        # One checksum thread: zlib releases the GIL, and numba kernels stay on this thread
        # (its default threading layer must not be entered from two threads at once).
        with bar as prog, ThreadPoolExecutor(max_workers=1) as pool:
            for job in jobs:
                job.check = pool.submit(_checksum_ok, nf, job.entry.name)
            _run_jobs(nf, jobs, backend, prog)
            for job in jobs:
                _finish(job, limits)
    return VerifyReport(
        file=str(file_path),
        source=str(source),
        tensors=results,
        thresholds=limits,
        seconds=time.perf_counter() - start_time,
    )


def converted_raw(nf: Any) -> bool:
    """Whether the file was converted with ``--gguf-raw-names`` (its GGUF is read so again)."""
    source = (nf.config.get("nntrtool") or {}).get("source") or {}
    return bool(source.get("gguf_raw_names"))


def _checksum_ok(nf: Any, name: str) -> bool:
    from nntrtool.memory import release_pages

    ok = nf.check(name)
    release_pages(nf.raw(name))
    return bool(ok)


def _set_threads(threads: int | None) -> None:
    if not threads:
        return
    import numba

    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


def _match(nf: Any, src: Any, limits: dict[str, float]) -> tuple[list[TensorResult], list[_Job]]:
    """Pair file tensors with source tensors by name; unpaired or misshapen ones are failures."""
    planned = _planned_types(nf.config)
    pairs: list[tuple[TensorResult, Any, Any]] = []  # (result, file entry, source tensor)
    results: list[TensorResult] = []
    source_by_name = {t.name: t for t in src.tensors}
    for entry in nf.tensors:
        result, st = _match_file_tensor(entry, source_by_name.get(entry.name), limits)
        results.append(result)
        if st is not None:
            pairs.append((result, entry, st))
    tied = tied_head(nf.config)
    skipped = _not_stored_by_plan(nf.config)
    entries = {e.name: e for e in nf.tensors}
    for st in src.tensors:
        if st.name in entries:
            continue
        if tied is not None and st.name == tied[0] and tied[1] in entries:
            result, emb = _match_tied_head(st, entries[tied[1]], limits)
            results.append(result)
            if emb is not None:
                pairs.append((result, emb, st))
        elif st.name in skipped:
            results.append(
                TensorResult(
                    st.name, None, tuple(st.shape), status.STATUS_OK, message=skipped[st.name]
                )
            )
        else:
            message = "in the source but not in the file"
            results.append(
                TensorResult(st.name, None, tuple(st.shape), status.STATUS_MISSING, message=message)
            )
    jobs = []
    for result, entry, st in pairs:
        rows, cols = rows_cols(tuple(entry.shape))
        job = _Job(result, entry, st, rows, cols, planned_type=planned.get(entry.name))
        jobs.append(job)
    return results, jobs


def _match_file_tensor(entry: Any, st: Any, limits: dict[str, float]) -> tuple[TensorResult, Any]:
    """The result for one file tensor, and its source tensor when the two can be compared."""
    shape = tuple(int(s) for s in entry.shape)
    tname = entry.display_type
    if st is None:
        message = "in the file but not in the source"
        return TensorResult(entry.name, tname, shape, status.STATUS_EXTRA, message=message), None
    if tuple(int(s) for s in st.shape) != shape:
        message = f"shape {list(shape)} in the file, {list(st.shape)} in the source"
        return TensorResult(entry.name, tname, shape, status.STATUS_SHAPE, message=message), None
    result = TensorResult(
        entry.name,
        tname,
        shape,
        status.STATUS_OK,
        params=math.prod(shape) if shape else 1,
        max_rel_err=limits.get(base_type(entry.ttype).name),
    )
    return result, st


def _match_tied_head(st: Any, emb: Any, limits: dict[str, float]) -> tuple[TensorResult, Any]:
    """The source head of a tied file against the embedding it is stored as."""
    shape = tuple(int(s) for s in emb.shape)
    if tuple(int(s) for s in st.shape) != shape:
        message = f"tied to {emb.name} of shape {list(shape)} but is {list(st.shape)}"
        return (
            TensorResult(
                st.name, emb.display_type, tuple(st.shape), status.STATUS_SHAPE, message=message
            ),
            None,
        )
    result = TensorResult(
        st.name,
        emb.display_type,
        shape,
        status.STATUS_TIED,
        params=math.prod(shape) if shape else 1,
        max_rel_err=limits.get(base_type(emb.ttype).name),
        message=f"tied: stored as {emb.name}",
    )
    return result, emb


def _kernel_uses(jobs: list[_Job]) -> list[Any]:
    """The kernels verifying ``jobs`` runs, for the backend choice."""
    from nntrtool.quant.kernel_cost import KernelUse, dequantize_use, repack_use

    uses = []
    for job in jobs:
        n = job.rows * job.cols
        if job.entry.ttype is not F32:
            uses.append(dequantize_use(base_type(job.entry.ttype).name, n))
            if job.entry.layout is not None:
                uses.append(repack_use(n, unpack=True))
        uses.append(KernelUse("error-sums", n))
    return uses


def _run_jobs(nf: Any, jobs: list[_Job], backend: str, progress: ProgressLike | None) -> None:
    from nntrtool.memory import release_pages
    from nntrtool.quant import dequantize, unpack

    for job in jobs:
        entry = job.entry
        if job.rows == 0 or job.cols == 0:
            continue
        # float32 values as they are; every other type as its stored bytes, for its dequantizer
        read = nf.array if entry.ttype is F32 else nf.raw
        data = read(entry.name).reshape(job.rows, -1)
        layout = entry.layout
        step = _chunk_rows(job.cols, layout.rows if layout is not None else 8)
        base = base_type(entry.ttype)
        for lo in range(0, job.rows, step):
            hi = min(lo + step, job.rows)
            ref = job.source.read_f32(lo, hi)
            chunk = data[lo:hi]
            if entry.ttype is F32:
                test = chunk
            else:
                if layout is not None:
                    chunk = unpack(np.ascontiguousarray(chunk), layout.name, backend=backend)
                test = dequantize(chunk, base.name, (hi - lo, job.cols), backend=backend)
            job.stats = job.stats.merge(ErrorStats.of_fast(ref, test, backend))
            release_pages(job.source.read(lo, hi))
            release_pages(data[lo:hi])
            if progress is not None:
                progress.advance((hi - lo) * job.cols, current=job.result.name)


def _finish(job: _Job, limits: dict[str, float]) -> None:
    r = job.result
    s = job.stats
    if job.rows == 0 or job.cols == 0 or (job.entry.ttype is F32 and s.bit_exact):
        # Bit-identical: no error at all, even where the values are inf (--allow-nonfinite).
        s = ErrorStats(count=s.count, bit_exact=True)
    r.rmse, r.max_abs_err, r.rel_err = s.rmse, s.max_abs, s.rel_err
    r.cosine, r.snr_db = s.cosine, s.snr_db
    r.checksum_ok = bool(job.check.result()) if job.check is not None else None
    problems: list[tuple[str, str]] = []
    if r.checksum_ok is False:
        problems.append(
            (status.STATUS_CHECKSUM, "checksum does not match the data: the file is corrupt")
        )
    if job.planned_type is not None and job.planned_type != job.entry.display_type:
        problems.append(
            (
                status.STATUS_PLAN,
                f"stored as {job.entry.display_type} but the file's plan records {job.planned_type}",
            )
        )
    if job.entry.ttype is F32:
        if not s.bit_exact:
            problems.append(
                (
                    status.STATUS_NOT_EXACT,
                    f"f32 tensor differs from the source (max abs err {s.max_abs:.3g})",
                )
            )
    else:
        limit = limits.get(base_type(job.entry.ttype).name)
        if limit is not None and not (r.rel_err <= limit):
            problems.append(
                (status.STATUS_OVER, f"relative error {r.rel_err:.4g} exceeds the limit {limit:g}")
            )
    if problems:
        r.status = problems[0][0]
        r.message = "; ".join(m for _, m in problems) + (f" ({r.message})" if r.message else "")
