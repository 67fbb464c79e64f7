"""Q6_K speed, side by side with ggml's C reference quantizer on one thread.

    python benchmarks/bench_q6_k.py [--rows 4096] [--cols 4096] [--repeat 5]

Times quantize and dequantize of a float32 matrix (normal weights) with the numba kernels (all
cores, then one thread), the numpy array code, and ggml's ``ggml_quantize_chunk`` /
``dequantize_row_q6_K`` through ctypes (``ggml-python``). Every result is checked against
ggml's bytes before its time is reported. The cases run interleaved, ``--repeat`` times
each; the table gives the best and median wall-clock rate and the rate per CPU-second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ggml_oracle import ggml_dequantize, ggml_quantize  # noqa: E402

from nntrtool.qtypes import Q6_K  # noqa: E402
from nntrtool.quant import q6_k  # noqa: E402
from nntrtool.quant.common import SRC_F32  # noqa: E402


class _Case:
    """One timed function: wall and process CPU seconds of each run."""

    def __init__(self, name: str, count: int, fn: Callable[[], object], threads: int = 0):
        self.name, self.count, self.fn, self.threads = name, count, fn, threads
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self) -> object:
        import numba

        if self.threads:
            numba.set_num_threads(self.threads)
        w0, c0 = time.perf_counter(), time.process_time()
        result = self.fn()
        self.wall.append(time.perf_counter() - w0)
        self.cpu.append(time.process_time() - c0)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--numpy-rows", type=int, default=512, help="rows for the slow numpy run")
    args = parser.parse_args(argv)

    import numba

    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    n = x.size
    xs = x[: args.numpy_rows]
    threads = numba.config.NUMBA_NUM_THREADS

    t0 = time.perf_counter()
    q6_k.quantize_numba(x[:1], SRC_F32)
    q6_k.dequantize_numba(np.zeros((1, Q6_K.block_bytes), np.uint8))
    first_call = time.perf_counter() - t0

    want = ggml_quantize(x, "q6_k")
    ref = ggml_dequantize(want, "q6_k", args.cols)
    ggml_q = _Case("quantize   ggml C reference, 1 thread", n, lambda: ggml_quantize(x, "q6_k"))
    quant = [
        ggml_q,
        _Case(
            f"quantize   numba, {threads} threads",
            n,
            lambda: q6_k.quantize_numba(x, SRC_F32),
            threads,
        ),
        _Case("quantize   numba, 1 thread", n, lambda: q6_k.quantize_numba(x, SRC_F32), 1),
        _Case(f"quantize   numpy ({len(xs)} rows)", xs.size, lambda: q6_k.quantize_xp(xs, np)),
    ]
    dequant = [
        _Case("dequantize ggml C, 1 thread", n, lambda: ggml_dequantize(want, "q6_k", args.cols)),
        _Case(
            f"dequantize numba, {threads} threads", n, lambda: q6_k.dequantize_numba(want), threads
        ),
        _Case(
            f"dequantize numpy ({len(xs)} rows)",
            xs.size,
            lambda: q6_k.dequantize_xp(want[: len(xs)], np),
        ),
    ]
    # Check every result once, then time the cases interleaved, so that a change in the load
    # of the machine during the run affects them alike.
    for case in quant:
        got = case.fn()
        assert np.array_equal(got, want[: got.shape[0]]), f"{case.name}: bytes differ from ggml"
    for case in dequant:
        got = case.fn()
        same = got.view(np.uint32) == ref[: got.shape[0]].view(np.uint32)
        assert same.all(), f"{case.name}: values differ from ggml"
    for _ in range(args.repeat):
        for case in quant + dequant:
            case.run()
    numba.set_num_threads(threads)

    ref_rate = n / min(ggml_q.wall)
    print(f"Q6_K, float32 {args.rows} x {args.cols}, {args.repeat} interleaved runs each")
    print(f"first call (cached JIT load): {first_call:.2f} s")
    print(f"{'':40} {'best M/s':>9} {'median':>8} {'vs ggml':>8} {'M/CPU-s':>8}")
    for case in quant + dequant:
        best = case.count / min(case.wall) / 1e6
        median = case.count / statistics.median(case.wall) / 1e6
        per_cpu = case.count / min(case.cpu) / 1e6
        ratio = f"{best * 1e6 / ref_rate:7.1f}x" if case in quant else ""
        print(f"{case.name:40} {best:9.1f} {median:8.1f} {ratio:>8} {per_cpu:8.1f}")
    print("M/CPU-s: params per second of process CPU time, summed over threads: the speed of one")
    print("core, which other load on the machine does not lower (wall-clock rates it does).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
