"""benchmarks/bench_gguf.py's Gemma-shaped GGUFs: the tensor types the benchmark claims, and a
``kept`` file whose lossless conversion copies every tensor's bytes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_gguf import GEMMA, MIXES, build_gemma  # noqa: E402

from nntrtool.convert import ConvertOptions, convert  # noqa: E402
from nntrtool.format import NntrFile  # noqa: E402
from nntrtool.sources.gguf_file import GGUFFile  # noqa: E402


def test_q4_k_m_mix_has_the_types_llama_cpp_gives_these_shapes(tmp_path):
    path = build_gemma(tmp_path / "q.gguf", 512, "q4_k_m", layers=8)
    with GGUFFile(path) as gf:
        types = {t.name: t.dtype for t in gf.tensors}
        assert gf.count("tokenizer.ggml.tokens") == 512
        assert gf.field("gemma3.embedding_length") == GEMMA["hidden"]
    assert types["token_embd.weight"] == "Q8_0"  # Q6_K falls back: 640 is not 256-value blocks
    assert types["blk.0.attn_output.weight"] == "Q4_K"  # 1024-wide rows take K-quants
    assert types["blk.0.ffn_gate.weight"] == "Q5_0"
    # attn_v and ffn_down: one step up in llama.cpp's "more bits" layers (0, 7, 3 and 6 of 8)
    more = [i for i in range(8) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert more == [0, 3, 6, 7]
    assert all(types[f"blk.{i}.attn_v.weight"] == "Q8_0" for i in more)
    assert {"Q4_K", "Q5_0", "Q6_K", "Q8_0", "F32"} == set(types.values())


def test_kept_mix_converts_by_copying_every_tensor(tmp_path):
    path = build_gemma(tmp_path / "k.gguf", 512, "kept", layers=2)
    assert set(MIXES) == {"q4_k_m", "kept"}
    out = tmp_path / "k.nntr"
    report = convert(path, out, ConvertOptions(quant_type="keep"))
    with GGUFFile(path) as gf:
        # Gemma's norms are stored in GGUF with 1 added; they come back as the checkpoint has them
        source = {
            t.gguf_name: np.asarray(t.read()) for t in gf.tensors if "norm" not in t.gguf_name
        }
        norms = {t.gguf_name: np.asarray(t.read()) for t in gf.tensors if "norm" in t.gguf_name}
    assert not [t.name for t in report.plan.tensors if t.fallback]
    with NntrFile(out) as f:
        stored = [f.raw(t.name).tobytes() for t in f.tensors if "norm" not in t.name]
        stored_norms = sorted(f.array(t.name).tobytes() for t in f.tensors if "norm" in t.name)
    assert len(stored) == len(source)
    assert sorted(stored) == sorted(a.tobytes() for a in source.values())
    assert stored_norms == sorted((a - np.float32(1)).tobytes() for a in norms.values())
