"""The per-architecture layout tables of nntrainer's CausalLM weight file.

The runtime reads its weight file by position: no names, no header, each tensor's bytes right
after the previous one's, in the order its layers were built. That order is written down here,
one explicit table per architecture, together with the role of each tensor (which decides how
it is stored) and its expected shape in terms of the model's configuration.

A table also says what the runtime needs of the config beyond the sizes: keys it reads under
other names, RoPE scaling it applies, and what it is known to get wrong (a warning) or cannot
run at all (a refusal). The orders come from the runtime's sources (nntrainer, Applications/
CausalLM, December 2025): the layers each model class builds, the weights each layer requests
in ``finalize``, and the weight converters under ``res/`` that write the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from nntrtool.errors import UsageError
from nntrtool.model_config import ModelConfig


class Role(Enum):
    """What a tensor is to the runtime; the role decides the allowed types and the storage."""

    EMBEDDING = "embedding"  # token embedding [vocab, hidden], rows looked up by token id
    NORM = "norm"  # RMSNorm weight, one vector, always F32
    LINEAR = "linear"  # a fully connected layer inside a decoder block
    LM_HEAD = "lm_head"  # the output head of an untied model (a fully connected layer too)
    ROUTER = "router"  # a MoE router [experts, hidden]: read as FP32, transposed like F32 layers
    VECTOR = "vector"  # a bias or the attention sinks: one F32 vector, stored as it is


@dataclass(frozen=True)
class Slot:
    """One tensor of the weight file: its source name, role and expected source shape."""

    name: str
    role: Role
    shape: tuple[int, ...]

    @property
    def short(self) -> str:
        """The name without the layer prefix (``q_proj``), for messages."""
        parts = self.name.split(".")
        return parts[-2] if parts[-1] in ("weight", "bias") and len(parts) > 1 else parts[-1]


# Shapes are written with the symbols below and resolved from the model's config:
#   V vocab_size, D hidden_size, I intermediate_size, Q heads*head_dim, K kv_heads*head_dim,
#   H head_dim, N heads, E experts per layer, M an expert's intermediate size.
_Entry = tuple[str, Role, tuple[str, ...]]


@dataclass(frozen=True)
class PerExpert:
    """Entries repeated for every expert ``e`` of a layer, in expert order (``{e}`` in names)."""

    entries: tuple[_Entry, ...]


_LayerEntry = _Entry | PerExpert


@dataclass(frozen=True)
class ConfigRule:
    """Something the runtime does with configs where ``applies(config)``: ``message`` (formatted
    with the config's keys) is a warning, or with ``refuse`` a reason not to export at all."""

    applies: Callable[[dict[str, Any]], bool]
    message: str
    refuse: bool = False

    def text(self, config: dict[str, Any]) -> str:
        """The message with the config's values filled in."""
        values = {}
        for where in ("rope_parameters", "rope_scaling"):
            if isinstance(config.get(where), dict):
                values.update(config[where])
        values.update(config)
        return self.message.format_map(_Missing(values))


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"


@dataclass(frozen=True)
class ArchitectureLayout:
    """The weight-file order of one architecture: before the layers, per layer, after them,
    and what the runtime needs of the config."""

    architecture: str
    head: tuple[_Entry, ...]
    layer: tuple[_LayerEntry, ...]
    tail: tuple[_Entry, ...]
    untied_tail: tuple[_Entry, ...]
    #: Other names the runtime registers for a model read from the same weight file.
    aliases: tuple[str, ...] = ()
    #: Config keys the runtime needs besides the common ones (checked at export).
    required: tuple[str, ...] = ()
    #: ``(key the runtime reads, keys a Hugging Face config may hold it under)``.
    config_keys: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: RoPE scaling types the runtime applies (any other gives a warning).
    rope_scaling: frozenset[str] = frozenset()
    #: Warnings and refusals that depend on the config.
    rules: tuple[ConfigRule, ...] = ()
    #: The runtime's class precomputes RoPE for exactly ``max_position_embeddings`` positions
    #: (Qwen3, Qwen3-MoE, GPT-OSS); the Llama class ignores the config and always builds 40960.
    rope_table_from_config: bool = False

    def check_config(self, config: dict[str, Any]) -> list[str]:
        """Raise ``UsageError`` for a config the runtime cannot follow; else the warnings."""
        for rule in self.rules:
            if rule.refuse and rule.applies(config):
                raise UsageError(f"{rule.text(config)}; it cannot be exported for nntrainer")
        return [r.text(config) for r in self.rules if not r.refuse and r.applies(config)]

    def slots(self, config: dict[str, Any], tied: bool) -> list[Slot]:
        """Every tensor of the weight file in the order the runtime reads it."""
        dims = model_dims(config)
        layers = dims.pop("layers")

        def make(entry: _Entry, layer: int | None = None, expert: int | None = None) -> Slot:
            name, role, symbols = entry
            if layer is not None:
                name = name.format(i=layer, e=expert)
            missing = [s for s in symbols if s not in dims]
            if missing:
                raise UsageError(
                    f"{self.architecture} needs {_SYMBOL_KEYS[missing[0]]} in the config to "
                    f"size {name}; re-convert from a complete config.json"
                )
            return Slot(name, role, tuple(dims[s] for s in symbols))

        out = [make(e) for e in self.head]
        for i in range(layers):
            for entry in self.layer:
                if isinstance(entry, PerExpert):
                    for e in range(dims.get("E", 0)):
                        out.extend(make(x, i, e) for x in entry.entries)
                else:
                    out.append(make(entry, i))
        out.extend(make(e) for e in self.tail)
        if not tied:
            out.extend(make(e) for e in self.untied_tail)
        return out


_L = "model.layers.{i}."

_EMBED: tuple[_Entry, ...] = (("model.embed_tokens.weight", Role.EMBEDDING, ("V", "D")),)
_FINAL_NORM: tuple[_Entry, ...] = (("model.norm.weight", Role.NORM, ("D",)),)
_LM_HEAD: tuple[_Entry, ...] = (("lm_head.weight", Role.LM_HEAD, ("V", "D")),)

_MLP: tuple[_Entry, ...] = (
    (_L + "post_attention_layernorm.weight", Role.NORM, ("D",)),
    (_L + "mlp.up_proj.weight", Role.LINEAR, ("I", "D")),
    (_L + "mlp.gate_proj.weight", Role.LINEAR, ("I", "D")),
    (_L + "mlp.down_proj.weight", Role.LINEAR, ("D", "I")),
)

LLAMA = ArchitectureLayout(
    "LlamaForCausalLM",
    head=_EMBED,
    layer=(
        (_L + "input_layernorm.weight", Role.NORM, ("D",)),
        (_L + "self_attn.q_proj.weight", Role.LINEAR, ("Q", "D")),
        (_L + "self_attn.k_proj.weight", Role.LINEAR, ("K", "D")),
        (_L + "self_attn.v_proj.weight", Role.LINEAR, ("K", "D")),
        (_L + "self_attn.o_proj.weight", Role.LINEAR, ("D", "Q")),
    )
    + _MLP,
    tail=_FINAL_NORM,
    untied_tail=_LM_HEAD,
)

QWEN3 = ArchitectureLayout(
    "Qwen3ForCausalLM",
    head=_EMBED,
    layer=(
        (_L + "input_layernorm.weight", Role.NORM, ("D",)),
        (_L + "self_attn.q_proj.weight", Role.LINEAR, ("Q", "D")),
        (_L + "self_attn.q_norm.weight", Role.NORM, ("H",)),
        (_L + "self_attn.k_proj.weight", Role.LINEAR, ("K", "D")),
        (_L + "self_attn.k_norm.weight", Role.NORM, ("H",)),
        (_L + "self_attn.v_proj.weight", Role.LINEAR, ("K", "D")),
        (_L + "self_attn.o_proj.weight", Role.LINEAR, ("D", "Q")),
    )
    + _MLP,
    tail=_FINAL_NORM,
    untied_tail=_LM_HEAD,
    rope_table_from_config=True,
)

#: Qwen3-MoE (qwen3_moe_causallm.cpp, layers/qwen_moe_layer.cpp): Qwen3's attention, then
#: the router and, per expert, up, gate, down (res/qwen3-30b-a3b/weight_converter.py).
QWEN3_MOE = ArchitectureLayout(
    "Qwen3MoeForCausalLM",
    head=_EMBED,
    layer=QWEN3.layer[:7]
    + (
        (_L + "post_attention_layernorm.weight", Role.NORM, ("D",)),
        (_L + "mlp.gate.weight", Role.ROUTER, ("E", "D")),
        PerExpert(
            (
                (_L + "mlp.experts.{e}.up_proj.weight", Role.LINEAR, ("M", "D")),
                (_L + "mlp.experts.{e}.gate_proj.weight", Role.LINEAR, ("M", "D")),
                (_L + "mlp.experts.{e}.down_proj.weight", Role.LINEAR, ("D", "M")),
            )
        ),
    ),
    tail=_FINAL_NORM,
    untied_tail=_LM_HEAD,
    # The slim (FSU) and cached variants build the same layers from the same file.
    aliases=("Qwen3SlimMoeForCausalLM", "Qwen3CachedSlimMoeForCausalLM"),
    required=("moe_intermediate_size", "num_experts_per_tok"),
    config_keys=(("num_experts", ("num_experts", "num_local_experts")),),
    rope_table_from_config=True,
    rules=(
        ConfigRule(
            lambda c: bool(c.get("mlp_only_layers")) or int(c.get("decoder_sparse_step") or 1) != 1,
            "the model has dense MLP layers (mlp_only_layers {mlp_only_layers}, "
            "decoder_sparse_step {decoder_sparse_step}), but nntrainer's Qwen3-MoE builds a MoE "
            "block in every layer",
            refuse=True,
        ),
        ConfigRule(
            lambda c: c.get("norm_topk_prob") is False,
            "norm_topk_prob is false, but nntrainer's Qwen3-MoE always renormalizes the top-k "
            "routing weights, so its outputs will differ from the source model's",
        ),
    ),
)

#: GPT-OSS (gptoss_causallm.cpp, layers/gpt_oss_moe_layer.cpp): attention with biases and
#: sinks, then the router with its bias and, per expert, up, gate, down with their biases
#: (res/gpt-oss-20b/weight_converter.py).
GPT_OSS = ArchitectureLayout(
    "GptOssForCausalLM",
    head=_EMBED,
    layer=(
        (_L + "input_layernorm.weight", Role.NORM, ("D",)),
        (_L + "self_attn.q_proj.weight", Role.LINEAR, ("Q", "D")),
        (_L + "self_attn.q_proj.bias", Role.VECTOR, ("Q",)),
        (_L + "self_attn.k_proj.weight", Role.LINEAR, ("K", "D")),
        (_L + "self_attn.k_proj.bias", Role.VECTOR, ("K",)),
        (_L + "self_attn.v_proj.weight", Role.LINEAR, ("K", "D")),
        (_L + "self_attn.v_proj.bias", Role.VECTOR, ("K",)),
        (_L + "self_attn.sinks", Role.VECTOR, ("N",)),
        (_L + "self_attn.o_proj.weight", Role.LINEAR, ("D", "Q")),
        (_L + "self_attn.o_proj.bias", Role.VECTOR, ("D",)),
        (_L + "post_attention_layernorm.weight", Role.NORM, ("D",)),
        (_L + "mlp.router.weight", Role.ROUTER, ("E", "D")),
        (_L + "mlp.router.bias", Role.VECTOR, ("E",)),
        PerExpert(
            (
                (_L + "mlp.experts.{e}.up_proj.weight", Role.LINEAR, ("M", "D")),
                (_L + "mlp.experts.{e}.up_proj.bias", Role.VECTOR, ("M",)),
                (_L + "mlp.experts.{e}.gate_proj.weight", Role.LINEAR, ("M", "D")),
                (_L + "mlp.experts.{e}.gate_proj.bias", Role.VECTOR, ("M",)),
                (_L + "mlp.experts.{e}.down_proj.weight", Role.LINEAR, ("D", "M")),
                (_L + "mlp.experts.{e}.down_proj.bias", Role.VECTOR, ("D",)),
            )
        ),
    ),
    tail=_FINAL_NORM,
    untied_tail=_LM_HEAD,
    aliases=("GptOssCachedSlimCausalLM",),
    required=("num_experts_per_tok", "layer_types", "sliding_window"),
    config_keys=(("num_local_experts", ("num_local_experts", "num_experts")),),
    rope_scaling=frozenset({"yarn"}),
    rope_table_from_config=True,
    rules=(
        ConfigRule(
            lambda c: (c.get("architectures") or [None])[0] == "GptOssCachedSlimCausalLM",
            "nntrainer's GptOssCachedSlimCausalLM does not add the router bias, so its expert "
            "choices differ from the source model's; GptOssForCausalLM adds it",
        ),
        ConfigRule(
            lambda c: True,
            "nntrainer's GPT-OSS prefill is wrong for prompts longer than sliding_window "
            "({sliding_window} tokens): keep prompts shorter",
        ),
        ConfigRule(
            lambda c: True,
            "nntrainer's GPT-OSS does not clamp the SwiGLU inputs (swiglu_limit {swiglu_limit}), "
            "so activations beyond it differ from the source model's",
        ),
        ConfigRule(
            lambda c: _rope_param(c, "original_max_position_embeddings") not in (None, 4096),
            "nntrainer's GPT-OSS takes YaRN's original context as 4096 tokens, but the config "
            "says {original_max_position_embeddings}; its outputs will differ",
        ),
    ),
)

#: The architectures nntrainer's CausalLM application runs, by ``config.json`` architecture
#: (and by the runtime's other names for the same layout).
ARCHITECTURES: dict[str, ArchitectureLayout] = {
    name: a for a in (LLAMA, QWEN3, QWEN3_MOE, GPT_OSS) for name in (a.architecture, *a.aliases)
}


def _rope_param(config: dict[str, Any], key: str) -> Any:
    for where in ("rope_parameters", "rope_scaling"):
        params = config.get(where)
        if isinstance(params, dict) and params.get(key) is not None:
            return params[key]
    return config.get(key)


_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


def architecture_of(config: dict[str, Any]) -> str:
    """The model's architecture name from its config (``architectures[0]``)."""
    archs = ModelConfig.of(config).architectures
    if not archs:
        raise UsageError(
            "the file's config names no architecture ('architectures' is missing); "
            f"nntrainer export supports {', '.join(ARCHITECTURES)}"
        )
    return str(archs[0])


def layout_for_config(config: dict[str, Any]) -> ArchitectureLayout:
    """The layout table for this config's architecture; ``UsageError`` if there is none."""
    arch = architecture_of(config)
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise UsageError(
            f"nntrainer's CausalLM runtime has no layout for architecture {arch}; "
            f"supported: {', '.join(ARCHITECTURES)}"
        ) from None


#: The config keys each optional shape symbol comes from (first present wins).
_SYMBOL_KEYS = {
    "E": "num_experts or num_local_experts",
    "M": "moe_intermediate_size (or intermediate_size)",
}


def model_dims(config: dict[str, Any]) -> dict[str, int]:
    """The sizes the layout tables are written in, from a model config."""
    missing = [k for k in _REQUIRED_KEYS if not isinstance(config.get(k), int)]
    if missing:
        raise UsageError(
            f"the file's config lacks integer {', '.join(missing)}; the runtime builds the "
            "model from these, so re-convert from a complete config.json"
        )
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads = config.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise UsageError(
            f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    dims = {
        "V": config["vocab_size"],
        "D": hidden,
        "I": config["intermediate_size"],
        "Q": heads * head_dim,
        "K": kv_heads * head_dim,
        "H": head_dim,
        "N": heads,
        "M": config.get("moe_intermediate_size") or config["intermediate_size"],
        "layers": config["num_hidden_layers"],
    }
    experts = ModelConfig.of(config).num_experts
    if experts is not None:
        dims["E"] = experts
    return dims
