"""Turning what the user named (folder, file, or hub id) into an open :class:`ModelSource`.

A Hugging Face folder holds ``config.json`` and one set of weights, looked for in this order:
``model.safetensors.index.json`` (sharded), ``model.safetensors``, ``pytorch_model.bin.index.json``
(sharded), ``pytorch_model.bin``, and last any ``*.safetensors`` at the top level.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nntrtool.errors import SourceError, UsageError
from nntrtool.sources import moe as _moe  # noqa: F401  (registers the MoE architectures' rules)
from nntrtool.sources.base import ModelSource, SourceTensor
from nntrtool.sources.hub import looks_like_hub_id, resolve_hub
from nntrtool.sources.transforms import apply_rules, rules_for

if TYPE_CHECKING:
    from nntrtool.sources.lora import AdapterSpec

CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class WeightSet:
    """The weight files of a model, in reading order, and the index mapping names to them."""

    kind: str  # "safetensors" or "checkpoint"
    files: list[Path]
    index: Path | None = None
    weight_map: dict[str, str] | None = None


def open_source(
    spec: str | os.PathLike,
    *,
    revision: str | None = None,
    config: str | os.PathLike | None = None,
    adapters: Sequence[AdapterSpec] = (),
    gguf_file: str | None = None,
) -> ModelSource:
    """Open a model: a Hugging Face folder, a ``.safetensors`` file, a ``.bin``/``.pt``
    checkpoint, a ``.gguf`` file (or a folder of them, ``gguf_file`` picking one), or a hub id
    ``org/name`` (with ``gguf_file``: that GGUF of the repo). An existing local path always
    wins over an id.

    ``adapters`` (LoRA, see :mod:`nntrtool.sources.lora`) are merged into the tensors they change.
    """
    if adapters:
        from nntrtool.sources.lora import apply_adapters

        return apply_adapters(
            open_source(spec, revision=revision, config=config, gguf_file=gguf_file), adapters
        )
    config_path = Path(config).expanduser() if config is not None else None
    if config_path is not None and not config_path.is_file():
        raise SourceError(f"config file not found: {config}")
    if (
        isinstance(spec, str)
        and not os.path.exists(os.path.expanduser(spec))
        and looks_like_hub_id(spec)
    ):
        if gguf_file is not None:
            from nntrtool.sources.gguf_pick import gguf_from_hub

            return gguf_from_hub(spec, revision, gguf_file)
        folder, origin = resolve_hub(spec, revision, folder_missing)
        return _open_folder(folder, config_path, origin)
    if revision is not None:
        raise UsageError(f"--revision applies to Hugging Face ids only, and {spec} is a local path")
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"no such file or folder: {spec}")
    origin: dict[str, Any] = {"path": str(path.resolve()), "repo_id": None, "revision": None}
    from nntrtool.sources.gguf_pick import pick_gguf

    gguf_path = pick_gguf(path, gguf_file)
    if gguf_path is not None:
        from nntrtool.sources.gguf_model import open_gguf

        if config_path is not None:
            raise UsageError(
                f"--config applies to bare weight files; {gguf_path.name} is a GGUF, whose "
                "config is rebuilt from its own metadata"
            )

        return open_gguf(gguf_path, {**origin, "path": str(gguf_path.resolve())})
    if path.is_dir():
        return _open_folder(path, config_path, {**origin, "kind": "folder"})
    name = path.name.lower()
    if name.endswith(".index.json"):
        weights = _indexed(path)
        kind = weights.kind
    elif name.endswith(".safetensors"):
        weights, kind = WeightSet("safetensors", [path]), "safetensors"
    elif name.endswith(CHECKPOINT_SUFFIXES):
        weights, kind = WeightSet("checkpoint", [path]), "checkpoint"
    else:
        raise SourceError(
            f"{spec} is not a model: expected a Hugging Face folder, a .safetensors file, "
            "a .bin/.pt checkpoint, a .gguf file, or a hub id like org/name"
        )
    if config_path is None:
        beside = path.parent / "config.json"
        if not beside.is_file():
            raise SourceError(
                f"{path.name} is a bare weights file and no config.json lies beside it; "
                "pass the model's config.json with --config"
            )
        config_path = beside
    cfg = read_config(config_path)
    return _assemble(cfg, {**origin, "kind": kind}, config_path.parent.resolve(), weights)


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
            return _indexed(folder / index_name)
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
    data = _read_json(path)
    if not isinstance(data, dict):
        raise SourceError(f"{path}: not a model config (the JSON is not an object)")
    return data


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from None


def _indexed(index: Path) -> WeightSet:
    data = _read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
    ):
        raise SourceError(f"{index}: no weight_map of tensor names to shard files")
    folder = index.parent
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        rel = Path(shard)
        if rel.is_absolute() or ".." in rel.parts:
            raise SourceError(f"{index}: shard {shard!r} lies outside the model folder")
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SourceError(f"{index.name} names shard {missing[0]}{more}, missing from {folder}")
    kind = "checkpoint" if shards[0].lower().endswith(CHECKPOINT_SUFFIXES) else "safetensors"
    return WeightSet(kind, [folder / s for s in shards], index, dict(weight_map))


def _open_folder(folder: Path, config_path: Path | None, origin: dict[str, Any]) -> ModelSource:
    if config_path is None:
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise SourceError(
                f"no config.json in {folder}; point at a Hugging Face model folder, or pass "
                "the config with --config"
            )
    cfg = read_config(config_path)
    return _assemble(cfg, origin, folder.resolve(), find_weights(folder))


def _assemble(
    cfg: dict[str, Any], origin: dict[str, Any], root: Path, weights: WeightSet
) -> ModelSource:
    opened: list[Any] = []
    try:
        if weights.kind == "safetensors":
            from nntrtool.sources.safetensors_file import SafetensorsFile

            opened = []
            for f in weights.files:
                opened.append(SafetensorsFile(f))
        else:
            from nntrtool.sources.checkpoint import CheckpointFile

            for f in weights.files:
                opened.append(CheckpointFile(f))
        tensors = apply_rules(_select_tensors(opened, weights), rules_for(cfg))
        from nntrtool.sources.consistency import check_config

        check_config(cfg, tensors)
    except BaseException:
        for f in opened:
            f.close()
        raise
    return ModelSource(cfg, origin, root, tensors, list(weights.files), closers=opened)


def _select_tensors(opened: list[Any], weights: WeightSet) -> list[SourceTensor]:
    tensors: list[SourceTensor] = []
    if weights.weight_map is not None:
        wanted: dict[str, set[str]] = {}
        for name, shard in weights.weight_map.items():
            wanted.setdefault(shard, set()).add(name)
        for f, shard in zip(opened, sorted(wanted), strict=True):
            held = {t.name for t in f.tensors}
            absent = sorted(wanted[shard] - held)
            if absent:
                raise SourceError(
                    f"{weights.index}: maps tensor {absent[0]!r} to {shard}, which does not "
                    "hold it; the index and the shards disagree"
                )
            tensors.extend(t for t in f.tensors if t.name in wanted[shard])
        return tensors
    seen: dict[str, Path] = {}
    for f in opened:
        for t in f.tensors:
            if t.name in seen:
                raise SourceError(
                    f"tensor {t.name!r} is in both {seen[t.name].name} and {f.path.name}; "
                    "keep one set of weights in the folder"
                )
            seen[t.name] = f.path
            tensors.append(t)
    return tensors
