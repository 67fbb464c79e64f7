"""`nntrtool export --target nntrainer`: the folder read back independently, logits compared.

NNTR files here are built directly (ggml's own quantizers and repack through the oracle, the
project's writer), so every combination of types, layouts and mistakes can be made on purpose.
Each exported folder is read by ``tests/nntrainer_reader.py`` the way the runtime reads it,
turned back into a Hugging Face state dict and run in transformers.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import ggml_oracle as oracle
import numpy as np
import pytest
import torch
from nntrainer_reader import deinterleave_q4_0, read_folder
from safetensors.numpy import load_file

from nntrtool.errors import NntrError, OutputExistsError, UsageError
from nntrtool.export import RuntimeOptions, export_nntr
from nntrtool.format import NntrWriter, TensorSpec
from nntrtool.qtypes import F32, LAYOUTS, Q4_0, Q4_0_REPACKED, Q4_K, Q6_K, Q8_0

TYPES = {"f32": F32, "q4_0": Q4_0, "q6_k": Q6_K, "q8_0": Q8_0, "q4_k": Q4_K}
TOKENS = torch.tensor([[1, 17, 250, 3, 99, 511, 42, 7, 300, 128, 64, 5]])
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


# --------------------------------------------------------------------------------------------
# sources: small random Hugging Face models saved as real folders


def _save_model(folder: Path, arch: str, tied: bool, vocab: int = 512, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=64, rope_theta=1000000.0, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    with torch.no_grad():  # norms away from 1 so that a misplaced norm changes the logits
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    gen = {"bos_token_id": 1, "eos_token_id": [2, 3], "do_sample": True, "top_k": 20}
    (folder / "generation_config.json").write_text(json.dumps(gen))
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {
        "qwen3_tied": _save_model(root / "qwen3_tied", "qwen3", True),
        "qwen3_untied": _save_model(root / "qwen3_untied", "qwen3", False, seed=1),
        "llama_untied": _save_model(root / "llama_untied", "llama", False, seed=2),
    }


# --------------------------------------------------------------------------------------------
# NNTR files built on purpose


def _role(name: str) -> str:
    if "embed_tokens" in name:
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    return "linear"


def write_nntr(
    path: Path,
    config: dict,
    state: dict[str, np.ndarray],
    types: dict[str, str],
    repack: str | None = None,
    source: Path | None = None,
) -> dict[str, np.ndarray]:
    """Write ``state`` as an NNTR file; ``types`` maps a role or a regex to a type name.

    Returns the dequantized weights the file holds (the reference the export must match).
    """
    tied = bool(config.get("tie_word_embeddings"))
    specs, datas, reference = [], [], {}
    for name, w in state.items():
        w = np.asarray(w, dtype=np.float32)
        if tied and name == "lm_head.weight":
            continue
        tname = "f32"
        if w.ndim == 2:
            tname = types.get(_role(name), "f32")
            for pattern, t in types.items():
                if pattern not in ("embedding", "linear", "lm_head") and re.search(pattern, name):
                    tname = t
        ttype, layout = TYPES[tname], None
        if ttype is F32:
            data = w
            reference[name] = w
        else:
            data = oracle.ggml_quantize(w, tname)
            reference[name] = oracle.ggml_dequantize(data, tname, w.shape[1]).reshape(w.shape)
            if ttype is Q4_0 and repack and w.shape[0] % LAYOUTS[repack].rows == 0:
                data = oracle.ggml_repack(data, repack)
                ttype, layout = Q4_0_REPACKED, LAYOUTS[repack]
        specs.append(TensorSpec(name, ttype, tuple(w.shape), layout))
        datas.append(data)
    meta = {"quant_type": "q4_0", "repack_format": repack, "tied": tied}
    if source is not None:
        meta["source"] = {"kind": "folder", "path": str(source), "repo_id": None}
    with NntrWriter(path, {**config, "nntrtool": meta}, specs) as writer:
        for spec, data in zip(specs, datas, strict=True):
            writer.write(spec.name, data)
    return reference


def nntr_from_source(
    tmp: Path, src: Path, types: dict[str, str], repack: str | None = None, mutate=None
) -> tuple[Path, dict[str, np.ndarray]]:
    config = json.loads((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    if mutate is not None:
        mutate(config, state)
    path = tmp / "model.nntr"
    return path, write_nntr(path, config, state, types, repack, source=src)


# --------------------------------------------------------------------------------------------
# the check: read back as the runtime does, run in transformers, compare logits


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def check_export(
    folder: Path, isa: str, src: Path, reference: dict[str, np.ndarray], exact: bool
) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    got = read_folder(folder, isa)
    assert set(got.state_dict) == set(reference)
    for name, w in reference.items():
        np.testing.assert_array_equal(got.state_dict[name], w, err_msg=name)

    source_model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    if not exact:  # the source model carrying the same dequantized weights
        missing, unexpected = source_model.load_state_dict(
            {k: torch.from_numpy(v) for k, v in reference.items()}, strict=False
        )
        assert not unexpected and set(missing) <= {"lm_head.weight"}
    config = AutoConfig.from_pretrained(folder)
    exported = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    missing, unexpected = exported.load_state_dict(
        {k: torch.from_numpy(v) for k, v in got.state_dict.items()}, strict=False
    )
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if config.tie_word_embeddings:
        assert exported.lm_head.weight.data_ptr() == exported.model.embed_tokens.weight.data_ptr()
    want, have = _logits(source_model), _logits(exported)
    if exact:
        assert torch.equal(want, have)
    else:
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
    assert want.abs().max() > 0


@pytest.mark.parametrize(("isa", "layout"), [("x86", "q4_0_8"), ("arm", "q4_0_4")])
def test_reader_undoes_ggml_repack(isa, layout):
    """The reader itself, against ggml: de-interleaving ggml's repack gives plain Q4_0 back."""
    from nntrainer_reader import ISA_Q4_0

    x = np.random.default_rng(3).standard_normal((24, 96)).astype(np.float32)
    plain = oracle.ggml_quantize(x, "q4_0")
    packed = oracle.ggml_repack(plain, layout)
    assert not np.array_equal(packed, plain)
    group, chunk = ISA_Q4_0[isa]
    np.testing.assert_array_equal(
        deinterleave_q4_0(packed.reshape(-1), 24, 96, group, chunk), plain
    )


# --------------------------------------------------------------------------------------------
# round trips


def test_qwen3_tied_f32_exact(sources, tmp_path):
    src = sources["qwen3_tied"]
    nntr, ref = nntr_from_source(tmp_path, src, {})
    out = tmp_path / "out"
    result = export_nntr(nntr, out)
    check_export(out, "x86", src, ref, exact=True)
    assert any("max_position_embeddings is 512" in w for w in result.plan.warnings)

    nntr_cfg = json.loads((out / "nntr_config.json").read_text())
    assert nntr_cfg["model_tensor_type"] == "FP32-FP32"
    assert nntr_cfg["fc_layer_dtype"] == "FP32" and nntr_cfg["embedding_dtype"] == "FP32"
    assert "lmhead_dtype" not in nntr_cfg
    assert nntr_cfg["tokenizer_file"] == str(out.resolve() / "tokenizer.json")
    assert Path(nntr_cfg["tokenizer_file"]).is_absolute()
    assert nntr_cfg["sample_input"].startswith("<|im_start|>user\n")
    for key, value in (  # the defaults 512/1024/2048, fitted to max_position_embeddings 512
        ("num_to_generate", 256),
        ("init_seq_len", 512),
        ("max_seq_len", 512),
        ("batch_size", 1),
        ("bad_word_ids", []),
    ):
        assert nntr_cfg[key] == value
    assert (out / nntr_cfg["model_file_name"]).stat().st_size == result.plan.nbytes

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_theta"] == 1000000 and isinstance(cfg["rope_theta"], int)
    assert cfg["tie_word_embeddings"] is True and "nntrtool" not in cfg
    assert cfg["architectures"] == ["Qwen3ForCausalLM"]
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 3] and gen["bos_token_id"] == 1 and gen["do_sample"] is True
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (out / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nntr", "out"]  # no leftovers


def test_qwen3_untied_q4_0_x86(sources, tmp_path):
    src = sources["qwen3_untied"]
    nntr, ref = nntr_from_source(tmp_path, src, {"linear": "q4_0", "lm_head": "q4_0"})
    out = tmp_path / "out"
    result = export_nntr(nntr, out, isa="x86")
    check_export(out, "x86", src, ref, exact=False)
    nntr_cfg = json.loads((out / "nntr_config.json").read_text())
    assert nntr_cfg["model_tensor_type"] == "Q4_0-FP32"
    assert (nntr_cfg["fc_layer_dtype"], nntr_cfg["embedding_dtype"], nntr_cfg["lmhead_dtype"]) == (
        "Q4_0",
        "FP32",
        "Q4_0",
    )
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    # the lm_head is the last tensor of the file, stored as ggml's 8x8 repack
    head = result.plan.tensors[-1]
    assert head.slot.name == "lm_head.weight" and head.out_type == "q4_0_8"
    blob = np.fromfile(result.weight_file, dtype=np.uint8)[-head.nbytes :]
    plain = oracle.ggml_quantize(
        load_file(str(src / "model.safetensors"))["lm_head.weight"], "q4_0"
    )
    np.testing.assert_array_equal(blob, oracle.ggml_repack(plain, "q4_0_8").reshape(-1))


def test_qwen3_tied_q4_0_q6_k_embedding_arm_from_other_layout(sources, tmp_path):
    src = sources["qwen3_tied"]
    nntr, ref = nntr_from_source(
        tmp_path, src, {"linear": "q4_0", "embedding": "q6_k"}, repack="q4_0_8"
    )
    out = tmp_path / "out"
    result = export_nntr(nntr, out, isa="arm")
    check_export(out, "arm", src, ref, exact=False)
    nntr_cfg = json.loads((out / "nntr_config.json").read_text())
    assert (nntr_cfg["fc_layer_dtype"], nntr_cfg["embedding_dtype"]) == ("Q4_0", "Q6_K")
    assert "lmhead_dtype" not in nntr_cfg
    kinds = {t.out_type for t in result.plan.tensors}
    assert kinds == {"f32", "q6_k", "q4_0_4"}
    # Q6_K embedding copied byte for byte at the start of the file
    emb = result.plan.tensors[0]
    blob = np.fromfile(result.weight_file, dtype=np.uint8)
    want = oracle.ggml_quantize(
        load_file(str(src / "model.safetensors"))["model.embed_tokens.weight"], "q6_k"
    )
    np.testing.assert_array_equal(blob[: emb.nbytes], want.reshape(-1))


def test_llama_untied_f32_layers_q6_k_embedding(sources, tmp_path):
    src = sources["llama_untied"]
    nntr, ref = nntr_from_source(tmp_path, src, {"embedding": "q6_k"})
    out = tmp_path / "out"
    export_nntr(nntr, out, isa="x86")
    check_export(out, "x86", src, ref, exact=False)
    nntr_cfg = json.loads((out / "nntr_config.json").read_text())
    assert nntr_cfg["model_tensor_type"] == "FP32-FP32"
    assert (nntr_cfg["fc_layer_dtype"], nntr_cfg["embedding_dtype"], nntr_cfg["lmhead_dtype"]) == (
        "FP32",
        "Q6_K",
        "FP32",
    )
    assert json.loads((out / "config.json").read_text())["rope_theta"] == 10000


def test_llama_untied_q4_0_arm_from_4x4(sources, tmp_path):
    src = sources["llama_untied"]
    nntr, ref = nntr_from_source(
        tmp_path, src, {"linear": "q4_0", "lm_head": "q4_0"}, repack="q4_0_4x4"
    )
    out = tmp_path / "out"
    export_nntr(nntr, out, isa="arm")
    check_export(out, "arm", src, ref, exact=False)


def test_llama_untied_f32_exact_and_options(sources, tmp_path):
    src = sources["llama_untied"]
    nntr, ref = nntr_from_source(tmp_path, src, {})
    out = tmp_path / "out"
    runtime = RuntimeOptions(
        num_to_generate=64,
        init_seq_len=128,
        max_seq_len=256,
        bad_word_ids=[5, 6],
        sample_input="hello",
        do_sample=False,
        model_file_name="weights.bin",
        tokenizer_file="/data/tok.json",
        eos_token_ids=[7],
        bos_token_id=9,
    )
    export_nntr(nntr, out, runtime=runtime)
    check_export(out, "x86", src, ref, exact=True)
    nntr_cfg = json.loads((out / "nntr_config.json").read_text())
    assert nntr_cfg["model_file_name"] == "weights.bin" and (out / "weights.bin").is_file()
    assert nntr_cfg["tokenizer_file"] == "/data/tok.json"
    assert (nntr_cfg["num_to_generate"], nntr_cfg["init_seq_len"], nntr_cfg["max_seq_len"]) == (
        64,
        128,
        256,
    )
    assert nntr_cfg["bad_word_ids"] == [5, 6] and nntr_cfg["sample_input"] == "hello"
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["bos_token_id"], gen["do_sample"]) == ([7], 9, False)
    assert gen["top_k"] == 20  # the rest of the source's generation config is kept


@pytest.mark.parametrize(
    "arch, max_positions, given, expected",
    [
        # nntrainer's Qwen3 computes RoPE for max_position_embeddings positions only: a run
        # that can reach min(init_seq_len + num_to_generate, max_seq_len) positions must fit
        ("qwen3_tied", 40960, RuntimeOptions(), (512, 1024, 2048)),
        ("qwen3_tied", 512, RuntimeOptions(64, 128, 256), (64, 128, 256)),
        ("qwen3_tied", 512, RuntimeOptions(128, 384, 4096), (128, 384, 4096)),
        ("qwen3_tied", 512, RuntimeOptions(400, 300, 1000), (400, 300, 512)),
        ("qwen3_tied", 256, RuntimeOptions(), (128, 256, 256)),
        ("qwen3_tied", 3, RuntimeOptions(), (1, 3, 3)),
        # Llama's class ignores the config and always builds 40960 positions
        ("llama_untied", 512, RuntimeOptions(), (512, 1024, 2048)),
    ],
)
def test_run_length_fits_the_rope_table(sources, tmp_path, arch, max_positions, given, expected):
    def set_max_positions(config, state):
        config["max_position_embeddings"] = max_positions

    nntr, _ = nntr_from_source(tmp_path, sources[arch], {}, mutate=set_max_positions)
    result = export_nntr(nntr, tmp_path / "out", runtime=given, dry_run=True)
    cfg = result.plan.nntr_config
    got = (cfg["num_to_generate"], cfg["init_seq_len"], cfg["max_seq_len"])
    assert got == expected
    RuntimeOptions(*got).validate()  # still settings the runtime accepts
    warned = [w for w in result.plan.warnings if "max_position_embeddings" in w]
    assert bool(warned) == (got != (given.num_to_generate, given.init_seq_len, given.max_seq_len))
    if arch.startswith("qwen3"):
        assert min(got[1] + got[0], got[2]) <= max_positions


def test_refuses_a_rope_table_too_short_for_any_run(sources, tmp_path):
    def one_position(config, state):
        config["max_position_embeddings"] = 1

    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {}, mutate=one_position)
    _refused(tmp_path, nntr, "max_position_embeddings 1, which leaves no room")


# --------------------------------------------------------------------------------------------
# what cannot be exported is refused before anything is written


def _refused(tmp_path: Path, nntr: Path, match: str, isa: str = "x86", error=UsageError) -> str:
    out = tmp_path / "out"
    with pytest.raises(error, match=match) as info:
        export_nntr(nntr, out, isa=isa)
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nntr"]
    return message


@pytest.mark.parametrize("linear", ["q6_k", "q8_0"])
def test_refuses_q6_k_and_q8_0_linear_layers(sources, tmp_path, linear):
    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {"linear": linear})
    message = _refused(
        tmp_path, nntr, f"is {linear}, but nntrainer reads f32, q4_0, q4_k or f16 linear"
    )
    assert "--quant-type q4_0" in message and "--keep-f32" in message
    assert "--linear-type q4_k" in message


@pytest.mark.parametrize("emb", ["q4_0", "q8_0"])
def test_refuses_an_embedding_not_f32_or_q6_k(sources, tmp_path, emb):
    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {"embedding": emb})
    message = _refused(tmp_path, nntr, f"model.embed_tokens.weight is {emb}")
    assert "embed_tokens=q6_k" in message


def test_refuses_a_q6_k_untied_head(sources, tmp_path):
    nntr, _ = nntr_from_source(tmp_path, sources["llama_untied"], {"lm_head": "q6_k"})
    _refused(tmp_path, nntr, "lm_head.weight is q6_k")


def test_refuses_mixed_linear_types(sources, tmp_path):
    nntr, _ = nntr_from_source(
        tmp_path, sources["qwen3_tied"], {"linear": "q4_0", r"layers\.1\.mlp\.down_proj": "f32"}
    )
    message = _refused(tmp_path, nntr, "linear layers mix q4_0 and f32")
    assert "model.layers.1.mlp.down_proj.weight" in message


def test_refuses_unknown_architecture(sources, tmp_path):
    def to_qwen2(config, state):
        config["architectures"] = ["Qwen2ForCausalLM"]

    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {}, mutate=to_qwen2)
    message = _refused(tmp_path, nntr, "no layout for architecture Qwen2ForCausalLM")
    assert "LlamaForCausalLM" in message and "Qwen3ForCausalLM" in message


def test_refuses_missing_and_unexpected_tensors(sources, tmp_path):
    def drop(config, state):
        del state["model.layers.1.mlp.down_proj.weight"]

    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {}, mutate=drop)
    _refused(tmp_path, nntr, "needs tensor model.layers.1.mlp.down_proj.weight")

    def bias(config, state):
        state["model.layers.0.self_attn.q_proj.bias"] = np.zeros(256, np.float32)

    nntr.unlink()
    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {}, mutate=bias)
    _refused(tmp_path, nntr, "has tensor model.layers.0.self_attn.q_proj.bias")

    def untie_without_head(config, state):
        config["tie_word_embeddings"] = False

    nntr.unlink()
    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {}, mutate=untie_without_head)
    _refused(tmp_path, nntr, "needs tensor lm_head.weight")


def test_refuses_shapes_that_disagree_with_the_config(sources, tmp_path):
    def more_layers(config, state):
        config["intermediate_size"] = 384

    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {}, mutate=more_layers)
    _refused(
        tmp_path,
        nntr,
        r"up_proj.weight has shape \[512, 256\], but the config implies \[384, 256\]",
    )


def test_q4_0_rows_must_divide_by_the_isa_group(tmp_path):
    # vocab 260: the untied Q4_0 head has 260 rows, a multiple of 4 (ARM) but not of 8 (x86)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 260,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }
    rng = np.random.default_rng(0)
    shapes = {
        "model.embed_tokens.weight": (260, 64),
        "model.norm.weight": (64,),
        "lm_head.weight": (260, 64),
        "model.layers.0.input_layernorm.weight": (64,),
        "model.layers.0.post_attention_layernorm.weight": (64,),
        **{f"model.layers.0.self_attn.{p}_proj.weight": (64, 64) for p in "qkvo"},
        "model.layers.0.mlp.up_proj.weight": (128, 64),
        "model.layers.0.mlp.gate_proj.weight": (128, 64),
        "model.layers.0.mlp.down_proj.weight": (64, 128),
    }
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    nntr = tmp_path / "model.nntr"
    write_nntr(nntr, cfg, state, {"linear": "q4_0", "lm_head": "q4_0"})
    message = _refused(tmp_path, nntr, "lm_head.weight: 260 output features do not divide by 8")
    assert "--isa arm" in message
    result = export_nntr(nntr, tmp_path / "arm", isa="arm", runtime=RuntimeOptions())
    assert result.plan.tensors[-1].out_type == "q4_0_4"
    assert read_folder(tmp_path / "arm", "arm").state_dict["lm_head.weight"].shape == (260, 64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"isa": "riscv"}, "unknown --isa 'riscv'"),
        ({"target": "llama.cpp"}, "unknown --target 'llama.cpp'"),
        (
            {"runtime": RuntimeOptions(init_seq_len=4096)},
            "--max-seq-len 2048 is below --init-seq-len 4096",
        ),
        (
            {"runtime": RuntimeOptions(num_to_generate=2048)},
            "--num-to-generate 2048 leaves no room",
        ),
        ({"runtime": RuntimeOptions(model_file_name="config.json")}, "--model-file-name"),
        ({"runtime": RuntimeOptions(batch_size=0)}, "--batch-size must be at least 1"),
    ],
)
def test_bad_options(sources, tmp_path, kwargs, match):
    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {})
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=re.escape(match)):
        export_nntr(nntr, out, **kwargs)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# output handling


def test_existing_output_needs_force_and_interrupts_leave_nothing(sources, tmp_path):
    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="pass --force"):
        export_nntr(nntr, out)
    with pytest.raises(UsageError, match="not an export folder"):
        export_nntr(nntr, out, force=True)  # a folder of the user's: never replaced
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "nntr_config.json").write_text("{}")  # an earlier export's marker

    class CtrlC:
        calls = 0

        def advance(self, n, current=None):
            self.calls += 1
            if self.calls == 5:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_nntr(nntr, out, force=True, progress=lambda *_: contextlib.nullcontext(CtrlC()))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "nntr_config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nntr", "out"]

    export_nntr(nntr, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "nntr_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nntr", "out"]


def test_without_a_source_folder_it_warns_and_still_exports(sources, tmp_path):
    config = json.loads((sources["qwen3_tied"] / "config.json").read_text())
    state = load_file(str(sources["qwen3_tied"] / "model.safetensors"))
    nntr = tmp_path / "model.nntr"
    write_nntr(nntr, config, state, {})
    result = export_nntr(nntr, tmp_path / "out")
    assert any("no tokenizer.json" in w for w in result.plan.warnings)
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2] and gen["bos_token_id"] == 1 and gen["do_sample"] is False
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    # --tokenizer names the folder explicitly
    export_nntr(nntr, tmp_path / "out2", source_dir=sources["qwen3_tied"])
    assert (tmp_path / "out2" / "tokenizer.json").is_file()


def test_progress_factory_is_opened_once_and_sees_every_parameter(sources, tmp_path):
    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {"embedding": "q6_k"})

    class Counter:
        done = 0

        def advance(self, n, current=None):
            self.done += n

    counter, opened = Counter(), []

    def factory(total, description):
        opened.append((total, description))
        return contextlib.nullcontext(counter)

    result = export_nntr(nntr, tmp_path / "out", progress=factory)
    assert opened == [(result.plan.params, f"export {nntr.name}")]
    assert counter.done == result.plan.params


def test_dry_run_writes_nothing(sources, tmp_path):
    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {"embedding": "q6_k"})
    result = export_nntr(nntr, tmp_path / "out", dry_run=True)
    assert result.dry_run and result.files == [] and not (tmp_path / "out").exists()
    names = [t.slot.name for t in result.plan.tensors]
    assert names[:4] == [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_norm.weight",
    ]
    assert names[-1] == "model.norm.weight" and len(names) == 1 + 2 * 11 + 1


# --------------------------------------------------------------------------------------------
# the command


def _run_cli(args: list[str]) -> int:
    from nntrtool.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


def test_cli_export_summary_and_errors(sources, tmp_path, capsys):
    nntr, ref = nntr_from_source(tmp_path, sources["qwen3_tied"], {"embedding": "q6_k"})
    out = tmp_path / "out"
    assert (
        _run_cli(
            [
                "export",
                str(nntr),
                str(out),
                "--isa",
                "arm",
                "--greedy",
                "--bad-word-ids",
                "4, 5",
                "--eos-token-id",
                "2",
                "--eos-token-id",
                "9",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "exported to" in captured.out and "q6_k" in captured.out
    assert f"nntr_causallm {out}" in captured.out
    nntr_cfg = json.loads((out / "nntr_config.json").read_text())
    assert nntr_cfg["bad_word_ids"] == [4, 5]
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 9] and gen["do_sample"] is False
    check_export(out, "arm", sources["qwen3_tied"], ref, exact=False)
    capsys.readouterr()

    assert _run_cli(["export", str(nntr), str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out} already exists: pass --force to overwrite it\n"

    assert _run_cli(["export", str(nntr), str(tmp_path / "x"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert (
        "model.layers.1.mlp.down_proj.weight" in captured.out
        and "nothing was written" in captured.out
    )
    assert not (tmp_path / "x").exists()

    assert _run_cli(["export", str(nntr), str(tmp_path / "y"), "--bad-word-ids", "a"]) == 2
    assert "--bad-word-ids" in capsys.readouterr().err

    assert _run_cli(["export", str(tmp_path / "missing.nntr"), str(tmp_path / "y")]) == 2
    assert "missing.nntr" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_error_types_are_nntr_errors():
    assert issubclass(OutputExistsError, NntrError) and issubclass(UsageError, NntrError)


def test_type_overrides_for_the_convert_shortcut():
    from nntrtool.export import nntrainer_type_overrides

    assert nntrainer_type_overrides("q4_0", {"hidden_size": 1024}) == ("embed_tokens=q6_k",)
    assert nntrainer_type_overrides("Q4_0", {"hidden_size": 896}) == ("embed_tokens=f32",)
    assert nntrainer_type_overrides("f32", {"hidden_size": 896}) == ()
    for qt in ("q6_k", "q8_0"):
        with pytest.raises(UsageError, match="use --quant-type q4_0"):
            nntrainer_type_overrides(qt, {"hidden_size": 1024})


# --------------------------------------------------------------------------------------------
# end to end through the real convert


def _reference_from_nntr(path: Path) -> dict[str, np.ndarray]:
    """What the NNTR file holds, dequantized by the project's own kernels."""
    from nntrtool.format import NntrFile
    from nntrtool.quant import dequantize, unpack

    out = {}
    with NntrFile(path) as nf:
        for t in nf.tensors:
            if t.ttype is F32:
                out[t.name] = np.array(nf.array(t.name))
                continue
            data = nf.array(t.name)
            if t.ttype is Q4_0_REPACKED:
                data = unpack(data, t.layout)
            base = Q4_0 if t.ttype is Q4_0_REPACKED else t.ttype
            out[t.name] = dequantize(data, base, t.shape).reshape(t.shape)
    return out


def test_convert_then_export_follows_the_refusal_hint(sources, tmp_path, capsys):
    src = sources["qwen3_untied"]
    plain = tmp_path / "default.nntr"
    assert _run_cli(["convert", str(src), str(plain), "--quiet"]) == 0
    assert _run_cli(["export", str(plain), str(tmp_path / "no"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.embed_tokens.weight is q4_0" in err and not (tmp_path / "no").exists()

    # the options the message names give an exportable file
    hinted = tmp_path / "hinted.nntr"
    args = [
        "convert",
        str(src),
        str(hinted),
        "--quant-type",
        "q4_0",
        "--type",
        "embed_tokens=q6_k",
        "--repack-format",
        "q4_0_8",
        "--quiet",
    ]
    assert "--quant-type q4_0 --type 'embed_tokens=q6_k'" in err
    assert _run_cli(args) == 0
    out = tmp_path / "out"
    assert _run_cli(["export", str(hinted), str(out), "--isa", "arm", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    check_export(out, "arm", src, _reference_from_nntr(hinted), exact=False)
    nntr_cfg = json.loads((out / "nntr_config.json").read_text())
    assert (nntr_cfg["embedding_dtype"], nntr_cfg["lmhead_dtype"]) == ("Q6_K", "Q4_0")
    # the tokenizer came from the source recorded by convert
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()


def test_small_chunks_write_the_same_bytes(sources, tmp_path):
    """Banded transposes, row-chunked repacks and chunked copies give the one-piece result."""
    src = sources["qwen3_untied"]
    nntr, ref = nntr_from_source(
        tmp_path, src, {"linear": "q4_0", "embedding": "q6_k"}, repack="q4_0_4x4"
    )
    whole = export_nntr(nntr, tmp_path / "whole", isa="arm")
    kinds = {(t.out_type, t.transposed) for t in whole.plan.tensors}
    assert {("f32", True), ("q4_0_4", False), ("q6_k", False)} <= kinds
    small = export_nntr(nntr, tmp_path / "small", isa="arm", chunk_bytes=3000)
    assert whole.weight_file.read_bytes() == small.weight_file.read_bytes()
    check_export(tmp_path / "small", "arm", src, ref, exact=False)


def test_force_never_replaces_a_folder_holding_the_inputs(sources, tmp_path):
    src = sources["qwen3_tied"]
    config = json.loads((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    inner = tmp_path / "work"
    inner.mkdir()
    nntr = inner / "model.nntr"
    write_nntr(nntr, config, state, {})
    with pytest.raises(UsageError, match="is inside .* which --force would replace"):
        export_nntr(nntr, inner, force=True)
    assert nntr.is_file()
    # nor the folder the tokenizer comes from (here, the Hugging Face source itself)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    with pytest.raises(UsageError, match="which --force would replace"):
        export_nntr(nntr, tok, force=True, source_dir=tok)
    assert (tok / "tokenizer.json").is_file()


def test_config_fixups_and_warnings(sources, tmp_path):
    def llama3_rope(config, state):
        config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
        config["sliding_window"] = 4096
        config["use_sliding_window"] = False

    nntr, _ = nntr_from_source(tmp_path, sources["qwen3_tied"], {}, mutate=llama3_rope)
    result = export_nntr(nntr, tmp_path / "out")
    assert any("'llama3' RoPE scaling" in w for w in result.plan.warnings)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["rope_theta"] == 500000 and cfg["sliding_window"] is None


def test_convert_target_nntrainer_is_convert_then_export(sources, tmp_path, capsys):
    """`convert --target nntrainer` gives the folder that convert + export give, and no leftovers."""
    src = sources["qwen3_untied"]
    short = tmp_path / "short"
    assert _run_cli(["convert", str(src), str(short), "--target", "nntrainer", "--isa", "arm"]) == 0
    out = capsys.readouterr().out
    assert f"exported to {short}" in out and "embedding Q6_K" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short"]  # temporary NNTR file gone

    nntr = tmp_path / "long.nntr"
    assert _run_cli(["convert", str(src), str(nntr), "--type", "embed_tokens=q6_k", "--quiet"]) == 0
    long = tmp_path / "long"
    assert _run_cli(["export", str(nntr), str(long), "--isa", "arm", "--quiet"]) == 0
    assert (short / "short-q4_0-arm.bin").read_bytes() == (long / "long-q4_0-arm.bin").read_bytes()
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (short / name).read_bytes() == (long / name).read_bytes()
    a, b = (json.loads((d / "nntr_config.json").read_text()) for d in (short, long))
    for key in ("model_file_name", "tokenizer_file"):
        a.pop(key), b.pop(key)
    assert a == b
    check_export(short, "arm", src, _reference_from_nntr(nntr), exact=False)

    # a type the runtime cannot run is refused before anything is written
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert (
        _run_cli(["convert", str(src), str(bad), "--target", "nntrainer", "--quant-type", "q6_k"])
        == 2
    )
    assert "use --quant-type q4_0" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long", "long.nntr", "short"]
