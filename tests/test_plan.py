"""The per-tensor conversion plan: types, fallbacks, overrides, keep-f32, repack and tied heads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from models import f32_to_bf16_bits, write_safetensors

from nntrtool.convert import ConvertOptions, make_plan, plan_conversion
from nntrtool.errors import SourceError, UsageError
from nntrtool.format import TensorSpec, predict_file_size
from nntrtool.qtypes import F32, Q4_0, Q4_0_REPACKED, Q6_K, Q8_0
from nntrtool.sources import open_source

#: (name, shape): a small model exercising every rule of the plan.
SHAPES: list[tuple[str, tuple[int, ...]]] = [
    ("model.embed_tokens.weight", (64, 256)),
    ("model.layers.0.input_layernorm.weight", (256,)),
    ("model.layers.0.self_attn.q_proj.weight", (256, 256)),
    ("model.layers.0.self_attn.q_proj.bias", (256,)),
    ("model.layers.0.mlp.down_proj.weight", (256, 96)),  # fits 32, not 256
    ("model.layers.0.mlp.odd.weight", (16, 100)),  # fits neither
    ("model.layers.0.mlp.up_proj.weight", (12, 256)),  # rows: 4 | 12, 8 does not
    ("model.layers.0.experts", (2, 8, 64)),
    ("model.norm.weight", (256,)),
    ("lm_head.weight", (64, 256)),
]


def write_model(
    folder: Path,
    shapes: list[tuple[str, tuple[int, ...]]] = SHAPES,
    config: dict | None = None,
    dtype: str = "BF16",
    seed: int = 0,
    same: dict[str, str] | None = None,
) -> Path:
    """A model folder with random ``dtype`` tensors; ``same`` maps a name to a tensor it copies."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    values: dict[str, np.ndarray] = {}
    for name, shape in shapes:
        x = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if same and name in same:
            x = values[same[name]]
        values[name] = x
        if dtype == "BF16":
            tensors[name] = ("BF16", f32_to_bf16_bits(x))
        else:
            tensors[name] = x.astype(np.float16 if dtype == "F16" else np.float32)
    write_safetensors(folder / "model.safetensors", tensors)
    cfg = {"model_type": "llama", "tie_word_embeddings": False}
    cfg.update(config or {})
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("plan") / "m")


def plan_of(path: Path, **kw):
    return plan_conversion(path, ConvertOptions(**kw))


def test_default_q4_0_plan_types_and_order(model: Path) -> None:
    plan = plan_of(model)
    assert [t.name for t in plan.tensors] == [n for n, _ in SHAPES]
    types = {t.name: t.ttype for t in plan.tensors}
    assert types["model.embed_tokens.weight"] is Q4_0
    assert types["model.layers.0.self_attn.q_proj.weight"] is Q4_0
    assert types["model.layers.0.mlp.down_proj.weight"] is Q4_0
    assert types["lm_head.weight"] is Q4_0
    for name in ("input_layernorm", "q_proj.bias", "experts", "model.norm", "mlp.odd"):
        (hit,) = [t for t in plan.tensors if name in t.name]
        assert hit.ttype is F32, hit
    odd = plan.tensor("model.layers.0.mlp.odd.weight")
    assert odd.fallback and "100 is not a multiple of 32" in odd.reason
    assert plan.fallbacks == [("model.layers.0.mlp.odd.weight", odd.reason)]
    assert "1-D" in plan.tensor("model.norm.weight").reason
    assert "3-D" in plan.tensor("model.layers.0.experts").reason
    for t in plan.tensors:
        assert t.nbytes == t.ttype.nbytes(t.shape)
        assert t.source_dtype == "BF16"
        assert t.source_nbytes == 2 * t.numel
    assert not plan.tied.tied and plan.skipped == []


def test_q6_k_falls_back_to_q8_0_then_f32(model: Path) -> None:
    plan = plan_of(model, quant_type="q6_k")
    assert plan.tensor("model.layers.0.self_attn.q_proj.weight").ttype is Q6_K
    down = plan.tensor("model.layers.0.mlp.down_proj.weight")
    assert down.ttype is Q8_0 and down.fallback
    assert "96 is not a multiple of 256 (q6_k): q8_0 instead" in down.reason
    odd = plan.tensor("model.layers.0.mlp.odd.weight")
    assert odd.ttype is F32 and odd.fallback
    assert {n for n, _ in plan.fallbacks} == {down.name, odd.name}


def test_q8_0_falls_back_to_f32(model: Path) -> None:
    plan = plan_of(model, quant_type="q8_0")
    assert plan.tensor("model.layers.0.mlp.down_proj.weight").ttype is Q8_0
    assert plan.tensor("model.layers.0.mlp.odd.weight").ttype is F32


@pytest.mark.parametrize(
    ("layout", "up_repacked"), [("q4_0_8", False), ("q4_0_4", True), ("q4_0_4x4", True)]
)
def test_repack_applies_where_rows_divide(model: Path, layout: str, up_repacked: bool) -> None:
    plan = plan_of(model, repack_format=layout)
    q = plan.tensor("model.layers.0.self_attn.q_proj.weight")
    assert q.ttype is Q4_0_REPACKED and q.layout.name == layout and q.display_type == layout
    up = plan.tensor("model.layers.0.mlp.up_proj.weight")
    if up_repacked:
        assert up.ttype is Q4_0_REPACKED and not up.unrepacked
    else:
        assert up.ttype is Q4_0 and up.layout is None and up.unrepacked
        assert "12 rows are not a multiple of q4_0_8's group of 8" in up.reason
        assert plan.unrepacked == [(up.name, up.reason)]
    # only Q4_0 is ever repacked
    assert plan.tensor("model.norm.weight").layout is None


def test_repack_ignored_for_other_types(model: Path) -> None:
    plan = plan_of(model, quant_type="q6_k", repack_format="q4_0_8")
    assert all(t.layout is None for t in plan.tensors)
    assert plan.unrepacked == []


def test_overrides_first_match_wins(model: Path) -> None:
    plan = plan_of(
        model,
        type_overrides=("q_proj=q8_0", r"self_attn\..*=q6_k", "embed=f32", "lm_head=q6_k"),
        repack_format="q4_0_8",
    )
    q = plan.tensor("model.layers.0.self_attn.q_proj.weight")
    assert q.ttype is Q8_0 and q.reason == "--type 'q_proj=q8_0'"
    assert plan.tensor("model.embed_tokens.weight").ttype is F32
    assert plan.tensor("lm_head.weight").ttype is Q6_K
    # 1-D tensors matched by a pattern stay f32
    assert plan.tensor("model.layers.0.self_attn.q_proj.bias").ttype is F32
    assert plan.notes == [r"--type 'self_attn\\..*=q6_k' matched no matrix"]


def test_override_to_q4_0_is_repacked(model: Path) -> None:
    plan = plan_of(
        model, quant_type="q6_k", type_overrides=("q_proj=q4_0",), repack_format="q4_0_4"
    )
    assert plan.tensor("model.layers.0.self_attn.q_proj.weight").ttype is Q4_0_REPACKED


def test_override_that_does_not_fit_is_a_usage_error(model: Path) -> None:
    with pytest.raises(UsageError) as err:
        plan_of(model, type_overrides=("down_proj=q6_k",))
    msg = str(err.value)
    assert "model.layers.0.mlp.down_proj.weight" in msg and "256" in msg and "96" in msg


def test_keep_f32_wins_over_everything(model: Path) -> None:
    plan = plan_of(model, keep_f32=("q_proj", "nomatch"), type_overrides=("q_proj=q8_0",))
    q = plan.tensor("model.layers.0.self_attn.q_proj.weight")
    assert q.ttype is F32 and q.reason == "--keep-f32 'q_proj'" and not q.fallback
    assert "--keep-f32 'nomatch' matched no tensor" in plan.notes


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"type_overrides": ("q_proj",)}, "expected REGEX=TYPE"),
        ({"type_overrides": ("q_proj=q3_k",)}, "unknown type 'q3_k'"),
        ({"type_overrides": ("q_[proj=q8_0",)}, "bad regular expression"),
        ({"keep_f32": ("(",)}, "bad regular expression"),
        ({"quant_type": "q3_k"}, "--quant-type 'q3_k'"),
        ({"repack_format": "q4_0_16"}, "--repack-format 'q4_0_16'"),
        ({"threads": 0}, "--threads 0"),
    ],
)
def test_bad_options(kw: dict, text: str) -> None:
    with pytest.raises(UsageError) as err:
        ConvertOptions(**kw)
    assert text in str(err.value)
    assert "\n" not in str(err.value)


def test_tied_by_config_skips_head(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m", config={"tie_word_embeddings": True})
    plan = plan_of(path)
    assert plan.tied.tied and plan.tied.head == "lm_head.weight"
    assert "lm_head.weight" not in [t.name for t in plan.tensors]
    assert plan.skipped and plan.skipped[0][0] == "lm_head.weight"
    section = plan.to_config()
    assert section["tied"] is True
    assert section["tied_embedding"] == "model.embed_tokens.weight"
    assert section["tied_head"] == "lm_head.weight"


def test_tied_when_head_absent(tmp_path: Path) -> None:
    shapes = [s for s in SHAPES if s[0] != "lm_head.weight"]
    plan = plan_of(write_model(tmp_path / "m", shapes))
    assert plan.tied.tied and not plan.tied.head_in_source
    assert plan.skipped == []
    assert plan.to_config()["tied"] is True


def test_tied_when_head_data_identical(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m", same={"lm_head.weight": "model.embed_tokens.weight"})
    plan = plan_of(path)
    assert plan.tied.tied and "same data" in plan.tied.reason
    assert "lm_head.weight" not in [t.name for t in plan.tensors]


def test_untied_when_head_differs_even_by_one_value(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m", same={"lm_head.weight": "model.embed_tokens.weight"})
    # flip one bit of the head's last value in place: identical up to the very last row
    st = path / "model.safetensors"
    with open_source(path) as src:
        assert src.tensors[-1].name == "lm_head.weight"
    raw = bytearray(st.read_bytes())
    raw[-1] ^= 0x01
    st.write_bytes(bytes(raw))
    plan = plan_of(path)
    assert not plan.tied.tied
    assert plan.tensor("lm_head.weight").ttype is Q4_0


def test_unsupported_dtype_names_tensor(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    write_safetensors(
        folder / "model.safetensors",
        {"a.weight": np.ones((8, 32), np.float32), "b.weight": np.ones((8, 32), np.int8)},
    )
    (folder / "config.json").write_text("{}")
    with pytest.raises(SourceError) as err:
        plan_of(folder)
    assert "'b.weight'" in str(err.value) and "I8" in str(err.value)


def test_fp8_dtype_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    write_safetensors(
        folder / "model.safetensors", {"w.weight": ("F8_E4M3", np.zeros((8, 32), np.uint8))}
    )
    (folder / "config.json").write_text("{}")
    with pytest.raises(SourceError, match="F8_E4M3"):
        plan_of(folder)


def test_predicted_size_and_config_are_consistent(model: Path) -> None:
    with open_source(model) as src:
        plan = make_plan(src, ConvertOptions(quant_type="q6_k", repack_format="q4_0_4"))
    cfg = plan.file_config()
    json.dumps(cfg)  # storable
    assert cfg["model_type"] == "llama"
    section = cfg["nntrtool"]
    assert section["quant_type"] == "q6_k" and section["repack_format"] == "q4_0_4"
    assert section["source"]["kind"] == "folder"
    assert list(section["tensors"]) == [t.name for t in plan.tensors]
    rec = section["tensors"]["model.layers.0.mlp.down_proj.weight"]
    assert rec == {"type": "q8_0", "source_dtype": "BF16", "reason": rec["reason"]}
    specs = [TensorSpec(t.name, t.ttype, t.shape, t.layout) for t in plan.tensors]
    assert plan.predicted_size == predict_file_size(cfg, specs)
    assert plan.params == sum(int(np.prod(s)) for _, s in SHAPES)


def test_options_round_trip_through_file_config(model: Path) -> None:
    opts = ConvertOptions(
        quant_type="q6_k",
        repack_format="q4_0_8",
        type_overrides=("q_proj=q4_0",),
        keep_f32=("norm",),
    )
    plan = plan_conversion(model, opts)
    again = ConvertOptions.from_file_config(plan.to_config())
    assert again == opts
    assert plan_conversion(model, again).to_config() == plan.to_config()


def test_store_f32_replaces_named_tensors(model: Path) -> None:
    plan = plan_of(model, repack_format="q4_0_4")
    name = "model.layers.0.self_attn.q_proj.weight"
    changed = plan.store_f32({name: "why"})
    t = changed.tensor(name)
    assert t.ttype is F32 and t.layout is None and t.reason == "why"
    assert changed.predicted_size > plan.predicted_size
    assert plan.tensor(name).ttype is Q4_0_REPACKED  # the original is untouched


def test_integer_buffers_are_skipped_with_a_note(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    write_safetensors(
        folder / "model.safetensors",
        {
            "bert.embeddings.position_ids": np.arange(64, dtype=np.int64).reshape(1, 64),
            "bert.embeddings.token_type_ids": np.zeros((1, 64), np.int64),
            "bert.embeddings.word_embeddings.weight": np.ones((16, 32), np.float32),
            "bert.pooler.dense.weight": np.ones((32, 32), np.float32),
        },
    )
    (folder / "config.json").write_text('{"architectures": ["BertModel"]}')
    plan = plan_of(folder)
    assert [t.name for t in plan.tensors] == [
        "bert.embeddings.word_embeddings.weight",
        "bert.pooler.dense.weight",
    ]
    skipped = dict(plan.skipped)
    assert "buffer" in skipped["bert.embeddings.position_ids"]
    assert any("position_ids" in n and "token_type_ids" in n for n in plan.notes)
    from nntrtool.convert import ConvertOptions, convert

    convert(folder, tmp_path / "b.nntr", ConvertOptions(quant_type="q8_0"))


def test_keep_on_a_float_checkpoint_stores_f32_and_auto_is_q4_0(model: Path) -> None:
    keep = plan_of(model, quant_type="keep")
    assert {t.display_type for t in keep.tensors} == {"f32"}
    assert keep.options.quant_type == "keep"
    auto = plan_of(model)
    assert auto.options.quant_type == "q4_0" and auto.to_config()["quant_type"] == "q4_0"
