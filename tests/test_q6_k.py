"""Q6_K against ggml's own C: byte-identical quantize, bit-identical dequantize, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_oracle import ggml_dequantize, ggml_quantize, gguf_dequantize

from nntrtool.errors import NonFiniteError, QuantError
from nntrtool.qtypes import Q6_K
from nntrtool.quant import q6_k
from nntrtool.quant.common import SRC_BF16, SRC_F16, SRC_F32
from nntrtool.quant.registry import get_kernels  # noqa: E402

Q6_K_NUMBA = get_kernels("q6_k")

QK = Q6_K.block_size
F32_MAX = np.finfo(np.float32).max
F32_TINY = np.finfo(np.float32).tiny  # smallest normal
F32_SUB = np.float32(1e-45)  # smallest subnormal


def _sub_blocks(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols // 16, 16) view helper for per-sub-block shaping."""
    return rng.standard_normal((rows, cols // 16, 16))


def _dist(name: str, rng: np.random.Generator, rows: int = 24, cols: int = 1024) -> np.ndarray:
    """A float32 test matrix of one of the named distributions."""
    if name == "normal":
        x = rng.standard_normal((rows, cols))
    elif name == "heavy_tailed":
        x = rng.standard_t(1.5, (rows, cols))
    elif name == "cauchy_outliers":
        x = rng.standard_cauchy((rows, cols)) * 1e3
    elif name == "sparse":
        x = rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < 0.03)
    elif name == "mixed_subblock_scales":
        scales = 10.0 ** rng.uniform(-18, 12, (rows, cols // 16, 1))
        x = (_sub_blocks(rng, rows, cols) * scales).reshape(rows, cols)
    elif name == "mixed_superblock_scales":
        scales = 10.0 ** rng.uniform(-20, 20, (rows, cols // QK, 1))
        x = (rng.standard_normal((rows, cols // QK, QK)) * scales).reshape(rows, cols)
    elif name == "grid":
        x = rng.integers(-40, 41, (rows, cols)) * 0.25
    elif name == "small_grid_ties":
        # Few distinct magnitudes: many ties for the largest value, and codes on .5 boundaries.
        x = rng.choice(np.array([-3.0, -1.5, -1.0, 0.0, 0.5, 1.0, 1.5, 3.0]), (rows, cols))
    elif name == "uniform":
        x = rng.uniform(-1, 1, (rows, cols))
    elif name == "positive":
        x = rng.exponential(1.0, (rows, cols))
    elif name == "weights_like":
        x = rng.standard_normal((rows, cols)) * 0.02
        x[:, rng.integers(0, cols, 3)] *= 200  # outlier channels
    elif name == "subnormal":
        x = rng.integers(-(2**20), 2**20, (rows, cols)).astype(np.float32) * F32_SUB
    elif name == "tiny":
        x = rng.standard_normal((rows, cols)) * 1e-16
    elif name == "near_eps":
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-17, -12, (rows, 1))
    elif name == "fp16_d_underflow":
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-9, -4, (rows, 1))
    elif name == "fp16_d_overflow":
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(7, 11, (rows, 1))
    elif name == "cube_overflow":
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(11, 20, (rows, 1))
    elif name == "huge":
        x = rng.uniform(-1, 1, (rows, cols)) * F32_MAX
    else:
        raise AssertionError(name)
    return np.asarray(x, dtype=np.float32)


DISTRIBUTIONS = [
    "normal",
    "heavy_tailed",
    "cauchy_outliers",
    "sparse",
    "mixed_subblock_scales",
    "mixed_superblock_scales",
    "grid",
    "small_grid_ties",
    "uniform",
    "positive",
    "weights_like",
    "subnormal",
    "tiny",
    "near_eps",
    "fp16_d_underflow",
    "fp16_d_overflow",
    "cube_overflow",
    "huge",
]


def _edge_blocks() -> np.ndarray:
    """Hand-made superblocks, one per row, for the cases the format spells out."""
    rows = []

    def add(v):
        rows.append(np.broadcast_to(np.asarray(v, dtype=np.float32), (QK,)).copy())

    add(0.0)  # all zero: 210 zero bytes
    add(-0.0)
    add(1.0)  # constant
    add(-7.25)
    add(F32_SUB)  # subnormal constant, below GROUP_MAX_EPS
    add(1e-15)  # exactly the threshold
    add(np.float32(1e-15) * np.float32(1.0000001))
    add(9.99e-16)
    add(F32_MAX)
    add(-F32_MAX)
    add(65504.0 * 128 * 32)  # d right at the fp16 limit
    add(3e9)  # d overflows fp16
    x = np.zeros(QK)
    x[0] = 1.0  # one value in one sub-block; the other runs are zero
    add(x)
    x = np.zeros(QK)
    x[77] = -1e30  # a single huge outlier
    add(x)
    x = np.full(QK, 1e-3)
    x[5] = 1e8  # outlier next to small values: their sub-block scale rounds to 0
    add(x)
    x = np.tile([1.0, -1.0], QK // 2)  # ties in magnitude, first (positive) wins
    add(x)
    x = np.tile([-1.0, 1.0], QK // 2)  # ties, first (negative) wins
    add(x)
    x = np.arange(QK, dtype=np.float32) - 128  # grid
    add(x)
    x = (np.arange(QK) % 16 - 8) * 0.5  # halves: codes land on rounding ties
    add(x)
    x = np.zeros(QK)
    x[::16] = 1e-16  # every run tiny but not zero
    add(x)
    x = np.repeat(10.0 ** np.arange(-20, 12, 2), 16) * np.tile([1, -1], QK // 2)
    add(x)  # one scale per run, from 1e-20 to 1e10
    x = np.repeat(np.where(np.arange(16) % 2, 1e-10, 1.0), 16)
    add(x)  # alternating runs: scales whose int8 code is 0 keep the searched codes
    x = np.linspace(-1, 1, QK)
    x[200] = 1e38  # x^2 overflows float32 in the search
    add(x)
    x = np.full(QK, 1e13)
    x[1::2] = -2e13  # x^3 overflows: scales go inf, d goes inf
    add(x)
    return np.stack(rows)


def _assert_same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    mismatch = a.view(np.uint32) != b.view(np.uint32)
    assert not mismatch.any(), (
        f"{int(mismatch.sum())} values differ, first at {np.argwhere(mismatch)[0]}"
    )


def _assert_same_bytes(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.uint8 and got.shape == want.shape
    if not np.array_equal(got, want):
        blocks = (got != want).reshape(got.shape[0], -1, Q6_K.block_bytes).any(axis=2)
        r, b = np.argwhere(blocks)[0]
        raise AssertionError(f"{int(blocks.sum())} superblocks differ, first row {r} block {b}")


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_quantize_matches_ggml(name: str) -> None:
    x = _dist(name, np.random.default_rng(abs(hash(name)) % 2**32))
    want = ggml_quantize(x, "q6_k")
    _assert_same_bytes(Q6_K_NUMBA.quantize_numba(x, SRC_F32), want)
    _assert_same_bytes(q6_k.quantize_xp(x, np), want)


def test_edge_blocks_match_ggml() -> None:
    x = _edge_blocks()
    want = ggml_quantize(x, "q6_k")
    _assert_same_bytes(Q6_K_NUMBA.quantize_numba(x, SRC_F32), want)
    _assert_same_bytes(q6_k.quantize_xp(x, np), want)
    assert not want[0].any() and not want[1].any()  # all-zero blocks are all-zero bytes
    assert not want[4].any()  # below GROUP_MAX_EPS too


def test_edge_blocks_exercise_the_traps() -> None:
    """The edge blocks really reach the special paths (so the test above cannot pass vacuously)."""
    q = ggml_quantize(_edge_blocks(), "q6_k")
    d = q[:, q6_k.D_OFF :].copy().view("<u2").ravel()
    assert (d == 0x7C00).any() or (d == 0xFC00).any()  # d overflowed to inf
    sc = q[:, q6_k.SC_OFF : q6_k.D_OFF].view(np.int8)
    assert (sc == -128).any() and (sc == 0).any()
    ql = q[:, : q6_k.QH_OFF]
    assert ((sc == 0).any(axis=1) & (ql == 0).any(axis=1)).any()  # zero runs keep code 0


def test_large_normal_matrix_matches_ggml() -> None:
    """Enough superblocks (16 K) that a rare rounding difference would show."""
    x = np.random.default_rng(7).standard_normal((1024, 4096)).astype(np.float32)
    want = ggml_quantize(x, "q6_k")
    _assert_same_bytes(Q6_K_NUMBA.quantize_numba(x, SRC_F32), want)
    _assert_same_bytes(q6_k.quantize_xp(x[:256], np), want[:256])


@pytest.mark.parametrize("name", ["normal", "mixed_subblock_scales", "fp16_d_overflow", "huge"])
def test_dequantize_matches_ggml_and_gguf(name: str) -> None:
    x = _dist(name, np.random.default_rng(3), rows=16, cols=768)
    data = ggml_quantize(np.concatenate([x, _edge_blocks().reshape(-1, 768)[:8]]), "q6_k")
    want = ggml_dequantize(data, "q6_k", 768)
    _assert_same_bits(Q6_K_NUMBA.dequantize_numba(data), want)
    _assert_same_bits(q6_k.dequantize_xp(data, np), want)
    finite = np.isfinite(want).all(axis=1)
    ref = gguf_dequantize(data[finite], "q6_k").reshape(-1, 768)
    _assert_same_bits(Q6_K_NUMBA.dequantize_numba(data[finite]), ref)


def test_dequantize_random_bytes_matches_ggml() -> None:
    """Every bit pattern decodes as ggml decodes it, including odd scales and inf/NaN d."""
    data = np.random.default_rng(11).integers(0, 256, (32, 4 * Q6_K.block_bytes), dtype=np.uint8)
    data[:4, q6_k.D_OFF + 1 :: Q6_K.block_bytes] = 0x7C  # d = inf / NaN patterns
    want = ggml_dequantize(data, "q6_k", 4 * QK)
    _assert_same_bits(Q6_K_NUMBA.dequantize_numba(data), want)
    _assert_same_bits(q6_k.dequantize_xp(data, np), want)


def test_round_trip_error_is_small() -> None:
    x = np.random.default_rng(5).standard_normal((8, 1024)).astype(np.float32)
    y = Q6_K_NUMBA.dequantize_numba(Q6_K_NUMBA.quantize_numba(x, SRC_F32))
    assert np.abs(y - x).max() < 0.1 * np.abs(x).max()
    assert y.shape == x.shape


@pytest.mark.parametrize("kind", [SRC_F16, SRC_BF16])
def test_half_sources_decode_in_kernel(kind: int) -> None:
    x = _dist("mixed_subblock_scales", np.random.default_rng(9), rows=8, cols=512)
    x = np.concatenate([x, _edge_blocks().reshape(-1, 512)[:6]])
    if kind == SRC_F16:
        with np.errstate(over="ignore"):
            src = x.astype(np.float16)
        src[~np.isfinite(src)] = 0
        exact = src.astype(np.float32)
        bits = src.view(np.uint16)
        _assert_same_bytes(Q6_K_NUMBA.quantize_numba(src, kind), ggml_quantize(exact, "q6_k"))
    else:
        bits = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncated bf16
        exact = (bits.astype(np.uint32) << 16).view(np.float32)
    _assert_same_bytes(Q6_K_NUMBA.quantize_numba(bits, kind), ggml_quantize(exact, "q6_k"))


def test_strided_and_empty_inputs() -> None:
    x = np.random.default_rng(1).standard_normal((12, 1024)).astype(np.float32)
    view = x[::3, 256:768]
    want = ggml_quantize(np.ascontiguousarray(view), "q6_k")
    _assert_same_bytes(Q6_K_NUMBA.quantize_numba(view, SRC_F32), want)
    _assert_same_bytes(q6_k.quantize_xp(view, np), want)
    with pytest.raises(QuantError):
        Q6_K_NUMBA.quantize_numba(x.T, SRC_F32)  # 12 columns: not a Q6_K row


def test_strided_input_is_quantized_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    from nntrtool.quant import _q6_k_numba

    monkeypatch.setattr(_q6_k_numba, "_STRIDED_SLICE_BYTES", 3 * 512 * 4)  # 3 rows a slice
    x = np.random.default_rng(4).standard_normal((20, 1024)).astype(np.float32)
    view = x[:, 512:]
    want = ggml_quantize(np.ascontiguousarray(view), "q6_k")
    _assert_same_bytes(Q6_K_NUMBA.quantize_numba(view, SRC_F32), want)
    x[16, 700] = np.inf
    with pytest.raises(NonFiniteError) as err:
        Q6_K_NUMBA.quantize_numba(x[:, 512:], SRC_F32)
    assert (err.value.row, err.value.col) == (16, 188)
    empty = np.zeros((0, 512), np.float32)
    assert Q6_K_NUMBA.quantize_numba(empty, SRC_F32).shape == (0, 2 * Q6_K.block_bytes)
    assert q6_k.quantize_xp(empty, np).shape == (0, 2 * Q6_K.block_bytes)
    assert Q6_K_NUMBA.dequantize_numba(np.zeros((0, 420), np.uint8)).shape == (0, 512)


@pytest.mark.parametrize(
    "kind, value", [(SRC_F32, np.nan), (SRC_F32, -np.inf), (SRC_F16, np.inf), (SRC_BF16, np.nan)]
)
def test_non_finite_is_refused_with_its_position(kind: int, value: float) -> None:
    x = np.random.default_rng(2).standard_normal((6, 768)).astype(np.float32)
    x[4, 700] = value
    x[5, 3] = value  # a later row: the first one is reported
    if kind == SRC_F16:
        src = x.astype(np.float16)
    elif kind == SRC_BF16:
        src = (x.view(np.uint32) >> 16).astype(np.uint16)
    else:
        src = x
    with pytest.raises(NonFiniteError) as err:
        Q6_K_NUMBA.quantize_numba(src, kind)
    assert (err.value.row, err.value.col) == (4, 700)
    assert "row 4, column 700" in str(err.value) and "\n" not in str(err.value)
    if kind == SRC_F32:
        with pytest.raises(NonFiniteError) as err:
            q6_k.quantize_xp(x, np)
        assert (err.value.row, err.value.col) == (4, 700)


@pytest.mark.parametrize(
    "x, kind",
    [
        (np.zeros((2, 300), np.float32), SRC_F32),  # not whole blocks
        (np.zeros(512, np.float32), SRC_F32),  # 1-D
        (np.zeros((2, 512), np.float64), SRC_F32),  # wrong dtype
        (np.zeros((2, 512), np.float32), SRC_F16),  # kind does not match dtype
        (np.zeros((2, 512), np.uint16), 7),  # unknown kind
    ],
)
def test_bad_input_is_one_clear_error(x: np.ndarray, kind: int) -> None:
    with pytest.raises(QuantError) as err:
        Q6_K_NUMBA.quantize_numba(x, kind)
    assert "\n" not in str(err.value)
    if kind == SRC_F32 and x.dtype == np.float32:
        with pytest.raises(QuantError):
            q6_k.quantize_xp(x, np)


def test_bad_data_is_one_clear_error() -> None:
    for data in (
        np.zeros((2, 200), np.uint8),
        np.zeros(210, np.uint8),
        np.zeros((1, 210), np.int8),
    ):
        with pytest.raises(QuantError):
            Q6_K_NUMBA.dequantize_numba(data)
        with pytest.raises(QuantError):
            q6_k.dequantize_xp(data, np)
