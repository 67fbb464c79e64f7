"""Llama: llama.cpp interleaves the rotary halves of each Q and K head's rows; undone here."""

from nntrtool.architectures.base import Family
from nntrtool.architectures.nntrainer_layout import (
    ATTENTION,
    EMBED,
    FINAL_NORM,
    LM_HEAD,
    MLP,
    ArchitectureLayout,
)
from nntrtool.architectures.ops import unpermute_qk_rules

#: nntrainer's weight-file order (llama_causallm.cpp): per layer, attention then the MLP.
NNTRAINER = ArchitectureLayout(
    "LlamaForCausalLM",
    head=EMBED,
    layer=ATTENTION + MLP,
    tail=FINAL_NORM,
    untied_tail=LM_HEAD,
)

FAMILY = Family(
    "llama",
    "LlamaForCausalLM",
    gguf_rules=unpermute_qk_rules,
    hidden_act="silu",
    nntrainer=NNTRAINER,
)
