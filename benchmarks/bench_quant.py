"""Quantization kernel throughput, side by side with ggml's C reference on one thread.

    python benchmarks/bench_quant.py [--rows 4096] [--cols 4096] [--repeats 5] [--json out.json]
        [--types q4_0,q8_0,q6_k,q4_k,q5_k,q5_0,q5_1,f16] [--one-thread] [--cpu-time] [--numpy [--numpy-rows 512]]
        [--no-imatrix]

Times the public API (``nntrtool.quant``) on a float32 matrix in memory, best of ``--repeats``
runs after a warm-up, and checks every result against ggml's bytes. Every type whose bytes an
importance matrix changes (all but Q8_0 and F16) is also timed weighted by one (a random one,
one value per column), against ggml given the same matrix. Also times the first call of a fresh process (the numba kernels loading
from the on-disk cache). Figures are params/s
(values quantized or dequantized per second) or bytes/s for the repack, by wall time. The load
average is printed with them: on a machine shared with other work, multi-threaded kernels lose
the most (a parallel region waits for its slowest thread), so compare runs at a low load.

``--one-thread`` also times numba's kernels limited to one thread, the fair match for ggml's
single-threaded figures. ``--cpu-time`` adds the rate per second of process CPU time, summed
over all threads: the work one core does, which other load on the machine lowers much less
than the wall-clock rate. It is taken over a run of calls lasting at least a quarter second,
because the kernel adds the time of threads other than the caller in scheduler ticks: over a
single call of a few milliseconds it would miss most of the worker threads' time. ``--numpy``
also times the numpy reference code, on the first ``--numpy-rows`` rows (default all; q6_k's
is slow).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from nntrtool import ggml_ref
from nntrtool.qtypes import get_type
from nntrtool.quant import available_backends, dequantize, quantize, repack, unpack


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls after one warm-up call, and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def cpu_seconds_per_call(fn: Callable[[], Any], min_seconds: float = 0.25) -> float:
    """Process CPU seconds (all threads) per call of ``fn``, over calls lasting ``min_seconds``."""
    calls = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while calls == 0 or time.perf_counter() - wall < min_seconds:
        fn()
        calls += 1
    return (time.process_time() - cpu) / calls


@contextmanager
def numba_threads(n: int | None) -> Iterator[None]:
    """Run the block with numba's kernels on ``n`` threads (``None``: as configured)."""
    if n is None:
        yield
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def first_call_seconds() -> dict[str, float]:
    """Import + first quantize in a fresh process, per type (kernels already cached on disk)."""
    code = textwrap.dedent(
        """
        import sys, time
        t0 = time.perf_counter()
        import numpy as np
        from nntrtool.quant import quantize
        x = np.random.default_rng(0).standard_normal((256, 4096)).astype(np.float32)
        t1 = time.perf_counter()
        quantize(x, sys.argv[1], backend="numba")
        t2 = time.perf_counter()
        print(t2 - t0, t2 - t1)
        """
    )
    result = {}
    for qtype in ("q4_0", "q8_0", "q6_k", "q4_k"):
        subprocess.run([sys.executable, "-c", code, qtype], check=True, capture_output=True)
        out = subprocess.run(
            [sys.executable, "-c", code, qtype], check=True, capture_output=True, text=True
        ).stdout.split()
        result[f"{qtype} import+first call (s)"] = float(out[0])
        result[f"{qtype} first call (s)"] = float(out[1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--types", default="q4_0,q8_0,q6_k,q4_k,q5_k,q5_0,q5_1,f16")
    parser.add_argument("--numpy", action="store_true", help="also time the numpy backend")
    parser.add_argument("--numpy-rows", type=int, help="rows for the numpy runs (default: all)")
    parser.add_argument("--one-thread", action="store_true", help="also numba on one thread")
    parser.add_argument("--cpu-time", action="store_true", help="also the rate per CPU-second")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--no-imatrix", action="store_true", help="skip the importance-weighted quantizers"
    )
    args = parser.parse_args(argv)

    rows, cols = args.rows, args.cols
    x = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    qw = np.random.default_rng(1).exponential(1.0, cols).astype(np.float32)  # importance
    n = x.size
    ggml = ggml_ref.load()
    results: dict[str, Any] = {
        "shape": [rows, cols],
        "cpus": os.cpu_count(),
        "backends": available_backends(),
    }
    lines = []

    def record(
        name: str,
        seconds: float,
        amount: float,
        unit: str,
        ref: float | None = None,
        fn: Callable[[], Any] | None = None,
    ) -> None:
        rate = amount / seconds
        results[name] = {"seconds": seconds, unit: rate}
        scale = 1e9 if unit.endswith("GB/s") or rate > 1e9 else 1e6
        label = ("G" if scale == 1e9 else "M") + (" B/s" if "B/s" in unit else " params/s")
        extra = f"   {ref / seconds:5.2f}x ggml 1 thread" if ref else ""
        if args.cpu_time and fn is not None:
            cpu = results[name]["cpu_seconds"] = cpu_seconds_per_call(fn)
            extra += f"   {amount / cpu / scale:8.2f} per CPU-second"
        lines.append(f"{name:<34} {rate / scale:9.2f} {label}{extra}")

    def timed(
        name: str,
        fn: Callable[[], Any],
        amount: float,
        unit: str,
        repeats: int,
        ref: float | None = None,
        threads: int | None = None,
    ) -> tuple[float, Any]:
        """Time ``fn`` on ``threads`` numba threads, record it, return (seconds, result)."""
        with numba_threads(threads):
            seconds, out = best_time(fn, repeats)
            record(name, seconds, amount, unit, ref=ref, fn=fn)
        return seconds, out

    # numba as configured, then (--one-thread) limited to one thread
    runs = [(None, "")] + ([(1, " (1 thread)")] if args.one_thread else [])
    xs = x[: args.numpy_rows] if args.numpy_rows else x
    part = f" ({len(xs)} rows)" if len(xs) < rows else ""
    for qtype in args.types.split(","):
        t_ref, expected = timed(
            f"ggml {qtype} quantize (1 thread)",
            lambda q=qtype: ggml.quantize(x, q),
            n,
            "params/s",
            max(1, args.repeats // 2),
        )
        for threads, suffix in runs:
            _, got = timed(
                f"numba {qtype} quantize{suffix}",
                lambda q=qtype: quantize(x, q, backend="numba"),
                n,
                "params/s",
                args.repeats,
                ref=t_ref,
                threads=threads,
            )
            assert np.array_equal(got, expected), f"{qtype} numba: bytes differ from ggml"
        if args.numpy:
            _, got = timed(
                f"numpy {qtype} quantize{part}",
                lambda q=qtype: quantize(xs, q, backend="numpy"),
                xs.size,
                "params/s",
                args.repeats,
                ref=t_ref * xs.size / n,
            )
            assert np.array_equal(got, expected[: len(xs)]), f"{qtype} numpy: bytes differ"
        if get_type(qtype).uses_imatrix and not args.no_imatrix:
            t_imx, expected_imx = timed(
                f"ggml {qtype} imatrix quantize (1 thread)",
                lambda q=qtype: ggml.quantize(x, q, qw),
                n,
                "params/s",
                max(1, args.repeats // 2),
            )
            for threads, suffix in runs:
                _, got = timed(
                    f"numba {qtype} imatrix quantize{suffix}",
                    lambda q=qtype: quantize(x, q, backend="numba", imatrix=qw),
                    n,
                    "params/s",
                    args.repeats,
                    ref=t_imx,
                    threads=threads,
                )
                assert np.array_equal(got, expected_imx), f"{qtype} imatrix: bytes differ"
            if args.numpy:
                _, got = timed(
                    f"numpy {qtype} imatrix quantize{part}",
                    lambda q=qtype: quantize(xs, q, backend="numpy", imatrix=qw),
                    xs.size,
                    "params/s",
                    args.repeats,
                    ref=t_imx * xs.size / n,
                )
                assert np.array_equal(got, expected_imx[: len(xs)]), f"{qtype} imatrix numpy"
        t_ref, ref_values = timed(
            f"ggml {qtype} dequantize (1 thread)",
            lambda q=qtype, d=expected: ggml.dequantize(d, q, cols),
            n,
            "params/s",
            2,
        )
        for threads, suffix in runs:
            _, values = timed(
                f"numba {qtype} dequantize{suffix}",
                lambda q=qtype, d=expected: dequantize(d, q, x.shape),
                n,
                "params/s",
                args.repeats,
                ref=t_ref,
                threads=threads,
            )
            assert np.array_equal(values.view(np.uint32), ref_values.view(np.uint32))
        if args.numpy:
            _, values = timed(
                f"numpy {qtype} dequantize{part}",
                lambda q=qtype, d=expected[: len(xs)]: dequantize(d, q, xs.shape, backend="numpy"),
                xs.size,
                "params/s",
                args.repeats,
                ref=t_ref * xs.size / n,
            )
            assert np.array_equal(values.view(np.uint32), ref_values[: len(xs)].view(np.uint32))

    q = ggml.quantize(x, "q4_0")
    for layout in ("q4_0_4", "q4_0_8", "q4_0_4x4"):
        t_ref, expected = timed(
            f"ggml repack {layout} (1 thread)",
            lambda lay=layout: ggml.repack(q, lay),
            q.nbytes,
            "GB/s",
            2,
        )
        _, got = timed(
            f"numba repack {layout}",
            lambda lay=layout: repack(q, lay),
            q.nbytes,
            "GB/s",
            args.repeats,
            ref=t_ref,
        )
        assert np.array_equal(got, expected), f"repack {layout} differs from ggml"
        _, back = timed(
            f"numba unpack {layout}",
            lambda lay=layout, p=got: unpack(p, lay),
            q.nbytes,
            "GB/s",
            args.repeats,
        )
        assert np.array_equal(back, q)

    first = first_call_seconds()
    results.update(first)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results["load_average"] = load
    print(
        f"{rows} x {cols} float32, {os.cpu_count()} CPUs, load {load:.1f}, best of {args.repeats}"
    )
    print("\n".join(lines))
    for name, seconds in first.items():
        print(f"{name:<34} {seconds:9.3f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
