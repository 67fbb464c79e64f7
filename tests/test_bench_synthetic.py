"""nntrtool.synthetic: Llama-style model folders of a chosen size, read back by independent readers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from safetensors import safe_open

from nntrtool.errors import UsageError
from nntrtool.synthetic import make_synthetic_model, synthetic_shape


def _read_all(folder):
    """Every tensor of a safetensors model folder, read with the safetensors library (torch)."""
    torch = pytest.importorskip("torch")
    index = folder / "model.safetensors.index.json"
    files = (
        sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
        if index.exists()
        else [folder / "model.safetensors"]
    )
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                out[name] = st.get_tensor(name)
    return out, torch


@pytest.mark.parametrize("n", [1e6, 2e7, 1e8, 1e9, 7e9])
def test_shape_reaches_the_size_with_block_friendly_dimensions(n):
    shape = synthetic_shape(n)
    assert shape.n_params >= n
    # the last layer is the only overshoot
    smaller = (
        synthetic_shape(layers=shape.layers - 1, hidden=shape.hidden) if shape.layers > 1 else None
    )
    if smaller is not None:
        assert smaller.n_params < n
    for name, dims in shape.tensors():
        if len(dims) == 2:
            assert dims[1] % 256 == 0 and dims[0] % 8 == 0, (name, dims)


def test_one_billion_looks_like_a_small_llama():
    shape = synthetic_shape(1e9)
    assert (shape.hidden, shape.intermediate, shape.vocab) == (2048, 5632, 32000)
    assert 1e9 <= shape.n_params < 1.1e9
    assert shape.heads == 32 and shape.kv_heads == 8


def test_explicit_dimensions_win():
    shape = synthetic_shape(
        hidden=512, intermediate=1024, vocab=1000, layers=3, heads=8, kv_heads=2, tie=True
    )
    names = [n for n, _ in shape.tensors()]
    assert "lm_head.weight" not in names
    assert sum(".mlp.up_proj." in n for n in names) == 3
    assert dict(shape.tensors())["model.layers.0.self_attn.k_proj.weight"] == (128, 512)
    assert shape.config()["tie_word_embeddings"] is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_params": 0},
        {"n_params": -5},
        {"n_params": float("nan")},
        {},
        {"layers": 0},
        {"n_params": 1e6, "hidden": 0},
        {"n_params": 1e6, "hidden": 100, "heads": 3},
        {"n_params": 1e6, "hidden": 512, "heads": 8, "kv_heads": 3},
    ],
)
def test_bad_shapes_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        synthetic_shape(**kwargs)


def test_bad_dtype_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="dtype"):
        make_synthetic_model(tmp_path / "m", 1e6, dtype="int8")


def test_bf16_model_reads_back_with_the_expected_names_shapes_and_values(tmp_path):
    path = make_synthetic_model(tmp_path / "m", 3e6)
    shape = synthetic_shape(3e6)
    tensors, torch = _read_all(path)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == dict(shape.tensors())
    assert all(v.dtype == torch.bfloat16 for v in tensors.values())
    assert sum(v.numel() for v in tensors.values()) == shape.n_params
    w = tensors["model.layers.1.mlp.down_proj.weight"].float()
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002
    norm = tensors["model.norm.weight"].float()
    assert abs(float(norm.mean()) - 1.0) < 0.01
    # the pool is read from shifting places: two matrices do not start alike
    a = tensors["model.layers.0.mlp.up_proj.weight"].flatten()[:64]
    b = tensors["model.layers.0.mlp.gate_proj.weight"].flatten()[:64]
    assert not torch.equal(a, b)
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == shape.layers and config["torch_dtype"] == "bfloat16"


def test_sharded_f16_model_has_a_complete_index(tmp_path):
    path = make_synthetic_model(tmp_path / "m", 3e6, dtype="f16", shards=3, tie=True)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) == 3 and all((path / f).is_file() for f in files)
    tensors, torch = _read_all(path)
    assert set(tensors) == set(index["weight_map"]) and "lm_head.weight" not in tensors
    assert index["metadata"]["total_size"] == 2 * sum(v.numel() for v in tensors.values())
    assert all(v.dtype == torch.float16 for v in tensors.values())


def test_f32_model_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = make_synthetic_model(tmp_path / "m", hidden=256, layers=2, dtype="f32")
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    assert (
        sum(p.numel() for p in model.parameters()) == synthetic_shape(hidden=256, layers=2).n_params
    )


def test_the_package_reader_sees_the_same_model(tmp_path):
    sources = pytest.importorskip("nntrtool.sources")
    path = make_synthetic_model(tmp_path / "m", 3e6, shards=2)
    with sources.open_source(path) as src:
        assert [t.name for t in src.tensors] == [n for n, _ in synthetic_shape(3e6).tensors()]
        t = src.tensor("lm_head.weight")
        x = t.read_f32(0, 4)
        assert x.dtype == np.float32 and x.shape == (4, 256) and np.isfinite(x).all()
        assert math.isclose(float(np.abs(x).mean()), 0.016, rel_tol=0.3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_params": 3e6},
        {"n_params": 1e9, "tie": True},
        {"hidden": 512, "heads": 4, "kv_heads": 1, "layers": 3},
    ],
)
def test_parameter_count_formula_agrees_with_the_tensor_list(kwargs):
    shape = synthetic_shape(**kwargs)
    assert shape.n_params == sum(math.prod(s) for _, s in shape.tensors())


@pytest.mark.parametrize("n", [3e6, 2e7])
def test_nearest_layer_count_is_the_closest_size(n):
    near = synthetic_shape(n, hidden=256, at_least=False)
    for layers in (near.layers - 1, near.layers + 1):
        if layers >= 1:
            other = synthetic_shape(hidden=256, layers=layers)
            assert abs(near.n_params - n) <= abs(other.n_params - n)


def test_bf16_bits_match_torch_rounding():
    torch = pytest.importorskip("torch")
    from nntrtool.synthetic import to_bf16_bits

    x = np.random.default_rng(1).standard_normal(4096).astype(np.float32) * 100
    x[:4] = [0.0, -0.0, 3.0e38, 1.0 + 2.0**-8]  # a tie rounds to even
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view("<u2")
    np.testing.assert_array_equal(to_bf16_bits(x), want)


def test_unit_norms_are_exact_ones(tmp_path):
    path = make_synthetic_model(tmp_path / "m", hidden=256, layers=1, norm_spread=0.0)
    tensors, torch = _read_all(path)
    assert torch.equal(tensors["model.norm.weight"].float(), torch.ones(256))
