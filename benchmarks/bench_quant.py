"""Quantization kernel throughput, side by side with ggml's C reference on one thread.

    python benchmarks/bench_quant.py [--rows 4096] [--cols 4096] [--repeats 5] [--json out.json]

Times the public API (``nntrtool.quant``) on a float32 matrix in memory, best of ``--repeats``
runs after a warm-up, and checks every result against ggml's bytes. Also times the first call
of a fresh process (the numba kernels loading from the on-disk cache). Figures are params/s
(values quantized or dequantized per second) or bytes/s for the repack, by wall time. The load
average is printed with them: on a machine shared with other work, multi-threaded kernels lose
the most (a parallel region waits for its slowest thread), so compare runs at a low load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nntrtool import _ggml_ref
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
    for qtype in ("q4_0", "q8_0", "q6_k"):
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
    parser.add_argument("--types", default="q4_0,q8_0,q6_k")
    parser.add_argument("--numpy", action="store_true", help="also time the numpy backend")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)

    rows, cols = args.rows, args.cols
    x = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    n = x.size
    ggml = _ggml_ref.load()
    results: dict[str, Any] = {
        "shape": [rows, cols],
        "cpus": os.cpu_count(),
        "backends": available_backends(),
    }
    lines = []

    def record(name: str, seconds: float, amount: float, unit: str, ref: float | None = None):
        rate = amount / seconds
        results[name] = {"seconds": seconds, unit: rate}
        scale = 1e9 if unit.endswith("GB/s") or rate > 1e9 else 1e6
        label = ("G" if scale == 1e9 else "M") + (" B/s" if "B/s" in unit else " params/s")
        extra = f"   {ref / seconds:5.2f}x ggml 1 thread" if ref else ""
        lines.append(f"{name:<34} {rate / scale:9.2f} {label}{extra}")

    for qtype in args.types.split(","):
        t_ref, expected = best_time(lambda q=qtype: ggml.quantize(x, q), max(1, args.repeats // 2))
        record(f"ggml {qtype} quantize (1 thread)", t_ref, n, "params/s")
        backends = ["numba"] + (["numpy"] if args.numpy else [])
        for backend in backends:
            t, got = best_time(lambda q=qtype, b=backend: quantize(x, q, backend=b), args.repeats)
            assert np.array_equal(got, expected), f"{qtype} {backend}: bytes differ from ggml"
            record(f"{backend} {qtype} quantize", t, n, "params/s", ref=t_ref)
        t_ref, ref_values = best_time(lambda q=qtype, d=expected: ggml.dequantize(d, q, cols), 2)
        record(f"ggml {qtype} dequantize (1 thread)", t_ref, n, "params/s")
        t, values = best_time(lambda q=qtype, d=expected: dequantize(d, q, x.shape), args.repeats)
        assert np.array_equal(values.view(np.uint32), ref_values.view(np.uint32))
        record(f"numba {qtype} dequantize", t, n, "params/s", ref=t_ref)

    q = ggml.quantize(x, "q4_0")
    for layout in ("q4_0_4", "q4_0_8", "q4_0_4x4"):
        t_ref, expected = best_time(lambda lay=layout: ggml.repack(q, lay), 2)
        record(f"ggml repack {layout} (1 thread)", t_ref, q.nbytes, "GB/s")
        t, got = best_time(lambda lay=layout: repack(q, lay), args.repeats)
        assert np.array_equal(got, expected), f"repack {layout} differs from ggml"
        record(f"numba repack {layout}", t, q.nbytes, "GB/s", ref=t_ref)
        t, back = best_time(lambda lay=layout, p=got: unpack(p, lay), args.repeats)
        assert np.array_equal(back, q)
        record(f"numba unpack {layout}", t, q.nbytes, "GB/s")

    first = first_call_seconds()
    results.update(first)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results["load_average"] = load
    print(f"{rows} x {cols} float32, {os.cpu_count()} CPUs, load {load:.1f}, best of {args.repeats}")
    print("\n".join(lines))
    for name, seconds in first.items():
        print(f"{name:<34} {seconds:9.3f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
