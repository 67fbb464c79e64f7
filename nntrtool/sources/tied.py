"""Whether a model's output head is its token embeddings (stored once when it is).

Every operation that stores, verifies or merges a head asks this one place; the answer comes
from the config when it says so, else from the tensors themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nntrtool.model_config import ModelConfig

#: Name endings of token-embedding matrices and output heads across common architectures.
EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "tok_embeddings.weight",
    "word_embeddings.weight",
    "wte.weight",
)
HEAD_NAMES = ("lm_head.weight", "output.weight", "embed_out.weight")

#: Rows compared at a time when checking whether the head holds the embeddings' data.
COMPARE_ROWS = 1024


@dataclass(frozen=True)
class TiedEmbeddings:
    """Whether the output head shares the token embeddings, and which tensors those are."""

    tied: bool
    embedding: str | None = None
    head: str | None = None
    head_in_source: bool = False
    reason: str = ""


def config_says_tied(config: dict[str, Any]) -> bool | None:
    """``tie_word_embeddings`` of the config (or its ``text_config``), None when unset."""
    return ModelConfig.of(config).tie_word_embeddings


def find_tensor(tensors: list[Any], match: Any) -> Any | None:
    return next((t for t in tensors if match(t.name)), None)


def detect_tied(tensors: list[Any], config: dict[str, Any]) -> TiedEmbeddings:
    """Whether the output head is the token embeddings (stored once, config says ``tied``).

    Tied when the config says ``tie_word_embeddings``, when the source has no head at all, or
    when the head's data is identical to the embeddings' (compared row chunk by row chunk).
    """
    embed = find_tensor(tensors, lambda n: n.endswith(EMBEDDING_SUFFIXES))
    head = find_tensor(tensors, lambda n: n in HEAD_NAMES or n.endswith(".lm_head.weight"))
    if embed is None:
        return TiedEmbeddings(
            False, head=head.name if head else None, head_in_source=head is not None
        )
    if head is None:
        return TiedEmbeddings(
            True, embed.name, "lm_head.weight", False, "the source has no output head"
        )
    if tuple(head.shape) != tuple(embed.shape):
        return TiedEmbeddings(False, embed.name, head.name, True)
    if config_says_tied(config):
        return TiedEmbeddings(
            True, embed.name, head.name, True, "tie_word_embeddings is true in the config"
        )
    if head.dtype == embed.dtype and same_data(head, embed):
        return TiedEmbeddings(
            True, embed.name, head.name, True, "the head holds the same data as the embeddings"
        )
    return TiedEmbeddings(False, embed.name, head.name, True)


def same_data(a: Any, b: Any) -> bool:
    rows = a.rows
    for start in range(0, rows, COMPARE_ROWS):
        stop = min(rows, start + COMPARE_ROWS)
        x, y = a.read(start, stop), b.read(start, stop)
        if x.ctypes.data == y.ctypes.data:
            continue
        if not np.array_equal(x.view(np.uint8), y.view(np.uint8)):
            return False
    return True
