"""LoRA adapters (PEFT's format) merged into a model's tensors while they stream.

An adapter is a folder holding ``adapter_config.json`` and ``adapter_model.safetensors`` (or
``adapter_model.bin``, loaded weights-only), or a Hugging Face id of such a folder (read from the
local cache first, so it works offline). Opened with adapters, a model source hands out every
tensor an adapter changes as a :class:`~nntrtool.tensors.transforms.DerivedTensor` whose rows
are computed in float32 exactly as PEFT's ``merge_and_unload()`` computes them::

    W' = W + s1 * (B1 @ A1) + s2 * (B2 @ A2) ...      (adapters in the order given)

with ``s = scale * lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``; ``rank_pattern`` and
``alpha_pattern`` choose r and alpha per module), ``(B @ A).T`` for ``fan_in_fan_out`` layers and
embeddings, the ``lora_B`` bias added to the layer's bias (``lora_bias``), and the tensors an
adapter saves whole (``modules_to_save``, an embedding's saved base weights) replacing the
model's. Plan, pipeline and verify therefore see merged tensors without knowing about adapters.

A row range of a merged tensor reads only those rows of the base weight and of ``B``. Each
merged element is computed by the same sequence of float32 operations whatever rows it is read
with, so ``convert`` and ``verify``, which cut tensors differently, see bit-identical weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import SourceError, UsageError
from nntrtool.messages import adapter_does_not_fit
from nntrtool.sources.base import ModelSource, SourceTensor
from nntrtool.sources.lora_merge import BiasUpdate, LowRankUpdate, merged_tensor, replaced_tensor
from nntrtool.tensors.transforms import DerivedTensor

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")

_PREFIX = "base_model.model."

#: LoraConfig fields that turn on a variant whose merge is not ``W + s * B @ A`` (or that no
#: plain merge can express), with the name a user knows them by.
_REFUSED_FIELDS = {
    "use_dora": "DoRA (use_dora)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "layer_replication": "layer replication (layer_replication)",
}


@dataclass(frozen=True)
class AdapterSpec:
    """One ``--lora``: where the adapter is (folder or hub id) and its ``--lora-scale``."""

    source: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.scale)):
            raise UsageError(f"--lora-scale {self.scale}: give a finite number")
        object.__setattr__(self, "source", str(self.source))
        object.__setattr__(self, "scale", float(self.scale))


def adapter_specs(
    sources: Sequence[str] | None, scales: Sequence[float] | None
) -> tuple[AdapterSpec, ...]:
    """Pair ``--lora`` values with ``--lora-scale`` values in order (none: every scale is 1)."""
    sources = list(sources or ())
    scales = list(scales or ())
    if scales and not sources:
        raise UsageError("--lora-scale applies to adapters: give --lora ADAPTER as well")
    if scales and len(scales) != len(sources):
        raise UsageError(
            f"{len(sources)} --lora but {len(scales)} --lora-scale: give one --lora-scale per "
            "--lora, in the same order, or none (scale 1)"
        )
    return tuple(AdapterSpec(s, scales[i] if scales else 1.0) for i, s in enumerate(sources))


# ---- opening an adapter -----------------------------------------------------------------


@dataclass
class LowRankPair:
    """The ``A``/``B`` tensors of one adapted module, and how they apply to its weight."""

    module: str
    a: SourceTensor | None = None
    b: SourceTensor | None = None
    bias: SourceTensor | None = None
    embedding: bool = False


@dataclass
class Adapter:
    """An opened adapter: its config, its low-rank pairs by module, its whole replacement
    tensors by model tensor name, and the facts recorded in the output file."""

    spec: AdapterSpec
    folder: Path
    weights: Path
    config: dict[str, Any]
    pairs: dict[str, LowRankPair]
    replacements: dict[str, SourceTensor]
    #: Replacements saved as whole modules (``modules_to_save``), not as an adapted layer's base.
    saved_modules: set[str]
    origin: dict[str, Any]
    closers: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.source

    def close(self) -> None:
        """Release the adapter's weight file."""
        closers, self.closers = self.closers, []
        for c in closers:
            c.close()

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """PEFT's ``r`` and ``lora_alpha`` of ``module`` (``rank_pattern``/``alpha_pattern`` first)."""
        cfg = self.config
        r = self._pattern_value("rank_pattern", module, cfg.get("r", 8))
        alpha = self._pattern_value("alpha_pattern", module, cfg.get("lora_alpha", 8))
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise SourceError(
                f"adapter {self.name}: rank {r!r} for {module} (r / rank_pattern in "
                f"{CONFIG_NAME}) is not a positive integer; fix it there"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise SourceError(
                f"adapter {self.name}: lora_alpha {alpha!r} for {module} (lora_alpha / "
                f"alpha_pattern in {CONFIG_NAME}) is not a positive number; fix it there"
            )
        return r, float(alpha)

    def _pattern_value(self, key: str, module: str, default: Any) -> Any:
        """PEFT's ``get_pattern_key``: the first pattern matching the end of the module name."""
        patterns = self.config.get(key)
        if not isinstance(patterns, dict):
            return default
        for pattern, value in patterns.items():
            try:
                hit = re.match(rf"(.*\.)?({pattern})$", module)
            except re.error:
                raise SourceError(
                    f"adapter {self.name}: {key} key {pattern!r} is not a regular expression; "
                    f"fix it in {CONFIG_NAME}"
                ) from None
            if hit:
                return value
        return default

    def scaling(self, module: str) -> float:
        """The factor of ``B @ A`` for ``module``: ``scale * alpha / r`` (``/ sqrt(r)`` for rsLoRA),
        computed in the order PEFT's ``set_scale`` computes it."""
        r, alpha = self.rank_alpha(module)
        if self.config.get("use_rslora"):
            return self.spec.scale * alpha / math.sqrt(r)
        return self.spec.scale * alpha / r


def open_adapter(spec: AdapterSpec) -> Adapter:
    """Find, read and check one adapter; SourceError (one line) for anything it cannot merge."""
    folder, origin = _locate(spec.source)
    config = _read_config(folder, spec.source)
    _refuse_unsupported(config, spec.source)
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise SourceError(
            f"adapter {spec.source}: no {' or '.join(WEIGHT_NAMES)} in {folder}; the adapter's "
            "weights are missing: give the folder PEFT's save_pretrained wrote"
        )
    opened: Any
    if weights.suffix == ".safetensors":
        from nntrtool.sources.safetensors_file import SafetensorsFile

        opened = SafetensorsFile(weights)
    else:
        from nntrtool.sources.checkpoint import CheckpointFile

        opened = CheckpointFile(weights)
    try:
        pairs, replacements, saved_modules = _parse_tensors(opened.tensors, spec.source)
        digest = _sha256(weights)
    except BaseException:
        opened.close()
        raise
    origin = {
        "name": spec.source,
        **origin,
        "weights": weights.name,
        "sha256": digest,
        "scale": spec.scale,
        "peft_type": "LORA",
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "use_rslora": bool(config.get("use_rslora")),
        "base_model": config.get("base_model_name_or_path"),
    }
    return Adapter(
        spec, folder, weights, config, pairs, replacements, saved_modules, origin, [opened]
    )


def adapter_missing(folder: Path) -> str | None:
    """None when ``folder`` holds a whole adapter (config and weights), else what is not."""
    if not (folder / CONFIG_NAME).is_file():
        return f"no {CONFIG_NAME}"
    if not any((folder / n).is_file() for n in WEIGHT_NAMES):
        return f"no {' or '.join(WEIGHT_NAMES)}"
    return None


def adapter_patterns(repo_files: Any) -> list[str]:
    """What to download of an adapter repo: its config and one set of weights."""
    files = set(repo_files)
    weights = next((n for n in WEIGHT_NAMES if n in files), None)
    if weights is None:
        raise SourceError(f"the repo holds no {' or '.join(WEIGHT_NAMES)}: not a PEFT adapter")
    return [CONFIG_NAME, weights]


def _locate(source: str) -> tuple[Path, dict[str, Any]]:
    from nntrtool.sources.hub import looks_like_hub_id, resolve_hub

    path = Path(source).expanduser()
    repo_id, at, revision = source.partition("@")  # org/name@revision picks a branch, tag, commit
    if not path.exists() and looks_like_hub_id(repo_id) and (revision or not at):
        folder, origin = resolve_hub(
            repo_id,
            revision or None,
            adapter_missing,
            marker=CONFIG_NAME,
            patterns=adapter_patterns,
        )
        return folder, {"repo_id": origin["repo_id"], "revision": origin["revision"]}
    if not path.exists():
        raise SourceError(f"adapter {source}: no such folder, nor a Hugging Face id (org/name)")
    if path.is_file():
        path = path.parent  # adapter_config.json or the weights file itself named
    return path.resolve(), {"path": str(path.resolve())}


def _read_config(folder: Path, name: str) -> dict[str, Any]:
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise SourceError(
            f"adapter {name}: no {CONFIG_NAME} in {folder}; expected a PEFT adapter folder "
            "(save_pretrained of a PEFT model)"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"adapter {name}: cannot read {cfg_path} ({exc})") from None
    if not isinstance(cfg, dict):
        raise SourceError(f"adapter {name}: {cfg_path} is not a JSON object")
    return cfg


def _refuse_unsupported(cfg: dict[str, Any], name: str) -> None:
    peft_type = cfg.get("peft_type")
    if str(peft_type).upper() != "LORA":
        raise SourceError(
            f"adapter {name} is a PEFT {peft_type} adapter; nntrtool merges LORA adapters only "
            "(merge it with PEFT's merge_and_unload first)"
        )
    for key, label in _REFUSED_FIELDS.items():
        if cfg.get(key):
            raise SourceError(
                f"adapter {name} uses {label}, which nntrtool does not merge; merge it with "
                "PEFT's merge_and_unload first"
            )
    for key in ("r", "lora_alpha"):
        value = cfg.get(key, 8)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise SourceError(
                f"adapter {name}: {CONFIG_NAME} has {key} {value!r}, not a positive number; fix "
                "it there"
            )


_PARTS = {
    ".lora_A.weight": ("a", False),
    ".lora_B.weight": ("b", False),
    ".lora_B.bias": ("bias", False),
    ".lora_embedding_A": ("a", True),
    ".lora_embedding_B": ("b", True),
}


def _parse_tensors(
    tensors: Sequence[SourceTensor], name: str
) -> tuple[dict[str, LowRankPair], dict[str, SourceTensor], set[str]]:
    pairs: dict[str, LowRankPair] = {}
    replacements: dict[str, SourceTensor] = {}
    whole_modules: set[str] = set()
    for t in tensors:
        key = t.name.removeprefix(_PREFIX)
        if "lora_magnitude_vector" in key:
            raise SourceError(
                f"adapter {name} holds DoRA magnitudes ({t.name}), which nntrtool does not merge; "
                "merge it with PEFT's merge_and_unload first"
            )
        for suffix, (part, embedding) in _PARTS.items():
            if key.endswith(suffix):
                module = key[: -len(suffix)]
                pair = pairs.setdefault(module, LowRankPair(module, embedding=embedding))
                setattr(pair, part, t)
                break
        else:
            if ".lora_" in key or key.startswith("lora_"):
                raise SourceError(
                    f"adapter {name}: tensor {t.name!r} is no LoRA part nntrtool knows "
                    "(lora_A, lora_B, lora_embedding_A/B); merge it with PEFT first"
                )
            # Saved whole: modules_to_save, or an adapted embedding's base weights.
            replacements[key.replace(".base_layer.", ".")] = t
            if ".base_layer." not in key:
                whole_modules.add(key.replace(".base_layer.", "."))
    for module, pair in pairs.items():
        if pair.a is None or pair.b is None:
            missing = "A" if pair.a is None else "B"
            raise SourceError(
                f"adapter {name}: module {module} has no lora_{missing} tensor; the adapter file "
                "is incomplete: save it again with PEFT"
            )
    if not pairs and not replacements:
        raise SourceError(
            f"adapter {name}: the weights file holds no tensors; save the adapter again with PEFT"
        )
    return pairs, replacements, whole_modules


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    return h.hexdigest()


# ---- merging ------------------------------------------------------------------------------


@dataclass
class _Target:
    """What the adapters do to one model tensor: a replacement, then updates, and the notes."""

    base: SourceTensor
    updates: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def apply_adapters(source: ModelSource, specs: Sequence[AdapterSpec]) -> ModelSource:
    """``source`` with every tensor the adapters change replaced by its merged value.

    Closes ``source`` (and the adapters) when an adapter does not fit the model, so the caller
    can open and apply in one expression.
    """
    adapters: list[Adapter] = []
    try:
        for spec in specs:
            adapters.append(open_adapter(spec))
        tensors, records = _merge(source, adapters)
    except BaseException:
        for ad in adapters:
            ad.close()
        source.close()
        raise
    origin = {**source.origin, "adapters": records}
    return ModelSource(
        source.config, origin, source.root, tensors, list(source.files), closers=[source, *adapters]
    )


def _merge(
    source: ModelSource, adapters: Sequence[Adapter]
) -> tuple[list[SourceTensor], list[dict]]:
    by_name = {t.name: t for t in source.tensors}
    targets: dict[str, _Target] = {}
    records = []
    tied = _tied_pair(source)
    for ad in adapters:
        merged = replaced = 0
        for name, new in ad.replacements.items():
            if tied is not None and name in tied and name in ad.saved_modules:
                raise SourceError(
                    f"adapter {ad.name} saves its own copy of {name} (modules_to_save), which "
                    f"unties {tied[0]} from {tied[1]}, stored once here; merge it with PEFT first"
                )
            what = "modules_to_save" if name in ad.saved_modules else "its saved base weights"
            if tied is not None and name == tied[0]:
                name = tied[1]  # the shared weight's saved base value
            base = _model_tensor(by_name, name, ad)
            if tuple(new.shape) != tuple(base.shape):
                raise SourceError(
                    adapter_does_not_fit(
                        ad.name,
                        f"{name} is {list(new.shape)} in the adapter but {list(base.shape)} in "
                        "the model (a resized vocabulary?)",
                    )
                )
            if not new.supported:
                raise SourceError(
                    f"adapter {ad.name}: {name} has dtype {new.dtype}, which nntrtool cannot read"
                )
            target = targets[name] = _Target(new)  # earlier updates are replaced with it
            target.notes.append(f"replaced by lora {ad.name} ({what})")
            replaced += 1
        _check_experts(ad, by_name)
        for module, pair in ad.pairs.items():
            name = f"{module}.weight"
            if tied is not None and name == tied[0]:
                name = tied[1]  # PEFT merges into the one shared weight
            base = _model_tensor(by_name, name, ad)
            scaling = ad.scaling(module)
            transposed = pair.embedding or bool(ad.config.get("fan_in_fan_out"))
            _check_shapes(ad, module, pair, base, transposed)
            target = targets.setdefault(name, _Target(base))
            target.updates.append(LowRankUpdate(pair.a, pair.b, scaling, transposed))
            target.notes.append(f"lora {ad.name} (scale {scaling:g})")
            merged += 1
            if pair.bias is not None:
                bname = f"{module}.bias"
                if bname not in by_name:
                    raise SourceError(
                        adapter_does_not_fit(
                            ad.name, f"a lora_B bias for {module}, which has no bias in the model"
                        )
                    )
                bias = by_name[bname]
                if tuple(pair.bias.shape) != tuple(bias.shape):
                    raise SourceError(
                        adapter_does_not_fit(
                            ad.name,
                            f"lora_B bias of {module} is {list(pair.bias.shape)}, the model's "
                            f"bias {list(bias.shape)}",
                        )
                    )
                btarget = targets.setdefault(bname, _Target(bias))
                btarget.updates.append(BiasUpdate(pair.bias, scaling))
                btarget.notes.append(f"lora {ad.name} bias (scale {scaling:g})")
        records.append({**ad.origin, "tensors_merged": merged, "tensors_replaced": replaced})
    out: list[SourceTensor] = []
    for t in source.tensors:
        target = targets.get(t.name)
        if target is None:
            out.append(t)
            continue
        note = "; ".join(target.notes)
        if target.updates:
            out.append(merged_tensor(t.name, target.base, target.updates, note, t.nbytes))
        else:
            out.append(replaced_tensor(t, target.base, note))
    return out, records


_EXPERT = re.compile(r"^(?P<head>.*\.experts)\.(?P<index>\d+)\.(?P<tail>.+)$")


def _experts_by_group(names: Any) -> dict[tuple[str, str], set[int]]:
    """``{(".. .experts", "gate_proj"): expert indices}`` of names of per-expert modules."""
    groups: dict[tuple[str, str], set[int]] = {}
    for name in names:
        hit = _EXPERT.match(name)
        if hit:
            key = (hit["head"], hit["tail"])
            groups.setdefault(key, set()).add(int(hit["index"]))
    return groups


def _check_experts(ad: Adapter, by_name: dict[str, SourceTensor]) -> None:
    """An adapter of a mixture of experts covers each adapted projection's experts as the model
    has them: more experts than the model, or fewer under a target_modules list (which PEFT
    applies to every expert), means it was made for another model."""
    from nntrtool.messages import lora_expert_count

    model = _experts_by_group(n.removesuffix(".weight") for n in by_name if n.endswith(".weight"))
    subset_ok = isinstance(ad.config.get("target_modules"), str)  # a regex may pick experts
    for (head, tail), indices in sorted(_experts_by_group(ad.pairs).items()):
        have = model.get((head, tail))
        if not have:
            continue  # the model has no such module: refused below, naming it
        if max(indices) >= len(have) or (len(indices) != len(have) and not subset_ok):
            raise SourceError(
                lora_expert_count(ad.name, f"{head}.*.{tail}", max(indices) + 1, len(have))
            )


def _tied_pair(source: ModelSource) -> tuple[str, str] | None:
    """(head, embeddings) when the model stores its output head as the embeddings."""
    from nntrtool.sources.tied import detect_tied

    tied = detect_tied(list(source.tensors), dict(source.config or {}))
    if not tied.tied or tied.embedding is None or tied.head is None:
        return None
    return tied.head, tied.embedding


def _model_tensor(by_name: dict[str, SourceTensor], name: str, ad: Adapter) -> SourceTensor:
    t = by_name.get(name)
    if t is None:
        base = ad.config.get("base_model_name_or_path")
        made_for = f" (it was made for {base})" if base else ""
        raise SourceError(
            f"adapter {ad.name} changes {name}, which the model does not have{made_for}; "
            "use the adapter with the model it was trained on"
        )
    if not t.supported:
        raise SourceError(f"tensor {name!r} has dtype {t.dtype}, which nntrtool cannot merge into")
    return t


def _check_shapes(
    ad: Adapter, module: str, pair: LowRankPair, base: SourceTensor, transposed: bool
) -> None:
    a, b = pair.a, pair.b
    assert a is not None and b is not None
    r, _ = ad.rank_alpha(module)
    if a.ndim != 2 or b.ndim != 2 or base.ndim != 2:
        raise SourceError(
            f"adapter {ad.name}: {module} is not a 2-D weight with 2-D lora_A/lora_B "
            f"(lora_A {list(a.shape)}, lora_B {list(b.shape)}, weight {list(base.shape)}); "
            "LoRA on convolutions is not supported: merge it with PEFT first"
        )
    out_dim, in_dim = (base.shape[1], base.shape[0]) if transposed else base.shape
    if a.shape[1] != in_dim or b.shape[0] != out_dim or a.shape[0] != b.shape[1]:
        layout = " (fan_in_fan_out)" if transposed and not pair.embedding else ""
        raise SourceError(
            adapter_does_not_fit(
                ad.name,
                f"lora_A {list(a.shape)} and lora_B {list(b.shape)} of {module} do not fit the "
                f"model's weight {list(base.shape)}{layout}",
            )
        )
    if a.shape[0] != r:
        raise SourceError(
            f"adapter {ad.name}: {module} has rank {a.shape[0]} in its weights but {r} in "
            f"{CONFIG_NAME} (r / rank_pattern); the adapter is inconsistent: save it again "
            "with PEFT"
        )
    for t in (a, b):
        if not t.supported:
            raise SourceError(
                f"adapter {ad.name}: {t.name} has dtype {t.dtype}, which nntrtool cannot read"
            )


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
