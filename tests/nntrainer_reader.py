"""An independent reader of nntrainer CausalLM model folders, for the export tests.

It reads a folder the way the runtime does: the three JSON files, then the weight file walked
by position in the order the runtime builds its layers, each tensor's size following from the
dtype names in ``nntr_config.json`` and the shapes in ``config.json``. It then undoes what the
runtime expects (F32 linear weights transposed, Q4_0 interleaved for the CPU) and dequantizes
with the ``gguf`` package, giving a Hugging Face state dict of float32 arrays.

It shares no code with ``nntrtool.export`` on purpose: it is written from the runtime's rules,
so a mistake in the exporter cannot hide behind the same mistake here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

# rows per interleaved group and bytes per chunk of the Q4_0 CPU layouts, per ISA
ISA_Q4_0 = {"x86": (8, 8), "arm": (4, 8)}
BYTES_PER_BLOCK = {"FP32": (1, 4), "Q4_0": (32, 18), "Q6_K": (256, 210)}


@dataclass
class FolderContents:
    """What a model folder holds, read back."""

    config: dict
    generation_config: dict
    nntr_config: dict
    state_dict: dict[str, np.ndarray]
    weight_file: Path
    order: list[str]


def _tensor_order(config: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, kind, [out, in]-style shape) in the runtime's read order."""
    arch = config["architectures"][0]
    if arch not in (
        "LlamaForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "GptOssForCausalLM",
    ):
        raise ValueError(f"reader does not know {arch}")
    qk_norm = arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
    gpt_oss = arch == "GptOssForCausalLM"
    v, d, inter = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    hd = config.get("head_dim") or d // heads
    kv = config.get("num_key_value_heads") or heads
    order = [("model.embed_tokens.weight", "embedding", (v, d))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        order.append((p + "input_layernorm.weight", "norm", (d,)))
        for proj, rows in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd)):
            order.append((p + f"self_attn.{proj}_proj.weight", "fc", (rows, d)))
            if gpt_oss:
                order.append((p + f"self_attn.{proj}_proj.bias", "vector", (rows,)))
            if qk_norm and proj in ("q", "k"):
                order.append((p + f"self_attn.{proj}_norm.weight", "norm", (hd,)))
        if gpt_oss:
            order.append((p + "self_attn.sinks", "vector", (heads,)))
        order.append((p + "self_attn.o_proj.weight", "fc", (d, heads * hd)))
        if gpt_oss:
            order.append((p + "self_attn.o_proj.bias", "vector", (d,)))
        order.append((p + "post_attention_layernorm.weight", "norm", (d,)))
        if arch == "Qwen3MoeForCausalLM":
            n, m = config["num_experts"], config["moe_intermediate_size"]
            order.append((p + "mlp.gate.weight", "router", (n, d)))
            for e in range(n):
                q = f"{p}mlp.experts.{e}."
                order.append((q + "up_proj.weight", "fc", (m, d)))
                order.append((q + "gate_proj.weight", "fc", (m, d)))
                order.append((q + "down_proj.weight", "fc", (d, m)))
        elif gpt_oss:
            n = config["num_local_experts"]
            order.append((p + "mlp.router.weight", "router", (n, d)))
            order.append((p + "mlp.router.bias", "vector", (n,)))
            for e in range(n):
                q = f"{p}mlp.experts.{e}."
                for proj, shape in (("up", (inter, d)), ("gate", (inter, d)), ("down", (d, inter))):
                    order.append((q + f"{proj}_proj.weight", "fc", shape))
                    order.append((q + f"{proj}_proj.bias", "vector", shape[:1]))
        else:
            order.append((p + "mlp.up_proj.weight", "fc", (inter, d)))
            order.append((p + "mlp.gate_proj.weight", "fc", (inter, d)))
            order.append((p + "mlp.down_proj.weight", "fc", (d, inter)))
    order.append(("model.norm.weight", "norm", (d,)))
    if not config["tie_word_embeddings"]:
        order.append(("lm_head.weight", "lmhead", (v, d)))
    return order


def _size(dtype: str, shape: tuple[int, ...]) -> int:
    per, nbytes = BYTES_PER_BLOCK[dtype]
    count = int(np.prod(shape))
    assert shape[-1] % per == 0, (dtype, shape)
    return count // per * nbytes


def deinterleave_q4_0(data: np.ndarray, rows: int, cols: int, group: int, chunk: int) -> np.ndarray:
    """The CPU-interleaved Q4_0 bytes of a [rows, cols] matrix back to plain Q4_0 rows."""
    nb = cols // 32
    blocks = data.reshape(rows // group, nb, group * 18)
    scales = blocks[:, :, : 2 * group].reshape(rows // group, nb, group, 2)
    codes = blocks[:, :, 2 * group :].reshape(rows // group, nb, 16 // chunk, group, chunk) ^ 0x88
    plain = np.empty((rows // group, group, nb, 18), dtype=np.uint8)
    plain[..., :2] = scales.transpose(0, 2, 1, 3)
    plain[..., 2:] = codes.transpose(0, 3, 1, 2, 4).reshape(rows // group, group, nb, 16)
    return plain.reshape(rows, nb * 18)


def read_folder(folder: str | Path, isa: str) -> FolderContents:
    """Read an exported folder as the runtime on ``isa`` would; dequantized float32 weights."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    gen = json.loads((folder / "generation_config.json").read_text())
    nntr = json.loads((folder / "nntr_config.json").read_text())
    weight_file = folder / nntr["model_file_name"]
    blob = np.fromfile(weight_file, dtype=np.uint8)
    # the runtime takes the linear layers' type from model_tensor_type ("Q4_0-FP32": weights,
    # activations); fc_layer_dtype is read but unused. Routers are always FP32.
    dtypes = {
        "embedding": nntr["embedding_dtype"],
        "fc": nntr["model_tensor_type"].split("-")[0],
        "lmhead": nntr.get("lmhead_dtype", nntr["embedding_dtype"]),
        "norm": "FP32",
        "vector": "FP32",
        "router": "FP32",
    }
    group, chunk = ISA_Q4_0[isa]
    state: dict[str, np.ndarray] = {}
    order = []
    pos = 0
    for name, kind, shape in _tensor_order(config):
        dtype = dtypes[kind]
        transposed = kind in ("fc", "lmhead", "router") and dtype == "FP32"
        stored = (shape[1], shape[0]) if transposed else shape
        n = _size(dtype, stored)
        assert pos + n <= blob.size, f"weight file ends inside {name}"
        raw = blob[pos : pos + n]
        pos += n
        order.append(name)
        if dtype == "FP32":
            w = raw.view("<f4").reshape(stored)
            state[name] = np.ascontiguousarray(w.T) if transposed else w.copy()
        elif dtype == "Q6_K":
            assert kind == "embedding" or (kind == "lmhead" and config["tie_word_embeddings"])
            q = raw.reshape(shape[0], -1)
            state[name] = gguf_dequantize(q, GGMLQuantizationType.Q6_K).reshape(shape)
        elif dtype == "Q4_0":
            assert kind in ("fc", "lmhead"), f"{name}: Q4_0 is only for fully connected layers"
            plain = deinterleave_q4_0(raw, shape[0], shape[1], group, chunk)
            state[name] = gguf_dequantize(plain, GGMLQuantizationType.Q4_0).reshape(shape)
        else:
            raise AssertionError(f"unknown dtype {dtype}")
        state[name] = state[name].astype(np.float32, copy=False)
    assert pos == blob.size, f"{blob.size - pos} bytes left over after the last tensor"
    return FolderContents(config, gen, nntr, state, weight_file, order)
