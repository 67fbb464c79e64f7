"""Property-based fuzzing of the NNTR reader: no input makes it fail other than with FormatError;
and of the GGUF opener: nothing but SourceError.

Inputs are arbitrary bytes, bytes behind a valid magic and version, structured headers with
random field values, and mutations (byte changes, truncations, insertions) of valid files.
Whatever is accepted must satisfy every invariant the format promises.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nntrtool.errors import FormatError, SourceError
from nntrtool.format import ALIGNMENT, NntrFile, NntrWriter, TensorSpec, read_directory
from nntrtool.format.binary import FIXED_HEADER, align_up
from nntrtool.qtypes import F32, LAYOUTS, Q4_0, Q4_0_REPACKED, Q6_K, Q8_0
from nntrtool.sources import open_source

FUZZ = settings(
    max_examples=300,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SPECS = [
    TensorSpec("tok", Q6_K, (2, 256)),
    TensorSpec("norm", F32, (8,)),
    TensorSpec("q", Q4_0_REPACKED, (4, 64), LAYOUTS["q4_0_4x4"]),
    TensorSpec("k", Q4_0, (2, 32)),
    TensorSpec("s", F32, ()),
    TensorSpec("v", Q8_0, (1, 32)),
]


def _make_valid() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.nntr"
        rng = np.random.default_rng(1)
        with NntrWriter(path, {"model_type": "llama", "n": [1, 2.5, None]}, SPECS) as w:
            for s in SPECS:
                w.write(s.name, rng.integers(0, 256, s.nbytes, dtype=np.uint8))
        return path.read_bytes()


VALID = _make_valid()
HEADER_END = struct.unpack_from("<Q", VALID, 16)[0]


def check_accepted(buf: bytes) -> None:
    """Parse ``buf``; if accepted, every promise of the format must hold."""
    try:
        d = read_directory(buf)
    except FormatError as err:
        text = str(err)
        assert text and "\n" not in text
        return
    assert d.version == 1 and isinstance(d.config, dict)
    assert d.data_start % ALIGNMENT == 0 and d.data_start <= len(buf)
    end = d.data_start
    names = set()
    for e in sorted(d.tensors, key=lambda e: e.offset):
        assert e.name and e.name not in names
        names.add(e.name)
        assert e.offset % ALIGNMENT == 0 and e.offset >= end
        assert e.nbytes == e.ttype.nbytes(e.shape) and e.nbytes > 0
        assert (e.layout is not None) == (e.ttype is Q4_0_REPACKED)
        end = e.end
    assert end == len(buf)


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(blob):
    check_accepted(blob)


@FUZZ
@given(st.binary(max_size=1024))
def test_bytes_after_valid_magic_and_version(tail):
    check_accepted(b"NNTR" + struct.pack("<I", 1) + tail)


@FUZZ
@given(st.data())
def test_mutated_valid_file(data):
    blob = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        # mostly hit the header and directory, where every byte means something
        limit = HEADER_END if data.draw(st.booleans()) else len(blob)
        at = data.draw(st.integers(0, max(limit, 1) - 1))
        kind = data.draw(st.sampled_from(["set", "flip", "insert", "delete", "u32", "u64"]))
        if at >= len(blob):
            break
        if kind == "set":
            blob[at] = data.draw(st.integers(0, 255))
        elif kind == "flip":
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del blob[at : at + data.draw(st.integers(1, 16))]
        else:
            fmt = "<I" if kind == "u32" else "<Q"
            if at + struct.calcsize(fmt) <= len(blob):
                value = data.draw(
                    st.sampled_from([0, 1, 3, 63, 64, 2**31, 2**32 - 1, 2**63, 2**64 - 1])
                    if fmt == "<Q"
                    else st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 2**31, 2**32 - 1])
                )
                struct.pack_into(fmt, blob, at, value % (1 << (8 * struct.calcsize(fmt))))
    check_accepted(bytes(blob))


@FUZZ
@given(st.integers(0, len(VALID)), st.binary(max_size=80))
def test_truncated_or_extended_valid_file(cut, extra):
    check_accepted(VALID[:cut])
    check_accepted(VALID + extra)


def _entry(
    name: bytes, type_id: int, dims: list[int], rows: int, inter: int, off: int, n: int, fl: int
) -> bytes:
    return (
        struct.pack("<I", len(name))
        + name
        + struct.pack("<II", type_id, len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IIQQII", rows, inter, off, n, 0, fl)
    )


small_u64 = st.one_of(st.integers(0, 600), st.sampled_from([2**32, 2**63, 2**64 - 1]))


def _implied_nbytes(type_id: int, dims: list[int]) -> int | None:
    from nntrtool.qtypes import TYPES_BY_ID

    ttype = TYPES_BY_ID.get(type_id)
    try:
        return ttype.nbytes(dims) if ttype and all(dims) else None
    except ValueError:
        return None


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b", b"c", b"", b"\xff", b"a"]),
            st.sampled_from([3, 4, 5, 6, 7, 0, 9]),
            st.lists(st.sampled_from([1, 2, 4, 8, 32, 256, 0, 2**40, 2**64 - 1]), max_size=9),
            st.sampled_from([0, 4, 8, 3]),
            st.sampled_from([0, 4, 8, 2]),
            st.sampled_from([256, 512, 1024, 0, 64, 65, 2**63]),
            st.one_of(st.none(), small_u64),  # None: the size the type and shape imply
            st.sampled_from([0, 0, 0, 1]),
        ),
        max_size=3,
    ),
    st.one_of(st.none(), st.integers(0, 4096)),  # None: the file ends where its data ends
    st.booleans(),
)
def test_structured_headers(entries, size, fix_data_start):
    fixed = []
    for name, type_id, dims, rows, inter, off, n, flags in entries:
        if n is None:
            n = (_implied_nbytes(type_id, dims) or 0) % (1 << 64)
        fixed.append((name, type_id, dims, rows, inter, off, n, flags))
    body = b"{}" + struct.pack("<I", len(fixed))
    body += b"".join(_entry(*e) for e in fixed)
    dir_end = FIXED_HEADER.size + len(body)
    data_start = align_up(dir_end) if fix_data_start else (size or 0)
    blob = FIXED_HEADER.pack(b"NNTR", 1, 0, 2, data_start) + body
    if size is None:
        size = max([data_start] + [min(e[5] + e[6], 1 << 16) for e in fixed])
    check_accepted(blob.ljust(max(size, len(blob)), b"\0"))


def test_structured_headers_can_be_valid():
    """The structured generator above is not vacuous: its building blocks make valid files."""
    body = b"{}" + struct.pack("<I", 2)
    body += _entry(b"a", 6, [4], 0, 0, 192, 16, 0) + _entry(b"b", 4, [2, 32], 0, 0, 256, 36, 0)
    assert align_up(FIXED_HEADER.size + len(body)) == 192
    blob = (FIXED_HEADER.pack(b"NNTR", 1, 0, 2, 192) + body).ljust(292, b"\0")
    d = read_directory(blob)
    assert [(t.name, t.ttype, t.shape) for t in d.tensors] == [
        ("a", F32, (4,)),
        ("b", Q4_0, (2, 32)),
    ]


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_nntrfile_on_disk_only_raises_format_error(data):
    """The same through NntrFile and a real mapped file (mutations and arbitrary bytes)."""
    if data.draw(st.booleans()):
        blob = bytearray(VALID)
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, HEADER_END - 1))] = data.draw(st.integers(0, 255))
        blob = bytes(blob[: data.draw(st.integers(1, len(blob)))])
    else:
        blob = data.draw(st.binary(min_size=1, max_size=512))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.nntr"
        path.write_bytes(blob)
        try:
            f = NntrFile(path)
        except FormatError as err:
            assert str(err).startswith(str(path))
            return
        with f:
            for t in f.tensors:
                assert f.raw(t.name).size == t.nbytes
                f.array(t.name)
                f.check(t.name)


@pytest.mark.parametrize("cut", range(0, len(VALID), 7))
def test_every_truncation_is_rejected(cut):
    with pytest.raises(FormatError):
        read_directory(VALID[:cut] if cut else b"")


def test_every_single_header_byte_change_is_caught_or_harmless():
    """Flip every bit of the header/directory: the reader rejects it or it still reads."""
    rejected = 0
    for at in range(HEADER_END):
        for bit in (0, 7):
            blob = bytearray(VALID)
            blob[at] ^= 1 << bit
            try:
                read_directory(bytes(blob))
            except FormatError:
                rejected += 1
    # only config text, name bytes, checksums and padding can change and still read
    assert rejected > HEADER_END // 2


# ---- GGUF: the opener raises SourceError and nothing else ---------------------------------


def _small_gguf() -> bytes:
    from gguf_models import make_small_gguf

    with tempfile.TemporaryDirectory() as d:
        return make_small_gguf(Path(d) / "v.gguf").read_bytes()


GGUF_VALID = _small_gguf()


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


GGUF_FUZZ = settings(
    max_examples=150,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
GGUF_HEADER_END = GGUF_VALID.index(b"token_embd.weight") + 200


@GGUF_FUZZ
@given(st.data())
def test_mutated_gguf_only_raises_source_error(data):
    blob = bytearray(GGUF_VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, GGUF_HEADER_END))
        blob[at] = data.draw(st.integers(0, 255))
    _open_only_source_errors(bytes(blob))


@GGUF_FUZZ
@given(st.integers(0, len(GGUF_VALID)), st.binary(max_size=64))
def test_truncated_or_extended_gguf_only_raises_source_error(cut, extra):
    _open_only_source_errors(GGUF_VALID[:cut] + extra)


@GGUF_FUZZ
@given(st.binary(max_size=512))
def test_bytes_after_gguf_magic_only_raise_source_error(tail):
    _open_only_source_errors(b"GGUF" + struct.pack("<I", 3) + tail)


@GGUF_FUZZ
@given(st.integers(0, 2**64 - 1), st.sampled_from([8, 16, 24, 32]))
def test_absurd_counts_and_lengths_are_refused_fast(value, at):
    blob = bytearray(GGUF_VALID)
    blob[at : at + 8] = struct.pack("<Q", value)
    _open_only_source_errors(bytes(blob))
