"""Model sources: safetensors parsing and validation, folders, single files, and open_source."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from models import f32_to_bf16_bits, write_safetensors

from nntrtool.errors import NntrError, SourceError, UsageError
from nntrtool.quant.common import bf16_to_f32 as bf16_bits_to_f32
from nntrtool.sources import (
    ModelSource,
    dtype_nbytes,
    looks_like_hub_id,
    open_source,
)
from nntrtool.sources.safetensors_file import SafetensorsFile

RNG = np.random.default_rng(7)
CONFIG = {"model_type": "llama", "hidden_size": 64}


def _folder(tmp_path: Path, tensors: dict, name: str = "model.safetensors") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_safetensors(tmp_path / name, tensors)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    return tmp_path


def _raw_file(path: Path, header: object, data: bytes = b"", header_len: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def _one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


# ---- reading -----------------------------------------------------------------------------


def test_reads_f32_f16_bf16_rows_exactly(tmp_path):
    f32 = RNG.standard_normal((24, 40), dtype=np.float32)
    f16 = RNG.standard_normal((3, 4, 32)).astype(np.float16)
    bf = f32_to_bf16_bits(RNG.standard_normal((16, 48), dtype=np.float32))
    folder = _folder(
        tmp_path, {"a": f32, "b": f16, "c": ("BF16", bf), "norm": np.ones(40, np.float32)}
    )
    with open_source(folder) as src:
        a, b, c, norm = (src.tensor(n) for n in ("a", "b", "c", "norm"))
        assert (a.dtype, a.shape, a.rows, a.cols, a.numel, a.nbytes) == (
            "F32",
            (24, 40),
            24,
            40,
            960,
            3840,
        )
        assert (b.rows, b.cols, b.nbytes) == (12, 32, 12 * 32 * 2)
        assert (norm.rows, norm.cols) == (1, 40)
        np.testing.assert_array_equal(a.read(), f32)
        np.testing.assert_array_equal(a.read(5, 9), f32[5:9])
        np.testing.assert_array_equal(b.read(2, 7), f16.reshape(12, 32)[2:7])
        assert b.read().dtype == np.float16
        assert c.read(3, 4).dtype == np.uint16
        np.testing.assert_array_equal(c.read(), bf)
        np.testing.assert_array_equal(norm.read(), np.ones((1, 40), np.float32))
        assert src.params == 960 + 384 + 768 + 40


def test_reads_are_read_only_and_hold_only_their_rows(tmp_path):
    f32 = RNG.standard_normal((64, 32), dtype=np.float32)
    with open_source(_folder(tmp_path, {"w": f32, "h": ("BF16", f32_to_bf16_bits(f32))})) as src:
        for name in ("w", "h"):
            rows = src.tensor(name).read(8, 16)
            assert not rows.flags.writeable
            # read from the file (a truncated file is an error, not SIGBUS), only these rows
            base = rows
            while isinstance(base.base, np.ndarray):
                base = base.base
            assert base.nbytes == rows.nbytes
        assert src.tensor("w").read_f32(0, 4).base is not None  # F32: no conversion copy


def test_read_f32_widens_f16_and_bf16_like_torch(tmp_path):
    import torch

    x = RNG.standard_normal((8, 64), dtype=np.float32) * 3
    x[0, :4] = [0.0, -0.0, 65504.0, 1e-8]
    bf = f32_to_bf16_bits(x)
    folder = _folder(tmp_path, {"h": x.astype(np.float16), "b": ("BF16", bf)})
    with open_source(folder) as src:
        h32 = src.tensor("h").read_f32()
        b32 = src.tensor("b").read_f32(2, 8)
    np.testing.assert_array_equal(h32, x.astype(np.float16).astype(np.float32))
    expect = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    assert h32.dtype == b32.dtype == np.float32
    np.testing.assert_array_equal(b32.view(np.uint32), expect[2:8].view(np.uint32))


def test_read_f32_into_out_buffer(tmp_path):
    x = RNG.standard_normal((10, 32), dtype=np.float32)
    folder = _folder(
        tmp_path, {"f": x, "h": x.astype(np.float16), "b": ("BF16", f32_to_bf16_bits(x))}
    )
    out = np.full((4, 32), np.nan, np.float32)
    with open_source(folder) as src:
        for name in ("f", "h", "b"):
            out[:] = np.nan
            got = src.tensor(name).read_f32(3, 7, out=out)
            assert got is out
            np.testing.assert_allclose(out, x[3:7], rtol=1e-2, atol=1e-3)
        with pytest.raises(ValueError):
            src.tensor("f").read_f32(0, 3, out=out)


def test_bf16_widening_handles_special_values():
    bits = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x3F80, 0x0001], np.uint16)
    out = bf16_bits_to_f32(bits)
    expect = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(out.view(np.uint32), expect.view(np.uint32))


def test_row_range_outside_tensor_is_refused(tmp_path):
    with open_source(_folder(tmp_path, {"w": np.zeros((4, 32), np.float32)})) as src:
        t = src.tensor("w")
        assert t.read(4, 4).shape == (0, 32)
        with pytest.raises(ValueError):
            t.read(3, 5)
        with pytest.raises(ValueError):
            t.read(-1)
        assert list(t.iter_chunks(3)) == [(0, 3), (3, 4)]


def test_zero_dim_and_empty_tensors(tmp_path):
    folder = _folder(tmp_path, {"s": np.array(2.5, np.float32), "e": np.zeros((0, 32), np.float32),
                                "w": np.ones((2, 32), np.float32)})  # fmt: skip
    with open_source(folder) as src:
        s, e = src.tensor("s"), src.tensor("e")
        assert (s.shape, s.rows, s.cols) == ((), 1, 1)
        assert s.read().tolist() == [[2.5]]
        assert (e.rows, e.cols, e.nbytes) == (0, 32, 0)
        assert e.read().shape == (0, 32)


def test_tensor_order_is_data_order_and_lookup(tmp_path):
    names = ["z.weight", "a.weight", "m.weight"]
    folder = _folder(tmp_path, {n: np.full((2, 32), i, np.float32) for i, n in enumerate(names)})
    with open_source(folder) as src:
        assert src.names == names
        assert "a.weight" in src and "nope" not in src and len(src) == 3
        with pytest.raises(SourceError, match="no tensor named 'nope'"):
            src.tensor("nope")


def test_unsupported_dtype_read_names_tensor_and_dtype(tmp_path):
    folder = _folder(tmp_path, {"q": np.zeros((4, 32), np.int8), "f8": ("F8_E4M3", np.zeros((2, 32), np.uint8)),
                                "w": np.zeros((4, 32), np.float32)})  # fmt: skip
    with open_source(folder) as src:
        q = src.tensor("q")
        assert (q.dtype, q.nbytes, q.supported) == ("I8", 128, False)
        assert src.tensor("f8").dtype == "F8_E4M3"
        for name, dtype in (("q", "I8"), ("f8", "F8_E4M3")):
            with pytest.raises(SourceError) as exc:
                src.tensor(name).read_f32()
            msg = _one_line_error(exc)
            assert repr(name) in msg and dtype in msg


def test_close_is_idempotent_and_keeps_handed_out_arrays_valid(tmp_path):
    x = RNG.standard_normal((16, 32), dtype=np.float32)
    src = open_source(_folder(tmp_path, {"w": x}))
    rows = src.tensor("w").read()
    src.close()
    src.close()
    np.testing.assert_array_equal(rows, x)
    with pytest.raises(SourceError, match="closed"):
        src.tensor("w").read()


def test_sub_byte_dtype_sizes():
    assert (
        dtype_nbytes("F4", 3) == 2 and dtype_nbytes("BF16", 3) == 6 and dtype_nbytes("I64", 2) == 16
    )


# ---- corrupt safetensors --------------------------------------------------------------------

GOOD = {"w": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}


@pytest.mark.parametrize(
    "header, data, header_len, expect",
    [
        (b"", b"", None, "too short"),
        (b"{}", b"", 10_000, "runs past the end"),
        (b"{not json", b"", None, "not valid JSON"),
        (b"\xff\xfe{}", b"", None, "not valid JSON"),
        (b"[1, 2]", b"", None, "not a JSON object"),
        ({"w": [1]}, b"", None, "'w': header entry is not a JSON object"),
        ({"w": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), None, "unknown dtype 'F33'"),
        ({"w": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}}, bytes(8), None, "shape"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), None, "data_offsets"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8), None, "data_offsets"),
        ({"w": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 30]}}, bytes(32), None, "needs 32 bytes"),
        ({"w": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [0, 32]}}, bytes(32), None, "needs 16 bytes"),
        (GOOD, bytes(20), None, "truncated"),
        (
            {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
             "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
            bytes(24), None, "'a' (bytes 0-16) and 'b' (bytes 8-24) overlap",
        ),
    ],
)  # fmt: skip
def test_corrupt_safetensors_fail_with_one_line(tmp_path, header, data, header_len, expect):
    path = tmp_path / "bad.safetensors"
    if header == b"":
        path.write_bytes(b"\x01\x02")
    else:
        _raw_file(path, header, data, header_len)
    with pytest.raises(SourceError) as exc:
        SafetensorsFile(path)
    msg = _one_line_error(exc)
    assert expect in msg and "bad.safetensors" in msg


def test_truncated_real_file_is_caught_at_open(tmp_path):
    x = RNG.standard_normal((64, 64), dtype=np.float32)
    path = write_safetensors(tmp_path / "m.safetensors", {"a": x, "b": x})
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(SourceError, match=r"tensor 'b'.*truncated"):
        SafetensorsFile(path)


def test_valid_file_with_metadata_and_padding(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", {"w": np.ones((2, 4), np.float32)},
                             metadata={"format": "pt"})  # fmt: skip
    with SafetensorsFile(path) as f:
        assert f.metadata == {"format": "pt"}
        assert [t.name for t in f.tensors] == ["w"]
        assert f.data_start % 8 == 0


def test_matches_the_safetensors_library(tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = {f"t{i}": RNG.standard_normal((8, 16 * (i + 1)), dtype=np.float32) for i in range(5)}
    tensors["h"] = tensors["t0"].astype(np.float16)
    save_file(tensors, str(tmp_path / "lib.safetensors"))
    ref = load_file(str(tmp_path / "lib.safetensors"))
    with SafetensorsFile(tmp_path / "lib.safetensors") as f:
        assert {t.name for t in f.tensors} == set(ref)
        for t in f.tensors:
            np.testing.assert_array_equal(t.read().reshape(ref[t.name].shape), ref[t.name])


# ---- folders and files --------------------------------------------------------------------


def test_folder_source_fields(tmp_path):
    folder = _folder(tmp_path / "m", {"w": np.ones((2, 32), np.float32)})
    with open_source(folder) as src:
        assert isinstance(src, ModelSource)
        assert src.config == CONFIG
        assert src.origin == {
            "kind": "folder",
            "path": str(folder.resolve()),
            "repo_id": None,
            "revision": None,
        }
        assert src.root == folder.resolve()
        assert src.files == [folder / "model.safetensors"]


def test_sharded_safetensors_folder_follows_the_index(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    parts = {
        "model-00001-of-00002.safetensors": {"b.weight": np.full((2, 32), 1, np.float32), "a.weight": np.full((2, 32), 2, np.float32)},
        "model-00002-of-00002.safetensors": {"c.weight": np.full((2, 32), 3, np.float32), "extra": np.zeros(4, np.float32)},
    }  # fmt: skip
    weight_map = {}
    for fname, tensors in parts.items():
        write_safetensors(folder / fname, tensors)
        weight_map.update({n: fname for n in tensors if n != "extra"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    with open_source(folder) as src:
        assert src.names == ["b.weight", "a.weight", "c.weight"]
        assert src.tensor("c.weight").read()[0, 0] == 3
        assert [p.name for p in src.files] == list(parts)
    # the index can also be named directly
    with open_source(folder / "model.safetensors.index.json") as src:
        assert src.origin["kind"] == "safetensors" and len(src) == 3


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: (d / "model-00002-of-00002.safetensors").unlink(), "names shard model-00002-of-00002.safetensors"),
        (lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": {"zz": "model-00001-of-00002.safetensors"}}'), "maps tensor 'zz'"),
        (lambda d: (d / "model.safetensors.index.json").write_text('{"weights": {}}'), "no weight_map"),
        (lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../x.safetensors"}}'), "outside the model folder"),
        (lambda d: (d / "model.safetensors.index.json").write_text("{"), "not valid JSON"),
        (lambda d: (d / "config.json").unlink(), "no config.json in"),
        (lambda d: (d / "config.json").write_text("[1]"), "not a model config"),
        (lambda d: (d / "config.json").write_text("{'a': 1}"), "config.json: not valid JSON"),
    ],
)  # fmt: skip
def test_broken_folders_fail_with_one_line(tmp_path, mutate, expect):
    folder = tmp_path / "m"
    folder.mkdir()
    weight_map = {}
    for i in (1, 2):
        fname = f"model-0000{i}-of-00002.safetensors"
        write_safetensors(folder / fname, {f"t{i}": np.zeros((2, 32), np.float32)})
        weight_map[f"t{i}"] = fname
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    with open_source(folder) as src:
        assert src.names == ["t1", "t2"]
    mutate(folder)
    with pytest.raises(SourceError) as exc:
        open_source(folder)
    assert expect in _one_line_error(exc)


def test_missing_paths_and_empty_folders(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder: .*nope"):
        open_source(tmp_path / "nope")
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source("./not/here")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(SourceError, match="no weights in"):
        open_source(empty)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SourceError, match="is not a model"):
        open_source(tmp_path / "notes.txt")


def test_other_safetensors_names_are_found_and_duplicates_refused(tmp_path):
    folder = _folder(
        tmp_path / "m", {"a": np.zeros((2, 32), np.float32)}, name="consolidated.safetensors"
    )
    with open_source(folder) as src:
        assert src.names == ["a"]
    write_safetensors(folder / "other.safetensors", {"a": np.zeros((2, 32), np.float32)})
    with pytest.raises(
        SourceError, match="'a' is in both consolidated.safetensors and other.safetensors"
    ):
        open_source(folder)


def test_single_safetensors_file_needs_a_config(tmp_path):
    weights = write_safetensors(tmp_path / "w.safetensors", {"w": np.ones((2, 32), np.float32)})
    with pytest.raises(SourceError) as exc:
        open_source(weights)
    assert "--config" in _one_line_error(exc)
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps(CONFIG))
    with open_source(str(weights), config=cfg_dir / "config.json") as src:
        assert src.origin["kind"] == "safetensors" and src.origin["path"] == str(weights.resolve())
        assert src.config == CONFIG and src.root == cfg_dir.resolve()
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG, "beside": True}))
    with open_source(weights) as src:
        assert src.config["beside"] is True
    with pytest.raises(SourceError, match="config file not found"):
        open_source(weights, config=tmp_path / "missing.json")


def test_config_override_for_a_folder(tmp_path):
    folder = _folder(tmp_path / "m", {"w": np.ones((2, 32), np.float32)})
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"model_type": "qwen2"}))
    with open_source(folder, config=other) as src:
        assert src.config == {"model_type": "qwen2"} and src.root == folder.resolve()


def test_revision_for_a_local_path_is_a_usage_error(tmp_path):
    folder = _folder(tmp_path / "m", {"w": np.ones((2, 32), np.float32)})
    with pytest.raises(UsageError, match="--revision"):
        open_source(str(folder), revision="main")


def test_an_existing_local_folder_wins_over_a_hub_id(tmp_path, monkeypatch):
    _folder(tmp_path / "org" / "name", {"w": np.ones((2, 32), np.float32)})
    monkeypatch.chdir(tmp_path)
    with open_source("org/name") as src:
        assert src.origin["kind"] == "folder"


@pytest.mark.parametrize(
    "spec, is_id",
    [
        ("Qwen/Qwen2.5-0.5B", True), ("meta-llama/Llama-3.2-1B", True), ("a/b", True),
        ("./a/b", False), ("/abs/path", False), ("~/models/x", False), ("model", False),
        ("a/b/c", False), ("org/model.safetensors", False), ("org/pytorch_model.bin", False),
        ("a\\b", False), ("org/..", False), ("-x/y", False),
    ],
)  # fmt: skip
def test_hub_id_detection(spec, is_id):
    assert looks_like_hub_id(spec) is is_id


def test_importing_sources_pulls_in_no_heavy_modules():
    import subprocess

    code = (
        "import sys; import nntrtool.sources; "
        "bad = [m for m in ('torch', 'transformers', 'numba', 'huggingface_hub') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_errors_are_nntr_errors():
    assert issubclass(SourceError, NntrError)
