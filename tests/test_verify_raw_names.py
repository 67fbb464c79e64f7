"""``verify --logits`` / ``--text`` of a file converted with ``--gguf-raw-names``: the GGUF is
read with its own names again (from the file's record, or ``--gguf-raw-names`` on verify), and
the file's GGUF-named tensors go into transformers' model by the gguf package's name table."""

from __future__ import annotations

import json

import pytest
from gguf_models import write_gguf

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def raw_file(hf_model, tmp_path_factory):
    """A Qwen2 GGUF (no value transform on llama.cpp's side) and its raw-names conversion."""
    from nntrtool.cli.app import main

    root = tmp_path_factory.mktemp("raw")
    gguf_path = write_gguf(hf_model("qwen2"), root / "q.gguf")
    out = root / "raw.nntr"
    with pytest.raises(SystemExit) as done:
        main(["convert", str(gguf_path), str(out), "--quant-type", "keep", "--gguf-raw-names"])
    assert done.value.code == 0
    return gguf_path, out


def _verify(capsys, *argv: str) -> dict:
    from nntrtool.cli.app import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["verify", *map(str, argv), "--json", "-q"])
    said = capsys.readouterr()
    assert done.value.code == 0, said.err
    return json.loads(said.out)


def test_logits_put_the_raw_tensors_in_place(raw_file, capsys):
    gguf_path, out = raw_file
    from nntrtool.format import NntrFile

    with NntrFile(out) as nf:
        n_tensors = len(nf.names)
        assert "blk.0.attn_q.weight" in nf.names  # GGUF names kept
    for extra in ((), ("--gguf-raw-names",)):
        report = _verify(capsys, out, gguf_path, "--logits", *extra)
        logits = report["logits"]
        # every tensor found its parameter (the tied head through the embedding), values equal
        assert logits["replaced"] == n_tensors and not logits["unused"]
        assert logits["not_replaced"] == []
        assert logits["max_logit_diff"] == 0.0 and logits["top1_agreement"] == 1.0


def test_text_runs_on_the_raw_file(raw_file, tmp_path, capsys):
    gguf_path, out = raw_file
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    report = _verify(capsys, out, gguf_path, "--logits", "--text", text, "--ctx", "32")
    assert report["text"]["replaced"] > 0 and report["text"]["kl_mean"] == 0.0


def test_the_raw_names_table_maps_qwen2_names():
    from nntrtool.verify.raw_names import gguf_names

    keys = ["model.layers.1.self_attn.q_proj.weight", "model.embed_tokens.weight", "lm_head.weight"]
    got = gguf_names("qwen2", keys, ["blk.0.attn_q.weight", "blk.1.attn_q.weight"])
    assert got == {
        "blk.1.attn_q.weight": "model.layers.1.self_attn.q_proj.weight",
        "token_embd.weight": "model.embed_tokens.weight",
        "output.weight": "lm_head.weight",
    }
    assert gguf_names("no-such-arch", keys, []) == {}


def test_several_files_against_one_raw_source(raw_file, tmp_path):
    """One run of the source over the text, then each raw-names file in turn."""
    from nntrtool.cli.app import main
    from nntrtool.sources import SourceRequest
    from nntrtool.verify import load_text_chunks
    from nntrtool.verify.text import compare_text_files

    gguf_path, out = raw_file
    q8 = tmp_path / "q8.nntr"
    with pytest.raises(SystemExit) as done:
        main(["convert", str(gguf_path), str(q8), "--quant-type", "q8_0", "--gguf-raw-names", "-q"])
    assert done.value.code == 0
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    request = SourceRequest.of(gguf_path, gguf_raw_names=True)
    chunks = load_text_chunks(request, text, ctx=32, chunks=None)
    exact, quantized, again = compare_text_files([out, q8, out], request, chunks)
    assert exact.kl_mean == 0.0 and quantized.kl_mean > 0.0
    assert again.kl_mean == 0.0
