"""The per-architecture layout tables of nntrainer's CausalLM weight file.

The runtime reads its weight file by position: no names, no header, each tensor's bytes right
after the previous one's, in the order its layers were built. That order is written down here,
one explicit table per architecture, together with the role of each tensor (which decides how
it is stored) and its expected shape in terms of the model's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from nntrtool.errors import UsageError


class Role(Enum):
    """What a tensor is to the runtime; the role decides the allowed types and the storage."""

    EMBEDDING = "embedding"  # token embedding [vocab, hidden], rows looked up by token id
    NORM = "norm"  # RMSNorm weight, one vector, always F32
    LINEAR = "linear"  # a fully connected layer inside a decoder block
    LM_HEAD = "lm_head"  # the output head of an untied model (a fully connected layer too)


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
#   H head_dim.
_Entry = tuple[str, Role, tuple[str, ...]]


@dataclass(frozen=True)
class ArchitectureLayout:
    """The weight-file order of one architecture: before the layers, per layer, after them."""

    architecture: str
    head: tuple[_Entry, ...]
    layer: tuple[_Entry, ...]
    tail: tuple[_Entry, ...]
    untied_tail: tuple[_Entry, ...]
    #: The runtime's class precomputes RoPE for exactly ``max_position_embeddings`` positions
    #: (Qwen3); the Llama class ignores the config and always builds 40960.
    rope_table_from_config: bool = False

    def slots(self, config: dict[str, Any], tied: bool) -> list[Slot]:
        """Every tensor of the weight file in the order the runtime reads it."""
        dims = model_dims(config)
        layers = dims.pop("layers")

        def make(entry: _Entry, index: int | None = None) -> Slot:
            name, role, symbols = entry
            if index is not None:
                name = name.format(i=index)
            return Slot(name, role, tuple(dims[s] for s in symbols))

        out = [make(e) for e in self.head]
        for i in range(layers):
            out.extend(make(e, i) for e in self.layer)
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

#: The architectures nntrainer's CausalLM application runs, by ``config.json`` architecture.
ARCHITECTURES: dict[str, ArchitectureLayout] = {a.architecture: a for a in (LLAMA, QWEN3)}

_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


def architecture_of(config: dict[str, Any]) -> str:
    """The model's architecture name from its config (``architectures[0]``)."""
    archs = config.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
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
    return {
        "V": config["vocab_size"],
        "D": hidden,
        "I": config["intermediate_size"],
        "Q": heads * head_dim,
        "K": kv_heads * head_dim,
        "H": head_dim,
        "layers": config["num_hidden_layers"],
    }
