"""Mistral: llama.cpp converts it with Llama's graph (``general.architecture`` is ``llama``, Q/K
rows permuted), so its GGUFs read back as Llama; this module names the checkpoints' side."""

from nntrtool.architectures.base import Family
from nntrtool.architectures.ops import unpermute_qk_rules

FAMILY = Family(
    "mistral",
    "MistralForCausalLM",
    gguf_arch="llama",
    gguf_rules=unpermute_qk_rules,
    hidden_act="silu",
    reads_gguf=False,  # a "llama" GGUF is read by the llama family
)
