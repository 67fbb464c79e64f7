"""The MoE pieces of declared transforms: preferences, exact encodings, raw reads, the way back,
and synthetic MoE checkpoints read through them."""

from __future__ import annotations

import numpy as np
import pytest

from nntrtool.architectures import placements_for
from nntrtool.architectures.gpt_oss import gpt_oss_placements
from nntrtool.architectures.qwen3moe import qwen3_moe_placements
from nntrtool.convert import ConvertOptions, convert, plan_conversion
from nntrtool.errors import SourceError
from nntrtool.format import NntrFile
from nntrtool.sources import open_source
from nntrtool.sources.base import ArrayTensor
from nntrtool.synthetic_moe import MoeShape, make_synthetic_moe, moe_shape
from nntrtool.tensors import mxfp4
from nntrtool.tensors.transforms import prefer_type


def test_prefer_type_reads_the_base_unchanged():
    base = ArrayTensor("r", np.arange(64, dtype=np.float32).reshape(2, 32))
    t = prefer_type(base, "f32", "router")
    assert t.preferred() == ("f32", "router") and t.name == "r"
    np.testing.assert_array_equal(t.read(1, 2), base.read(1, 2))
    assert t.encoded_rows("q8_0", 0, 1) is None


def test_mxfp4_matrix_selects_rows_and_prefers_q8_0_only_when_exact():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(3, 6, 2, 16), dtype=np.uint8)
    scales = rng.integers(110, 130, size=(3, 6, 2), dtype=np.uint8)
    b_t = ArrayTensor("b", blocks, dtype="U8")
    s_t = ArrayTensor("s", scales, dtype="U8")
    up = mxfp4.mxfp4_matrix(b_t, s_t, "up", 2, row_step=2, row_offset=1)
    assert up.shape == (3, 64) and up.dtype == "BF16"
    want = mxfp4.decode_f32(blocks[2, 1::2], scales[2, 1::2])
    np.testing.assert_array_equal(up.read_f32(), want)
    np.testing.assert_array_equal(up.read_f32(1, 3), want[1:3])
    assert up.preferred()[0] == "q8_0"
    q = up.encoded_rows("q8_0", 0, 3)
    assert q.shape == (3, 2 * 34)
    scales[1, 0, 0] = 200  # out of fp16's range: no exact q8_0 for expert 1
    bad = mxfp4.mxfp4_matrix(b_t, ArrayTensor("s", scales, dtype="U8"), "g", 1)
    assert bad.preferred() is None and bad.encoded_rows("q8_0", 0, 6) is None
    flat = mxfp4.mxfp4_matrix(  # transformers' 3-D parameter layout reads the same
        ArrayTensor("b", blocks.reshape(3, 6, 32), dtype="U8"),
        s_t,
        "up",
        2,
        row_step=2,
        row_offset=1,
    )
    np.testing.assert_array_equal(flat.read_f32(), want)
    with pytest.raises(ValueError, match="do not match"):
        mxfp4.mxfp4_matrix(b_t, ArrayTensor("s", scales[:, :5], dtype="U8"), "x", 0)


def test_placements_resolve_stored_names_into_fused_parameters():
    gpt = gpt_oss_placements({})
    p = "model.layers.3.mlp.experts"
    found = [x.resolve(f"{p}.7.up_proj.weight") for x in gpt]
    key, index, transpose = next(f for f in found if f)
    assert key == f"{p}.gate_up_proj" and transpose
    assert index[0] == 7 and index[2] == slice(1, None, 2)
    qwen = qwen3_moe_placements({"moe_intermediate_size": 16})
    key, index, transpose = next(
        x.resolve(f"{p}.2.up_proj.weight") for x in qwen if x.resolve(f"{p}.2.up_proj.weight")
    )
    assert (key, index, transpose) == (f"{p}.gate_up_proj", (2, slice(16, 32)), False)
    assert placements_for({"architectures": ["LlamaForCausalLM"]}) == []
    assert len(placements_for({"architectures": ["GptOssForCausalLM"]})) == 6


@pytest.mark.parametrize("mxfp4_packed", [False, True])
def test_synthetic_gpt_oss_reads_as_per_expert_matrices(tmp_path, mxfp4_packed):
    shape = MoeShape(
        "gpt_oss", 64, 32, 4, 2, vocab=64, heads=2, kv_heads=1, head_dim=32, mxfp4=mxfp4_packed
    )
    src = make_synthetic_moe(tmp_path / "m", shape, shards=3)
    with open_source(src) as s:
        names = set(s.names)
        assert "model.layers.1.mlp.experts.3.gate_proj.weight" in names
        assert not any("gate_up_proj" in n or n.endswith(("_blocks", "_scales")) for n in names)
        assert s.tensor("model.layers.0.mlp.experts.0.down_proj.weight").shape == (64, 32)
        assert sum(t.numel for t in s.tensors) == shape.n_params
    plan = plan_conversion(src, ConvertOptions())
    assert plan.tensor("model.layers.0.mlp.router.weight").display_type == "f32"
    expert = plan.tensor("model.layers.0.mlp.experts.2.up_proj.weight").display_type
    assert expert == ("q8_0" if mxfp4_packed else "q4_0")
    out = tmp_path / "m.nntr"
    convert(src, out, ConvertOptions())
    with NntrFile(out) as nf:
        assert len(nf.names) == len(names)


def test_synthetic_qwen3_moe_size_and_sharding(tmp_path):
    shape = moe_shape("qwen3_moe", 2e6, experts=8, hidden=64, inter=32)
    assert shape.n_params >= 2e6 and shape.experts == 8
    src = make_synthetic_moe(
        tmp_path / "q",
        MoeShape("qwen3_moe", 64, 32, 8, 1, vocab=64, heads=2, kv_heads=1, head_dim=32),
        shards=2,
    )
    assert (src / "model.safetensors.index.json").is_file()
    with open_source(src) as s:
        assert "model.layers.0.mlp.experts.7.down_proj.weight" in s


def test_a_fused_expert_tensor_of_the_wrong_rank_is_refused(tmp_path):
    from safetensors.numpy import save_file

    save_file(
        {"model.layers.0.mlp.experts.down_proj": np.zeros((4, 8), np.float32)},
        str(tmp_path / "model.safetensors"),
    )
    (tmp_path / "config.json").write_text('{"architectures": ["GptOssForCausalLM"]}')
    with pytest.raises(SourceError, match="3-D fused expert tensor"):
        open_source(tmp_path)


def test_releasing_edge_pages_keeps_every_byte(tmp_path):
    import mmap

    from nntrtool.memory import PAGE, release_pages

    data = np.random.default_rng(0).integers(0, 256, 3 * PAGE, dtype=np.uint8)
    path = tmp_path / "f.bin"
    data.tofile(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = np.frombuffer(mm, dtype=np.uint8)
    middle = buf[100 : 2 * PAGE + 7]
    assert int(middle.sum()) == int(data[100 : 2 * PAGE + 7].sum())
    assert release_pages(middle, edges=True)
    # the neighbours' bytes on the shared pages are mapped again from the file
    np.testing.assert_array_equal(buf, data)
    del buf, middle
    mm.close()
