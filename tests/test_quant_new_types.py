"""Q4_K, Q5_0, F16 quantize and Q4_K, Q5_K, Q5_0, Q5_1, F16 dequantize against ggml's own C
(``ggml_quantize_chunk``, ``dequantize_row_*``): byte-identical quantize, plain and weighted by
an importance matrix, on every backend (numba, the public API's chunked numpy path, and the
array code the cupy backend runs, with numpy as its array module); bit-identical dequantize."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_oracle import ggml_dequantize, ggml_quantize
from test_quant_imatrix import IMPORTANCE, importance
from test_quant_kernels import DISTRIBUTIONS, make

from nntrtool.errors import NonFiniteError, QuantError
from nntrtool.qtypes import get_type
from nntrtool.quant import dequantize, get_kernels, quantize

QUANT_TYPES = ["q4_k", "q5_0", "f16"]
READ_TYPES = ["q4_k", "q5_k", "q5_0", "q5_1", "f16"]
F16_MAX = np.float32(65504.0)


def _numba(x, qtype, qw=None):
    return quantize(x, qtype, imatrix=qw, backend="numba")


def _numpy_api(x, qtype, qw=None):
    return quantize(x, qtype, imatrix=qw, backend="numpy")


def _xp_direct(x, qtype, qw=None):
    k = get_kernels(qtype)
    if qw is None or not k.uses_imatrix:
        return k.quantize_xp(x, np)
    return k.quantize_imatrix_xp(x, qw, np)


BACKENDS = {"numba": _numba, "numpy": _numpy_api, "xp": _xp_direct}


def special_rows(cols: int, rng: np.random.Generator) -> np.ndarray:
    """Rows that break a careless port, each ``cols`` (a multiple of 256) wide."""
    rows = []

    def add(values):
        rows.append(np.asarray(values, dtype=np.float32).reshape(cols))

    add(np.zeros(cols))  # all zero
    add(np.full(cols, -0.0))
    add(np.full(cols, 1.0))  # constant rows: every run's max == min
    add(np.full(cols, -2.5))
    add(np.full(cols, 0.37))
    one = np.zeros(cols)
    one[77] = -3.5  # a single outlier
    add(one)
    big = rng.standard_normal(cols) * 0.01
    big[5] = 1e4
    add(big)
    pos = rng.uniform(1.0, 2.0, cols)  # every sub-block's min is positive
    add(pos)
    add(-pos)
    mixed = rng.standard_normal(cols)
    mixed[: cols // 2] = np.abs(mixed[: cols // 2]) + 0.5  # positive min in half the runs
    add(mixed)
    sub = rng.integers(-(2**20), 2**20, cols).astype(np.float32) * np.float32(1e-45)
    add(sub)  # denormals
    add(np.full(cols, np.float32(1e-45)))
    add(rng.standard_normal(cols) * 1e-38)
    add(rng.standard_normal(cols) * 1e-7)  # scales underflow fp16
    near = rng.uniform(-1.0, 1.0, cols) * F16_MAX * 63  # d = max_scale / 63 near fp16 max
    add(near)
    add(rng.standard_normal(cols) * 1e6)  # d overflows fp16 to inf
    add(rng.standard_normal(cols) * 3e37)
    ties = rng.choice(np.array([-4, -3, -2, -1, 0, 1, 2, 3, 4], np.float32), cols)
    add(ties)
    grid = np.tile(np.linspace(-1, 1, 32, dtype=np.float32), cols // 32)
    add(grid)
    return np.stack(rows)


@pytest.mark.parametrize("qtype", QUANT_TYPES)
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_quantize_matches_ggml(qtype: str, dist: str) -> None:
    rng = np.random.default_rng(abs(hash(("new", qtype, dist))) % 2**32)
    x = make(dist, rng, rows=6, cols=768)
    expected = ggml_quantize(x, qtype)
    for name, run in BACKENDS.items():
        assert np.array_equal(run(x, qtype), expected), (dist, name)


@pytest.mark.parametrize("qtype", ["q4_k", "q5_0"])
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_quantize_with_importance_matches_ggml(qtype: str, dist: str) -> None:
    rng = np.random.default_rng(abs(hash(("newimat", qtype, dist))) % 2**32)
    x = make(dist, rng, rows=4, cols=768)
    for kind in IMPORTANCE:
        qw = importance(kind, rng, x.shape[1])
        expected = ggml_quantize(x, qtype, qw)
        for name, run in BACKENDS.items():
            assert np.array_equal(run(x, qtype, qw), expected), (dist, kind, name)


@pytest.mark.parametrize("qtype", QUANT_TYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_special_rows_match_ggml(qtype: str, weighted: bool) -> None:
    rng = np.random.default_rng(21)
    x = special_rows(512, rng)
    qw = importance("some_zeros", rng, 512) if weighted else None
    expected = ggml_quantize(x, qtype, qw)
    for name, run in BACKENDS.items():
        got = run(x, qtype, qw)
        bad = [r for r in range(x.shape[0]) if not np.array_equal(got[r], expected[r])]
        assert not bad, (name, bad)


@pytest.mark.parametrize("qtype", QUANT_TYPES)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_half_precision_sources(qtype: str, backend: str) -> None:
    rng = np.random.default_rng(3)
    x32 = rng.standard_normal((5, 512)).astype(np.float32)
    f16 = x32.astype(np.float16)
    assert np.array_equal(
        quantize(f16, qtype, backend=backend), ggml_quantize(f16.astype(np.float32), qtype)
    )
    bf16 = (x32.view(np.uint32) >> 16).astype(np.uint16)
    decoded = (bf16.astype(np.uint32) << 16).view(np.float32)
    got = quantize(bf16, qtype, backend=backend, source_dtype="bf16")
    assert np.array_equal(got, ggml_quantize(decoded, qtype))


@pytest.mark.parametrize("qtype", ["q4_k", "q5_0"])
def test_strided_input_and_many_rows(qtype: str) -> None:
    rng = np.random.default_rng(11)
    big = rng.standard_normal((300, 1024)).astype(np.float32)
    x = big[::3, :512]
    qw = importance("exponential", rng, 512)
    for w in (None, qw):
        expected = ggml_quantize(np.ascontiguousarray(x), qtype, w)
        for backend in ("numba", "numpy"):
            assert np.array_equal(quantize(x, qtype, imatrix=w, backend=backend), expected)


@pytest.mark.parametrize("qtype", READ_TYPES)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_dequantize_matches_ggml(qtype: str, backend: str) -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([make("normal", rng, 4, 512), special_rows(512, rng)])
    data = ggml_quantize(x, qtype)
    expected = ggml_dequantize(data, qtype, 512)
    got = dequantize(data, qtype, x.shape, backend=backend)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    xp = get_kernels(qtype).dequantize_xp(data, np)
    assert np.array_equal(xp.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("qtype", READ_TYPES)
def test_dequantize_random_bytes_matches_ggml(qtype: str) -> None:
    # Every bit pattern a file may hold: inf and NaN scales, all 6-bit scale codes.
    rng = np.random.default_rng(8)
    t = get_type(qtype)
    cols = 512
    data = rng.integers(0, 256, (6, t.row_bytes(cols)), dtype=np.uint8)
    expected = ggml_dequantize(data, qtype, cols)
    for backend in ("numba", "numpy"):
        got = dequantize(data, qtype, (6, cols), backend=backend)
        want = expected
        if qtype == "f16":  # NaN halves: ggml's conversion quiets signalling NaNs, numpy's not
            nan = np.isnan(want)
            assert np.array_equal(np.isnan(got), nan)
            got, want = got[~nan], want[~nan]
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), backend


def test_f16_rounds_to_nearest_even_like_numpy() -> None:
    # Halfway cases between two halves, the largest finite half, and the first that overflows.
    ulp_half = np.float32(2.0**-11)
    x = np.array(
        [[1 + ulp_half, 1 + 3 * ulp_half, 65504.0, 65519.99, 65520.0, -65520.0, 2.0**-25, 6e-8]],
        np.float32,
    )
    expected = x.astype(np.float16).view(np.uint8)
    for run in BACKENDS.values():
        assert np.array_equal(run(x, "f16"), expected)
    back = dequantize(expected, "f16", x.shape)
    assert np.array_equal(back, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize(
    "qtype, cols, needle", [("q4_k", 300, "256"), ("q4_k", 96, "96"), ("q5_0", 40, "32")]
)
def test_rows_that_do_not_fit_are_one_line(qtype: str, cols: int, needle: str) -> None:
    with pytest.raises(QuantError) as err:
        quantize(np.ones((2, cols), np.float32), qtype)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize("qtype", QUANT_TYPES)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_nonfinite_values_name_row_and_column(qtype: str, backend: str) -> None:
    x = np.ones((4, 512), np.float32)
    x[2, 300] = np.inf
    with pytest.raises(NonFiniteError) as info:
        quantize(x, qtype, backend=backend)
    assert (info.value.row, info.value.col) == (2, 300)


def test_q4_k_beats_q4_0_at_the_same_size() -> None:
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((64, 1024)) * 0.02).astype(np.float32)

    def rmse(qtype):
        return float(np.sqrt(np.mean((dequantize(quantize(x, qtype), qtype, x.shape) - x) ** 2)))

    assert rmse("q4_k") < rmse("q4_0")
    assert rmse("q5_0") < rmse("q4_0")
