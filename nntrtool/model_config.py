"""One reader of a model's configuration, whatever it came from.

A Hugging Face ``config.json``, the config rebuilt from a GGUF's metadata and the config an NNTR
file carries (with the ``nntrtool`` section that records how the file was made) are all read
through :class:`ModelConfig`: the architecture, sizes under their several spellings, whether the
head is tied, and what the file records. No other module looks keys up by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The section of an NNTR file's config where the converter records how the file was made.
RECORD_KEY = "nntrtool"


@dataclass(frozen=True)
class ModelConfig:
    """Read-only views of a config dict (``raw``); a multimodal config's ``text_config`` is read
    when the top level lacks a key."""

    raw: Mapping[str, Any]

    @classmethod
    def of(cls, config: ModelConfig | Mapping[str, Any] | None) -> ModelConfig:
        if isinstance(config, ModelConfig):
            return config
        return cls(config if isinstance(config, Mapping) else {})

    def get(self, *keys: str, default: Any = None) -> Any:
        """The first of ``keys`` set (not None) in the config or its ``text_config``."""
        for scope in (self.raw, self.raw.get("text_config")):
            if isinstance(scope, Mapping):
                for key in keys:
                    if scope.get(key) is not None:
                        return scope[key]
        return default

    @property
    def architectures(self) -> list[str]:
        """``architectures`` as a list of names (a lone string counts as one)."""
        archs = self.raw.get("architectures") or []
        if isinstance(archs, str):
            archs = [archs]
        return [str(a) for a in archs] if isinstance(archs, list) else []

    @property
    def architecture(self) -> str | None:
        """The model class (``architectures[0]``), else the ``model_type``."""
        archs = self.get("architectures")
        if isinstance(archs, list) and archs:
            return str(archs[0])
        if isinstance(archs, str) and archs:
            return archs
        return self.model_type

    @property
    def model_type(self) -> str | None:
        value = self.get("model_type")
        return value if isinstance(value, str) else None

    @property
    def hidden_size(self) -> Any:
        return self.get("hidden_size", "n_embd", "d_model")

    @property
    def num_layers(self) -> Any:
        return self.get("num_hidden_layers", "n_layer", "num_layers")

    @property
    def num_experts(self) -> int | None:
        """Experts per MoE layer (``num_experts`` or ``num_local_experts``), None for dense."""
        value = self.get("num_experts", "num_local_experts")
        return value if isinstance(value, int) and value > 0 else None

    @property
    def tie_word_embeddings(self) -> bool | None:
        value = self.get("tie_word_embeddings")
        return None if value is None else bool(value)

    # -- what an NNTR file records about itself -------------------------------------------

    @property
    def record(self) -> dict[str, Any]:
        """The converter's ``nntrtool`` section (empty for a source's own config)."""
        section = self.raw.get(RECORD_KEY)
        return section if isinstance(section, dict) else {}

    @property
    def recorded_source(self) -> Any:
        """Where the file was converted from, as recorded (a dict, or a path string)."""
        return self.record.get("source")

    @property
    def recorded_adapters(self) -> list[dict[str, Any]]:
        """The LoRA adapters the file records as merged (empty for none)."""
        src = self.recorded_source
        records = src.get("adapters") if isinstance(src, dict) else None
        return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []

    @property
    def tied(self) -> bool | None:
        """Whether the head is the embeddings: the file's record first, then the config."""
        recorded = self.record.get("tied")
        if isinstance(recorded, bool):
            return recorded
        if isinstance(recorded, dict):
            return True
        return self.tie_word_embeddings

    def tied_head(self) -> tuple[str, str] | None:
        """``(head, embedding)`` names when the file records that the head is not stored."""
        meta = self.record
        tied = meta.get("tied")
        if isinstance(tied, dict):
            head = tied.get("head") or tied.get("lm_head")
            emb = tied.get("embedding") or tied.get("embed") or tied.get("to")
            return (str(head), str(emb)) if head and emb else None
        if tied:
            head = meta.get("tied_head", "lm_head.weight")
            emb = meta.get("tied_embedding", "model.embed_tokens.weight")
            return str(head), str(emb)
        return None
