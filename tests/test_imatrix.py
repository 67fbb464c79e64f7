"""Importance matrices: llama.cpp's file formats, Hugging Face <-> llama.cpp names, and
``convert --imatrix`` end to end (the stored tensors are ``quantize(x, imatrix=w)`` of the
same weights), with bad files refused in one line."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from models import write_safetensors
from test_convert_cli import one_error_line, run

from nntrtool.format import NntrFile
from nntrtool.imatrix import (
    ImatrixError,
    file_sha256,
    match_imatrix,
    read_imatrix,
    write_imatrix,
    write_imatrix_dat,
)
from nntrtool.names import gguf_arch_for, hf_to_gguf, hf_to_gguf_name
from nntrtool.quant import quantize, repack
from nntrtool.synthetic import make_synthetic_model

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2}
QWEN3MOE = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "num_hidden_layers": 2,
}

# ---- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, arch",
    [
        (LLAMA, "llama"),
        ({"model_type": "mistral"}, "llama"),
        ({"architectures": ["Qwen2ForCausalLM"]}, "qwen2"),
        ({"model_type": "qwen3"}, "qwen3"),
        (QWEN3MOE, "qwen3moe"),
        ({"model_type": "qwen2_moe"}, "qwen2moe"),
        ({"text_config": {"model_type": "llama"}}, "llama"),
        ({"model_type": "no-such-model"}, None),
        ({}, None),
    ],
)
def test_gguf_arch_for(config, arch):
    assert gguf_arch_for(config) == arch


@pytest.mark.parametrize(
    "config, hf, gguf_name",
    [
        (LLAMA, "model.embed_tokens.weight", "token_embd.weight"),
        (LLAMA, "lm_head.weight", "output.weight"),
        (LLAMA, "model.norm.weight", "output_norm.weight"),
        (LLAMA, "model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight"),
        (LLAMA, "model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight"),
        (LLAMA, "model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight"),
        (LLAMA, "model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight"),
        (
            {"model_type": "qwen2", "num_hidden_layers": 1},
            "model.layers.0.self_attn.k_proj.bias",
            "blk.0.attn_k.bias",
        ),
        (
            {"model_type": "qwen3", "num_hidden_layers": 1},
            "model.layers.0.self_attn.q_norm.weight",
            "blk.0.attn_q_norm.weight",
        ),
        (QWEN3MOE, "model.layers.1.mlp.gate.weight", "blk.1.ffn_gate_inp.weight"),
        (QWEN3MOE, "model.layers.1.mlp.experts.7.up_proj.weight", "blk.1.ffn_up_exps.weight"),
        (LLAMA, "model.layers.5.self_attn.q_proj.weight", None),  # past the last block
        (LLAMA, "model.layers.0.something_else.weight", None),
        ({"model_type": "no-such-model"}, "model.embed_tokens.weight", None),
    ],
)
def test_hf_to_gguf_name(config, hf, gguf_name):
    assert hf_to_gguf_name(hf, config) == gguf_name


def test_hf_to_gguf_gives_the_expert():
    assert hf_to_gguf("model.layers.0.mlp.experts.12.down_proj.weight", QWEN3MOE) == (
        "blk.0.ffn_down_exps.weight",
        12,
    )
    assert hf_to_gguf("model.layers.0.self_attn.v_proj.weight", QWEN3MOE) == (
        "blk.0.attn_v.weight",
        None,
    )


# ---- formats ------------------------------------------------------------------------------


def _llama_cpp_gguf(path: Path, entries: dict, chunk_count: int, datasets: list[str]) -> None:
    """An imatrix GGUF written with gguf's own writer the way llama-imatrix lays it out:
    in_sum2 ne = [n_cols, n_mat], counts ne = [1, n_mat], plus in_sum."""
    import gguf

    w = gguf.GGUFWriter(path, arch="imatrix-test")
    w.add_type(gguf.GGUFType.IMATRIX)
    w.add_array(gguf.Keys.IMatrix.DATASETS, datasets)
    w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, chunk_count)
    w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, 512)
    for name, (sums, counts) in entries.items():
        counts = np.asarray(counts, np.float32).reshape(-1)
        sums = np.asarray(sums, np.float32).reshape(counts.size, -1)
        w.add_tensor(f"{name}.in_sum2", sums)
        w.add_tensor(f"{name}.counts", counts.reshape(-1, 1))
        w.add_tensor(f"{name}.in_sum", np.sqrt(sums))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _legacy_dat(path: Path, entries: dict, trailer: tuple[int, str] | None = (7, "data.txt")):
    """llama.cpp's legacy layout, byte by byte: values are mean squares times ncall."""
    out = struct.pack("<i", len(entries))
    for name, (values, ncall) in entries.items():
        raw = name.encode()
        values = np.asarray(values, "<f4")
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size)
        out += values.tobytes()
    if trailer is not None:
        out += struct.pack("<ii", trailer[0], len(trailer[1])) + trailer[1].encode()
    path.write_bytes(out)


def test_reads_llama_cpp_gguf(tmp_path):
    rng = np.random.default_rng(0)
    dense = (rng.random(64).astype(np.float32) * 50, np.array([37.0]))
    moe = (rng.random((3, 64)).astype(np.float32), np.array([5.0, 0.0, 9.0]))
    path = tmp_path / "imatrix.gguf"
    _llama_cpp_gguf(
        path,
        {"blk.0.attn_q.weight": dense, "blk.0.ffn_up_exps.weight": moe},
        42,
        ["wiki.train.raw"],
    )
    imx = read_imatrix(path)
    assert imx.format == "gguf" and imx.chunk_count == 42 and imx.chunk_size == 512
    assert imx.datasets == ["wiki.train.raw"]
    assert imx.sha256 == file_sha256(path) and len(imx.sha256) == 64
    q = imx.entries["blk.0.attn_q.weight"]
    assert q.n_mat == 1 and q.n_cols == 64
    np.testing.assert_array_equal(q.importance()[0], dense[0] / np.float32(37.0))
    e = imx.entries["blk.0.ffn_up_exps.weight"].importance()
    np.testing.assert_array_equal(e[0], moe[0][0] / np.float32(5.0))
    np.testing.assert_array_equal(e[1], np.ones(64, np.float32))  # no data: llama.cpp uses 1
    np.testing.assert_array_equal(e[2], moe[0][2] / np.float32(9.0))


def test_writer_matches_llama_cpp_layout(tmp_path):
    import gguf

    rng = np.random.default_rng(1)
    entries = {
        "blk.1.ffn_down.weight": (rng.random(128).astype(np.float32), np.array([10.0])),
        "blk.0.ffn_gate_exps.weight": (rng.random((4, 64)).astype(np.float32), np.arange(4.0)),
    }
    path = tmp_path / "out.gguf"
    write_imatrix(path, entries, chunk_count=3, datasets=["a.txt", "b.txt"], chunk_size=256)
    reader = gguf.GGUFReader(path)
    keys = set(reader.fields)
    assert "general.architecture" not in keys  # llama-imatrix writes none
    field = reader.fields["general.type"]
    assert bytes(field.parts[field.data[0]]).decode() == "imatrix"
    shapes = {t.name: [int(s) for s in t.shape] for t in reader.tensors}
    assert shapes == {
        "blk.0.ffn_gate_exps.weight.in_sum2": [64, 4],
        "blk.0.ffn_gate_exps.weight.counts": [1, 4],
        "blk.1.ffn_down.weight.in_sum2": [128, 1],
        "blk.1.ffn_down.weight.counts": [1, 1],
    }
    imx = read_imatrix(path)
    assert imx.datasets == ["a.txt", "b.txt"] and imx.chunk_count == 3 and imx.chunk_size == 256
    for name, (sums, counts) in entries.items():
        np.testing.assert_array_equal(imx.entries[name].in_sum2.reshape(-1), sums.reshape(-1))
        np.testing.assert_array_equal(imx.entries[name].counts, counts.astype(np.float32))
    assert not list(tmp_path.glob(".*tmp"))


def test_writer_with_no_datasets(tmp_path):
    path = tmp_path / "o.gguf"
    write_imatrix(path, {"blk.0.attn_k.weight": (np.ones(32), [1])}, 1, [])
    assert read_imatrix(path).datasets == []


@pytest.mark.parametrize("trailer", [(7, "data.txt"), None])
def test_reads_legacy_dat(tmp_path, trailer):
    rng = np.random.default_rng(2)
    values = rng.random(64).astype(np.float32) * 3
    moe = rng.random(3 * 32).astype(np.float32)
    path = tmp_path / "imatrix.dat"
    _legacy_dat(
        path,
        {"blk.0.attn_q.weight": (values, 3), "blk.0.ffn_down_exps.weight": (moe, 0)},
        trailer,
    )
    imx = read_imatrix(path)
    assert imx.format == "dat"
    assert imx.chunk_count == (trailer[0] if trailer else None)
    assert imx.datasets == ([trailer[1]] if trailer else [])
    # quantize.cpp divides by ncall, and keeps the values when ncall is 0
    np.testing.assert_array_equal(
        imx.entries["blk.0.attn_q.weight"].importance()[0], values / np.float32(3)
    )
    np.testing.assert_array_equal(imx.entries["blk.0.ffn_down_exps.weight"].importance()[0], moe)


def test_legacy_writer_round_trip(tmp_path):
    sums = np.array([[4.0, 8.0, 0.0, 2.0]], np.float32)
    path = tmp_path / "x.dat"
    write_imatrix_dat(path, {"blk.0.attn_q.weight": (sums, [4.0])}, 9, "t.txt", chunk_size=2)
    imx = read_imatrix(path)
    assert imx.chunk_count == 9 and imx.datasets == ["t.txt"]
    np.testing.assert_array_equal(imx.entries["blk.0.attn_q.weight"].importance(), sums / 4)


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = tmp / "good.gguf"
    write_imatrix(good, {"blk.0.attn_q.weight": (np.ones(64), [2.0])}, 1, ["d"])
    raw = good.read_bytes()
    cases: dict[str, tuple[Path, str]] = {}

    def case(name: str, data: bytes, text: str) -> None:
        p = tmp / name
        p.write_bytes(data)
        cases[name] = (p, text)

    case("truncated.gguf", raw[: len(raw) - 40], "truncated or corrupt")
    case("header_only.gguf", raw[:30], "truncated or corrupt")
    case("empty.dat", b"", "truncated or corrupt")
    case("garbage.bin", b"\x7fELF" + bytes(range(200)), "neither a GGUF nor")
    legacy = tmp / "l.dat"
    _legacy_dat(legacy, {"blk.0.attn_q.weight": (np.ones(64, np.float32), 1)})
    case("truncated.dat", legacy.read_bytes()[:100], "truncated or corrupt")
    case("trailing.dat", legacy.read_bytes() + b"xx", "unexpected bytes")
    for what, value in (("negative", -1.0), ("nan", np.nan), ("inf", np.inf)):
        p = tmp / f"{what}.gguf"
        sums = np.ones(64, np.float32)
        sums[5] = value
        write_imatrix(p, {"blk.0.attn_q.weight": (sums, [1.0])}, 1, [])
        cases[p.name] = (p, "finite and not negative")
    p = tmp / "neg_count.gguf"
    write_imatrix(p, {"blk.0.attn_q.weight": (np.ones(64), [-3.0])}, 1, [])
    cases[p.name] = (p, "finite and not negative")
    p = tmp / "model.gguf"
    import gguf

    w = gguf.GGUFWriter(p, arch="llama")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_tensor("token_embd.weight", np.ones((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cases[p.name] = (p, "not an importance matrix")
    cases["missing"] = (tmp / "nope.gguf", "not found")
    return cases


def test_bad_files_are_refused(tmp_path):
    for name, (path, text) in _bad_files(tmp_path).items():
        with pytest.raises(ImatrixError, match=text):
            read_imatrix(path)
        assert name


# ---- matching -----------------------------------------------------------------------------


def _imx(tmp_path: Path, entries: dict):
    path = tmp_path / "m.gguf"
    write_imatrix(path, entries, 1, [])
    return read_imatrix(path)


def test_match_by_either_naming(tmp_path):
    tensors = [
        ("model.layers.0.self_attn.q_proj.weight", (64, 32)),
        ("model.layers.0.mlp.up_proj.weight", (96, 32)),
        ("model.layers.0.input_layernorm.weight", (32,)),
    ]
    imx = _imx(
        tmp_path,
        {
            "blk.0.attn_q.weight": (np.full(32, 2.0), [1.0]),
            "model.layers.0.mlp.up_proj.weight": (np.full(32, 3.0), [1.0]),
        },
    )
    found = match_imatrix(imx, tensors, LLAMA)
    assert found["model.layers.0.self_attn.q_proj.weight"].label == "blk.0.attn_q.weight"
    assert found["model.layers.0.mlp.up_proj.weight"].weights[0] == 3.0
    assert "model.layers.0.input_layernorm.weight" not in found


def test_match_experts(tmp_path):
    tensors = [(f"model.layers.0.mlp.experts.{e}.down_proj.weight", (32, 48)) for e in range(3)]
    sums = np.arange(3 * 48, dtype=np.float32).reshape(3, 48)
    imx = _imx(tmp_path, {"blk.0.ffn_down_exps.weight": (sums, [2.0, 0.0, 4.0])})
    found = match_imatrix(imx, tensors, QWEN3MOE)
    assert found[tensors[2][0]].label == "blk.0.ffn_down_exps.weight[2]"
    np.testing.assert_array_equal(found[tensors[0][0]].weights, sums[0] / 2)
    np.testing.assert_array_equal(found[tensors[1][0]].weights, np.ones(48, np.float32))


def test_match_refuses_more_or_fewer_experts_than_the_model(tmp_path):
    tensors = [(f"model.layers.0.mlp.experts.{e}.down_proj.weight", (32, 48)) for e in range(3)]
    for n, text in ((4, "holds 4 experts, but the model has 3"), (2, "holds 2 experts x 48")):
        imx = _imx(tmp_path, {"blk.0.ffn_down_exps.weight": (np.ones((n, 48)), [1.0] * n)})
        with pytest.raises(ImatrixError, match=text):
            match_imatrix(imx, tensors, QWEN3MOE)


def test_match_experts_stored_flat(tmp_path):
    # One count for all experts, their sums in one row (legacy and early GGUF files)
    tensors = [(f"model.layers.0.mlp.experts.{e}.up_proj.weight", (32, 16)) for e in range(2)]
    sums = np.arange(32, dtype=np.float32)
    imx = _imx(tmp_path, {"blk.0.ffn_up_exps.weight": (sums, [4.0])})
    found = match_imatrix(imx, tensors, QWEN3MOE)
    np.testing.assert_array_equal(found[tensors[1][0]].weights, sums[16:] / 4)


@pytest.mark.parametrize(
    "entries, text",
    [
        ({"blk.7.attn_q.weight": (np.ones(32), [1.0])}, "none of its 1 entries"),
        (
            {
                "blk.0.attn_q.weight": (np.ones(32), [1.0]),
                "blk.9.ffn_up.weight": (np.ones(32), [1.0]),
            },
            "'blk.9.ffn_up.weight' matches no tensor",
        ),
        ({"blk.0.attn_q.weight": (np.ones(48), [1.0])}, "holds 48 columns"),
        ({"blk.0.attn_q.weight": (np.ones((2, 32)), [1.0, 1.0])}, "2 experts x 32 columns"),
    ],
)
def test_match_refuses_another_models_matrix(tmp_path, entries, text):
    tensors = [("model.layers.0.self_attn.q_proj.weight", (64, 32))]
    with pytest.raises(ImatrixError, match=text):
        match_imatrix(_imx(tmp_path, entries), tensors, LLAMA)


# ---- convert --imatrix --------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_synthetic_model(
        tmp_path_factory.mktemp("imx") / "m",
        hidden=256,
        intermediate=512,
        vocab=512,
        layers=2,
        heads=4,
        kv_heads=2,
        dtype="bf16",
    )


def _llama_entries(rng: np.random.Generator, skip: str = "blk.1.ffn_down") -> dict:
    """llama.cpp-named statistics for every linear layer of the synthetic model but ``skip``."""
    out = {}
    for b in range(2):
        for name, cols in (
            ("attn_q", 256),
            ("attn_k", 256),
            ("attn_v", 256),
            ("attn_output", 256),
            ("ffn_gate", 256),
            ("ffn_up", 256),
            ("ffn_down", 512),
        ):
            key = f"blk.{b}.{name}"
            if key != skip:
                sums = (rng.exponential(1.0, cols) * 100).astype(np.float32)
                sums[:40] = 0  # columns no token ever used
                out[f"{key}.weight"] = (sums, [float(rng.integers(50, 500))])
    return out


def _stored(path: Path) -> dict:
    with NntrFile(path) as f:
        return {t.name: np.array(f.array(t.name)) for t in f.tensors}, f.config


def _source(model: Path) -> dict:
    from nntrtool.sources import open_source

    with open_source(model) as src:
        return {t.name: (t.dtype, np.array(t.read()).reshape(t.shape)) for t in src.tensors}


@pytest.mark.parametrize(
    "qtype, repack_format", [("q4_0", "none"), ("q6_k", "none"), ("q4_0", "q4_0_8")]
)
def test_convert_with_imatrix(llama, tmp_path, capsys, qtype, repack_format):
    rng = np.random.default_rng(4)
    entries = _llama_entries(rng)
    imx_path = tmp_path / "calib.imatrix.gguf"
    write_imatrix(imx_path, entries, chunk_count=12, datasets=["calib.txt"])
    out = tmp_path / "o.nntr"
    code, stdout, stderr = run(
        [
            "convert",
            llama,
            out,
            "--quant-type",
            qtype,
            "--repack-format",
            repack_format,
            "--imatrix",
            imx_path,
            "--threads",
            "2",
        ],
        capsys,
    )
    assert code == 0, stderr
    assert "importance matrix: calib.imatrix.gguf" in stdout
    assert "13 tensors weighted" in stdout
    assert "no importance data, plain quantizer (3)" in stdout
    for name in (
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.1.mlp.down_proj.weight",
    ):
        assert f"  {name}: {qtype}: no importance data" in stdout

    stored, config = _stored(out)
    meta = config["nntrtool"]["imatrix"]
    assert meta["file"] == "calib.imatrix.gguf" and meta["sha256"] == file_sha256(imx_path)
    assert meta["chunk_count"] == 12 and meta["datasets"] == ["calib.txt"]
    assert meta["format"] == "gguf" and meta["tensors"] == 13
    tensors_meta = config["nntrtool"]["tensors"]
    assert (
        tensors_meta["model.layers.0.self_attn.q_proj.weight"]["imatrix"] == "blk.0.attn_q.weight"
    )
    assert "imatrix" not in tensors_meta["model.embed_tokens.weight"]

    imx = read_imatrix(imx_path)
    for name, (dtype, x) in _source(llama).items():
        if x.ndim != 2:
            continue
        key = hf_to_gguf_name(name, json.loads((llama / "config.json").read_text()))
        qw = imx.entries[key].importance()[0] if key in imx.entries else None
        expected = quantize(x, qtype, source_dtype=dtype, imatrix=qw)
        if repack_format != "none":
            expected = repack(expected, repack_format)
        assert np.array_equal(stored[name].reshape(expected.shape), expected), name
        if qw is not None:
            assert not np.array_equal(expected, quantize(x, qtype, source_dtype=dtype)), name

    code, stdout, _ = run(["inspect", out], capsys)
    assert code == 0
    assert f"importance matrix: calib.imatrix.gguf (gguf, sha256 {meta['sha256'][:16]}" in stdout
    code, stdout, _ = run(["inspect", out, "--json"], capsys)
    assert json.loads(stdout)["summary"]["imatrix"]["sha256"] == meta["sha256"]


def test_hf_named_and_legacy_files_give_the_same_weights(llama, tmp_path, capsys):
    rng = np.random.default_rng(6)
    config = json.loads((llama / "config.json").read_text())
    entries = _llama_entries(rng, skip="")
    gguf_file = tmp_path / "a.gguf"
    write_imatrix(gguf_file, entries, 4, ["t"])
    by_hf = {}
    for hf in _source(llama):
        key = hf_to_gguf_name(hf, config)
        if key in entries:
            by_hf[hf] = entries[key]
    hf_file = tmp_path / "hf.gguf"
    write_imatrix(hf_file, by_hf, 4, ["t"])
    outs = []
    for f in (gguf_file, hf_file):
        out = tmp_path / f"{f.stem}.nntr"
        code, _, stderr = run(["convert", llama, out, "--imatrix", f, "--quiet"], capsys)
        assert code == 0, stderr
        outs.append(_stored(out)[0])
    for name in outs[0]:
        assert np.array_equal(outs[0][name], outs[1][name]), name

    # A legacy .dat: the converter uses exactly the weights read_imatrix gives.
    dat = tmp_path / "a.dat"
    write_imatrix_dat(dat, entries, 4, "t")
    out = tmp_path / "dat.nntr"
    code, stdout, stderr = run(["convert", llama, out, "--imatrix", dat], capsys)
    assert code == 0, stderr
    assert "(dat, " in stdout
    imx = read_imatrix(dat)
    stored = _stored(out)[0]
    src = _source(llama)
    name = "model.layers.1.mlp.down_proj.weight"
    dtype, x = src[name]
    qw = imx.entries["blk.1.ffn_down.weight"].importance()[0]
    assert np.array_equal(stored[name], quantize(x, "q4_0", source_dtype=dtype, imatrix=qw))


@pytest.mark.parametrize("qtype", ["q4_0", "q6_k"])
def test_numpy_backend_writes_the_same_file(llama, tmp_path, capsys, qtype):
    path = tmp_path / "i.gguf"
    write_imatrix(path, _llama_entries(np.random.default_rng(9)), 1, [])
    outs = {}
    for backend in ("numba", "numpy"):
        out = outs[backend] = tmp_path / f"{backend}.nntr"
        args = ["convert", llama, out, "--quant-type", qtype, "--imatrix", path, "--quiet"]
        code, _, stderr = run([*args, "--backend", backend], capsys)
        assert code == 0, stderr
    assert outs["numba"].read_bytes() == outs["numpy"].read_bytes()


def test_dry_run_lists_the_plan(llama, tmp_path, capsys):
    path = tmp_path / "i.gguf"
    write_imatrix(path, _llama_entries(np.random.default_rng(1)), 1, [])
    code, stdout, stderr = run(["convert", llama, "--dry-run", "--imatrix", path], capsys)
    assert code == 0, stderr
    assert "blk.0.attn_q.weight" in stdout and "imatrix" in stdout
    assert "no importance data, plain quantizer (3)" in stdout


def test_q8_0_ignores_the_importance_matrix(llama, tmp_path, capsys):
    path = tmp_path / "i.gguf"
    write_imatrix(path, _llama_entries(np.random.default_rng(1)), 1, [])
    a, b = tmp_path / "a.nntr", tmp_path / "b.nntr"
    assert run(["convert", llama, a, "--quant-type", "q8_0", "--quiet"], capsys)[0] == 0
    args = ["convert", llama, b, "--quant-type", "q8_0", "--imatrix", path]
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "0 tensors weighted" in stdout
    sa, sb = _stored(a)[0], _stored(b)[0]
    assert all(np.array_equal(sa[n], sb[n]) for n in sa)


def test_moe_experts_take_their_row(tmp_path, capsys):
    rng = np.random.default_rng(8)
    model = tmp_path / "moe"
    model.mkdir()
    config = dict(QWEN3MOE, hidden_size=64, num_experts=3, vocab_size=64)
    (model / "config.json").write_text(json.dumps(config))
    tensors = {"model.embed_tokens.weight": rng.standard_normal((64, 64)).astype(np.float32)}
    for b in range(2):
        for e in range(3):
            for proj, shape in (
                ("gate_proj", (32, 64)),
                ("up_proj", (32, 64)),
                ("down_proj", (64, 32)),
            ):
                tensors[f"model.layers.{b}.mlp.experts.{e}.{proj}.weight"] = rng.standard_normal(
                    shape
                ).astype(np.float32)
    write_safetensors(model / "model.safetensors", tensors)
    entries = {}
    for b in range(2):
        for proj, cols in (("ffn_gate_exps", 64), ("ffn_up_exps", 64), ("ffn_down_exps", 32)):
            entries[f"blk.{b}.{proj}.weight"] = (
                rng.exponential(1.0, (3, cols)).astype(np.float32),
                [7.0, 0.0, 3.0],
            )
    imx_path = tmp_path / "moe.gguf"
    write_imatrix(imx_path, entries, 2, ["x"])
    out = tmp_path / "moe.nntr"
    code, stdout, stderr = run(["convert", model, out, "--imatrix", imx_path], capsys)
    assert code == 0, stderr
    stored, meta = _stored(out)
    assert meta["nntrtool"]["tensors"]["model.layers.1.mlp.experts.2.up_proj.weight"][
        "imatrix"
    ] == ("blk.1.ffn_up_exps.weight[2]")
    for e in range(3):
        name = f"model.layers.1.mlp.experts.{e}.down_proj.weight"
        sums, counts = entries["blk.1.ffn_down_exps.weight"]
        qw = sums[e] / np.float32(counts[e]) if counts[e] else np.ones(32, np.float32)
        assert np.array_equal(stored[name], quantize(tensors[name], "q4_0", imatrix=qw)), name


def test_bad_imatrix_files_give_one_line_and_no_output(llama, tmp_path, capsys):
    cases = _bad_files(tmp_path)
    other = tmp_path / "other.gguf"
    write_imatrix(other, {"blk.40.attn_q.weight": (np.ones(256), [1.0])}, 1, [])
    cases["other model (names)"] = (other, "made for another model")
    sizes = tmp_path / "sizes.gguf"
    write_imatrix(sizes, {"blk.0.attn_q.weight": (np.ones(4096), [1.0])}, 1, [])
    cases["other model (sizes)"] = (sizes, "holds 4096 columns")
    for name, (path, text) in cases.items():
        out = tmp_path / "out.nntr"
        code, _, stderr = run(["convert", llama, out, "--imatrix", path], capsys)
        assert code == 2, (name, stderr)
        assert text in one_error_line(stderr), name
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.nntr")], name
