"""GGUF sources: blocks copied byte for byte, names, layout and config as the checkpoint's.

GGUFs are written with the ``gguf`` package's writer from the tests' transformers models, Q/K
permuted as llama.cpp permutes them and quantized with ggml's own C quantizers
(``tests/gguf_models.py``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf_models import ggml_quantize_any, write_gguf
from models import Q6K, reference_tensors

from nntrtool.convert import ConvertOptions, convert, plan_conversion
from nntrtool.errors import SourceError, UsageError
from nntrtool.format import NntrFile
from nntrtool.quant import quantize, repack
from nntrtool.sources import open_source

MIXED = {
    "q_proj": "Q4_0",
    "k_proj": "Q3_K",
    "v_proj": "Q6_K",
    "embed": "Q8_0",
    "down": "Q4_1",
    "o_proj": "Q4_K",
    "up_proj": "Q5_0",
}


@pytest.fixture(scope="module")
def llama(hf_model):
    return hf_model("llama", **Q6K)


@pytest.fixture(scope="module")
def ggufs(llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return {
        "f32": write_gguf(llama, d / "llama-f32.gguf"),
        "mixed": write_gguf(llama, d / "llama-mixed.gguf", types=MIXED, default_type="Q4_0"),
    }


def _tensors(path):
    with NntrFile(path) as f:
        return [
            (t.name, t.display_type, tuple(t.shape), f.raw(t.name).tobytes()) for t in f.tensors
        ]


def _gguf_blocks(path, name):
    from gguf import GGUFReader

    t = next(t for t in GGUFReader(path).tensors if t.name == name)
    return np.array(t.data), t.tensor_type.name


@pytest.mark.parametrize("quant_type", ["q4_0", "q6_k", "f32"])
def test_f32_gguf_converts_exactly_like_its_checkpoint(llama, ggufs, tmp_path, quant_type):
    opts = ConvertOptions(quant_type=quant_type)
    convert(ggufs["f32"], tmp_path / "g.nntr", opts)
    convert(llama, tmp_path / "h.nntr", opts)
    assert _tensors(tmp_path / "g.nntr") == _tensors(tmp_path / "h.nntr")


def test_blocks_are_copied_byte_for_byte_and_qk_unpermuted(llama, ggufs, tmp_path):
    out = tmp_path / "m.nntr"
    report = convert(ggufs["mixed"], out, ConvertOptions())  # auto: keep
    hf = reference_tensors(llama)
    reasons = {t.name: t.reason for t in report.plan.tensors}
    with NntrFile(out) as f:
        types = {t.name: t.display_type for t in f.tensors}
        # q_proj was permuted in the GGUF: its blocks come back in the checkpoint's row order.
        q = "model.layers.1.self_attn.q_proj.weight"
        assert types[q] == "q4_0" and "copied q4_0 blocks" in reasons[q]
        from ggml_oracle import ggml_quantize

        assert f.raw(q).tobytes() == ggml_quantize(hf[q], "q4_0").tobytes()
        v = "model.layers.0.self_attn.v_proj.weight"
        assert types[v] == "q6_k"
        assert (
            f.raw(v).tobytes() == _gguf_blocks(ggufs["mixed"], "blk.0.attn_v.weight")[0].tobytes()
        )
        e = "model.embed_tokens.weight"
        assert types[e] == "q8_0"
        assert f.raw(e).tobytes() == _gguf_blocks(ggufs["mixed"], "token_embd.weight")[0].tobytes()
        for name, gguf_name, qtype in (
            ("model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight", "q4_k"),
            ("model.layers.1.mlp.up_proj.weight", "blk.1.ffn_up.weight", "q5_0"),
        ):
            assert types[name] == qtype and f"copied {qtype} blocks" in reasons[name]
            assert f.raw(name).tobytes() == _gguf_blocks(ggufs["mixed"], gguf_name)[0].tobytes()


def test_repacking_copied_blocks_stays_lossless(ggufs, tmp_path):
    out = tmp_path / "r.nntr"
    convert(ggufs["mixed"], out, ConvertOptions(quant_type="keep", repack_format="q4_0_8"))
    gate, _ = _gguf_blocks(ggufs["mixed"], "blk.0.ffn_gate.weight")
    with NntrFile(out) as f:
        name = "model.layers.0.mlp.gate_proj.weight"
        assert f.tensor(name).display_type == "q4_0_8"
        assert f.raw(name).tobytes() == repack(gate, "q4_0_8").tobytes()


def test_requantized_tensors_equal_quantizing_the_dequantized_values(ggufs, tmp_path):
    from gguf import GGMLQuantizationType, quants

    out = tmp_path / "k.nntr"
    report = convert(ggufs["mixed"], out, ConvertOptions())
    plan = {t.name: t for t in report.plan.tensors}
    k = "model.layers.0.self_attn.k_proj.weight"
    down = "model.layers.0.mlp.down_proj.weight"
    assert plan[k].requantized and "requantized from q3_k" in plan[k].reason
    assert plan[down].requantized and plan[down].display_type == "q6_k"
    assert any("lossy relative to the GGUF" in n for n in report.plan.notes)
    with open_source(ggufs["mixed"]) as src, NntrFile(out) as f:
        for name, qtype in ((k, "q6_k"), (down, "q6_k")):
            values = src.tensor(name).read_f32()
            assert f.raw(name).tobytes() == quantize(values, qtype).tobytes()
        raw, ggml_type = _gguf_blocks(ggufs["mixed"], "blk.0.attn_k.weight")
        assert ggml_type == "Q3_K"
        deq = quants.dequantize(raw, GGMLQuantizationType.Q3_K)
        # The Q3_K values read back are gguf's dequantized values, rows un-permuted.
        from gguf_models import llama_cpp_permute

        np.testing.assert_array_equal(llama_cpp_permute(src.tensor(k).read_f32(), 2), deq)


def test_explicit_quant_type_requantizes_everything(ggufs, tmp_path):
    report = convert(ggufs["mixed"], tmp_path / "q8.nntr", ConvertOptions(quant_type="q8_0"))
    plan = {t.name: t for t in report.plan.tensors}
    assert plan["model.embed_tokens.weight"].copy_blocks
    assert plan["lm_head.weight"].requantized  # q4_0 -> q8_0


def test_keep_without_an_nntr_type_falls_back_by_row_width(hf_model, tmp_path):
    folder = hf_model("llama")  # hidden 64: no 256-value rows
    path = write_gguf(folder, tmp_path / "t.gguf", types={"q_proj": "Q4_1"}, default_type="F16")
    plan = plan_conversion(path, ConvertOptions())
    q = plan.tensor("model.layers.0.self_attn.q_proj.weight")
    assert q.display_type == "q8_0" and q.requantized
    assert plan.tensor("model.layers.0.mlp.up_proj.weight").display_type == "f32"


def test_dry_run_and_summary_mark_requantized_tensors(ggufs, tmp_path):
    from typer.testing import CliRunner

    from nntrtool.cli.app import app

    res = CliRunner().invoke(app, ["convert", str(ggufs["mixed"]), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "requantized from q3_k" in res.output and "copied q4_0 blocks" in res.output
    res = CliRunner().invoke(app, ["convert", str(ggufs["mixed"]), str(tmp_path / "o.nntr")])
    assert res.exit_code == 0, res.output
    assert "lossy relative to the GGUF" in res.output


CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
    "hidden_act",
    "model_type",
    "rope_parameters",
)


@pytest.mark.parametrize("arch,tie", [("llama", False), ("qwen3", True), ("qwen2", False)])
def test_config_agrees_with_transformers_gguf_loader(hf_model, tmp_path, arch, tie):
    from transformers import AutoConfig

    folder = hf_model(arch, tie=tie)
    path = write_gguf(folder, tmp_path / "m.gguf")
    theirs = AutoConfig.from_pretrained(tmp_path, gguf_file="m.gguf").to_dict()
    with open_source(path) as src:
        ours = src.config
    for key in CONFIG_KEYS:
        assert ours.get(key) == theirs.get(key), key
    assert ours["rms_norm_eps"] == pytest.approx(theirs["rms_norm_eps"], rel=1e-6)
    checkpoint = json.loads((folder / "config.json").read_text())
    # transformers' qwen2/qwen3 GGUF tables skip attention.key_length and fall back on the
    # class default (128); the GGUF's own value is the checkpoint's.
    assert ours["head_dim"] == checkpoint["head_dim"]
    if arch == "llama":
        assert theirs["head_dim"] == ours["head_dim"]
    assert ours["architectures"] == checkpoint["architectures"]
    assert ours["tie_word_embeddings"] is tie
    assert ours["rms_norm_eps"] == checkpoint["rms_norm_eps"]


def test_qwen3_tied_converts_like_its_checkpoint(hf_model, tmp_path):
    folder = hf_model("qwen3", tie=True)
    path = write_gguf(folder, tmp_path / "q.gguf")
    opts = ConvertOptions(quant_type="q8_0")
    convert(path, tmp_path / "g.nntr", opts)
    convert(folder, tmp_path / "h.nntr", opts)
    assert _tensors(tmp_path / "g.nntr") == _tensors(tmp_path / "h.nntr")
    assert NntrFile(tmp_path / "g.nntr").config["nntrtool"]["tied"] is True


def test_gguf_version_2_reads(llama, tmp_path):
    path = write_gguf(llama, tmp_path / "v2.gguf", version=2)
    with open_source(path) as src:
        assert src.origin["gguf_version"] == 2 and len(src) > 0


def test_verify_against_the_gguf(ggufs, tmp_path):
    from nntrtool.verify import verify

    out = tmp_path / "v.nntr"
    convert(ggufs["mixed"], out, ConvertOptions())
    report = verify(out, ggufs["mixed"])
    assert report.passed
    by_name = {r.name: r for r in report.tensors}
    assert by_name["model.layers.0.self_attn.q_proj.weight"].max_abs_err == 0
    assert by_name["model.layers.0.self_attn.k_proj.weight"].max_abs_err > 0


def test_folder_of_ggufs_needs_a_choice(ggufs, tmp_path):
    folder = ggufs["f32"].parent
    with pytest.raises(UsageError, match="--gguf-file") as err:
        open_source(folder)
    assert "llama-f32.gguf" in str(err.value) and "llama-mixed.gguf" in str(err.value)
    with open_source(folder, gguf_file="llama-mixed.gguf") as src:
        assert src.origin["path"].endswith("llama-mixed.gguf")
    with pytest.raises(SourceError, match="llama-f32.gguf"):
        open_source(folder, gguf_file="nope.gguf")


def test_convert_and_verify_pick_the_same_gguf_from_a_folder(ggufs, tmp_path):
    from typer.testing import CliRunner

    from nntrtool.cli.app import app

    folder = ggufs["f32"].parent
    out = tmp_path / "o.nntr"
    runner = CliRunner()
    res = runner.invoke(app, ["convert", str(folder), str(out), "--gguf-file", "llama-mixed.gguf"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["verify", str(out), str(folder), "--json"])
    # the command layer turns this into one line and exit 2
    assert isinstance(res.exception, UsageError) and "--gguf-file" in str(res.exception)
    res = runner.invoke(
        app, ["verify", str(out), str(folder), "--gguf-file", "llama-mixed.gguf", "--json"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    errors = {t["name"]: t["max_abs_err"] for t in report["tensors"]}
    assert report["passed"] and errors["model.layers.0.self_attn.q_proj.weight"] == 0  # copied


def test_hub_id_with_gguf_file_reads_the_cache_offline(ggufs, offline_hub):
    from models import cache_model

    cache_model(offline_hub, "acme/tiny-GGUF", {"tiny.gguf": ggufs["mixed"]}, "a" * 40)
    with open_source("acme/tiny-GGUF", gguf_file="tiny.gguf") as src:
        assert src.origin["repo_id"] == "acme/tiny-GGUF" and src.origin["revision"] == "a" * 40
        assert "model.embed_tokens.weight" in src
    with pytest.raises(SourceError, match="offline"):
        open_source("acme/tiny-GGUF", gguf_file="other.gguf")


def test_any_block_type_gguf_can_dequantize_is_read(llama, tmp_path):
    from gguf import GGMLQuantizationType, quants

    types = {
        "q_proj": "Q2_K",
        "k_proj": "Q3_K",
        "v_proj": "Q5_K",
        "o_proj": "Q4_1",
        "up": "Q5_1",
        "gate": "IQ4_NL",
        "down": "IQ4_XS",
    }
    path = write_gguf(llama, tmp_path / "k.gguf", types=types)
    with open_source(path) as src:
        for gguf_name, hf in (
            ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
            ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight"),
            ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
            ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
        ):
            raw, t = _gguf_blocks(path, gguf_name)
            want = quants.dequantize(raw, GGMLQuantizationType[t])
            np.testing.assert_array_equal(src.tensor(hf).read_f32(), want)
            assert src.tensor(hf).dtype == t
    plan = plan_conversion(path, ConvertOptions())
    assert {t.display_type for t in plan.tensors if t.requantized} == {"q6_k"}
    report = convert(path, tmp_path / "k.nntr", ConvertOptions())
    assert report.plan.tensor("model.layers.1.mlp.down_proj.weight").reason.endswith(
        "requantized from iq4_xs"
    )


def test_ggml_quantizer_helper_matches_the_oracle():
    from ggml_oracle import ggml_quantize

    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    assert ggml_quantize_any(x, "Q6_K").tobytes() == ggml_quantize(x, "q6_k").tobytes()


def test_verify_logits_uses_transformers_gguf_loading(ggufs, tmp_path):
    from nntrtool.verify import compare_logits

    out = tmp_path / "l.nntr"
    convert(ggufs["f32"], out, ConvertOptions(quant_type="f32"))
    report = compare_logits(out, ggufs["f32"])
    # The F32 GGUF through transformers' loader and the file's values are the same model.
    assert report.max_logit_diff < 1e-4 and report.top1_agreement == 1.0
    assert not report.not_replaced


def test_export_makes_tokenizer_files_from_the_gguf(llama, ggufs, tmp_path, capsys):
    from nntrtool.cli.app import main

    out = tmp_path / "nt"
    with pytest.raises(SystemExit) as ex:
        main(["convert", str(ggufs["f32"]), str(out), "--target", "nntrainer", "-q"])
    assert ex.value.code == 0
    assert (out / "tokenizer.json").is_file() and (out / "nntr_config.json").is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    ref = AutoTokenizer.from_pretrained(str(ggufs["f32"].parent), gguf_file=ggufs["f32"].name)
    assert tok("hello world")["input_ids"] == ref("hello world")["input_ids"]


def test_export_without_a_gguf_tokenizer_says_so_and_writes_the_rest(llama, tmp_path, capsys):
    from nntrtool.cli.app import main

    path = write_gguf(llama, tmp_path / "notok.gguf", tokenizer=False)
    out = tmp_path / "nt"
    with pytest.raises(SystemExit) as ex:
        main(["convert", str(path), str(out), "--target", "nntrainer"])
    assert ex.value.code == 0
    said = capsys.readouterr()
    lines = [ln for ln in (said.out + said.err).splitlines() if "notok.gguf's tokenizer" in ln]
    assert len(lines) == 1
    assert (out / "nntr_config.json").is_file() and not (out / "tokenizer.json").exists()


@pytest.fixture(scope="module")
def qwen3moe(tmp_path_factory):
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("qwen3moe")
    cfg = transformers.Qwen3MoeConfig(
        hidden_size=64, num_hidden_layers=2, vocab_size=512, intermediate_size=128,
        moe_intermediate_size=64, num_experts=4, num_experts_per_tok=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, mlp_only_layers=[],
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def test_qwen3moe_experts_split_like_the_checkpoint(qwen3moe, tmp_path):
    from transformers import AutoConfig

    path = write_gguf(qwen3moe, tmp_path / "moe.gguf", types={"experts": "Q8_0"})
    with open_source(path) as src:
        assert "model.layers.1.mlp.experts.3.down_proj.weight" in src
        ours = src.config
    theirs = AutoConfig.from_pretrained(tmp_path, gguf_file="moe.gguf").to_dict()
    checkpoint = json.loads((qwen3moe / "config.json").read_text())
    for key in ("num_local_experts", "num_experts_per_tok", "moe_intermediate_size"):
        assert ours[key] == checkpoint[key], key
    for key in ("num_experts_per_tok", "num_hidden_layers", "hidden_size"):
        assert ours[key] == theirs[key], key
    opts = ConvertOptions(quant_type="q8_0")
    convert(path, tmp_path / "g.nntr", opts)
    convert(qwen3moe, tmp_path / "h.nntr", opts)
    assert _tensors(tmp_path / "g.nntr") == _tensors(tmp_path / "h.nntr")


def test_llama_qk_biases_are_unpermuted_too(tmp_path):
    import gguf
    from gguf_models import llama_cpp_permute

    bias = np.arange(32, dtype=np.float32)
    weight = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    w = gguf.GGUFWriter(str(tmp_path / "b.gguf"), "llama")
    w.add_block_count(1)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_tensor("blk.0.attn_q.bias", llama_cpp_permute(bias, 4))
    w.add_tensor("blk.0.attn_k.weight", llama_cpp_permute(weight, 2))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open_source(tmp_path / "b.gguf") as src:
        np.testing.assert_array_equal(
            src.tensor("model.layers.0.self_attn.q_proj.bias").read_f32()[0], bias
        )
        np.testing.assert_array_equal(
            src.tensor("model.layers.0.self_attn.k_proj.weight").read_f32(), weight
        )


def test_quantized_tensor_kept_f32_is_dequantized_exactly(ggufs, tmp_path):
    out = tmp_path / "f.nntr"
    report = convert(ggufs["mixed"], out, ConvertOptions(keep_f32=("q_proj",)))
    q = report.plan.tensor("model.layers.0.self_attn.q_proj.weight")
    assert q.display_type == "f32" and "dequantized from q4_0" in q.reason
    assert not q.requantized
    assert any(n.startswith("4 tensors requantized from q3_k, q4_1:") for n in report.plan.notes)
    with open_source(ggufs["mixed"]) as src, NntrFile(out) as f:
        np.testing.assert_array_equal(f.array(q.name), src.tensor(q.name).read_f32())
