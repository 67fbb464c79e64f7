"""GGUF metadata that contradicts the file's tensors: one line naming the key, its value and the
tensor, exit 2, no output. A vocabulary shorter than the embedding (padded rows) is accepted.

The files are written with the ``gguf`` package's writer: a one-layer Llama (or Qwen3-MoE)
whose metadata is then bent one key at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nntrtool.errors import SourceError
from nntrtool.sources import open_source

HIDDEN, ROWS = 64, 16


def _write(
    path: Path,
    *,
    arch: str = "llama",
    heads: int = 4,
    kv: int = 2,
    key_length: int | None = None,
    tokens: int | None = ROWS,
    vocab_size: int | None = None,
    experts: int | None = None,
    stacked: int = 4,
    used: int = 2,
    layers: int = 1,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    import gguf

    rng = np.random.default_rng(0)
    head = key_length or HIDDEN // heads

    def f32(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(128)
    w.add_context_length(128)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-6)
    if key_length is not None:
        w.add_key_length(key_length)
        w.add_value_length(key_length)
    if vocab_size is not None:
        w.add_vocab_size(vocab_size)
    if tokens is not None:
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"<t{i}>" for i in range(tokens)])
    if experts is not None:
        w.add_expert_count(experts)
        w.add_expert_used_count(used)
        w.add_expert_feed_forward_length(32)
    w.add_tensor("token_embd.weight", f32(ROWS, HIDDEN))
    w.add_tensor("output_norm.weight", f32(HIDDEN))
    for name, value in (extra or {}).items():
        w.add_tensor(name, value)
    for i in range(layers):
        blk = f"blk.{i}"
        w.add_tensor(f"{blk}.attn_norm.weight", f32(HIDDEN))
        w.add_tensor(f"{blk}.ffn_norm.weight", f32(HIDDEN))
        w.add_tensor(f"{blk}.attn_q.weight", f32(heads * head, HIDDEN))
        w.add_tensor(f"{blk}.attn_k.weight", f32(max(kv, 1) * head, HIDDEN))
        w.add_tensor(f"{blk}.attn_v.weight", f32(max(kv, 1) * head, HIDDEN))
        w.add_tensor(f"{blk}.attn_output.weight", f32(HIDDEN, heads * head))
        if experts is None:
            w.add_tensor(f"{blk}.ffn_gate.weight", f32(128, HIDDEN))
            w.add_tensor(f"{blk}.ffn_up.weight", f32(128, HIDDEN))
            w.add_tensor(f"{blk}.ffn_down.weight", f32(HIDDEN, 128))
        else:
            w.add_tensor(f"{blk}.attn_q_norm.weight", f32(head))
            w.add_tensor(f"{blk}.attn_k_norm.weight", f32(head))
            w.add_tensor(f"{blk}.ffn_gate_inp.weight", f32(stacked, HIDDEN))
            w.add_tensor(f"{blk}.ffn_gate_exps.weight", f32(stacked, 32, HIDDEN))
            w.add_tensor(f"{blk}.ffn_up_exps.weight", f32(stacked, 32, HIDDEN))
            w.add_tensor(f"{blk}.ffn_down_exps.weight", f32(stacked, HIDDEN, 32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _refused(path: Path, tmp_path: Path, capsys, *needles: str) -> str:
    """The CLI refuses ``path`` with one line holding every needle, exit 2, writing nothing."""
    from nntrtool.cli.app import main

    with pytest.raises(SourceError) as err:
        open_source(path)
    line = str(err.value)
    assert "\n" not in line and "download or convert the GGUF again" in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    out = tmp_path / "out.nntr"
    before = sorted(tmp_path.iterdir())
    with pytest.raises(SystemExit) as done:
        main(["convert", str(path), str(out), "--quant-type", "keep"])
    assert done.value.code == 2
    err_lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and "Traceback" not in err_lines[0]
    assert sorted(tmp_path.iterdir()) == before
    return line


def test_the_well_formed_files_open(tmp_path):
    for kwargs in ({}, {"arch": "qwen3moe", "experts": 4}, {"heads": 6, "key_length": 16}):
        with open_source(_write(tmp_path / "ok.gguf", **kwargs)) as src:
            assert src.config["vocab_size"] == ROWS


def test_heads_that_do_not_divide_the_hidden_size(tmp_path, capsys):
    path = _write(tmp_path / "m.gguf", heads=7, kv=7)
    _refused(
        path,
        tmp_path,
        capsys,
        "llama.attention.head_count = 7",
        "llama.embedding_length = 64",
        "blk.0.attn_q.weight has shape [63, 64]",
    )


def test_a_head_size_given_by_key_length_needs_no_division(tmp_path):
    # 6 heads of 16 values over a hidden size of 64: as Gemma's and Qwen3's files are
    with open_source(_write(tmp_path / "m.gguf", heads=6, kv=2, key_length=16)) as src:
        assert src.config["head_dim"] == 16 and src.config["num_attention_heads"] == 6


@pytest.mark.parametrize("kv", [3, 0])
def test_kv_heads_that_do_not_divide_the_heads(kv, tmp_path, capsys):
    path = _write(tmp_path / "m.gguf", heads=4, kv=kv)
    _refused(path, tmp_path, capsys, f"llama.attention.head_count_kv = {kv}", "blk.0.attn_k.weight")


def test_more_tokens_than_embedding_rows(tmp_path, capsys):
    path = _write(tmp_path / "m.gguf", tokens=ROWS + 1)
    _refused(
        path,
        tmp_path,
        capsys,
        f"tokenizer.ggml.tokens = {ROWS + 1}",
        f"token_embd.weight has shape [{ROWS}, {HIDDEN}]",
    )


def test_a_stated_vocab_size_beyond_the_rows(tmp_path, capsys):
    path = _write(tmp_path / "m.gguf", vocab_size=ROWS + 4)
    _refused(path, tmp_path, capsys, f"llama.vocab_size = {ROWS + 4}", "token_embd.weight")


@pytest.mark.parametrize("what", ["tokens", "vocab_size"])
def test_a_vocabulary_shorter_than_the_padded_embedding_is_accepted(what, tmp_path):
    kwargs = {"tokens": ROWS - 3} if what == "tokens" else {"vocab_size": ROWS - 3}
    with open_source(_write(tmp_path / "m.gguf", **kwargs)) as src:
        # vocab_size counts the embedding's rows, as the checkpoint's config does
        assert src.config["vocab_size"] == ROWS
        assert src.tensor("model.embed_tokens.weight").shape == (ROWS, HIDDEN)


@pytest.mark.parametrize("stated", [3, 5])
def test_an_expert_count_unlike_the_stacked_experts(stated, tmp_path, capsys):
    path = _write(tmp_path / "m.gguf", arch="qwen3moe", experts=stated, stacked=4)
    _refused(
        path,
        tmp_path,
        capsys,
        f"qwen3moe.expert_count = {stated}",
        "blk.0.ffn_gate_inp.weight has shape [4, 64]",
    )


@pytest.mark.parametrize("used", [0, 5])
def test_experts_used_per_token_outside_the_count(used, tmp_path, capsys):
    path = _write(tmp_path / "m.gguf", arch="qwen3moe", experts=4, used=used)
    _refused(path, tmp_path, capsys, f"qwen3moe.expert_used_count = {used}", "4 experts")


def _set_u32(path, key: str, value: int) -> None:
    """Overwrite the uint32 metadata value ``key`` of the GGUF at ``path`` in place."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields[key]
    at = field.parts[field.data[0]].ctypes.data - reader.data.ctypes.data
    del reader
    data = bytearray(path.read_bytes())
    data[at : at + 4] = value.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_what_the_config_then_says_is_phrased_in_gguf_terms(tmp_path, capsys):
    """A contradiction found on the rebuilt config names the GGUF's key and tensor."""
    path = _write(tmp_path / "m.gguf", layers=2)
    _set_u32(path, "llama.block_count", 1)  # a file that says one layer but holds two
    _refused(path, tmp_path, capsys, "llama.block_count (num_hidden_layers) = 1", "2 layers")


def test_a_feed_forward_length_unlike_the_tensors(tmp_path, capsys):
    path = _write(tmp_path / "m.gguf")
    _set_u32(path, "llama.feed_forward_length", 96)
    _refused(
        path,
        tmp_path,
        capsys,
        "llama.feed_forward_length (intermediate_size) = 96",
        "blk.0.ffn_gate.weight (model.layers.0.mlp.gate_proj.weight) has shape [128, 64]",
    )


def test_raw_names_are_checked_too(tmp_path):
    path = _write(tmp_path / "m.gguf", tokens=ROWS + 1)
    with pytest.raises(SourceError, match="tokenizer.ggml.tokens"):
        open_source(path, gguf_raw_names=True)


@pytest.mark.parametrize("tensors", [("long",), ("long", "short")])
def test_longrope_factor_tensors_that_do_not_pair_up(tensors, tmp_path):
    """Phi-3's LongRoPE factors go into the config: one alone, or two of unequal length, is
    one line (a well-formed pair is tested the real way round in test_families.py)."""
    import gguf

    path = tmp_path / "phi3.gguf"
    w = gguf.GGUFWriter(str(path), "phi3")
    w.add_block_count(0)
    w.add_embedding_length(HIDDEN)
    w.add_head_count(4)
    w.add_tensor("token_embd.weight", np.zeros((ROWS, HIDDEN), np.float32))
    for i, which in enumerate(tensors):
        w.add_tensor(f"rope_factors_{which}.weight", np.ones(8 + i, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(SourceError, match="LongRoPE factor tensors do not pair up") as err:
        open_source(path)
    assert "\n" not in str(err.value) and "long_factor of 8" in str(err.value)


def test_rope_freqs_that_are_no_llama3_scaling_are_refused(tmp_path):
    """llama.cpp's rope_freqs tensor goes back into the config as Llama 3's RoPE scaling (the
    real way round in test_families.py); values no such scaling gives are one line."""
    head = HIDDEN // 4
    odd = np.linspace(1, 3, head // 2).astype(np.float32)[::-1].copy()  # falls, not rises
    with pytest.raises(SourceError, match="rope_freqs.weight matches no Llama 3") as err:
        open_source(_write(tmp_path / "m.gguf", extra={"rope_freqs.weight": odd}))
    assert "\n" not in str(err.value)
    short = np.ones(3, np.float32)
    with pytest.raises(SourceError, match="not Llama 3's RoPE scaling for a head size of 16"):
        open_source(_write(tmp_path / "s.gguf", extra={"rope_freqs.weight": short}))
