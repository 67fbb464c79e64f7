"""Generate ``examples/tiny-llama``: a tiny Llama model with real tensor names, in bfloat16.

Needs numpy and nntrtool's torch-free model-building helpers, and gives the same bytes on every
run (fixed seed), so the committed files can be checked against it:
``python examples/make_tiny_model.py [OUTPUT_DIR]``.

The shapes are chosen so every conversion option applies: each matrix has a multiple of 256
columns (Q4_0 and Q6_K blocks fit) and a multiple of 8 rows (every repack layout fits).
1 layer, hidden 256, 4 heads of 64 with 2 key/value heads, MLP 256, vocabulary 256, tied
embeddings: 459,520 parameters, under 1 MB. Weights are N(0, 0.02), norms 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from nntrtool.synthetic import LlamaShape, safetensors_header, to_bf16_bits

SEED = 20240601
HIDDEN = 256
INTERMEDIATE = 256
LAYERS = 1
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
VOCAB = 256
SHAPE = LlamaShape(
    hidden=HIDDEN, intermediate=INTERMEDIATE, vocab=VOCAB, layers=LAYERS, heads=HEADS,
    kv_heads=KV_HEADS, tie=True,
)  # fmt: skip

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


def build(out_dir: Path) -> Path:
    """Write config.json and model.safetensors into ``out_dir``; returns it."""
    rng = np.random.default_rng(SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, _ = safetensors_header(SHAPE.tensors(), "BF16")
    with open(out_dir / "model.safetensors", "wb") as fh:
        fh.write(header)
        for _name, shape in SHAPE.tensors():
            if len(shape) == 1:
                values = np.ones(shape, dtype=np.float32)
            else:
                values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            fh.write(to_bf16_bits(values).tobytes())
    (out_dir / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    return out_dir


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "tiny-llama"
    build(out)
    size = (out / "model.safetensors").stat().st_size
    print(f"wrote {out}: {SHAPE.n_params:,} parameters, model.safetensors {size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
