"""Gemma: RMSNorms scale by ``1 + w``; llama.cpp stores ``w + 1`` and this module takes the 1 off
again (every ``*norm.weight``, as transformers' GGUF loader does). Embeddings are tied.
"""

from nntrtool.architectures.base import Family, GGUFMeta
from nntrtool.architectures.ops import norm_offset_rule
from nntrtool.tensors.transforms import Rule

#: Every RMSNorm weight of the Gemma families (llama.cpp adds 1 to each name ending so).
NORMS = r".*norm\.weight"
GELU = "gelu_pytorch_tanh"


def norm_rules(meta: GGUFMeta) -> list[Rule]:
    """The Gemma families' GGUF rules: the norm offset undone."""
    return [norm_offset_rule(NORMS, 1.0)]


def default_rope(cfg: dict, field) -> None:
    """llama.cpp writes no RoPE base for Gemma and Gemma 2: both use 10000, as transformers'
    configs do by default."""
    cfg["rope_parameters"].setdefault("rope_theta", 10000.0)


def query_scale(cfg: dict, layers_27b: int) -> None:
    """``query_pre_attn_scalar`` as llama.cpp computes attention: the head size, except for the
    27B models (``layers_27b`` blocks), which scale by ``hidden_size / num_attention_heads``."""
    heads = cfg.get("num_attention_heads")
    if cfg.get("num_hidden_layers") == layers_27b and heads and cfg.get("hidden_size"):
        cfg["query_pre_attn_scalar"] = cfg["hidden_size"] // heads
    elif cfg.get("head_dim"):
        cfg["query_pre_attn_scalar"] = cfg["head_dim"]


FAMILY = Family(
    "gemma", "GemmaForCausalLM", gguf_rules=norm_rules, finish_config=default_rope, hidden_act=GELU
)
