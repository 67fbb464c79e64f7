"""Phi-3: fused ``qkv_proj`` and ``gate_up_proj``, which llama.cpp stores fused too
(``attn_qkv``, ``ffn_up`` of twice the width), so names map one to one. Partial rotary: the
GGUF's ``rope.dimension_count`` over the head size is ``partial_rotary_factor``. The 128k
models' LongRoPE factors, which llama.cpp stores as ``rope_factors_long/short`` tensors, go
back into ``rope_parameters`` (:mod:`nntrtool.sources.gguf_config`); the original context
length is ``rope.scaling.original_context_length``."""

from nntrtool.architectures.base import Family

SPELLINGS = (
    r"model\.embed_tokens",
    r"lm_head",
    r"model\.norm",
    r"model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)",
    r"model\.layers\.\d+\.self_attn\.(qkv|o)_proj",
    r"model\.layers\.\d+\.mlp\.(gate_up|down)_proj",
)


def _finish(cfg: dict, field) -> None:
    rot, head = field("rope.dimension_count"), cfg.get("head_dim")
    if isinstance(rot, int) and head:
        cfg["rope_parameters"]["partial_rotary_factor"] = rot / head
    original = field("rope.scaling.original_context_length")
    if isinstance(original, int):
        cfg["original_max_position_embeddings"] = original


FAMILY = Family(
    "phi3", "Phi3ForCausalLM", spellings=SPELLINGS, finish_config=_finish, hidden_act="silu"
)
