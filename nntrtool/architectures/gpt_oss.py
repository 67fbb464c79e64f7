"""GPT-OSS: fused experts (and their MXFP4 packing) split per expert; routers kept F32.

A layer's experts are fused: ``mlp.experts.gate_up_proj`` ``[E, hidden, 2 * inter]`` (gate in
the even columns, up in the odd ones), ``down_proj`` ``[E, inter, hidden]`` (both ``[in, out]``),
their biases ``[E, 2 * inter]`` and ``[E, hidden]``. The published checkpoint packs the matrices
in MXFP4 as ``*_blocks``/``*_scales`` in ``[out, in]`` order (gate and up interleaved by rows),
decoded by :mod:`nntrtool.tensors.mxfp4`. Stored, every expert is one ``[out, in]`` matrix per
projection; :func:`gpt_oss_placements` puts them back into transformers' fused parameters.

llama.cpp's GGUFs (``gpt-oss``) hold each layer's experts as three ``[E, out, in]`` tensors
(gate and up de-interleaved, transposed; ggml MXFP4 blocks when the checkpoint was packed) and
their biases as ``[E, out]``: split back per expert here, as the checkpoint's experts are
stored; the attention sinks lose the ``.weight`` llama.cpp gave them.
"""

from __future__ import annotations

import re

from nntrtool.architectures.base import COMMON_KEYS, DECODER_SPELLINGS, Family, GGUFMeta
from nntrtool.architectures.gemma2 import layer_types
from nntrtool.architectures.nntrainer_layout import (
    ArchitectureLayout,
    ConfigRule,
    L,
    PerExpert,
    Role,
    rope_param,
    with_bias,
)
from nntrtool.errors import SourceError
from nntrtool.tensors.base import SourceTensor
from nntrtool.tensors.experts import EVEN, ODD, bias_row, expert_at, experts_of, router_rule
from nntrtool.tensors.mxfp4 import ggml_mxfp4_matrix, mxfp4_matrix
from nntrtool.tensors.transforms import (
    DerivedTensor,
    Placement,
    Rule,
    TensorLookup,
    expert_matrix,
)


def _fused_gate_up(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    prefix, out = m.group(1), []
    for e in range(experts_of(t, 3)):
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
        for e in range(experts_of(t, 3))
    ]


def _fused_bias(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    prefix, which = m.group(1), m.group(2)
    parts = (("gate", EVEN), ("up", ODD)) if which == "gate_up" else (("down", slice(None)),)
    return [
        bias_row(t, f"{prefix}.{e}.{proj}_proj.bias", e, cols, f"expert {e} {proj} bias")
        for e in range(experts_of(t, 2))
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
        router_rule(r".*\.mlp\.router\.weight"),
    ]


def gpt_oss_placements(config: dict) -> list[Placement]:
    """Stored GPT-OSS experts back into transformers' fused parameters (re-interleaved)."""
    e = r"(.*\.mlp\.experts)\.(\d+)"
    return [
        Placement(
            rf"{e}\.gate_proj\.weight", "{0}.gate_up_proj", expert_at(slice(None), EVEN), True
        ),
        Placement(rf"{e}\.up_proj\.weight", "{0}.gate_up_proj", expert_at(slice(None), ODD), True),
        Placement(rf"{e}\.down_proj\.weight", "{0}.down_proj", expert_at(), True),
        Placement(rf"{e}\.gate_proj\.bias", "{0}.gate_up_proj_bias", expert_at(EVEN)),
        Placement(rf"{e}\.up_proj\.bias", "{0}.gate_up_proj_bias", expert_at(ODD)),
        Placement(rf"{e}\.down_proj\.bias", "{0}.down_proj_bias", expert_at()),
    ]


def _expert_biases(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    prefix, proj = m.group(1), m.group(2)
    return [
        bias_row(t, f"{prefix}.{e}.{proj}.bias", e, slice(None), f"expert {e} {proj} bias")
        for e in range(experts_of(t, 2))
    ]


def _sinks(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    def read(inputs, start, stop):
        return inputs[0].read(start, stop)

    return [DerivedTensor(m.group(1), t.dtype, t.shape, [t], read, "", source_nbytes=t.nbytes)]


def _gguf_experts(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    prefix, proj = m.group(1), m.group(2)
    split = ggml_mxfp4_matrix if t.dtype == "MXFP4" else expert_matrix
    return [
        split(t, f"{prefix}.{e}.{proj}.weight", e, note=f"expert {e} of {t.name}")
        for e in range(experts_of(t, 3))
    ]


def gguf_rules(meta: GGUFMeta) -> list[Rule]:
    """Experts (ggml MXFP4 blocks read as the checkpoint's MXFP4) and their biases split per
    expert; sinks named as in the checkpoint."""
    return [
        Rule(
            r"(model\.layers\.\d+\.mlp\.experts)\.((?:gate|up|down)_proj)\.weight",
            _gguf_experts,
            "fused experts split per expert",
        ),
        Rule(
            r"(model\.layers\.\d+\.mlp\.experts)\.((?:gate|up|down)_proj)\.bias",
            _expert_biases,
            "fused expert biases split per expert",
        ),
        Rule(r"(model\.layers\.\d+\.self_attn\.sinks)\.weight", _sinks, "attention sinks"),
    ]


def _finish(cfg: dict, field) -> None:
    layer_types(cfg, 2)  # sliding-window and full attention alternate
    rope = cfg.get("rope_parameters", {})
    if rope.get("rope_type") == "yarn":
        # GPT-OSS's YaRN does not truncate its correction range (every checkpoint's config and
        # GptOssConfig say so); the GGUF does not store it.
        rope.setdefault("truncate", False)


SPELLINGS = (
    *DECODER_SPELLINGS,
    r"model\.layers\.\d+\.mlp\.router",
    r"model\.layers\.\d+\.mlp\.experts\.(gate|up|down)_proj",
    r"model\.layers\.\d+\.self_attn\.sinks",
)

#: GPT-OSS (gptoss_causallm.cpp, layers/gpt_oss_moe_layer.cpp): attention with biases and
#: sinks, then the router with its bias and, per expert, up, gate, down with their biases
#: (res/gpt-oss-20b/weight_converter.py).
NNTRAINER = ArchitectureLayout(
    "GptOssForCausalLM",
    layer=(
        (L + "input_layernorm.weight", Role.NORM, ("D",)),
        *with_bias(L + "self_attn.q_proj", Role.LINEAR, ("Q", "D")),
        *with_bias(L + "self_attn.k_proj", Role.LINEAR, ("K", "D")),
        *with_bias(L + "self_attn.v_proj", Role.LINEAR, ("K", "D")),
        (L + "self_attn.sinks", Role.VECTOR, ("N",)),
        *with_bias(L + "self_attn.o_proj", Role.LINEAR, ("D", "Q")),
        (L + "post_attention_layernorm.weight", Role.NORM, ("D",)),
        *with_bias(L + "mlp.router", Role.ROUTER, ("E", "D")),
        PerExpert(
            (
                *with_bias(L + "mlp.experts.{e}.up_proj", Role.LINEAR, ("M", "D")),
                *with_bias(L + "mlp.experts.{e}.gate_proj", Role.LINEAR, ("M", "D")),
                *with_bias(L + "mlp.experts.{e}.down_proj", Role.LINEAR, ("D", "M")),
            )
        ),
    ),
    aliases=("GptOssCachedSlimCausalLM",),
    required=("num_experts_per_tok", "layer_types", "sliding_window"),
    config_keys=(("num_local_experts", ("num_local_experts", "num_experts")),),
    rope_scaling=frozenset({"yarn"}),
    rope_table_from_config=True,
    rules=(
        ConfigRule(
            lambda c: (c.get("architectures") or [None])[0] == "GptOssCachedSlimCausalLM",
            "nntrainer's GptOssCachedSlimCausalLM does not add the router bias, so its expert "
            "choices differ from the source model's; GptOssForCausalLM adds it",
        ),
        ConfigRule(
            lambda c: True,
            "nntrainer's GPT-OSS prefill is wrong for prompts longer than sliding_window "
            "({sliding_window} tokens): keep prompts shorter",
        ),
        ConfigRule(
            lambda c: True,
            "nntrainer's GPT-OSS does not clamp the SwiGLU inputs (swiglu_limit {swiglu_limit}), "
            "so activations beyond it differ from the source model's",
        ),
        ConfigRule(
            lambda c: rope_param(c, "original_max_position_embeddings") not in (None, 4096),
            "nntrainer's GPT-OSS takes YaRN's original context as 4096 tokens, but the config "
            "says {original_max_position_embeddings}; its outputs will differ",
        ),
    ),
)

FAMILY = Family(
    "gpt_oss",
    "GptOssForCausalLM",
    gguf_arch="gpt-oss",
    spellings=SPELLINGS,
    gguf_rules=gguf_rules,
    hf_rules=gpt_oss_rules,
    placements=gpt_oss_placements,
    config_keys={
        **COMMON_KEYS,
        "expert_count": "num_local_experts",
        "expert_used_count": "num_experts_per_tok",
        "attention.sliding_window": "sliding_window",
    },
    finish_config=_finish,
    hidden_act="silu",
    nntrainer=NNTRAINER,
)
