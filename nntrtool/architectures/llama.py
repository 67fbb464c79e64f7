"""Llama: llama.cpp interleaves the rotary halves of each Q and K head's rows; undone here."""

from nntrtool.architectures.base import Family
from nntrtool.architectures.ops import unpermute_qk_rules

FAMILY = Family("llama", "LlamaForCausalLM", gguf_rules=unpermute_qk_rules, hidden_act="silu")
