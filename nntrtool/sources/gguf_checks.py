"""A GGUF's metadata checked against its tensors, before anything is built from either.

llama.cpp builds its graph from the metadata (head counts, head size, expert count) and loads
tensors of the shapes that metadata implies; a file whose metadata contradicts its tensors
loads wrong or not at all. Such a file is refused here with one line naming the key, its value
and the tensor it contradicts, in GGUF terms (the file's keys and tensor names):

- a head count that does not divide the hidden size when no ``attention.key_length`` gives the
  head size, and a KV head count that does not divide the head count;
- a vocabulary longer than the token embedding has rows (``tokenizer.ggml.tokens``, or a stated
  ``vocab_size``). A shorter one is accepted: checkpoints pad their embeddings beyond the
  tokenizer's vocabulary (llama.cpp's converter then pads the token list to match, other
  writers need not), and the rebuilt config's ``vocab_size`` is the embedding's row count, as
  the checkpoint's is;
- an expert count unlike the stacked expert tensors and the router's rows, and a count of
  experts used per token outside 1 .. the expert count.

What the family's config then says about the tensors it names (sizes, layers) is checked by
:func:`nntrtool.sources.consistency.check_config`, with :func:`config_messages` phrasing its
findings in the same GGUF terms.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nntrtool.errors import SourceError
from nntrtool.messages import gguf_count_mismatch, gguf_mismatch

_EXPERTS = re.compile(r"blk\.\d+\.(ffn_\w+_exps\.(weight|bias)|ffn_gate_inp\.weight)")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_gguf(
    path: Path,
    arch: str,
    field: Callable[[str], Any],
    tensors: Sequence[Any],
    token_count: int | None,
) -> None:
    """Raise one :class:`SourceError` line for the first contradiction between the GGUF's
    metadata (``field(key)``; ``token_count``: the length of ``tokenizer.ggml.tokens``) and
    its ``tensors`` (GGUF names, numpy-order shapes)."""
    by_name = {t.name: t for t in tensors}

    def shape_of(*names: str) -> tuple[str, tuple[int, ...]] | None:
        for name in names:
            if name in by_name:
                return name, tuple(by_name[name].shape)
        return None

    def refuse(key: str, value: int, where: tuple[str, tuple[int, ...]] | None, why: str):
        if where is None:
            raise SourceError(gguf_count_mismatch(path, key, value, why))
        raise SourceError(gguf_mismatch(path, key, value, where[0], where[1], why))

    heads_key, kv_key = f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv"
    hidden_key = f"{arch}.embedding_length"
    heads, kv, hidden = _int(field(heads_key)), _int(field(kv_key)), _int(field(hidden_key))
    query = shape_of("blk.0.attn_q.weight", "blk.0.attn_qkv.weight")
    if heads and hidden is not None and field(f"{arch}.attention.key_length") is None:
        if hidden % heads:
            refuse(
                heads_key,
                heads,
                query,
                f"it does not divide {hidden_key} = {hidden}, and no "
                f"{arch}.attention.key_length gives the head size",
            )
    if heads and kv is not None and (kv == 0 or heads % kv):
        refuse(
            kv_key,
            kv,
            shape_of("blk.0.attn_k.weight", "blk.0.attn_qkv.weight"),
            f"it does not divide {heads_key} = {heads}",
        )

    embed = shape_of("token_embd.weight")
    if embed is not None and len(embed[1]) == 2:
        rows = embed[1][0]
        tokens = token_count
        if tokens is not None and tokens > rows:
            refuse(
                "tokenizer.ggml.tokens",
                tokens,
                embed,
                f"{tokens} tokens, more than the embedding's {rows} rows",
            )
        stated = _int(field(f"{arch}.vocab_size"))
        if stated is not None and stated > rows:
            refuse(
                f"{arch}.vocab_size",
                stated,
                embed,
                f"more tokens than the embedding's {rows} rows",
            )

    experts_key = f"{arch}.expert_count"
    experts = _int(field(experts_key))
    if experts is not None:
        for t in tensors:
            if _EXPERTS.fullmatch(t.name) and t.shape[0] != experts:
                what = "rows" if "gate_inp" in t.name else "stacked experts"
                refuse(
                    experts_key,
                    experts,
                    (t.name, tuple(t.shape)),
                    f"it holds {t.shape[0]} {what}",
                )
        used_key = f"{arch}.expert_used_count"
        used = _int(field(used_key))
        if used is not None and not 1 <= used <= experts:
            refuse(
                used_key,
                used,
                None,
                f"{experts} experts ({experts_key}); experts used per token must be 1 to {experts}",
            )


def config_messages(
    path: Path, arch: str, config_keys: dict[str, str], present: Callable[[str], bool],
    gguf_names: dict[str, str],
) -> dict[str, Callable[..., str]]:  # fmt: skip
    """Message functions for :func:`~nntrtool.sources.consistency.check_config` that name the
    GGUF's keys (``config_keys``: ``{suffix: config key}``, keys the file holds per
    ``present``) and tensors (``gguf_names``: ``{Hugging Face name: GGUF name}``)."""
    back = {name: f"{arch}.{suffix}" for suffix, name in config_keys.items()}

    def label_of(label: str) -> str:
        parts = []
        for part in label.split(" x "):
            key = back.get(part)
            parts.append(f"{key} ({part})" if key is not None and present(key) else part)
        return " x ".join(parts)

    def tensor_of(name: str) -> str:
        gguf = gguf_names.get(name)
        return f"{gguf} ({name})" if gguf is not None and gguf != name else name

    def mismatch(label: str, value: int, tensor: str, shape: Sequence[int]) -> str:
        return gguf_mismatch(path, label_of(label), value, tensor_of(tensor), shape)

    def count_mismatch(label: str, value: int, found: str) -> str:
        return gguf_count_mismatch(path, label_of(label), value, found)

    return {"mismatch": mismatch, "count_mismatch": count_mismatch}
