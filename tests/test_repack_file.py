"""repack: the same file as a direct conversion, lossless round trips, ggml's bytes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ggml_oracle
import numpy as np
import pytest
from safetensors.numpy import save_file

from nntrtool.cli.app import main
from nntrtool.convert import ConvertOptions, convert
from nntrtool.errors import FormatError, OutputExistsError, UsageError
from nntrtool.format import NntrFile, NntrWriter, TensorSpec
from nntrtool.qtypes import F32, LAYOUTS, Q4_0, Q6_K
from nntrtool.repack_file import parse_format, repack_file

# Rows chosen so that every layout meets tensors it repacks and tensors it must leave plain:
# 514 rows divide by neither 4 nor 8, 20 rows by 4 but not 8, the rest by both.
SHAPES = {
    "model.embed_tokens.weight": (514, 64),
    "model.layers.0.self_attn.q_proj.weight": (80, 64),
    "model.layers.0.self_attn.k_proj.weight": (20, 64),
    "model.layers.0.self_attn.o_proj.weight": (64, 80),  # 80 columns: not Q4_0 (f32 fallback)
    "model.layers.0.mlp.up_proj.weight": (128, 64),
    "model.layers.0.mlp.down_proj.weight": (64, 128),
    "model.layers.0.input_layernorm.weight": (64,),
    "model.norm.weight": (64,),
    "lm_head.weight": (514, 64),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("repack-src")
    rng = np.random.default_rng(7)
    tensors = {
        name: (0.02 * rng.standard_normal(shape)).astype(
            np.float16 if len(shape) == 2 else np.float32
        )
        for name, shape in SHAPES.items()
    }
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 64,
                "tie_word_embeddings": False,
            }
        )
    )
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    """``converted(fmt)``: the file ``convert --repack-format fmt`` writes (fmt None: plain)."""
    folder = tmp_path_factory.mktemp("repack-conv")
    done: dict[str | None, Path] = {}

    def get(fmt: str | None) -> Path:
        if fmt not in done:
            out = folder / f"{fmt or 'plain'}.nntr"
            convert(source, out, ConvertOptions(quant_type="q4_0", repack_format=fmt))
            done[fmt] = out
        return done[fmt]

    return get


def tensor_bytes(path: Path) -> dict[str, bytes]:
    with NntrFile(path) as f:
        return {t.name: f.raw(t.name).tobytes() for t in f.tensors}


def assert_same_file(a: Path, b: Path) -> None:
    with NntrFile(a) as fa, NntrFile(b) as fb:
        assert fa.config == fb.config
        assert [(t.name, t.display_type, t.shape) for t in fa.tensors] == [
            (t.name, t.display_type, t.shape) for t in fb.tensors
        ]
    assert tensor_bytes(a) == tensor_bytes(b)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_repack_of_plain_equals_direct_conversion(fmt, converted, tmp_path):
    out = tmp_path / "out.nntr"
    report = repack_file(converted(None), out, fmt)
    assert_same_file(out, converted(fmt))
    group = LAYOUTS[fmt].rows
    left = {m.name for m in report.left_plain}
    assert left == {
        n for n, s in SHAPES.items() if len(s) == 2 and s[1] % 32 == 0 and s[0] % group != 0
    }
    assert all("stays plain" in m.reason for m in report.left_plain)
    with NntrFile(out) as f:
        assert not f.bad_tensors()
        assert f.config["nntrtool"]["repack_format"] == fmt


@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_repack_none_gives_back_the_plain_file(fmt, converted, tmp_path):
    out = tmp_path / "plain.nntr"
    repack_file(converted(fmt), out, "none")
    assert_same_file(out, converted(None))


def test_round_trip_4_8_4x4_none(converted, tmp_path):
    path = converted(None)
    for i, fmt in enumerate(("q4_0_4", "q4_0_8", "q4_0_4x4", "none")):
        out = tmp_path / f"step{i}.nntr"
        repack_file(path, out, fmt)
        assert_same_file(out, converted(None if fmt == "none" else fmt))
        path = out


def test_repacked_bytes_are_ggml_repack_and_others_byte_for_byte(converted, tmp_path):
    plain = converted(None)
    out = tmp_path / "8.nntr"
    repack_file(plain, out, "q4_0_8")
    with NntrFile(plain) as fp, NntrFile(out) as fo:
        for t in fp.tensors:
            got = fo.tensor(t.name)
            if t.ttype is Q4_0 and t.rows % 8 == 0:
                assert got.display_type == "q4_0_8"
                want = ggml_oracle.ggml_repack(fp.array(t.name), "q4_0_8")
                assert np.array_equal(fo.array(t.name), want), t.name
            else:
                assert got.display_type == t.display_type
                assert fo.raw(t.name).tobytes() == fp.raw(t.name).tobytes(), t.name


def test_file_without_a_plan_record_is_repacked_by_rows(tmp_path):
    rng = np.random.default_rng(1)
    x = (0.02 * rng.standard_normal((24, 64))).astype(np.float32)
    q = ggml_oracle.ggml_quantize(x, "q4_0")
    src = tmp_path / "bare.nntr"
    specs = [TensorSpec("w", Q4_0, x.shape), TensorSpec("b", F32, (5,))]
    with NntrWriter(src, {"model_type": "x"}, specs) as w:
        w.write("w", q)
        w.write("b", np.arange(5, dtype=np.float32))
    out = tmp_path / "8.nntr"
    report = repack_file(src, out, "q4_0_8")
    assert [m.action for m in report.moves] == ["repack", "copy"]
    with NntrFile(out) as f:
        assert f.config == {"model_type": "x"}
        assert np.array_equal(f.array("w"), ggml_oracle.ggml_repack(q, "q4_0_8"))
    back = tmp_path / "back.nntr"
    repack_file(out, back, "none")
    with NntrFile(back) as f:
        assert f.raw("w").tobytes() == q.tobytes()


def test_chunked_streaming_gives_the_same_bytes(converted, tmp_path, monkeypatch):
    import nntrtool.repack_file as rf

    whole = tmp_path / "whole.nntr"
    rf.repack_file(converted(None), whole, "q4_0_4x4")
    monkeypatch.setattr(rf, "CHUNK_BYTES", 300)  # a few row groups per chunk
    chunked = tmp_path / "chunked.nntr"
    rf.repack_file(converted(None), chunked, "q4_0_4x4")
    assert whole.read_bytes() == chunked.read_bytes()


def test_errors(converted, tmp_path):
    junk = tmp_path / "junk.nntr"
    junk.write_bytes(b"PK\x03\x04 definitely not nntr")
    with pytest.raises(FormatError):
        repack_file(junk, tmp_path / "o.nntr", "q4_0_8")
    with pytest.raises(UsageError, match="not known"):
        parse_format("q4_1")

    q6 = tmp_path / "q6.nntr"
    with NntrWriter(q6, {}, [TensorSpec("w", Q6_K, (4, 256))]) as w:
        w.write("w", np.zeros((4, 210), np.uint8))
    with pytest.raises(UsageError, match="no Q4_0 tensors"):
        repack_file(q6, tmp_path / "o.nntr", "q4_0_8")

    with pytest.raises(UsageError, match="already in layout q4_0_8"):
        repack_file(converted("q4_0_8"), tmp_path / "o.nntr", "q4_0_8")
    with pytest.raises(UsageError, match="already in layout none"):
        repack_file(converted(None), tmp_path / "o.nntr", "none")

    existing = tmp_path / "exists.nntr"
    existing.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        repack_file(converted(None), existing, "q4_0_4")
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(UsageError, match="not an NNTR file"):
        repack_file(converted(None), existing, "q4_0_4", force=True)
    assert existing.read_bytes() == b"keep me"
    existing.write_bytes(b"NNTR an earlier output")
    repack_file(converted(None), existing, "q4_0_4", force=True)
    assert_same_file(existing, converted("q4_0_4"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.nntr", "junk.nntr", "q6.nntr"]


def test_in_place_with_force(converted, tmp_path):
    path = tmp_path / "m.nntr"
    path.write_bytes(converted(None).read_bytes())
    repack_file(path, path, "q4_0_8", force=True)
    assert_same_file(path, converted("q4_0_8"))


def test_cli(converted, tmp_path, capsys):
    out = tmp_path / "o.nntr"
    with pytest.raises(SystemExit) as ex:
        main(["repack", str(converted(None)), str(out), "--format", "q4_0_8"])
    err = capsys.readouterr().err
    assert ex.value.code == 0
    assert "layout q4_0_8" in err and "left plain" in err
    assert "model.layers.0.self_attn.k_proj.weight: 20 rows are not a multiple" in err
    assert_same_file(out, converted("q4_0_8"))

    for args in (
        ["repack", str(converted(None)), str(out), "--format", "q4_0_8"],  # exists
        ["repack", str(converted(None)), str(tmp_path / "x.nntr"), "--format", "q5"],
        ["repack", str(tmp_path / "missing.nntr"), str(tmp_path / "x.nntr"), "--format", "none"],
        ["repack", str(out), str(tmp_path / "x.nntr"), "--format", "q4_0_8"],  # already
    ):
        with pytest.raises(SystemExit) as ex:
            main(args)
        err = capsys.readouterr().err
        assert ex.value.code == 2, args
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.nntr").exists()


def test_cli_subprocess_quiet(converted, tmp_path):
    out = tmp_path / "q.nntr"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nntrtool",
            "repack",
            str(converted(None)),
            str(out),
            "--format",
            "q4_0_4",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == ""
    assert_same_file(out, converted("q4_0_4"))


def test_verify_sees_the_same_values_in_every_layout(source, converted):
    from nntrtool.verify import verify

    plain = {r.name: r for r in verify(converted(None), source).tensors}
    for fmt in LAYOUTS:
        report = verify(converted(fmt), source)
        assert report.passed
        for r in report.tensors:
            assert (r.rmse, r.max_abs_err, r.rel_err) == (
                plain[r.name].rmse,
                plain[r.name].max_abs_err,
                plain[r.name].rel_err,
            ), (fmt, r.name)
