"""Qwen3-MoE: per-expert checkpoints; llama.cpp stacks each layer's experts into one tensor
per projection (``ffn_{gate,up,down}_exps``), split back here. Routers are kept F32.

transformers holds a layer's experts fused (``gate_up_proj`` ``[E, 2 * inter, hidden]``,
``down_proj`` ``[E, hidden, inter]``); :func:`qwen3_moe_placements` puts stored experts back.
"""

from __future__ import annotations

from nntrtool.architectures.base import COMMON_KEYS, DECODER_SPELLINGS, Family
from nntrtool.architectures.nntrainer_layout import (
    QK_NORM_ATTENTION,
    ArchitectureLayout,
    ConfigRule,
    L,
    PerExpert,
    Role,
)
from nntrtool.architectures.ops import split_experts_rule
from nntrtool.tensors.experts import expert_at, router_rule
from nntrtool.tensors.transforms import Placement, Rule

#: GGUF MoE keys and their config keys.
MOE_KEYS = {
    "expert_count": "num_experts",
    "expert_used_count": "num_experts_per_tok",
    "expert_feed_forward_length": "moe_intermediate_size",
}
MOE_SPELLINGS = (
    r"model\.layers\.\d+\.mlp\.gate",
    r"model\.layers\.\d+\.mlp\.experts\.(gate|up|down)_proj",
)


def qwen3_moe_rules(config: dict) -> list[Rule]:
    """Qwen3-MoE: experts are already per expert; the router (``mlp.gate``) prefers F32."""
    return [router_rule(r".*\.mlp\.gate\.weight")]


def qwen3_moe_placements(config: dict) -> list[Placement]:
    """Stored Qwen3-MoE experts back into transformers' fused ``[E, 2 * inter, hidden]``."""
    inter = int(config.get("moe_intermediate_size") or 0)
    e = r"(.*\.mlp\.experts)\.(\d+)"
    return [
        Placement(rf"{e}\.gate_proj\.weight", "{0}.gate_up_proj", expert_at(slice(0, inter))),
        Placement(rf"{e}\.up_proj\.weight", "{0}.gate_up_proj", expert_at(slice(inter, 2 * inter))),
        Placement(rf"{e}\.down_proj\.weight", "{0}.down_proj", expert_at()),
    ]


#: Qwen3-MoE (qwen3_moe_causallm.cpp, layers/qwen_moe_layer.cpp): Qwen3's attention, then
#: the router and, per expert, up, gate, down (res/qwen3-30b-a3b/weight_converter.py).
NNTRAINER = ArchitectureLayout(
    "Qwen3MoeForCausalLM",
    layer=QK_NORM_ATTENTION
    + (
        (L + "post_attention_layernorm.weight", Role.NORM, ("D",)),
        (L + "mlp.gate.weight", Role.ROUTER, ("E", "D")),
        PerExpert(
            (
                (L + "mlp.experts.{e}.up_proj.weight", Role.LINEAR, ("M", "D")),
                (L + "mlp.experts.{e}.gate_proj.weight", Role.LINEAR, ("M", "D")),
                (L + "mlp.experts.{e}.down_proj.weight", Role.LINEAR, ("D", "M")),
            )
        ),
    ),
    # The slim (FSU) and cached variants build the same layers from the same file.
    aliases=("Qwen3SlimMoeForCausalLM", "Qwen3CachedSlimMoeForCausalLM"),
    required=("moe_intermediate_size", "num_experts_per_tok"),
    config_keys=(("num_experts", ("num_experts", "num_local_experts")),),
    rope_table_from_config=True,
    rules=(
        ConfigRule(
            lambda c: bool(c.get("mlp_only_layers")) or int(c.get("decoder_sparse_step") or 1) != 1,
            "the model has dense MLP layers (mlp_only_layers {mlp_only_layers}, "
            "decoder_sparse_step {decoder_sparse_step}), but nntrainer's Qwen3-MoE builds a MoE "
            "block in every layer",
            refuse=True,
        ),
        ConfigRule(
            lambda c: c.get("norm_topk_prob") is False,
            "norm_topk_prob is false, but nntrainer's Qwen3-MoE always renormalizes the top-k "
            "routing weights, so its outputs will differ from the source model's",
        ),
    ),
)

FAMILY = Family(
    "qwen3moe",
    "Qwen3MoeForCausalLM",
    model_type="qwen3_moe",
    spellings=(*DECODER_SPELLINGS, r"model\.layers\.\d+\.self_attn\.[qk]_norm", *MOE_SPELLINGS),
    gguf_rules=lambda meta: [split_experts_rule()],
    hf_rules=qwen3_moe_rules,
    placements=qwen3_moe_placements,
    config_keys={**COMMON_KEYS, **MOE_KEYS},
    hidden_act="silu",
    nntrainer=NNTRAINER,
)
