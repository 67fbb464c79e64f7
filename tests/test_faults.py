"""Fault injection: signals at several moments of real runs, sources that change while read,
outputs that cannot be written, values a type cannot hold. Each case checks the exit status,
the one line printed, that nothing is left behind and that the inputs are unchanged.

``NNTRTOOL_FAULTS_RANDOM=N`` adds N randomized signal cases (random command, signal, moment)
and the remaining command / change pairs for memory-mapped sources.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from faults import (
    INTERRUPTED,
    ROOT,
    cli,
    expected_status,
    interrupt_when,
    listing,
    one_line,
    run_cli,
    snapshot,
    temp_appeared,
)
from models import f32_to_bf16_bits

from nntrtool.format import NntrFile
from nntrtool.quant.api import dequantize
from nntrtool.sources.safetensors_file import SafetensorsFile
from nntrtool.synthetic import make_synthetic_model

SMALL = dict(hidden=256, intermediate=512, vocab=512, layers=2, kv_heads=4)
#: Big enough that a conversion runs for a second or so on the numpy backend.
SLOW = dict(hidden=512, intermediate=1536, vocab=4096, layers=6, kv_heads=8)
#: ``NNTRTOOL_FAULTS_RANDOM=N``: N randomized signal cases and the longer lists of cases.
_RANDOM = int(os.environ.get("NNTRTOOL_FAULTS_RANDOM", "0") or 0)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    return make_synthetic_model(tmp_path_factory.mktemp("small") / "m", dtype="bf16", **SMALL)


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    return make_synthetic_model(tmp_path_factory.mktemp("slow") / "m", dtype="bf16", **SLOW)


@pytest.fixture(scope="module")
def slow_nntr(slow_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nntr") / "m.nntr"
    proc = run_cli("convert", slow_model, out, "--quiet", "--type", "embed_tokens=q6_k")
    assert proc.returncode == 0, proc.stderr
    return out


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _poke_bf16(model: Path, name_part: str, value: float, index: int = 0) -> str:
    """Set one bf16 weight of the first tensor whose name holds ``name_part``; its name."""
    for st_path in sorted(model.glob("*.safetensors")):
        with SafetensorsFile(st_path) as sf:
            hit = next((t for t in sf.tensors if name_part in t.name and t.ndim == 2), None)
        if hit is None:
            continue
        assert hit.dtype == "BF16"
        bits = f32_to_bf16_bits(np.array([value], np.float32)).tobytes()
        with open(st_path, "r+b") as fh:
            fh.seek(hit.begin + 2 * index)
            fh.write(bits)
        return hit.name
    raise AssertionError(f"no tensor like {name_part}")


def _as_bf16(value: float) -> float:
    bits = f32_to_bf16_bits(np.array([value], np.float32)).astype(np.uint32) << 16
    return float(bits.view(np.float32)[0])


# ----------------------------------------------------------------------------------------------
# values out of a type's range

#: (type, a value its fp16 block scale cannot hold, one just inside), per fp16-scaled type.
_OUT_OF_RANGE = [
    ("q4_0", 1e6, 5e5),
    ("q8_0", 1e8, 8e6),
    ("q6_k", 1e10, 2e8),
    ("q4_k", 1e9, 1e5),
    ("q5_0", 1e9, 2e5),
    ("q5_k", 1e9, 1e5),
    ("q5_1", 1e9, 1e5),
]


@pytest.mark.parametrize(
    ("qtype", "big", "fits"),
    _OUT_OF_RANGE,
)
def test_values_too_large_for_a_type_are_stored_as_f32_or_refused(
    small_model, tmp_path, qtype, big, fits
):
    model = _copy_model(small_model, tmp_path / "m")
    name = _poke_bf16(model, "mlp.down_proj", big)
    before = snapshot(model)
    out = tmp_path / "o.nntr"
    proc = run_cli("convert", model, out, "--quant-type", qtype, "--backend", "numpy")
    assert proc.returncode == 0, proc.stderr
    assert "overflow" in proc.stdout and name in proc.stdout
    with NntrFile(out) as nf:
        entry = nf.tensor(name)
        assert entry.ttype.name == "f32"
        values = nf.array(name)
        assert np.isfinite(values).all() and values.max() == _as_bf16(big)
        for e in nf.tensors:  # every tensor decodes to finite values
            if e.ttype.quantized:
                decoded = dequantize(nf.array(e.name), e.ttype, e.shape, backend="numpy")
                assert np.isfinite(decoded).all(), e.name
    assert listing(tmp_path) == ["m", "o.nntr"]

    strict = tmp_path / "s.nntr"
    proc = run_cli("convert", model, strict, "--quant-type", qtype, "--strict")
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert name in line and f"{_as_bf16(big):.6g}" in line and qtype in line
    assert not strict.exists() and listing(tmp_path) == ["m", "o.nntr"]
    assert snapshot(model) == before

    # just inside the range: the type is kept
    _poke_bf16(model, "mlp.down_proj", fits)
    kept = tmp_path / "k.nntr"
    proc = run_cli("convert", model, kept, "--quant-type", qtype, "--strict")
    assert proc.returncode == 0, proc.stderr
    with NntrFile(kept) as nf:
        assert nf.tensor(name).ttype.name == qtype


@pytest.mark.parametrize(
    ("qtype", "big", "fits"),
    [*_OUT_OF_RANGE, ("f16", 1e5, 6e4)],
)
def test_dry_run_names_the_range_fallbacks_the_conversion_makes(
    small_model, tmp_path, qtype, big, fits
):
    """The dry run reads the values and plans exactly what the conversion then does."""
    from nntrtool.convert import ConvertOptions, convert
    from nntrtool.errors import NonFiniteError

    model = _copy_model(small_model, tmp_path / "m")
    name = _poke_bf16(model, "mlp.down_proj", big, index=3)
    _poke_bf16(model, "self_attn.o_proj", fits, index=5)  # large, but within the type
    opts = dict(quant_type=qtype, backend="numpy")
    dry = convert(model, None, ConvertOptions(dry_run=True, **opts)).plan
    real = convert(model, tmp_path / "o.nntr", ConvertOptions(**opts)).plan
    assert [(t.name, t.ttype.name) for t in dry.tensors] == [
        (t.name, t.ttype.name) for t in real.tensors
    ]
    assert dry.fallbacks == real.fallbacks and [n for n, _ in dry.fallbacks] == [name]
    with pytest.raises(NonFiniteError, match="too large for"):
        convert(model, None, ConvertOptions(dry_run=True, strict=True, **opts))


def test_dry_run_prints_the_range_fallbacks(small_model, tmp_path):
    model = _copy_model(small_model, tmp_path / "m")
    name = _poke_bf16(model, "mlp.down_proj", 1e6)
    before = snapshot(model)
    proc = run_cli("convert", model, "--dry-run", "--quant-type", "q4_0", "--backend", "numpy")
    assert proc.returncode == 0, proc.stderr
    fallbacks = proc.stdout.split("fallbacks (1):", 1)[1].splitlines()[1]
    assert name in fallbacks and "overflow q4_0" in fallbacks and "stored as f32" in fallbacks
    proc = run_cli("convert", model, "--dry-run", "--quant-type", "q4_0", "--strict")
    assert proc.returncode == 2
    assert name in one_line(proc.stderr) and "too large for q4_0" in proc.stderr
    assert listing(tmp_path) == ["m"] and snapshot(model) == before


# ----------------------------------------------------------------------------------------------
# signals


def _convert_argv(model: Path, out: Path) -> list[str]:
    return cli(
        "convert", model, out, "--quant-type", "q6_k", "--backend", "numpy", "--threads", "1"
    )


@pytest.mark.parametrize(
    ("sig", "delay"),
    [(signal.SIGINT, 0.0), (signal.SIGTERM, 0.4), (signal.SIGHUP, 0.0), (signal.SIGINT, 0.8)],
)
def test_convert_signal_leaves_nothing(slow_model, tmp_path, sig, delay):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = snapshot(slow_model)
    proc, stderr, sent = interrupt_when(
        _convert_argv(slow_model, out_dir / "o.nntr"), temp_appeared(out_dir), sig, delay
    )
    assert sent, "the conversion ended before the signal"
    assert proc.returncode == expected_status(sig), stderr
    assert one_line(stderr) == INTERRUPTED
    assert listing(out_dir) == []
    assert snapshot(slow_model) == before


def test_signal_before_any_output(slow_model, tmp_path):
    """A signal while the source is still being opened: same line, same status."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc, stderr, sent = interrupt_when(
        _convert_argv(slow_model, out_dir / "o.nntr"), lambda: True, signal.SIGTERM, 0.5
    )
    assert sent
    assert proc.returncode == expected_status(signal.SIGTERM), stderr
    assert one_line(stderr) == INTERRUPTED
    assert listing(out_dir) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_repack_signal_leaves_nothing(slow_nntr, tmp_path, sig):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = snapshot(slow_nntr)
    argv = cli("repack", slow_nntr, out_dir / "r.nntr", "--format", "q4_0_8")
    proc, stderr, sent = interrupt_when(argv, temp_appeared(out_dir), sig)
    if not sent:  # the repack finished first: a complete output, nothing else
        assert proc.returncode == 0 and listing(out_dir) == ["r.nntr"]
        return
    assert proc.returncode == expected_status(sig), stderr
    assert one_line(stderr) == INTERRUPTED
    assert listing(out_dir) == []
    assert snapshot(slow_nntr) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_export_signal_leaves_nothing(slow_nntr, tmp_path, sig):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = snapshot(slow_nntr)
    argv = cli("export", slow_nntr, out_dir / "exp")
    proc, stderr, sent = interrupt_when(argv, temp_appeared(out_dir), sig)
    if not sent:
        assert proc.returncode == 0 and listing(out_dir) == ["exp"]
        return
    assert proc.returncode == expected_status(sig), stderr
    assert one_line(stderr) == INTERRUPTED
    assert listing(out_dir) == []
    assert snapshot(slow_nntr) == before


@pytest.fixture(scope="module")
def text_case(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(NNTR file, its source with a tokenizer, an English text) for verify --text."""
    import importlib.resources

    from models import add_tokenizer, make_hf_model

    root = tmp_path_factory.mktemp("text")
    model = make_hf_model(root / "m", "llama")
    add_tokenizer(model, 512)
    nntr = root / "m.nntr"
    proc = run_cli("convert", model, nntr, "--quiet", "--quant-type", "q8_0")
    assert proc.returncode == 0, proc.stderr
    topics = importlib.resources.files("pydoc_data").joinpath("topics.py").read_text()
    text = root / "eval.txt"
    text.write_text(topics[-60_000:], encoding="utf-8")
    return nntr, model, text


def _verify_text_argv(text_case: tuple[Path, Path, Path]) -> list[str]:
    nntr, model, text = text_case
    return cli("verify", nntr, model, "--logits", "--text", text, "--ctx", "64")


def _session_processes(sid: int) -> list[int]:
    """Processes still alive in session ``sid`` (zombies, already dead, do not count)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize(
    ("sig", "delay"),
    [(signal.SIGINT, 0.0)] + ([(signal.SIGTERM, 0.3), (signal.SIGHUP, 1.0)] if _RANDOM else []),
)
def test_verify_text_signal_leaves_no_process_and_no_temporary(text_case, tmp_path, sig, delay):
    """verify --text spills the source's logits to TMPDIR and runs torch: a signal ends it with
    the one line and 128 + signal, and neither the spill nor any process of its own outlives it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        _verify_text_argv(text_case),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp)},
        start_new_session=True,  # its session id is its pid: every process it starts shares it
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not listing(tmp):
            time.sleep(0.005)
        time.sleep(delay)
        assert proc.poll() is None, "verify ended before the signal"
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == expected_status(sig), stderr
    assert one_line(stderr) == INTERRUPTED
    assert _session_processes(proc.pid) == []
    assert listing(tmp) == []


def test_verify_text_source_cut_mid_run(text_case, tmp_path):
    """transformers runs the source model on parameters mapped from its safetensors file: a
    truncation mid-run waits for verify to stop with one line (exit 2), never SIGBUS."""
    nntr, model, text = text_case
    model = _copy_model(model, tmp_path / "m")
    weights = model / "model.safetensors"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = cli("verify", nntr, model, "--logits", "--text", text, "--ctx", "64", "-q")
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not listing(tmp):
            time.sleep(0.005)
        assert proc.poll() is None, "verify ended before its source could change"
        os.truncate(weights, 4096)  # waits while verify holds its lease
        said, _, _ = select.select([proc.stderr], [], [], 0)
        assert said, "the source changed while verify was still reading it"
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, stderr
    line = one_line(stderr)
    assert str(weights) in line and "changed while being read" in line, line
    assert listing(tmp) == []


def test_verify_text_with_a_full_tmpdir(text_case, small_fs):
    """The spill of the source's logits is reserved up front: a full TMPDIR is one line and
    exit 2, not a SIGBUS when a mapped page cannot be written."""
    (small_fs / "filler").write_bytes(b"\0" * (400 << 10))
    proc = subprocess.run(
        _verify_text_argv(text_case),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(small_fs)},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert "TMPDIR" in line and "temporary file" in line, line
    assert listing(small_fs) == ["filler"]


def test_stale_temporary_from_a_killed_run_is_removed(slow_model, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc, _, sent = interrupt_when(
        _convert_argv(slow_model, out_dir / "o.nntr"), temp_appeared(out_dir), signal.SIGKILL
    )
    assert sent and proc.returncode == -signal.SIGKILL
    left = listing(out_dir)
    assert len(left) == 1 and left[0].startswith(".o.nntr.nntrtool-"), left  # never the final name
    mine = out_dir / ".o.nntr.keep"  # not a temporary of ours: never touched
    mine.write_text("user file")
    other = out_dir / "other.nntr"
    other.write_text("user file")
    proc = run_cli("convert", slow_model, out_dir / "o.nntr", "--quiet", "--quant-type", "q8_0")
    assert proc.returncode == 0, proc.stderr
    assert listing(out_dir) == [".o.nntr.keep", "o.nntr", "other.nntr"]


def test_force_replaces_only_our_outputs(small_model, tmp_path):
    out = tmp_path / "o.nntr"
    out.write_text("notes")
    proc = run_cli("convert", small_model, out, "--force")
    assert proc.returncode == 2 and "not an NNTR file" in one_line(proc.stderr)
    assert out.read_text() == "notes"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "mine.txt").write_text("mine")
    proc = run_cli("export", small_model, folder, "--force", "--target", "nntrainer")
    assert proc.returncode == 2 and "not an export folder" in one_line(proc.stderr)
    assert listing(folder) == ["mine.txt"]
    assert listing(tmp_path) == ["folder", "o.nntr"]


# ----------------------------------------------------------------------------------------------
# randomized mode (local runs)


@pytest.mark.skipif(not _RANDOM, reason="set NNTRTOOL_FAULTS_RANDOM=N for N randomized cases")
def test_randomized_signals(slow_model, slow_nntr, tmp_path):
    rng = random.Random(int(os.environ.get("NNTRTOOL_FAULTS_SEED", "0") or time.time()))
    before = snapshot(slow_model) | snapshot(slow_nntr)
    for i in range(_RANDOM):
        out_dir = tmp_path / f"o{i}"
        out_dir.mkdir()
        command = rng.choice(["convert", "repack", "export", "export-source"])
        argv = {
            "convert": _convert_argv(slow_model, out_dir / "o.nntr"),
            "repack": cli("repack", slow_nntr, out_dir / "o.nntr", "--format", "q4_0_4"),
            "export": cli("export", slow_nntr, out_dir / "o"),
            "export-source": cli("export", slow_model, out_dir / "o"),
        }[command]
        sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
        delay = rng.uniform(0.3, 1.5)  # after the interpreter itself has started
        proc, stderr, sent = interrupt_when(argv, lambda: True, sig, delay)
        what = f"{command} {sig!r} after {delay:.2f}s"
        if not sent or proc.returncode == 0:
            assert proc.returncode == 0, what + stderr
            assert not [n for n in listing(out_dir) if n.startswith(".")], what
            continue
        assert proc.returncode == expected_status(sig), what + stderr
        line = one_line(stderr)
        if line.startswith("interrupted after"):  # the signal came after the final rename
            assert listing(out_dir) == ["o"] or listing(out_dir) == ["o.nntr"], what
            assert "was complete; it is kept" in line, what
            continue
        assert line == INTERRUPTED, what
        assert listing(out_dir) == [], what
    assert snapshot(slow_model) | snapshot(slow_nntr) == before


# ----------------------------------------------------------------------------------------------
# sources that change while they are read


def _shard(model: Path) -> Path:
    return sorted(model.glob("*.safetensors"))[-1]


@pytest.mark.parametrize("how", ["truncate", "shrink", "replace", "rewrite"])
def test_source_changed_while_read(slow_model, tmp_path, how):
    model = _copy_model(slow_model, tmp_path / "m")
    shard = _shard(model)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    size = shard.stat().st_size

    proc = subprocess.Popen(
        _convert_argv(model, out_dir / "o.nntr"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not listing(out_dir):
            time.sleep(0.005)
        assert proc.poll() is None, "the conversion ended before the source could change"
        if how == "truncate":
            os.truncate(shard, 1024)
        elif how == "shrink":
            os.truncate(shard, size // 2)
        elif how == "replace":
            new = shard.with_suffix(".new")
            new.write_bytes(shard.read_bytes()[: size - 4096])
            os.replace(new, shard)
        else:  # the same size, other bytes (an in-place rewrite)
            with open(shard, "r+b") as fh:
                fh.seek(size - 8192)
                fh.write(b"\x01" * 8192)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, stderr  # never a signal death (negative status)
    line = one_line(stderr)
    assert str(shard) in line and "changed while being read" in line, line
    assert listing(out_dir) == []


# ----------------------------------------------------------------------------------------------
# outputs that cannot be written


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs (root and ``mount`` needed; skipped otherwise), unmounted afterwards."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount_ro(mnt: Path) -> None:
    proc = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot remount read-only: {proc.stderr.strip()}")


def _output_cases(small_model: Path, nntr: Path, folder: Path) -> dict[str, list[object]]:
    return {
        "convert": ["convert", small_model, folder / "o.nntr"],
        "convert-target": ["convert", small_model, folder / "o", "--target", "nntrainer"],
        "export": ["export", nntr, folder / "o"],
        "repack": ["repack", nntr, folder / "o.nntr", "--format", "q4_0_8"],
    }


@pytest.fixture(scope="module")
def small_nntr(small_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small_nntr") / "m.nntr"
    proc = run_cli("convert", small_model, out, "--quiet", "--type", "embed_tokens=q6_k")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("command", ["convert", "convert-target", "export", "repack"])
def test_read_only_output_folder(small_model, small_nntr, small_fs, command):
    _remount_ro(small_fs)
    before = snapshot(small_model) | snapshot(small_nntr)
    proc = run_cli(*_output_cases(small_model, small_nntr, small_fs)[command])
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert str(small_fs) in line and "choose a folder you can write to" in line, line
    assert listing(small_fs) == []
    assert snapshot(small_model) | snapshot(small_nntr) == before


@pytest.mark.parametrize("command", ["convert", "convert-target", "export", "repack"])
def test_full_output_folder(small_model, small_nntr, small_fs, command):
    (small_fs / "filler").write_bytes(b"\0" * (400 << 10))  # leaves about 100 KiB
    before = snapshot(small_model) | snapshot(small_nntr)
    proc = run_cli(*_output_cases(small_model, small_nntr, small_fs)[command])
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert "space" in line or "full" in line, line
    assert listing(small_fs) == ["filler"]
    assert snapshot(small_model) | snapshot(small_nntr) == before


@pytest.mark.parametrize("command", ["convert", "convert-target", "export", "repack"])
def test_missing_output_folder(small_model, small_nntr, tmp_path, command):
    folder = tmp_path / "missing"
    proc = run_cli(*_output_cases(small_model, small_nntr, folder)[command])
    assert proc.returncode == 2, proc.stderr
    assert "does not exist" in one_line(proc.stderr)
    assert not folder.exists()


def test_output_that_is_a_folder(small_model, small_nntr, tmp_path):
    for argv in (
        ["convert", small_model, tmp_path],
        ["repack", small_nntr, tmp_path, "--format", "q4_0_8"],
    ):
        proc = run_cli(*argv)
        assert proc.returncode == 2, proc.stderr
        assert "folder" in one_line(proc.stderr)
    assert listing(tmp_path) == []


class _ChangeSourceAfter:
    """A progress display that changes ``path`` (truncates or rewrites it in place) once the
    run has advanced a few times: the fault arrives mid-run, from outside the reading code."""

    def __init__(self, path: Path, how: str, after: int = 3):
        self.path, self.how, self.after, self.calls = path, how, after, 0

    def __call__(self, total, description):
        import contextlib

        return contextlib.nullcontext(self)

    def advance(self, n, current=None):
        self.calls += 1
        if self.calls != self.after:
            return
        if self.how == "truncate":
            os.truncate(self.path, 4096)
        else:
            size = self.path.stat().st_size
            with open(self.path, "r+b") as fh:
                fh.seek(size - 64)
                fh.write(b"\x55" * 64)
            st = self.path.stat()  # a rewrite within the same clock tick still counts
            os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.mark.parametrize("how", ["truncate", "rewrite"])
@pytest.mark.parametrize("command", ["repack", "export"])
def test_nntr_source_changed_while_read(small_nntr, tmp_path, command, how):
    from nntrtool.errors import SourceError
    from nntrtool.export import export_nntr
    from nntrtool.repack_file import repack_file

    src = tmp_path / "m.nntr"
    src.write_bytes(small_nntr.read_bytes())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    progress = _ChangeSourceAfter(src, how)
    with pytest.raises(SourceError, match="changed while being read") as err:
        if command == "repack":
            repack_file(src, out_dir / "o.nntr", "q4_0_8", progress=progress)
        else:
            export_nntr(src, out_dir / "o", progress=progress)
    assert str(src) in str(err.value) and "\n" not in str(err.value)
    assert progress.calls >= progress.after
    assert listing(out_dir) == []


def test_checkpoint_source_changed_before_a_read(tmp_path):
    """A PyTorch .bin is mapped by torch; a file that changed is refused before its rows
    are touched (a mapped page past a new end would be SIGBUS)."""
    import torch

    from nntrtool.errors import SourceError
    from nntrtool.sources.checkpoint import CheckpointFile

    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(64, 256)}, path)
    f = CheckpointFile(path)
    (w,) = f.tensors
    assert w.read(0, 2).shape == (2, 256)
    os.truncate(path, 512)
    with pytest.raises(SourceError, match="changed while being read") as err:
        w.read(2, 4)
    assert str(path) in str(err.value)


@pytest.fixture(scope="module")
def slow_bin(slow_model, tmp_path_factory) -> Path:
    """``slow_model`` as a PyTorch checkpoint folder (``pytorch_model.bin``, mapped by torch)."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("bin") / "m"
    folder.mkdir()
    state: dict = {}
    for shard in sorted(slow_model.glob("*.safetensors")):
        state.update(load_file(shard))
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_bytes((slow_model / "config.json").read_bytes())
    return folder


def _mapped_case(command: str, slow_nntr: Path, slow_bin: Path, tmp_path: Path):
    """``(argv, source, output)`` for a run of ``command`` over a copy of a mapped source."""
    out = tmp_path / "out" / ("o" if command == "export" else "o.nntr")
    if command == "convert-bin":
        model = _copy_model(slow_bin, tmp_path / "m")
        return _convert_argv(model, out), model / "pytorch_model.bin", out
    src = tmp_path / "m.nntr"
    src.write_bytes(slow_nntr.read_bytes())
    if command == "repack":
        return cli("repack", src, out, "--format", "q4_0_8"), src, out
    return cli("export", src, out), src, out


@pytest.mark.parametrize(
    ("command", "how"),
    [("repack", "truncate"), ("export", "rewrite"), ("convert-bin", "truncate")]
    + (
        [("repack", "rewrite"), ("export", "truncate"), ("convert-bin", "rewrite")]
        if _RANDOM
        else []
    ),
)
def test_mapped_source_cut_mid_run(slow_nntr, slow_bin, tmp_path, command, how):
    """NNTR files and PyTorch checkpoints are read through a memory map: a truncation or an
    in-place write from another process mid-run is one line and exit 2, never SIGBUS."""
    for attempt in range(3):  # on a busy machine the run may finish before the change lands
        case = tmp_path / str(attempt)
        case.mkdir()
        result = _cut_mapped_source(command, how, slow_nntr, slow_bin, case)
        if result is not None:
            break
    else:
        pytest.fail("three runs ended before their source could change")
    (returncode, stderr), source, out_dir = result
    assert returncode == 2, stderr  # never a signal death (negative status)
    line = one_line(stderr)
    assert str(source) in line and "changed while being read" in line, line
    assert listing(out_dir) == []


def _leased(path: Path) -> bool:
    """Whether some process holds a lease on ``path`` (``/proc/locks``)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        locks = Path("/proc/locks").read_text()
    except OSError:
        return True  # cannot tell: go on as soon as the output exists
    return any("LEASE" in line and dev in line for line in locks.splitlines())


def _cut_mapped_source(command, how, slow_nntr, slow_bin, case: Path):
    """Run ``command``, change its source mid-run; ``None`` when it was done first."""
    out_dir = case / "out"
    out_dir.mkdir()
    argv, source, out = _mapped_case(command, slow_nntr, slow_bin, case)
    argv.append("--quiet")  # stderr stays empty until the run says why it stopped
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not listing(out_dir):
            time.sleep(0.002)
        while time.monotonic() < deadline and proc.poll() is None and not _leased(source):
            time.sleep(0.002)  # the output can appear before the source is opened
        if proc.poll() is not None:
            proc.communicate()
            return None
        # the run holds a read lease: this waits until it has stopped reading
        if how == "truncate":
            os.truncate(source, 4096)
        else:
            with open(source, "r+b") as fh:
                fh.seek(-64, os.SEEK_END)
                fh.write(b"\x55" * 64)
        # ... so by now the run has stopped and said why (without the lease it would still be
        # reading, and a page past the new end would kill it with SIGBUS)
        said, _, _ = select.select([proc.stderr], [], [], 0)
        assert said, "the source changed while the run was still reading it"
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode == 0:  # it had named its complete output before the change came
        assert listing(out_dir) == [out.name]
        return None
    return (proc.returncode, stderr), source, out_dir


@pytest.mark.parametrize("command", ["repack"] + (["convert-bin"] if _RANDOM else []))
def test_mapped_source_open_for_writing_elsewhere_still_reads(
    slow_nntr, slow_bin, tmp_path, command
):
    """A file some process holds open for writing cannot be leased; the run goes on, checked
    between reads as before, and an unchanged source converts as usual."""
    (tmp_path / "out").mkdir()
    argv, source, out = _mapped_case(command, slow_nntr, slow_bin, tmp_path)
    before = snapshot(source)
    with open(source, "r+b"):
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert listing(tmp_path / "out") == [out.name]
    assert snapshot(source) == before


@pytest.mark.parametrize("command", ["repack", "export", "convert-bin"])
def test_unleased_source_cut_mid_run(slow_nntr, slow_bin, tmp_path, command):
    """Where no lease can be had (here: the file is open for writing elsewhere), the command
    line reads without a map, so a source cut mid-run is one line and exit 2, never SIGBUS."""
    (tmp_path / "out").mkdir()
    argv, source, out = _mapped_case(command, slow_nntr, slow_bin, tmp_path)
    argv.append("--quiet")
    with open(source, "r+b") as held:  # no lease while a writer has the file open
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        try:
            deadline = time.monotonic() + 60
            while (
                time.monotonic() < deadline
                and proc.poll() is None
                and not listing(tmp_path / "out")
            ):
                time.sleep(0.002)
            os.ftruncate(held.fileno(), 4096)
            _, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    if proc.returncode == 0:  # it had finished before the cut
        assert listing(tmp_path / "out") == [out.name]
        return
    assert proc.returncode == 2, stderr  # never a signal death (negative status)
    line = one_line(stderr)
    assert str(source) in line and "changed while being read" in line, line
    assert listing(tmp_path / "out") == []


def test_unleased_nntr_tensor_survives_a_cut(slow_nntr, tmp_path):
    """Without a lease, the command line's NNTR reads are copies: bytes already read stay
    readable after the file is cut short (a view into the map would end the process with
    SIGBUS as soon as it is touched)."""
    source = tmp_path / "m.nntr"
    shutil.copyfile(slow_nntr, source)
    code = (
        "import os, sys\n"
        "from nntrtool import lease\n"
        "from nntrtool.format.reader import NntrFile\n"
        "lease.enable()\n"
        "held = os.open(sys.argv[1], os.O_RDWR)  # a writer: no lease can be taken\n"
        "nf = NntrFile(sys.argv[1])\n"
        "raw = nf.raw(max(nf.tensors, key=lambda t: t.nbytes).name)\n"
        "os.ftruncate(held, 0)\n"
        "print(int(raw.astype('uint64').sum()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(source)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert int(proc.stdout) > 0


def test_dequantized_gguf_values_out_of_range(tmp_path):
    """Q8_0 blocks of a GGUF that hold 1e6 (fine in Q8_0) are too large for Q4_0's scale once
    dequantized and quantized again: stored as f32, or refused under --strict."""
    import gguf

    rng = np.random.default_rng(0)
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_context_length(64)
    w.add_feed_forward_length(64)
    w.add_token_list([f"t{i}" for i in range(8)])
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 32)).astype(np.float32))
    big = rng.standard_normal((32, 32)).astype(np.float32)
    big[0, 0] = 1e6
    q = gguf.quants.quantize(big, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", np.ones(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    before = snapshot(path)
    dry = run_cli("convert", path, "--dry-run", "--quant-type", "q4_0", "--backend", "numpy")
    assert dry.returncode == 0, dry.stderr
    out = tmp_path / "o.nntr"
    proc = run_cli("convert", path, out, "--quant-type", "q4_0", "--backend", "numpy")
    assert proc.returncode == 0, proc.stderr
    assert "overflow q4_0" in proc.stdout
    fallbacks = proc.stdout.split("fallbacks (1):", 1)[1].splitlines()[1]
    assert fallbacks in dry.stdout.splitlines()  # the dry run named it in advance
    with NntrFile(out) as nf:
        for e in nf.tensors:
            values = (
                dequantize(nf.array(e.name), e.ttype, e.shape, backend="numpy")
                if e.ttype.quantized
                else nf.array(e.name)
            )
            assert np.isfinite(values).all(), e.name
        assert "f32" in {e.ttype.name for e in nf.tensors if "q_proj" in e.name}
    proc = run_cli("convert", path, tmp_path / "s.nntr", "--quant-type", "q4_0", "--strict")
    assert proc.returncode == 2 and "too large for q4_0" in one_line(proc.stderr)
    assert listing(tmp_path) == ["m.gguf", "o.nntr"] and snapshot(path) == before


def test_leftovers_are_removed_whatever_ends_the_run(tmp_path):
    from nntrtool import outputs

    final = tmp_path / "o"
    folder = outputs.make_temp_dir(final)
    named_only = outputs.temp_path(tmp_path / "p.nntr")
    outputs.register(named_only)  # registered, never created: nothing to remove, no error
    assert folder.is_dir() and folder.name.startswith(".o.nntrtool-")
    (folder / "part.bin").write_bytes(b"x")
    outputs.remove_leftovers()
    assert listing(tmp_path) == []
    kept = outputs.make_temp_dir(final)
    outputs.forget(kept)  # renamed into place, say: no longer ours to remove
    outputs.remove_leftovers()
    assert kept.is_dir()


def test_reports_of_a_worker_cut_short_by_the_ending_run_are_dropped(capsys):
    """A signal handler's exception can land inside Thread.start, and the worker then reports an
    ignored exception: once the run is ending (a signal, a source that changes) that report is
    dropped so the one line stays alone; before, it is shown as Python shows it."""
    import sys

    from nntrtool import lease, outputs

    saved = (sys.unraisablehook, outputs.received)
    sys.unraisablehook = sys.__unraisablehook__  # as in a run of the command line
    try:
        outputs.install_signal_handlers()
        assert sys.unraisablehook is outputs._quiet_while_ending

        class Unraisable:  # raises where Python can only report it, as such a worker does
            def __del__(self):
                raise KeyError("worker")

        Unraisable()
        assert "KeyError: 'worker'" in capsys.readouterr().err
        outputs.received = int(signal.SIGTERM)
        Unraisable()
        assert capsys.readouterr().err == ""
    finally:
        sys.unraisablehook, outputs.received = saved
        lease.reset()  # in-process tests change their files without leases
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(
                sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            )
