"""Synthetic Llama-style models of any size, written straight to safetensors.

Benchmarks and tests need real-looking model folders (``config.json`` plus safetensors with
Llama tensor names and shapes) of a chosen parameter count, up to billions of parameters,
without torch and without holding the model in memory. Weights are N(0, 0.02) values drawn
once into a small pool and written through a sliding window, so a 1 B parameter bf16 model
takes as long as writing 2 GB and a few tens of MB of memory. The values look random but are
not independent: fine for timing and memory measurements, not for accuracy studies.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import UsageError

#: safetensors dtype name -> (numpy dtype the bytes are written as, bytes per element).
DTYPES: dict[str, tuple[str, int]] = {"BF16": ("<u2", 2), "F16": ("<f2", 2), "F32": ("<f4", 4)}
#: Bytes per element of every dtype a synthetic safetensors file holds.
DTYPE_BYTES: dict[str, int] = {**{k: v[1] for k, v in DTYPES.items()}, "U8": 1}
_TORCH_DTYPE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_HIDDEN_LADDER = (4096, 2048, 1024, 512, 256)
_MIN_LAYERS = 8
FILL_POOL = 1 << 20
FILL_CHUNK = 1 << 24


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions of a Llama-style model (``kv_heads`` below ``heads`` is grouped attention)."""

    hidden: int
    intermediate: int
    vocab: int
    layers: int
    heads: int
    kv_heads: int
    tie: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of every tensor, in Hugging Face's naming and order."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (q, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, q)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
            ]
        out.append(("model.norm.weight", (h,)))
        if not self.tie:
            out.append(("lm_head.weight", (self.vocab, h)))
        return out

    @property
    def n_params(self) -> int:
        """Parameters in all tensors (by formula: a huge shape need not list its tensors)."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = 2 * h + 2 * q * h + 2 * kv * h + 3 * i * h
        return self.vocab * h * (1 if self.tie else 2) + self.layers * per_layer + h

    def config(self, dtype: str = "BF16") -> dict:
        """A ``config.json`` for this shape, with the keys transformers writes for Llama."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie,
            "torch_dtype": _TORCH_DTYPE[dtype.upper()],
        }


def _round_up(n: float, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (``<u2``) of finite values, rounded to nearest even as torch does."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    return ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype("<u2")


def synthetic_shape(
    n_params: float | None = None,
    *,
    hidden: int | None = None,
    intermediate: int | None = None,
    vocab: int | None = None,
    layers: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    tie: bool = False,
    at_least: bool = True,
) -> LlamaShape:
    """The smallest Llama-style shape with at least ``n_params`` parameters (or ``layers``).

    Without a ``hidden``, the widest of 4096 ... 256 that still gives at least 8 layers is
    taken (1e9 gives hidden 2048 and 20 layers, close to TinyLlama); intermediate defaults to
    2.75 x hidden rounded up to 256, heads of 64 and a quarter as many key/value heads.
    ``at_least=False`` rounds the layer count to the nearest instead of up (at least 1 layer).
    """
    target = float("nan")
    if layers is None:
        target = float(n_params) if n_params is not None else float("nan")
        if not math.isfinite(target) or target <= 0:
            raise UsageError(
                f"synthetic model size {n_params!r}: give a positive parameter count or layers"
            )
    elif int(layers) < 1:
        raise UsageError(f"synthetic model layers {layers}: give at least 1")

    def build(h: int, n_layers: int) -> LlamaShape:
        n_heads = heads or max(1, h // 64)
        return LlamaShape(
            hidden=h,
            intermediate=intermediate or _round_up(h * 11 / 4, 256),
            vocab=vocab or (32000 if h >= 1024 else 8 * h),
            layers=n_layers,
            heads=n_heads,
            kv_heads=kv_heads or max(1, n_heads // 4),
            tie=tie,
        )

    if hidden is None:
        hidden = _HIDDEN_LADDER[-1]
        if layers is None:
            for h in _HIDDEN_LADDER:
                if build(h, _MIN_LAYERS).n_params <= target:
                    hidden = h
                    break
    n_heads = heads or max(1, hidden // 64)
    if hidden <= 0 or hidden % n_heads or n_heads % (kv_heads or max(1, n_heads // 4)):
        raise UsageError(
            f"synthetic model hidden {hidden}, heads {n_heads}, kv_heads {kv_heads}: hidden must "
            "divide into heads and heads into key/value heads"
        )
    if layers is None:
        base = build(hidden, 0).n_params
        per_layer = build(hidden, 1).n_params - base
        fit = (target - base) / per_layer
        layers = max(1, math.ceil(fit) if at_least else round(fit))
    return build(hidden, int(layers))


class Filler:
    """Random-looking bytes of a dtype from a small pool read through a sliding window."""

    def __init__(self, dtype: str, seed: int):
        np_dtype, self.esize = DTYPES[dtype]
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        pool = self.rng.standard_normal(FILL_POOL, dtype=np.float32) * np.float32(0.02)
        self.window = memoryview(
            np.tile(self._encode(pool), FILL_CHUNK // FILL_POOL + 1).view(np.uint8)
        )

    def _encode(self, values: np.ndarray) -> np.ndarray:
        values = values.astype(np.float32)
        if self.dtype == "BF16":
            return to_bf16_bits(values)
        return values.astype(DTYPES[self.dtype][0])

    def chunks(self, count: int) -> Iterator[memoryview]:
        """Bytes of ``count`` elements, in pieces of at most ``FILL_CHUNK`` elements."""
        done = 0
        while done < count:
            m = min(FILL_CHUNK, count - done)
            start = int(self.rng.integers(0, FILL_POOL)) * self.esize
            yield self.window[start : start + m * self.esize]
            done += m

    def norm_bytes(self, count: int, spread: float) -> bytes:
        """RMSNorm weights: 1.0 plus N(0, ``spread``) noise, as in trained models."""
        return self._encode(1.0 + spread * self.rng.standard_normal(count)).tobytes()


def safetensors_header(
    entries: list[tuple[str, tuple[int, ...]]] | list[tuple[str, str, tuple[int, ...]]],
    dtype: str | None = None,
) -> tuple[bytes, int]:
    """The safetensors header (length prefix included) of tensors stored back to back in that
    order, and the data size it describes: ``(name, shape)`` entries of one ``dtype``, or
    ``(name, dtype, shape)`` entries each with its own."""
    meta: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        name, dt, shape = (entry[0], dtype, entry[1]) if dtype is not None else entry
        size = math.prod(shape) * DTYPE_BYTES[str(dt)]
        meta[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, offset


def make_synthetic_model(
    path: str | os.PathLike,
    n_params: float | None = None,
    *,
    dtype: str = "bf16",
    shards: int = 1,
    seed: int = 0,
    norm_spread: float = 0.02,
    **dims: Any,
) -> Path:
    """Write a Llama-style model folder of at least ``n_params`` parameters; returns ``path``.

    The shape is :func:`synthetic_shape`'s for ``n_params`` and the ``dims`` keywords
    (``hidden``, ``layers``, ``tie`` ...). ``dtype`` is ``bf16``,
    ``f16`` or ``f32``; ``shards > 1`` splits the tensors over that many
    ``model-XXXXX-of-YYYYY.safetensors`` files with an index, as ``save_pretrained`` does.
    Norm weights are 1.0 plus N(0, ``norm_spread``) noise (``0`` writes exact ones).
    """
    dt = str(dtype).upper()
    if dt not in DTYPES:
        raise UsageError(f"synthetic model dtype {dtype!r}: choose bf16, f16 or f32")
    shape = synthetic_shape(n_params, **dims)
    esize = DTYPES[dt][1]
    per_shard = math.ceil(shape.n_params * esize / max(1, int(shards)))
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    filled = 0
    for name, shp in shape.tensors():
        size = math.prod(shp) * esize
        if groups[-1] and filled + size > per_shard and len(groups) < shards:
            groups.append([])
            filled = 0
        groups[-1].append((name, shp))
        filled += size

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(shape.config(dt), indent=2) + "\n")
    filler = Filler(dt, seed)
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups):
        fname = (
            "model.safetensors"
            if len(groups) == 1
            else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        )
        header, data_size = safetensors_header(group, dt)
        with open(root / fname, "wb") as f:
            f.write(header)
            for tname, shp in group:
                count = math.prod(shp)
                if len(shp) == 1:
                    f.write(filler.norm_bytes(count, norm_spread))
                else:
                    for piece in filler.chunks(count):
                        f.write(piece)
                weight_map[tname] = fname
        total += data_size
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return root
