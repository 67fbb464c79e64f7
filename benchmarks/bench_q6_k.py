"""Q6_K speed, side by side with ggml's C reference quantizer on one thread.

    python benchmarks/bench_q6_k.py [--rows 4096] [--cols 4096] [--repeat 5]

Times quantize and dequantize of a float32 matrix (normal weights) with the numba kernels (all
cores, then one thread), the numpy array code, and ggml's ``ggml_quantize_chunk`` /
``dequantize_row_q6_K`` through ctypes (``ggml-python``). Every result is checked against
ggml's bytes before its time is reported. Prints best and median of ``--repeat`` runs.
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

from nntrtool.quant import q6_k  # noqa: E402
from nntrtool.quant.common import SRC_F32  # noqa: E402


def _time(fn: Callable[[], object], repeat: int) -> tuple[list[float], object]:
    result = fn()  # warm up: JIT load, page faults of the first output
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


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
    q6_k.dequantize_numba(np.zeros((1, 210), np.uint8))
    first_call = time.perf_counter() - t0

    rows: list[tuple[str, int, list[float]]] = []
    t_ref, want = _time(lambda: ggml_quantize(x, "q6_k"), args.repeat)
    rows.append(("quantize  ggml C reference, 1 thread", n, t_ref))

    numba.set_num_threads(threads)
    t, got = _time(lambda: q6_k.quantize_numba(x, SRC_F32), args.repeat)
    assert np.array_equal(got, want), "numba bytes differ from ggml"
    rows.append((f"quantize  numba, {threads} threads", n, t))
    numba.set_num_threads(1)
    t, got = _time(lambda: q6_k.quantize_numba(x, SRC_F32), args.repeat)
    assert np.array_equal(got, want), "numba bytes differ from ggml"
    rows.append(("quantize  numba, 1 thread", n, t))
    numba.set_num_threads(threads)
    t, got = _time(lambda: q6_k.quantize_xp(xs, np), max(1, args.repeat // 2))
    assert np.array_equal(got, want[: len(xs)]), "numpy bytes differ from ggml"
    rows.append((f"quantize  numpy ({len(xs)} rows)", xs.size, t))

    t, ref = _time(lambda: ggml_dequantize(want, "q6_k", args.cols), args.repeat)
    rows.append(("dequantize ggml C, 1 thread", n, t))
    t, got = _time(lambda: q6_k.dequantize_numba(want), args.repeat)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), "numba dequantize differs"
    rows.append((f"dequantize numba, {threads} threads", n, t))
    t, got = _time(lambda: q6_k.dequantize_xp(want[: len(xs)], np), args.repeat)
    rows.append((f"dequantize numpy ({len(xs)} rows)", xs.size, t))

    ref_rate = n / min(t_ref)
    print(f"Q6_K, float32 {args.rows} x {args.cols}, best and median of {args.repeat} runs")
    print(f"first call (cached JIT load): {first_call:.2f} s")
    print(f"{'':40} {'best M/s':>10} {'median M/s':>11} {'vs ggml':>8}")
    for name, count, times in rows:
        best = count / min(times) / 1e6
        median = count / statistics.median(times) / 1e6
        ratio = f"{best * 1e6 / ref_rate:7.1f}x" if name.startswith("quantize") else ""
        print(f"{name:40} {best:10.1f} {median:11.1f} {ratio:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
