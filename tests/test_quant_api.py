"""The public quantization API: input validation, non-finite reporting, backends, lazy numba
import and the on-disk kernel cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from ggml_oracle import ggml_quantize

import nntrtool
from nntrtool.errors import NonFiniteError, QuantError, UsageError
from nntrtool.quant import (
    available_backends,
    backends,
    dequantize,
    get_kernels,
    quantize,
    resolve_backend,
)

ALL_TYPES = ["q4_0", "q6_k", "q8_0"]
REPO = Path(nntrtool.__file__).resolve().parent.parent


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda: quantize(np.zeros((2, 64), np.float32), "q3_k"), "q3_k"),
        (lambda: quantize(np.zeros((2, 48), np.float32), "q4_0"), "48"),
        (lambda: quantize(np.zeros((2, 300), np.float32), "q6_k"), "256"),
        (lambda: quantize(np.zeros((2, 2, 32), np.float32), "q4_0"), "2-D"),
        (lambda: quantize(np.zeros((2, 0), np.float32), "q8_0"), "0"),
        (lambda: quantize(np.zeros((2, 32), np.uint16), "q4_0"), "source_dtype"),
        (lambda: quantize(np.zeros((2, 32), np.int8), "q4_0"), "int8"),
        (lambda: quantize(np.zeros((2, 32), np.float16), "q4_0", source_dtype="bf16"), "BF16"),
        (lambda: quantize(np.zeros((2, 32), np.float32), "q4_0", source_dtype="int4"), "int4"),
        (lambda: dequantize(np.zeros(10, np.uint8), "q4_0", (1, 32)), "18 bytes"),
        (lambda: dequantize(np.zeros(18, np.float32), "q4_0", (1, 32)), "uint8"),
        (lambda: dequantize(np.zeros(18, np.uint8), "q4_0", (1, 40)), "40"),
        (lambda: dequantize(np.zeros(18, np.uint8), "f32", (1, 32)), "f32"),
    ],
)
def test_bad_input_is_one_quant_error_line(call, needle):
    with pytest.raises(QuantError) as err:
        call()
    assert needle in _one_line(err)


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError) as err:
        resolve_backend("opencl")
    assert "opencl" in _one_line(err)
    with pytest.raises(UsageError):
        quantize(np.zeros((1, 32), np.float32), "q4_0", backend="tpu")


@pytest.mark.parametrize("qtype", ALL_TYPES)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_names_row_and_column(qtype, backend, bad):
    x = np.random.default_rng(0).standard_normal((300, 4096)).astype(np.float32)
    x[290, 1000] = bad  # past the first chunk of the numpy path
    x[295, 7] = np.nan
    with pytest.raises(NonFiniteError) as err:
        quantize(x, qtype, backend=backend)
    assert (err.value.row, err.value.col) == (290, 1000)
    assert np.isnan(err.value.value) if np.isnan(bad) else err.value.value == bad
    assert "row 290, column 1000" in _one_line(err)


@pytest.mark.parametrize("qtype", ALL_TYPES)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_non_finite_in_half_precision_sources(qtype, backend):
    f16 = np.zeros((4, 512), np.float16)
    f16[2, 300] = np.inf
    with pytest.raises(NonFiniteError) as err:
        quantize(f16, qtype, backend=backend)
    assert (err.value.row, err.value.col, err.value.value) == (2, 300, np.inf)
    bf16 = np.zeros((4, 512), np.uint16)
    bf16[3, 511] = 0xFFC0  # a bf16 NaN
    with pytest.raises(NonFiniteError) as err:
        quantize(bf16, qtype, backend=backend, source_dtype="BF16")
    assert (err.value.row, err.value.col) == (3, 511) and np.isnan(err.value.value)


def test_float64_is_quantized_as_float32():
    x = np.random.default_rng(1).standard_normal((4, 64))
    assert np.array_equal(quantize(x, "q4_0"), ggml_quantize(x.astype(np.float32), "q4_0"))


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_zero_rows_and_nd_shapes(qtype):
    k = get_kernels(qtype)
    cols = k.ttype.block_size * 2
    assert quantize(np.zeros((0, cols), np.float32), qtype).shape == (0, k.ttype.row_bytes(cols))
    x = np.random.default_rng(2).standard_normal((2, 3, cols)).astype(np.float32)
    data = quantize(x.reshape(6, cols), qtype)
    y = dequantize(data, qtype, x.shape)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.array_equal(y, dequantize(data.reshape(-1), qtype, x.shape, backend="numpy"))
    assert dequantize(data[:0], qtype, (0, cols)).shape == (0, cols)


def test_type_names_are_case_insensitive():
    x = np.ones((1, 256), np.float32)
    assert np.array_equal(quantize(x, "Q6_K"), quantize(x, "q6_k"))
    assert np.array_equal(quantize(x, get_kernels("q8_0").ttype), quantize(x, "q8_0"))


def test_backends_and_fallback_notice():
    found = available_backends()
    assert found[:2] == ["numpy", "numba"]
    for name in found:
        assert resolve_backend(name) == name
    assert resolve_backend("NumPy") == "numpy"
    if "cupy" in found:
        assert resolve_backend("auto") == "cupy"
        return
    assert resolve_backend("auto") == "numba" and resolve_backend(None) == "numba"
    backends._notified.discard("cupy:cupy")
    with pytest.warns(RuntimeWarning, match="cupy"):
        assert resolve_backend("cupy") == "numba"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        assert resolve_backend("cupy") == "numba"
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    assert np.array_equal(quantize(x, "q4_0", backend="cupy"), ggml_quantize(x, "q4_0"))


def _run(code: str, env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    full = {**os.environ, **(env or {})}
    if env is not None and "HOME" in env:
        full.pop("XDG_CACHE_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_importing_the_api_does_not_import_numba():
    out = _run(
        """
        import sys
        import nntrtool.quant, nntrtool.qtypes
        from nntrtool.quant import quantize, dequantize, repack, unpack, resolve_backend
        resolve_backend("numpy")
        print("numba" in sys.modules)
        """
    )
    assert out.strip() == "False"


_CACHE_PROBE = """
import numpy as np, time
t = time.perf_counter()
from nntrtool.quant import quantize, dequantize, repack, unpack
x = np.ones((8, 256), np.float32)
for t_ in ("q4_0", "q8_0"):
    dequantize(quantize(x, t_), t_, x.shape)
unpack(repack(quantize(x, "q4_0"), "q4_0_8"), "q4_0_8")
from nntrtool.quant import _q4_0_numba, _q8_0_numba, _repack_numba
kernels = [_q4_0_numba._quantize_rows, _q4_0_numba._dequantize_rows, _q8_0_numba._quantize_rows,
           _q8_0_numba._dequantize_rows, _repack_numba._repack_kernel, _repack_numba._unpack_kernel]
print(sum(sum(k.stats.cache_misses.values()) for k in kernels),
      sum(sum(k.stats.cache_hits.values()) for k in kernels), time.perf_counter() - t)
"""


@pytest.mark.slow
def test_second_process_loads_kernels_from_the_disk_cache():
    _run(_CACHE_PROBE)  # compiles (or loads) and leaves the cache behind
    misses, hits, _ = _run(_CACHE_PROBE).split()
    assert int(misses) == 0 and int(hits) >= 6


@pytest.mark.slow
def test_read_only_install_caches_in_a_writable_fallback(tmp_path):
    # A copy of the package whose __pycache__ cannot be created (a file is in the way), and a
    # home whose cache folder cannot be created either: the kernels must cache elsewhere.
    pkg = tmp_path / "site"
    shutil.copytree(
        REPO / "nntrtool", pkg / "nntrtool", ignore=shutil.ignore_patterns("__pycache__")
    )
    (pkg / "nntrtool" / "quant" / "__pycache__").write_text("not a folder")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("not a folder")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"PYTHONPATH": str(pkg), "HOME": str(home), "TMPDIR": str(tmp), "NUMBA_CACHE_DIR": ""}
    # One kernel is enough to see where the cache goes (each costs a compile here).
    probe = """
        import os, numpy as np, nntrtool
        from nntrtool.quant import quantize, _q8_0_numba
        quantize(np.ones((2, 32), np.float32), "q8_0", backend="numba")
        stats = _q8_0_numba._quantize_rows.stats
        print(sum(stats.cache_misses.values()), sum(stats.cache_hits.values()),
              os.environ["NUMBA_CACHE_DIR"], nntrtool.__file__)
    """
    first = _run(probe, env=env, cwd=str(tmp_path)).split()
    assert first[2].startswith(str(tmp)) and first[3].startswith(str(pkg))
    assert any(Path(first[2]).rglob("*.nbi"))
    second = _run(probe, env=env, cwd=str(tmp_path)).split()
    assert second[:2] == ["0", "1"]


def test_concurrent_calls_from_threads_agree():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((64, 512)).astype(np.float32) for _ in range(8)]
    expected = [ggml_quantize(x, "q4_0") for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: quantize(x, "q4_0", backend="numba"), xs))
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.slow
def test_workqueue_threading_layer_survives_concurrent_launches():
    # numba's fallback threading layer aborts the process on concurrent parallel launches;
    # the kernels serialize themselves there.
    out = _run(
        """
        import numpy as np
        from concurrent.futures import ThreadPoolExecutor
        import numba
        from nntrtool.quant import quantize, repack
        x = np.ones((512, 1024), np.float32)
        with ThreadPoolExecutor(4) as pool:
            res = list(pool.map(lambda i: repack(quantize(x * i, "q4_0"), "q4_0_4"), range(16)))
        print(numba.threading_layer(), len(res))
        """,
        env={"NUMBA_THREADING_LAYER": "workqueue"},
    )
    assert out.split() == ["workqueue", "16"]


@pytest.mark.slow
def test_editing_a_helper_module_invalidates_cached_kernels(tmp_path):
    # numba alone keys a cached kernel on its own file; the kernels inline helpers from other
    # modules of the package, so an edit to any of them must recompile.
    pkg = tmp_path / "site"
    shutil.copytree(
        REPO / "nntrtool", pkg / "nntrtool", ignore=shutil.ignore_patterns("__pycache__")
    )
    probe = """
        import numpy as np
        from nntrtool.quant import quantize, _q8_0_numba
        quantize(np.ones((2, 32), np.float32), "q8_0", backend="numba")
        stats = _q8_0_numba._quantize_rows.stats
        print(sum(stats.cache_misses.values()), sum(stats.cache_hits.values()))
    """
    env = {"PYTHONPATH": str(pkg), "NUMBA_CACHE_DIR": ""}
    cwd = str(tmp_path)  # not the checkout, whose nntrtool would shadow the copy
    assert _run(probe, env=env, cwd=cwd).split() == ["1", "0"]
    assert _run(probe, env=env, cwd=cwd).split() == ["0", "1"]
    helper = pkg / "nntrtool" / "quant" / "_simd.py"
    helper.write_text(helper.read_text() + "\n# edited\n")
    assert _run(probe, env=env, cwd=cwd).split() == ["1", "0"]


def test_torch_tensors_including_bfloat16():
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 64, dtype=torch.float32)
    expected = ggml_quantize(x.numpy(), "q8_0")
    assert np.array_equal(quantize(x, "q8_0"), expected)
    b = x.to(torch.bfloat16)
    decoded = b.to(torch.float32).numpy()
    assert np.array_equal(quantize(b, "q4_0"), ggml_quantize(decoded, "q4_0"))
    assert np.array_equal(
        quantize(b.T.contiguous().T, "q4_0", backend="numpy"), ggml_quantize(decoded, "q4_0")
    )
