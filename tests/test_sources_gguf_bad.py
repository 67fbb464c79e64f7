"""Broken GGUF files: one line, exit 2, no output, no traceback; and fuzzing the opener.

The files are built with gguf's writer (numpy only) and then damaged byte by byte.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nntrtool.errors import SourceError
from nntrtool.sources import open_source


def make_small_gguf(path: Path, arch: str = "llama", *, output: bool = True) -> Path:
    """A tiny valid llama GGUF: F32, F16 and Q8_0 tensors, the metadata the reader needs."""
    import gguf

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_context_length(64)
    w.add_feed_forward_length(64)
    w.add_token_list([f"t{i}" for i in range(8)])
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 32)).astype(np.float32))
    q = gguf.quants.quantize(
        rng.standard_normal((32, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_k.weight", rng.standard_normal((16, 32)).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(32, np.float32))
    if output:
        w.add_tensor("output.weight", rng.standard_normal((8, 32)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


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
    "architecture": "no tensor name table",
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


def test_unmapped_tensor_keeps_its_name_with_a_note(tmp_path):
    import gguf

    path = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.add_tensor("mystery.weight", np.zeros((4,), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open_source(path) as src:
        assert "mystery.weight" in src
        assert any("mystery.weight" in n for n in src.notes)
        assert src.config["tie_word_embeddings"] is True


def _open_only_source_errors(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.gguf"
        path.write_bytes(blob)
        try:
            src = open_source(path)
        except SourceError as err:
            assert str(err) and "\n" not in str(err)
            return
        with src:
            for t in src.tensors:
                try:
                    t.read_f32(0, min(t.rows, 2))
                except SourceError:
                    pass


FUZZ = settings(
    max_examples=150,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HEADER_END = _first_tensor_info(VALID) + 200


@FUZZ
@given(st.data())
def test_mutated_gguf_only_raises_source_error(data):
    blob = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, HEADER_END))
        blob[at] = data.draw(st.integers(0, 255))
    _open_only_source_errors(bytes(blob))


@FUZZ
@given(st.integers(0, len(VALID)), st.binary(max_size=64))
def test_truncated_or_extended_gguf_only_raises_source_error(cut, extra):
    _open_only_source_errors(VALID[:cut] + extra)


@FUZZ
@given(st.binary(max_size=512))
def test_bytes_after_gguf_magic_only_raise_source_error(tail):
    _open_only_source_errors(b"GGUF" + struct.pack("<I", 3) + tail)


@FUZZ
@given(st.integers(0, 2**64 - 1), st.sampled_from([8, 16, 24, 32]))
def test_absurd_counts_and_lengths_are_refused_fast(value, at):
    blob = bytearray(VALID)
    blob[at : at + 8] = struct.pack("<Q", value)
    _open_only_source_errors(bytes(blob))
