"""Size comparisons in summaries say which way they go: "2.10x smaller", "1.12x larger"."""

from __future__ import annotations

import re

import pytest
from gguf_models import make_small_gguf
from test_convert_cli import run

from nntrtool.units import size_change


@pytest.mark.parametrize(
    ("new", "old", "words"),
    [
        (100, 210, "2.10x smaller"),
        (112, 100, "1.12x larger"),
        (100, 100, "the same size"),
        (1000, 1004, "the same size"),
        (1004, 1000, "the same size"),
        (1000, 1006, "1.01x smaller"),
        (1, 4000, "4000.00x smaller"),
        (0, 100, "-"),
        (100, 0, "-"),
    ],
)
def test_size_change(new, old, words):
    assert size_change(new, old) == words


def _ratio(text: str, word: str) -> float:
    m = re.search(rf"(\d+\.\d\d)x {word}", text)
    assert m is not None, text
    return float(m.group(1))


def test_convert_summary_says_larger_when_the_output_is_larger(tmp_path, capsys):
    src = make_small_gguf(tmp_path / "m.gguf")  # F16 and Q8_0 tensors: f32 output is larger
    out = tmp_path / "o.nntr"
    code, stdout, stderr = run(["convert", src, out, "--quant-type", "f32"], capsys)
    assert code == 0, stderr
    assert "smaller" not in stdout
    expected = out.stat().st_size / src.stat().st_size
    assert _ratio(stdout, "larger") == pytest.approx(expected, rel=0.2)
    code, stdout, _ = run(["convert", src, "--dry-run", "--quant-type", "f32"], capsys)
    assert code == 0 and "smaller" not in stdout and _ratio(stdout, "larger") > 1


def test_convert_summary_says_smaller_when_the_output_is_smaller(tmp_path, capsys):
    src = make_small_gguf(tmp_path / "m.gguf")
    out = tmp_path / "o.nntr"
    code, stdout, stderr = run(
        ["convert", src, out, "--quant-type", "q8_0", "--keep-f32", "NONE"], capsys
    )
    assert code == 0, stderr
    assert "larger" not in stdout and _ratio(stdout, "smaller") > 1


def test_inspect_compares_with_f32_and_bf16_either_way(tmp_path, capsys):
    src = make_small_gguf(tmp_path / "m.gguf")
    for qtype, f32_word, bf16_word in (("q8_0", "smaller", "smaller"), ("f32", None, "larger")):
        out = tmp_path / f"{qtype}.nntr"
        assert run(["convert", src, out, "--quant-type", qtype], capsys)[0] == 0
        code, stdout, _ = run(["inspect", out], capsys)
        assert code == 0
        if f32_word is None:
            assert "the same size as f32 (" in stdout
        else:
            assert re.search(rf"\d\.\d\dx {f32_word} than f32 \(", stdout), stdout
        assert re.search(rf"\d\.\d\dx {bf16_word} than bf16 \(", stdout), stdout
