"""NNTR v1 writer and reader: round trips for every type and layout, atomicity, validation."""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from nntrtool.errors import (
    DiskFullError,
    FormatError,
    NntrError,
    OutputExistsError,
    TensorNotFoundError,
    UsageError,
)
from nntrtool.format import (
    ALIGNMENT,
    NntrFile,
    NntrWriter,
    TensorSpec,
    plan_file,
    predict_file_size,
    read_directory,
)
from nntrtool.format.binary import FIXED_HEADER
from nntrtool.qtypes import (
    F16,
    F32,
    LAYOUTS,
    Q4_0,
    Q4_0_REPACKED,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
    TYPES,
)

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "vocab_size": 100,
    "nntrtool": {"version": "0.1.0", "quant_type": "q4_0", "repack_format": "q4_0_8"},
}


def every_kind_specs() -> list[TensorSpec]:
    """One tensor of every type and every repack layout, plus 1-D, 3-D and scalar shapes."""
    specs = [
        TensorSpec("model.embed_tokens.weight", F32, (10, 7)),
        TensorSpec("model.norm.weight", F32, (64,)),
        TensorSpec("scalar", F32, ()),
        TensorSpec("conv", F32, (2, 3, 5)),
        TensorSpec("q4", Q4_0, (3, 64)),
        TensorSpec("q4_3d", Q4_0, (2, 3, 32)),
        TensorSpec("q6", Q6_K, (5, 512)),
        TensorSpec("q8", Q8_0, (7, 96)),
        TensorSpec("q8_1d", Q8_0, (32,)),
        TensorSpec("q4k", Q4_K, (3, 512)),
        TensorSpec("q5k", Q5_K, (2, 256)),
        TensorSpec("q50", Q5_0, (5, 96)),
        TensorSpec("q51", Q5_1, (4, 64)),
        TensorSpec("h", F16, (6, 5)),
        TensorSpec("h_1d", F16, (7,)),
    ]
    for name, layout in LAYOUTS.items():
        specs.append(TensorSpec(f"rp.{name}", Q4_0_REPACKED, (2 * layout.rows, 64), layout))
    return specs


def random_bytes(spec: TensorSpec, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, spec.nbytes, dtype=np.uint8)


def write_file(path: Path, specs: list[TensorSpec], config: dict = CONFIG, chunks: int = 1, **kw):
    data = {s.name: random_bytes(s, i) for i, s in enumerate(specs)}
    with NntrWriter(path, config, specs, **kw) as w:
        for s in specs:
            for part in np.array_split(data[s.name], chunks):
                w.write(s.name, part)
    return data


def test_registry_types_all_covered():
    kinds = {s.ttype for s in every_kind_specs()}
    assert kinds == set(TYPES)
    assert {s.layout.name for s in every_kind_specs() if s.layout} == set(LAYOUTS)


@pytest.mark.parametrize("chunks", [1, 3])
def test_round_trip_every_type_and_layout(tmp_path, chunks):
    specs = every_kind_specs()
    path = tmp_path / "m.nntr"
    data = write_file(path, specs, chunks=chunks)
    assert path.stat().st_size == predict_file_size(CONFIG, specs)
    with NntrFile(path) as f:
        assert f.version == 1
        assert f.config == CONFIG
        assert f.file_size == path.stat().st_size
        assert [t.name for t in f.tensors] == [s.name for s in specs]
        for spec, entry in zip(specs, f.tensors, strict=True):
            assert entry.name in f
            assert f.tensor(spec.name) is entry
            assert entry.ttype is spec.ttype
            assert entry.shape == spec.shape
            assert entry.layout is spec.layout
            assert entry.nbytes == spec.nbytes == spec.ttype.nbytes(spec.shape)
            assert entry.offset % ALIGNMENT == 0
            assert entry.checksum == zlib.crc32(data[spec.name].tobytes())
            assert entry.spec() == spec
            raw = f.raw(spec.name)
            assert raw.dtype == np.uint8 and raw.ndim == 1
            np.testing.assert_array_equal(raw, data[spec.name])
            assert f.check(spec.name)
            arr = f.array(spec.name)
            if spec.ttype in (F32, F16):
                want = np.float32 if spec.ttype is F32 else np.float16
                assert arr.dtype == want and arr.shape == spec.shape
                np.testing.assert_array_equal(arr.reshape(-1).view(np.uint8), data[spec.name])
            else:
                rows = int(np.prod(spec.shape[:-1]))
                assert arr.dtype == np.uint8
                assert arr.shape == (rows, spec.ttype.row_bytes(spec.shape[-1]))
        assert f.bad_tensors() == []
        assert f.tensor("rp.q4_0_8").display_type == "q4_0_8"
        assert f.tensor("q6").display_type == "q6_k"
        assert [f.tensor(n).ttype.type_id for n in ("q4k", "q5k", "q50", "q51", "h")] == [
            8,
            9,
            10,
            11,
            12,
        ]


def test_views_are_zero_copy_and_read_only(tmp_path):
    specs = [TensorSpec("w", F32, (4, 4)), TensorSpec("q", Q4_0, (2, 32))]
    path = tmp_path / "m.nntr"
    write_file(path, specs)
    with NntrFile(path) as f:
        a = f.array("w")
        q = f.array("q")
        base = f.raw("w")
        assert np.shares_memory(a, base)
        assert not a.flags.writeable and not q.flags.writeable
        assert a.ctypes.data % ALIGNMENT == 0 and q.ctypes.data % ALIGNMENT == 0
    # views outlive close
    assert a.sum() == a.sum()


def test_float32_values_round_trip(tmp_path):
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    path = tmp_path / "m.nntr"
    with NntrWriter(path, {}, [TensorSpec("x", F32, x.shape)]) as w:
        w.write("x", x[:1])
        w.write("x", x[1:])
    with NntrFile(path) as f:
        np.testing.assert_array_equal(f.array("x"), x)


def test_write_accepts_any_dtype_and_non_contiguous(tmp_path):
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    path = tmp_path / "m.nntr"
    with NntrWriter(path, {}, [TensorSpec("x", F32, (8, 8))]) as w:
        w.write("x", x[:, :4].T.copy().T)  # Fortran-ordered view
        w.write("x", bytearray(np.ascontiguousarray(x[:, 4:]).tobytes()))
    expected = np.concatenate([x[:, :4].reshape(-1), x[:, 4:].reshape(-1)])
    with NntrFile(path) as f:
        np.testing.assert_array_equal(f.array("x").reshape(-1), expected)


def test_empty_file_without_tensors(tmp_path):
    path = tmp_path / "m.nntr"
    with NntrWriter(path, {"a": [1, 2]}, []):
        pass
    assert path.stat().st_size == predict_file_size({"a": [1, 2]}, [])
    assert path.stat().st_size % ALIGNMENT == 0
    with NntrFile(path) as f:
        assert f.tensors == [] and f.config == {"a": [1, 2]}


def test_config_encoding_is_deterministic():
    a = {"b": 1, "a": {"y": 2, "x": [1.5, "é"]}}
    b = {"a": {"x": [1.5, "é"], "y": 2}, "b": 1}
    specs = [TensorSpec("t", F32, (2,))]
    assert plan_file(a, specs).header == plan_file(b, specs).header
    assert plan_file({"v": np.int64(3)}, specs).header == plan_file({"v": 3}, specs).header


def test_existing_output_needs_force(tmp_path):
    path = tmp_path / "m.nntr"
    path.write_bytes(b"keep me")
    specs = [TensorSpec("t", F32, (2,))]
    with pytest.raises(OutputExistsError, match="--force"):
        NntrWriter(path, {}, specs)
    assert path.read_bytes() == b"keep me"
    # --force replaces only an earlier NNTR file, never a file of someone else's
    with pytest.raises(UsageError, match="not an NNTR file"):
        NntrWriter(path, {}, specs, force=True)
    assert path.read_bytes() == b"keep me"
    path.unlink()
    write_file(path, [TensorSpec("old", F32, (2,))])
    write_file(path, specs, force=True)
    with NntrFile(path) as f:
        assert f.names == ["t"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nntr"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_error_in_block_leaves_nothing(tmp_path, exc):
    path = tmp_path / "m.nntr"
    specs = [TensorSpec("a", F32, (4,)), TensorSpec("b", F32, (4,))]
    with pytest.raises(exc):
        with NntrWriter(path, {}, specs) as w:
            assert w.tmp_path is not None and w.tmp_path.exists()
            assert w.tmp_path.parent == tmp_path
            w.write("a", np.zeros(4, np.float32))
            raise exc()
    assert list(tmp_path.iterdir()) == []


def test_sigint_while_writing_leaves_nothing(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    (out / "m.nntr").write_bytes(b"NNTR previous")  # an earlier output
    script = (
        "import sys, time\n"
        "import numpy as np\n"
        "from nntrtool.format import NntrWriter, TensorSpec\n"
        "from nntrtool.qtypes import F32\n"
        "with NntrWriter(sys.argv[1], {}, [TensorSpec('a', F32, (1024,))], force=True) as w:\n"
        "    w.write('a', np.zeros(512, np.float32))\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(out / "m.nntr")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert len(list(out.iterdir())) == 2  # the target and the temporary file beside it
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode != 0
    assert [p.name for p in out.iterdir()] == ["m.nntr"]
    assert (out / "m.nntr").read_bytes() == b"NNTR previous"


def test_error_in_block_keeps_existing_output(tmp_path):
    path = tmp_path / "m.nntr"
    path.write_bytes(b"NNTR old")
    with pytest.raises(RuntimeError):
        with NntrWriter(path, {}, [TensorSpec("a", F32, (4,))], force=True):
            raise RuntimeError
    assert path.read_bytes() == b"NNTR old"
    assert list(tmp_path.iterdir()) == [path]


def test_incomplete_tensor_is_an_error(tmp_path):
    path = tmp_path / "m.nntr"
    specs = [TensorSpec("a", F32, (4,)), TensorSpec("b", F32, (4,))]
    with pytest.raises(FormatError, match=r"tensor 'a' got 8 of its 16 bytes before 'b'"):
        with NntrWriter(path, {}, specs) as w:
            w.write("a", np.zeros(2, np.float32))
            w.write("b", np.zeros(4, np.float32))
    with pytest.raises(FormatError, match=r"tensor 'b' got 4 of its 16 bytes"):
        with NntrWriter(path, {}, specs) as w:
            w.write("a", np.zeros(4, np.float32))
            w.write("b", np.zeros(1, np.float32))
    with pytest.raises(FormatError, match=r"tensor 'b' was never written"):
        with NntrWriter(path, {}, specs) as w:
            w.write("a", np.zeros(4, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_order_and_overflow_errors(tmp_path):
    path = tmp_path / "m.nntr"
    specs = [TensorSpec("a", F32, (4,)), TensorSpec("b", F32, (4,))]
    with pytest.raises(FormatError, match=r"'b' written out of order: expected 'a'"):
        with NntrWriter(path, {}, specs) as w:
            w.write("b", np.zeros(4, np.float32))
    with pytest.raises(FormatError, match=r"'a' got 20 bytes, more than its 16"):
        with NntrWriter(path, {}, specs) as w:
            w.write("a", np.zeros(5, np.float32))
    with pytest.raises(FormatError, match=r"'zz' is not in this file's directory"):
        with NntrWriter(path, {}, specs) as w:
            w.write("zz", b"")
    with pytest.raises(FormatError, match=r"'a' written out of order"):
        with NntrWriter(path, {}, specs) as w:
            w.write("a", np.zeros(4, np.float32))
            w.write("b", np.zeros(4, np.float32))
            w.write("a", b"")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TensorSpec("x", Q4_0, (4, 33)), "not a multiple of the q4_0 block size 32"),
        (TensorSpec("x", Q6_K, (4, 128)), "q6_k block size 256"),
        (TensorSpec("x", Q4_0, ()), "needs at least one dimension"),
        (TensorSpec("x", F32, (0, 4)), "dimension 0 of shape"),
        (TensorSpec("x", F32, (1,) * 9), "at most 8"),
        (TensorSpec("x", Q4_0_REPACKED, (8, 32)), "needs a repack layout"),
        (TensorSpec("x", Q4_0_REPACKED, (6, 32), LAYOUTS["q4_0_4"]), "6 rows are not a multiple"),
        (TensorSpec("x", Q4_0, (8, 32), LAYOUTS["q4_0_8"]), "cannot carry a repack layout"),
        (TensorSpec("", F32, (1,)), "non-empty"),
    ],
)
def test_bad_specs_rejected_before_writing(tmp_path, spec, message):
    with pytest.raises(FormatError, match=message):
        NntrWriter(tmp_path / "m.nntr", {}, [spec])
    with pytest.raises(FormatError, match=message):
        predict_file_size({}, [spec])
    assert list(tmp_path.iterdir()) == []


def test_duplicate_names_and_bad_config(tmp_path):
    specs = [TensorSpec("a", F32, (1,)), TensorSpec("a", F32, (1,))]
    with pytest.raises(FormatError, match="'a' appears twice"):
        NntrWriter(tmp_path / "m.nntr", {}, specs)
    with pytest.raises(FormatError, match="JSON"):
        NntrWriter(tmp_path / "m.nntr", {"x": float("nan")}, [])
    with pytest.raises(FormatError, match="JSON"):
        NntrWriter(tmp_path / "m.nntr", {"x": object()}, [])
    with pytest.raises(FormatError, match="must be a dict"):
        NntrWriter(tmp_path / "m.nntr", [1], [])  # type: ignore[arg-type]


def test_missing_output_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        NntrWriter(tmp_path / "nope" / "m.nntr", {}, [])
    with pytest.raises(UsageError, match="is a folder"):
        NntrWriter(tmp_path, {}, [])


def test_disk_full_becomes_disk_full_error(tmp_path, monkeypatch):
    path = tmp_path / "m.nntr"
    specs = [TensorSpec("a", F32, (1024,))]
    w = NntrWriter(path, {}, specs)
    w.open()

    class Full:
        def __init__(self, inner):
            self.inner = inner

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.inner, name)

    w._file = Full(w._file)
    with pytest.raises(DiskFullError, match="disk full while writing"):
        with w:
            w.write("a", np.zeros(1024, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_not_enough_space_checked_up_front(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=100))
    with pytest.raises(DiskFullError, match="not enough disk space"):
        with NntrWriter(tmp_path / "m.nntr", {}, [TensorSpec("a", F32, (1024,))]):
            pass
    assert list(tmp_path.iterdir()) == []


def test_missing_tensor_is_a_clear_key_error(tmp_path):
    path = tmp_path / "m.nntr"
    write_file(path, [TensorSpec("a", F32, (2,))])
    with NntrFile(path) as f:
        assert "b" not in f
        with pytest.raises(TensorNotFoundError, match="no tensor named 'b'") as info:
            f.tensor("b")
        assert isinstance(info.value, KeyError) and isinstance(info.value, NntrError)
        with pytest.raises(KeyError):
            f.raw("b")


def test_check_detects_corrupt_data(tmp_path):
    path = tmp_path / "m.nntr"
    specs = [TensorSpec("a", F32, (16,)), TensorSpec("b", Q4_0, (2, 32))]
    write_file(path, specs)
    with NntrFile(path) as f:
        off = f.tensor("b").offset + 5
    blob = bytearray(path.read_bytes())
    blob[off] ^= 0x01
    path.write_bytes(bytes(blob))
    with NntrFile(path) as f:  # opening validates the header only
        assert f.check("a")
        assert not f.check("b")
        assert f.bad_tensors() == ["b"]


def test_open_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        NntrFile(tmp_path / "missing.nntr")
    with pytest.raises(UsageError, match="is a folder"):
        NntrFile(tmp_path)
    empty = tmp_path / "empty.nntr"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        NntrFile(empty)
    other = tmp_path / "other.nntr"
    other.write_bytes(b"PK\x03\x04 zip file")
    with pytest.raises(FormatError, match=r"not an NNTR file: starts with b'PK\\x03\\x04'"):
        NntrFile(other)


# -- precise validation messages for hand-made corruptions ------------------------------------


def _valid_blob(tmp_path) -> tuple[bytes, NntrFile]:
    path = tmp_path / "v.nntr"
    write_file(
        path,
        [
            TensorSpec("a", F32, (3, 4)),
            TensorSpec("b", Q4_0_REPACKED, (4, 32), LAYOUTS["q4_0_4"]),
        ],
        config={"k": "v"},
    )
    return path.read_bytes(), NntrFile(path)


def _entry_fields(blob: bytes, index: int) -> dict[str, int]:
    """Absolute positions of the fields of directory entry ``index`` in a valid blob."""
    config_len = struct.unpack_from("<I", blob, 12)[0]
    pos = FIXED_HEADER.size + config_len + 4
    for i in range(index + 1):
        name_len = struct.unpack_from("<I", blob, pos)[0]
        fields = {"name_len": pos, "name": pos + 4}
        pos += 4 + name_len
        ndim = struct.unpack_from("<I", blob, pos + 4)[0]
        fields.update(type_id=pos, ndim=pos + 4, dims=pos + 8)
        pos += 8 + 8 * ndim
        fields.update(rows=pos, interleave=pos + 4, offset=pos + 8, nbytes=pos + 16)
        fields.update(crc=pos + 24, flags=pos + 28)
        pos += 32
        if i == index:
            return fields
    raise AssertionError


def _patch(blob: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def test_validation_messages(tmp_path):
    blob, f = _valid_blob(tmp_path)
    f.close()
    read_directory(blob)  # the pristine blob is valid
    a = _entry_fields(blob, 0)
    b = _entry_fields(blob, 1)
    cases = [
        (b"NNTX" + blob[4:], "not an NNTR file"),
        (_patch(blob, 4, "<I", 2), "unsupported NNTR version 2"),
        (_patch(blob, 8, "<I", 1), "header flags"),
        (_patch(blob, 12, "<I", 10**9), "config of 1000000000 bytes"),
        (_patch(blob, 16, "<Q", 128), "data starts at 128"),
        (blob[:20], "truncated header"),
        (blob[:-1], "truncated file: tensor 'b'"),
        (blob + b"\0" * 64, "64 unexpected bytes at the end"),
        (_patch(blob, a["type_id"], "<I", 99), "tensor 'a': unknown type id 99"),
        (_patch(blob, a["type_id"], "<I", 3), "tensor 'a': type 3 .* unknown repack layout rows=0"),
        (_patch(blob, b["rows"], "<I", 3), "tensor 'b': .* unknown repack layout rows=3"),
        (_patch(blob, a["rows"], "<I", 4), "tensor 'a': type 6 \\(f32\\) is not repacked"),
        (_patch(blob, a["ndim"], "<I", 9), "tensor 'a': 9 dimensions"),
        (_patch(blob, a["dims"], "<Q", 0), "tensor 'a': dimension 0 of shape \\[0, 4\\]"),
        (_patch(blob, a["dims"], "<Q", 5), "tensor 'a': byte length is 48, expected 80"),
        (_patch(blob, a["nbytes"], "<Q", 52), "tensor 'a': byte length is 52, expected 48"),
        (_patch(blob, a["offset"], "<Q", 65), "tensor 'a': data offset 65 is not a multiple of 64"),
        (_patch(blob, a["offset"], "<Q", 0), "tensor 'a': data at offset 0 overlaps the header"),
        (_patch(blob, b["offset"], "<Q", f.tensor("a").offset), "tensor 'b'.* overlaps tensor 'a'"),
        (_patch(blob, a["offset"], "<Q", 1 << 40), "tensor 'a' needs bytes"),
        (_patch(blob, a["flags"], "<I", 1), "tensor 'a': entry flags"),
        (_patch(blob, b["name"], "<B", ord("a")), "tensor 'a' appears twice"),
        (_patch(blob, b["name"], "<B", 0xFF), "entry 1: the tensor name is not valid UTF-8"),
        (_patch(blob, a["name_len"], "<I", 0), "directory entry 0"),
        (_patch(blob, a["name_len"], "<I", 1 << 30), "name length 1073741824 bytes, at most 65535"),
        (_patch(blob, a["name_len"], "<I", 60000), "truncated directory: directory entry 0 name"),
        (
            _patch(_patch(blob, b["name"], "<B", ord("\n")), b["type_id"], "<I", 99),
            r"^tensor '\\n': unknown type id 99",  # one line, whatever the name holds
        ),
        (_patch(blob, FIXED_HEADER.size + 9, "<I", 1 << 31), "truncated directory: 2147483648"),
    ]
    config_at = FIXED_HEADER.size
    bad_json = bytearray(blob)
    bad_json[config_at] = ord("[")
    cases.append((bytes(bad_json), "not valid JSON"))
    for bad, message in cases:
        with pytest.raises(FormatError, match=message):
            read_directory(bad)


def test_config_must_be_an_object_and_finite(tmp_path):
    def blob_with_config(text: bytes) -> bytes:
        body = text + struct.pack("<I", 0)
        end = FIXED_HEADER.size + len(body)
        start = -(-end // ALIGNMENT) * ALIGNMENT
        head = FIXED_HEADER.pack(b"NNTR", 1, 0, len(text), start)
        return (head + body).ljust(start, b"\0")

    assert read_directory(blob_with_config(b'{"a":1}')).config == {"a": 1}
    for text, message in [
        (b"[1]", "must be a JSON object, found list"),
        (b'{"a":NaN}', "NaN is not valid JSON"),
        (b'{"a":"\xff"}', "not valid UTF-8"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply|JSON object"),
    ]:
        with pytest.raises(FormatError, match=message):
            read_directory(blob_with_config(text))


def test_file_errors_name_the_path(tmp_path):
    path = tmp_path / "cut.nntr"
    write_file(path, [TensorSpec("a", F32, (64,))])
    os.truncate(path, path.stat().st_size - 4)
    with pytest.raises(FormatError, match=r"cut\.nntr: truncated file: tensor 'a'"):
        NntrFile(path)


# -- docs/FORMAT.md is the specification: its example and its reader must be right ----------

FORMAT_MD = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


def _doc_block(heading: str, fence: str) -> str:
    text = FORMAT_MD.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    start = section.index(fence) + len(fence)
    return section[start : section.index("```", start)]


def test_doc_hexdump_matches_the_writer(tmp_path):
    path = tmp_path / "ex.nntr"
    with NntrWriter(path, {"model_type": "demo"}, [TensorSpec("w", F32, (2,))]) as w:
        w.write("w", np.array([1.0, -2.0], np.float32))
    dump = bytearray()
    for line in _doc_block("## Example", "```\n").strip().splitlines():
        hex_part = line.split(":", 1)[1][:40]
        dump += bytes.fromhex(hex_part.replace(" ", ""))
    assert bytes(dump) == path.read_bytes()


def test_doc_minimal_reader_reads_every_type(tmp_path):
    namespace: dict = {}
    exec(_doc_block("## A minimal reader", "```python\n"), namespace)  # noqa: S102
    path = tmp_path / "m.nntr"
    specs = every_kind_specs()
    write_file(path, specs)
    config, tensors = namespace["read_nntr"](str(path))
    assert config == CONFIG
    with NntrFile(path) as f:
        assert list(tensors) == f.names
        for entry in f.tensors:
            t = tensors[entry.name]
            assert t["type_id"] == entry.ttype.type_id and tuple(t["shape"]) == entry.shape
            assert t["layout"] == (
                (entry.layout.rows, entry.layout.interleave) if entry.layout else (0, 0)
            )
            assert zlib.crc32(t["data"]) == t["crc32"] == entry.checksum
