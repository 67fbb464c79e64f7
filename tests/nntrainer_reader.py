"""An independent reader of nntrainer CausalLM model folders, for the export tests.

It reads a folder the way the runtime does: the three JSON files, then the weight file walked
by position in the order the runtime builds its layers, each tensor's size following from the
dtype names in ``nntr_config.json`` and the shapes in ``config.json``. It then undoes what the
runtime expects (F32 and F16 linear weights transposed, Q4_0 and Q4_K interleaved for the CPU,
Q4_K behind a 2-byte qscheme value) and dequantizes
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
BYTES_PER_BLOCK = {
    "FP32": (1, 4),
    "FP16": (1, 2),
    "Q4_0": (32, 18),
    "Q6_K": (256, 210),
    "Q4_K": (256, 144),
}
# the loader skips this many bytes (a qscheme value) before tensors of every other type
NO_PREFIX = ("FP32", "FP16", "Q6_K", "Q4_0")


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


def _scale_min(q: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and min ``j`` (0..7) of the 12-byte 6-bit packing in the last axis of ``q``."""
    q = q.astype(np.int64)
    if j < 4:
        return q[..., j] & 63, q[..., j + 4] & 63
    return (q[..., j + 4] & 0xF) | ((q[..., j - 4] >> 6) << 4), (q[..., j + 4] >> 4) | (
        (q[..., j] >> 6) << 4
    )


def deinterleave_q4_k(data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The 8-row interleaved Q4_K bytes (block_q4_Kx8) of a [rows, cols] matrix back to plain
    Q4_K rows: per group of 8 rows and per 256 values, d[8], dmin[8], 8 x 12 bytes of scales
    (one 12-byte packing per sub-block, holding the 8 rows'), then 8-byte code chunks taken
    from the rows in turn."""
    nb = cols // 256
    x = data.reshape(rows // 8, nb, 1152).astype(np.int64)
    plain = np.zeros((rows // 8, 8, nb, 144), dtype=np.int64)
    for r in range(8):
        plain[:, r, :, 0:2] = x[:, :, 2 * r : 2 * r + 2]
        plain[:, r, :, 2:4] = x[:, :, 16 + 2 * r : 18 + 2 * r]
        sc = np.zeros((rows // 8, nb, 8), dtype=np.int64)
        mn = np.zeros_like(sc)
        for k in range(8):
            sc[..., k], mn[..., k] = _scale_min(x[:, :, 32 + 12 * k : 44 + 12 * k], r)
        for j in range(4):  # the plain block's own packing of its 8 sub-blocks
            plain[:, r, :, 4 + j] = sc[..., j] | ((sc[..., j + 4] >> 4) << 6)
            plain[:, r, :, 8 + j] = mn[..., j] | ((mn[..., j + 4] >> 4) << 6)
            plain[:, r, :, 12 + j] = (sc[..., j + 4] & 15) | ((mn[..., j + 4] & 15) << 4)
        for c in range(16):
            at = 128 + (c * 8 + r) * 8
            plain[:, r, :, 16 + 8 * c : 24 + 8 * c] = x[:, :, at : at + 8]
    return plain.astype(np.uint8).reshape(rows, nb * 144)


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
        transposed = kind in ("fc", "lmhead", "router") and dtype in ("FP32", "FP16")
        stored = (shape[1], shape[0]) if transposed else shape
        if dtype not in NO_PREFIX:
            assert pos + 2 <= blob.size, f"weight file ends before {name}"
            pos += 2
        n = _size(dtype, stored)
        assert pos + n <= blob.size, f"weight file ends inside {name}"
        raw = blob[pos : pos + n]
        pos += n
        order.append(name)
        if dtype == "FP32":
            w = raw.view("<f4").reshape(stored)
            state[name] = np.ascontiguousarray(w.T) if transposed else w.copy()
        elif dtype == "FP16":
            assert kind in ("fc", "lmhead"), f"{name}: FP16 is only for fully connected layers"
            w = raw.view("<f2").reshape(stored).astype(np.float32)
            state[name] = np.ascontiguousarray(w.T)
        elif dtype == "Q4_K":
            assert kind in ("fc", "lmhead"), f"{name}: Q4_K is only for fully connected layers"
            assert shape[0] % 8 == 0 and shape[1] % 256 == 0, (name, shape)
            plain = deinterleave_q4_k(raw, shape[0], shape[1])
            state[name] = gguf_dequantize(plain, GGMLQuantizationType.Q4_K).reshape(shape)
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
