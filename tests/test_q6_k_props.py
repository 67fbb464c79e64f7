"""Property tests for Q6_K: any finite float32 input gives ggml's bytes on every backend."""

from __future__ import annotations

import numpy as np
from ggml_oracle import ggml_dequantize, ggml_quantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nntrtool.qtypes import Q6_K
from nntrtool.quant import q6_k
from nntrtool.quant.common import SRC_BF16, SRC_F32
from nntrtool.quant.registry import get_kernels  # noqa: E402

Q6_K_NUMBA = get_kernels("q6_k")

QK = Q6_K.block_size
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_finite = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
# A handful of magnitudes, so that ties, repeated maxima and exact .5 codes are common.
few_values = st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 3.0, -3.0, 1e-16, 1e-7, 1e30, -1e30, 65504.0]
).map(np.float32)


def _matrices(elements: st.SearchStrategy) -> st.SearchStrategy:
    shapes = st.tuples(st.integers(1, 3), st.integers(1, 2).map(lambda k: k * QK))
    return shapes.flatmap(lambda s: arrays(np.float32, s, elements=elements))


def _scaled_runs() -> st.SearchStrategy:
    """Normal values with an independent power-of-ten scale per run of 16."""

    def build(args):
        seed, exps, rows = args
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((rows, QK // 16, 16)) * (10.0 ** np.array(exps))[None, :, None]
        return x.reshape(rows, QK).astype(np.float32)

    return st.tuples(
        st.integers(0, 2**32 - 1),
        st.lists(st.integers(-40, 37), min_size=QK // 16, max_size=QK // 16),
        st.integers(1, 3),
    ).map(build)


def _check(x: np.ndarray) -> None:
    want = ggml_quantize(x, "q6_k")
    got = Q6_K_NUMBA.quantize_numba(x, SRC_F32)
    assert np.array_equal(got, want)
    assert np.array_equal(q6_k.quantize_xp(x, np), want)
    deq = Q6_K_NUMBA.dequantize_numba(got)
    assert np.array_equal(
        deq.view(np.uint32), ggml_dequantize(want, "q6_k", x.shape[1]).view(np.uint32)
    )


@SETTINGS
@given(_matrices(any_finite))
def test_any_finite_float32(x: np.ndarray) -> None:
    _check(x)


@settings(max_examples=60, deadline=None)
@given(_matrices(few_values))
def test_few_distinct_values(x: np.ndarray) -> None:
    _check(x)


@SETTINGS
@given(_scaled_runs())
def test_independent_run_scales(x: np.ndarray) -> None:
    _check(x)


@settings(max_examples=60, deadline=None)
@given(_matrices(any_finite))
def test_bf16_source_equals_its_float32(x: np.ndarray) -> None:
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)
    exact = (bits.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(Q6_K_NUMBA.quantize_numba(bits, SRC_BF16), ggml_quantize(exact, "q6_k"))
