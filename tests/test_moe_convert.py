"""Mixture-of-experts checkpoints: Qwen3-MoE and GPT-OSS (unpacked and MXFP4) converted and
checked against transformers, tensor by tensor and through the logits."""

from __future__ import annotations

from pathlib import Path

import ggml_oracle
import numpy as np
import pytest
from moe_models import (
    pack_gpt_oss_mxfp4,
    save_gpt_oss,
    save_qwen3_moe,
    transformers_decode,
)

from nntrtool import verify as v
from nntrtool.convert import ConvertOptions, convert
from nntrtool.format import NntrFile
from nntrtool.quant import dequantize
from nntrtool.sources import open_source
from nntrtool.tensors import mxfp4


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    gpt = save_gpt_oss(root / "gpt_oss")
    return {
        "qwen3_moe": save_qwen3_moe(root / "qwen3_moe"),
        "gpt_oss": gpt,
        "gpt_oss_mxfp4": pack_gpt_oss_mxfp4(gpt, root / "gpt_oss_mxfp4"),
    }


# ---- MXFP4 numerics ------------------------------------------------------------------------


def test_mxfp4_decoding_matches_transformers_for_every_scale():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(2, 255, 3, 16), dtype=np.uint8)
    scales = np.broadcast_to(np.arange(255, dtype=np.uint8)[None, :, None], (2, 255, 3)).copy()
    ref = transformers_decode(blocks, scales).transpose(1, 2).numpy()  # back to [E, rows, cols]
    ours = mxfp4.decode_f32(blocks.reshape(-1, 3, 16), scales.reshape(-1, 3)).reshape(ref.shape)
    np.testing.assert_array_equal(ours, ref)
    bf16 = mxfp4.decode_bf16(blocks.reshape(-1, 3, 16), scales.reshape(-1, 3))
    widened = (bf16.astype(np.uint32) << 16).view(np.float32).reshape(ref.shape)
    np.testing.assert_array_equal(widened, ref)  # BF16 holds every MXFP4 value exactly


def test_mxfp4_blocks_are_exact_q8_0_blocks_where_the_scale_fits_fp16():
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, size=(6, 4, 16), dtype=np.uint8)
    scales = np.array([[104, 110, 127, 143]] * 6, dtype=np.uint8)
    encoded = mxfp4.encode_q8_0(blocks, scales)
    values = mxfp4.decode_f32(blocks, scales)
    np.testing.assert_array_equal(dequantize(encoded, "q8_0", values.shape), values)
    np.testing.assert_array_equal(
        ggml_oracle.ggml_dequantize(encoded, "q8_0", values.shape[1]), values
    )
    # ggml's own Q8_0 (d = amax / 127) does not find this encoding: why the blocks are written.
    assert not np.array_equal(
        ggml_oracle.ggml_dequantize(
            ggml_oracle.ggml_quantize(values, "q8_0"), "q8_0", values.shape[1]
        ),
        values,
    )
    # Outside fp16's range there is no exact Q8_0 block, unless the block is all zeros.
    assert mxfp4.encode_q8_0(blocks[:1, :1], np.array([[144]], np.uint8)) is None
    assert mxfp4.encode_q8_0(blocks[:1, :1], np.array([[103]], np.uint8)) is None
    zeros = np.full((1, 1, 16), 0x88, np.uint8)  # -0, -0
    assert mxfp4.encode_q8_0(zeros, np.array([[200]], np.uint8)) is not None


# ---- the stored tensors ---------------------------------------------------------------------


def test_gpt_oss_experts_split_deinterleaved_and_transposed(models):
    from safetensors.numpy import load_file

    state = load_file(str(models["gpt_oss"] / "model.safetensors"))
    with open_source(models["gpt_oss"]) as src, open_source(models["gpt_oss_mxfp4"]) as packed:
        assert sorted(src.names) == sorted(packed.names)
        assert not any(n.endswith(("_blocks", "_scales", "gate_up_proj")) for n in src.names)
        gate_up = state["model.layers.1.mlp.experts.gate_up_proj"]
        down = state["model.layers.1.mlp.experts.down_proj"]
        bias = state["model.layers.1.mlp.experts.gate_up_proj_bias"]
        for e in (0, 5):
            p = f"model.layers.1.mlp.experts.{e}"
            expected = {
                f"{p}.gate_proj.weight": gate_up[e][:, 0::2].T,
                f"{p}.up_proj.weight": gate_up[e][:, 1::2].T,
                f"{p}.down_proj.weight": down[e].T,
                f"{p}.gate_proj.bias": bias[e, 0::2],
                f"{p}.up_proj.bias": bias[e, 1::2],
            }
            for name, want in expected.items():
                for s in (src, packed):
                    t = s.tensor(name)
                    assert t.shape == want.shape
                    np.testing.assert_array_equal(t.read_f32().reshape(want.shape), want)
        assert packed.tensor("model.layers.0.mlp.experts.3.up_proj.weight").dtype == "BF16"
        # The packed tensors account for the packed bytes, not the decoded ones.
        assert packed.nbytes < src.nbytes


def test_plan_keeps_routers_f32_and_mxfp4_experts_q8_0(models):
    from nntrtool.convert import plan_conversion

    plan = plan_conversion(models["gpt_oss_mxfp4"], ConvertOptions(quant_type="q4_0"))
    types = {t.name: t.display_type for t in plan.tensors}
    assert types["model.layers.0.mlp.router.weight"] == "f32"
    assert types["model.layers.0.mlp.experts.7.gate_proj.weight"] == "q8_0"
    assert types["model.layers.0.self_attn.q_proj.weight"] == "q4_0"
    assert types["model.layers.0.self_attn.sinks"] == "f32"
    unpacked = plan_conversion(models["gpt_oss"], ConvertOptions(quant_type="q4_0"))
    assert unpacked.tensor("model.layers.0.mlp.experts.7.gate_proj.weight").display_type == "q4_0"
    qwen = plan_conversion(models["qwen3_moe"], ConvertOptions(quant_type="q4_0"))
    assert qwen.tensor("model.layers.1.mlp.gate.weight").display_type == "f32"
    assert "router" in qwen.tensor("model.layers.1.mlp.gate.weight").reason
    # --type and --keep-f32 still win.
    forced = plan_conversion(
        models["gpt_oss_mxfp4"],
        ConvertOptions(type_overrides=(r"router\.weight=q8_0", r"experts\.=q4_0")),
    )
    assert forced.tensor("model.layers.1.mlp.router.weight").display_type == "q8_0"
    assert forced.tensor("model.layers.1.mlp.experts.0.down_proj.weight").display_type == "q4_0"


def test_mxfp4_experts_convert_losslessly(models, tmp_path):
    out = tmp_path / "packed.nntr"
    convert(models["gpt_oss_mxfp4"], out, ConvertOptions(quant_type="q4_0"))
    with NntrFile(out) as nf, open_source(models["gpt_oss"]) as src:
        name = "model.layers.1.mlp.experts.6.up_proj.weight"
        entry = nf.tensor(name)
        assert entry.ttype.name == "q8_0"
        stored = dequantize(nf.array(name).reshape(entry.shape[0], -1), "q8_0", entry.shape)
        np.testing.assert_array_equal(stored, src.tensor(name).read_f32())
    report = v.verify(out, models["gpt_oss_mxfp4"])
    assert report.passed
    experts = [r for r in report.tensors if ".experts." in r.name and r.name.endswith("weight")]
    assert len(experts) == 2 * 8 * 3 and all(r.max_abs_err == 0 for r in experts)


# ---- through the logits, against transformers ----------------------------------------------


@pytest.mark.parametrize("model", ["qwen3_moe", "gpt_oss", "gpt_oss_mxfp4"])
def test_f32_conversion_runs_exactly_like_transformers(models, tmp_path, model):
    out = tmp_path / f"{model}.nntr"
    convert(models[model], out, ConvertOptions(quant_type="f32"))
    report = v.compare_logits(out, models[model])
    assert report.max_logit_diff < 1e-4, report
    assert report.not_replaced == [] and report.unused == []


@pytest.mark.parametrize("model", ["qwen3_moe", "gpt_oss", "gpt_oss_mxfp4"])
def test_q4_0_conversion_stays_close(models, tmp_path, model):
    out = tmp_path / f"{model}.nntr"
    convert(models[model], out, ConvertOptions(quant_type="q4_0"))
    report = v.compare_logits(out, models[model])
    # Random tiny models have flat logits, so the top-1 token is noise; KL is the measure.
    assert 0 < report.kl_mean < 0.01, report
    assert report.unused == []


def test_sharded_qwen3_moe_converts_the_same(models, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(models["qwen3_moe"]).save_pretrained(
        sharded, max_shard_size="200KB"
    )
    assert len(list(sharded.glob("*.safetensors"))) > 3
    a, b = tmp_path / "a.nntr", tmp_path / "b.nntr"
    convert(models["qwen3_moe"], a, ConvertOptions())
    convert(sharded, b, ConvertOptions())
    with NntrFile(a) as fa, NntrFile(b) as fb:
        assert sorted(e.name for e in fa.tensors) == sorted(e.name for e in fb.tensors)
        for e in fa.tensors:
            assert np.asarray(fa.array(e.name)).tobytes() == np.asarray(fb.array(e.name)).tobytes()
