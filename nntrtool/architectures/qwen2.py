"""Qwen2: Llama's layout with Q/K/V biases; llama.cpp stores every tensor as it is."""

from nntrtool.architectures.base import Family

FAMILY = Family(
    name="qwen2",
    model_type="qwen2",
    hf_class="Qwen2ForCausalLM",
    gguf_arch="qwen2",
    hidden_act="silu",
)
