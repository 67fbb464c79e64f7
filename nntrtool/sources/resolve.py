"""Turning what the user named (folder, file, or hub id) into an open :class:`ModelSource`.

A Hugging Face folder holds ``config.json`` and one set of weights, looked for in this order:
``model.safetensors.index.json`` (sharded), ``model.safetensors``, ``pytorch_model.bin.index.json``
(sharded), ``pytorch_model.bin``, and last any ``*.safetensors`` at the top level.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nntrtool.architectures import rules_for
from nntrtool.errors import SourceError, UsageError
from nntrtool.sources.base import ModelSource, SourceTensor
from nntrtool.sources.folder import (
    CHECKPOINT_SUFFIXES,
    WeightSet,
    find_weights,
    folder_missing,
    read_config,
    read_index,
)
from nntrtool.sources.hub import looks_like_hub_id, resolve_hub
from nntrtool.tensors.transforms import apply_rules

if TYPE_CHECKING:
    from nntrtool.sources.lora import AdapterSpec


def open_source(
    spec: str | os.PathLike,
    *,
    revision: str | None = None,
    config: str | os.PathLike | None = None,
    adapters: Sequence[AdapterSpec] = (),
    gguf_file: str | None = None,
    gguf_raw_names: bool = False,
) -> ModelSource:
    """Open a model: a Hugging Face folder, a ``.safetensors`` file, a ``.bin``/``.pt``
    checkpoint, a ``.gguf`` file (or a folder of them, ``gguf_file`` picking one), or a hub id
    ``org/name`` (with ``gguf_file``: that GGUF of the repo). An existing local path always
    wins over an id.

    ``adapters`` (LoRA, see :mod:`nntrtool.sources.lora`) are merged into the tensors they change;
    ``gguf_raw_names`` reads a GGUF of a family nntrtool does not know with its own names and
    values.
    """
    if adapters:
        from nntrtool.sources.lora import apply_adapters

        return apply_adapters(
            open_source(
                spec,
                revision=revision,
                config=config,
                gguf_file=gguf_file,
                gguf_raw_names=gguf_raw_names,
            ),
            adapters,
        )
    config_path = Path(config).expanduser() if config is not None else None
    if config_path is not None and not config_path.is_file():
        raise SourceError(f"config file not found: {config}; check the --config path")
    if (
        isinstance(spec, str)
        and not os.path.exists(os.path.expanduser(spec))
        and looks_like_hub_id(spec)
    ):
        if gguf_file is not None:
            from nntrtool.sources.gguf_pick import gguf_from_hub

            return gguf_from_hub(spec, revision, gguf_file, raw_names=gguf_raw_names)
        folder, origin = resolve_hub(spec, revision, folder_missing)
        return _open_folder(folder, config_path, origin)
    if revision is not None:
        raise UsageError(
            f"--revision applies to Hugging Face ids only, and {spec} is a local path; drop "
            "--revision"
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(
            f"no such file or folder: {spec}; check the path, or give a Hugging Face id (org/name)"
        )
    origin: dict[str, Any] = {"path": str(path.resolve()), "repo_id": None, "revision": None}
    from nntrtool.sources.gguf_pick import pick_gguf

    gguf_path = pick_gguf(path, gguf_file)
    if gguf_path is not None:
        from nntrtool.sources.gguf_model import open_gguf

        if config_path is not None:
            raise UsageError(
                f"--config applies to bare weight files; {gguf_path.name} is a GGUF, whose "
                "config is rebuilt from its own metadata: drop --config"
            )

        return open_gguf(
            gguf_path, {**origin, "path": str(gguf_path.resolve())}, raw_names=gguf_raw_names
        )
    if path.is_dir():
        return _open_folder(path, config_path, {**origin, "kind": "folder"})
    name = path.name.lower()
    if name.endswith(".index.json"):
        weights = read_index(path)
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
                    "hold it; the index and the shards disagree: download the model again"
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
