"""The files of a Hugging Face model folder: its config and its weight files, in reading order.

Every command that opens a folder (convert, verify, export, imatrix, the GGUF picker and the
hub cache check) learns what the folder holds here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nntrtool.errors import SourceError

CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class WeightSet:
    """The weight files of a model, in reading order, and the index mapping names to them."""

    kind: str  # "safetensors" or "checkpoint"
    files: list[Path]
    index: Path | None = None
    weight_map: dict[str, str] | None = None


def folder_missing(folder: Path) -> str | None:
    """None when ``folder`` holds a whole model (config and every weight file), else what is not."""
    if not (folder / "config.json").is_file():
        return "no config.json"
    try:
        find_weights(folder)
    except SourceError as exc:
        return str(exc)
    return None


def find_weights(folder: Path) -> WeightSet:
    """The weight files of a Hugging Face folder; SourceError when there are none or some are
    missing."""
    for index_name, single, kind in (
        ("model.safetensors.index.json", "model.safetensors", "safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", "checkpoint"),
    ):
        if (folder / index_name).is_file():
            return read_index(folder / index_name)
        if (folder / single).is_file():
            return WeightSet(kind, [folder / single])
    others = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if others:
        return WeightSet("safetensors", others)
    raise SourceError(
        f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json "
        "or pytorch_model.bin"
    )


def read_config(path: Path) -> dict[str, Any]:
    """A ``config.json`` as a dict; SourceError if it cannot be read or is not a JSON object."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise SourceError(
            f"{path}: not a model config (the JSON is not an object); give the model's config.json"
        )
    return data


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"{path}: not valid JSON ({exc}); fix or download the file again"
        ) from None


def read_index(index: Path) -> WeightSet:
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
    ):
        raise SourceError(
            f"{index}: no weight_map of tensor names to shard files; download the index again"
        )
    folder = index.parent
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        rel = Path(shard)
        if rel.is_absolute() or ".." in rel.parts:
            raise SourceError(f"{index}: shard {shard!r} lies outside the model folder")
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SourceError(
            f"{index.name} names shard {missing[0]}{more}, missing from {folder}; download the "
            "missing shards"
        )
    kind = "checkpoint" if shards[0].lower().endswith(CHECKPOINT_SUFFIXES) else "safetensors"
    return WeightSet(kind, [folder / s for s in shards], index, dict(weight_map))
