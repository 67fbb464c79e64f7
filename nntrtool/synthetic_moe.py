"""Synthetic mixture-of-experts models (Qwen3-MoE, GPT-OSS) of any size, for benchmarks.

Like :mod:`nntrtool.synthetic` for Llama: a real-looking Hugging Face folder (``config.json``
and safetensors with the family's tensor names, shapes and dtypes) written straight to disk
with bounded memory. GPT-OSS experts come fused (``gate_up_proj`` ``[E, hidden, 2 * inter]``)
or, with ``mxfp4``, packed as the published checkpoint stores them (``*_blocks`` and
``*_scales``, uint8). The values come from small pools: fine for timing and memory, not for
accuracy.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nntrtool.errors import UsageError
from nntrtool.synthetic import DTYPE_BYTES, FILL_CHUNK, FILL_POOL, Filler, safetensors_header

FAMILIES = ("qwen3_moe", "gpt_oss")

#: ``(name, safetensors dtype, shape)``.
Entry = tuple[str, str, tuple[int, ...]]


@dataclass(frozen=True)
class MoeShape:
    """The dimensions of a synthetic MoE model; ``inter`` is one expert's intermediate size."""

    family: str
    hidden: int
    inter: int
    experts: int
    layers: int
    vocab: int = 32000
    heads: int = 32
    kv_heads: int = 4
    head_dim: int = 64
    top_k: int = 4
    mxfp4: bool = False

    def tensors(self) -> list[Entry]:
        """Every tensor in the family's checkpoint naming and dtypes, in writing order."""
        h, i, e = self.hidden, self.inter, self.experts
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        gpt = self.family == "gpt_oss"
        out: list[Entry] = [("model.embed_tokens.weight", "BF16", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out.append((p + "input_layernorm.weight", "BF16", (h,)))
            for proj, rows in (("q", q), ("k", kv), ("v", kv)):
                out.append((p + f"self_attn.{proj}_proj.weight", "BF16", (rows, h)))
                if gpt:
                    out.append((p + f"self_attn.{proj}_proj.bias", "BF16", (rows,)))
                elif proj != "v":
                    out.append((p + f"self_attn.{proj}_norm.weight", "BF16", (self.head_dim,)))
            out.append((p + "self_attn.o_proj.weight", "BF16", (h, q)))
            out.append((p + "post_attention_layernorm.weight", "BF16", (h,)))
            if not gpt:
                out.append((p + "mlp.gate.weight", "BF16", (e, h)))
                for x in range(e):
                    for proj, shape in (("gate", (i, h)), ("up", (i, h)), ("down", (h, i))):
                        out.append((p + f"mlp.experts.{x}.{proj}_proj.weight", "BF16", shape))
                continue
            out += [
                (p + "self_attn.o_proj.bias", "BF16", (h,)),
                (p + "self_attn.sinks", "BF16", (self.heads,)),
                (p + "mlp.router.weight", "BF16", (e, h)),
                (p + "mlp.router.bias", "BF16", (e,)),
                (p + "mlp.experts.gate_up_proj_bias", "BF16", (e, 2 * i)),
                (p + "mlp.experts.down_proj_bias", "BF16", (e, h)),
            ]
            ex = p + "mlp.experts."
            if self.mxfp4:
                for proj, rows, cols in (("gate_up", 2 * i, h), ("down", h, i)):
                    out.append((ex + f"{proj}_proj_blocks", "U8", (e, rows, cols // 32, 16)))
                    out.append((ex + f"{proj}_proj_scales", "U8", (e, rows, cols // 32)))
            else:
                out.append((ex + "gate_up_proj", "BF16", (e, h, 2 * i)))
                out.append((ex + "down_proj", "BF16", (e, i, h)))
        out.append(("model.norm.weight", "BF16", (h,)))
        out.append(("lm_head.weight", "BF16", (self.vocab, h)))
        return out

    @property
    def n_params(self) -> int:
        """Parameters of the model (MXFP4 experts counted as the values they hold)."""
        total = 0
        for name, _, shape in self.tensors():
            n = math.prod(shape)
            if name.endswith("_blocks"):
                n *= 2
            elif name.endswith("_scales"):
                n = 0
            total += n
        return total

    def config(self) -> dict:
        """A ``config.json`` with the keys transformers writes for the family."""
        common = {
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "num_experts_per_tok": self.top_k,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        }
        if self.family == "qwen3_moe":
            return {
                "architectures": ["Qwen3MoeForCausalLM"],
                "model_type": "qwen3_moe",
                "intermediate_size": 3 * self.inter,
                "moe_intermediate_size": self.inter,
                "num_experts": self.experts,
                "norm_topk_prob": True,
                "decoder_sparse_step": 1,
                "mlp_only_layers": [],
                "rope_theta": 1000000.0,
                **common,
            }
        cfg = {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "intermediate_size": self.inter,
            "num_local_experts": self.experts,
            "sliding_window": 128,
            "layer_types": ["sliding_attention", "full_attention"] * (self.layers // 2)
            + ["sliding_attention"] * (self.layers % 2),
            "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0},
            "swiglu_limit": 7.0,
            **common,
        }
        if self.mxfp4:
            cfg["quantization_config"] = {"quant_method": "mxfp4"}
        return cfg


def moe_shape(
    family: str,
    n_params: float,
    *,
    experts: int = 64,
    hidden: int = 2048,
    inter: int = 768,
    mxfp4: bool = False,
) -> MoeShape:
    """The smallest :class:`MoeShape` of ``family`` with at least ``n_params`` parameters."""
    if family not in FAMILIES:
        raise UsageError(f"synthetic MoE family {family!r}: choose {' or '.join(FAMILIES)}")
    if hidden % 32 or inter % 32 or experts < 1:
        raise UsageError("synthetic MoE: hidden and inter must be multiples of 32, experts >= 1")

    def build(layers: int) -> MoeShape:
        return MoeShape(family, hidden, inter, experts, layers, mxfp4=mxfp4 and family == "gpt_oss")

    base, per_layer = build(0).n_params, build(1).n_params - build(0).n_params
    return build(max(1, math.ceil((float(n_params) - base) / per_layer)))


def make_synthetic_moe(
    path: str | os.PathLike, shape: MoeShape, *, shards: int = 1, seed: int = 0
) -> Path:
    """Write ``shape`` as a Hugging Face folder at ``path`` (``shards`` safetensors files)."""
    entries = shape.tensors()
    sizes = [math.prod(s) * DTYPE_BYTES[d] for _, d, s in entries]
    per_shard = math.ceil(sum(sizes) / max(1, shards))
    groups: list[list[Entry]] = [[]]
    filled = 0
    for entry, size in zip(entries, sizes, strict=True):
        if groups[-1] and filled + size > per_shard and len(groups) < shards:
            groups.append([])
            filled = 0
        groups[-1].append(entry)
        filled += size
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
    bf16 = Filler("BF16", seed)
    rng = np.random.default_rng(seed + 1)
    nibbles = memoryview(np.tile(rng.integers(0, 256, FILL_POOL, dtype=np.uint8), 2))
    scales = memoryview(np.tile(rng.integers(118, 124, FILL_POOL, dtype=np.uint8), 2))
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups):
        name = (
            "model.safetensors"
            if len(groups) == 1
            else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        )
        header, _ = safetensors_header(group)
        with open(root / name, "wb") as f:
            f.write(header)
            for tname, dtype, tshape in group:
                count = math.prod(tshape)
                if dtype == "U8":
                    pool = scales if tname.endswith("_scales") else nibbles
                    for done in range(0, count, FILL_POOL):
                        start = int(rng.integers(0, FILL_POOL))
                        f.write(pool[start : start + min(FILL_POOL, count - done)])
                elif "norm" in tname:
                    f.write(bf16.norm_bytes(count, 0.02))
                else:
                    for piece in bf16.chunks(count):
                        f.write(piece)
                weight_map[tname] = name
    if len(groups) > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    assert FILL_CHUNK >= FILL_POOL
    return root
