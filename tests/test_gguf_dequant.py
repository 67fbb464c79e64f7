"""GGUF dequantizers: nntrtool's numba kernels give gguf.quants.dequantize's values bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from gguf_models import ggml_quantize_any

from nntrtool.sources.gguf_dequant import dequantize_rows

FAST_TYPES = ["Q4_0", "Q8_0", "Q6_K", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K"]


@pytest.mark.parametrize("type_name", FAST_TYPES)
def test_kernels_equal_gguf_on_ggml_blocks_and_on_any_bytes(type_name):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((37, 512)) * rng.uniform(1e-3, 50, (37, 1))).astype(np.float32)
    x[2] = 0.0
    x[5, :40] = -3.0
    blocks = ggml_quantize_any(x, type_name)
    noise = rng.integers(0, 256, blocks.shape, dtype=np.uint8)
    with np.errstate(all="ignore"):
        for data in (blocks, noise, blocks[3:9]):
            fast = dequantize_rows(data, type_name, 512)
            ref = dequantize_rows(data, type_name, 512, fast=False)
            assert fast.dtype == np.float32 and fast.shape == ref.shape
            # Bit for bit, but for the sign and payload of NaN (from garbage fp16 scales).
            nan = np.isnan(ref)
            np.testing.assert_array_equal(np.isnan(fast), nan)
            np.testing.assert_array_equal(fast.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])


def test_other_types_use_gguf_and_zero_rows_are_empty():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    q = ggml_quantize_any(x, "Q3_K")
    np.testing.assert_array_equal(
        dequantize_rows(q, "Q3_K", 256), dequantize_rows(q, "Q3_K", 256, fast=False)
    )
    assert dequantize_rows(q[:0], "Q4_K", 256).shape == (0, 256)
