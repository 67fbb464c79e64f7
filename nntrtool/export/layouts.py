"""Which layout nntrainer's CausalLM weight file has for a model: the families that declare
one (``Family.nntrainer``, see :mod:`nntrtool.architectures.nntrainer_layout`), looked up by the
config's architecture and by the runtime's other names for the same layout."""

from __future__ import annotations

from typing import Any

from nntrtool.architectures import families
from nntrtool.architectures.nntrainer_layout import ArchitectureLayout
from nntrtool.errors import UsageError
from nntrtool.model_config import ModelConfig

#: The architectures nntrainer's CausalLM application runs, by ``config.json`` architecture
#: (and by the runtime's other names for the same layout).
ARCHITECTURES: dict[str, ArchitectureLayout] = {
    name: f.nntrainer
    for f in families()
    if f.nntrainer is not None
    for name in (f.nntrainer.architecture, *f.nntrainer.aliases)
}


def architecture_of(config: dict[str, Any]) -> str:
    """The model's architecture name from its config (``architectures[0]``)."""
    archs = ModelConfig.of(config).architectures
    if not archs:
        raise UsageError(
            "the file's config names no architecture ('architectures' is missing): add it to "
            f"config.json and convert again; nntrainer export supports {', '.join(ARCHITECTURES)}"
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
            f"it cannot be exported; export a model of one of {', '.join(ARCHITECTURES)}"
        ) from None
