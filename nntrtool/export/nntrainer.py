"""Export of an NNTR file to the model folder nntrainer's CausalLM application loads.

The folder holds a raw weight file (tensor bytes back to back, in the order of the layout table
in :mod:`nntrtool.export.layouts`), ``config.json``, ``generation_config.json``,
``nntr_config.json`` and the tokenizer files of the source. Everything is checked first
(:func:`plan_export`), then written into a temporary folder beside the target that is renamed
into place at the end (:func:`write_export`), so a failed or interrupted export leaves nothing.

Planning lives here; the files around the weights come from :mod:`.runtime_config` and the
writing from :mod:`.folder_writer`.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from nntrtool.errors import UsageError
from nntrtool.export.export_plan import ExportPlan, ExportResult, TensorExport
from nntrtool.export.folder_writer import (
    DEFAULT_CHUNK_BYTES,
    ISA_LAYOUTS,
    check_output,
    write_export,
)
from nntrtool.export.layouts import ArchitectureLayout, Role, Slot, layout_for_config
from nntrtool.export.runtime_config import (
    TOKENIZER_FILES,
    RuntimeOptions,
    fit_positions,
    generation_config,
    gguf_source,
    runtime_config,
    sample_input,
    source_from_metadata,
)
from nntrtool.model_config import ModelConfig
from nntrtool.progress import ProgressFactory
from nntrtool.qtypes import F32, Q4_0, Q6_K, get_layout

TARGETS: tuple[str, ...] = ("nntrainer",)

#: What to tell a user whose file cannot be exported.
CONVERT_HINT = (
    "re-convert with --quant-type q4_0 --type 'embed_tokens=q6_k' (Q4_0 layers, Q6_K "
    "embedding), or add --keep-f32 'embed_tokens' for an F32 embedding, or --quant-type f32 "
    "for an all-F32 model"
)

_RUNTIME_DTYPE = {F32.name: "FP32", Q4_0.name: "Q4_0", Q6_K.name: "Q6_K"}


# --------------------------------------------------------------------------------------------
# planning


def _entries(nf: Any) -> dict[str, Any]:
    tensors = nf.tensors
    if isinstance(tensors, dict):
        return dict(tensors)
    return {t.name: t for t in tensors}


def _is_tied(config: dict[str, Any], names: set[str]) -> bool:
    tied = ModelConfig.of(config).tied
    return tied if tied is not None else "lm_head.weight" not in names


#: What to add for MoE experts, which a converted MXFP4 checkpoint stores as Q8_0 by default.
EXPERTS_HINT = "for experts add --type 'mlp\\.experts\\.=q4_0' (or =f32)"
ROUTER_HINT = "re-convert without a --type or --quant-type override for the router (it stays f32)"


def _hinted_error(slot: Slot, found: str, wanted: str, moe: bool = False) -> UsageError:
    if slot.role is Role.ROUTER:
        hint = ROUTER_HINT
    elif moe:
        hint = f"{CONVERT_HINT}; {EXPERTS_HINT}"
    else:
        hint = CONVERT_HINT
    return UsageError(f"{slot.name} is {found}, but nntrainer reads {wanted} there; {hint}")


def _check_types(slots: list[tuple[Slot, Any]]) -> None:
    """Refuse any combination of types the runtime cannot load (its types are global)."""
    linear_types: dict[str, list[str]] = {}
    moe = any(slot.role is Role.ROUTER for slot, _ in slots)

    def _role_error(slot: Slot, found: str, wanted: str) -> UsageError:
        return _hinted_error(slot, found, wanted, moe)

    for slot, entry in slots:
        base = entry.ttype.plain
        if slot.role is Role.NORM and base is not F32:
            raise _role_error(slot, base.name, "f32 (norms are never quantized)")
        if slot.role is Role.VECTOR and base is not F32:
            raise _role_error(slot, base.name, "f32 (biases and sinks are never quantized)")
        if slot.role is Role.ROUTER and base is not F32:
            raise _role_error(slot, base.name, "an f32 router (routing is computed in FP32)")
        if slot.role is Role.EMBEDDING and base not in (F32, Q6_K):
            raise _role_error(slot, base.name, "an f32 or q6_k embedding")
        if slot.role is Role.LM_HEAD and base not in (F32, Q4_0):
            raise _role_error(slot, base.name, "an f32 or q4_0 output head")
        if slot.role is Role.LINEAR:
            if base not in (F32, Q4_0):
                raise _role_error(slot, base.name, "f32 or q4_0 linear layers")
            linear_types.setdefault(base.name, []).append(slot.name)
    if len(linear_types) > 1:
        minority = min(linear_types, key=lambda k: len(linear_types[k]))
        majority = max(linear_types, key=lambda k: len(linear_types[k]))
        example = linear_types[minority][0]
        raise UsageError(
            f"linear layers mix {majority} and {minority} ({len(linear_types[minority])} "
            f"tensor(s), e.g. {example}, likely a fallback); nntrainer uses one type for all "
            f"linear layers: re-convert so that they share one, e.g. --type 'proj={majority}' "
            f"if the shapes allow it, or --keep-f32 'proj' for f32 layers"
        )


def _plan_tensor(slot: Slot, entry: Any, isa: str) -> TensorExport:
    shape = tuple(int(s) for s in slot.shape)
    base = entry.ttype.plain
    source_layout = entry.layout if entry.ttype.plain_name else None
    if slot.role in (Role.LINEAR, Role.LM_HEAD, Role.ROUTER) and base is F32:
        out_shape = (shape[1], shape[0])
        return TensorExport(
            slot, entry.ttype, None, F32.name, out_shape, F32.nbytes(out_shape), True
        )
    if base is Q4_0:
        layout = get_layout(ISA_LAYOUTS[isa])
        rows, cols = shape
        if rows % layout.rows:
            raise UsageError(
                f"{slot.name}: {rows} output features do not divide by {layout.rows}, which "
                f"nntrainer's {isa} Q4_0 kernels need; "
                + ("try --isa arm (groups of 4), or " if isa == "x86" and rows % 4 == 0 else "")
                + f"keep it in f32 (--keep-f32 '{slot.short}' if all linear layers agree)"
            )
        if cols % Q4_0.block_size:
            raise UsageError(
                f"{slot.name}: {cols} input features do not divide by {Q4_0.block_size}"
            )
        return TensorExport(
            slot, entry.ttype, source_layout, layout.name, shape, Q4_0.nbytes(shape), False
        )
    return TensorExport(slot, entry.ttype, None, base.name, shape, base.nbytes(shape), False)


def _dtype(name: str) -> str:
    return _RUNTIME_DTYPE[name]


def nntrainer_type_overrides(quant_type: str, config: dict[str, Any]) -> tuple[str, ...]:
    """``convert --type`` overrides that make a conversion exportable to nntrainer.

    Q4_0 layers need an F32 or Q6_K embedding (Q6_K when its rows fit 256-value blocks).
    Raises ``UsageError`` for quant types whose linear layers the runtime cannot run.
    """
    qt = quant_type.lower()
    if qt == F32.name:
        return _expert_override(qt, config)
    if qt != Q4_0.name:
        raise UsageError(
            f"nntrainer runs f32 or q4_0 linear layers, not {qt}; use --quant-type q4_0 "
            "(or f32) with --target nntrainer"
        )
    hidden = config.get("hidden_size")
    emb = Q6_K.name if isinstance(hidden, int) and Q6_K.fits(hidden) else F32.name
    return (f"embed_tokens={emb}",) + _expert_override(qt, config)


def _expert_override(quant_type: str, config: dict[str, Any]) -> tuple[str, ...]:
    """Experts in the linear layers' type, whatever a source's own preference (MXFP4: q8_0)."""
    if not (config.get("num_experts") or config.get("num_local_experts")):
        return ()
    return (f"mlp\\.experts\\.={quant_type}",)


def plan_export(
    nf: Any,
    out_dir: str | os.PathLike[str],
    *,
    isa: str = "x86",
    runtime: RuntimeOptions | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
) -> ExportPlan:
    """Check that ``nf`` (an open NNTR file) can run in nntrainer and decide every byte.

    Raises a one-line :class:`NntrError` for anything the runtime could not load.
    """
    runtime = runtime or RuntimeOptions()
    runtime.validate()
    isa = isa.lower()
    if isa not in ISA_LAYOUTS:
        raise UsageError(f"unknown --isa {isa!r}; choose one of {', '.join(ISA_LAYOUTS)}")
    config: dict[str, Any] = dict(nf.config)
    layout: ArchitectureLayout = layout_for_config(config)
    layout.check_config(config)  # refusals first: they explain missing tensors best
    entries = _entries(nf)
    tied = _is_tied(config, set(entries))
    slots = layout.slots(config, tied)

    wanted = {s.name for s in slots}
    missing = [s.name for s in slots if s.name not in entries]
    extra = sorted(n for n in entries if n not in wanted)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UsageError(
            f"{layout.architecture} needs tensor {missing[0]}{more}, which the file lacks"
            + ("; the model is untied but has no lm_head" if missing[0] == "lm_head.weight" else "")
        )
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise UsageError(
            f"the file has tensor {extra[0]}{more} that nntrainer's {layout.architecture} "
            "does not load (biases, tied heads stored twice, or another architecture)"
        )
    pairs = [(s, entries[s.name]) for s in slots]
    for slot, entry in pairs:
        shape = tuple(int(x) for x in entry.shape)
        if shape != slot.shape:
            raise UsageError(
                f"{slot.name} has shape {list(shape)}, but the config implies "
                f"{list(slot.shape)}; the runtime builds its layers from config.json"
            )
    _check_types(pairs)
    tensors = [_plan_tensor(slot, entry, isa) for slot, entry in pairs]

    def role_type(role: Role) -> str | None:
        for t in tensors:
            if t.slot.role is role:
                return Q4_0.name if t.out_type in ISA_LAYOUTS.values() else t.out_type
        return None

    fc = role_type(Role.LINEAR) or F32.name
    emb = role_type(Role.EMBEDDING) or F32.name
    head = None if tied else (role_type(Role.LM_HEAD) or F32.name)

    warnings: list[str] = []
    runtime_cfg = runtime_config(config, layout, tied, warnings)
    num_to_generate, init_seq_len, max_seq_len = fit_positions(
        runtime, runtime_cfg, layout, warnings
    )

    source_path = Path(source_dir).expanduser() if source_dir is not None else None
    if source_path is not None and not source_path.is_dir():
        raise UsageError(f"--tokenizer {source_path} is not a folder")
    if source_path is None:
        source_path = source_from_metadata(config)
    tokenizer_sources = (
        [source_path / n for n in TOKENIZER_FILES if (source_path / n).is_file()]
        if source_path is not None
        else []
    )
    gguf = gguf_source(config) if source_dir is None else None
    if gguf is not None and not any(p.name == "tokenizer.json" for p in tokenizer_sources):
        from nntrtool.export.gguf_tokenizer import gguf_tokenizer_files

        made, problem = gguf_tokenizer_files(gguf)
        tokenizer_sources = made or tokenizer_sources
        if problem is not None:
            warnings.append(problem)
    elif not any(p.name == "tokenizer.json" for p in tokenizer_sources):
        warnings.append(
            "no tokenizer.json found in the source; the runtime needs one: copy it into the "
            "folder or pass --tokenizer DIR"
        )

    gen = generation_config(config, source_path, runtime, warnings)

    out_abs = Path(os.path.abspath(os.fspath(out_dir)))
    stem = Path(os.fspath(source)).stem if source is not None else "model"
    file_name = runtime.model_file_name or f"{stem}-{fc}-{isa}.bin"
    nntr_cfg: dict[str, Any] = {
        "model_tensor_type": f"{_dtype(fc)}-FP32",
        "model_file_name": file_name,
        "fc_layer_dtype": _dtype(fc),
        "embedding_dtype": _dtype(emb),
    }
    if head is not None:
        nntr_cfg["lmhead_dtype"] = _dtype(head)
    nntr_cfg.update(
        {
            "bad_word_ids": [int(i) for i in runtime.bad_word_ids],
            "fsu": False,
            "num_to_generate": num_to_generate,
            "init_seq_len": init_seq_len,
            "max_seq_len": max_seq_len,
            "batch_size": int(runtime.batch_size),
            "tokenizer_file": runtime.tokenizer_file or str(out_abs / "tokenizer.json"),
            "sample_input": runtime.sample_input
            if runtime.sample_input is not None
            else sample_input(tokenizer_sources),
        }
    )
    return ExportPlan(
        source=Path(os.fspath(source)) if source is not None else None,
        architecture=layout.architecture,
        isa=isa,
        tied=tied,
        tensors=tensors,
        fc_dtype=_dtype(fc),
        embedding_dtype=_dtype(emb),
        lmhead_dtype=_dtype(head) if head is not None else None,
        config=runtime_cfg,
        generation_config=gen,
        nntr_config=nntr_cfg,
        tokenizer_sources=tokenizer_sources,
        warnings=warnings,
    )


def check_target(target: str) -> None:
    """Raise ``UsageError`` unless ``target`` is a runtime export knows."""
    if target.lower() not in TARGETS:
        raise UsageError(f"unknown --target {target!r}; choose one of {', '.join(TARGETS)}")


def _open_nntr(path: Path) -> Any:
    from nntrtool.format import NntrFile

    return NntrFile(path)  # refuses missing paths, folders and bad files with one line


def export_nntr(
    nntr_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    target: str = "nntrainer",
    isa: str = "x86",
    *,
    force: bool = False,
    progress: ProgressFactory | None = None,
    runtime: RuntimeOptions | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> ExportResult:
    """Export an NNTR file to a folder nntrainer's CausalLM application runs as is.

    ``source_dir`` is where the tokenizer and generation config come from (default: the
    source recorded in the file, when it is still there). ``progress`` is a factory
    ``(total params, description) -> context manager yielding a progress object``, opened
    around the writing only. Raises :class:`NntrError`.
    """
    check_target(target)
    start = time.perf_counter()
    path = Path(os.fspath(nntr_path))
    out = Path(os.path.abspath(os.fspath(out_dir)))
    if not dry_run:
        check_output(out, force, (path,) + ((Path(source_dir),) if source_dir else ()))
    nf = _open_nntr(path)
    try:
        plan = plan_export(nf, out, isa=isa, runtime=runtime, source_dir=source_dir, source=path)
        if dry_run:
            return ExportResult(out, plan, [], time.perf_counter() - start, dry_run=True)
        bar = progress(plan.params, f"export {path.name}") if progress else contextlib.nullcontext()
        with bar as prog:
            files = write_export(plan, nf, out, force=force, progress=prog, chunk_bytes=chunk_bytes)
    finally:
        close = getattr(nf, "close", None)
        if callable(close):
            close()
    return ExportResult(out, plan, files, time.perf_counter() - start)


__all__ = [
    "CONVERT_HINT",
    "ISA_LAYOUTS",
    "TOKENIZER_FILES",
    "ExportPlan",
    "ExportResult",
    "ProgressFactory",
    "RuntimeOptions",
    "TensorExport",
    "check_output",
    "check_target",
    "export_nntr",
    "nntrainer_type_overrides",
    "plan_export",
    "write_export",
]
