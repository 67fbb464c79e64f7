"""The shared conversion helpers: numba scalar versions against numpy, exhaustively."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from nntrtool.errors import NonFiniteError, QuantError
from nntrtool.quant import _numba_common as nc
from nntrtool.quant.common import (
    SRC_BF16,
    SRC_F16,
    SRC_F32,
    bf16_to_f32,
    check_finite,
    f16_bits,
    f16_to_f32,
    nearest_int,
    source_kind,
    to_f32,
)


@njit
def _nb_f16_bits(x):
    out = np.empty(x.size, np.uint16)
    for i in range(x.size):
        out[i] = nc.f32_to_f16_bits(x[i])
    return out


@njit
def _nb_f16_to_f32(h):
    out = np.empty(h.size, np.float32)
    for i in range(h.size):
        out[i] = nc.f16_bits_to_f32(h[i])
    return out


@njit
def _nb_nearest_int(v):
    out = np.empty(v.size, np.int32)
    for i in range(v.size):
        out[i] = nc.nearest_int(v[i])
    return out


@njit
def _nb_load_row(row, kind):
    out = np.empty(row.size, np.float32)
    for j in range(row.size):
        out[j] = nc.load_f32(row, j, kind)
    return out


ALL_F16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_f16_to_f32_all_values():
    expected = ALL_F16.view(np.float16).astype(np.float32)
    assert _same_bits(_nb_f16_to_f32(ALL_F16), expected)
    assert _same_bits(f16_to_f32(ALL_F16, np), expected)


def _f16_midpoints() -> np.ndarray:
    """Every float32 exactly halfway between two adjacent finite fp16 values, and its
    float32 neighbours, both signs (the ties of round-to-nearest-even)."""
    pos = ALL_F16[:0x7C00].view(np.float16).astype(np.float64)
    nxt = ALL_F16[1:0x7C01].view(np.float16).astype(np.float64)
    nxt[-1] = 65536.0  # halfway to "the next value" past 65504 is the overflow threshold
    mid = ((pos + nxt) / 2).astype(np.float32)
    near = np.concatenate(
        [mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(0))]
    )
    return np.concatenate([near, -near])


def test_f32_to_f16_ties_and_boundaries():
    special = np.array(
        [
            0.0,
            -0.0,
            65504,
            65519.996,
            65520,
            65536,
            1e30,
            np.inf,
            -np.inf,
            6e-8,
            2.9802322e-08,
            2.9802326e-08,
            1e-45,
            6.1035156e-05,
            6.1035152e-05,
            3.4028235e38,
        ],
        dtype=np.float32,
    )
    x = np.concatenate([_f16_midpoints(), special, -special])
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    assert _same_bits(_nb_f16_bits(x), expected)
    with np.errstate(over="ignore"):
        assert _same_bits(f16_bits(x, np), expected)


def test_f32_to_f16_random_bit_patterns():
    rng = np.random.default_rng(1)
    # Random bits cover every exponent (subnormals, overflow, NaN payloads) evenly.
    x = rng.integers(0, 1 << 32, size=4_000_000, dtype=np.uint64).astype(np.uint32)
    x = x.view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    assert _same_bits(_nb_f16_bits(x), expected)


def test_f32_to_f16_random_in_fp16_range():
    rng = np.random.default_rng(2)
    mag = np.exp2(rng.uniform(-26, 16.1, size=2_000_000)).astype(np.float32)
    x = mag * rng.choice(np.array([-1, 1], dtype=np.float32), size=mag.size)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    assert _same_bits(_nb_f16_bits(x), expected)


def _nearest_int_reference(v: np.ndarray) -> np.ndarray:
    # Round half to even in exact (float64) arithmetic: what the trick computes for |v| <= 2^22.
    return np.rint(v.astype(np.float64)).astype(np.int32)


def test_nearest_int_matches_round_half_even():
    rng = np.random.default_rng(3)
    v = np.concatenate(
        [
            (rng.standard_normal(1_000_000) * 40).astype(np.float32),
            np.arange(-64, 64, 0.5, dtype=np.float32),  # exact halves
            np.nextafter(np.arange(-64, 64, 0.5, dtype=np.float32), np.float32(np.inf)),
            np.nextafter(np.arange(-64, 64, 0.5, dtype=np.float32), np.float32(-np.inf)),
            np.array([0.49999997, -0.49999997, 4194302.5, -4194302.5, 4194303.0], dtype=np.float32),
        ]
    )
    expected = _nearest_int_reference(v)
    assert np.array_equal(nearest_int(v, np), expected)
    assert np.array_equal(_nb_nearest_int(v), expected)


def test_nearest_int_stays_float32():
    # 0.49999997 + 12582912 in float64 would round differently from float32; must give 0.
    v = np.array([0.49999997], dtype=np.float32)
    assert nearest_int(v, np)[0] == 0
    assert _nb_nearest_int(v)[0] == 0


def test_bf16_to_f32():
    expected = (ALL_F16.astype(np.uint32) << 16).view(np.float32)
    assert _same_bits(bf16_to_f32(ALL_F16, np), expected)
    assert _same_bits(_nb_load_row(ALL_F16, SRC_BF16), expected)
    assert _same_bits(to_f32(ALL_F16, SRC_BF16, np), expected)


def test_load_row_kinds():
    f32 = np.random.default_rng(4).standard_normal(1000).astype(np.float32)
    assert _same_bits(_nb_load_row(f32, SRC_F32), f32)
    expected16 = ALL_F16.view(np.float16).astype(np.float32)
    assert _same_bits(_nb_load_row(ALL_F16, SRC_F16), expected16)
    assert _same_bits(to_f32(ALL_F16, SRC_F16, np), expected16)


@pytest.mark.parametrize(
    "name,kind",
    [
        ("F32", SRC_F32),
        ("f16", SRC_F16),
        ("BF16", SRC_BF16),
        ("bfloat16", SRC_BF16),
        ("float32", SRC_F32),
        ("Float16", SRC_F16),
    ],
)
def test_source_kind_names(name, kind):
    assert source_kind(name) == kind


def test_source_kind_unknown_is_one_line():
    with pytest.raises(QuantError) as err:
        source_kind("int8")
    assert "\n" not in str(err.value) and "int8" in str(err.value)


def test_check_finite_names_first_bad_element():
    x = np.zeros((5, 64), dtype=np.float32)
    check_finite(x, np)
    x[3, 17] = np.inf
    x[4, 2] = np.nan
    with pytest.raises(NonFiniteError) as err:
        check_finite(x, np, row_offset=100)
    assert (err.value.row, err.value.col) == (103, 17)
    assert "row 103, column 17" in str(err.value) and "+inf" in str(err.value)
    x[3, 17] = 0
    with pytest.raises(NonFiniteError) as err:
        check_finite(x, np)
    assert (err.value.row, err.value.col) == (4, 2) and "NaN" in str(err.value)
