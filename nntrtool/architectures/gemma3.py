"""Gemma 3 (text): Gemma's norm offset (Q/K norms too), five sliding-window layers to one global
one, RoPE bases per kind of layer, an optional final logit soft-cap.

llama.cpp's GGUF holds the global RoPE base (``rope.freq_base``) and the window; the local base
(10000) and the pattern (6) are llama.cpp's fixed Gemma 3 values, written back key for key in the
layout transformers gives ``Gemma3TextConfig`` (``layer_types``, ``rope_parameters`` per layer
kind).
"""

from nntrtool.architectures.base import COMMON_KEYS, DECODER_SPELLINGS, Family
from nntrtool.architectures.gemma import GELU, norm_rules, query_scale
from nntrtool.architectures.gemma2 import SANDWICH_NORMS, layer_types

QK_NORM = r"model\.layers\.\d+\.self_attn\.[qk]_norm"
PATTERN = 6
LOCAL_ROPE_BASE = 10000.0
#: Gemma 3 27B has 62 blocks; llama.cpp scales its queries by hidden_size / heads.
LAYERS_27B = 62


def _finish(cfg: dict, field) -> None:
    cfg["hidden_activation"] = GELU
    query_scale(cfg, LAYERS_27B)
    layer_types(cfg, PATTERN)
    local = field("rope.freq_base_swa")
    cfg["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 1e6)},
        "sliding_attention": {
            "rope_type": "default",
            "rope_theta": float(local) if local is not None else LOCAL_ROPE_BASE,
        },
    }


FAMILY = Family(
    "gemma3",
    "Gemma3ForCausalLM",
    model_type="gemma3_text",
    aliases=("gemma3",),
    spellings=(*DECODER_SPELLINGS, SANDWICH_NORMS, QK_NORM),
    gguf_rules=norm_rules,
    config_keys={
        **COMMON_KEYS,
        "attention.sliding_window": "sliding_window",
        "final_logit_softcapping": "final_logit_softcapping",
    },
    finish_config=_finish,
    rope=False,
)
