"""Q4_0 and Q8_0 against ggml's own C: byte-identical quantize, bit-identical dequantize, on
every backend (numba, the array code with numpy, and the public API's chunked numpy path)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from ggml_oracle import ggml_dequantize, ggml_quantize, gguf_dequantize, gguf_quantize_q4_0

from nntrtool.qtypes import Q4_0, Q8_0
from nntrtool.quant import dequantize, get_kernels, quantize
from nntrtool.quant.common import SRC_BF16, SRC_F16, SRC_F32

TYPES = ["q4_0", "q8_0"]
QK = 32
F32_MAX = np.finfo(np.float32).max
SUB = np.float32(1e-45)  # smallest subnormal


def _blocks(rng, rows, cols):
    return rng.standard_normal((rows, cols // QK, QK))


def make(name: str, rng: np.random.Generator, rows: int = 16, cols: int = 1024) -> np.ndarray:
    """A float32 (rows, cols) matrix of a named distribution."""
    if name == "normal":
        x = rng.standard_normal((rows, cols))
    elif name == "heavy_tailed":
        x = rng.standard_t(1.5, (rows, cols))
    elif name == "cauchy":
        x = rng.standard_cauchy((rows, cols)) * 1e3
    elif name == "sparse":
        x = rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < 0.03)
    elif name == "mixed_block_scales":
        x = _blocks(rng, rows, cols) * 10.0 ** rng.uniform(-38, 37, (rows, cols // QK, 1))
    elif name == "weights_like":
        x = rng.standard_normal((rows, cols)) * 0.02
        x[:, rng.integers(0, cols, 4)] *= 300
    elif name == "grid":
        x = rng.integers(-40, 41, (rows, cols)) * 0.25
    elif name == "ties":
        # Few magnitudes: the largest |x| appears several times with both signs, and many
        # x * id land exactly on the rounding boundaries.
        x = rng.choice(
            np.array([-4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4]), (rows, cols)
        )
    elif name == "uniform":
        x = rng.uniform(-1, 1, (rows, cols))
    elif name == "positive":
        x = rng.exponential(1.0, (rows, cols))
    elif name == "subnormal":
        x = rng.integers(-(2**22), 2**22, (rows, cols)).astype(np.float32) * SUB
    elif name == "tiny_normal":
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-38, -30, (rows, 1))
    elif name == "fp16_overflow":
        # up to ~1e37: past every fp16 scale, yet finite in float32 whatever the draw
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(4, 37, (rows, 1))
    elif name == "fp16_underflow":
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-9, -4, (rows, 1))
    elif name == "bit_patterns":
        bits = rng.integers(0, 2**32, (rows, cols), dtype=np.uint64).astype(np.uint32)
        x = bits.view(np.float32).copy()
        x[~np.isfinite(x)] = 1.0
    else:
        raise ValueError(name)
    return np.ascontiguousarray(x, dtype=np.float32).reshape(rows, cols)


DISTRIBUTIONS = [
    "normal",
    "heavy_tailed",
    "cauchy",
    "sparse",
    "mixed_block_scales",
    "weights_like",
    "grid",
    "ties",
    "uniform",
    "positive",
    "subnormal",
    "tiny_normal",
    "fp16_overflow",
    "fp16_underflow",
    "bit_patterns",
]


def edge_blocks() -> np.ndarray:
    """One row per hand-made block: the cases that break a careless port."""
    rows = []

    def add(values):
        b = np.zeros(QK, dtype=np.float32)
        v = np.asarray(values, dtype=np.float32).ravel()
        b[: v.size] = v
        rows.append(b)

    add([])  # all zero: Q4_0 stores d = -0.0
    add(np.full(QK, -0.0))
    add(np.full(QK, 1.0))  # constant blocks
    add(np.full(QK, -1.0))
    add(np.full(QK, 0.37))
    add([1.0, -1.0, 0.5])  # tie in magnitude, positive first
    add([-1.0, 1.0, 0.5])  # tie in magnitude, negative first
    add([0.5, -2.0, 2.0, 1.0])
    add([0, 0, 0, -0.0, 3.0])
    add([F32_MAX, 1.0, -1.0])  # huge outliers
    add([-F32_MAX, F32_MAX, 0.5])
    add([3e38, 1e-30, -2e38])
    add([1e6, -3e5, 7.0])  # d overflows fp16 (Q4_0 d = 1.25e5)
    add([65504 * 8.0, 1.0])
    add([65520 * 8.0, 1.0])  # rounds to fp16 inf
    add([65519 * 8.0, -1.0])
    add([1e7, 1.0])  # Q8_0 d overflows fp16
    add([SUB])  # d underflows to 0 in float32
    add([SUB, -SUB, 2 * SUB])
    add([1e-38, -5e-39, 3e-39])  # 1/d overflows: codes of an inf/NaN product
    add([2.0**-125, 2.0**-126, -(2.0**-127)])
    add([2.0**-122, 1e-40])
    add([2.0**-120, -(2.0**-121)])
    add(np.linspace(-8, 8, QK))  # codes exactly on .5 boundaries
    add(np.linspace(-127, 127, QK))
    add(np.arange(QK) - 15.5)
    add(np.array([0.49999997, -0.49999997, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 127.0]))
    add(np.array([63.5, -63.5, 127.0, 0.5, 1.5]))
    add(np.full(QK, 6.1035156e-05))  # smallest normal fp16
    add(np.full(QK, -5.9604645e-08))  # smallest subnormal fp16
    return np.stack(rows)


def _numba(qtype, x):
    return get_kernels(qtype).quantize_numba(np.ascontiguousarray(x), SRC_F32)


def _xp(qtype, x):
    return get_kernels(qtype).quantize_xp(x, np)


QUANTIZERS = {
    "numba": _numba,
    "xp_numpy": _xp,
    "api_numpy": lambda t, x: quantize(x, t, backend="numpy"),
    "api_auto": lambda t, x: quantize(x, t),
}


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_quantize_matches_ggml(qtype, dist):
    x = make(dist, np.random.default_rng(zlib.crc32(dist.encode())))
    expected = ggml_quantize(x, qtype)
    for name, fn in QUANTIZERS.items():
        got = fn(qtype, x)
        assert got.dtype == np.uint8 and got.shape == expected.shape, name
        if not np.array_equal(got, expected):
            bad = np.argwhere(got != expected)[0]
            raise AssertionError(f"{name}: first differing byte at {tuple(bad)}")


@pytest.mark.parametrize("qtype", TYPES)
def test_edge_blocks_match_ggml(qtype):
    x = edge_blocks()
    expected = ggml_quantize(x, qtype)
    for name, fn in QUANTIZERS.items():
        got = fn(qtype, x)
        for r in range(x.shape[0]):
            assert np.array_equal(got[r], expected[r]), (
                name,
                r,
                x[r, :4],
                got[r, :6],
                expected[r, :6],
            )
    # And the same blocks laid side by side in one row.
    row = x.reshape(1, -1)
    assert np.array_equal(_numba(qtype, row), ggml_quantize(row, qtype))


def test_q4_0_all_zero_block_stores_negative_zero():
    q = quantize(np.zeros((1, 64), np.float32), "q4_0")
    assert q[0, :2].tobytes() == b"\x00\x80" and q[0, 18:20].tobytes() == b"\x00\x80"
    assert (q[0, 2:18] == 0x88).all()
    q8 = quantize(np.zeros((1, 32), np.float32), "q8_0")
    assert not q8.any()


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("dist", ["normal", "mixed_block_scales", "fp16_overflow", "subnormal"])
def test_dequantize_matches_ggml(qtype, dist):
    x = make(dist, np.random.default_rng(7))
    data = ggml_quantize(x, qtype)
    expected = ggml_dequantize(data, qtype, x.shape[1]).view(np.uint32)
    k = get_kernels(qtype)
    assert np.array_equal(k.dequantize_numba(data).view(np.uint32), expected)
    assert np.array_equal(k.dequantize_xp(data, np).view(np.uint32), expected)
    for backend in ("numpy", "numba", "auto"):
        got = dequantize(data, qtype, x.shape, backend=backend)
        assert got.dtype == np.float32 and got.shape == x.shape
        assert np.array_equal(got.view(np.uint32), expected), backend


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_arbitrary_bytes_matches_ggml(qtype):
    # Every byte pattern, including fp16 inf/NaN scales: still ggml's bits (NaN as NaN).
    ttype = {"q4_0": Q4_0, "q8_0": Q8_0}[qtype]
    data = np.random.default_rng(8).integers(0, 256, (64, 8 * ttype.block_bytes), dtype=np.uint8)
    cols = 8 * ttype.block_size
    expected = ggml_dequantize(data, qtype, cols)
    for backend in ("numpy", "numba"):
        got = dequantize(data, qtype, (64, cols), backend=backend)
        assert np.array_equal(got, expected, equal_nan=True), backend
        same = np.isnan(expected) | (got.view(np.uint32) == expected.view(np.uint32))
        assert same.all(), backend


def test_q4_0_matches_gguf_except_zero_block_sign():
    rng = np.random.default_rng(9)
    x = np.concatenate(
        [make("normal", rng), make("ties", rng), make("heavy_tailed", rng), np.zeros((1, 1024))]
    ).astype(np.float32)
    x[0, :64] = 0
    x[1, :32] = -0.0  # gguf takes max = -0.0 here and stores d = +0.0
    ours = quantize(x, "q4_0").reshape(-1, 18)
    theirs = gguf_quantize_q4_0(x).reshape(-1, 18)
    blocks = x.reshape(-1, 32)
    differs = (np.abs(blocks).max(axis=1) == 0) & np.signbit(blocks[:, 0])
    assert differs.sum() == 1
    assert np.array_equal(ours[~differs], theirs[~differs])
    assert ours[differs, 1] == 0x80 and theirs[differs, 1] == 0x00
    assert np.array_equal(ours[differs, 2:], theirs[differs, 2:])


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_matches_gguf(qtype):
    data = quantize(make("heavy_tailed", np.random.default_rng(10)), qtype)
    cols = 1024
    expected = gguf_dequantize(data, qtype).reshape(-1, cols)
    got = dequantize(data, qtype, (data.shape[0], cols))
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES + ["q6_k"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_half_precision_sources_decode_on_the_fly(qtype, backend):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((12, 512)) * 10.0 ** rng.uniform(-6, 4, (12, 1))).astype(np.float32)
    f16 = x.astype(np.float16)
    expected = ggml_quantize(f16.astype(np.float32), qtype)
    assert np.array_equal(quantize(f16, qtype, backend=backend), expected)
    assert np.array_equal(
        quantize(f16.view(np.uint16), qtype, backend=backend, source_dtype="F16"), expected
    )
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16)
    decoded = (bf16.astype(np.uint32) << 16).view(np.float32)
    expected = ggml_quantize(decoded, qtype)
    for name in ("bf16", "BF16", "bfloat16"):
        assert np.array_equal(quantize(bf16, qtype, backend=backend, source_dtype=name), expected)
    k = get_kernels(qtype)
    assert np.array_equal(k.quantize_numba(bf16, SRC_BF16), expected)
    assert np.array_equal(
        k.quantize_numba(f16.view(np.uint16), SRC_F16), ggml_quantize(f16.astype(np.float32), qtype)
    )


@pytest.mark.parametrize("qtype", TYPES)
def test_one_dimensional_input_is_one_row(qtype):
    x = make("normal", np.random.default_rng(12), rows=1, cols=256)[0]
    assert np.array_equal(quantize(x, qtype), ggml_quantize(x.reshape(1, -1), qtype))


@pytest.mark.parametrize("qtype", TYPES)
def test_non_contiguous_and_memmap_inputs(qtype, tmp_path):
    x = make("normal", np.random.default_rng(13), rows=8, cols=512)
    expected = ggml_quantize(x[:, :256], qtype)
    assert np.array_equal(quantize(x[:, :256], qtype), expected)  # strided rows
    path = tmp_path / "x.bin"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    assert np.array_equal(quantize(mm, qtype), ggml_quantize(x, qtype))


@pytest.mark.parametrize("qtype", TYPES)
def test_shapes_of_many_sizes(qtype):
    rng = np.random.default_rng(14)
    for rows, nb in [(1, 1), (3, 1), (1, 7), (5, 3), (33, 2), (2, 129)]:
        x = rng.standard_normal((rows, nb * QK)).astype(np.float32)
        expected = ggml_quantize(x, qtype)
        assert np.array_equal(quantize(x, qtype), expected)
        assert np.array_equal(quantize(x, qtype, backend="numpy"), expected)
        deq = dequantize(expected, qtype, x.shape)
        assert np.array_equal(deq, ggml_dequantize(expected, qtype, x.shape[1]))


@pytest.mark.parametrize("qtype", TYPES)
def test_every_finite_fp16_value_decodes_exactly_in_the_kernels(qtype):
    # The numba kernels decode fp16 blocks in registers: all 63488 finite values (shuffled so
    # blocks mix zeros, subnormals and normals) must quantize as their float32 values do.
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = bits[np.isfinite(bits.view(np.float16))]
    finite = np.random.default_rng(15).permutation(finite).reshape(-1, 64)
    expected = ggml_quantize(finite.view(np.float16).astype(np.float32), qtype)
    assert np.array_equal(get_kernels(qtype).quantize_numba(finite, SRC_F16), expected)
    assert np.array_equal(quantize(finite.view(np.float16), qtype, backend="numpy"), expected)
    # Sorted too: whole blocks of subnormals, of tiny normals, of huge values.
    ordered = np.sort(finite.reshape(-1)).reshape(-1, 64)
    expected = ggml_quantize(ordered.view(np.float16).astype(np.float32), qtype)
    assert np.array_equal(get_kernels(qtype).quantize_numba(ordered, SRC_F16), expected)


@pytest.mark.parametrize("qtype", TYPES)
def test_every_bf16_exponent_decodes_exactly_in_the_kernels(qtype):
    rng = np.random.default_rng(16)
    bits = rng.integers(0, 1 << 16, 64 * 1024, dtype=np.uint32).astype(np.uint16)
    bits = bits[(bits & 0x7F80) != 0x7F80][: 64 * 900].reshape(-1, 64)  # finite only
    expected = ggml_quantize((bits.astype(np.uint32) << 16).view(np.float32), qtype)
    assert np.array_equal(get_kernels(qtype).quantize_numba(bits, SRC_BF16), expected)
