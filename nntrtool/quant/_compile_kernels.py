"""``python -m nntrtool.quant._compile_kernels KERNEL...``: compile numba kernels into the cache.

Started by :func:`nntrtool.quant.kernel_cost.compile_later`, at low priority and detached, when
a job ran on numpy only because its kernels were not compiled yet: the next such job finds
them cached. Each kernel runs once on a few zero rows, which compiles it, lets numba save it,
and writes its marker. Failures are silent: the kernel then simply stays uncompiled.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

_ROWS, _COLS = 8, 256  # whole blocks of every type, whole groups of every repack layout


def compile_kernel(kernel: str) -> None:
    """Run ``kernel`` (a marker name such as ``quantize-q6_k-uint16``) once under numba."""
    from nntrtool.quant import dequantize, quantize, repack, unpack

    op, _, rest = kernel.partition("-")
    if op == "quantize":
        qw = None
        if rest.startswith("imatrix-"):
            rest, qw = rest.removeprefix("imatrix-"), np.ones(_COLS, np.float32)
        qtype, _, element = rest.partition("-")
        if element == "float32":
            quantize(np.zeros((_ROWS, _COLS), np.float32), qtype, backend="numba", imatrix=qw)
        else:
            x = np.zeros((_ROWS, _COLS), np.uint16)
            quantize(x, qtype, backend="numba", source_dtype="bf16", imatrix=qw)
    elif op == "dequantize":
        data = quantize(np.zeros((_ROWS, _COLS), np.float32), rest, backend="numpy")
        dequantize(data, rest, (_ROWS, _COLS), backend="numba")
    elif kernel in ("repack", "unpack"):
        data = quantize(np.zeros((_ROWS, _COLS), np.float32), "q4_0", backend="numpy")
        (repack if kernel == "repack" else unpack)(data, "q4_0_8", backend="numba")
    elif kernel == "error-sums":
        from nntrtool.quant.error_stats import ErrorStats

        ErrorStats.of_fast(np.zeros(_COLS, np.float32), np.zeros(_COLS, np.float32))


def main(kernels: list[str]) -> int:
    """Compile every kernel named, then release the lock that ``compile_later`` took."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    try:
        for kernel in kernels:
            with contextlib.suppress(Exception):
                compile_kernel(kernel)
    finally:
        lock = os.environ.get("NNTRTOOL_COMPILE_LOCK")
        if lock:
            with contextlib.suppress(OSError):
                os.unlink(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
