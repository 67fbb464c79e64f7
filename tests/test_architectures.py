"""The family registry and the declared transforms, without llama.cpp: each transform undone by
its inverse, names looked up per family, configs rebuilt key for key from metadata."""

from __future__ import annotations

import numpy as np
import pytest
from gguf_models import llama_cpp_permute

from nntrtool.architectures import families, for_class, for_config, for_gguf, ops
from nntrtool.architectures.base import GGUFMeta
from nntrtool.errors import SourceError
from nntrtool.names import hf_name
from nntrtool.sources.base import ArrayTensor
from nntrtool.sources.gguf_config import build_config
from nntrtool.tensors.transforms import apply_rules

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_qk_permutation_is_llama_cpps_and_undone(heads):
    w = RNG.standard_normal((heads * 8, 6)).astype(np.float32)
    permuted = ops.qk_permute(w, heads)
    assert np.array_equal(permuted, llama_cpp_permute(w, heads))
    assert not np.array_equal(permuted, w)
    assert np.array_equal(ops.qk_unpermute(permuted, heads), w)


def test_norm_offset_undone_exactly_for_exact_values():
    w = RNG.integers(-512, 512, 64).astype(np.float32) / 1024
    assert np.array_equal(ops.add_offset(w, 1.0), w + 1)
    assert np.array_equal(ops.remove_offset(ops.add_offset(w, 1.0), 1.0), w)


def test_transpose_and_expert_stacking_undo_themselves():
    w = RNG.standard_normal((3, 5)).astype(np.float32)
    assert np.array_equal(ops.transpose(ops.transpose(w)), w)
    experts = [RNG.standard_normal((4, 6)).astype(np.float32) for _ in range(3)]
    back = ops.split_experts(ops.stack_experts(experts))
    assert all(np.array_equal(a, b) for a, b in zip(back, experts, strict=True))


def test_rules_read_the_inverse_from_gguf_layout():
    norm = ArrayTensor("model.norm.weight", np.array([1.5, 0.75, 1.0], np.float32))
    conv = ArrayTensor(
        "transformer.h.0.attn.c_attn.weight", RNG.standard_normal((6, 4)).astype(np.float32)
    )
    gate = ArrayTensor("model.layers.0.mlp.shared_expert_gate.weight", np.ones(4, np.float32))
    rules = [
        ops.norm_offset_rule(r".*norm\.weight"),
        ops.transpose_rule(r".*c_attn\.weight"),
        ops.reshape_rule(r".*shared_expert_gate\.weight", lambda t: (1, t.cols)),
    ]
    out = {t.name: t for t in apply_rules([norm, conv, gate], rules)}
    assert np.array_equal(out["model.norm.weight"].read_f32()[0], [0.5, -0.25, 0.0])
    got = out["transformer.h.0.attn.c_attn.weight"]
    assert got.shape == (4, 6)
    assert np.array_equal(got.read_f32(1, 3), conv.read_f32().T[1:3])
    assert out["model.layers.0.mlp.shared_expert_gate.weight"].shape == (1, 4)


def test_registry_finds_each_family_by_each_of_its_names():
    for f in families():
        assert for_class(f.hf_class) is f
        assert for_config({"model_type": f.model_type}) is f
        assert for_config({"architectures": [f.hf_class]}) is f
    assert for_gguf("llama").name == "llama"  # Mistral's GGUFs say llama too
    assert for_config({"architectures": ["MistralForCausalLM"]}).gguf_arch == "llama"
    assert for_config({"text_config": {"model_type": "gemma3_text"}}).name == "gemma3"
    assert for_gguf("gpt-oss").name == "gpt_oss" and not for_gguf("gpt-oss").reads_gguf
    assert for_gguf("falcon") is None


@pytest.mark.parametrize(
    "arch, family, gguf_name, hf",
    [
        ("phi3", "phi3", "blk.0.ffn_up.weight", "model.layers.0.mlp.gate_up_proj.weight"),
        ("phi3", "phi3", "blk.0.attn_qkv.weight", "model.layers.0.self_attn.qkv_proj.weight"),
        ("starcoder2", "starcoder2", "blk.1.ffn_up.bias", "model.layers.1.mlp.c_fc.bias"),
        ("gpt2", "gpt2", "blk.0.attn_output.weight", "transformer.h.0.attn.c_proj.weight"),
        ("gpt2", "gpt2", "blk.0.ffn_down.weight", "transformer.h.0.mlp.c_proj.weight"),
        ("gpt2", "gpt2", "position_embd.weight", "transformer.wpe.weight"),
        ("gemma2", "gemma2", "blk.0.ffn_norm.weight", "model.layers.0.pre_feedforward_layernorm.weight"),
        ("gemma2", "gemma2", "blk.0.post_attention_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
        ("gemma", "gemma", "blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
        ("qwen2moe", "qwen2moe", "blk.0.ffn_gate_inp_shexp.weight", "model.layers.0.mlp.shared_expert_gate.weight"),
    ],
)  # fmt: skip
def test_gguf_names_map_to_each_familys_spelling(arch, family, gguf_name, hf):
    spellings = next(f for f in families() if f.name == family).spellings
    mapped = hf_name(gguf_name, arch, 2, spellings)
    assert mapped.known and mapped.hf == hf


def _field(values: dict):
    return lambda key: values.get(key)


def test_gemma3_config_rebuilt_as_transformers_builds_it():
    meta = {
        "gemma3.block_count": 12,
        "gemma3.embedding_length": 640,
        "gemma3.attention.head_count": 4,
        "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 256,
        "gemma3.rope.freq_base": 1000000.0,
        "gemma3.attention.sliding_window": 512,
    }
    cfg = build_config("gemma3", _field(meta), vocab_rows=100, has_output=False, token_count=None)
    assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["model_type"] == "gemma3_text"
    assert cfg["layer_types"] == (["sliding_attention"] * 5 + ["full_attention"]) * 2
    assert cfg["rope_parameters"] == {
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    assert cfg["query_pre_attn_scalar"] == 256 and cfg["sliding_window"] == 512
    assert cfg["hidden_activation"] == "gelu_pytorch_tanh" and cfg["tie_word_embeddings"]
    assert "final_logit_softcapping" not in cfg


def test_gemma2_27b_scales_queries_by_hidden_over_heads():
    meta = {
        "gemma2.block_count": 46,
        "gemma2.embedding_length": 4608,
        "gemma2.attention.head_count": 32,
        "gemma2.attention.key_length": 128,
        "gemma2.attn_logit_softcapping": 50.0,
        "gemma2.final_logit_softcapping": 30.0,
    }
    cfg = build_config("gemma2", _field(meta), vocab_rows=8, has_output=False, token_count=None)
    assert cfg["query_pre_attn_scalar"] == 144
    assert cfg["attn_logit_softcapping"] == 50.0 and cfg["final_logit_softcapping"] == 30.0
    assert cfg["layer_types"][:2] == ["sliding_attention", "full_attention"]
    assert cfg["rope_parameters"]["rope_theta"] == 10000.0


def test_phi3_partial_rotary_and_gpt2_keys():
    phi = {
        "phi3.embedding_length": 64,
        "phi3.attention.head_count": 4,
        "phi3.rope.dimension_count": 12,
    }
    cfg = build_config("phi3", _field(phi), vocab_rows=8, has_output=True, token_count=None)
    assert cfg["rope_parameters"]["partial_rotary_factor"] == 0.75
    gpt = {"gpt2.embedding_length": 64, "gpt2.block_count": 2, "gpt2.context_length": 1024}
    gpt["gpt2.attention.head_count"] = 4
    gpt["gpt2.attention.layer_norm_epsilon"] = 1e-5
    cfg = build_config("gpt2", _field(gpt), vocab_rows=8, has_output=False, token_count=None)
    assert (cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["n_positions"]) == (64, 2, 4, 1024)
    assert cfg["layer_norm_epsilon"] == 1e-5 and "rope_parameters" not in cfg


def test_meta_count_says_what_is_missing_or_wrong():
    meta = GGUFMeta("llama", _field({"llama.attention.head_count": "x"}), "m.gguf")
    with pytest.raises(SourceError, match="'llama.attention.head_count' is 'x', not a count"):
        meta.count("attention.head_count")
    with pytest.raises(SourceError, match="lacks the metadata 'llama.block_count'"):
        meta.count("block_count")
    assert meta.count("block_count", default=3) == 3


def test_gpt_oss_gguf_is_refused_naming_the_supported_families(tmp_path):
    import gguf

    from nntrtool.sources import open_source

    path = tmp_path / "oss.gguf"
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(SourceError, match="'gpt-oss' is not a supported family.*gemma3"):
        open_source(path)
