"""Export of mixture-of-experts models (Qwen3-MoE, GPT-OSS) to nntrainer's CausalLM folder.

Each model is converted by nntrtool from a real transformers checkpoint, exported, read back by
the independent reader (``tests/nntrainer_reader.py``), put back into transformers' own fused
expert parameters by code written here, and run against the source model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from moe_models import pack_gpt_oss_mxfp4, save_gpt_oss, save_qwen3_moe
from nntrainer_reader import read_folder

from nntrtool.convert import ConvertOptions, convert
from nntrtool.errors import UsageError
from nntrtool.export import convert_and_export, export_nntr, nntrainer_type_overrides
from nntrtool.export.layouts import ARCHITECTURES
from nntrtool.format import NntrFile
from nntrtool.qtypes import F32, Q4_0_REPACKED
from nntrtool.quant import dequantize, unpack

TOKENS = torch.tensor([[1, 17, 250, 3, 99, 51, 42, 7]])  # within GPT-OSS's sliding window


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe_export")
    gpt = save_gpt_oss(root / "gpt_oss", seed=3)
    return {
        "qwen3_moe": save_qwen3_moe(root / "qwen3_moe", seed=2),
        "gpt_oss": gpt,
        "gpt_oss_mxfp4": pack_gpt_oss_mxfp4(gpt, root / "gpt_oss_mxfp4"),
    }


def _nntr(tmp: Path, src: Path, quant_type: str, extra: tuple[str, ...] = ()) -> Path:
    config = json.loads((src / "config.json").read_text())
    overrides = nntrainer_type_overrides(quant_type, config) + extra
    out = tmp / "model.nntr"
    convert(src, out, ConvertOptions(quant_type=quant_type, type_overrides=overrides))
    return out


def _dequantized(path: Path) -> dict[str, np.ndarray]:
    """The NNTR file's tensors as float32 (what the exported folder must hold exactly)."""
    out = {}
    with NntrFile(path) as nf:
        for e in nf.tensors:
            shape = tuple(e.shape)
            if e.ttype is F32:
                out[e.name] = np.array(nf.array(e.name), np.float32).reshape(shape)
                continue
            data = np.asarray(nf.array(e.name)).reshape(shape[0], -1)
            if e.ttype is Q4_0_REPACKED:
                data = unpack(np.ascontiguousarray(data), e.layout.name)
            name = "q4_0" if e.ttype is Q4_0_REPACKED else e.ttype.name
            out[e.name] = dequantize(data, name, shape)
    return out


def _fused_state(config: dict, state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Per-expert matrices back into transformers' fused expert parameters."""
    arch = config["architectures"][0]
    out = {k: torch.from_numpy(v) for k, v in state.items() if ".experts." not in k}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp.experts"
        n = config.get("num_experts") or config["num_local_experts"]

        def w(e, proj, kind="weight", p=p):
            return torch.from_numpy(state[f"{p}.{e}.{proj}_proj.{kind}"])

        if arch == "Qwen3MoeForCausalLM":  # gate_up [E, 2I, D] (gate first), down [E, D, I]
            out[f"{p}.gate_up_proj"] = torch.stack(
                [torch.cat([w(e, "gate"), w(e, "up")]) for e in range(n)]
            )
            out[f"{p}.down_proj"] = torch.stack([w(e, "down") for e in range(n)])
        else:  # gate_up [E, D, 2I] with gate in even columns, down [E, I, D]; biases alike
            gate_up = torch.stack(
                [torch.stack([w(e, "gate").T, w(e, "up").T], -1) for e in range(n)]
            )
            out[f"{p}.gate_up_proj"] = gate_up.flatten(-2)
            bias = torch.stack(
                [torch.stack([w(e, "gate", "bias"), w(e, "up", "bias")], -1) for e in range(n)]
            )
            out[f"{p}.gate_up_proj_bias"] = bias.flatten(-2)
            out[f"{p}.down_proj"] = torch.stack([w(e, "down").T for e in range(n)])
            out[f"{p}.down_proj_bias"] = torch.stack([w(e, "down", "bias") for e in range(n)])
    return out


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits[0].double()


def _kl(ref: torch.Tensor, test: torch.Tensor) -> float:
    p, q = ref.log_softmax(-1), test.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def check_export(folder: Path, isa: str, src: Path, nntr: Path) -> float:
    """The folder holds exactly the NNTR file's values, and runs like the source; returns the
    KL divergence of the exported model's next-token distributions from the source's."""
    from transformers import AutoModelForCausalLM

    got = read_folder(folder, isa)
    want = _dequantized(nntr)
    assert set(got.state_dict) == set(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got.state_dict[name], value, err_msg=name)
    source = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    exported = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    missing, unexpected = exported.load_state_dict(
        _fused_state(got.config, got.state_dict), strict=False
    )
    assert not unexpected and not missing
    return _kl(_logits(source), _logits(exported)), _logits(source), _logits(exported)


@pytest.mark.parametrize("model", ["qwen3_moe", "gpt_oss", "gpt_oss_mxfp4"])
def test_f32_export_runs_like_the_source(models, tmp_path, model):
    src = models[model]
    nntr = _nntr(tmp_path, src, "f32")
    out = tmp_path / "out"
    export_nntr(nntr, out)
    _, want, have = check_export(out, "x86", src, nntr)
    torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
    nntr_cfg = json.loads((out / "nntr_config.json").read_text())
    assert nntr_cfg["model_tensor_type"] == "FP32-FP32"


@pytest.mark.parametrize(
    ("model", "isa"), [("qwen3_moe", "x86"), ("gpt_oss", "arm"), ("gpt_oss_mxfp4", "x86")]
)
def test_q4_0_export_stays_close(models, tmp_path, model, isa):
    src = models[model]
    nntr = _nntr(tmp_path, src, "q4_0")
    out = tmp_path / "out"
    result = export_nntr(nntr, out, isa=isa)
    kl, _, _ = check_export(out, isa, src, nntr)
    assert 0 < kl < 0.02
    types = {t.slot.name: t.out_type for t in result.plan.tensors}
    router = "mlp.gate.weight" if model == "qwen3_moe" else "mlp.router.weight"
    assert types[f"model.layers.1.{router}"] == "f32"
    assert (
        types["model.layers.1.mlp.experts.3.down_proj.weight"]
        == {"x86": "q4_0_8", "arm": "q4_0_4"}[isa]
    )
    assert json.loads((out / "nntr_config.json").read_text())["model_tensor_type"] == "Q4_0-FP32"


def test_order_follows_the_runtime(models, tmp_path):
    nntr = _nntr(tmp_path, models["gpt_oss"], "f32")
    result = export_nntr(nntr, tmp_path / "out", dry_run=True)
    names = [t.slot.name for t in result.plan.tensors]
    layer = [n.removeprefix("model.layers.0.") for n in names if n.startswith("model.layers.0.")]
    assert layer[:14] == [
        "input_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.weight",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.weight",
        "self_attn.v_proj.bias",
        "self_attn.sinks",
        "self_attn.o_proj.weight",
        "self_attn.o_proj.bias",
        "post_attention_layernorm.weight",
        "mlp.router.weight",
        "mlp.router.bias",
        "mlp.experts.0.up_proj.weight",
    ]
    assert layer[14:19] == [
        "mlp.experts.0.up_proj.bias",
        "mlp.experts.0.gate_proj.weight",
        "mlp.experts.0.gate_proj.bias",
        "mlp.experts.0.down_proj.weight",
        "mlp.experts.0.down_proj.bias",
    ]
    assert names[0] == "model.embed_tokens.weight" and names[-2:] == [
        "model.norm.weight",
        "lm_head.weight",
    ]


def test_runtime_configs_and_warnings(models, tmp_path):
    out = tmp_path / "gpt"
    _, result = convert_and_export(models["gpt_oss_mxfp4"], out, ConvertOptions(quant_type="q4_0"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_theta"] == 150000 and isinstance(cfg["rope_theta"], int)
    assert cfg["rope_scaling"]["rope_type"] == "yarn" and cfg["rope_scaling"]["factor"] == 32.0
    assert cfg["num_local_experts"] == 8 and cfg["layer_types"][0] == "sliding_attention"
    warnings = " ".join(result.plan.warnings)
    assert "sliding_window (8 tokens)" in warnings and "SwiGLU" in warnings
    assert "RoPE scaling" not in warnings  # the runtime applies YaRN itself

    out = tmp_path / "qwen"
    _, result = convert_and_export(models["qwen3_moe"], out, ConvertOptions(quant_type="q4_0"))
    cfg = json.loads((out / "config.json").read_text())
    # transformers 5 writes num_local_experts; the runtime reads num_experts
    assert cfg["num_experts"] == 8 and cfg["moe_intermediate_size"] == 64
    # the tiny model's 256 positions: the run is fitted to the RoPE table the runtime builds
    assert (
        len(result.plan.warnings) == 1
        and "max_position_embeddings is 256" in (result.plan.warnings[0])
    )
    assert {"Qwen3MoeForCausalLM", "GptOssForCausalLM", "GptOssCachedSlimCausalLM"} <= set(
        ARCHITECTURES
    )


def test_refusals_name_the_convert_options_that_work(models, tmp_path):
    # MXFP4 experts are stored as lossless q8_0 unless told otherwise; the runtime cannot run it
    plain = tmp_path / "plain.nntr"
    convert(
        models["gpt_oss_mxfp4"],
        plain,
        ConvertOptions(quant_type="q4_0", keep_f32=("embed_tokens",)),
    )
    with pytest.raises(UsageError, match=r"experts\.0\.up_proj\.weight is q8_0") as info:
        export_nntr(plain, tmp_path / "out")
    assert r"--type 'mlp\.experts\.=q4_0'" in str(info.value)
    router = tmp_path / "router.nntr"
    convert(
        models["qwen3_moe"],
        router,
        ConvertOptions(type_overrides=(r"mlp\.gate\.=q4_0",), keep_f32=("embed_tokens",)),
    )
    with pytest.raises(UsageError, match="f32 router"):
        export_nntr(router, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_qwen3_moe_config_the_runtime_cannot_follow(tmp_path):
    dense = save_qwen3_moe(tmp_path / "dense", mlp_only_layers=[1])
    with pytest.raises(UsageError, match="dense MLP layers"):
        convert_and_export(dense, tmp_path / "out", ConvertOptions(quant_type="f32"))
    free = save_qwen3_moe(tmp_path / "free", norm_topk_prob=False)
    _, result = convert_and_export(free, tmp_path / "out2", ConvertOptions(quant_type="f32"))
    assert any("renormalizes" in w for w in result.plan.warnings)
