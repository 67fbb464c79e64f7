"""Importance-weighted Q4_0 and Q6_K against ggml's own C: ``ggml_quantize_chunk`` given an
importance matrix, byte for byte, on every backend (numba, the array code with numpy as its
array module, and the public API's chunked numpy path); Q8_0 ignores the matrix as ggml does."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_oracle import ggml_quantize
from test_quant_kernels import make

from nntrtool.errors import NonFiniteError, QuantError
from nntrtool.quant import get_kernels, quantize

TYPES = ["q4_0", "q6_k"]
DISTRIBUTIONS = [
    "normal",
    "heavy_tailed",
    "cauchy",
    "sparse",
    "mixed_block_scales",
    "weights_like",
    "grid",
    "ties",
    "positive",
    "subnormal",
    "tiny_normal",
    "fp16_overflow",
    "fp16_underflow",
    "bit_patterns",
]
IMPORTANCE = ["exponential", "some_zeros", "all_zero", "ones", "wide_range", "one_hot"]


def importance(kind: str, rng: np.random.Generator, cols: int) -> np.ndarray:
    """A float32 importance vector (one per column) of a named kind."""
    if kind == "exponential":
        w = rng.exponential(1.0, cols)
    elif kind == "some_zeros":
        w = rng.exponential(1.0, cols) * (rng.random(cols) < 0.6)
        w[:64] = 0  # whole blocks (and a Q6_K run) without importance
    elif kind == "all_zero":
        w = np.zeros(cols)
    elif kind == "ones":
        w = np.ones(cols)
    elif kind == "wide_range":
        w = 10.0 ** rng.uniform(-30, 30, cols)
    elif kind == "one_hot":
        w = np.zeros(cols)
        w[rng.integers(0, cols)] = 5.0
    else:
        raise ValueError(kind)
    return w.astype(np.float32)


def _numba(x: np.ndarray, qtype: str, qw: np.ndarray) -> np.ndarray:
    return quantize(x, qtype, imatrix=qw, backend="numba")


def _numpy_api(x: np.ndarray, qtype: str, qw: np.ndarray) -> np.ndarray:
    return quantize(x, qtype, imatrix=qw, backend="numpy")


def _xp_direct(x: np.ndarray, qtype: str, qw: np.ndarray) -> np.ndarray:
    # The array code as the cupy backend runs it, with numpy as its array module.
    return get_kernels(qtype).quantize_imatrix_xp(x, qw, np)


BACKENDS = {"numba": _numba, "numpy": _numpy_api, "xp": _xp_direct}


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_matches_ggml_for_every_distribution(qtype: str, dist: str) -> None:
    rng = np.random.default_rng(abs(hash((qtype, dist))) % 2**32)
    # 768 columns: 24 Q4_0 blocks (a full group of 16 and a partial one), 3 Q6_K superblocks.
    x = make(dist, rng, rows=6, cols=768).astype(np.float32)
    for kind in IMPORTANCE:
        qw = importance(kind, rng, x.shape[1])
        expected = ggml_quantize(x, qtype, qw)
        for name, run in BACKENDS.items():
            got = run(x, qtype, qw)
            assert np.array_equal(got, expected), (dist, kind, name)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_special_rows(qtype: str, backend: str) -> None:
    """All-zero rows, a lone value, blocks below GROUP_MAX_EPS next to normal ones, sign ties."""
    rng = np.random.default_rng(7)
    cols = 512
    x = rng.standard_normal((6, cols)).astype(np.float32)
    x[0] = 0
    x[1] = 0
    x[1, 300] = -3.5
    x[2, :256] *= np.float32(1e-16)
    x[3, ::2] = 2.0
    x[3, 1::2] = -2.0
    x[4, 32:64] = -0.0
    x[5] = np.float32(3e38) * np.sign(x[5])  # sums of squares overflow to inf
    qw = importance("exponential", rng, cols)
    got = BACKENDS[backend](x, qtype, qw)
    assert np.array_equal(got, ggml_quantize(x, qtype, qw))


@pytest.mark.parametrize("cols", [32, 160, 1056])
def test_q4_0_odd_block_counts(cols: int) -> None:
    rng = np.random.default_rng(cols)
    x = rng.standard_normal((5, cols)).astype(np.float32)
    qw = importance("some_zeros", rng, cols) if cols >= 64 else importance("exponential", rng, cols)
    expected = ggml_quantize(x, "q4_0", qw)
    for name, run in BACKENDS.items():
        assert np.array_equal(run(x, "q4_0", qw), expected), name


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_half_precision_sources(qtype: str, backend: str) -> None:
    rng = np.random.default_rng(3)
    x32 = rng.standard_normal((5, 512)).astype(np.float32)
    qw = importance("exponential", rng, 512)
    f16 = x32.astype(np.float16)
    expected = ggml_quantize(f16.astype(np.float32), qtype, qw)
    assert np.array_equal(quantize(f16, qtype, imatrix=qw, backend=backend), expected)
    bf16 = (x32.view(np.uint32) >> 16).astype(np.uint16)
    decoded = (bf16.astype(np.uint32) << 16).view(np.float32)
    got = quantize(bf16, qtype, imatrix=qw, backend=backend, source_dtype="bf16")
    assert np.array_equal(got, ggml_quantize(decoded, qtype, qw))


@pytest.mark.parametrize("qtype", TYPES)
def test_strided_input_and_many_rows(qtype: str) -> None:
    rng = np.random.default_rng(11)
    big = rng.standard_normal((300, 1024)).astype(np.float32)
    x = big[::3, :512]
    qw = importance("exponential", rng, 512)
    expected = ggml_quantize(np.ascontiguousarray(x), qtype, qw)
    for backend in ("numba", "numpy"):
        assert np.array_equal(quantize(x, qtype, imatrix=qw, backend=backend), expected)


def test_importance_changes_the_result() -> None:
    # Not a tautology: the weighted bytes differ from the plain ones, and weighting a column
    # lowers its error.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    qw = np.full(256, 1e-3, np.float32)
    qw[::32] = 1e3  # the first value of every block matters most
    from nntrtool.quant import dequantize

    for qtype in TYPES:
        plain = quantize(x, qtype)
        weighted = quantize(x, qtype, imatrix=qw)
        assert not np.array_equal(plain, weighted)
        err_plain = np.abs(dequantize(plain, qtype, x.shape) - x)[:, ::32].mean()
        err_weighted = np.abs(dequantize(weighted, qtype, x.shape) - x)[:, ::32].mean()
        assert err_weighted < err_plain


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_q8_0_ignores_the_importance(backend: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    qw = importance("wide_range", rng, 256)
    got = quantize(x, "q8_0", imatrix=qw, backend=backend)
    assert np.array_equal(got, quantize(x, "q8_0", backend=backend))
    assert np.array_equal(got, ggml_quantize(x, "q8_0", qw))


@pytest.mark.parametrize(
    "qw, match",
    [
        (np.ones(100, np.float32), "one value per column"),
        (np.ones((2, 256), np.float32), "one value per column"),
        (np.r_[np.ones(255), -1.0].astype(np.float32), "not negative"),
        (np.r_[np.ones(255), np.nan].astype(np.float32), "finite"),
        (np.r_[np.ones(255), np.inf].astype(np.float32), "finite"),
        (np.array(["a"] * 256), "numbers"),
    ],
)
def test_bad_importance_is_refused(qw: np.ndarray, match: str) -> None:
    x = np.ones((2, 256), np.float32)
    for qtype in ("q4_0", "q6_k", "q8_0"):
        with pytest.raises(QuantError, match=match):
            quantize(x, qtype, imatrix=qw)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_nonfinite_weights_name_row_and_column(qtype: str, backend: str) -> None:
    x = np.ones((4, 512), np.float32)
    x[2, 300] = np.nan
    with pytest.raises(NonFiniteError) as info:
        quantize(x, qtype, imatrix=np.ones(512, np.float32), backend=backend)
    assert (info.value.row, info.value.col) == (2, 300)
