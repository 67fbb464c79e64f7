"""Generate ``examples/tiny-llama``: a tiny Llama model with real tensor names, in bfloat16.

Needs numpy only, and gives the same bytes on every run (fixed seed), so the committed files
can be checked against it: ``python examples/make_tiny_model.py [OUTPUT_DIR]``.

The shapes are chosen so every conversion option applies: each matrix has a multiple of 256
columns (Q4_0 and Q6_K blocks fit) and a multiple of 8 rows (every repack layout fits).
1 layer, hidden 256, 4 heads of 64 with 2 key/value heads, MLP 256, vocabulary 256, tied
embeddings: 459,520 parameters, under 1 MB. Weights are N(0, 0.02), norms 1.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

SEED = 20240601
HIDDEN = 256
INTERMEDIATE = 256
LAYERS = 1
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
VOCAB = 256

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "vocab_size": VOCAB,
    "max_position_embeddings": 256,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}


def tensor_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes, in Hugging Face's Llama naming."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    shapes.append(("model.norm.weight", (HIDDEN,)))
    return shapes


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns of finite float32 values, rounded to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    return ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype("<u2")


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write BF16 tensors (given as uint16 bit patterns) in the safetensors format."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, bits in tensors.items():
        header[name] = {
            "dtype": "BF16",
            "shape": list(bits.shape),
            "data_offsets": [offset, offset + bits.nbytes],
        }
        offset += bits.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for bits in tensors.values():
            fh.write(bits.tobytes())


def build(out_dir: Path) -> Path:
    """Write config.json and model.safetensors into ``out_dir``; returns it."""
    rng = np.random.default_rng(SEED)
    tensors = {}
    for name, shape in tensor_shapes():
        if len(shape) == 1:
            values = np.ones(shape, dtype=np.float32)
        else:
            values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        tensors[name] = to_bf16_bits(values)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(out_dir / "model.safetensors", tensors)
    (out_dir / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    return out_dir


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "tiny-llama"
    build(out)
    size = (out / "model.safetensors").stat().st_size
    n = sum(int(np.prod(s)) for _, s in tensor_shapes())
    print(f"wrote {out}: {n:,} parameters, model.safetensors {size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
