"""The fault messages: each says what is wrong, where, and what to do, in at most three lines."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from faults import run_cli

from nntrtool import messages

SAMPLES = {
    "folder": Path("/data/out"),
    "final": Path("/data/out/model.nntr"),
    "path": Path("/models/m/model.safetensors"),
    "why": "read-only file system",
    "what": "an NNTR file",
    "detail": "it was 100 bytes, now 10",
    "label": "hidden_size",
    "value": 1_000_000,
    "tensor": "model.layers.0.mlp.down_proj.weight",
    "shape": (256, 512),
    "found": "2 layers (model.layers.0..1)",
    "row": 3,
    "qtype": "q4_0",
    "err": ValueError("boom"),
    "problem": "truncated file: data starts at 4096, the file is 100 bytes",
    "options": "--chunks and --max-ppl-ratio",
    "needed": "--text",
    "option": "--keep-f32",
    "pattern": "q_[proj",
    "adapter": "./my-adapter",
    "where": "model.layers.0.mlp.experts.*.gate_proj",
    "adapter_experts": 8,
    "model_experts": 4,
}
ACTIONS = (
    *("pass ", "choose", "create", "remove", "free ", "fix ", "give", "wait", "run ", "drop"),
    *("use ", "check ", "add ", "convert ", "read it with"),
)


def _messages() -> list[tuple[str, str]]:
    out = [("INTERRUPTED", messages.INTERRUPTED)]
    for name, fn in inspect.getmembers(messages, inspect.isfunction):
        if fn.__module__ != messages.__name__:
            continue
        params = inspect.signature(fn).parameters
        out.append((name, fn(**{p: SAMPLES[p] for p in params if p in SAMPLES})))
    return out


@pytest.mark.parametrize(("name", "text"), _messages(), ids=[n for n, _ in _messages()])
def test_each_message_is_short_and_says_what_to_do(name, text):
    assert 0 < len(text.splitlines()) <= 3
    assert "Traceback" not in text
    if name not in ("INTERRUPTED", "out_of_range_reason"):  # a line and a note, not errors
        assert any(a in text for a in ACTIONS), text


def test_messages_name_where(tmp_path):
    assert str(SAMPLES["path"]) in messages.source_changed(SAMPLES["path"], "x")
    line = messages.config_mismatch("hidden_size", 64, "model.embed_tokens.weight", (8, 32))
    assert "hidden_size = 64" in line and "model.embed_tokens.weight" in line and "[8, 32]" in line


def test_debug_shows_the_traceback_otherwise_one_line(tmp_path):
    missing = tmp_path / "nothing-here"
    plain = run_cli("convert", missing, tmp_path / "o.nntr")
    debug = run_cli("--debug", "convert", missing, tmp_path / "o.nntr")
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    assert "Traceback" in debug.stderr and debug.stderr.strip().splitlines()[-1].startswith(
        "error:"
    )


def test_damaged_or_newer_nntr_files_say_what_to_do():
    damaged = messages.damaged_nntr(SAMPLES["final"], "the file is empty")
    assert str(SAMPLES["final"]) in damaged and "convert the model again" in damaged
    newer = messages.damaged_nntr(SAMPLES["final"], "unsupported NNTR version 9")
    assert "read it with the nntrtool that wrote it" in newer


def test_lines_at_their_call_sites(tmp_path):
    """The command line prints these messages where the fault is met."""
    missing = tmp_path / "missing.nntr"
    cases = [
        (["inspect", missing], [str(missing), "check the path"]),
        (["inspect", tmp_path], [str(tmp_path), "is a folder", "give the file itself"]),
        (
            ["repack", tmp_path / "cut.nntr", tmp_path / "o.nntr", "--format", "q4_0_8"],
            ["convert the model again"],
        ),
        (["verify", missing, tmp_path, "--text", missing], ["add --logits, or drop them"]),
        (["verify", missing, tmp_path, "--chunks", "2"], ["add --text, or drop them"]),
        (
            ["convert", tmp_path, "--dry-run", "--keep-f32", "a("],
            ["bad regular expression 'a('", "fix the pattern"],
        ),
        (["convert", tmp_path / "nope", "--dry-run"], ["no such file or folder", "check the path"]),
        (
            ["convert", tmp_path / "bad" / "model.safetensors", "--dry-run"],
            ["model.safetensors", "download or save it again"],
        ),
        (["convert", tmp_path / "shards", "--dry-run"], ["model-2.safetensors", "download the"]),
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes((1000).to_bytes(8, "little") + b"{}")
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "config.json").write_text('{"model_type": "llama"}')
    index = {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}
    (tmp_path / "shards" / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "shards" / "model-1.safetensors").write_bytes(b"")
    (tmp_path / "cut.nntr").write_bytes(b"NNTR\x01")  # shorter than the fixed header
    for argv, words in cases:
        proc = run_cli(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert all(w in lines[0] for w in words), (argv, lines[0])


def test_option_lines_say_what_to_do():
    from nntrtool.errors import UsageError
    from nntrtool.verify import parse_thresholds

    with pytest.raises(UsageError, match=r"--max-rel-err '-1'.*give a number >= 0"):
        parse_thresholds(["-1"])


def test_an_unexpected_write_error_says_what_to_do(tmp_path):
    """An OSError the output code has no line of its own for (here EIO) still names the output
    and says what to do, in one line."""
    import errno

    from nntrtool.outputs import output_error

    err = output_error(tmp_path / "out.nntr", OSError(errno.EIO, "Input/output error"))
    text = str(err)
    assert "\n" not in text
    assert str(tmp_path / "out.nntr") in text and "Input/output error" in text
    assert "nothing was written" in text and "write the output elsewhere" in text
