"""Qwen3: Qwen2 with per-head RMSNorms on Q and K (``self_attn.q_norm``/``k_norm``)."""

from nntrtool.architectures.base import DECODER_SPELLINGS, Family
from nntrtool.architectures.nntrainer_layout import MLP, QK_NORM_ATTENTION, ArchitectureLayout

QK_NORM = r"model\.layers\.\d+\.self_attn\.[qk]_norm"

#: nntrainer's weight-file order (qwen3_causallm.cpp): Llama's with the q/k norms.
NNTRAINER = ArchitectureLayout(
    "Qwen3ForCausalLM", layer=QK_NORM_ATTENTION + MLP, rope_table_from_config=True
)

FAMILY = Family(
    "qwen3",
    "Qwen3ForCausalLM",
    spellings=(*DECODER_SPELLINGS, QK_NORM),
    hidden_act="silu",
    nntrainer=NNTRAINER,
)
