"""Tensor names across ecosystems: Hugging Face checkpoint names <-> llama.cpp (GGUF) names.

The way back from GGUF (:func:`hf_name`) is a choice: the package maps many Hugging Face
spellings onto each GGUF name (``model.layers.0.self_attn.q_proj``, ``layers.0.attention.wq``
... all become ``blk.0.attn_q``), so the spelling transformers' ``*ForCausalLM`` classes use is
declared by each model family (:mod:`nntrtool.architectures`) as a short list of name patterns
and looked up among the table's candidates; every name still comes from the table.

The tables are the ``gguf`` package's (``gguf.get_tensor_name_map``), so every architecture
llama.cpp's converter knows is covered the way that converter names it. Experts stored one
matrix per expert in Hugging Face checkpoints (``mlp.experts.3.gate_proj.weight``) are one
fused GGUF tensor (``blk.N.ffn_gate_exps.weight``); :func:`hf_to_gguf` says which expert.
``gguf`` is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from nntrtool.errors import SourceError

#: Hugging Face names llama.cpp converts with another family's graph and that no family
#: module declares.
_ARCH_ALIASES = {"mixtral": "llama", "MixtralForCausalLM": "llama"}

_EXPERT = re.compile(r"\.experts\.(\d+)\.")
_SUFFIXES = (".weight", ".bias")


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else {}


def gguf_arch_for(config: dict[str, Any]) -> str | None:
    """llama.cpp's architecture name (``"llama"``, ``"qwen3moe"``, ...) for a Hugging Face
    config, from its ``architectures`` or ``model_type``; ``None`` when gguf knows none."""
    from gguf import MODEL_ARCH_NAMES

    from nntrtool.architectures import for_config

    family = for_config(config)
    if family is not None:
        return family.gguf_arch
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


# ---- GGUF names back to Hugging Face names -------------------------------------------------

_SUFFIX = re.compile(r"(.*?)(\.weight|\.bias)?$")


@dataclass(frozen=True)
class MappedName:
    """A GGUF name, the Hugging Face name it maps to, and whether the table knew it."""

    gguf: str
    hf: str
    known: bool


def check_architecture(arch: str) -> None:
    """SourceError unless the gguf package has a name table for ``arch``."""
    _model_arch(arch)


def _model_arch(arch: str):  # -> gguf.MODEL_ARCH
    from gguf import MODEL_ARCH_NAMES

    for key, name in MODEL_ARCH_NAMES.items():
        if name == arch:
            return key
    raise SourceError(
        f"the GGUF's architecture {arch!r} has no tensor name table in the gguf package, so its "
        "tensors cannot be named; convert the original Hugging Face model instead"
    )


@functools.lru_cache(maxsize=8)
def _reverse_table(arch: str, n_blocks: int, spellings: tuple[str, ...]) -> dict[str, str]:
    """``{gguf base name: Hugging Face base name}`` for ``arch`` with ``n_blocks`` layers, the
    first candidate that fully matches one of ``spellings`` taken."""
    _model_arch(arch)
    spelling = re.compile("|".join(f"(?:{p})" for p in spellings))
    table = _name_map(arch, n_blocks)
    candidates: dict[str, list[str]] = {}
    for hf, (_kind, gguf_name) in table.mapping.items():
        candidates.setdefault(gguf_name, []).append(hf)
    out: dict[str, str] = {}
    for gguf_name, names in candidates.items():
        chosen = next((n for n in names if spelling.fullmatch(n)), None)
        if chosen is not None:
            out[gguf_name] = chosen
    return out


def hf_name(gguf_name: str, arch: str, n_blocks: int, spellings: tuple[str, ...]) -> MappedName:
    """The Hugging Face name of one GGUF tensor name, spelled as one of ``spellings`` (a
    family's patterns); unchanged, ``known=False``, if none names it."""
    m = _SUFFIX.fullmatch(gguf_name)
    assert m is not None
    base, suffix = m.group(1), m.group(2) or ""
    hf = _reverse_table(arch, max(0, n_blocks), tuple(spellings)).get(base)
    if hf is None:
        return MappedName(gguf_name, gguf_name, False)
    return MappedName(gguf_name, hf + suffix, True)
