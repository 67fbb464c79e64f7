"""Tokenizer files made from a GGUF's vocabulary: the tokenizer class picked from the family's
model type writes the same files ``AutoTokenizer`` writes from the same GGUF (which first
builds the whole config to pick that class), for SentencePiece-style (llama, gemma) and
byte-level BPE (gpt2, qwen2) vocabularies; transformers' own GGUF loading is the oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

SPECIAL = ["<unk>", "<s>", "</s>"]


def _spm_tokens() -> tuple[list[str], list[float], list[int]]:
    m = "\u2581"  # SentencePiece's word mark
    pieces = [m, "a", "b", "c", m + "a", "ab", m + "ab", "bc", m + "abc", "  ", m + "b"]
    tokens = SPECIAL + [f"<0x{i:02X}>" for i in range(256)] + pieces
    scores = [0.0] * (len(SPECIAL) + 256) + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    return tokens, scores, types


def _bpe_tokens() -> tuple[list[str], list[str], list[int]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merged = ["\u0120t", "he", "\u0120the", "\u0120a", "in", "\u0120in"]
    merges = ["\u0120 t", "h e", "\u0120t he", "\u0120 a", "i n", "\u0120 in"]
    tokens = symbols + merged + ["<|endoftext|>", "<think>"]
    types = [1] * (len(symbols) + len(merged)) + [3, 4]
    return tokens, merges, types


def _write(path: Path, arch: str, style: str, name: str = "tiny") -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-6)
    if style == "spm":
        tokens, scores, types = _spm_tokens()
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    else:
        tokens, merges, types = _bpe_tokens()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2" if arch.startswith("qwen") else "default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(len(tokens) - 2)
        w.add_eos_token_id(len(tokens) - 2)
        w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


CASES = [
    ("llama", "spm"),
    ("gemma3", "spm"),
    ("qwen2", "bpe"),
    ("qwen3", "bpe"),
    ("gpt2", "bpe"),
    ("starcoder2", "bpe"),
    ("phi3", "spm"),
]


def _files(folder_files: list[Path]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder_files}


@pytest.mark.parametrize(("arch", "style"), CASES, ids=[a for a, _ in CASES])
def test_files_are_what_autotokenizer_writes(arch, style, tmp_path):
    from transformers import AutoTokenizer

    from nntrtool.export.gguf_tokenizer import _by_model_type, gguf_tokenizer_files

    path = _write(tmp_path / f"{arch}.gguf", arch, style)
    assert _by_model_type(path) is not None  # the quick way applies to these families
    files, problem = gguf_tokenizer_files(path)
    assert problem is None
    ours = _files(files)
    ref_dir = tmp_path / "ref"
    AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name).save_pretrained(ref_dir)
    theirs = _files(sorted(ref_dir.iterdir()))
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert ours[name] == theirs[name], name
    # and the files tokenize as transformers' own GGUF tokenizer does
    exported = AutoTokenizer.from_pretrained(str(files[0].parent))
    oracle = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ("the abc in a b", " ab  abc\n", "<|endoftext|>the<think>"):
        assert exported(text)["input_ids"] == oracle(text)["input_ids"], text


def test_gemma_1_gets_the_tokenizer_gemma_3_gets(tmp_path):
    """transformers' GGUF config does not read Gemma (1), so AutoTokenizer cannot load such a
    file; its tokenizer is Gemma 3's (the same class over the same vocabulary)."""
    from nntrtool.export.gguf_tokenizer import gguf_tokenizer_files

    (tmp_path / "1").mkdir()
    (tmp_path / "3").mkdir()
    one, problem = gguf_tokenizer_files(_write(tmp_path / "1" / "g.gguf", "gemma", "spm"))
    assert problem is None
    three, _ = gguf_tokenizer_files(_write(tmp_path / "3" / "g.gguf", "gemma3", "spm"))
    assert _files(one) == _files(three)


def test_what_the_family_does_not_settle_goes_through_autotokenizer(tmp_path):
    from nntrtool.export.gguf_tokenizer import _by_model_type, gguf_tokenizer_files

    mistral = _write(tmp_path / "m.gguf", "llama", "spm", name="Mistral 7B Instruct")
    assert _by_model_type(mistral) is None
    files, problem = gguf_tokenizer_files(mistral)
    assert problem is None and any(p.name == "tokenizer.json" for p in files)
    named = tmp_path / "named"
    named.mkdir()
    path = _write(named / "q.gguf", "qwen2", "bpe")
    (named / "tokenizer_config.json").write_text("{}")
    assert _by_model_type(path) is None
