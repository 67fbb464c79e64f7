"""What a conversion with LoRA adapters leaves for later: the merged weights put into a torch
model (for ``verify --logits`` / ``--text``), and the lines that describe the adapters an NNTR
file records (``convert``'s summary, ``verify``'s hint)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from nntrtool.sources.base import ModelSource
from nntrtool.tensors.transforms import DerivedTensor


def apply_merged_weights(model: Any, source: ModelSource) -> int:
    """Copy the adapter-changed tensors of ``source`` into a torch ``model``; how many."""
    if not source.origin.get("adapters"):
        return 0
    import torch

    state = model.state_dict()
    done = 0
    for t in source.tensors:
        if isinstance(t, DerivedTensor) and t.name in state:
            value = torch.from_numpy(np.array(t.read_f32(), dtype=np.float32))
            with torch.no_grad():
                state[t.name].copy_(value.reshape(state[t.name].shape))
            done += 1
    return done


def recorded_adapters(file_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The adapters an NNTR file's metadata says were merged into it (empty for none)."""
    from nntrtool.model_config import ModelConfig

    return ModelConfig.of(file_config).recorded_adapters


def verify_hint(file_config: dict[str, Any]) -> str | None:
    """What to pass to ``verify`` for a file converted with adapters, or None."""
    records = recorded_adapters(file_config)
    if not records:
        return None
    args = " ".join(f"--lora {r.get('name')} --lora-scale {r.get('scale', 1.0):g}" for r in records)
    return f"the file was converted with LoRA adapters merged in; to compare with them: {args}"


def changed_tensor_lines(tensors: Sequence[Any]) -> list[str]:
    """The tensors adapters changed (plan entries with a lora note), layers folded together:
    ``model.layers.*.self_attn.q_proj.weight (x28): lora ad (scale 2)``."""
    groups: dict[tuple[str, str], int] = {}
    for t in tensors:
        note = str(getattr(t, "note", "") or "")
        if "lora " not in note:
            continue
        key = (re.sub(r"\.\d+\.", ".*.", t.name), note)
        groups[key] = groups.get(key, 0) + 1
    return [f"{name}{f' (x{n})' if n > 1 else ''}: {note}" for (name, note), n in groups.items()]


def describe_adapters(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per recorded adapter: name, scale, tensors changed, weights hash."""
    lines = []
    for rec in records:
        merged, replaced = rec.get("tensors_merged"), rec.get("tensors_replaced")
        counts = []
        if merged:
            counts.append(f"merged into {merged} tensor{'s' if merged != 1 else ''}")
        if replaced:
            counts.append(f"replaced {replaced}")
        sha = str(rec.get("sha256") or "")[:12]
        lines.append(
            f"lora {rec.get('name')} (scale {rec.get('scale', 1.0):g}, r {rec.get('r')}, "
            f"alpha {rec.get('lora_alpha')}{', rslora' if rec.get('use_rslora') else ''}): "
            f"{', '.join(counts) or 'no tensors'}; sha256 {sha}…"
        )
    return lines
