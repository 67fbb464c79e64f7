"""A model's config checked against the tensors it describes, before anything is written.

A config that contradicts its weights (twice the experts, another hidden size, a layer too
many) would otherwise convert without a word into a file no runtime can use. Each check is a
small declaration: a tensor, one of its dimensions, and the config value it must equal. A
check runs only when both the tensor and the config keys are there, so families that name
things differently are simply not checked by declarations that are not theirs; a family can
add its own with :func:`register`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nntrtool.errors import SourceError
from nntrtool.messages import config_count_mismatch

Config = dict[str, Any]


@dataclass(frozen=True)
class Dim:
    """Dimension ``axis`` of tensor ``tensor`` must equal ``value(config)`` (``None``: the
    config does not say, nothing to check); ``label`` names the key(s) in the message."""

    tensor: str
    axis: int
    label: str
    value: Callable[[Config], int | None]


def key(name: str, *alternatives: str) -> Callable[[Config], int | None]:
    """The config's integer under ``name`` (or the first of ``alternatives`` present)."""

    def get(cfg: Config) -> int | None:
        for k in (name, *alternatives):
            v = cfg.get(k)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    return get


def head_dim(cfg: Config) -> int | None:
    hd = cfg.get("head_dim")
    if isinstance(hd, int) and hd > 0:
        return hd
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    return None


def _times(count: str) -> Callable[[Config], int | None]:
    def get(cfg: Config) -> int | None:
        n, hd = cfg.get(count), head_dim(cfg)
        return n * hd if isinstance(n, int) and hd is not None else None

    return get


def experts_count(cfg: Config) -> int | None:
    return key("num_experts", "num_local_experts", "n_routed_experts")(cfg)


def _expert_width(cfg: Config) -> int | None:
    return key("moe_intermediate_size", "intermediate_size")(cfg)


_L0 = "model.layers.0"
#: Declarations shared by the Llama-style families (Llama, Mistral, Qwen2/3, Qwen3-MoE, GPT-OSS).
COMMON: tuple[Dim, ...] = (
    Dim("model.embed_tokens.weight", 0, "vocab_size", key("vocab_size")),
    Dim("model.embed_tokens.weight", 1, "hidden_size", key("hidden_size")),
    Dim("lm_head.weight", 0, "vocab_size", key("vocab_size")),
    Dim("lm_head.weight", 1, "hidden_size", key("hidden_size")),
    Dim(
        f"{_L0}.self_attn.q_proj.weight",
        0,
        "num_attention_heads x head_dim",
        _times("num_attention_heads"),
    ),
    Dim(f"{_L0}.self_attn.q_proj.weight", 1, "hidden_size", key("hidden_size")),
    Dim(
        f"{_L0}.self_attn.k_proj.weight",
        0,
        "num_key_value_heads x head_dim",
        _times("num_key_value_heads"),
    ),
    Dim(
        f"{_L0}.self_attn.v_proj.weight",
        0,
        "num_key_value_heads x head_dim",
        _times("num_key_value_heads"),
    ),
    Dim(f"{_L0}.self_attn.o_proj.weight", 0, "hidden_size", key("hidden_size")),
    Dim(f"{_L0}.mlp.gate_proj.weight", 0, "intermediate_size", key("intermediate_size")),
    Dim(f"{_L0}.mlp.gate_proj.weight", 1, "hidden_size", key("hidden_size")),
    Dim(f"{_L0}.mlp.up_proj.weight", 0, "intermediate_size", key("intermediate_size")),
    Dim(f"{_L0}.mlp.down_proj.weight", 1, "intermediate_size", key("intermediate_size")),
    Dim(f"{_L0}.mlp.gate.weight", 0, "num_experts", experts_count),
    Dim(f"{_L0}.mlp.router.weight", 0, "num_local_experts", experts_count),
    Dim(
        f"{_L0}.mlp.experts.0.gate_proj.weight",
        0,
        "moe_intermediate_size",
        _expert_width,
    ),
    Dim(f"{_L0}.mlp.experts.0.gate_proj.weight", 1, "hidden_size", key("hidden_size")),
    Dim(f"{_L0}.mlp.experts.0.down_proj.weight", 0, "hidden_size", key("hidden_size")),
)

#: Extra declarations by ``model_type``.
FAMILIES: dict[str, tuple[Dim, ...]] = {}


def register(model_type: str, dims: Sequence[Dim]) -> None:
    """Add a family's own declarations (checked after :data:`COMMON`)."""
    FAMILIES[model_type] = tuple(FAMILIES.get(model_type, ())) + tuple(dims)


def _mismatch(label: str, value: int, name: str, shape: Sequence[int]) -> str:
    from nntrtool.messages import config_mismatch

    return config_mismatch(label, value, name, shape)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.")


def check_config(
    cfg: Config,
    tensors: Sequence[Any],
    *,
    mismatch: Callable[[str, int, str, Sequence[int]], str] = _mismatch,
    count_mismatch: Callable[[str, int, str], str] = config_count_mismatch,
) -> None:
    """Raise one :class:`SourceError` line for the first contradiction between ``cfg`` and
    ``tensors`` (objects with ``name`` and ``shape``); ``mismatch`` and ``count_mismatch``
    phrase it (a GGUF's config is its metadata, not a config.json)."""
    by_name = {t.name: t for t in tensors}
    dims = COMMON + FAMILIES.get(str(cfg.get("model_type", "")), ())
    for d in dims:
        t = by_name.get(d.tensor)
        want = d.value(cfg)
        if t is None or want is None or len(t.shape) <= d.axis:
            continue
        if int(t.shape[d.axis]) != want:
            raise SourceError(mismatch(d.label, want, t.name, t.shape))

    layers = key("num_hidden_layers", "n_layer")(cfg)
    seen = sorted({int(m.group(1)) for n in by_name if (m := _LAYER.match(n))})
    if layers is not None and seen and (len(seen) != layers or seen[-1] != layers - 1):
        have = len(seen)
        raise SourceError(
            count_mismatch(
                "num_hidden_layers",
                layers,
                f"{have} layer{'s' if have != 1 else ''} (model.layers.{seen[0]}..{seen[-1]})",
            )
        )

    experts = experts_count(cfg)
    per_layer: dict[int, set[int]] = {}
    for n in by_name:
        m = _EXPERT.match(n)
        if m:
            per_layer.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if experts is not None and per_layer:
        for layer, ids in sorted(per_layer.items()):
            if sorted(ids) != list(range(experts)):
                raise SourceError(
                    count_mismatch(
                        "num_experts",
                        experts,
                        f"{len(ids)} in layer {layer} "
                        f"(model.layers.{layer}.mlp.experts.{min(ids)}..{max(ids)})",
                    )
                )
    top_k = key("num_experts_per_tok", "num_experts_per_token")(cfg)
    if top_k is not None and experts is not None and per_layer and not 1 <= top_k <= experts:
        raise SourceError(
            f"config says num_experts_per_tok = {top_k} with {experts} experts: it must be "
            "between 1 and the expert count; fix config.json"
        )
