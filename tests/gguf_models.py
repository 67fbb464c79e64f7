"""GGUF files made the way llama.cpp's converter makes them, from the tests' Hugging Face models.

:func:`write_gguf` reads a folder saved by :func:`tests.models.make_hf_model`, renames every
tensor with the ``gguf`` package's name table, permutes llama's Q/K rows as llama.cpp does,
quantizes matrices with ggml's own C quantizers (ggml-python) into the ggml types asked for, and
writes the file with ``gguf.GGUFWriter`` along with the metadata llama.cpp writes.
"""

from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

#: Architectures the writer knows: GGUF name and whether llama.cpp permutes Q/K.
GGUF_ARCHS = {
    "llama": ("llama", True),
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
    "qwen3_moe": ("qwen3moe", False),
}
_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+_proj)\.weight")


def _fuse_experts(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-expert matrices stacked into one [experts, rows, cols] tensor per layer and
    projection, as llama.cpp's converter stores them, in the place of the first expert."""
    out: dict[str, np.ndarray] = {}
    groups: dict[str, dict[int, np.ndarray]] = {}
    for name, value in tensors.items():
        m = _EXPERT.fullmatch(name)
        if m is None:
            out[name] = value
            continue
        key = f"{m.group(1)}.{m.group(3)}"
        if key not in groups:
            groups[key] = {}
            out[key] = None  # type: ignore[assignment]  # placeholder keeps the order
        groups[key][int(m.group(2))] = value
    for key, experts in groups.items():
        out[key] = np.stack([experts[e] for e in sorted(experts)])
    return out


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The Q/K row permutation llama.cpp's converter applies to llama-family checkpoints."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def ggml_quantize_any(x: np.ndarray, type_name: str) -> np.ndarray:
    """ggml's reference quantizer for any ggml type (``"Q4_K"``, ``"Q5_0"`` ...): uint8 rows."""
    import ggml.ggml as g
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    qtype = GGMLQuantizationType[type_name]
    block, nbytes = GGML_QUANT_SIZES[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    if cols % block:
        raise ValueError(f"{type_name} needs rows of whole {block}-value blocks, not {cols}")
    out = np.zeros((rows, cols // block * nbytes), dtype=np.uint8)
    written = g.ggml_quantize_chunk(
        int(qtype),
        x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        out.ctypes.data_as(ctypes.c_void_p),
        0,
        rows,
        cols,
        None,
    )
    assert written == out.nbytes, (written, out.nbytes)
    return out


def _read_hf(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from tests.models import reference_tensors

    config = json.loads((folder / "config.json").read_text())
    return config, reference_tensors(folder)


def write_gguf(
    folder: str | Path,
    out: str | Path,
    *,
    types: dict[str, str] | None = None,
    default_type: str = "F32",
    version: int = 3,
    tokens: int | None = None,
    tokenizer: bool = True,
) -> Path:
    """Write ``out`` from the Hugging Face model in ``folder``.

    ``types`` maps regular expressions (searched in the Hugging Face name) to ggml types for
    2-D matrices, first match wins; other matrices get ``default_type``; vectors stay F32.
    ``tokens`` writes a toy tokenizer vocabulary of that many tokens (default: the vocab size);
    ``tokenizer=False`` writes none.
    """
    import gguf

    folder, out = Path(folder), Path(out)
    config, tensors = _read_hf(folder)
    tensors = _fuse_experts(tensors)
    model_type = config["model_type"]
    arch, permuted = GGUF_ARCHS[model_type]
    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    tmap = gguf.get_tensor_name_map(
        next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), n_layers
    )
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name("test model")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta")
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    if model_type == "qwen3_moe":
        writer.add_expert_count(config.get("num_experts") or config["num_local_experts"])
        writer.add_expert_used_count(config["num_experts_per_tok"])
        writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
    n_tokens = tokens if tokens is not None else config["vocab_size"]
    if tokenizer:
        # A byte-level vocabulary: the 256 byte symbols first, then made-up merged tokens.
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        symbols = list(bytes_to_unicode().values())
        vocab = (
            symbols + [f"{symbols[i % 26 + 65]}{symbols[i % 7 + 97]}{i}" for i in range(n_tokens)]
        )[:n_tokens]
        writer.add_tokenizer_model("llama" if model_type == "llama" else "gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(vocab)
        writer.add_token_types([1] * n_tokens)
        writer.add_token_scores([-float(i) for i in range(n_tokens)])
        writer.add_token_merges([])
    for key, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
    ):
        if isinstance(config.get(key), int):
            add(config[key])
    for hf, value in tensors.items():
        if value.ndim == 3:  # fused experts, named without a suffix above
            name = f"{tmap.get_name(hf)}.weight"
        else:
            name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf
        value = np.ascontiguousarray(value, dtype=np.float32)
        if permuted and hf.endswith("self_attn.q_proj.weight"):
            value = llama_cpp_permute(value, n_head)
        elif permuted and hf.endswith("self_attn.k_proj.weight"):
            value = llama_cpp_permute(value, n_kv)
        ggml_type = "F32"
        if value.ndim >= 2:
            ggml_type = next(
                (t for p, t in (types or {}).items() if re.search(p, hf)), default_type
            )
        if ggml_type == "F32":
            writer.add_tensor(name, value)
        elif ggml_type == "F16":
            writer.add_tensor(name, value.astype(np.float16))
        else:
            blocks = ggml_quantize_any(value.reshape(-1, value.shape[-1]), ggml_type)
            writer.add_tensor(
                name,
                blocks.reshape(*value.shape[:-1], blocks.shape[-1]),
                raw_dtype=gguf.GGMLQuantizationType[ggml_type],
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if version != 3:
        data = bytearray(out.read_bytes())
        data[4:8] = int(version).to_bytes(4, "little")
        out.write_bytes(bytes(data))
    return out
