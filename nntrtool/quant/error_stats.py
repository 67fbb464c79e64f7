"""Error statistics of values read back against their source, summed in float64 over chunks.

:class:`ErrorStats` is what verify reports per tensor and what the benchmarks use to check a
kernel; a numba kernel sums large chunks in parallel (:meth:`ErrorStats.of_fast`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .kernel_cost import mark_compiled

#: Values per slice inside a chunk when summing in float64: keeps the temporaries in cache.
_SLICE_ELEMENTS = 1 << 16


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
    def of_fast(cls, ref: np.ndarray, test: np.ndarray, backend: str = "numba") -> ErrorStats:
        """Same sums as :meth:`of` in one parallel pass (numba, every core), for the pipeline;
        ``backend="numpy"`` gives the very same bits without compiling anything."""
        ref = np.ascontiguousarray(ref, dtype=np.float32).reshape(-1)
        test = np.ascontiguousarray(test, dtype=np.float32).reshape(-1)
        if ref.shape != test.shape:
            raise ValueError(f"cannot compare {ref.shape} values with {test.shape}")
        if ref.size == 0:
            return cls()
        if backend == "numpy":
            parts = _block_sums_numpy(ref, test)
        else:
            parts = _block_sums_kernel()(ref.view(np.uint32), test.view(np.uint32))
            mark_compiled("error-sums")
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


def _block_sums_numpy(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The numba kernel's per-block sums, bit for bit: ``cumsum`` adds in the kernel's order."""
    n = ref.size
    nblocks = -(-n // _BLOCK)
    out = np.zeros((nblocks, 6), dtype=np.float64)
    per_slice = 64  # blocks at a time: a few MB of float64 temporaries
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN are results here
        for b0 in range(0, nblocks, per_slice):
            _block_sums_slice(ref, test, out, b0, min(nblocks, b0 + per_slice))
    return out


def _block_sums_slice(ref: np.ndarray, test: np.ndarray, out: np.ndarray, b0: int, b1: int) -> None:
    """Fill rows ``b0:b1`` of the block sums."""
    lo, hi = b0 * _BLOCK, min(ref.size, b1 * _BLOCK)
    # Zero padding changes no sum: the kernel's sums start at +0.0 too.
    a = np.zeros((b1 - b0) * _BLOCK, dtype=np.float64)
    b = np.zeros_like(a)
    a[: hi - lo] = ref[lo:hi]
    b[: hi - lo] = test[lo:hi]
    a, b = a.reshape(-1, _BLOCK), b.reshape(-1, _BLOCK)
    d = a - b
    for col, terms in enumerate((d * d, a * a, b * b, a * b)):
        # + 0.0 as the kernel's "0.0 + first term": it turns a -0.0 sum into +0.0
        out[b0:b1, col] = np.cumsum(terms, axis=1)[:, -1] + 0.0
    out[b0:b1, 4] = np.fmax.reduce(np.abs(d), axis=1, initial=0.0)  # the kernel skips NaN
    diff = np.zeros(a.size, dtype=bool)
    diff[: hi - lo] = ref[lo:hi].view(np.uint32) != test[lo:hi].view(np.uint32)
    out[b0:b1, 5] = diff.reshape(-1, _BLOCK).any(axis=1)


def compare_arrays(ref: np.ndarray, test: np.ndarray) -> ErrorStats:
    """Metrics of ``test`` against ``ref`` in one call (both float32, same number of values)."""
    return ErrorStats.of(ref, test)
