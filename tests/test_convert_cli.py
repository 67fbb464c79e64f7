"""``nntrtool convert`` from the command line: output, bad input (one line, exit code, no file)
and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from models import f32_to_bf16_bits, write_safetensors
from test_plan import write_model

from nntrtool.cli.app import main
from nntrtool.format import NntrFile
from nntrtool.synthetic import make_synthetic_model

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as ex:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    code = ex.value.code if isinstance(ex.value.code, int) else 1
    return code, out, err


def one_error_line(err: str) -> str:
    # progress lines may come first; the error itself is one line
    lines = [
        line for line in err.splitlines() if line.strip() and not line.startswith("[nntrtool]")
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("cli") / "m")


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_convert_prints_a_summary(model, tmp_path, capsys):
    out = tmp_path / "o.nntr"
    code, stdout, stderr = run(
        [
            "convert",
            model,
            out,
            "--quant-type",
            "q6_k",
            "--repack-format",
            "q4_0_8",
            "--threads",
            "1",
        ],
        capsys,
    )
    assert code == 0, stderr
    assert NntrFile(out).config["nntrtool"]["quant_type"] == "q6_k"
    assert f"wrote {out}" in stdout
    for word in ("q6_k", "q8_0", "f32", "total", "params/s", "smaller", "fallbacks (2)"):
        assert word in stdout, word
    assert "model.layers.0.mlp.odd.weight" in stdout  # a fallback, with its reason
    assert "Traceback" not in stderr


def test_unrepacked_listed(model, tmp_path, capsys):
    code, stdout, _ = run(["convert", model, tmp_path / "o.nntr", "-r", "q4_0_8"], capsys)
    assert code == 0
    assert "left unrepacked (1)" in stdout and "model.layers.0.mlp.up_proj.weight" in stdout


def test_dry_run_shows_the_plan(model, tmp_path, capsys):
    out = tmp_path / "o.nntr"
    code, stdout, _ = run(["convert", model, out, "--dry-run", "--quant-type", "q6_k"], capsys)
    assert code == 0 and not out.exists()
    assert "dry run" in stdout and "predicted output size" in stdout
    for name in ("model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"):
        assert name in stdout
    assert "[256, 96]" in stdout and "not a multiple of 256" in stdout
    from nntrtool.convert import ConvertOptions, plan_conversion

    size = plan_conversion(model, ConvertOptions(quant_type="q6_k")).predicted_size
    assert f"({size} bytes)" in stdout
    # no OUT needed with --dry-run
    code, stdout2, _ = run(["convert", model, "--dry-run", "--quant-type", "q6_k"], capsys)
    assert code == 0 and stdout2 == stdout


def test_quiet_prints_nothing(model, tmp_path, capsys):
    code, stdout, stderr = run(["convert", model, tmp_path / "o.nntr", "--quiet"], capsys)
    assert code == 0 and stdout == "" and stderr == ""


def test_plain_progress_lines_off_a_terminal(model, tmp_path, capsys):
    code, _, stderr = run(["convert", model, tmp_path / "o.nntr"], capsys)
    assert code == 0
    assert "[nntrtool] converting" in stderr and "done:" in stderr


def test_unused_override_warns(model, tmp_path, capsys):
    code, _, stderr = run(
        ["convert", model, tmp_path / "o.nntr", "--type", "nothing=q8_0", "--quiet"], capsys
    )
    assert code == 0
    assert "warning: --type 'nothing=q8_0' matched no matrix" in stderr


def _write_folder(folder: Path, tensors: dict, config: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", tensors)
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def _bad_sources(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (source path, text the error line must contain)."""
    tmp.mkdir(parents=True, exist_ok=True)
    ok = {"w.weight": np.ones((8, 64), np.float32)}
    no_weights = tmp / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{}")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!}   ")
    truncated = _write_folder(tmp / "truncated", ok)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:-100])
    int8 = _write_folder(tmp / "int8", {**ok, "q.weight": np.ones((8, 64), np.int8)})
    fp8 = _write_folder(tmp / "fp8", {**ok, "f.weight": ("F8_E4M3", np.zeros((8, 64), np.uint8))})
    x = np.ones((8, 64), np.float32)
    x[5, 7] = np.nan
    nan = _write_folder(tmp / "nan", {**ok, "n.weight": ("BF16", f32_to_bf16_bits(x))})
    return {
        "missing": (tmp / "does-not-exist", "does-not-exist"),
        "no-weights": (no_weights, "no-weights"),
        "corrupt": (corrupt, "model.safetensors"),
        "truncated": (truncated, "model.safetensors"),
        "int8": (int8, "'q.weight'"),
        "fp8": (fp8, "F8_E4M3"),
        "nan": (nan, "'n.weight' holds NaN at row 5, column 7"),
    }


BAD = ["missing", "no-weights", "corrupt", "truncated", "int8", "fp8", "nan"]


@pytest.mark.parametrize("case", BAD)
def test_bad_sources_give_one_line_and_no_file(tmp_path, capsys, case):
    src, text = _bad_sources(tmp_path / "src")[case]
    outdir = tmp_path / "out"
    outdir.mkdir()
    code, stdout, stderr = run(["convert", src, outdir / "o.nntr"], capsys)
    line = one_error_line(stderr)
    assert code == 2, line
    assert text in line
    assert files_in(outdir) == []


def test_nan_with_allow_nonfinite_succeeds(tmp_path, capsys):
    src, _ = _bad_sources(tmp_path / "src")["nan"]
    out = tmp_path / "o.nntr"
    code, stdout, stderr = run(["convert", src, out, "--allow-nonfinite"], capsys)
    assert code == 0, stderr
    assert "non-finite: n.weight holds NaN at row 5, column 7" in stdout
    assert NntrFile(out).tensor("n.weight").display_type == "f32"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--type", "down_proj=q6_k"], "does not fit tensor 'model.layers.0.mlp.down_proj.weight'"),
        (["--type", "down_proj"], "expected REGEX=TYPE"),
        (["--type", "x=q3_k"], "unknown type 'q3_k'"),
        (["--keep-f32", "a("], "bad regular expression"),
        (["--quant-type", "q3_k"], "--quant-type 'q3_k'"),
        (["--repack-format", "q8"], "--repack-format 'q8'"),
        (["--backend", "tpu"], "tpu"),
    ],
)
def test_bad_options_give_one_line(model, tmp_path, capsys, args, text):
    code, _, stderr = run(["convert", model, tmp_path / "o.nntr", *args], capsys)
    line = one_error_line(stderr)
    assert code == 2 and text in line
    assert files_in(tmp_path) == []


def test_existing_output_needs_force(model, tmp_path, capsys):
    out = tmp_path / "o.nntr"
    out.write_bytes(b"old")
    code, _, stderr = run(["convert", model, out], capsys)
    assert code == 2 and "--force" in one_error_line(stderr)
    assert out.read_bytes() == b"old" and files_in(tmp_path) == ["o.nntr"]
    code, _, stderr = run(["convert", model, out, "--force"], capsys)  # not ours: kept
    assert code == 2 and "not an NNTR file" in one_error_line(stderr)
    assert out.read_bytes() == b"old" and files_in(tmp_path) == ["o.nntr"]
    out.write_bytes(b"NNTR from an earlier run")
    code, _, _ = run(["convert", model, out, "--force", "--quiet"], capsys)
    assert code == 0 and NntrFile(out).tensors


def test_output_folder_problems(model, tmp_path, capsys):
    code, _, stderr = run(["convert", model, tmp_path / "nope" / "o.nntr"], capsys)
    assert code == 2 and "does not exist" in one_error_line(stderr)
    code, _, stderr = run(["convert", model, tmp_path], capsys)
    assert code == 2 and "is a folder" in one_error_line(stderr)
    code, _, stderr = run(["convert", model], capsys)
    assert code == 2 and "output" in one_error_line(stderr)


def test_error_in_a_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nntrtool",
            "convert",
            str(tmp_path / "missing"),
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    one_error_line(proc.stderr)
    assert files_in(tmp_path) == []


def test_ctrl_c_leaves_no_file(tmp_path):
    """SIGINT in the middle of a conversion: exit 130, no output and no temporary file."""
    src = make_synthetic_model(
        tmp_path / "m", dtype="bf16", hidden=512, intermediate=1536, vocab=4096, layers=8,
        kv_heads=8,
    )  # fmt: skip
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nntrtool",
            "convert",
            str(src),
            str(outdir / "o.nntr"),
            "--quant-type",
            "q6_k",
            "--backend",
            "numpy",
            "--threads",
            "1",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not files_in(outdir) and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the conversion ended before it could be interrupted"
    assert files_in(outdir), "no temporary file appeared"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert files_in(outdir) == []


@pytest.mark.parametrize("command", ["convert", "bench"])
def test_help_names_every_type(command, capsys, monkeypatch):
    """The help of --quant-type (convert) and --type (bench) lists what the type table offers,
    so a type added to the table shows up there without an edit."""
    from nntrtool.plan.options import QUANT_TYPE_CHOICES
    from nntrtool.qtypes import QUANT_TYPE_NAMES

    monkeypatch.setenv("COLUMNS", "400")
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    words = set(out.replace(",", " ").replace(";", " ").replace(".", " ").split())
    wanted = QUANT_TYPE_CHOICES if command == "convert" else QUANT_TYPE_NAMES
    assert set(wanted) <= words, set(wanted) - words
