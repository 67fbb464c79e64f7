"""The 8-row interleaved Q4_K layout nntrainer reads: round trips, a byte-by-byte reading of
the rule, and ggml's own C repack (``repack<block_q4_K, 8, 8>``) as the oracle."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from nntrtool.export.q4_k_x8 import from_x8, pack_scales, to_x8, unpack_scales
from tests import ggml_oracle

_REPACK_Q4_K_8 = "_ZN4ggml3cpu6repack6repackI10block_q4_KLl8ELl8EEEiP11ggml_tensorPKvm"


def ggml_q4_k(x: np.ndarray) -> np.ndarray:
    """ggml's reference Q4_K quantizer on a 2-D float32 array: (rows, cols / 256 * 144)."""
    g = ggml_oracle._ggml()
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    out = np.zeros((rows, cols // 256 * 144), dtype=np.uint8)
    written = g.ggml_quantize_chunk(
        g.GGML_TYPE_Q4_K,
        x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        out.ctypes.data_as(ctypes.c_void_p),
        0,
        rows,
        cols,
        None,
    )
    assert written == out.nbytes
    return out


def ggml_repack_q4_k_8(plain: np.ndarray) -> np.ndarray:
    """ggml-cpu's ``repack<block_q4_K, 8, 8>`` of (rows, row_bytes) plain Q4_K blocks."""
    g = ggml_oracle._ggml()
    fn = getattr(g.lib, _REPACK_Q4_K_8)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    fn.restype = ctypes.c_int
    plain = np.ascontiguousarray(plain, dtype=np.uint8)
    rows, row_bytes = plain.shape
    out = np.zeros_like(plain)
    params = g.ggml_init_params(
        mem_size=4 * g.ggml_tensor_overhead(), mem_buffer=None, no_alloc=True
    )
    ctx = g.ggml_init(params)
    try:
        tensor = g.ggml_new_tensor_2d(ctx, g.GGML_TYPE_Q4_K, row_bytes // 144 * 256, rows)
        tensor.contents.data = out.ctypes.data
        rc = fn(ctypes.cast(tensor, ctypes.c_void_p), plain.ctypes.data, plain.nbytes)
    finally:
        g.ggml_free(ctx)
    assert rc == 0
    return out


def x8_by_the_rule(plain: np.ndarray) -> np.ndarray:
    """The interleave written out one byte at a time from the layout's description."""
    rows, row_bytes = plain.shape
    nb = row_bytes // 144
    out = bytearray()
    for g0 in range(0, rows, 8):
        for b in range(nb):
            blk = [bytes(plain[g0 + r, b * 144 : (b + 1) * 144]) for r in range(8)]
            out += b"".join(x[0:2] for x in blk)  # d
            out += b"".join(x[2:4] for x in blk)  # dmin

            # 6-bit scale and min of sub-block k in a block's 12 bytes q
            def sm(q: bytes, k: int) -> tuple[int, int]:
                if k < 4:
                    return q[k] & 63, q[k + 4] & 63
                return (q[k + 4] & 15) | ((q[k - 4] >> 6) << 4), (q[k + 4] >> 4) | (
                    (q[k] >> 6) << 4
                )

            for k in range(8):
                s = [sm(x[4:16], k)[0] for x in blk]
                m = [sm(x[4:16], k)[1] for x in blk]
                group = [0] * 12
                for j in range(4):
                    group[j] = (s[j] & 63) | ((s[j + 4] & 48) << 2)
                    group[j + 4] = (m[j] & 63) | ((m[j + 4] & 48) << 2)
                    group[j + 8] = (s[j + 4] & 15) | ((m[j + 4] & 15) << 4)
                out += bytes(group)
            for i in range(128):  # 8-byte chunks, rows in turn
                r, c = i % 8, i // 8
                out += blk[r][16 + c * 8 : 16 + c * 8 + 8]
    return np.frombuffer(bytes(out), dtype=np.uint8).reshape(rows, row_bytes)


def _blocks(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[:, :32] += 3.0  # a sub-block whose min is positive
    x[0, :] = 0.0
    return ggml_q4_k(x)


@pytest.mark.parametrize("rows,cols", [(8, 256), (16, 512), (24, 768)])
def test_matches_ggml_repack(rows: int, cols: int) -> None:
    plain = _blocks(rows, cols, rows)
    assert np.array_equal(to_x8(plain), ggml_repack_q4_k_8(plain))


def test_matches_byte_level_rule() -> None:
    plain = _blocks(16, 512, 3)
    assert np.array_equal(to_x8(plain), x8_by_the_rule(plain))


def test_round_trip_random_bytes() -> None:
    # every bit pattern, not only what a quantizer writes: the packing must be a bijection
    rng = np.random.default_rng(7)
    plain = rng.integers(0, 256, size=(32, 3 * 144), dtype=np.uint8)
    packed = to_x8(plain)
    assert not np.array_equal(packed, plain)
    assert np.array_equal(from_x8(packed), plain)
    assert np.array_equal(to_x8(from_x8(plain)), plain)


def test_scales_packing_is_a_bijection() -> None:
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, size=(1000, 12), dtype=np.uint8)
    sc, mn = unpack_scales(q)
    assert sc.max() < 64 and mn.max() < 64
    assert np.array_equal(pack_scales(sc, mn), q)


@pytest.mark.parametrize("shape", [(7, 144), (8, 143)])
def test_refuses_shapes(shape: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        to_x8(np.zeros(shape, dtype=np.uint8))
    with pytest.raises(ValueError):
        from_x8(np.zeros(shape, dtype=np.uint8))
