"""Type mixtures: a file type whose tensors get different types by their role and layer.

``--quant-type q4_k_m`` (and ``q5_k_m``) follow the per-tensor rule llama.cpp's
``llama-quantize`` applies for its Q4_K_M / Q5_K_M files, so a conversion here and a GGUF made
there store the same type for every tensor:

- the output head (or the token embeddings when the head is tied to them) is Q6_K, or Q8_0
  when its rows do not fit 256-value blocks;
- the value projection (or a fused QKV) and the MLP down projection of the first eighth, the
  last eighth and every third layer in between are Q6_K; an eight-expert model's value and
  key projections are Q8_0, and its attention output projection Q5_K;
- everything else takes the file type's base (Q4_K, Q5_K); a row that does not fit 256-value
  blocks falls back as llama.cpp does (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, then F16).

Roles are read from llama.cpp's own tensor names (through the ``gguf`` package's tables), so
every architecture those tables know is covered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nntrtool.qtypes import TYPES_BY_NAME

#: A tensor's layer in llama.cpp's naming (``blk.12.ffn_down.weight``).
_LAYER = re.compile(r"^blk\.(\d+)\.")

#: Where a type that does not fit a row goes instead (llama.cpp's fallback for mixtures).
MIX_FALLBACK = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


@dataclass(frozen=True)
class Mix:
    """A mixture: the base type of the file and what its sensitive tensors get."""

    name: str
    base: str
    #: The type of the layers :func:`use_more_bits` picks (value and down projections).
    more_bits: str
    description: str
    #: The attention output projection of a model with exactly 8 experts (None: the base).
    eight_expert_output: str | None = None


MIXES: dict[str, Mix] = {
    m.name: m
    for m in (
        Mix(
            "q4_k_m",
            "q4_k",
            "q6_k",
            "llama.cpp's Q4_K_M: Q4_K, with Q6_K for the head and "
            "for the value / down projections of some layers",
            eight_expert_output="q5_k",
        ),
        Mix(
            "q5_k_m",
            "q5_k",
            "q6_k",
            "llama.cpp's Q5_K_M: Q5_K, with Q6_K for the head and "
            "for the value / down projections of some layers",
        ),
    )
}


#: The mixtures this build offers: those whose types all exist in the type table.
MIX_NAMES: tuple[str, ...] = tuple(
    m.name
    for m in MIXES.values()
    if all(t in TYPES_BY_NAME for t in (m.base, m.more_bits, MIX_FALLBACK.get(m.base, "f16")))
)


def use_more_bits(layer: int, layers: int) -> bool:
    """Whether layer ``layer`` of ``layers`` gets the higher type: the first and last eighth,
    and every third layer in between (llama.cpp's choice, in integer arithmetic)."""
    eighth = layers // 8
    return layer < eighth or layer >= 7 * layers // 8 or (layer - eighth) % 3 == 2


@dataclass(frozen=True)
class MixModel:
    """What a mixture needs to know of the model besides the tensor itself."""

    layers: int
    experts: int
    tied: bool
    config: dict[str, Any]


def mix_type(mix: Mix, gguf_name: str | None, cols: int, model: MixModel) -> tuple[str, str]:
    """The type ``mix`` gives a matrix called ``gguf_name`` in llama.cpp (``None`` when the
    tables do not know it) with rows of ``cols`` values, and why."""
    name = gguf_name or ""
    if name == "output.weight" or (model.tied and name == "token_embd.weight"):
        if cols % 256:
            return "q8_0", f"{mix.name}: output head, rows do not fit 256-value blocks"
        return "q6_k", f"{mix.name}: output head"
    m = _LAYER.match(name)
    layer = int(m.group(1)) if m else -1
    chosen, why = mix.base, f"{mix.name}: {mix.base}"
    if any(part in name for part in ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")):
        if layer >= 0 and use_more_bits(layer, model.layers):
            chosen, why = mix.more_bits, f"{mix.name}: value projection of layer {layer}"
        if model.experts == 8:
            chosen, why = "q8_0", f"{mix.name}: value projection of an 8-expert model"
    elif "attn_k.weight" in name and model.experts == 8:
        chosen, why = "q8_0", f"{mix.name}: key projection of an 8-expert model"
    elif "attn_output.weight" in name and model.experts == 8 and mix.eight_expert_output:
        chosen = mix.eight_expert_output
        why = f"{mix.name}: attention output projection of an 8-expert model"
    elif "ffn_down" in name and layer >= 0 and use_more_bits(layer, model.layers):
        chosen, why = mix.more_bits, f"{mix.name}: down projection of layer {layer}"
    return fallback_for(chosen, cols, why)


def fallback_for(type_name: str, cols: int, why: str) -> tuple[str, str]:
    """``type_name`` when rows of ``cols`` fit its blocks, else llama.cpp's fallback."""
    from nntrtool.qtypes import get_type

    if get_type(type_name).fits(cols):
        return type_name, why
    instead = MIX_FALLBACK.get(type_name, "f16")
    if not get_type(instead).fits(cols):
        instead = "f16"
    block = get_type(type_name).block_size
    return instead, f"{why}; {cols} values per row do not fit {block}-value blocks: {instead}"
