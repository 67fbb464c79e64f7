"""Llama: llama.cpp interleaves the rotary halves of each Q and K head's rows; undone here."""

from nntrtool.architectures.base import Family
from nntrtool.architectures.nntrainer_layout import ATTENTION, MLP, ArchitectureLayout
from nntrtool.architectures.ops import unpermute_qk_rules

#: nntrainer's weight-file order (llama_causallm.cpp): per layer, attention then the MLP.
NNTRAINER = ArchitectureLayout("LlamaForCausalLM", layer=ATTENTION + MLP)

FAMILY = Family(
    "llama",
    "LlamaForCausalLM",
    gguf_rules=unpermute_qk_rules,
    hidden_act="silu",
    nntrainer=NNTRAINER,
)
