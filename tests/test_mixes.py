"""The Q4_K_M / Q5_K_M per-tensor rule against the types llama-quantize (llama.cpp 0c1e57098)
chose for the same tensors; end to end in ``tests/test_llama_cpp.py``."""

from __future__ import annotations

import pytest

from nntrtool.plan.mixes import MIXES, MixModel, mix_type
from nntrtool.qtypes import TYPES_BY_NAME

pytestmark = pytest.mark.skipif(
    not {"q4_k", "q5_k", "q5_0", "q5_1"} <= set(TYPES_BY_NAME),
    reason="the K-quant types are not in the type table yet",
)

#: llama-quantize Q4_K_M / Q5_K_M of a 2-layer Qwen3-MoE with 8 experts, rows of 256 values.
EIGHT_EXPERTS = {
    "q4_k_m": {
        "output.weight": "q6_k", "token_embd.weight": "q4_k",
        "blk.0.attn_q.weight": "q4_k", "blk.0.attn_k.weight": "q8_0",
        "blk.0.attn_v.weight": "q8_0", "blk.0.attn_output.weight": "q5_k",
        "blk.0.ffn_gate_exps.weight": "q4_k", "blk.0.ffn_up_exps.weight": "q4_k",
        "blk.0.ffn_down_exps.weight": "q4_k", "blk.1.ffn_down_exps.weight": "q6_k",
        "blk.1.attn_output.weight": "q5_k", "blk.1.attn_v.weight": "q8_0",
    },
    "q5_k_m": {
        "output.weight": "q6_k", "token_embd.weight": "q5_k",
        "blk.0.attn_q.weight": "q5_k", "blk.0.attn_k.weight": "q8_0",
        "blk.0.attn_v.weight": "q8_0", "blk.0.attn_output.weight": "q5_k",
        "blk.0.ffn_down_exps.weight": "q5_k", "blk.1.ffn_down_exps.weight": "q6_k",
    },
}  # fmt: skip


@pytest.mark.parametrize("mix", EIGHT_EXPERTS)
def test_eight_expert_model_gets_llama_quantizes_types(mix):
    model = MixModel(layers=2, experts=8, tied=False, config={})
    got = {name: mix_type(MIXES[mix], name, 256, model)[0] for name in EIGHT_EXPERTS[mix]}
    assert got == EIGHT_EXPERTS[mix]


def test_attention_output_is_plain_without_eight_experts():
    for experts in (0, 4, 16):
        model = MixModel(layers=2, experts=experts, tied=False, config={})
        assert mix_type(MIXES["q4_k_m"], "blk.0.attn_output.weight", 256, model)[0] == "q4_k"
