"""Declared transforms: derived tensors read like any source tensor, and give exact values."""

from __future__ import annotations

import numpy as np
import pytest

from nntrtool.errors import SourceError
from nntrtool.quant import quantize
from nntrtool.sources.base import ArrayTensor
from nntrtool.tensors.transforms import (
    DerivedTensor,
    Rule,
    apply_rules,
    expert_matrix,
    llama_qk_order,
    permuted_rows,
)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The Q/K row permutation llama.cpp's converter applies to llama-family checkpoints."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


@pytest.mark.parametrize("n_head,head_dim", [(1, 2), (4, 8), (3, 64)])
def test_llama_qk_order_undoes_the_permutation(n_head, head_dim):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n_head * head_dim, 32)).astype(np.float32)
    permuted = ArrayTensor("q", llama_cpp_permute(w, n_head))
    back = permuted_rows(permuted, "q", llama_qk_order(w.shape[0], n_head), "un-permuted")
    np.testing.assert_array_equal(back.read(), w)
    # Any row range reads the same rows as the whole.
    for start, stop in [(0, 1), (1, 5), (head_dim - 1, head_dim + 3)]:
        stop = min(stop, w.shape[0])
        np.testing.assert_array_equal(back.read(start, stop), w[start:stop])


def test_permutation_moves_quantized_blocks_losslessly():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    n_head = 2
    blocks = quantize(llama_cpp_permute(w, n_head), "q4_0")
    gguf = ArrayTensor("k", blocks.view(np.uint16), dtype="BF16")  # raw rows of 2-byte units
    back = permuted_rows(gguf, "k", llama_qk_order(16, n_head), "un-permuted")
    assert back.read().view(np.uint8).tobytes() == quantize(w, "q4_0").tobytes()


def test_qk_order_refuses_heads_that_do_not_split():
    with pytest.raises(SourceError, match="heads"):
        llama_qk_order(10, 4)


def test_expert_matrix_splits_deinterleaves_and_transposes():
    rng = np.random.default_rng(2)
    n_exp, hidden, inter = 3, 8, 6
    gate_up = rng.standard_normal((n_exp, hidden, 2 * inter)).astype(np.float32)
    fused = ArrayTensor("mlp.experts.gate_up_proj", gate_up)
    for e in range(n_exp):
        gate = expert_matrix(fused, f"e{e}.gate", e, columns=slice(0, None, 2), transpose=True)
        up = expert_matrix(fused, f"e{e}.up", e, columns=slice(1, None, 2), transpose=True)
        assert gate.shape == (inter, hidden)
        np.testing.assert_array_equal(gate.read(), gate_up[e][:, 0::2].T)
        np.testing.assert_array_equal(up.read(0, 2), gate_up[e][:, 1::2].T[:2])
        np.testing.assert_array_equal(up.read(2, inter), gate_up[e][:, 1::2].T[2:])
        plain = expert_matrix(fused, f"e{e}.raw", e)
        np.testing.assert_array_equal(plain.read(1, 3), gate_up[e][1:3])
    assert (
        sum(
            expert_matrix(fused, "x", e, columns=slice(0, None, 2)).source_nbytes
            + expert_matrix(fused, "y", e, columns=slice(1, None, 2)).source_nbytes
            for e in range(n_exp)
        )
        == fused.nbytes
    )


def test_apply_rules_replaces_in_place_and_consumes_partners():
    a = ArrayTensor("a.blocks", np.ones((2, 32), np.float32))
    other = ArrayTensor("other", np.zeros((1, 4), np.float32))
    scales = ArrayTensor("a.scales", np.full((2, 32), 2.0, np.float32))

    def combine(m, t, lookup):
        s = lookup.take(f"{m.group(1)}.scales")

        def read(inputs, start, stop):
            return inputs[0].read(start, stop) * inputs[1].read(start, stop)

        return [DerivedTensor(m.group(1), "F32", t.shape, [t, s], read, "decoded")]

    out = apply_rules([a, other, scales], [Rule(r"(.*)\.blocks", combine)])
    assert [t.name for t in out] == ["a", "other"]
    np.testing.assert_array_equal(out[0].read(), np.full((2, 32), 2.0, np.float32))


def test_apply_rules_without_rules_is_identity():
    ts = [ArrayTensor("x", np.zeros((2, 2), np.float32))]
    assert apply_rules(ts, []) == ts
