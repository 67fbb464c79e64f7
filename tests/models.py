"""Builders of small test models in the real layouts of Llama, Qwen2, Qwen3 and Gemma.

Two kinds:

- :func:`make_hf_model` builds a random model with ``transformers`` (needs torch) and saves it
  the way Hugging Face does: config.json plus safetensors (single or sharded) or a pickle
  checkpoint (``pytorch_model.bin``, single or sharded), in F32, F16 or BF16. Seconds.
- :func:`make_synthetic_model` writes a Llama-style model of any size with numpy only, straight
  to safetensors, from a small pool of N(0, 0.02) values; a 1 B parameter bf16 model takes as
  long as writing 2 GB. For benchmarks and memory measurements.

:func:`write_safetensors` writes any tensors (also BF16, and deliberately broken files) and
:func:`reference_tensors` reads a model back with the libraries' own readers, as an oracle
independent of nntrtool.

Dimension presets: ``TINY`` (hidden 64: fits Q4_0/Q8_0 blocks but not Q6_K's 256),
``Q6K`` (every matrix's columns a multiple of 256, rows a multiple of 8), ``ODD`` (columns
that are multiples of neither 32 nor 256, for fallback tests) and ``ODD_ROWS`` (a 500-row
embedding, for repack fallbacks). Pass them as keywords: ``make_hf_model(path, "llama", **Q6K)``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ARCHS = ("llama", "qwen2", "qwen3", "gemma")
DTYPES = ("f32", "f16", "bf16")

#: hidden 64, 2 layers, vocab 512: blocks of 32 fit every matrix, Q6_K's 256 fits none.
TINY: dict[str, int] = dict(hidden=64, layers=2, vocab=512, intermediate=128, heads=4, kv_heads=2)
#: Every matrix has a multiple of 256 columns and of 8 rows: Q6_K and every repack layout fit.
Q6K: dict[str, int] = dict(hidden=256, layers=2, vocab=512, intermediate=512, heads=4, kv_heads=2)
#: Columns 72 and 200 are multiples of neither 32 nor 256 (rows still multiples of 8).
ODD: dict[str, int] = dict(hidden=72, layers=1, vocab=520, intermediate=200, heads=4, kv_heads=4)
#: Columns fit blocks of 32, but the embedding (and head) has 500 rows: a multiple of 4, not 8.
ODD_ROWS: dict[str, int] = dict(
    hidden=64, layers=1, vocab=500, intermediate=128, heads=4, kv_heads=2
)

_ST_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
_NP_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


# ---- transformers-built models ------------------------------------------------------------


def hf_config(
    arch: str = "llama",
    *,
    tie: bool | None = None,
    hidden: int = 64,
    layers: int = 2,
    vocab: int = 512,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
) -> Any:
    """A transformers config of ``arch`` with small dimensions; ``tie=None`` keeps the family's
    default (Gemma tied, the others untied)."""
    import transformers

    classes = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "gemma": transformers.GemmaConfig,
    }
    if arch not in classes:
        raise ValueError(f"unknown arch {arch!r}; choose from {ARCHS}")
    kwargs: dict[str, Any] = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        vocab_size=vocab,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim or hidden // heads,
        max_position_embeddings=256,
    )
    if tie is not None:
        kwargs["tie_word_embeddings"] = tie
    return classes[arch](**kwargs)


def make_hf_model(
    path: str | Path,
    arch: str = "llama",
    *,
    dtype: str = "f32",
    tie: bool | None = None,
    shard_size: str | int | None = None,
    checkpoint: bool = False,
    seed: int = 0,
    **dims: int,
) -> Path:
    """Build a random ``arch`` model with transformers and save it in ``path`` (created).

    ``dtype`` is f32, f16 or bf16; ``shard_size`` (e.g. ``"100KB"``) shards it with an index;
    ``checkpoint=True`` saves ``pytorch_model.bin`` (sharded ``pytorch_model-*.bin`` with an
    index when ``shard_size`` is given) instead of safetensors. ``dims`` override the TINY
    dimensions (hidden, layers, vocab, intermediate, heads, kv_heads, head_dim).
    Returns ``path``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = hf_config(arch, tie=tie, **{**TINY, **dims})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.eval()
    if not checkpoint:
        kwargs = {"max_shard_size": shard_size} if shard_size is not None else {}
        model.save_pretrained(path, **kwargs)
        return path
    model.config.save_pretrained(path)
    state = _untied_state_dict(model)
    if shard_size is None:
        torch.save(state, path / "pytorch_model.bin")
    else:
        _save_sharded_bin(state, path, _parse_size(shard_size))
    return path


def _untied_state_dict(model: Any) -> dict[str, Any]:
    """The state dict without the second name of a tied tensor, as Hugging Face saves it."""
    seen: set[tuple[int, int]] = set()
    state = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().clone().contiguous()
    return state


def _save_sharded_bin(state: dict[str, Any], path: Path, max_bytes: int) -> None:
    import torch

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, path / fname)
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    s = size.strip().upper()
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * scale)
    return int(s)


def reference_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a model folder or weights file as float32, read with safetensors' and
    torch's own readers (an oracle that shares no code with nntrtool)."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    else:
        files = [path]
    out: dict[str, np.ndarray] = {}
    for f in files:
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    out[name] = st.get_tensor(name).to(torch.float32).numpy()
        else:
            state = torch.load(f, map_location="cpu", weights_only=True)
            for name, t in state.items():
                out[name] = t.to(torch.float32).numpy()
    return out


# ---- numpy-only writers ------------------------------------------------------------------


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even (NaN kept)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> 16).astype(
        np.uint16
    )
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def write_safetensors(
    path: str | Path,
    tensors: Mapping[str, np.ndarray | tuple[str, np.ndarray]],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a safetensors file with numpy only.

    Values are arrays (dtype taken from numpy: float32 -> F32, float16 -> F16, int8 -> I8, ...)
    or ``(dtype_name, array)`` pairs to force a name, e.g. ``("BF16", f32_to_bf16_bits(x))`` or
    ``("F8_E4M3", uint8_array)``; the array's bytes are written as they are.
    """
    names = {
        "<f4": "F32", "<f2": "F16", "<f8": "F64", "|i1": "I8", "|u1": "U8", "<i2": "I16",
        "<u2": "U16", "<i4": "I32", "<u4": "U32", "<i8": "I64", "<u8": "U64", "|b1": "BOOL",
    }  # fmt: skip
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name, value in tensors.items():
        if isinstance(value, tuple):
            dtype, arr = value
            arr = np.asarray(arr)
            shape = list(arr.shape)
        else:
            arr = np.asarray(value)
            dtype = names[arr.dtype.str]
            shape = list(arr.shape)
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(_header_bytes(header))
        for data in blobs:
            fh.write(data)
    return path


def _header_bytes(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so the data starts 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def llama_shapes(
    *,
    hidden: int,
    intermediate: int,
    vocab: int,
    layers: int,
    heads: int,
    kv_heads: int,
    tie: bool = False,
) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a Llama model, in Hugging Face's naming."""
    head_dim = hidden // heads
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (heads * head_dim, hidden)),
            (p + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden)),
            (p + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, heads * head_dim)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (intermediate, hidden)),
            (p + "mlp.up_proj.weight", (intermediate, hidden)),
            (p + "mlp.down_proj.weight", (hidden, intermediate)),
        ]
    out.append(("model.norm.weight", (hidden,)))
    if not tie:
        out.append(("lm_head.weight", (vocab, hidden)))
    return out


def llama_config_dict(
    *, hidden: int, intermediate: int, vocab: int, layers: int, heads: int, kv_heads: int,
    tie: bool = False, dtype: str = "bf16",
) -> dict[str, Any]:  # fmt: skip
    """A Llama ``config.json`` for the given dimensions (what transformers would write)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tie,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype],
    }


def make_synthetic_model(
    path: str | Path,
    n_params: int | None = None,
    *,
    dtype: str = "bf16",
    hidden: int = 2048,
    intermediate: int | None = None,
    vocab: int = 32000,
    layers: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    tie: bool = False,
    shards: int = 1,
    seed: int = 0,
) -> Path:
    """Write a Llama-style model folder of about ``n_params`` parameters with numpy only.

    Give ``n_params`` (layers are chosen to reach it, at least 1) or ``layers``. Weights are
    N(0, 0.02) values drawn once into a 4 Mi-value pool and laid down from shifting places in
    it, norms are ones, so writing is as fast as the disk. ``shards > 1`` splits the layers
    over that many files with a ``model.safetensors.index.json``. Returns ``path``.
    """
    if dtype not in _ST_DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}")
    intermediate = intermediate or hidden * 4
    heads = heads or max(1, hidden // 64)
    kv_heads = kv_heads or heads
    dims = dict(
        hidden=hidden, intermediate=intermediate, vocab=vocab, heads=heads, kv_heads=kv_heads
    )
    if layers is None:
        if n_params is None:
            raise ValueError("give n_params or layers")
        fixed = sum(math.prod(s) for _, s in llama_shapes(layers=0, tie=tie, **dims))
        per_layer = sum(math.prod(s) for _, s in llama_shapes(layers=1, tie=True, **dims)) - (
            vocab * hidden + hidden
        )
        layers = max(1, round((n_params - fixed) / per_layer))
    shapes = llama_shapes(layers=layers, tie=tie, **dims)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = llama_config_dict(layers=layers, tie=tie, dtype=dtype, **dims)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    st_dtype = _ST_DTYPES[dtype]
    pool = _value_pool(st_dtype, seed)
    groups = _split_for_shards(shapes, shards)
    rng = np.random.default_rng(seed + 1)
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups, 1):
        fname = "model.safetensors" if len(groups) == 1 else (
            f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        )  # fmt: skip
        total += _write_streamed(path / fname, group, st_dtype, pool, rng)
        weight_map.update({name: fname for name, _ in group})
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path


def _value_pool(st_dtype: str, seed: int, size: int = 1 << 22) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal(size, dtype=np.float32)
    values *= np.float32(0.02)
    if st_dtype == "BF16":
        return f32_to_bf16_bits(values)
    return values.astype(_NP_DTYPES[st_dtype])


def _split_for_shards(
    shapes: list[tuple[str, tuple[int, ...]]], shards: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    if shards <= 1:
        return [shapes]
    total = sum(math.prod(s) for _, s in shapes)
    target = total / shards
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    acc = 0
    for name, shape in shapes:
        if groups[-1] and acc >= target * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append((name, shape))
        acc += math.prod(shape)
    return groups


def _write_streamed(
    path: Path,
    shapes: list[tuple[str, tuple[int, ...]]],
    st_dtype: str,
    pool: np.ndarray,
    rng: np.random.Generator,
) -> int:
    itemsize = _NP_DTYPES[st_dtype].itemsize
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * itemsize
        header[name] = {
            "dtype": st_dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    one = {"F32": np.float32(1), "F16": np.float16(1)}.get(st_dtype, np.uint16(0x3F80))
    with open(path, "wb") as fh:
        fh.write(_header_bytes(header))
        for _name, shape in shapes:
            n = math.prod(shape)
            if len(shape) == 1:
                fh.write(np.full(n, one, dtype=pool.dtype).tobytes())
                continue
            start = int(rng.integers(0, pool.size))
            while n > 0:
                take = min(n, pool.size - start)
                fh.write(memoryview(pool[start : start + take]).cast("B"))
                n -= take
                start = 0
    return offset
