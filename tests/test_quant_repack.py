"""Q4_0 repacking against ggml-cpu's repack, the inverse, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_oracle import ggml_quantize, ggml_repack

from nntrtool.errors import QuantError
from nntrtool.qtypes import LAYOUTS
from nntrtool.quant import repack, unpack
from nntrtool.quant.repack import repack_numba, repack_xp, unpack_numba, unpack_xp

LAYOUT_NAMES = list(LAYOUTS)


def _q4_0(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    return ggml_quantize(x, "q4_0")


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("rows,cols", [(8, 32), (8, 256), (16, 4096), (24, 96), (64, 640)])
def test_repack_matches_ggml(layout, rows, cols):
    q = _q4_0(rows, cols, seed=rows * cols)
    expected = ggml_repack(q, layout)
    lay = LAYOUTS[layout]
    for name, got in {
        "api": repack(q, layout),
        "api_numpy": repack(q, layout, backend="numpy"),
        "numba": repack_numba(q, lay),
        "xp": repack_xp(q, lay, np),
    }.items():
        assert got.shape == q.shape and got.dtype == np.uint8, name
        assert np.array_equal(got, expected), name
    for name, back in {
        "api": unpack(expected, layout),
        "api_numpy": unpack(expected, layout, backend="numpy"),
        "numba": unpack_numba(expected, lay),
        "xp": unpack_xp(expected, lay, np),
    }.items():
        assert np.array_equal(back, q), name


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_repack_arbitrary_bytes_is_a_permutation_with_xor(layout):
    # Any bytes, not only valid quantizer output: a pure permutation + XOR 0x88 of the codes.
    data = np.random.default_rng(5).integers(0, 256, (16, 18 * 12), dtype=np.uint8)
    packed = repack(data, layout)
    assert np.array_equal(packed, ggml_repack(data, layout))
    assert np.array_equal(unpack(packed, layout), data)
    assert not np.array_equal(packed, data)


def test_layout_bytes_by_hand():
    # Two rows of the 4-row layouts would not do; build 4 rows, one block each, by hand.
    rows = []
    for r in range(4):
        d = np.array([0x10 + r, 0x20 + r], dtype=np.uint8)
        qs = np.arange(16, dtype=np.uint8) + 16 * r
        rows.append(np.concatenate([d, qs]))
    q = np.stack(rows)
    p = repack(q, "q4_0_4x4").reshape(-1)
    assert list(p[:8]) == [0x10, 0x20, 0x11, 0x21, 0x12, 0x22, 0x13, 0x23]
    qs = p[8:] ^ 0x88
    # chunk i (4 bytes) = row i % 4, bytes (i // 4) * 4 ..
    assert list(qs[:4]) == [0, 1, 2, 3] and list(qs[4:8]) == [16, 17, 18, 19]
    assert list(qs[16:20]) == [4, 5, 6, 7]
    p8 = repack(q, "q4_0_4").reshape(-1)[8:] ^ 0x88
    assert list(p8[:8]) == list(range(8)) and list(p8[8:16]) == list(range(16, 24))


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_rows_not_a_multiple_of_the_group_are_refused(layout):
    group = LAYOUTS[layout].rows
    q = _q4_0(group + 2, 64)
    with pytest.raises(ValueError):
        ggml_repack(q, layout)  # ggml refuses too
    for fn in (repack, unpack):
        with pytest.raises(QuantError) as err:
            fn(q, layout)
        msg = str(err.value)
        assert "\n" not in msg and str(group) in msg and str(group + 2) in msg


def test_bad_layout_and_shapes_are_one_line_errors():
    q = _q4_0(8, 64)
    cases = [
        lambda: repack(q, "q4_0_16"),
        lambda: repack(q.reshape(-1), "q4_0_8"),
        lambda: repack(q[:, :20], "q4_0_8"),
        lambda: repack(q.astype(np.int16), "q4_0_8"),
        lambda: unpack(q[:, :0], "q4_0_4"),
    ]
    for case in cases:
        with pytest.raises(QuantError) as err:
            case()
        assert "\n" not in str(err.value)


def test_layout_names_are_case_insensitive_and_objects_work():
    q = _q4_0(8, 64)
    assert np.array_equal(repack(q, "Q4_0_8"), repack(q, LAYOUTS["q4_0_8"]))


def test_zero_rows_and_non_contiguous_input():
    empty = np.zeros((0, 36), dtype=np.uint8)
    assert repack(empty, "q4_0_8").shape == (0, 36)
    q = _q4_0(8, 128)
    view = q[:, :72]  # a strided view: the first two blocks of each row
    assert np.array_equal(repack(view, "q4_0_4"), ggml_repack(np.ascontiguousarray(view), "q4_0_4"))
