"""A GGUF file opened as a model source: Hugging Face names, layout and config recovered.

The stored tensors are what converting the Hugging Face checkpoint the GGUF was made from gives:
names mapped back (:mod:`nntrtool.names`) and every value transform llama.cpp's converter made
undone (llama's Q/K rows, Gemma's norm offset, stacked experts ...), as the rules the GGUF's model
family declares (:mod:`nntrtool.architectures`), tensors sorted by name (the order a single-file
safetensors checkpoint holds them in), and ``config.json`` rebuilt from the metadata
(:mod:`.gguf_config`).

A GGUF of a family nntrtool has no module for, or holding a tensor its family does not name, is
refused: its values might need a transform nobody declared. ``raw_names`` converts it anyway,
with the GGUF's own names and values, and says so in the file's metadata and the summary.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nntrtool.architectures import for_gguf, rules_for, supported_gguf
from nntrtool.architectures.base import Family, GGUFMeta
from nntrtool.errors import SourceError
from nntrtool.names import check_architecture, hf_name
from nntrtool.sources.base import ModelSource
from nntrtool.sources.consistency import check_config
from nntrtool.sources.gguf_checks import check_gguf, config_messages
from nntrtool.sources.gguf_config import ROPE_FACTORS, build_config
from nntrtool.sources.gguf_file import GGUFFile
from nntrtool.tensors.transforms import apply_rules

RAW_NAMES_OPTION = "--gguf-raw-names"


def open_gguf(path: Path, origin: dict[str, Any], *, raw_names: bool = False) -> ModelSource:
    """Open a ``.gguf`` file as a :class:`ModelSource` with Hugging Face names and config
    (``raw_names``: the GGUF's own names and values, for families nntrtool does not know)."""
    gf = GGUFFile(path)
    try:
        return _assemble(gf, origin, raw_names)
    except BaseException:
        gf.close()
        raise


def _family(gf: GGUFFile, arch: str) -> Family:
    family = for_gguf(arch)
    if family is None or not family.reads_gguf:
        raise SourceError(
            f"{gf.path.name}: GGUF architecture {arch!r} is not a supported family "
            f"(supported: {', '.join(supported_gguf())}); convert the original Hugging Face "
            f"model, or pass {RAW_NAMES_OPTION} to keep the GGUF's own names and values"
        )
    return family


def _assemble(gf: GGUFFile, origin: dict[str, Any], raw_names: bool = False) -> ModelSource:
    arch = gf.field("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise SourceError(
            f"{gf.path}: the GGUF names no architecture (general.architecture); it cannot be "
            "converted"
        )
    # Metadata that contradicts the tensors is refused before any rule reads it.
    check_gguf(gf.path, arch, gf.field, gf.tensors, gf.count("tokenizer.ggml.tokens"))
    if raw_names:
        return _assemble_raw(gf, origin, arch)
    family = _family(gf, arch)
    check_architecture(arch)
    # The name table covers the blocks the file holds (a corrupt block_count cannot blow it up).
    n_blocks = _count_blocks(gf)
    notes: list[str] = []
    names: dict[str, str] = {}
    unknown: list[str] = []
    # Tensors llama.cpp made from the config (RoPE factors) go back into it.
    rope_factors = _rope_factors(gf)
    weights = [t for t in gf.tensors if t.name not in ROPE_FACTORS]
    for t in weights:
        mapped = hf_name(t.name, arch, n_blocks, family.spellings)
        if not mapped.known:
            unknown.append(t.name)
            continue
        if mapped.hf in names:
            raise SourceError(
                f"{gf.path}: tensors {names[mapped.hf]!r} and {t.name!r} both map to "
                f"{mapped.hf!r}; the GGUF cannot be converted"
            )
        names[mapped.hf] = t.name
        t.name = mapped.hf
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise SourceError(
            f"{gf.path.name}: GGUF tensor {unknown[0]!r}{more} has no {family.name} rule "
            f"naming it, so its values may need a transform nntrtool does not know (supported "
            f"families: {', '.join(supported_gguf())}); pass {RAW_NAMES_OPTION} to keep the "
            "GGUF's own names and values"
        )
    meta = GGUFMeta(arch, gf.field, str(gf.path))
    tensors = sorted(apply_rules(weights, family.gguf_rules(meta)), key=lambda t: t.name)
    config = _config(gf, arch, tensors, "model.embed_tokens.weight", "lm_head.weight", rope_factors)
    # The Hugging Face architecture's own rules too (a MoE router prefers F32), as for folders.
    tensors = apply_rules(tensors, rules_for(config))
    # The metadata must describe the tensors it came with (sizes, layers, experts), as a
    # config.json must: a contradiction is refused before anything is written.
    check_config(
        config,
        tensors,
        **config_messages(gf.path, arch, family.config_keys, lambda key: key in gf.fields, names),
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


def _rope_factors(gf: GGUFFile) -> dict[str, list[float]]:
    """The RoPE factor tensors' values by config key (a few dozen numbers each)."""
    out = {}
    for t in gf.tensors:
        if t.name in ROPE_FACTORS:
            if len(t.shape) != 1 or t.shape[0] > 1 << 16:
                raise SourceError(
                    f"{gf.path.name}: tensor {t.name} has shape {list(t.shape)}, not a short "
                    "vector of RoPE factors; download or convert the GGUF again"
                )
            out[ROPE_FACTORS[t.name]] = [float(v) for v in t.read_f32().reshape(-1)]
    return out


_BLOCK = re.compile(r"blk\.(\d+)\.")


def _count_blocks(gf: GGUFFile) -> int:
    found = [int(m.group(1)) for t in gf.tensors if (m := _BLOCK.match(t.name))]
    return max(found) + 1 if found else 0


def _config(
    gf: GGUFFile, arch: str, tensors: list, embed_name: str, head_name: str, rope_factors=None
) -> dict[str, Any]:
    """The config rebuilt from the metadata, sized by the tensors named ``embed_name`` (its
    rows) and ``head_name`` (whether there is an output head)."""
    embed = next((t for t in tensors if t.name == embed_name), None)
    return build_config(
        arch,
        gf.field,
        vocab_rows=embed.shape[0] if embed is not None and embed.ndim == 2 else None,
        has_output=any(t.name == head_name for t in tensors),
        token_count=gf.count("tokenizer.ggml.tokens"),  # the vocabulary stays unread
        rope_factors=rope_factors,
    )


def _assemble_raw(gf: GGUFFile, origin: dict[str, Any], arch: str) -> ModelSource:
    """The GGUF's tensors as they are: GGUF names, GGUF values, a config of the generic keys."""
    tensors = sorted(gf.tensors, key=lambda t: t.name)
    config = _config(gf, arch, tensors, "token_embd.weight", "output.weight")
    notes = [
        f"{RAW_NAMES_OPTION}: tensors keep the GGUF's own names and values ({arch}); no "
        "family transform was applied, so they are not a Hugging Face checkpoint's"
    ]
    origin = {
        **origin,
        "kind": "gguf",
        "gguf_version": gf.version,
        "gguf_architecture": arch,
        "gguf_raw_names": True,
    }
    source = ModelSource(config, origin, None, tensors, [gf.path], closers=[gf], notes=notes)
    source.gguf = gf
    return source
