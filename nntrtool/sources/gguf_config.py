"""A Hugging Face ``config.json`` rebuilt from a GGUF file's metadata.

Each supported GGUF architecture is a row of :data:`ARCHITECTURES` (the transformers class and
model type, and whether llama.cpp permuted its Q/K rows); the keys are read with the same
meaning transformers' own GGUF loader gives them, so the two configs agree key for key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GGUFArchitecture:
    """How one GGUF architecture maps back to transformers."""

    hf_class: str
    model_type: str
    #: llama.cpp's converter interleaves the rotary halves of Q and K rows for this family.
    permuted_qk: bool = False
    moe: bool = False


ARCHITECTURES: dict[str, GGUFArchitecture] = {
    "llama": GGUFArchitecture("LlamaForCausalLM", "llama", permuted_qk=True),
    "qwen2": GGUFArchitecture("Qwen2ForCausalLM", "qwen2"),
    "qwen3": GGUFArchitecture("Qwen3ForCausalLM", "qwen3"),
    "qwen3moe": GGUFArchitecture("Qwen3MoeForCausalLM", "qwen3_moe", moe=True),
}

#: ``{GGUF key under "<arch>.": config key}`` common to every architecture above.
_KEYS = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "rope.freq_base": "rope_theta",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_MOE_KEYS = {
    "expert_count": "num_experts",
    "expert_used_count": "num_experts_per_tok",
    "expert_feed_forward_length": "moe_intermediate_size",
}
_TOKEN_IDS = {
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}


def build_config(
    arch: str,
    field: Callable[[str], Any],
    *,
    vocab_rows: int | None,
    has_output: bool,
    token_count: int | None,
) -> dict[str, Any]:
    """The config of a GGUF model: ``field(key)`` reads metadata (None when absent).

    ``vocab_rows`` is the token embedding's row count, ``has_output`` whether the file holds an
    ``output.weight`` (its absence means tied embeddings), ``token_count`` the length of the
    tokenizer's vocabulary, if any.
    """
    spec = ARCHITECTURES.get(arch)
    cfg: dict[str, Any] = {}
    if spec is not None:
        cfg["architectures"] = [spec.hf_class]
        cfg["model_type"] = spec.model_type
    else:
        cfg["model_type"] = arch
    keys = dict(_KEYS)
    if spec is not None and spec.moe:
        keys.update(_MOE_KEYS)
    for suffix, name in keys.items():
        value = field(f"{arch}.{suffix}")
        if value is not None:
            cfg[name] = value
    if "num_experts" in cfg:  # transformers 5 names it num_local_experts
        cfg["num_local_experts"] = cfg["num_experts"]
    if "num_attention_heads" in cfg:
        cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
        if "hidden_size" in cfg and "head_dim" not in cfg:
            cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    if "vocab_size" not in cfg:
        vocab = vocab_rows if vocab_rows is not None else token_count
        if vocab is not None:
            cfg["vocab_size"] = int(vocab)
    rope: dict[str, Any] = {"rope_type": "default"}
    if "rope_theta" in cfg:
        rope["rope_theta"] = cfg["rope_theta"]
    rope.update(_rope_scaling(arch, field) or {})
    cfg["rope_parameters"] = rope  # transformers 5's spelling; rope_theta for older readers
    cfg["tie_word_embeddings"] = not has_output
    for key, name in _TOKEN_IDS.items():
        value = field(key)
        if value is not None:
            cfg[name] = int(value)
    if spec is not None and spec.hf_class.startswith(("Llama", "Qwen")):
        cfg.setdefault("hidden_act", "silu")
    return {k: _plain(v) for k, v in cfg.items()}


def _rope_scaling(arch: str, field: Callable[[str], Any]) -> dict[str, Any] | None:
    kind = field(f"{arch}.rope.scaling.type")
    factor = field(f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or factor is None:
        return None
    out: dict[str, Any] = {"rope_type": kind, "factor": factor}
    original = field(f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        out["original_max_position_embeddings"] = original
    return out


def _plain(value: Any) -> Any:
    """Floats read as float32 rounded to the shortest decimal that reads back the same."""
    if isinstance(value, float):
        import numpy as np

        return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
