"""Every model family the real way round: a tiny random Hugging Face model, written to GGUF by
llama.cpp's own ``convert_hf_to_gguf.py`` (pinned, see ``llama_cpp_converter.py``), read back by
nntrtool, must give exactly what the checkpoint gives: the same tensor names, shapes and values
(F32 GGUF: equal; F16 GGUF: equal to the checkpoint's values in F16), the same config keys, the
same NNTR file; and where transformers' own GGUF loading reads the file, it reads the same.

Norm weights are set to random multiples of 1/1024 (transformers initialises many of them to 1
or 0), so that a norm offset that is not undone, or undone twice, shows; ``(w + 1) - 1`` is
exact for such values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nntrtool.architectures import families, for_config, for_gguf, ops
from nntrtool.sources import open_source

SMALL = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
#: Config keys every llama-style family's GGUF carries.
BASE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "vocab_size",
    "tie_word_embeddings",
)
GEMMA = dict(SMALL, head_dim=16, query_pre_attn_scalar=16)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass(frozen=True)
class Case:
    model_type: str
    config: dict[str, Any]
    #: Config keys the rebuilt config must give as the checkpoint's config.json does.
    keys: tuple[str, ...]
    #: Whether transformers' GGUF loading reads this family (see the module text).
    transformers_reads: bool = True
    extra_files: dict[str, Any] = field(default_factory=dict)


CASES = {
    "llama": Case("llama", dict(SMALL, head_dim=16), (*BASE_KEYS, "rms_norm_eps", "head_dim")),
    # Llama 3.1's RoPE scaling, which llama.cpp stores as a rope_freqs tensor: the published
    # parameters, and others read off the tensor's values (a head size of 64 gives enough).
    "llama3": Case(
        "llama",
        dict(SMALL, head_dim=16, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE),
        (*BASE_KEYS, "rope_parameters"),
    ),
    "llama3_fitted": Case(
        "llama",
        dict(
            SMALL,
            hidden_size=128,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
            rope_theta=500000.0,
            rope_scaling=dict(LLAMA3_ROPE, factor=16.0, original_max_position_embeddings=4096),
        ),
        (*BASE_KEYS, "rope_parameters"),
    ),
    "mistral": Case("mistral", dict(SMALL, head_dim=16), (*BASE_KEYS, "rms_norm_eps")),
    "qwen2": Case("qwen2", dict(SMALL), (*BASE_KEYS, "rms_norm_eps")),
    # transformers 5 reads neither expert size from a qwen2moe GGUF: its model is built at the
    # default sizes (kept here) and takes the shared expert's gate as [1, 1, hidden].
    "qwen2moe": Case(
        "qwen2_moe",
        dict(SMALL, num_experts=4, num_experts_per_tok=2),
        (
            *BASE_KEYS,
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
        ),
        transformers_reads=False,
    ),
    # transformers 5 reads no head size from a qwen3 GGUF, nor the experts' from a qwen3moe one:
    # the models keep transformers' defaults (head_dim 128, moe_intermediate_size 768).
    "qwen3": Case("qwen3", dict(SMALL), (*BASE_KEYS, "rms_norm_eps", "head_dim")),
    "qwen3moe": Case(
        "qwen3_moe",
        dict(SMALL, num_experts=4, num_experts_per_tok=2),
        (*BASE_KEYS, "num_experts", "num_experts_per_tok", "moe_intermediate_size", "head_dim"),
    ),
    # transformers 5 has no GGUF loading for Gemma (1).
    "gemma": Case(
        "gemma",
        dict(GEMMA),
        (*BASE_KEYS, "head_dim", "rms_norm_eps", "hidden_act", "rope_parameters"),
        transformers_reads=False,
    ),
    "gemma2": Case(
        "gemma2",
        dict(GEMMA, sliding_window=32, attn_logit_softcapping=40.0, final_logit_softcapping=20.0),
        (
            *BASE_KEYS,
            "head_dim",
            "sliding_window",
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "query_pre_attn_scalar",
            "layer_types",
            "hidden_activation",
            "rope_parameters",
        ),
    ),
    "gemma3": Case(
        "gemma3_text",
        dict(GEMMA, num_hidden_layers=7, sliding_window=32, final_logit_softcapping=25.0),
        (
            *BASE_KEYS,
            "head_dim",
            "sliding_window",
            "final_logit_softcapping",
            "query_pre_attn_scalar",
            "layer_types",
            "hidden_activation",
            "rope_parameters",
        ),
        extra_files={"tokenizer.json": {"model": {"vocab": {}}, "added_tokens": []}},
    ),
    "phi3": Case(
        "phi3",
        dict(SMALL),
        (*BASE_KEYS, "rms_norm_eps", "rope_parameters", "original_max_position_embeddings"),
    ),
    # Phi-3 128k: LongRoPE factors (multiples of 1/64, exact in float32), which llama.cpp
    # stores as tensors, back in rope_parameters.
    "phi3_longrope": Case(
        "phi3",
        dict(
            SMALL,
            original_max_position_embeddings=64,
            rope_scaling={
                "type": "longrope",
                "long_factor": [1 + i / 64 for i in range(8)],
                "short_factor": [1 - i / 64 for i in range(8)],
            },
        ),
        (*BASE_KEYS, "rms_norm_eps", "rope_parameters", "original_max_position_embeddings"),
    ),
    "starcoder2": Case("starcoder2", dict(SMALL), (*BASE_KEYS, "norm_epsilon")),
    "gpt_oss": Case(
        "gpt_oss",
        dict(
            SMALL,
            head_dim=16,
            intermediate_size=64,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=32,
        ),
        (
            *BASE_KEYS,
            "head_dim",
            "rms_norm_eps",
            "num_local_experts",
            "num_experts_per_tok",
            "sliding_window",
            "layer_types",
            "rope_parameters",
        ),
        transformers_reads=False,  # transformers 5's GGUF loader fails on its expert tensors
    ),
    "gpt2": Case(
        "gpt2",
        # transformers 5 reads the GGUF's context length into n_ctx, not n_positions: the
        # default 1024 is kept for both.
        dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=1024, n_ctx=1024),
        ("n_embd", "n_layer", "n_head", "n_positions", "layer_norm_epsilon", "vocab_size"),
    ),
}


def test_every_family_module_has_a_case_or_is_refused():
    readable = {f.name for f in families() if f.reads_gguf}
    assert readable <= set(CASES)
    assert {f.name for f in families()} - readable == {"mistral"}


@pytest.fixture(scope="session")
def hf_to_gguf():
    """The folder of llama.cpp's ``convert_hf_to_gguf.py`` (not conftest's ``llama_cpp``, the
    built tools)."""
    import llama_cpp_converter

    try:
        return llama_cpp_converter.converter()
    except RuntimeError as err:
        pytest.skip(f"llama.cpp's convert_hf_to_gguf.py cannot be had: {err}")


def _randomize_norms(model: Any, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.copy_(torch.randint(-512, 512, p.shape, generator=gen).float() / 1024)


def _make_model(case: Case, folder: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(case.model_type, **case.config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    _randomize_norms(model, 1)
    model.save_pretrained(folder)
    vocab = cfg.vocab_size
    for name, content in case.extra_files.items():
        if name == "tokenizer.json":  # Gemma 3's converter counts the real vocabulary here
            content = dict(content, model={"vocab": {f"<t{i}>": i for i in range(vocab)}})
        (folder / name).write_text(json.dumps(content))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory, hf_to_gguf):
    """``built(family, outtype) -> (hf folder, gguf path)``, each made once."""
    import llama_cpp_converter

    made: dict[tuple[str, str], tuple[Path, Path]] = {}

    def build(name: str, outtype: str = "f32") -> tuple[Path, Path]:
        if (name, outtype) not in made:
            root = tmp_path_factory.mktemp(name)
            hf = _make_model(CASES[name], root / "hf")
            gguf_path = root / f"{name}-{outtype}.gguf"
            llama_cpp_converter.convert_hf(hf_to_gguf, hf, gguf_path, outtype)
            made[name, outtype] = hf, gguf_path
        return made[name, outtype]

    return build


@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("name", list(CASES))
def test_gguf_reads_back_as_its_checkpoint(name, outtype, built):
    hf, gguf_path = built(name, outtype)
    with open_source(hf) as want, open_source(gguf_path) as got:
        ref = {t.name: t for t in want.tensors}
        out = {t.name: t for t in got.tensors}
        assert sorted(out) == sorted(ref)
        for n, t in ref.items():
            assert out[n].shape == t.shape, n
            a, b = t.read_f32(), out[n].read_f32()
            if outtype == "f32" or np.array_equal(a, b):
                np.testing.assert_array_equal(b, a, err_msg=n)
            else:  # the converter stored it in F16
                np.testing.assert_array_equal(b, a.astype(np.float16).astype(np.float32), n)
        hf_config = json.loads((hf / "config.json").read_text())
        config = got.config
        assert config["model_type"] == for_gguf(got.origin["gguf_architecture"]).model_type
        for key in CASES[name].keys:
            if key in hf_config:
                want = hf_config[key]
                if key == "rope_parameters":  # "type": the legacy spelling of rope_type
                    want = {k: v for k, v in want.items() if k != "type"}
                assert config.get(key) == want, key


def _convert(src: Path, out: Path) -> None:
    from nntrtool.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(["convert", str(src), str(out), "--quant-type", "keep", "-q"])
    assert done.value.code == 0


@pytest.mark.parametrize("name", ["llama", "gemma3", "qwen3moe", "gpt2", "gpt_oss"])
def test_nntr_from_the_gguf_equals_nntr_from_the_checkpoint(name, built, tmp_path):
    from nntrtool.format import NntrFile

    hf, gguf_path = built(name)
    _convert(hf, tmp_path / "hf.nntr")
    _convert(gguf_path, tmp_path / "gguf.nntr")
    with NntrFile(tmp_path / "hf.nntr") as a, NntrFile(tmp_path / "gguf.nntr") as b:
        # A GGUF's tensors are stored in name order, which is a single-file checkpoint's order;
        # GPT-OSS's fused checkpoint tensors are split where they stand, so only the set agrees.
        if name == "gpt_oss":
            assert sorted(a.names) == sorted(b.names)
        else:
            assert a.names == b.names
        for n in a.names:
            assert a.tensor(n).ttype == b.tensor(n).ttype, n
            assert np.array_equal(a.raw(n), b.raw(n)), n


@pytest.mark.parametrize("name", ["gemma2", "gpt2", "llama"])
def test_verify_against_the_gguf_shows_zero_error(name, built, tmp_path):
    from nntrtool.verify import verify

    _, gguf_path = built(name)
    _convert(gguf_path, tmp_path / "m.nntr")
    report = verify(tmp_path / "m.nntr", gguf_path)
    assert report.tensors and all(r.ok for r in report.tensors)
    assert all(r.max_abs_err == 0 for r in report.tensors if r.max_abs_err is not None)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.transformers_reads])
def test_transformers_reads_the_gguf_as_nntrtool_does(name, built):
    import torch
    from transformers import AutoModelForCausalLM

    hf, gguf_path = built(name)
    theirs = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    state = theirs.state_dict()
    ref = AutoModelForCausalLM.from_pretrained(hf).state_dict()
    for key, value in ref.items():
        assert torch.equal(state[key], value), key
    with open_source(gguf_path) as got:  # and nntrtool reads the same values
        for t in got.tensors:
            if t.name in state and tuple(state[t.name].shape) == t.shape:
                np.testing.assert_array_equal(t.read_f32().reshape(t.shape), state[t.name].numpy())


def test_gemma_norms_lose_llama_cpps_offset(built):
    hf, gguf_path = built("gemma2")
    with open_source(hf) as want, open_source(gguf_path) as got:
        ref = {t.name: t for t in want.tensors}
        norms = [t for t in got.tensors if t.name.endswith("norm.weight")]
        assert len(norms) == 1 + 4 * 2
        for t in norms:
            raw = t.inputs[0].read_f32()  # what the GGUF holds: w + 1
            np.testing.assert_array_equal(raw, ops.add_offset(ref[t.name].read_f32(), 1.0))


def test_gguf_families_found_from_checkpoint_configs(built):
    for name in ("llama", "gemma3", "gpt2", "qwen2moe"):
        hf, gguf_path = built(name)
        config = json.loads((hf / "config.json").read_text())
        family = for_config(config)
        assert family is not None and family.name == name
        with open_source(gguf_path) as got:
            assert got.origin["gguf_architecture"] == family.gguf_arch


@pytest.mark.parametrize("name", ["gpt2", "gemma3", "llama", "qwen2moe", "phi3", "gpt_oss"])
def test_q8_0_gguf_reads_back_within_q8_0_and_verifies_exactly(name, built, tmp_path):
    """A quantized GGUF: the same names and shapes; values the checkpoint's within Q8_0's error
    (whole blocks are moved, transposed ones dequantized first); a lossless conversion verified
    against the GGUF shows exactly zero error, transforms included."""
    from nntrtool.verify import verify

    hf, gguf_path = built(name, "q8_0")
    with open_source(hf) as want, open_source(gguf_path) as got:
        ref = {t.name: t for t in want.tensors}
        out = {t.name: t for t in got.tensors}
        assert sorted(out) == sorted(ref)
        quantized = 0
        for n, t in ref.items():
            a, b = t.read_f32(), out[n].read_f32()
            assert b.shape == a.shape, n
            # within a Q8_0 step of the tensor's largest value (blocks may run along columns)
            assert np.abs(b - a).max() <= np.abs(a).max() / 127 + 1e-7, n
            quantized += not np.array_equal(a, b)
        assert quantized > 0
    _convert(gguf_path, tmp_path / "m.nntr")
    report = verify(tmp_path / "m.nntr", gguf_path)
    assert report.tensors and all(r.ok for r in report.tensors)
    assert all(r.max_abs_err == 0 for r in report.tensors if r.max_abs_err is not None)


def test_mxfp4_gpt_oss_gguf_converts_to_the_checkpoints_bytes(hf_to_gguf, tmp_path):
    """A GPT-OSS checkpoint packed in MXFP4: llama.cpp repacks its experts as ggml MXFP4 blocks;
    read back, they are the checkpoint's blocks again, stored as the same exact Q8_0 blocks."""
    import llama_cpp_converter

    from nntrtool.format import NntrFile
    from nntrtool.synthetic_moe import make_synthetic_moe, moe_shape

    hf = make_synthetic_moe(
        tmp_path / "hf", moe_shape("gpt_oss", 1e6, experts=4, hidden=64, inter=64, mxfp4=True)
    )
    gguf_path = llama_cpp_converter.convert_hf(hf_to_gguf, hf, tmp_path / "oss.gguf")
    with open_source(gguf_path) as got:
        experts = [t for t in got.tensors if ".experts." in t.name and t.name.endswith("weight")]
        assert experts and all(t.inputs[0].dtype == "MXFP4" for t in experts)
    for src, out in ((hf, "hf.nntr"), (gguf_path, "gguf.nntr")):
        from nntrtool.cli.app import main

        with pytest.raises(SystemExit) as done:
            main(["convert", str(src), str(tmp_path / out), "--quant-type", "q4_0", "-q"])
        assert done.value.code == 0
    with NntrFile(tmp_path / "hf.nntr") as a, NntrFile(tmp_path / "gguf.nntr") as b:
        assert sorted(a.names) == sorted(b.names)
        for n in a.names:
            assert a.tensor(n).ttype == b.tensor(n).ttype, n
            assert np.array_equal(a.raw(n), b.raw(n)), n
        assert {a.tensor(n).ttype.name for n in a.names if ".experts." in n and "weight" in n} == {
            "q8_0"
        }
