"""How nntrainer's CausalLM application reads a model's weight file, as each family declares it.

The runtime reads its weight file by position: no names, no header, each tensor's bytes right
after the previous one's, in the order its layers were built. A family the runtime runs writes
that order down in its module as an :class:`ArchitectureLayout` (``Family.nntrainer``),
together with the role of each tensor (which decides how it is stored) and its expected shape
in terms of the model's configuration; the pieces several families share are here.

A layout also says what the runtime needs of the config beyond the sizes: keys it reads under
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
Entry = tuple[str, Role, tuple[str, ...]]


@dataclass(frozen=True)
class PerExpert:
    """Entries repeated for every expert ``e`` of a layer, in expert order (``{e}`` in names)."""

    entries: tuple[Entry, ...]


LayerEntry = Entry | PerExpert


def with_bias(stem: str, role: Role, dims: tuple[str, ...]) -> tuple[Entry, Entry]:
    """A layer's ``stem.weight`` and, after it, its ``stem.bias`` (one value per output row)."""
    return (stem + ".weight", role, dims), (stem + ".bias", Role.VECTOR, dims[:1])


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


#: The name prefix of layer ``i``.
L = "model.layers.{i}."

EMBED: tuple[Entry, ...] = (("model.embed_tokens.weight", Role.EMBEDDING, ("V", "D")),)
FINAL_NORM: tuple[Entry, ...] = (("model.norm.weight", Role.NORM, ("D",)),)
LM_HEAD: tuple[Entry, ...] = (("lm_head.weight", Role.LM_HEAD, ("V", "D")),)

MLP: tuple[Entry, ...] = (
    (L + "post_attention_layernorm.weight", Role.NORM, ("D",)),
    (L + "mlp.up_proj.weight", Role.LINEAR, ("I", "D")),
    (L + "mlp.gate_proj.weight", Role.LINEAR, ("I", "D")),
    (L + "mlp.down_proj.weight", Role.LINEAR, ("D", "I")),
)

#: Llama's attention block: the input norm, then q, k, v, o.
ATTENTION: tuple[Entry, ...] = (
    (L + "input_layernorm.weight", Role.NORM, ("D",)),
    (L + "self_attn.q_proj.weight", Role.LINEAR, ("Q", "D")),
    (L + "self_attn.k_proj.weight", Role.LINEAR, ("K", "D")),
    (L + "self_attn.v_proj.weight", Role.LINEAR, ("K", "D")),
    (L + "self_attn.o_proj.weight", Role.LINEAR, ("D", "Q")),
)

#: Qwen3's attention block: Llama's with a norm after q and after k.
QK_NORM_ATTENTION: tuple[Entry, ...] = (
    *ATTENTION[:2],
    (L + "self_attn.q_norm.weight", Role.NORM, ("H",)),
    ATTENTION[2],
    (L + "self_attn.k_norm.weight", Role.NORM, ("H",)),
    *ATTENTION[3:],
)


@dataclass(frozen=True)
class ArchitectureLayout:
    """The weight-file order of one architecture: before the layers, per layer, after them,
    and what the runtime needs of the config."""

    architecture: str
    layer: tuple[LayerEntry, ...]
    head: tuple[Entry, ...] = EMBED
    tail: tuple[Entry, ...] = FINAL_NORM
    untied_tail: tuple[Entry, ...] = LM_HEAD
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

        def make(entry: Entry, layer: int | None = None, expert: int | None = None) -> Slot:
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


def rope_param(config: dict[str, Any], key: str) -> Any:
    """A RoPE parameter from ``rope_parameters``, ``rope_scaling`` or the config itself."""
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
            f"the file's config has num_attention_heads {heads}, not a multiple of "
            f"num_key_value_heads {kv_heads}: fix config.json and convert again"
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
