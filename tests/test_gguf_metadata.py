"""GGUF metadata read by nntrtool's own header scan: every value type as ``gguf.GGUFReader``
reads it (the oracle), big arrays left in the file until asked for, damage one line."""

from __future__ import annotations

import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nntrtool.errors import SourceError
from nntrtool.sources.gguf_file import GGUFFile, StringArray

TOKENS = ["<pad>", "", "▁héllo", "日本語", "a b", "\n", "x" * 300]


def _write(path: Path, extra=None, tokens=TOKENS) -> Path:
    import gguf
    from gguf import GGUFValueType as V

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 1e-6)
    w.add_bool("t.bool", True)
    w.add_bool("t.false", False)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", 0.1)
    w.add_string("t.str", "naïve ✓")
    w.add_string("t.empty", "")
    for vt, values in [
        (V.UINT8, [0, 255]),
        (V.INT8, [-128, 127]),
        (V.UINT16, [1, 65535]),
        (V.INT16, [-5, 5]),
        (V.UINT32, [7, 2**32 - 1]),
        (V.INT32, [-1, 1, 3]),
        (V.FLOAT32, [0.5, -1e-3, 3.25]),
        (V.BOOL, [True, False, True]),
        (V.UINT64, [2**64 - 1]),
        (V.INT64, [-(2**63), 2**63 - 1]),
        (V.FLOAT64, [0.1, -2.5]),
    ]:
        w.add_key_value(f"a.{vt.name.lower()}", values, V.ARRAY, sub_type=vt)
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(len(tokens))])
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(["a b", "ab c"])
    for key, value in (extra or {}).items():
        w.add_string(key, value)
    # one embedding row per token: a longer vocabulary contradicts the tensors
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def meta_gguf(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("meta") / "m.gguf")


def test_every_value_reads_as_gguf_reader_reads_it(meta_gguf):
    from gguf import GGUFReader

    reader = GGUFReader(meta_gguf, "r")
    # the reader lists the header's counts as pseudo-keys "GGUF.version" ...
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    with GGUFFile(meta_gguf) as gf:
        assert gf.keys == tuple(fields) and len(fields) == 31
        assert gf.version == reader.fields["GGUF.version"].contents()
        for key, f in fields.items():
            ours, theirs = gf.field(key), f.contents()
            assert ours == theirs and type(ours) is type(theirs), key
            if isinstance(theirs, list):
                assert gf.count(key) == len(theirs)
                arr = gf.array(key)
                assert list(arr) == theirs, key
                if isinstance(arr, np.ndarray):
                    assert arr.dtype == f.parts[-1].dtype and not arr.flags.writeable
            else:
                assert gf.count(key) is None and gf.array(key) is None
        assert gf.field("no.such.key", 7) == 7
        assert gf.count("no.such.key") is None and gf.array("no.such.key") is None


def test_string_arrays_are_decoded_on_demand(meta_gguf):
    with GGUFFile(meta_gguf) as gf:
        tokens = gf.array("tokenizer.ggml.tokens")
        assert isinstance(tokens, StringArray) and len(tokens) == len(TOKENS)
        assert tokens.tolist() == TOKENS == list(tokens)
        assert [tokens[i] for i in range(len(TOKENS))] == TOKENS
        assert tokens[-1] == TOKENS[-1]
        with pytest.raises(IndexError):
            tokens[len(TOKENS)]
        assert tokens.nbytes == sum(8 + len(t.encode()) for t in TOKENS)
        offsets = tokens.offsets()
        assert offsets[0] == tokens.begin and offsets[-1] == tokens.end
        assert list(tokens.raw()) == [t.encode() for t in TOKENS]


BIG = 1 << 17


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory):
    tokens = [f"▁t{i:x}" for i in range(BIG)]
    return _write(tmp_path_factory.mktemp("big") / "big.gguf", tokens=tokens), tokens


def test_a_big_vocabulary_costs_no_object_per_token_until_read(big_vocab):
    path, tokens = big_vocab
    n = len(tokens)
    tracemalloc.start()
    try:
        with GGUFFile(path) as gf:
            assert gf.count("tokenizer.ggml.tokens") == n
            scores = gf.array("tokenizer.ggml.scores")
            assert scores.shape == (n,) and scores[-1] == -(n - 1)
            _, opened = tracemalloc.get_traced_memory()
            # One Python str per token would take ~7 MB; the scan allocates a few KB.
            assert opened < 1 << 20
            assert gf.array("tokenizer.ggml.tokens").tolist() == tokens
    finally:
        tracemalloc.stop()


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (Linux's /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:  # a mapping's first line: "addr-addr perms ... path"
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_opening_a_gguf_model_leaves_its_vocabulary_unread(big_vocab, meta_gguf):
    from nntrtool.sources import open_source

    path, tokens = big_vocab
    with open_source(meta_gguf):  # imports and name tables out of the measure
        pass
    tracemalloc.start()
    try:
        with open_source(path) as src:
            assert "model.embed_tokens.weight" in src
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # one str per token would be ~7 MB


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's smaps")
def test_the_scanned_metadata_pages_leave_the_process(big_vocab):
    path, tokens = big_vocab
    assert path.stat().st_size > 2 << 20  # the vocabulary is megabytes of metadata
    with GGUFFile(path) as gf:
        assert _mapped_kib(path) <= 64
        assert gf.array("tokenizer.ggml.tokens")[-1] == tokens[-1]  # still readable
        assert _mapped_kib(path) > 64


def _at(blob: bytes, needle: bytes) -> int:
    return blob.index(needle)


def test_a_string_running_past_the_file_is_one_line(meta_gguf, tmp_path):
    blob = bytearray(meta_gguf.read_bytes())
    # the length prefix of the token "日本語": claim more bytes than the file has left
    at = _at(blob, "日本語".encode()) - 8
    blob[at : at + 8] = struct.pack("<Q", len(blob))
    bad = tmp_path / "b.gguf"
    bad.write_bytes(bytes(blob))
    with pytest.raises(SourceError, match="tokenizer.ggml.tokens.*run past the end") as err:
        GGUFFile(bad)
    assert "\n" not in str(err.value)


def test_text_that_is_not_utf8_is_refused_when_read(tmp_path):
    path = _write(tmp_path / "u.gguf", extra={"general.name": "ZZZZ"}, tokens=["ok", "YYYY"])
    blob = bytearray(path.read_bytes())
    for needle in (b"ZZZZ", b"YYYY"):
        at = _at(blob, needle)
        blob[at : at + 4] = b"\xff\xfe\xff\xfe"
    path.write_bytes(bytes(blob))
    with GGUFFile(path) as gf:  # nothing is decoded by opening
        with pytest.raises(SourceError, match="'general.name' is not UTF-8"):
            gf.field("general.name")
        tokens = gf.array("tokenizer.ggml.tokens")
        assert tokens[0] == "ok"
        for read in (tokens.tolist, lambda: tokens[1], lambda: gf.field("tokenizer.ggml.tokens")):
            with pytest.raises(SourceError, match="tokenizer.ggml.tokens.*not UTF-8"):
                read()


def test_closed_file_is_one_line(meta_gguf):
    gf = GGUFFile(meta_gguf)
    gf.close()
    with pytest.raises(SourceError, match="was closed"):
        gf.field("t.str")


def _small() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return _write(Path(d) / "s.gguf").read_bytes()


SMALL = _small()
HEADER_END = SMALL.index(b"token_embd.weight") + 64


@settings(
    max_examples=150,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_damaged_metadata_reads_only_raise_source_error(data):
    blob = bytearray(SMALL)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, HEADER_END))
        blob[at] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.gguf"
        path.write_bytes(bytes(blob))
        try:
            gf = GGUFFile(path)
        except SourceError as err:
            assert "\n" not in str(err)
            return
        with gf:
            for key in gf.keys:
                try:
                    gf.field(key)
                    arr = gf.array(key)
                    if isinstance(arr, StringArray) and len(arr):
                        arr[len(arr) - 1]
                except SourceError as err:
                    assert "\n" not in str(err)


def _aligned(path: Path, alignment: int) -> Path:
    import gguf

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(alignment)
    w.add_tensor("a.weight", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("b.weight", rng.standard_normal((2, 7)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("alignment", [32, 64, 4096])
def test_tensors_lie_where_gguf_reader_finds_them(tmp_path, alignment):
    from gguf import GGUFReader

    path = _aligned(tmp_path / "a.gguf", alignment)
    theirs = {t.name: np.array(t.data) for t in GGUFReader(path).tensors}
    with GGUFFile(path) as gf:
        assert gf.header.alignment == alignment and gf.header.data_start % alignment == 0
        assert [t.name for t in gf.tensors] == list(theirs)
        for t in gf.tensors:
            assert t.begin % alignment == 0
            np.testing.assert_array_equal(t.read(), theirs[t.name])


def test_an_alignment_that_is_not_a_power_of_two_is_one_line(tmp_path):
    blob = bytearray(_aligned(tmp_path / "a.gguf", 64).read_bytes())
    at = blob.index(b"general.alignment") + len("general.alignment") + 4
    blob[at : at + 4] = struct.pack("<I", 48)
    bad = tmp_path / "b.gguf"
    bad.write_bytes(bytes(blob))
    with pytest.raises(SourceError, match="general.alignment 48 is not a power of two"):
        GGUFFile(bad)
