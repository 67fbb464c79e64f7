"""Value transforms llama.cpp's converter applies, each with its inverse, and the rules that undo
them on tensors read from a GGUF.

Every transform is a pair of plain numpy functions, ``forward`` (what llama.cpp does to the
checkpoint's values) and ``inverse`` (what nntrtool does to get them back); the tests check
that one undoes the other. The rules read a GGUF tensor's rows on demand, as
:class:`~nntrtool.tensors.transforms.DerivedTensor`\\ s:

- a row permutation moves whole rows, so quantized blocks stay bit-exact;
- a value change (norm offset, transpose) works on float32 values: F32 rows stay F32, other
  types are dequantized first and stored from their float32 values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from nntrtool.architectures.base import GGUFMeta
from nntrtool.errors import SourceError
from nntrtool.messages import gguf_unreadable
from nntrtool.tensors.base import SourceTensor
from nntrtool.tensors.transforms import (
    DerivedTensor,
    Rule,
    TensorLookup,
    done_reading,
    expert_matrix,
    llama_qk_order,
    permuted_rows,
)

QK_NOTE = "rows un-permuted (llama.cpp Q/K order)"


# ---- the pairs ---------------------------------------------------------------------------


def qk_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order: each head's two rotary halves interleaved row by row."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def qk_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The checkpoint's Q/K row order back from llama.cpp's (inverse of :func:`qk_permute`)."""
    return w[llama_qk_order(w.shape[0], n_head)]


def add_offset(w: np.ndarray, offset: float) -> np.ndarray:
    """Gemma's norms as llama.cpp stores them: ``w + 1`` (Gemma computes ``x * (1 + w)``)."""
    return (w.astype(np.float32) + np.float32(offset)).astype(np.float32)


def remove_offset(w: np.ndarray, offset: float) -> np.ndarray:
    """The checkpoint's norm back (inverse of :func:`add_offset`, in float32)."""
    return (w.astype(np.float32) - np.float32(offset)).astype(np.float32)


def transpose(w: np.ndarray) -> np.ndarray:
    """``[in, out]`` <-> ``[out, in]`` (GPT-2's Conv1D weights; its own inverse)."""
    return np.ascontiguousarray(w.T)


def stack_experts(per_expert: Sequence[np.ndarray]) -> np.ndarray:
    """Per-expert matrices as llama.cpp stores them: one ``[experts, out, in]`` tensor."""
    return np.stack(list(per_expert))


def split_experts(fused: np.ndarray) -> list[np.ndarray]:
    """The per-expert matrices back (inverse of :func:`stack_experts`)."""
    return [np.ascontiguousarray(m) for m in fused]


# ---- rules on GGUF tensors (Hugging Face names already given) ------------------------------


def _f32_rows(t: SourceTensor, start: int, stop: int) -> np.ndarray:
    return np.array(t.read_f32(start, stop), dtype=np.float32, copy=True)


def unpermute_qk_rules(meta: GGUFMeta) -> list[Rule]:
    """Llama's Q and K weights (and biases) back into the checkpoint's row order."""
    n_head = meta.count("attention.head_count")
    n_head_kv = meta.count("attention.head_count_kv", default=n_head)
    return [
        Rule(
            rf"model\.layers\.\d+\.self_attn\.{proj}_proj\.(?:weight|bias)",
            _unpermute(heads),
            f"{proj.upper()} rows un-permuted",
        )
        for proj, heads in (("q", n_head), ("k", n_head_kv))
    ]


def _unpermute(n_head: int):
    def expand(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
        order = llama_qk_order(t.shape[0], n_head)
        if t.ndim == 2:
            return [permuted_rows(t, t.name, order, QK_NOTE)]
        if t.ndim == 1 and not t.blocked:  # a bias: its one row's values are reordered

            def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
                return np.ascontiguousarray(inputs[0].read(start, stop)[:, order])

            return [DerivedTensor(t.name, t.dtype, t.shape, [t], read, QK_NOTE)]
        raise SourceError(
            gguf_unreadable(
                t.file, f"tensor {t.name!r} {list(t.shape)} is not an attention weight or bias"
            )
        )

    return expand


def norm_offset_rule(pattern: str, offset: float = 1.0) -> Rule:
    """Norm weights matching ``pattern`` with llama.cpp's ``+ offset`` taken off again."""
    note = f"norm offset -{offset:g} (llama.cpp stores Gemma norms as 1 + w)"

    def expand(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
        def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
            return remove_offset(_f32_rows(inputs[0], start, stop), offset)

        return [DerivedTensor(t.name, "F32", t.shape, [t], read, note, source_nbytes=t.nbytes)]

    return Rule(pattern, expand, "norm offset removed")


def transpose_rule(pattern: str) -> Rule:
    """2-D weights matching ``pattern`` transposed back (GPT-2's Conv1D ``[in, out]``)."""
    note = "transposed back to [in, out] (Conv1D)"

    def expand(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
        if t.ndim != 2:
            return [t]
        rows, cols = t.shape
        cache: dict[str, np.ndarray] = {}

        def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
            whole = cache.get("m")
            if whole is None:
                raw = inputs[0].read_f32(0, rows)
                whole = transpose(raw)
                done_reading(raw)
                cache["m"] = whole
            out = whole[start:stop]
            if stop >= cols:
                cache.clear()
            return out

        # float32 values, whatever the GGUF stored
        return [DerivedTensor(t.name, "F32", (cols, rows), [t], read, note, source_nbytes=t.nbytes)]

    return Rule(pattern, expand, "Conv1D weights transposed")


def split_experts_rule() -> Rule:
    """Fused ``[experts, out, in]`` tensors split into one matrix per expert."""

    def expand(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
        if t.ndim != 3:
            return [t]
        prefix, proj = m.group(1), m.group(2)
        return [
            expert_matrix(t, f"{prefix}.{e}.{proj}.weight", e, note=f"expert {e} of {t.name}")
            for e in range(t.shape[0])
        ]

    return Rule(
        r"(model\.layers\.\d+\.mlp\.experts)\.((?:gate|up|down)_proj)\.weight",
        expand,
        "fused experts stored one matrix per expert",
    )


def reshape_rule(pattern: str, shape_of) -> Rule:
    """Tensors matching ``pattern`` given the shape ``shape_of(tensor)`` (same values, same
    order: a 1-D GGUF vector that the checkpoint holds as ``[1, n]``)."""

    def expand(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
        shape = tuple(shape_of(t))
        if shape == t.shape:
            return [t]
        if int(np.prod(shape)) != t.numel or shape[-1] != t.cols or t.blocked:
            raise SourceError(
                gguf_unreadable(
                    t.file, f"tensor {t.name!r} {list(t.shape)} cannot be read as {list(shape)}"
                )
            )

        def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
            return inputs[0].read(start, stop)

        return [DerivedTensor(t.name, t.dtype, shape, [t], read, "", source_nbytes=t.nbytes)]

    return Rule(pattern, expand, "reshaped")
