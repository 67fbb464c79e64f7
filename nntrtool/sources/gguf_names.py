"""GGUF tensor names back to Hugging Face names, with the ``gguf`` package's name tables.

The package maps many Hugging Face spellings onto each GGUF name (``model.layers.0.self_attn.
q_proj``, ``layers.0.attention.wq`` ... all become ``blk.0.attn_q``), so the way back is a
choice: the spelling transformers' ``*ForCausalLM`` classes use, declared below as a short list
of name patterns (:data:`HF_SPELLINGS`) and looked up among the table's candidates, so every name
still comes from the table. Names the table does not know stay as they are.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from nntrtool.errors import SourceError

#: Hugging Face spellings of the llama family of transformers (Llama, Mistral, Qwen2, Qwen3,
#: Qwen3-MoE ...), without the ``.weight``/``.bias`` suffix; the first candidate of the name
#: table that matches one of these is taken.
HF_SPELLINGS = (
    r"model\.embed_tokens",
    r"lm_head",
    r"model\.norm",
    r"model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)",
    r"model\.layers\.\d+\.self_attn\.[qkvo]_proj",
    r"model\.layers\.\d+\.self_attn\.[qk]_norm",
    r"model\.layers\.\d+\.mlp\.(gate|up|down)_proj",
    r"model\.layers\.\d+\.mlp\.gate",
    r"model\.layers\.\d+\.mlp\.experts\.(gate|up|down)_proj",
    r"model\.layers\.\d+\.mlp\.shared_expert\.(gate|up|down)_proj",
    r"model\.layers\.\d+\.mlp\.shared_expert_gate",
)
_SPELLING = re.compile("|".join(f"(?:{p})" for p in HF_SPELLINGS))
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
def _reverse_table(arch: str, n_blocks: int) -> dict[str, str]:
    """``{gguf base name: Hugging Face base name}`` for ``arch`` with ``n_blocks`` layers."""
    from gguf import get_tensor_name_map

    table = get_tensor_name_map(_model_arch(arch), n_blocks)
    candidates: dict[str, list[str]] = {}
    for hf, (_kind, gguf_name) in table.mapping.items():
        candidates.setdefault(gguf_name, []).append(hf)
    out: dict[str, str] = {}
    for gguf_name, names in candidates.items():
        chosen = next((n for n in names if _SPELLING.fullmatch(n)), None)
        if chosen is not None:
            out[gguf_name] = chosen
    return out


def hf_name(gguf_name: str, arch: str, n_blocks: int) -> MappedName:
    """The Hugging Face name of one GGUF tensor name (unchanged, ``known=False``, if unmapped)."""
    m = _SUFFIX.fullmatch(gguf_name)
    assert m is not None
    base, suffix = m.group(1), m.group(2) or ""
    hf = _reverse_table(arch, max(0, n_blocks)).get(base)
    if hf is None:
        return MappedName(gguf_name, gguf_name, False)
    return MappedName(gguf_name, hf + suffix, True)
