"""The fault messages: each says what is wrong, where, and what to do, in at most three lines."""

from __future__ import annotations

import inspect
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
}
ACTIONS = ("pass ", "choose", "create", "remove", "free ", "fix ", "give", "wait", "run ", "drop")


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
