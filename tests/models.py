"""Builders of small test models in the real layouts of Llama, Qwen2, Qwen3 and Gemma.

:func:`make_hf_model` builds a random model with ``transformers`` (needs torch) and saves it
the way Hugging Face does: config.json plus safetensors (single or sharded) or a pickle
checkpoint (``pytorch_model.bin``, single or sharded), in F32, F16 or BF16. Seconds. Large
Llama-style models for memory and speed tests come from the package's own numpy-only builder,
:func:`nntrtool.synthetic.make_synthetic_model`.

:func:`cache_model` lays files out as huggingface_hub's cache holds them, for offline hub ids.
:func:`write_safetensors` writes any tensors (also BF16, and deliberately broken files) and
:func:`reference_tensors` reads a model back with the libraries' own readers, as an oracle
independent of nntrtool.

Dimension presets: ``TINY`` (hidden 64: fits Q4_0/Q8_0 blocks but not Q6_K's 256),
``Q6K`` (every matrix's columns a multiple of 256, rows a multiple of 8), ``ODD`` (columns
that are multiples of neither 32 nor 256, for fallback tests) and ``ODD_ROWS`` (a 500-row
embedding, for repack fallbacks). Pass them as keywords: ``make_hf_model(path, "llama", **Q6K)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ARCHS = ("llama", "qwen2", "qwen3", "gemma")

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


# ---- Hugging Face cache ------------------------------------------------------------------


def cache_model(
    cache: Path, repo_id: str, files: dict[str, Path], commit: str, ref: str | None = "main"
) -> Path:
    """Lay ``files`` out in huggingface_hub's cache structure: content-addressed blobs, a snapshot
    folder of symlinks per commit, and a ref file naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


# ---- tokenizers ---------------------------------------------------------------------------


def add_tokenizer(path: str | Path, vocab: int = 512, *, bos: bool = True) -> Path:
    """Train a byte-level BPE tokenizer of ``vocab`` ids (``tokenizers``) on a fixed English
    sample and save it into the model folder ``path`` the way Hugging Face does
    (tokenizer.json, tokenizer_config.json). With ``bos`` it prepends ``<s>`` (id 0) to every
    encoded text, like Llama's tokenizer. Returns ``path``."""
    import importlib.resources

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sample = importlib.resources.files("pydoc_data").joinpath("topics.py").read_text()[:200_000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([sample], trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(path))
    return Path(path)
