"""convert to the K-quant family: Q4_K / Q5_K / Q5_0 / Q5_1 files hold the quantizers' bytes,
``--type`` picks them per tensor, and ``q4_k_m`` follows llama.cpp's per-tensor rule."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_oracle import ggml_quantize
from models import ODD, Q6K, reference_tensors
from test_convert import check_file_matches_source

from nntrtool.convert import ConvertOptions, convert
from nntrtool.format import NntrFile
from nntrtool.plan.mixes import use_more_bits


@pytest.fixture(scope="module")
def llama(hf_model):
    return hf_model("llama", dtype="bf16", **Q6K)


@pytest.mark.parametrize("qtype", ["q4_k", "q5_k", "q5_0", "q5_1"])
def test_convert_to_each_new_type(llama, tmp_path, qtype):
    out = tmp_path / "m.nntr"
    report = convert(llama, out, ConvertOptions(quant_type=qtype))
    check_file_matches_source(llama, out, report)
    matrices = [t for t in report.plan.tensors if len(t.shape) == 2]
    assert matrices and all(t.display_type == qtype for t in matrices)
    assert NntrFile(out).config["nntrtool"]["quant_type"] == qtype
    # End to end against ggml's own C on the source values.
    name = "model.layers.1.mlp.down_proj.weight"
    ref = reference_tensors(llama)[name].astype(np.float32)
    with NntrFile(out) as f:
        assert f.raw(name).tobytes() == ggml_quantize(ref, qtype).tobytes()


def test_rows_that_do_not_fit_256_fall_back_to_q5_0(hf_model, tmp_path):
    src = hf_model("llama", dtype="bf16", **ODD)
    out = tmp_path / "o.nntr"
    report = convert(src, out, ConvertOptions(quant_type="q4_k"))
    check_file_matches_source(src, out, report)
    types = {t.display_type for t in report.plan.tensors if len(t.shape) == 2}
    assert "q5_0" in types or "f32" in types
    for t in report.plan.tensors:
        if len(t.shape) == 2 and t.shape[-1] % 256:
            assert t.display_type != "q4_k"
            if t.shape[-1] % 32 == 0:
                assert t.display_type == "q5_0" and "q5_0" in t.reason


def test_type_overrides_pick_new_types(llama, tmp_path):
    out = tmp_path / "t.nntr"
    opts = ConvertOptions(
        quant_type="q4_0", type_overrides=("mlp\\.down_proj=q4_k", "self_attn\\.v_proj=q5_0")
    )
    report = convert(llama, out, opts)
    check_file_matches_source(llama, out, report)
    for t in report.plan.tensors:
        if "down_proj" in t.name:
            assert t.display_type == "q4_k"
        elif "v_proj" in t.name:
            assert t.display_type == "q5_0"


def test_q4_k_m_mixture(llama, tmp_path):
    out = tmp_path / "mix.nntr"
    report = convert(llama, out, ConvertOptions(quant_type="q4_k_m"))
    check_file_matches_source(llama, out, report)
    plan = report.plan
    layers = 2
    for layer in range(layers):
        more = use_more_bits(layer, layers)
        for part in ("self_attn.v_proj", "mlp.down_proj"):
            t = plan.tensor(f"model.layers.{layer}.{part}.weight")
            assert t.display_type == ("q6_k" if more else "q4_k"), (t.name, t.reason)
        for part in ("self_attn.q_proj", "mlp.up_proj", "mlp.gate_proj"):
            assert plan.tensor(f"model.layers.{layer}.{part}.weight").display_type == "q4_k"
    assert plan.tensor("lm_head.weight").display_type == "q6_k"


def test_cli_quant_type_q4_k(llama, tmp_path):
    from typer.testing import CliRunner

    from nntrtool.cli.app import app

    out = tmp_path / "c.nntr"
    res = CliRunner().invoke(
        app, ["convert", str(llama), str(out), "--quant-type", "q4_k", "--type", "v_proj=q5_0"]
    )
    assert res.exit_code == 0, res.output
    with NntrFile(out) as f:
        assert f.tensor("model.layers.0.mlp.up_proj.weight").display_type == "q4_k"
        assert f.tensor("model.layers.0.self_attn.v_proj.weight").display_type == "q5_0"


def test_type_override_f16_stores_rounded_halves(llama, tmp_path):
    out = tmp_path / "h.nntr"
    report = convert(llama, out, ConvertOptions(quant_type="q4_k", type_overrides=("up_proj=f16",)))
    check_file_matches_source(llama, out, report)
    ref = reference_tensors(llama)
    with NntrFile(out) as f:
        name = "model.layers.0.mlp.up_proj.weight"
        assert f.tensor(name).ttype.name == "f16"
        want = ref[name].astype(np.float32).astype(np.float16)
        np.testing.assert_array_equal(f.array(name).view(np.uint16), want.view(np.uint16))
