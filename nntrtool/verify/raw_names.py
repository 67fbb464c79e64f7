"""A file converted with ``--gguf-raw-names`` in a transformers model: its tensors keep the
GGUF's own names, and the model (transformers' own GGUF loading) has Hugging Face ones.

The ``gguf`` package's name table for the file's architecture says which GGUF name each of the
model's parameters has; :func:`raw_placements` puts the file's tensors there by it, and
:func:`raw_source_names` names the parameters the GGUF holds. The values stay the GGUF's: where
llama.cpp's converter transformed a tensor (Q/K rows, norm offsets) and transformers undoes it
on loading, ``--logits`` shows the difference, as it should for a file that kept them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from nntrtool.tensors.transforms import Placement

_BLOCK = re.compile(r"blk\.(\d+)\.")


def _no_index(_: re.Match[str]) -> tuple:
    return ()


def gguf_names(arch: str, state_keys: Iterable[str], gguf_tensor_names: Iterable[str]) -> dict:
    """``{GGUF name: state key}`` for the model's parameters the gguf package's table names."""
    import gguf

    arch_id = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_id is None:
        return {}
    blocks = [int(m.group(1)) for n in gguf_tensor_names if (m := _BLOCK.match(n))]
    table = gguf.get_tensor_name_map(arch_id, max(blocks) + 1 if blocks else 0)
    out: dict[str, str] = {}
    for key in state_keys:
        name = table.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is not None:
            out.setdefault(name, key)
    return out


def raw_placements(config: dict[str, Any], state: dict, file_names: Iterable[str]) -> list:
    """Placements of a raw-names file's tensors (GGUF names) into the model's ``state``; none
    for a file whose names are already Hugging Face ones."""
    source = (config.get("nntrtool") or {}).get("source") or {}
    arch = source.get("gguf_architecture")
    if not source.get("gguf_raw_names") or not isinstance(arch, str):
        return []
    names = list(file_names)
    return [
        Placement(re.escape(gguf_name), key.replace("{", "{{").replace("}", "}}"), _no_index)
        for gguf_name, key in gguf_names(arch, state, names).items()
        if gguf_name in names
    ]


def raw_source_names(src: Any, state: dict) -> set[str]:
    """The model's parameters a raw-names GGUF source holds."""
    arch = src.origin.get("gguf_architecture")
    names = {t.name for t in src.tensors}
    mapped = gguf_names(arch, state, names) if isinstance(arch, str) else {}
    return {key for gguf_name, key in mapped.items() if gguf_name in names}
