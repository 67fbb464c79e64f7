"""What an NNTR file holds, as plain data: the object behind ``inspect`` and ``inspect --json``.

:func:`describe` reads only the directory (never tensor data) unless asked to check checksums.
The table, the summary and the JSON output of ``nntrtool inspect`` are all rendered from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nntrtool.format.binary import MAGIC, TensorEntry
from nntrtool.format.reader import NntrFile
from nntrtool.model_config import ModelConfig

#: Bumped when a key of the ``describe``/``inspect --json`` object changes meaning or goes away.
DESCRIBE_SCHEMA = 1


def tensor_record(entry: TensorEntry) -> dict[str, Any]:
    """One tensor as a JSON-ready dict (the ``tensors`` items of ``inspect --json``)."""
    return {
        "name": entry.name,
        "type": entry.display_type,
        "type_id": entry.ttype.type_id,
        "shape": list(entry.shape),
        "offset": entry.offset,
        "nbytes": entry.nbytes,
        "numel": entry.numel,
        "bits_per_weight": round(entry.bits_per_weight, 4),
        "layout": (
            {"rows": entry.layout.rows, "interleave": entry.layout.interleave}
            if entry.layout
            else None
        ),
        "checksum": entry.checksum,
    }


def _source_text(source: Any) -> Any:
    if isinstance(source, dict):
        where = source.get("repo_id") or source.get("path") or source.get("id")
        revision = source.get("revision")
        if where and revision:
            return f"{where}@{revision}"
        return where or None
    return source


def _adapters_text(source: Any) -> list[str]:
    """``name (scale s, sha256 …)`` of every LoRA adapter merged at conversion."""
    records = source.get("adapters") if isinstance(source, dict) else None
    out = []
    for rec in records if isinstance(records, list) else []:
        if isinstance(rec, dict):
            sha = str(rec.get("sha256") or "?")[:12]
            out.append(f"{rec.get('name')} (scale {rec.get('scale', 1.0):g}, sha256 {sha}…)")
    return out


def config_summary(config: dict) -> dict[str, Any]:
    """The few config facts worth a glance: architecture, sizes, and how the file was made."""
    cfg = ModelConfig.of(config)
    meta = cfg.record
    return {
        "architecture": cfg.architecture,
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "layers": cfg.num_layers,
        "vocab_size": cfg.get("vocab_size"),
        "quant_type": meta.get("quant_type"),
        "repack_format": meta.get("repack_format"),
        "tied_embeddings": meta.get("tied", cfg.get("tie_word_embeddings")),
        "source": _source_text(meta.get("source")),
        "adapters": _adapters_text(meta.get("source")),
        "tool_version": meta.get("version"),
        "imatrix": meta.get("imatrix"),
    }


def totals_by_type(tensors: list[TensorEntry]) -> dict[str, dict[str, int]]:
    """Tensors, values and bytes per displayed type, in order of first appearance."""
    out: dict[str, dict[str, int]] = {}
    for t in tensors:
        row = out.setdefault(t.display_type, {"tensors": 0, "params": 0, "nbytes": 0})
        row["tensors"] += 1
        row["params"] += t.numel
        row["nbytes"] += t.nbytes
    return out


def describe(
    f: NntrFile,
    *,
    check: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Everything ``inspect --json`` prints about ``f``; ``check`` also verifies every checksum."""
    tensors = f.tensors
    params = sum(t.numel for t in tensors)
    data_bytes = sum(t.nbytes for t in tensors)
    records = [tensor_record(t) for t in tensors]
    out: dict[str, Any] = {
        "schema": DESCRIBE_SCHEMA,
        "path": str(f.path),
        "magic": MAGIC.decode("ascii"),
        "version": f.version,
        "file_size": f.file_size,
        "data_offset": f.data_start,
        "checksum_algorithm": "crc32",
        "tensor_count": len(tensors),
        "params": params,
        "data_bytes": data_bytes,
        "bits_per_weight": round(8.0 * data_bytes / params, 4) if params else 0.0,
        "f32_bytes": 4 * params,
        "bf16_bytes": 2 * params,
        "by_type": totals_by_type(tensors),
        "summary": config_summary(f.config),
        "config": f.config,
        "tensors": records,
    }
    if check:
        bad = []
        for t, rec in zip(tensors, records, strict=True):
            ok = f.check(t.name, progress)
            rec["checksum_ok"] = ok
            if not ok:
                bad.append(t.name)
        out["bad_tensors"] = bad
    return out
