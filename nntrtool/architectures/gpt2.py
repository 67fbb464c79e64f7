"""GPT-2: Conv1D weights are ``[in, out]``, which llama.cpp transposes to ``[out, in]``; it also
writes the tied output matrix as a copy of the token embedding. Both undone here: weights
transposed back (from their float32 values), the copy dropped when it is the embedding's bytes.
"""

from __future__ import annotations

import re

import numpy as np

from nntrtool.architectures.base import Family, GGUFMeta
from nntrtool.architectures.ops import transpose_rule
from nntrtool.tensors.base import SourceTensor
from nntrtool.tensors.transforms import Rule, TensorLookup

SPELLINGS = (
    r"transformer\.(wte|wpe|ln_f)",
    r"lm_head",
    r"transformer\.h\.\d+\.(ln_1|ln_2)",
    r"transformer\.h\.\d+\.attn\.c_(attn|proj)",
    r"transformer\.h\.\d+\.mlp\.c_(fc|proj)",
)
KEYS = {
    "context_length": "n_positions",
    "embedding_length": "n_embd",
    "block_count": "n_layer",
    "feed_forward_length": "n_inner",
    "attention.head_count": "n_head",
    "attention.layer_norm_epsilon": "layer_norm_epsilon",
    "vocab_size": "vocab_size",
}
EMBEDDING = "transformer.wte.weight"
_CHUNK_ROWS = 4096


def same_rows(a: SourceTensor, b: SourceTensor) -> bool:
    """Whether two tensors hold the same dtype, shape and bytes (read a chunk at a time)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return all(
        np.array_equal(
            a.read(i, min(i + _CHUNK_ROWS, a.rows)), b.read(i, min(i + _CHUNK_ROWS, a.rows))
        )
        for i in range(0, a.rows, _CHUNK_ROWS)
    )


def _tied_output(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    embed = lookup.get(EMBEDDING)
    return [] if embed is not None and same_rows(t, embed) else [t]


def gguf_rules(meta: GGUFMeta) -> list[Rule]:
    """Conv1D weights transposed back; an output matrix equal to the embedding dropped."""
    return [
        transpose_rule(
            r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight"
        ),
        Rule(r"lm_head\.weight", _tied_output, "tied output copy dropped"),
    ]


def _finish(cfg: dict, field) -> None:
    cfg["activation_function"] = "gelu_new"


FAMILY = Family(
    "gpt2",
    "GPT2LMHeadModel",
    spellings=SPELLINGS,
    gguf_rules=gguf_rules,
    config_keys=KEYS,
    finish_config=_finish,
    rope=False,
)
