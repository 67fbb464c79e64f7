"""Qwen3: Qwen2 with per-head RMSNorms on Q and K (``self_attn.q_norm``/``k_norm``)."""

from nntrtool.architectures.base import DECODER_SPELLINGS, Family

QK_NORM = r"model\.layers\.\d+\.self_attn\.[qk]_norm"

FAMILY = Family(
    "qwen3", "Qwen3ForCausalLM", spellings=(*DECODER_SPELLINGS, QK_NORM), hidden_act="silu"
)
