"""What one model family declares: :class:`Family`, the data every family module fills in.

A family is known by its Hugging Face ``model_type`` and ``*ForCausalLM`` class and by the
architecture name llama.cpp writes into a GGUF's ``general.architecture``. It declares:

- ``spellings``: the Hugging Face names of its tensors, as patterns. The names themselves come
  from the ``gguf`` package's tensor-name tables (:mod:`nntrtool.names`); the table offers many
  spellings for each GGUF name and the family's patterns pick the one its checkpoints use.
- ``gguf_rules``: how tensors read from a GGUF become the checkpoint's tensors again, the
  inverse of what llama.cpp's converter did (rows un-permuted, norm offsets removed, experts
  split ...), as :class:`~nntrtool.tensors.transforms.Rule`\\ s over the Hugging Face names.
- ``hf_rules`` and ``placements``: the transforms applied to the family's own checkpoints (a MoE
  router kept F32, fused experts split) and their way back into transformers' modules.
- ``config_keys`` / ``finish_config``: GGUF metadata keys (after ``"<arch>."``) and the
  ``config.json`` keys transformers reads them into, plus what a small function must derive.
- ``nntrainer``: where nntrainer's CausalLM application runs the family, the order and roles
  of the tensors in its weight file (:mod:`nntrtool.architectures.nntrainer_layout`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nntrtool.tensors.transforms import Placement, Rule

#: Reads one GGUF metadata value (``None`` when absent).
Field = Callable[[str], Any]

#: ``{GGUF key under "<arch>.": config key}`` that most decoder families share.
COMMON_KEYS: dict[str, str] = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "rope.freq_base": "rope_theta",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}

#: Hugging Face spellings of the llama-style decoders (Llama, Mistral, Qwen2/3, Gemma ...),
#: without the ``.weight``/``.bias`` suffix.
DECODER_SPELLINGS: tuple[str, ...] = (
    r"model\.embed_tokens",
    r"lm_head",
    r"model\.norm",
    r"model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)",
    r"model\.layers\.\d+\.self_attn\.[qkvo]_proj",
    r"model\.layers\.\d+\.mlp\.(gate|up|down)_proj",
)


@dataclass(frozen=True)
class GGUFMeta:
    """A GGUF's metadata as the rules of a family read it: ``field(key)`` and its architecture."""

    arch: str
    field: Field
    path: str = ""

    def count(self, suffix: str, default: int | None = None) -> int:
        """The count ``"<arch>.<suffix>"``; SourceError when absent (without default) or not a
        non-negative integer."""
        from nntrtool.errors import SourceError
        from nntrtool.messages import gguf_unreadable

        key = f"{self.arch}.{suffix}"
        value = self.field(key)
        if value is None:
            if default is None:
                raise SourceError(
                    gguf_unreadable(self.path, f"the GGUF lacks the metadata {key!r}")
                )
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SourceError(
                gguf_unreadable(self.path, f"metadata {key!r} is {value!r}, not a count")
            )
        return value


def _no_rules(_: Any) -> list[Any]:
    return []


@dataclass(frozen=True)
class Family:
    """Everything nntrtool knows about one model family (see the module text)."""

    #: The family's name (its module's name): ``"gemma3"``.
    name: str
    #: Hugging Face class of the config's ``architectures``.
    hf_class: str
    #: Hugging Face ``model_type`` of the config this family's GGUFs are read back into
    #: (default: the name).
    model_type: str = ""
    #: llama.cpp's architecture name (``general.architecture``); GGUFs of this family carry it
    #: (default: the name).
    gguf_arch: str = ""
    #: Other ``model_type`` / class names of the same family (``"gemma3_text"``).
    aliases: tuple[str, ...] = ()
    #: Hugging Face spellings of its tensor names (see :data:`DECODER_SPELLINGS`).
    spellings: tuple[str, ...] = DECODER_SPELLINGS
    #: GGUF -> checkpoint rules (inverses of llama.cpp's transforms).
    gguf_rules: Callable[[GGUFMeta], list[Rule]] = _no_rules
    #: Rules on the family's own checkpoints (Hugging Face layout).
    hf_rules: Callable[[dict], list[Rule]] = _no_rules
    #: Stored tensors back into transformers' modules (inverse of ``hf_rules``).
    placements: Callable[[dict], list[Placement]] = _no_rules
    #: ``{GGUF key under "<arch>.": config key}``.
    config_keys: dict[str, str] = field(default_factory=lambda: dict(COMMON_KEYS))
    #: Derives what no single key holds (``(config, field)``; edits the config in place).
    finish_config: Callable[[dict, Field], None] | None = None
    #: ``hidden_act`` of the rebuilt config (GGUFs do not store it).
    hidden_act: str | None = None
    #: Whether the config carries RoPE parameters.
    rope: bool = True
    #: Whether GGUFs of this family are read (a family whose GGUF layout nntrtool does not
    #: undo yet is refused rather than read wrong).
    reads_gguf: bool = True
    #: How nntrainer's CausalLM application reads the family's weight file
    #: (:class:`~nntrtool.architectures.nntrainer_layout.ArchitectureLayout`); ``None``: the
    #: runtime does not run this family.
    nntrainer: Any = None

    def __post_init__(self) -> None:
        for attr in ("model_type", "gguf_arch"):
            if not getattr(self, attr):
                object.__setattr__(self, attr, self.name)
