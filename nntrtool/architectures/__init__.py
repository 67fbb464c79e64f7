"""Model families: one module each, a registry from any of their names to the module's data.

Each module (``llama``, ``gemma3`` ...) holds one :class:`~nntrtool.architectures.base.Family`
named ``FAMILY``: tensor names, value transforms with their inverses, GGUF metadata keys and
config keys, and the layout of nntrainer's weight file where that runtime runs the family. The rest of nntrtool asks this registry, never a family by name:

    family = for_gguf("gemma3")            # a GGUF's general.architecture
    family = for_config(config)            # a Hugging Face config.json
    family = for_class("Qwen3MoeForCausalLM")

How to add a family: docs/FAMILIES.md.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from nntrtool.architectures.base import Family
from nntrtool.tensors.transforms import Placement, Rule

#: The family modules, in the order they are listed to users.
MODULES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen2moe",
    "qwen3",
    "qwen3moe",
    "gemma",
    "gemma2",
    "gemma3",
    "phi3",
    "starcoder2",
    "gpt2",
    "gpt_oss",
)


@functools.cache
def families() -> tuple[Family, ...]:
    """Every family, loaded on first use."""
    return tuple(importlib.import_module(f"{__name__}.{m}").FAMILY for m in MODULES)


def for_gguf(arch: str) -> Family | None:
    """The family whose GGUFs carry ``general.architecture == arch`` and are read back (the
    first: Mistral's GGUFs say ``llama`` and read as Llama)."""
    matching = [f for f in families() if f.gguf_arch == arch]
    return next((f for f in matching if f.reads_gguf), matching[0] if matching else None)


def for_class(hf_class: str) -> Family | None:
    """The family of a Hugging Face class (``"GemmaForCausalLM"``)."""
    return next((f for f in families() if hf_class == f.hf_class or hf_class in f.aliases), None)


def for_config(config: dict[str, Any]) -> Family | None:
    """The family of a config, from ``architectures`` then ``model_type`` (a multimodal
    config's ``text_config`` too)."""
    inner = config.get("text_config")
    for scope in (config, inner if isinstance(inner, dict) else {}):
        for name in scope.get("architectures") or []:
            if isinstance(name, str) and (found := for_class(name)) is not None:
                return found
        model_type = scope.get("model_type")
        if isinstance(model_type, str):
            for f in families():
                if model_type == f.model_type or model_type in f.aliases:
                    return f
    return None


def for_first_class(config: dict[str, Any]) -> Family | None:
    """The family of ``architectures[0]`` only (what the checkpoint rules key on)."""
    archs = config.get("architectures") or []
    if archs and isinstance(archs[0], str):
        return for_class(archs[0])
    return None


def supported_gguf() -> list[str]:
    """The GGUF architectures nntrtool reads back, for messages."""
    return sorted({f.gguf_arch for f in families() if f.reads_gguf})


__all__ = [
    "Family",
    "families",
    "for_class",
    "for_config",
    "for_first_class",
    "for_gguf",
    "supported_gguf",
]


def rules_for(config: dict[str, Any]) -> list[Rule]:
    """The rules that apply to a Hugging Face checkpoint with this config (often none): those
    its family (by ``architectures[0]``) declares."""
    family = for_first_class(config)
    return family.hf_rules(config) if family is not None else []


def placements_for(config: dict[str, Any]) -> list[Placement]:
    """Where stored tensors go in a transformers model with this config (none: every stored
    name is a state key)."""
    family = for_first_class(config)
    return family.placements(config) if family is not None else []
