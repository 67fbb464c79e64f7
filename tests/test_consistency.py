"""Configs that contradict their tensors are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from faults import listing, one_line, run_cli, snapshot
from models import write_safetensors

from nntrtool.errors import SourceError
from nntrtool.sources import open_source
from nntrtool.synthetic import make_synthetic_model

DIMS = dict(hidden=128, intermediate=256, vocab=256, layers=2, heads=4, kv_heads=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_synthetic_model(tmp_path_factory.mktemp("cfg") / "m", dtype="bf16", **DIMS)


def _with_config(model: Path, folder: Path, **changes) -> Path:
    folder.mkdir()
    for f in model.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_the_synthetic_model_is_consistent(model):
    with open_source(model) as src:
        assert src.tensors


@pytest.mark.parametrize(
    ("change", "label"),
    [
        ({"hidden_size": 256}, "hidden_size = 256"),
        ({"intermediate_size": 512}, "intermediate_size = 512"),
        ({"vocab_size": 300}, "vocab_size = 300"),
        ({"num_attention_heads": 8, "head_dim": 32}, "num_attention_heads x head_dim = 256"),
        ({"num_key_value_heads": 4}, "num_key_value_heads x head_dim = 128"),
        ({"num_hidden_layers": 3}, "num_hidden_layers = 3"),
        ({"num_hidden_layers": 1}, "num_hidden_layers = 1"),
    ],
)
def test_a_config_that_contradicts_its_tensors_is_refused(model, tmp_path, change, label):
    folder = _with_config(model, tmp_path / "m", **change)
    with pytest.raises(SourceError) as err:
        open_source(folder).close()
    line = str(err.value)
    assert label in line and "\n" not in line and "--config" in line


def test_cli_refuses_before_writing(model, tmp_path):
    folder = _with_config(model, tmp_path / "m", hidden_size=64)
    before = snapshot(model)
    proc = run_cli("convert", folder, tmp_path / "o.nntr")
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert "hidden_size = 64" in line and "model.embed_tokens.weight" in line
    assert listing(tmp_path) == ["m"] and snapshot(model) == before


def _moe_folder(folder: Path, config_experts: int, stored: int, top_k: int = 2) -> Path:
    folder.mkdir()
    cfg = {
        "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 32,
        "intermediate_size": 64, "moe_intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 8,
        "num_experts": config_experts, "num_experts_per_tok": top_k,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    tensors = {"model.embed_tokens.weight": np.zeros((8, 32), np.float32)}
    tensors["model.layers.0.mlp.gate.weight"] = np.zeros((stored, 32), np.float32)
    for e in range(stored):
        for proj, shape in (
            ("gate_proj", (16, 32)),
            ("up_proj", (16, 32)),
            ("down_proj", (32, 16)),
        ):
            tensors[f"model.layers.0.mlp.experts.{e}.{proj}.weight"] = np.zeros(shape, np.float32)
    write_safetensors(folder / "model.safetensors", tensors)
    return folder


def test_moe_expert_count_and_top_k_are_checked(tmp_path):
    with open_source(_moe_folder(tmp_path / "ok", 4, 4)) as src:
        assert src.tensors
    with pytest.raises(
        SourceError, match=r"num_experts = 8 but tensor model\.layers\.0\.mlp\.gate"
    ):
        open_source(_moe_folder(tmp_path / "twice", 8, 4))
    with pytest.raises(SourceError, match="num_experts_per_tok = 5 with 4 experts"):
        open_source(_moe_folder(tmp_path / "topk", 4, 4, top_k=5))


def test_mxfp4_scales_in_float32_are_refused(tmp_path):
    folder = tmp_path / "gpt"
    folder.mkdir()
    cfg = {
        "model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"], "num_local_experts": 2,
        "hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 8,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    write_safetensors(
        folder / "model.safetensors",
        {
            "model.layers.0.mlp.experts.down_proj_blocks": np.zeros((2, 32, 1, 16), np.uint8),
            "model.layers.0.mlp.experts.down_proj_scales": np.full((2, 32, 1), 127, np.float32),
        },
    )
    proc = run_cli("convert", folder, tmp_path / "o.nntr")
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert "down_proj_scales is F32, expected U8" in line
    assert listing(tmp_path) == ["gpt"]
