"""Model sources over real Hugging Face layouts (built with transformers), the synthetic model
builder, and the built-in example."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from models import (
    ODD,
    ODD_ROWS,
    Q6K,
    TINY,
    reference_tensors,
)

from nntrtool.sources import open_source
from nntrtool.synthetic import LlamaShape, make_synthetic_model

ROOT = Path(__file__).resolve().parents[1]


def _state_dict_shapes(arch: str, tie: bool | None, dims: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes transformers itself gives the model (the layout the source must show)."""
    import torch
    from models import hf_config
    from transformers import AutoModelForCausalLM

    config = hf_config(arch, tie=tie, **{**TINY, **dims})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _check_against_reference(folder: Path, expected_dtype: str) -> None:
    ref = reference_tensors(folder)
    with open_source(folder) as src:
        assert sorted(src.names) == sorted(ref)
        for t in src.tensors:
            assert t.dtype == expected_dtype
            assert t.shape == ref[t.name].shape
            got = t.read_f32()
            np.testing.assert_array_equal(got, ref[t.name].reshape(t.rows, t.cols))
            if t.rows >= 4:
                half = t.rows // 2
                np.testing.assert_array_equal(t.read_f32(half, t.rows), got[half:])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma"])
def test_real_layouts_read_back_exactly(hf_model, arch):
    folder = hf_model(arch, dtype="bf16")
    with open_source(folder) as src:
        expect = _state_dict_shapes(arch, None, {})
        assert {t.name: t.shape for t in src.tensors} == expect
        tied = src.config["tie_word_embeddings"]
        assert tied is (arch == "gemma")
        assert ("lm_head.weight" in src) is (not tied)
        if arch == "qwen2":
            assert src.tensor("model.layers.0.self_attn.q_proj.bias").shape == (64,)
        if arch == "qwen3":
            assert src.tensor("model.layers.1.self_attn.k_norm.weight").shape == (16,)
    _check_against_reference(folder, "BF16")


@pytest.mark.parametrize("dtype, st", [("f32", "F32"), ("f16", "F16")])
def test_dtypes(hf_model, dtype, st):
    _check_against_reference(hf_model("qwen2", dtype=dtype, tie=True), st)


def test_sharded_safetensors(hf_model):
    folder = hf_model("llama", dtype="bf16", shard_size="60KB")
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    assert (folder / "model.safetensors.index.json").is_file()
    _check_against_reference(folder, "BF16")


@pytest.mark.parametrize("shard_size", [None, "60KB"])
def test_pickle_checkpoints(hf_model, shard_size):
    folder = hf_model("llama", dtype="bf16", checkpoint=True, shard_size=shard_size)
    bins = sorted(p.name for p in folder.glob("*.bin"))
    assert bins == ["pytorch_model.bin"] if shard_size is None else len(bins) > 1
    with open_source(folder) as src:
        assert src.origin["kind"] == "folder"
        assert src.tensor("model.embed_tokens.weight").read(0, 2).dtype == np.uint16
        assert not src.tensor("model.norm.weight").read().flags.writeable
    _check_against_reference(folder, "BF16")


def test_q6k_and_odd_presets_have_the_promised_shapes(hf_model):
    with open_source(hf_model("llama", **Q6K)) as src:
        mats = [t for t in src.tensors if t.ndim == 2]
        assert mats and all(t.cols % 256 == 0 and t.rows % 8 == 0 for t in mats)
    with open_source(hf_model("llama", **ODD)) as src:
        mats = [t for t in src.tensors if t.ndim == 2]
        assert all(t.rows % 8 == 0 for t in mats)
        assert {t.cols for t in mats} == {72, 200}
    with open_source(hf_model("llama", **ODD_ROWS)) as src:
        assert src.tensor("model.embed_tokens.weight").rows == 500


def test_builds_are_reproducible(tmp_path):
    from models import make_hf_model

    a = make_hf_model(tmp_path / "a", "qwen3", dtype="bf16", seed=3)
    b = make_hf_model(tmp_path / "b", "qwen3", dtype="bf16", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


# ---- synthetic models -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_synthetic_model_layout_and_values(tmp_path, dtype):
    folder = make_synthetic_model(
        tmp_path / "s", 3_000_000, dtype=dtype, hidden=256, vocab=1024, intermediate=1024,
        kv_heads=4, at_least=False, norm_spread=0.0,
    )  # fmt: skip
    cfg = json.loads((folder / "config.json").read_text())
    with open_source(folder) as src:
        assert abs(src.params - 3_000_000) / 3_000_000 < 0.15
        expect = LlamaShape(hidden=256, intermediate=1024, vocab=1024, layers=cfg["num_hidden_layers"],
                            heads=4, kv_heads=4).tensors()  # fmt: skip
        assert [(t.name, t.shape) for t in src.tensors] == expect
        w = src.tensor("model.layers.0.mlp.up_proj.weight").read_f32()
        assert (
            np.isfinite(w).all() and 0.018 < float(w.std()) < 0.022 and abs(float(w.mean())) < 1e-3
        )
        np.testing.assert_array_equal(src.tensor("model.norm.weight").read_f32(), 1.0)
    ref = reference_tensors(folder)
    with open_source(folder) as src:
        np.testing.assert_array_equal(
            src.tensor("lm_head.weight").read_f32(), ref["lm_head.weight"]
        )


def test_synthetic_model_shards_and_tie(tmp_path):
    folder = make_synthetic_model(
        tmp_path / "s", layers=4, hidden=128, vocab=256, intermediate=512, kv_heads=2, tie=True,
        shards=3,
    )  # fmt: skip
    assert len(list(folder.glob("model-*.safetensors"))) == 3
    with open_source(folder) as src:
        assert "lm_head.weight" not in src
        assert len(src) == 2 + 4 * 9
        assert src.config["tie_word_embeddings"] is True


@pytest.mark.slow
def test_synthetic_model_streams_a_large_model(tmp_path):
    import time
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    folder = make_synthetic_model(
        tmp_path / "big", 100_000_000, hidden=1024, vocab=32000, intermediate=4096, kv_heads=16,
        at_least=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (folder / "model.safetensors").stat().st_size > 190_000_000
    # written from a fixed pool, never held whole: memory stays far below the 200 MB written
    assert peak < 64 << 20, peak
    assert elapsed < 30, elapsed


# ---- built-in example -------------------------------------------------------------------

EXAMPLE = ROOT / "examples" / "tiny-llama"


def test_example_is_small_and_fits_every_layout(example_model):
    assert example_model == EXAMPLE
    assert (EXAMPLE / "model.safetensors").stat().st_size < 1_000_000
    with open_source(EXAMPLE) as src:
        assert src.config["model_type"] == "llama"
        assert 100_000 < src.params < 500_000
        mats = [t for t in src.tensors if t.ndim == 2]
        assert all(t.dtype == "BF16" for t in src.tensors)
        assert all(t.cols % 256 == 0 and t.rows % 8 == 0 for t in mats)
        w = np.concatenate([t.read_f32().ravel() for t in mats])
        assert 0.018 < float(w.std()) < 0.022


def test_example_regenerates_byte_for_byte(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_tiny_model.py"), str(tmp_path / "gen")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "gen" / name).read_bytes() == (EXAMPLE / name).read_bytes(), name


def test_example_loads_in_transformers_without_missing_weights():
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(EXAMPLE), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    logits = model(torch.tensor([[1, 7, 42]])).logits
    assert logits.shape == (1, 3, 256) and torch.isfinite(logits).all()
    n = sum(math.prod(p.shape) for p in model.parameters())
    with open_source(EXAMPLE) as src:
        assert n == src.params
