"""Broken GGUF files: one line, exit 2, no output, no traceback (fuzzing: test_format_fuzz.py).

The files are built with gguf's writer (numpy only) and then damaged byte by byte.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from gguf_models import make_small_gguf

from nntrtool.errors import SourceError
from nntrtool.sources import open_source


def _valid() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return make_small_gguf(Path(d) / "v.gguf").read_bytes()


VALID = _valid()
N_TENSORS, N_KV = struct.unpack_from("<QQ", VALID, 8)


def _first_tensor_info(blob: bytes) -> int:
    """Byte offset of the first tensor record (after the metadata)."""
    at = blob.index(b"token_embd.weight") - 8
    return at


def _damage(kind: str) -> bytes:
    b = bytearray(VALID)
    if kind == "truncated":
        return bytes(b[: len(b) // 2])
    if kind == "truncated-header":
        return bytes(b[:40])
    if kind == "magic":
        b[:4] = b"GGUG"
    elif kind == "version":
        b[4:8] = struct.pack("<I", 7)
    elif kind == "big-endian":
        b[4:8] = struct.pack(">I", 3)
    elif kind == "tensor-count":
        b[8:16] = struct.pack("<Q", 1 << 60)
    elif kind == "kv-count":
        b[16:24] = struct.pack("<Q", 1 << 40)
    elif kind == "string-length":
        b[24:32] = struct.pack("<Q", 1 << 50)  # the first key's length
    elif kind == "tensor-type":
        at = _first_tensor_info(VALID) + 8 + len("token_embd.weight") + 4 + 16
        b[at : at + 4] = struct.pack("<I", 999)
    elif kind == "data-offset":
        at = _first_tensor_info(VALID) + 8 + len("token_embd.weight") + 4 + 16 + 4
        b[at : at + 8] = struct.pack("<Q", len(VALID) // 32 * 32)
    elif kind == "zero-row":  # the Q8_0 tensor's rows hold no values
        at = VALID.index(b"blk.0.attn_q.weight") + len("blk.0.attn_q.weight") + 4
        b[at : at + 8] = struct.pack("<Q", 0)
    elif kind == "control-name":
        at = _first_tensor_info(VALID) + 8 + len("token")
        b[at] = ord("\n")
    elif kind == "architecture":
        i = VALID.index(b"llama")
        b[i : i + 5] = b"zzzzz"
    return bytes(b)


KINDS = {
    "truncated": "truncated",
    "truncated-header": "truncated",
    "magic": "not a GGUF file",
    "version": "version 7 is not supported",
    "big-endian": "big-endian",
    "tensor-count": "corrupt",
    "kv-count": "corrupt",
    "string-length": "claims",
    "tensor-type": "ggml type 999",
    "data-offset": "past the end of the",
    "architecture": "is not a supported family",
    "zero-row": "attn_q.weight' has dimensions",
    "control-name": "embd.weight' holds control characters",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_gguf_is_one_line_exit_2_and_no_output(kind, tmp_path, capsys):
    from nntrtool.cli.app import main

    src = tmp_path / "bad.gguf"
    src.write_bytes(_damage(kind))
    out = tmp_path / "o.nntr"
    with pytest.raises(SourceError, match=KINDS[kind]) as err:
        open_source(src)
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit) as ex:
        main(["convert", str(src), str(out)])
    assert ex.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and KINDS[kind] in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_valid_small_gguf_opens():
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.gguf"
        path.write_bytes(VALID)
        with open_source(path) as src:
            assert src.names[0] == "lm_head.weight"
            assert src.tensor("model.layers.0.self_attn.q_proj.weight").dtype == "Q8_0"
            for t in src.tensors:
                assert t.read_f32().shape == (t.rows, t.cols)


def _gguf_with_a_mystery_tensor(path, arch="llama"):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.add_tensor("mystery.weight", np.arange(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unmapped_tensor_is_refused_naming_it_and_the_families(tmp_path):
    path = _gguf_with_a_mystery_tensor(tmp_path / "x.gguf")
    with pytest.raises(SourceError) as err:
        open_source(path)
    msg = str(err.value)
    assert "'mystery.weight'" in msg and "llama" in msg and "gemma3" in msg
    assert "--gguf-raw-names" in msg and "\n" not in msg


def test_gguf_raw_names_keeps_the_gguf_names_and_values_and_says_so(tmp_path):
    path = _gguf_with_a_mystery_tensor(tmp_path / "x.gguf")
    with open_source(path, gguf_raw_names=True) as src:
        assert sorted(t.name for t in src.tensors) == ["mystery.weight", "token_embd.weight"]
        assert np.array_equal(src.tensor("mystery.weight").read_f32()[0], np.arange(4))
        assert src.origin["gguf_raw_names"] is True
        assert any("--gguf-raw-names" in n for n in src.notes)
        assert src.config["tie_word_embeddings"] is True


def test_unknown_family_refused_then_converted_raw_from_the_cli(tmp_path, capsys):
    from nntrtool.cli.app import main
    from nntrtool.format import NntrFile

    path = _gguf_with_a_mystery_tensor(tmp_path / "x.gguf", arch="falcon")
    out = tmp_path / "o.nntr"
    with pytest.raises(SystemExit) as err:
        main(["convert", str(path), str(out), "--quant-type", "keep"])
    assert err.value.code == 2 and not out.exists()
    line = capsys.readouterr().err.strip()
    assert "'falcon' is not a supported family" in line and len(line.splitlines()) == 1
    with pytest.raises(SystemExit) as err:
        main(["convert", str(path), str(out), "--quant-type", "keep", "--gguf-raw-names"])
    assert err.value.code == 0
    assert "--gguf-raw-names" in capsys.readouterr().err
    with NntrFile(out) as nf:
        assert nf.config["nntrtool"]["source"]["gguf_raw_names"] is True
        assert set(nf.names) == {"mystery.weight", "token_embd.weight"}
    with pytest.raises(SystemExit) as err:  # verify reads the GGUF the same raw way
        main(["verify", str(out), str(path)])
    assert err.value.code == 0


def test_bf16_and_f16_gguf_tensors_read_like_safetensors_ones(tmp_path):
    import gguf

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 32)).astype(np.float32)
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)
    w = gguf.GGUFWriter(str(tmp_path / "b.gguf"), "qwen3")
    w.add_block_count(1)
    w.add_tensor(
        "token_embd.weight",
        bits.view(np.uint8).reshape(4, 64),
        raw_dtype=gguf.GGMLQuantizationType.BF16,
    )
    w.add_tensor("output.weight", x.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open_source(tmp_path / "b.gguf") as src:
        emb = src.tensor("model.embed_tokens.weight")
        assert emb.dtype == "BF16" and emb.shape == (4, 32)
        np.testing.assert_array_equal(emb.read(), bits)
        np.testing.assert_array_equal(
            emb.read_f32(), (bits.astype(np.uint32) << 16).view(np.float32)
        )
        head = src.tensor("lm_head.weight")
        np.testing.assert_array_equal(
            head.read_f32(1, 3), x.astype(np.float16)[1:3].astype(np.float32)
        )


def test_absurd_block_count_does_not_size_the_name_table(tmp_path):
    import gguf

    path = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_block_count(4_000_000_000)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # the absurd count is refused for contradicting the tensors, not used to size a table
    with pytest.raises(SourceError, match="num_hidden_layers"):
        open_source(path)


def test_metadata_of_the_wrong_type_is_one_line(tmp_path):
    import gguf

    path = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_string("qwen3.embedding_length", "wide")
    w.add_tensor("token_embd.weight", np.ones((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(SourceError, match="embedding_length.*not a valid number"):
        open_source(path)


def test_config_option_is_refused_for_a_gguf(tmp_path):
    from nntrtool.errors import UsageError

    path = make_small_gguf(tmp_path / "m.gguf")
    cfg = tmp_path / "config.json"
    cfg.write_text("{}")
    with pytest.raises(UsageError, match="--config"):
        open_source(path, config=cfg)


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("num_hidden_layers", 3, "num_hidden_layers"),
        ("intermediate_size", 160, "intermediate_size"),
    ],
)
def test_metadata_that_contradicts_the_tensors_is_one_line(hf_model, tmp_path, key, value, needle):
    """A GGUF whose metadata says other sizes than its tensors have is refused, naming the key."""
    import json
    import shutil

    from gguf_models import write_gguf

    from nntrtool.errors import SourceError
    from nntrtool.sources import open_source

    folder = tmp_path / "hf"
    shutil.copytree(hf_model("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    path = write_gguf(folder, tmp_path / "bad.gguf")
    with pytest.raises(SourceError) as err:
        open_source(path)
    message = str(err.value)
    assert needle in message and str(value) in message
    assert len(message.splitlines()) <= 3
