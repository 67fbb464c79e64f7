"""Verification of an NNTR file against its source model.

Owns the error metrics (RMSE, max abs error, relative error, cosine similarity, SNR), their
streaming accumulation over row chunks in float64, the name/shape matching between a file and
its source, the per-type thresholds that decide pass or fail, the report (table rows, per-type
summary, JSON) and the logits check that runs the model with and without the file's weights.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import NntrError, UsageError
from nntrtool.progress import ProgressFactory, ProgressLike
from nntrtool.qtypes import F32, Q4_0, Q4_0_REPACKED, TensorType

#: Default largest relative error ``||x - x'|| / ||x||`` per stored type. Each is about twice
#: what the format gives on Gaussian weights (measured on 512 x 4096 N(0, 0.02): q4_0 0.086,
#: q6_k 0.018, q8_0 0.0054; heavy-tailed Student-t(3) weights give 0.127, 0.026, 0.0085), so
#: real weights pass and a wrong scale, layout or tensor does not. F32 must be bit-exact.
DEFAULT_MAX_REL_ERR: dict[str, float] = {"q4_0": 0.18, "q6_k": 0.04, "q8_0": 0.012, "f32": 0.0}

#: Values per chunk: bounds memory (a chunk's source and dequantized copies, float32).
CHUNK_ELEMENTS = 1 << 22
#: Values per slice inside a chunk when summing in float64: keeps the temporaries in cache.
_SLICE_ELEMENTS = 1 << 16

STATUS_OK = "ok"
STATUS_TIED = "tied"
STATUS_OVER = "over_threshold"
STATUS_NOT_EXACT = "not_exact"
STATUS_CHECKSUM = "bad_checksum"
STATUS_MISSING = "missing"
STATUS_EXTRA = "extra"
STATUS_SHAPE = "shape_mismatch"
STATUS_PLAN = "plan_mismatch"
#: Statuses that do not fail verification.
PASSING = frozenset({STATUS_OK, STATUS_TIED})



# ----------------------------------------------------------------------------------------------
# metrics


@dataclass
class ErrorStats:
    """Sums over the values compared so far, in float64, from which every metric follows.

    Chunks are summarised with :meth:`of` and combined with :meth:`merge`, so a tensor never
    has to be in memory at once and the result does not depend on the chunking (up to float64
    rounding).
    """

    count: int = 0
    sse: float = 0.0  # sum (x - x')^2
    ref_sq: float = 0.0  # sum x^2
    test_sq: float = 0.0  # sum x'^2
    dot: float = 0.0  # sum x * x'
    max_abs: float = 0.0
    bit_exact: bool = True

    @classmethod
    def of(cls, ref: np.ndarray, test: np.ndarray) -> ErrorStats:
        """Sums of one chunk: ``ref`` is the source, ``test`` the value read back (float32)."""
        ref = np.ascontiguousarray(ref, dtype=np.float32).reshape(-1)
        test = np.ascontiguousarray(test, dtype=np.float32).reshape(-1)
        if ref.shape != test.shape:
            raise ValueError(f"cannot compare {ref.shape} values with {test.shape}")
        s = cls(count=int(ref.size))
        s.bit_exact = bool(np.array_equal(ref.view(np.uint32), test.view(np.uint32)))
        for lo in range(0, ref.size, _SLICE_ELEMENTS):
            a = ref[lo : lo + _SLICE_ELEMENTS].astype(np.float64)
            b = test[lo : lo + _SLICE_ELEMENTS].astype(np.float64)
            d = a - b
            s.sse += float(np.dot(d, d))
            s.ref_sq += float(np.dot(a, a))
            s.test_sq += float(np.dot(b, b))
            s.dot += float(np.dot(a, b))
            m = float(np.max(np.abs(d))) if d.size else 0.0
            # A NaN must stick; Python's max() would keep or drop it depending on the order.
            s.max_abs = math.nan if math.isnan(m) or math.isnan(s.max_abs) else max(s.max_abs, m)
        return s

    @classmethod
    def of_fast(cls, ref: np.ndarray, test: np.ndarray) -> ErrorStats:
        """Same sums as :meth:`of` in one parallel pass (numba, every core), for the pipeline."""
        ref = np.ascontiguousarray(ref, dtype=np.float32).reshape(-1)
        test = np.ascontiguousarray(test, dtype=np.float32).reshape(-1)
        if ref.shape != test.shape:
            raise ValueError(f"cannot compare {ref.shape} values with {test.shape}")
        if ref.size == 0:
            return cls()
        parts = _block_sums_kernel()(ref.view(np.uint32), test.view(np.uint32))
        sums = parts[:, :4].sum(axis=0)
        has_nan = bool(np.isnan(parts[:, 0]).any())
        return cls(
            count=int(ref.size),
            sse=float(sums[0]),
            ref_sq=float(sums[1]),
            test_sq=float(sums[2]),
            dot=float(sums[3]),
            max_abs=math.nan if has_nan else float(parts[:, 4].max()),
            bit_exact=not bool(parts[:, 5].any()),
        )

    def merge(self, other: ErrorStats) -> ErrorStats:
        """The sums over both sets of values."""
        if math.isnan(self.max_abs) or math.isnan(other.max_abs):
            max_abs = math.nan
        else:
            max_abs = max(self.max_abs, other.max_abs)
        return ErrorStats(
            count=self.count + other.count,
            sse=self.sse + other.sse,
            ref_sq=self.ref_sq + other.ref_sq,
            test_sq=self.test_sq + other.test_sq,
            dot=self.dot + other.dot,
            max_abs=max_abs,
            bit_exact=self.bit_exact and other.bit_exact,
        )

    @property
    def rmse(self) -> float:
        return math.sqrt(self.sse / self.count) if self.count else 0.0

    @property
    def rel_err(self) -> float:
        """``||x - x'|| / ||x||``; 0 when both are zero, inf when only the source is zero."""
        if self.ref_sq == 0.0:
            return 0.0 if self.sse == 0.0 else math.inf
        return math.sqrt(self.sse) / math.sqrt(self.ref_sq)

    @property
    def cosine(self) -> float:
        """Cosine similarity; 1 when both are zero, 0 when only one is."""
        if self.ref_sq == 0.0 and self.test_sq == 0.0:
            return 1.0
        if self.ref_sq == 0.0 or self.test_sq == 0.0:
            return 0.0
        if self.sse == 0.0:
            return 1.0
        cos = self.dot / math.sqrt(self.ref_sq * self.test_sq)
        return min(max(cos, -1.0), 1.0)

    @property
    def snr_db(self) -> float:
        """``10 log10(sum x^2 / sum (x - x')^2)``; inf when there is no error at all."""
        if self.sse == 0.0:
            return math.inf
        if self.ref_sq == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.ref_sq / self.sse)


#: Values per block of the parallel sums: each block's float64 partial sums are added at the end.
_BLOCK = 4096


@functools.cache
def _block_sums_kernel() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The numba kernel behind :meth:`ErrorStats.of_fast`, compiled (and cached) on first use."""
    import numba

    @numba.njit(parallel=True, nogil=True, cache=True)
    def block_sums(ref_bits: np.ndarray, test_bits: np.ndarray) -> np.ndarray:
        # Per block: sse, ref_sq, test_sq, dot, max |d|, and whether any bits differ. A NaN
        # difference (NaN, or inf - inf) makes that block's sse NaN, which the caller checks.
        ref = ref_bits.view(np.float32)
        test = test_bits.view(np.float32)
        n = ref.size
        nblocks = (n + _BLOCK - 1) // _BLOCK
        out = np.zeros((nblocks, 6), dtype=np.float64)
        for blk in numba.prange(nblocks):
            lo = blk * _BLOCK
            hi = min(lo + _BLOCK, n)
            sse = 0.0
            rsq = 0.0
            tsq = 0.0
            dot = 0.0
            mx = 0.0
            diff = np.uint32(0)
            for i in range(lo, hi):
                a = np.float64(ref[i])
                b = np.float64(test[i])
                d = a - b
                sse += d * d
                rsq += a * a
                tsq += b * b
                dot += a * b
                mx = max(mx, abs(d))
                diff |= ref_bits[i] ^ test_bits[i]
            out[blk, 0] = sse
            out[blk, 1] = rsq
            out[blk, 2] = tsq
            out[blk, 3] = dot
            out[blk, 4] = mx
            out[blk, 5] = diff != 0
        return out

    return block_sums


def compare_arrays(ref: np.ndarray, test: np.ndarray) -> ErrorStats:
    """Metrics of ``test`` against ``ref`` in one call (both float32, same number of values)."""
    return ErrorStats.of(ref, test)


# ----------------------------------------------------------------------------------------------
# thresholds


def base_type(ttype: TensorType) -> TensorType:
    """The type whose values a tensor holds: repacked Q4_0 holds Q4_0 values."""
    return Q4_0 if ttype is Q4_0_REPACKED else ttype


def parse_thresholds(values: list[str] | None) -> dict[str, float]:
    """Turn ``--max-rel-err`` values (``X`` for every quantized type, or ``TYPE=X``) into limits.

    Starts from :data:`DEFAULT_MAX_REL_ERR`; raises ``UsageError`` on a bad value or type.
    """
    limits = dict(DEFAULT_MAX_REL_ERR)
    for raw in values or []:
        text = raw.strip()
        name, sep, number = text.rpartition("=")
        try:
            limit = float(number)
        except ValueError:
            raise UsageError(
                f"--max-rel-err {raw!r}: expected a number (0.1) or TYPE=NUMBER (q4_0=0.1)"
            ) from None
        if not limit >= 0.0:
            raise UsageError(f"--max-rel-err {raw!r}: the limit must be a number >= 0")
        if sep:
            key = name.strip().lower()
            if key not in limits:
                raise UsageError(
                    f"--max-rel-err {raw!r}: unknown type {name!r}; use one of "
                    + ", ".join(sorted(limits))
                )
            limits[key] = limit
        else:
            for key in limits:
                if key != F32.name:
                    limits[key] = limit
    return limits


# ----------------------------------------------------------------------------------------------
# report


@dataclass
class TensorResult:
    """The verdict on one tensor (one row of the table, one object of ``--json``)."""

    name: str
    type: str | None  # as users see it: q4_0, q4_0_8, q6_k, q8_0, f32 (None when not in the file)
    shape: tuple[int, ...] | None
    status: str
    params: int = 0
    rmse: float | None = None
    max_abs_err: float | None = None
    rel_err: float | None = None
    cosine: float | None = None
    snr_db: float | None = None
    checksum_ok: bool | None = None
    max_rel_err: float | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in PASSING

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "shape": list(self.shape) if self.shape is not None else None,
            "params": self.params,
            "rmse": _json_float(self.rmse),
            "max_abs_err": _json_float(self.max_abs_err),
            "rel_err": _json_float(self.rel_err),
            "cosine": _json_float(self.cosine),
            "snr_db": _json_float(self.snr_db),
            "checksum_ok": self.checksum_ok,
            "max_rel_err": self.max_rel_err,
            "status": self.status,
            "message": self.message,
        }


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class TypeSummary:
    """Mean and worst of each metric over the tensors of one type that were compared."""

    type: str
    tensors: int
    params: int
    failed: int
    mean: dict[str, float | None]
    worst: dict[str, float | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "tensors": self.tensors,
            "params": self.params,
            "failed": self.failed,
            "mean": {k: _json_float(v) for k, v in self.mean.items()},
            "worst": {k: _json_float(v) for k, v in self.worst.items()},
        }


#: Metric -> whether larger is worse (for the summary's "worst" and the table's order).
METRICS: dict[str, bool] = {
    "rmse": True,
    "max_abs_err": True,
    "rel_err": True,
    "cosine": False,
    "snr_db": False,
}


def summarize(results: list[TensorResult]) -> list[TypeSummary]:
    """Per-type mean and worst of every metric, over tensors that were compared."""
    by_type: dict[str, list[TensorResult]] = {}
    for r in results:
        if r.type is not None and r.rmse is not None:
            by_type.setdefault(r.type, []).append(r)
    out = []
    for tname in sorted(by_type):
        rows = by_type[tname]
        mean: dict[str, float | None] = {}
        worst: dict[str, float | None] = {}
        for metric, larger_is_worse in METRICS.items():
            values = [getattr(r, metric) for r in rows]
            if any(v != v for v in values):  # NaN anywhere: the type's figures are NaN
                mean[metric] = worst[metric] = math.nan
                continue
            finite = [v for v in values if math.isfinite(v)]
            mean[metric] = sum(finite) / len(finite) if finite else None
            worst[metric] = max(values) if larger_is_worse else min(values)
        out.append(
            TypeSummary(
                type=tname,
                tensors=len(rows),
                params=sum(r.params for r in rows),
                failed=sum(not r.ok for r in rows),
                mean=mean,
                worst=worst,
            )
        )
    return out


def worst_first(results: list[TensorResult]) -> list[TensorResult]:
    """Failures first, then by relative error, largest first (file order breaks ties)."""

    def key(item: tuple[int, TensorResult]) -> tuple[int, float, int]:
        i, r = item
        rel = r.rel_err if r.rel_err is not None else -1.0
        if rel != rel:
            rel = math.inf
        return (0 if not r.ok else 1, -rel, i)

    return [r for _, r in sorted(enumerate(results), key=key)]


@dataclass
class VerifyReport:
    """Everything ``verify`` found: per-tensor results, per-type summary and the verdict."""

    file: str
    source: str
    tensors: list[TensorResult]
    thresholds: dict[str, float]
    seconds: float = 0.0
    logits: LogitsReport | None = None
    max_kl: float | None = None

    @property
    def failures(self) -> list[TensorResult]:
        return [r for r in self.tensors if not r.ok]

    @property
    def logits_ok(self) -> bool:
        if self.logits is None or self.max_kl is None:
            return True
        return self.logits.kl_mean <= self.max_kl

    @property
    def passed(self) -> bool:
        return not self.failures and self.logits_ok

    @property
    def summary(self) -> list[TypeSummary]:
        return summarize(self.tensors)

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.tensors:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "file": self.file,
            "source": self.source,
            "passed": self.passed,
            "thresholds": {"max_rel_err": dict(self.thresholds), "max_kl": self.max_kl},
            "counts": counts,
            "params": sum(r.params for r in self.tensors if r.rmse is not None),
            "seconds": round(self.seconds, 3),
            "summary": [s.to_json() for s in self.summary],
            "tensors": [r.to_json() for r in worst_first(self.tensors)],
            "logits": self.logits.to_json() if self.logits is not None else None,
        }


# ----------------------------------------------------------------------------------------------
# matching a file with its source


def tied_head(config: dict) -> tuple[str, str] | None:
    """``(head, embedding)`` names when the file records that the output head is not stored."""
    meta = config.get("nntrtool") or {}
    tied = meta.get("tied")
    if isinstance(tied, dict):
        head = tied.get("head") or tied.get("lm_head")
        emb = tied.get("embedding") or tied.get("embed") or tied.get("to")
        if head and emb:
            return str(head), str(emb)
        return None
    if tied:
        head = meta.get("tied_head", "lm_head.weight")
        emb = meta.get("tied_embedding", "model.embed_tokens.weight")
        return str(head), str(emb)
    return None


def _not_stored_by_plan(config: dict) -> dict[str, str]:
    """Source tensors the file's plan says were deliberately not stored, with the reason."""
    skipped = (config.get("nntrtool") or {}).get("skipped")
    if not isinstance(skipped, dict):
        return {}
    return {str(name): str(reason) for name, reason in skipped.items()}


def _planned_types(config: dict) -> dict[str, str]:
    """Per-tensor stored type as the file's own plan record gives it (``q4_0_8``, ``f32`` ...)."""
    meta = config.get("nntrtool") or {}
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


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    cols = int(shape[-1]) if shape else 1
    numel = math.prod(shape) if shape else 1
    return (numel // cols if cols else 0), cols


def _chunk_rows(cols: int, group: int) -> int:
    rows = max(CHUNK_ELEMENTS // max(cols, 1), 1)
    # whole groups of 8 rows serve every repack layout
    return max(rows // group * group, group)


def verify(
    file_path: str | Path,
    source_spec: str | Path,
    *,
    max_rel_err: dict[str, float] | None = None,
    revision: str | None = None,
    config: str | Path | None = None,
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
    from nntrtool.quant import resolve_backend
    from nntrtool.sources import open_source

    limits = dict(DEFAULT_MAX_REL_ERR if max_rel_err is None else max_rel_err)
    start_time = time.perf_counter()
    backend = resolve_backend(backend)
    _set_threads(threads)
    with NntrFile(file_path) as nf, open_source(source_spec, revision=revision, config=config) as src:
        results, jobs = _match(nf, src, limits)
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
        source=str(source_spec),
        tensors=results,
        thresholds=limits,
        seconds=time.perf_counter() - start_time,
    )


def _checksum_ok(nf: Any, name: str) -> bool:
    from nntrtool.convert.memory import release_pages

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
    source_by_name = {t.name: t for t in src.tensors}
    file_names = {e.name for e in nf.tensors}
    results: list[TensorResult] = []
    jobs: list[_Job] = []

    planned = _planned_types(nf.config)

    def add_job(result: TensorResult, entry: Any, st: Any) -> None:
        rows, cols = _rows_cols(tuple(entry.shape))
        jobs.append(_Job(result=result, entry=entry, source=st, rows=rows, cols=cols,
                         planned_type=planned.get(entry.name)))

    for entry in nf.tensors:
        shape = tuple(int(s) for s in entry.shape)
        tname = entry.display_type
        st = source_by_name.get(entry.name)
        if st is None:
            results.append(
                TensorResult(
                    entry.name, tname, shape, STATUS_EXTRA,
                    message="in the file but not in the source",
                )
            )
            continue
        if tuple(int(s) for s in st.shape) != shape:
            results.append(
                TensorResult(
                    entry.name, tname, shape, STATUS_SHAPE,
                    message=f"shape {list(shape)} in the file, {list(st.shape)} in the source",
                )
            )
            continue
        result = TensorResult(
            entry.name, tname, shape, STATUS_OK, params=math.prod(shape) if shape else 1,
            max_rel_err=limits.get(base_type(entry.ttype).name),
        )
        results.append(result)
        add_job(result, entry, st)

    tied = tied_head(nf.config)
    skipped = _not_stored_by_plan(nf.config)
    entries = {e.name: e for e in nf.tensors}
    for st in src.tensors:
        if st.name in file_names:
            continue
        if tied is not None and st.name == tied[0] and tied[1] in entries:
            emb = entries[tied[1]]
            shape = tuple(int(s) for s in emb.shape)
            if tuple(int(s) for s in st.shape) != shape:
                results.append(
                    TensorResult(
                        st.name, emb.display_type, tuple(st.shape), STATUS_SHAPE,
                        message=f"tied to {tied[1]} of shape {list(shape)} but is {list(st.shape)}",
                    )
                )
                continue
            # The head is stored as the embedding: compare the source head with that tensor.
            result = TensorResult(
                st.name, emb.display_type, shape, STATUS_TIED,
                params=math.prod(shape) if shape else 1,
                max_rel_err=limits.get(base_type(emb.ttype).name),
                message=f"tied: stored as {tied[1]}",
            )
            results.append(result)
            add_job(result, emb, st)
        elif st.name in skipped:
            results.append(
                TensorResult(st.name, None, tuple(st.shape), STATUS_OK, message=skipped[st.name])
            )
        else:
            results.append(
                TensorResult(
                    st.name, None, tuple(st.shape), STATUS_MISSING,
                    message="in the source but not in the file",
                )
            )
    return results, jobs


def _run_jobs(nf: Any, jobs: list[_Job], backend: str, progress: ProgressLike | None) -> None:
    from nntrtool.convert.memory import release_pages
    from nntrtool.quant import dequantize, unpack

    for job in jobs:
        entry = job.entry
        if job.rows == 0 or job.cols == 0:
            continue
        data = nf.array(entry.name).reshape(job.rows, -1)
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
                    chunk = unpack(np.ascontiguousarray(chunk), layout.name)
                test = dequantize(chunk, base.name, (hi - lo, job.cols), backend=backend)
            job.stats = job.stats.merge(ErrorStats.of_fast(ref, test))
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
        problems.append((STATUS_CHECKSUM, "checksum does not match the data: the file is corrupt"))
    if job.planned_type is not None and job.planned_type != job.entry.display_type:
        problems.append((
            STATUS_PLAN,
            f"stored as {job.entry.display_type} but the file's plan records {job.planned_type}",
        ))
    if job.entry.ttype is F32:
        if not s.bit_exact:
            problems.append(
                (STATUS_NOT_EXACT, f"f32 tensor differs from the source (max abs err {s.max_abs:.3g})")
            )
    else:
        limit = limits.get(base_type(job.entry.ttype).name)
        if limit is not None and not (r.rel_err <= limit):
            problems.append(
                (STATUS_OVER, f"relative error {r.rel_err:.4g} exceeds the limit {limit:g}")
            )
    if problems:
        r.status = problems[0][0]
        r.message = "; ".join(m for _, m in problems) + (
            f" ({r.message})" if r.message else ""
        )


# ----------------------------------------------------------------------------------------------
# logits


@dataclass
class LogitsReport:
    """How much the file's weights change what the model predicts on a fixed prompt."""

    tokens: list[int]
    kl_mean: float
    kl_max: float
    top1_agreement: float
    max_logit_diff: float
    replaced: int
    not_replaced: list[str]
    unused: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": list(self.tokens),
            "positions": len(self.tokens),
            "kl_mean": _json_float(self.kl_mean),
            "kl_max": _json_float(self.kl_max),
            "top1_agreement": _json_float(self.top1_agreement),
            "max_logit_diff": _json_float(self.max_logit_diff),
            "replaced": self.replaced,
            "not_replaced": list(self.not_replaced),
            "unused": list(self.unused),
        }


#: Length of the default prompt.
DEFAULT_PROMPT_LENGTH = 64


def default_tokens(vocab_size: int, length: int = DEFAULT_PROMPT_LENGTH) -> list[int]:
    """A fixed prompt of token ids spread over the vocabulary (same ids on every run)."""
    if vocab_size < 2:
        return [0] * length
    # A multiplicative walk over the ids: deterministic, covers the vocabulary evenly.
    return [(1 + i * 7919) % vocab_size for i in range(length)]


def parse_tokens(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; ``UsageError`` on anything else."""
    try:
        tokens = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise UsageError(f"--tokens {text!r}: expected comma-separated token ids like 1,2,3") from None
    if not tokens or any(t < 0 for t in tokens):
        raise UsageError(f"--tokens {text!r}: expected one or more non-negative token ids")
    return tokens


def logits_divergence(ref: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per-position KL(P_ref || P_test) of the softmax distributions (float64), top-1 agreement
    and the largest absolute logit difference, for ``(positions, vocab)`` logits."""
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(test, dtype=np.float64)
    la = a - a.max(axis=-1, keepdims=True)
    la = la - np.log(np.exp(la).sum(axis=-1, keepdims=True))
    lb = b - b.max(axis=-1, keepdims=True)
    lb = lb - np.log(np.exp(lb).sum(axis=-1, keepdims=True))
    kl = (np.exp(la) * (la - lb)).sum(axis=-1)
    kl = np.maximum(kl, 0.0)  # rounding can give -1e-17 for identical rows
    top1 = float(np.mean(a.argmax(axis=-1) == b.argmax(axis=-1)))
    return kl, top1, float(np.max(np.abs(a - b)))


def _import_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise UsageError(
            "--logits needs torch and transformers: pip install 'nntrtool[torch]'"
        ) from None
    return torch, transformers


def _load_model(src: Any, torch: Any, transformers: Any) -> Any:
    """The source model in float32, from its folder when there is one, else from its tensors."""
    root = getattr(src, "root", None)
    cfg = dict(src.config)
    tf_logging = transformers.utils.logging
    bar_was_on, verbosity = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
    # transformers' own loading bar and notices would interleave with nntrtool's output
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        if root is not None and (Path(root) / "config.json").is_file() and any(
            Path(root).glob(pattern)
            for pattern in ("*.safetensors", "pytorch_model*.bin")
        ):
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(root), dtype=torch.float32, local_files_only=True
            )
        else:
            config = transformers.AutoConfig.for_model(**cfg)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            state = model.state_dict()
            for t in src.tensors:
                if t.name in state:
                    value = torch.from_numpy(np.ascontiguousarray(t.read_f32()))
                    with torch.no_grad():
                        state[t.name].copy_(value.reshape(state[t.name].shape))
    except NntrError:
        raise
    except Exception as err:  # transformers raises many kinds; the user needs one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--logits: transformers cannot load the source model: {first}") from None
    finally:
        if bar_was_on:
            tf_logging.enable_progress_bar()
        tf_logging.set_verbosity(verbosity)
    model.eval()
    return model


def compare_logits(
    file_path: str | Path,
    source_spec: str | Path,
    *,
    tokens: list[int] | None = None,
    revision: str | None = None,
    config: str | Path | None = None,
    backend: str = "auto",
    progress: ProgressFactory | None = None,
) -> LogitsReport:
    """Run the source model on a fixed prompt, then with every weight replaced by the file's
    dequantized value, and measure how far the next-token distributions moved."""
    torch, transformers = _import_torch()
    from nntrtool.format import NntrFile
    from nntrtool.sources import open_source

    with open_source(source_spec, revision=revision, config=config) as src:
        model = _load_model(src, torch, transformers)
        source_names = {t.name for t in src.tensors}
    vocab = int(model.get_input_embeddings().weight.shape[0])
    ids = list(tokens) if tokens else default_tokens(vocab)
    bad = [t for t in ids if t >= vocab]
    if bad:
        raise UsageError(f"--tokens: id {bad[0]} is outside the vocabulary (size {vocab})")
    input_ids = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        ref = model(input_ids=input_ids).logits[0].double().numpy()

    state = model.state_dict()
    replaced: set[str] = set()
    unused: list[str] = []
    with NntrFile(file_path) as nf:
        tied = tied_head(nf.config)
        total = sum(math.prod(e.shape) for e in nf.tensors if e.name in state)
        bar = progress(total, "loading weights") if progress else contextlib.nullcontext(None)
        with bar as prog:
            _replace_weights(nf, state, replaced, unused, backend, prog)
        if tied is not None and tied[0] in state and tied[0] not in replaced:
            head, emb = state[tied[0]], state.get(tied[1])
            if emb is not None and tied[1] in replaced:
                if head.data_ptr() != emb.data_ptr():
                    with torch.no_grad():
                        head.copy_(emb)
                replaced.add(tied[0])
    # Parameters the model shares (tied weights) count as replaced through either name.
    ptr_replaced = {state[n].data_ptr() for n in replaced}
    not_replaced = sorted(
        n for n, v in state.items()
        if n not in replaced and v.data_ptr() not in ptr_replaced and n in source_names
    )
    with torch.no_grad():
        test = model(input_ids=input_ids).logits[0].double().numpy()
    kl, top1, max_diff = logits_divergence(ref, test)
    return LogitsReport(
        tokens=ids,
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
        top1_agreement=top1,
        max_logit_diff=max_diff,
        replaced=len(replaced),
        not_replaced=not_replaced,
        unused=unused,
    )


def _replace_weights(
    nf: Any, state: dict, replaced: set[str], unused: list[str], backend: str,
    progress: ProgressLike | None,
) -> None:
    """Copy every file tensor the model has, dequantized, into the model's state in place."""
    import torch

    from nntrtool.quant import dequantize, unpack
    from nntrtool.sources.transforms import placements_for

    placements = placements_for(nf.config)
    for entry in nf.tensors:
        key, index, transpose = entry.name, (), False
        if entry.name not in state:
            # A stored tensor that is a slice of a fused module parameter (MoE experts).
            slot = next((p.resolve(entry.name) for p in placements if p.resolve(entry.name)), None)
            if slot is None or slot[0] not in state:
                unused.append(entry.name)
                continue
            key, index, transpose = slot
        target = state[key][index] if index else state[key]
        shape = tuple(int(s) for s in entry.shape)
        want = tuple(reversed(shape)) if transpose else shape
        if tuple(target.shape) != want:
            raise NntrError(
                f"--logits: {entry.name} is {list(shape)} in the file but "
                f"{list(target.shape)} in the model"
            )
        value = _read_dequantized(nf, entry, dequantize, unpack, backend)
        value = value.T if transpose else value
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)).reshape(target.shape))
        replaced.add(key)
        if progress is not None:
            progress.advance(value.size, current=entry.name)


def _read_dequantized(nf: Any, entry: Any, dequantize: Any, unpack: Any, backend: str) -> np.ndarray:
    """A whole tensor of the file as float32 of its shape (unpacked first when repacked)."""
    shape = tuple(int(s) for s in entry.shape)
    if entry.ttype is F32:
        return np.array(nf.array(entry.name), dtype=np.float32).reshape(shape)
    rows, cols = _rows_cols(shape)
    data = nf.array(entry.name).reshape(rows, -1)
    if entry.layout is not None:
        data = unpack(np.ascontiguousarray(data), entry.layout.name)
    out = dequantize(data, base_type(entry.ttype).name, (rows, cols), backend=backend)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)
