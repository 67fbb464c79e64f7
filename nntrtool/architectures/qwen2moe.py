"""Qwen2-MoE: Qwen3-MoE's experts (stacked by llama.cpp, split back here; routers kept F32)
plus a shared expert with its own sigmoid gate (``mlp.shared_expert_gate``, ``[1, hidden]``,
which llama.cpp may store as a vector)."""

from nntrtool.architectures.base import COMMON_KEYS, DECODER_SPELLINGS, Family, GGUFMeta
from nntrtool.architectures.ops import reshape_rule, split_experts_rule
from nntrtool.architectures.qwen3moe import MOE_KEYS, MOE_SPELLINGS, qwen3_moe_placements
from nntrtool.tensors.experts import router_rule
from nntrtool.tensors.transforms import Rule

SHARED = (
    r"model\.layers\.\d+\.mlp\.shared_expert\.(gate|up|down)_proj",
    r"model\.layers\.\d+\.mlp\.shared_expert_gate",
)


def gguf_rules(meta: GGUFMeta) -> list[Rule]:
    """Experts split per expert; the shared expert's gate back to ``[1, hidden]``."""
    return [
        split_experts_rule(),
        reshape_rule(r"model\.layers\.\d+\.mlp\.shared_expert_gate\.weight", lambda t: (1, t.cols)),
    ]


def hf_rules(config: dict) -> list[Rule]:
    """The router (``mlp.gate``) prefers F32."""
    return [router_rule(r".*\.mlp\.gate\.weight")]


FAMILY = Family(
    "qwen2moe",
    "Qwen2MoeForCausalLM",
    model_type="qwen2_moe",
    spellings=(*DECODER_SPELLINGS, *MOE_SPELLINGS, *SHARED),
    gguf_rules=gguf_rules,
    hf_rules=hf_rules,
    placements=qwen3_moe_placements,
    config_keys={
        **COMMON_KEYS,
        **MOE_KEYS,
        "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
    },
    hidden_act="silu",
)
