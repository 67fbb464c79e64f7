"""StarCoder2: LayerNorms with biases, biased projections, a plain ``c_fc``/``c_proj`` MLP;
llama.cpp stores every tensor as it is."""

from nntrtool.architectures.base import COMMON_KEYS, Family

SPELLINGS = (
    r"model\.embed_tokens",
    r"lm_head",
    r"model\.norm",
    r"model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)",
    r"model\.layers\.\d+\.self_attn\.[qkvo]_proj",
    r"model\.layers\.\d+\.mlp\.c_(fc|proj)",
)
KEYS = {k: v for k, v in COMMON_KEYS.items() if v != "rms_norm_eps"}
KEYS["attention.layer_norm_epsilon"] = "norm_epsilon"


def _finish(cfg: dict, field) -> None:
    cfg["use_bias"] = True


FAMILY = Family(
    "starcoder2",
    "Starcoder2ForCausalLM",
    spellings=SPELLINGS,
    config_keys=KEYS,
    finish_config=_finish,
    hidden_act="gelu_pytorch_tanh",
)
