"""Tensor names across ecosystems: Hugging Face checkpoint names <-> llama.cpp (GGUF) names.

The tables are the ``gguf`` package's (``gguf.get_tensor_name_map``), so every architecture
llama.cpp's converter knows is covered the way that converter names it. Experts stored one
matrix per expert in Hugging Face checkpoints (``mlp.experts.3.gate_proj.weight``) are one
fused GGUF tensor (``blk.N.ffn_gate_exps.weight``); :func:`hf_to_gguf` says which expert.
``gguf`` is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import functools
import re
from typing import Any

#: Hugging Face ``model_type`` / ``architectures`` -> llama.cpp's architecture name, where the
#: two differ (llama.cpp converts these families with another family's graph).
_ARCH_ALIASES = {
    "mistral": "llama",
    "mixtral": "llama",
    "MistralForCausalLM": "llama",
    "MixtralForCausalLM": "llama",
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3moe",
}

_EXPERT = re.compile(r"\.experts\.(\d+)\.")
_SUFFIXES = (".weight", ".bias")


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else {}


def gguf_arch_for(config: dict[str, Any]) -> str | None:
    """llama.cpp's architecture name (``"llama"``, ``"qwen3moe"``, ...) for a Hugging Face
    config, from its ``architectures`` or ``model_type``; ``None`` when gguf knows none."""
    from gguf import MODEL_ARCH_NAMES

    known = set(MODEL_ARCH_NAMES.values())
    candidates: list[str] = []
    for scope in (config, _text_config(config)):
        archs = scope.get("architectures") or []
        candidates += [a for a in archs if isinstance(a, str)]
        if isinstance(scope.get("model_type"), str):
            candidates.append(scope["model_type"])
    for name in candidates:
        if name in _ARCH_ALIASES:
            return _ARCH_ALIASES[name]
        plain = name.lower().replace("_", "").replace("-", "")
        if plain in known:
            return plain
        if name.endswith("ForCausalLM"):
            stem = name[: -len("ForCausalLM")].lower()
            if stem in known:
                return stem
    return None


def _n_blocks(config: dict[str, Any]) -> int:
    for scope in (config, _text_config(config)):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(scope.get(key), int):
                return int(scope[key])
    return 0


@functools.lru_cache(maxsize=16)
def _name_map(arch: str, n_blocks: int) -> Any:
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    by_name = {v: k for k, v in MODEL_ARCH_NAMES.items()}
    return get_tensor_name_map(by_name[arch], n_blocks)


def hf_to_gguf(hf_name: str, config: dict[str, Any]) -> tuple[str, int | None] | None:
    """``(gguf name, expert index or None)`` of a Hugging Face tensor name, or ``None`` when
    the architecture or the tensor is unknown to llama.cpp's tables."""
    arch = gguf_arch_for(config)
    if arch is None:
        return None
    name_map = _name_map(arch, _n_blocks(config))
    expert = None
    m = _EXPERT.search(hf_name)
    if m is not None:
        expert = int(m.group(1))
        hf_name = hf_name[: m.start()] + ".experts." + hf_name[m.end() :]
    found = name_map.get_name(hf_name, try_suffixes=_SUFFIXES)
    if found is None:
        return None
    return found, expert


def hf_to_gguf_name(hf_name: str, config: dict[str, Any]) -> str | None:
    """llama.cpp's name of a Hugging Face tensor (``model.layers.0.self_attn.q_proj.weight``
    -> ``blk.0.attn_q.weight``); per-expert tensors map to their fused tensor's name."""
    found = hf_to_gguf(hf_name, config)
    return None if found is None else found[0]
