"""Tiny random mixture-of-experts models saved as real Hugging Face folders (tests, runtime checks).

``save_qwen3_moe`` and ``save_gpt_oss`` build the models with transformers and ``save_pretrained``
them; ``pack_gpt_oss_mxfp4`` rewrites a GPT-OSS folder the way the published checkpoint stores
its experts (``*_blocks``/``*_scales``). GPT-OSS expert weights are drawn as MXFP4 values from
the start (random nibbles and scales decoded by transformers' own ``convert_moe_packed_tensors``),
so the packed and unpacked folders hold the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

GENERATION = {"bos_token_id": 1, "eos_token_id": [2], "do_sample": False}


def write_byte_tokenizer(folder: Path) -> None:
    """A real byte-level BPE ``tokenizer.json`` of 256 tokens (one per byte, no merges), so
    that a runtime can encode any prompt for these 256-token models and decode their output."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + n) for n, b in enumerate(others)})  # byte-level BPE's table
    tok = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))


def _finish(model, folder: Path) -> Path:
    with torch.no_grad():  # norms away from 1 so that a misplaced norm changes the logits
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps(GENERATION))
    write_byte_tokenizer(folder)
    return folder


def save_qwen3_moe(folder: Path, *, experts: int = 8, seed: int = 0, **overrides) -> Path:
    """A 2-layer Qwen3-MoE (``experts`` experts, 2 per token) saved to ``folder``."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=experts,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**cfg))
    with torch.no_grad():  # a router sharp enough that routing decisions matter
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):  # dense layers (mlp_only_layers) have none
                layer.mlp.gate.weight.normal_(0, 0.5)
    return _finish(model, folder)


def random_mxfp4(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random MXFP4 ``(blocks, scales)`` for a ``[E, rows, cols]`` matrix in packed order."""
    e, rows, cols = shape
    blocks = rng.integers(0, 256, size=(e, rows, cols // 32, 16), dtype=np.uint8)
    scales = rng.integers(120, 125, size=(e, rows, cols // 32), dtype=np.uint8)
    return blocks, scales


def transformers_decode(blocks: np.ndarray, scales: np.ndarray) -> torch.Tensor:
    """transformers' own MXFP4 decoding: ``[E, rows, G, 16]`` -> ``[E, G * 32, rows]`` float32."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    return convert_moe_packed_tensors(
        torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32
    )


def save_gpt_oss(folder: Path, *, experts: int = 8, seed: int = 0, **overrides) -> Path:
    """A 2-layer GPT-OSS (one sliding, one full attention layer) whose experts are MXFP4 values.

    The packed form of each layer's experts is kept in ``folder/mxfp4.npz`` for
    :func:`pack_gpt_oss_mxfp4`.
    """
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=experts,
        num_experts_per_tok=2,
        sliding_window=8,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": 4096,
            "truncate": False,
        },
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = GptOssForCausalLM(GptOssConfig(**cfg))
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    packed = {}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            mlp = layer.mlp
            mlp.router.weight.normal_(0, 0.5)
            mlp.router.bias.normal_(0, 0.1)
            layer.self_attn.sinks.normal_(0, 1.0)
            for proj, rows, cols in (
                ("gate_up_proj", 2 * inter, hidden),
                ("down_proj", hidden, inter),
            ):
                blocks, scales = random_mxfp4((experts, rows, cols), rng)
                getattr(mlp.experts, proj).copy_(transformers_decode(blocks, scales))
                getattr(mlp.experts, f"{proj}_bias").normal_(0, 0.05)
                packed[f"model.layers.{i}.mlp.experts.{proj}_blocks"] = blocks
                packed[f"model.layers.{i}.mlp.experts.{proj}_scales"] = scales
    _finish(model, folder)
    np.savez(folder / "mxfp4.npz", **packed)
    return folder


def pack_gpt_oss_mxfp4(unpacked: Path, folder: Path) -> Path:
    """``unpacked`` (from :func:`save_gpt_oss`) rewritten with MXFP4-packed experts, as the
    published checkpoint stores them (with its ``quantization_config``)."""
    from safetensors.numpy import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = load_file(str(unpacked / "model.safetensors"))
    packed = dict(np.load(unpacked / "mxfp4.npz"))
    for name in list(state):
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            del state[name]
    state.update(packed)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((unpacked / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for extra in ("generation_config.json", "tokenizer.json"):
        (folder / extra).write_text((unpacked / extra).read_text())
    return folder
