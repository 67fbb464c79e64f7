"""A GGUF file opened as a model source: Hugging Face names, layout and config recovered.

The stored tensors are what converting the Hugging Face checkpoint the GGUF was made from gives:
names mapped back (:mod:`nntrtool.names`), llama's Q/K rows un-permuted and fused MoE experts split
per expert, both as declared rules (:mod:`.transforms`) so quantized blocks move whole and stay
bit-exact, tensors sorted by name (the order a single-file safetensors checkpoint holds them
in), and ``config.json`` rebuilt from the metadata (:mod:`.gguf_config`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import SourceError
from nntrtool.names import check_architecture, hf_name
from nntrtool.sources.base import ModelSource, SourceTensor
from nntrtool.sources.gguf_config import ARCHITECTURES, build_config
from nntrtool.sources.gguf_file import GGUFFile
from nntrtool.sources.transforms import (
    DerivedTensor,
    Rule,
    TensorLookup,
    apply_rules,
    expert_matrix,
    llama_qk_order,
    permuted_rows,
    rules_for,
)

_QK_NOTE = "rows un-permuted (llama.cpp Q/K order)"


def open_gguf(path: Path, origin: dict[str, Any]) -> ModelSource:
    """Open a ``.gguf`` file as a :class:`ModelSource` with Hugging Face names and config."""
    gf = GGUFFile(path)
    try:
        return _assemble(gf, origin)
    except BaseException:
        gf.close()
        raise


def _assemble(gf: GGUFFile, origin: dict[str, Any]) -> ModelSource:
    arch = gf.field("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise SourceError(
            f"{gf.path}: the GGUF names no architecture (general.architecture); it cannot be "
            "converted"
        )
    check_architecture(arch)
    # The name table covers the blocks the file holds (a corrupt block_count cannot blow it up).
    n_blocks = _count_blocks(gf)
    notes: list[str] = []
    names: dict[str, str] = {}
    unknown: list[str] = []
    for t in gf.tensors:
        mapped = hf_name(t.name, arch, n_blocks)
        if not mapped.known:
            unknown.append(t.name)
        if mapped.hf in names:
            raise SourceError(
                f"{gf.path}: tensors {names[mapped.hf]!r} and {t.name!r} both map to "
                f"{mapped.hf!r}; the GGUF cannot be converted"
            )
        names[mapped.hf] = t.name
        t.name = mapped.hf
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        notes.append(
            f"no Hugging Face name for GGUF tensor {unknown[0]!r}{more} ({arch}): kept its GGUF name"
        )
    tensors = sorted(apply_rules(gf.tensors, _rules(gf, arch)), key=lambda t: t.name)
    embed = next((t for t in tensors if t.name == "model.embed_tokens.weight"), None)
    config = build_config(
        arch,
        gf.field,
        vocab_rows=embed.shape[0] if embed is not None and embed.ndim == 2 else None,
        has_output="output.weight" in names.values(),
        token_count=gf.count("tokenizer.ggml.tokens"),  # the vocabulary stays unread
    )
    # The Hugging Face architecture's own rules too (a MoE router prefers F32), as for folders.
    tensors = apply_rules(tensors, rules_for(config))
    if arch not in ARCHITECTURES:
        notes.append(
            f"GGUF architecture {arch!r}: config rebuilt from the generic keys only (full "
            f"support for {', '.join(ARCHITECTURES)})"
        )
    origin = {
        **origin,
        "kind": "gguf",
        "gguf_version": gf.version,
        "gguf_architecture": arch,
    }
    name = gf.field("general.name")
    if isinstance(name, str):
        origin["gguf_name"] = name
    source = ModelSource(config, origin, None, tensors, [gf.path], closers=[gf], notes=notes)
    source.gguf = gf
    return source


def _int_field(gf: GGUFFile, key: str, default: int | None = None) -> int:
    value = gf.field(key)
    if value is None:
        if default is None:
            raise SourceError(f"{gf.path}: the GGUF lacks the metadata {key!r}")
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SourceError(f"{gf.path}: metadata {key!r} is {value!r}, not a count")
    return value


_BLOCK = re.compile(r"blk\.(\d+)\.")


def _count_blocks(gf: GGUFFile) -> int:
    found = [int(m.group(1)) for t in gf.tensors if (m := _BLOCK.match(t.name))]
    return max(found) + 1 if found else 0


def _rules(gf: GGUFFile, arch: str) -> list[Rule]:
    rules: list[Rule] = []
    spec = ARCHITECTURES.get(arch)
    if spec is not None and spec.permuted_qk:
        n_head = _int_field(gf, f"{arch}.attention.head_count")
        n_head_kv = _int_field(gf, f"{arch}.attention.head_count_kv", default=n_head)
        for proj, heads in (("q", n_head), ("k", n_head_kv)):
            rules.append(
                Rule(
                    rf"model\.layers\.\d+\.self_attn\.{proj}_proj\.(?:weight|bias)",
                    _unpermute(heads),
                )
            )
    rules.append(
        Rule(
            r"(model\.layers\.\d+\.mlp\.experts)\.((?:gate|up|down)_proj)\.weight",
            _split_experts,
            "fused experts stored one matrix per expert",
        )
    )
    return rules


def _unpermute(n_head: int):
    def expand(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
        order = llama_qk_order(t.shape[0], n_head)
        if t.ndim == 2:
            return [permuted_rows(t, t.name, order, _QK_NOTE)]
        if t.ndim == 1 and not t.blocked:  # a bias: its one row's values are reordered

            def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
                return np.ascontiguousarray(inputs[0].read(start, stop)[:, order])

            return [DerivedTensor(t.name, t.dtype, t.shape, [t], read, _QK_NOTE)]
        raise SourceError(f"tensor {t.name!r} {list(t.shape)} is not an attention weight or bias")

    return expand


def _split_experts(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    if t.ndim != 3:
        return [t]
    prefix, proj = m.group(1), m.group(2)
    return [
        expert_matrix(t, f"{prefix}.{e}.{proj}.weight", e, note=f"expert {e} of {t.name}")
        for e in range(t.shape[0])
    ]
