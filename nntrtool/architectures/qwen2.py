"""Qwen2: Llama's layout with Q/K/V biases; llama.cpp stores every tensor as it is."""

from nntrtool.architectures.base import Family

FAMILY = Family("qwen2", "Qwen2ForCausalLM", hidden_act="silu")
