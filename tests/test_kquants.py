"""Q4_K, Q5_K, Q5_0, Q5_1 and F16 against ggml's own C: byte-identical quantize (plain and with an
importance matrix), bit-identical dequantize, on every backend."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from ggml_oracle import ggml_dequantize, ggml_quantize
from test_quant_kernels import DISTRIBUTIONS, edge_blocks, make

from nntrtool.errors import NonFiniteError, QuantError
from nntrtool.qtypes import get_type
from nntrtool.quant import dequantize, get_kernels, quantize
from nntrtool.quant.common import SRC_F32

TYPES = ["q4_k", "q5_k", "q5_0", "q5_1"]
BACKENDS = ["numba", "numpy"]


def _quantize(qtype: str, x: np.ndarray, backend: str, qw=None) -> np.ndarray:
    k = get_kernels(qtype)
    if backend == "numba":
        return k.quantize_numba(np.ascontiguousarray(x), SRC_F32, qw)
    if qw is None:
        return k.quantize_xp(x, np)
    return k.quantize_imatrix_xp(x, qw, np)


def _importance(rng: np.random.Generator, cols: int) -> np.ndarray:
    """Importance with zeros: scattered, and one whole 32-value run of them."""
    qw = rng.exponential(1.0, cols).astype(np.float32)
    qw[rng.random(cols) < 0.1] = 0
    qw[32:64] = 0
    return qw


def _assert_blocks_equal(got: np.ndarray, want: np.ndarray, qtype: str) -> None:
    nbytes = get_type(qtype).block_bytes
    bad = np.flatnonzero((got.reshape(-1, nbytes) != want.reshape(-1, nbytes)).any(axis=1))
    assert bad.size == 0, f"{bad.size} of {want.size // nbytes} blocks differ, first {bad[:5]}"


def edge_rows() -> np.ndarray:
    """Rows of 256 made of hand-made 32-value blocks: each edge block alone in a row of
    Gaussian weights, repeated over a whole superblock, and all of them side by side."""
    e = edge_blocks()
    rng = np.random.default_rng(7)
    rows = []
    for b in e:
        rows.append(np.tile(b, 8))
        mixed = (rng.standard_normal(256) * 0.02).astype(np.float32)
        mixed[96:128] = b
        rows.append(mixed)
    flat = e.reshape(-1)
    flat = np.concatenate([flat, np.zeros((-flat.size) % 256, np.float32)])
    rows.extend(flat.reshape(-1, 256))
    # Sub-blocks whose min is positive, constant sub-blocks, a single outlier.
    pos = np.abs(rng.standard_normal(256)).astype(np.float32) + 0.5
    rows.append(pos)
    const = np.repeat(rng.standard_normal(8).astype(np.float32), 32)
    rows.append(const)
    outlier = np.zeros(256, np.float32)
    outlier[77] = 3.5
    rows.append(outlier)
    near_limit = rng.uniform(-65504, 65504, 256).astype(np.float32)
    near_limit[5] = 65504
    rows.append(near_limit)
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
@pytest.mark.parametrize("qtype", TYPES)
def test_quantize_matches_ggml(qtype, dist, backend):
    x = make(dist, np.random.default_rng(zlib.crc32(dist.encode())), rows=8, cols=1024)
    _assert_blocks_equal(_quantize(qtype, x, backend), ggml_quantize(x, qtype), qtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
@pytest.mark.parametrize("qtype", TYPES)
def test_imatrix_quantize_matches_ggml(qtype, dist, backend):
    rng = np.random.default_rng(zlib.crc32(dist.encode()) + 1)
    x = make(dist, rng, rows=8, cols=1024)
    qw = _importance(rng, 1024)
    want = ggml_quantize(x, qtype, qw)
    _assert_blocks_equal(_quantize(qtype, x, backend, qw), want, qtype)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows_match_ggml(qtype, backend, weighted):
    x = edge_rows()
    qw = _importance(np.random.default_rng(3), x.shape[1]) if weighted else None
    _assert_blocks_equal(_quantize(qtype, x, backend, qw), ggml_quantize(x, qtype, qw), qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_all_zero_importance_matches_ggml(qtype):
    x = make("normal", np.random.default_rng(11), rows=4, cols=512)
    qw = np.zeros(512, np.float32)
    want = ggml_quantize(x, qtype, qw)
    for backend in BACKENDS:
        _assert_blocks_equal(_quantize(qtype, x, backend, qw), want, qtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_matches_ggml(qtype, backend):
    rng = np.random.default_rng(5)
    x = np.concatenate([make("weights_like", rng, rows=6, cols=256), edge_rows()])
    data = [ggml_quantize(x, qtype), ggml_quantize(x, qtype, _importance(rng, 256))]
    # Arbitrary bytes with finite fp16 fields: every scale, min and code pattern.
    noise = rng.integers(0, 256, data[0].shape, dtype=np.uint8)
    nbytes = get_type(qtype).block_bytes
    blocks = noise.reshape(-1, nbytes)
    half_fields = 2 if qtype in ("q5_0",) else 4
    blocks[:, 1:half_fields:2] &= 0x3B  # keep the fp16 exponents below inf/NaN
    data.append(noise)
    for d in data:
        want = ggml_dequantize(d, qtype, 256)
        got = dequantize(d, qtype, (d.shape[0], 256), backend=backend)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("source", ["f16", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TYPES)
def test_half_precision_sources(qtype, backend, source):
    rng = np.random.default_rng(9)
    x = make("weights_like", rng, rows=5, cols=512)
    qw = _importance(rng, 512)
    if source == "f16":
        src = x.astype(np.float16)
        wide = src.astype(np.float32)
    else:
        bits = (x.view(np.uint32) >> 16).astype(np.uint16)
        src = bits
        wide = (bits.astype(np.uint32) << 16).view(np.float32)
    for w in (None, qw):
        got = quantize(src, qtype, backend=backend, source_dtype=source, imatrix=w)
        _assert_blocks_equal(got, ggml_quantize(wide, qtype, w), qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_rows_that_do_not_fit_and_non_finite_values(qtype):
    bs = get_type(qtype).block_size
    with pytest.raises(QuantError, match=f"{qtype} stores rows in blocks of {bs}") as err:
        quantize(np.ones((2, bs + 16), np.float32), qtype)
    assert "\n" not in str(err.value)
    x = np.zeros((3, bs), np.float32)
    x[2, 5] = np.nan
    for backend in BACKENDS:
        with pytest.raises(NonFiniteError, match="row 2, column 5"):
            quantize(x, qtype, backend=backend)
    with pytest.raises(QuantError, match="one value per column"):
        quantize(np.ones((2, bs), np.float32), qtype, imatrix=np.ones(bs + 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_f16_rounds_as_numpy_and_overflows_to_inf(backend):
    rng = np.random.default_rng(2)
    x = make("bit_patterns", rng, rows=4, cols=256)
    x[0, :8] = [65504, 65519, 65520, -65520, 1e6, 2.0**-25, 3 * 2.0**-26, -(2.0**-24)]
    x[1] = make("fp16_underflow", rng, rows=1, cols=256)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = quantize(x, "f16", backend=backend)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    assert np.isinf(got.view(np.float16)[0, 2:5]).all()
    back = dequantize(got, "f16", x.shape, backend=backend)
    np.testing.assert_array_equal(back.view(np.uint32), want.astype(np.float32).view(np.uint32))
    # ggml's own conversion agrees on every finite fp16 value.
    every = np.arange(0, 1 << 16, dtype=np.uint32).astype(np.uint16)
    every = every[np.isfinite(every.view(np.float16))].view(np.float16)
    h = every.astype(np.float32).reshape(1, -1)
    np.testing.assert_array_equal(quantize(h, "f16", backend=backend).view(np.float16)[0], every)
    ref = ggml_dequantize(every.view(np.uint8).reshape(1, -1), "f16", every.size)
    np.testing.assert_array_equal(
        dequantize(every.view(np.uint8), "f16", (1, every.size), backend=backend), ref
    )


def test_new_types_round_trip_through_a_file_and_inspect(tmp_path, capsys):
    from nntrtool.cli.app import main
    from nntrtool.format import NntrFile, NntrWriter, TensorSpec

    rng = np.random.default_rng(4)
    x = make("weights_like", rng, rows=4, cols=512)
    specs, data = [], {}
    for qtype in (*TYPES, "f16"):
        name = f"model.layers.0.{qtype}.weight"
        specs.append(TensorSpec(name, get_type(qtype), x.shape))
        data[name] = quantize(x, qtype)
    path = tmp_path / "m.nntr"
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    with NntrWriter(path, config, specs) as w:
        for s in specs:
            w.write(s.name, data[s.name])
    with NntrFile(path) as f:
        for s in specs:
            assert f.tensor(s.name).ttype is s.ttype and f.check(s.name)
            assert f.raw(s.name).tobytes() == data[s.name].tobytes()
            back = dequantize(f.raw(s.name), s.ttype, x.shape)
            rel = np.linalg.norm(back - x) / np.linalg.norm(x)
            assert rel < s.ttype.max_rel_err
    with pytest.raises(SystemExit) as ex:
        main(["inspect", str(path)])
    assert ex.value.code in (0, None)
    out = capsys.readouterr().out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 5}
    for s in specs:
        assert s.ttype.name in lines[s.name]
