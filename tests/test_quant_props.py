"""Property tests: for any finite float32 blocks the backends agree with ggml byte for byte,
dequantization stays within half a step, and repack/unpack is a lossless round trip."""

from __future__ import annotations

import numpy as np
from ggml_oracle import ggml_quantize, ggml_repack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nntrtool.qtypes import LAYOUTS
from nntrtool.quant import dequantize, get_kernels, quantize, repack, unpack
from nntrtool.quant.common import SRC_F32

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# Values that stress the rounding: small integers and halves, scaled by a power of two.
grid_f32 = st.builds(
    lambda k, e: np.float32(np.ldexp(k / 2, e)), st.integers(-300, 300), st.integers(-140, 120)
)


@st.composite
def matrices(draw, block: int = 32):
    rows = draw(st.integers(1, 4))
    blocks = draw(st.integers(1, 3))
    elements = draw(st.sampled_from([finite_f32, grid_f32]))
    return draw(arrays(np.float32, (rows, blocks * block), elements=elements))


@SETTINGS
@given(x=matrices(), qtype=st.sampled_from(["q4_0", "q8_0"]))
def test_every_backend_matches_ggml(x, qtype):
    expected = ggml_quantize(x, qtype)
    k = get_kernels(qtype)
    assert np.array_equal(k.quantize_numba(x, SRC_F32), expected)
    assert np.array_equal(k.quantize_xp(x, np), expected)
    assert np.array_equal(quantize(x, qtype, backend="numpy"), expected)


@SETTINGS
@given(
    x=arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.sampled_from([32, 64, 96])),
        elements=st.floats(-1e4, 1e4, width=32),
    ),
    qtype=st.sampled_from(["q4_0", "q8_0"]),
)
def test_round_trip_error_is_within_one_step(x, qtype):
    # Where d is a normal fp16 number, every value comes back within one step |d| of itself
    # (Q4_0 clamps code 16 to 15, a full step; Q8_0 rounds, half a step) plus d's fp16 rounding.
    y = dequantize(quantize(x, qtype), qtype, x.shape).reshape(-1, 32)
    blocks = x.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    step = amax / (8 if qtype == "q4_0" else 127)
    normal_d = (step >= 6.2e-5)[:, 0]
    err = np.abs(y - blocks)[normal_d]
    assert (err <= step[normal_d] * 1.01).all()


@st.composite
def q4_0_bytes(draw):
    layout = draw(st.sampled_from(list(LAYOUTS)))
    group = LAYOUTS[layout].rows
    rows = group * draw(st.integers(0, 3))
    blocks = draw(st.integers(1, 4))
    data = draw(arrays(np.uint8, (rows, blocks * 18)))
    return data, layout


@SETTINGS
@given(case=q4_0_bytes())
def test_repack_round_trip_and_ggml(case):
    data, layout = case
    packed = repack(data, layout)
    assert np.array_equal(unpack(packed, layout), data)
    assert np.array_equal(repack(data, layout, backend="numpy"), packed)
    assert np.array_equal(unpack(packed, layout, backend="numpy"), data)
    if data.shape[0]:
        assert np.array_equal(packed, ggml_repack(data, layout))
