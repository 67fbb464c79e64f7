"""Gemma 2: Gemma's norm offset on four norms a layer, soft-capped attention and logits, every
other layer sliding-window (llama.cpp's pattern of 2, as transformers builds ``layer_types``)."""

from nntrtool.architectures.base import COMMON_KEYS, DECODER_SPELLINGS, Family
from nntrtool.architectures.gemma import GELU, default_rope, norm_rules, query_scale

#: Gemma 2/3's extra per-layer norms (around attention and feed-forward).
SANDWICH_NORMS = r"model\.layers\.\d+\.(pre|post)_feedforward_layernorm"
#: Gemma 2 27B has 46 blocks; llama.cpp scales its queries by hidden_size / heads.
LAYERS_27B = 46


def layer_types(cfg: dict, pattern: int) -> None:
    """Every ``pattern``-th layer full attention, the others sliding-window."""
    n = int(cfg.get("num_hidden_layers") or 0)
    cfg["layer_types"] = [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)
    ]


def _finish(cfg: dict, field) -> None:
    cfg["hidden_activation"] = GELU
    query_scale(cfg, LAYERS_27B)
    layer_types(cfg, 2)
    default_rope(cfg, field)


FAMILY = Family(
    "gemma2",
    "Gemma2ForCausalLM",
    spellings=(*DECODER_SPELLINGS, SANDWICH_NORMS),
    gguf_rules=norm_rules,
    config_keys={
        **COMMON_KEYS,
        "attention.sliding_window": "sliding_window",
        "attn_logit_softcapping": "attn_logit_softcapping",
        "final_logit_softcapping": "final_logit_softcapping",
    },
    finish_config=_finish,
)
