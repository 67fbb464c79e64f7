"""Mixture-of-experts checkpoints: their declared transforms, and the way back for verify.

Whatever the source layout, experts are stored as one ``[out, in]`` matrix per expert and
projection, ``model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight`` (and ``.bias`` for
GPT-OSS), and routers stay F32 (the runtime computes them in FP32).

- Qwen3-MoE checkpoints already hold per-expert matrices; only the router (``mlp.gate``) is
  declared, to prefer F32.
- GPT-OSS fuses a layer's experts: ``mlp.experts.gate_up_proj`` ``[E, hidden, 2 * inter]`` (gate
  in the even columns, up in the odd ones), ``down_proj`` ``[E, inter, hidden]`` (both ``[in,
  out]``), their biases ``[E, 2 * inter]`` and ``[E, hidden]``. The published checkpoint packs
  the matrices in MXFP4 as ``*_blocks``/``*_scales`` in ``[out, in]`` order (gate and up
  interleaved by rows), decoded by :mod:`nntrtool.sources.mxfp4`.

Importing this module registers its rules in :data:`~nntrtool.sources.transforms.ARCHITECTURE_RULES`
and their inverses in :data:`~nntrtool.sources.transforms.MODULE_PLACEMENTS`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from nntrtool.errors import SourceError
from nntrtool.sources.base import SourceTensor
from nntrtool.sources.mxfp4 import mxfp4_matrix
from nntrtool.sources.transforms import (
    ARCHITECTURE_RULES,
    MODULE_PLACEMENTS,
    DerivedTensor,
    Placement,
    Rule,
    TensorLookup,
    expert_matrix,
    prefer_type,
)

ROUTER_REASON = "router: f32 (the runtime computes routing in FP32; --type to choose another)"
EVEN, ODD = slice(0, None, 2), slice(1, None, 2)


def _router(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    return [prefer_type(t, "f32", ROUTER_REASON)]


def _experts_of(t: SourceTensor, ndim: int) -> int:
    if t.ndim != ndim:
        raise SourceError(
            f"tensor {t.name!r} {list(t.shape)} is not the {ndim}-D fused expert tensor "
            "GPT-OSS checkpoints hold"
        )
    return t.shape[0]


def _fused_gate_up(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    prefix, out = m.group(1), []
    for e in range(_experts_of(t, 3)):
        for proj, cols in (("gate", EVEN), ("up", ODD)):
            out.append(
                expert_matrix(
                    t,
                    f"{prefix}.{e}.{proj}_proj.weight",
                    e,
                    columns=cols,
                    transpose=True,
                    note=f"expert {e} {proj} of fused gate_up_proj (de-interleaved, transposed)",
                )
            )
    return out


def _fused_down(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    prefix = m.group(1)
    return [
        expert_matrix(
            t,
            f"{prefix}.{e}.down_proj.weight",
            e,
            transpose=True,
            note=f"expert {e} down of fused down_proj (transposed)",
        )
        for e in range(_experts_of(t, 3))
    ]


def bias_row(
    base: SourceTensor, name: str, expert: int, columns: slice, note: str
) -> DerivedTensor:
    """Expert ``expert``'s 1-D bias out of a fused ``[E, n]`` bias, ``columns`` picked."""
    size = len(range(base.shape[-1])[columns])

    def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(inputs[0].read(expert, expert + 1)[:, columns][: stop - start])

    share = base.nbytes * size // (base.shape[0] * base.shape[-1])
    return DerivedTensor(name, base.dtype, (size,), [base], read, note, source_nbytes=share)


def _fused_bias(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    prefix, which = m.group(1), m.group(2)
    parts = (("gate", EVEN), ("up", ODD)) if which == "gate_up" else (("down", slice(None)),)
    return [
        bias_row(t, f"{prefix}.{e}.{proj}_proj.bias", e, cols, f"expert {e} {proj} bias")
        for e in range(_experts_of(t, 2))
        for proj, cols in parts
    ]


def _packed(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    prefix, which = m.group(1), m.group(2)
    scales = lookup.take(f"{prefix}.{which}_proj_scales")
    try:
        if which == "gate_up":
            return [
                mxfp4_matrix(
                    t,
                    scales,
                    f"{prefix}.{e}.{proj}_proj.weight",
                    e,
                    row_step=2,
                    row_offset=off,
                    note=f"expert {e} {proj}: MXFP4 decoded (rows {off}::2 of gate_up)",
                )
                for e in range(t.shape[0])
                for proj, off in (("gate", 0), ("up", 1))
            ]
        return [
            mxfp4_matrix(
                t,
                scales,
                f"{prefix}.{e}.down_proj.weight",
                e,
                note=f"expert {e} down: MXFP4 decoded",
            )
            for e in range(t.shape[0])
        ]
    except ValueError as err:
        raise SourceError(f"{t.name}: {err}") from None


def gpt_oss_rules(config: dict) -> list[Rule]:
    """GPT-OSS: fused (or MXFP4-packed) experts split per expert; router preferred F32."""
    experts = r"(.*\.mlp\.experts)"
    return [
        Rule(rf"{experts}\.gate_up_proj", _fused_gate_up, "fused gate/up experts"),
        Rule(rf"{experts}\.down_proj", _fused_down, "fused down experts"),
        Rule(rf"{experts}\.(gate_up|down)_proj_bias", _fused_bias, "fused expert biases"),
        Rule(rf"{experts}\.(gate_up|down)_proj_blocks", _packed, "MXFP4 experts"),
        Rule(r".*\.mlp\.router\.weight", _router, "router"),
    ]


def qwen3_moe_rules(config: dict) -> list[Rule]:
    """Qwen3-MoE: experts are already per expert; the router (``mlp.gate``) prefers F32."""
    return [Rule(r".*\.mlp\.gate\.weight", _router, "router")]


def _at(*index: object):
    """An index function for a :class:`Placement`: expert number from group 2, then ``index``."""
    return lambda m: (int(m.group(2)), *index)


def gpt_oss_placements(config: dict) -> list[Placement]:
    """Stored GPT-OSS experts back into transformers' fused parameters (re-interleaved)."""
    e = r"(.*\.mlp\.experts)\.(\d+)"
    return [
        Placement(rf"{e}\.gate_proj\.weight", "{0}.gate_up_proj", _at(slice(None), EVEN), True),
        Placement(rf"{e}\.up_proj\.weight", "{0}.gate_up_proj", _at(slice(None), ODD), True),
        Placement(rf"{e}\.down_proj\.weight", "{0}.down_proj", _at(), True),
        Placement(rf"{e}\.gate_proj\.bias", "{0}.gate_up_proj_bias", _at(EVEN)),
        Placement(rf"{e}\.up_proj\.bias", "{0}.gate_up_proj_bias", _at(ODD)),
        Placement(rf"{e}\.down_proj\.bias", "{0}.down_proj_bias", _at()),
    ]


def qwen3_moe_placements(config: dict) -> list[Placement]:
    """Stored Qwen3-MoE experts back into transformers' fused ``[E, 2 * inter, hidden]``."""
    inter = int(config.get("moe_intermediate_size") or 0)
    e = r"(.*\.mlp\.experts)\.(\d+)"
    return [
        Placement(rf"{e}\.gate_proj\.weight", "{0}.gate_up_proj", _at(slice(0, inter))),
        Placement(rf"{e}\.up_proj\.weight", "{0}.gate_up_proj", _at(slice(inter, 2 * inter))),
        Placement(rf"{e}\.down_proj\.weight", "{0}.down_proj", _at()),
    ]


ARCHITECTURE_RULES["GptOssForCausalLM"] = gpt_oss_rules
ARCHITECTURE_RULES["Qwen3MoeForCausalLM"] = qwen3_moe_rules
MODULE_PLACEMENTS["GptOssForCausalLM"] = gpt_oss_placements
MODULE_PLACEMENTS["Qwen3MoeForCausalLM"] = qwen3_moe_placements
