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
import math
import os
import time
from pathlib import Path
from typing import Any

from nntrtool.architectures.nntrainer_layout import ArchitectureLayout, Role, Slot
from nntrtool.errors import UsageError
from nntrtool.export.export_plan import ExportPlan, ExportResult, TensorExport
from nntrtool.export.folder_writer import (
    DEFAULT_CHUNK_BYTES,
    ISA_LAYOUTS,
    Q4_K_OUT,
    check_output,
    write_export,
)
from nntrtool.export.layouts import layout_for_config
from nntrtool.export.runtime_config import (
    RUNTIME_DTYPES,
    TOKENIZER_FILES,
    RuntimeOptions,
    fit_positions,
    generation_config,
    nntr_config,
    runtime_config,
    runtime_dtype,
    tokenizer_sources_for,
)
from nntrtool.model_config import ModelConfig
from nntrtool.progress import ProgressFactory
from nntrtool.qtypes import F32, Q4_0, Q4_0_REPACKED, Q6_K, TensorType, get_layout

TARGETS: tuple[str, ...] = ("nntrainer",)

#: What to tell a user whose file cannot be exported.
CONVERT_HINT = (
    "re-convert with --quant-type q4_0 --type 'embed_tokens=q6_k' (Q4_0 layers, Q6_K "
    "embedding), or add --keep-f32 'embed_tokens' for an F32 embedding, or --quant-type f32 "
    "for an all-F32 model"
)


#: The types nntrainer runs its linear layers in (``--linear-type``), by nntrtool name.
LINEAR_TYPES: tuple[str, ...] = ("q4_0", "q4_k", "f16", "f32")
#: How Q4_K linear layers are written: a 2-byte qscheme, then 8-row interleaved blocks.
Q4_K_X8 = Q4_K_OUT
#: Q4_K's block size and bytes per block (the runtime's block_q4_K).
_Q4_K_BLOCK = (256, 144)
#: What a folder with FP16 linear layers needs of the runtime.
FP16_BUILD_NOTE = (
    "FP16 linear layers run only in an nntrainer built with -Denable-fp16=true (a stock build "
    "refuses the folder: 'enable-fp16 is not enabled'; on x86 its CausalLM app needs two source "
    "fixes to build and run, see nntrtool's docs/RUNTIME_CHECK.md); the embedding stays {emb}, "
    "as the runtime's FP16 embedding does not work"
)


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


def _base(entry: Any) -> TensorType:
    return Q4_0 if entry.ttype is Q4_0_REPACKED else entry.ttype


def _check_types(slots: list[tuple[Slot, Any]], linear_type: str | None = None) -> str:
    """Refuse any combination of types the runtime cannot load (its types are global); return
    the type of the linear layers.

    With ``linear_type`` every linear layer (and an untied head) is written in that type,
    re-encoded from its values where it is stored in another. Without it, the stored types
    decide: Q4_K layers make a Q4_K folder (layers stored otherwise, such as the Q6_K layers of
    a Q4_K_M file, are requantized); else all linear layers must share f32, q4_0 or f16.
    """
    linear_types: dict[str, list[str]] = {}
    moe = any(slot.role is Role.ROUTER for slot, _ in slots)

    def _role_error(slot: Slot, found: str, wanted: str) -> UsageError:
        return _hinted_error(slot, found, wanted, moe)

    for slot, entry in slots:
        base = _base(entry)
        if slot.role is Role.NORM and base is not F32:
            raise _role_error(slot, base.name, "f32 (norms are never quantized)")
        if slot.role is Role.VECTOR and base is not F32:
            raise _role_error(slot, base.name, "f32 (biases and sinks are never quantized)")
        if slot.role is Role.ROUTER and base is not F32:
            raise _role_error(slot, base.name, "an f32 router (routing is computed in FP32)")
        if slot.role is Role.LINEAR:
            linear_types.setdefault(base.name, []).append(slot.name)
    decided = linear_type or ("q4_k" if "q4_k" in linear_types else None)
    for slot, entry in slots:
        # with the linear type decided, an embedding the runtime cannot read is widened to f32
        if slot.role is Role.EMBEDDING and _base(entry) not in (F32, Q6_K) and decided is None:
            raise _role_error(slot, _base(entry).name, "an f32 or q6_k embedding")
    if decided is not None:
        return decided
    for slot, entry in slots:
        base = _base(entry)
        if slot.role is Role.LM_HEAD and base.name not in (F32.name, Q4_0.name, "f16"):
            raise _role_error(slot, base.name, "an f32 or q4_0 output head")
        if slot.role is Role.LINEAR and base.name not in (F32.name, Q4_0.name, "f16"):
            raise _role_error(
                slot,
                base.name,
                "f32, q4_0, q4_k or f16 linear layers (--linear-type q4_k, q4_0 or f16 "
                "requantizes them)",
            )
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
    return next(iter(linear_types), F32.name)


def _q4_k_misfit(shape: tuple[int, ...]) -> bool:
    rows, cols = shape
    return cols % _Q4_K_BLOCK[0] != 0 or rows % 8 != 0


def _q4_0_misfit(shape: tuple[int, ...], isa: str) -> bool:
    rows, cols = shape
    return cols % Q4_0.block_size != 0 or rows % get_layout(ISA_LAYOUTS[isa]).rows != 0


def _check_q4_k_fits(slots: list[Slot], isa: str) -> None:
    """One line for a model whose linear layers Q4_K cannot hold, offering what fits."""
    bad = [s for s in slots if _q4_k_misfit(s.shape)]
    if not bad:
        return
    first = bad[0]
    rows, cols = first.shape
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    fits = [t for t in ("q4_0",) if not any(_q4_0_misfit(s.shape, isa) for s in slots)]
    fits += ["f16", "f32"]
    raise UsageError(
        f"{first.name} ({rows}x{cols}){more} does not fit nntrainer's Q4_K, which needs every "
        f"linear layer's input features in multiples of 256 and output features in multiples "
        f"of 8 (one type for all linear layers); --linear-type {' or '.join(fits)} fits this "
        "model"
    )


def _plan_tensor(slot: Slot, entry: Any, isa: str, linear_type: str | None = None) -> TensorExport:
    shape = tuple(int(s) for s in slot.shape)
    base = _base(entry)
    source_layout = entry.layout if entry.ttype.plain_name else None
    if linear_type is not None and slot.role in (Role.LINEAR, Role.LM_HEAD):
        requant = None if base.name == linear_type else base.name
        if linear_type in (F32.name, "f16"):
            out_shape = (shape[1], shape[0])
            size = 4 if linear_type == F32.name else 2
            return TensorExport(
                slot,
                entry.ttype,
                source_layout,
                linear_type,
                out_shape,
                math.prod(out_shape) * size,
                True,
                requant,
            )
        if linear_type == "q4_k":
            rows, cols = shape
            nbytes = 2 + rows * cols // _Q4_K_BLOCK[0] * _Q4_K_BLOCK[1]
            return TensorExport(
                slot, entry.ttype, source_layout, Q4_K_X8, shape, nbytes, False, requant, 2
            )
        if requant is not None:  # q4_0 from another type
            _check_q4_0_fits(slot, shape, isa)
            layout = get_layout(ISA_LAYOUTS[isa])
            return TensorExport(
                slot,
                entry.ttype,
                source_layout,
                layout.name,
                shape,
                Q4_0.nbytes(shape),
                False,
                requant,
            )
    if slot.role is Role.EMBEDDING and base not in (F32, Q6_K):  # widened, lossless
        return TensorExport(
            slot, entry.ttype, source_layout, F32.name, shape, F32.nbytes(shape), False, base.name
        )
    if slot.role in (Role.LINEAR, Role.LM_HEAD, Role.ROUTER) and base is F32:
        out_shape = (shape[1], shape[0])
        return TensorExport(
            slot, entry.ttype, None, F32.name, out_shape, F32.nbytes(out_shape), True
        )
    if base is Q4_0:
        _check_q4_0_fits(slot, shape, isa)
        layout = get_layout(ISA_LAYOUTS[isa])
        return TensorExport(
            slot, entry.ttype, source_layout, layout.name, shape, Q4_0.nbytes(shape), False
        )
    return TensorExport(slot, entry.ttype, None, base.name, shape, base.nbytes(shape), False)


def _check_q4_0_fits(slot: Slot, shape: tuple[int, ...], isa: str) -> None:
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
            f"{slot.name}: {cols} input features do not divide by {Q4_0.block_size}, which "
            "Q4_0 needs; export with --linear-type f16 or f32"
        )


def _notes(tensors: list[TensorExport], fc: str, emb: str) -> list[str]:
    """The lossy steps of the export, by source type, and the runtime build a folder needs."""
    notes = []
    by_source: dict[tuple[str, str], list[str]] = {}
    for t in tensors:
        if t.requant_from is not None:
            out = "q4_k" if t.out_type == Q4_K_X8 else t.out_type
            out = Q4_0.name if out in ISA_LAYOUTS.values() else out
            by_source.setdefault((t.requant_from, out), []).append(t.slot.name)
    for (src, out), names in by_source.items():
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        if out == F32.name:  # dequantizing is exact
            step = f"dequantized to f32 from {src} (lossless)"
        else:
            step = f"requantized to {out} from {src} (lossy)"
        notes.append(f"{step}: {len(names)} tensor(s), {names[0]}{more}")
    if fc == "f16":
        notes.append(FP16_BUILD_NOTE.format(emb=RUNTIME_DTYPES.get(emb, emb)))
    return notes


#: The trade-off of Q4_0 against Q4_K, measured in nntrainer (docs/NNTRAINER.md).
Q4_K_OFFER = (
    "every linear layer also fits Q4_K (--linear-type q4_k, or convert --quant-type q4_k): the "
    "same 4.5 bits per weight with about half Q4_0's error, and nntrainer's x86 Q4_K layers "
    "generated 1.13x (1 thread) and 1.15x (2 threads) Q4_0's tokens/s; convert --target "
    "nntrainer makes such x86 folders Q4_K by default"
)


def _q4_k_offer(tensors: list[TensorExport], fc: str) -> list[str]:
    """The Q4_K alternative for a Q4_0 folder whose linear layers would all fit it."""
    linear = [t for t in tensors if t.slot.role in (Role.LINEAR, Role.LM_HEAD)]
    if fc != Q4_0.name or not linear or any(_q4_k_misfit(t.slot.shape) for t in linear):
        return []
    return [Q4_K_OFFER]


def nntrainer_type_overrides(quant_type: str, config: dict[str, Any]) -> tuple[str, ...]:
    """``convert --type`` overrides that make a conversion exportable to nntrainer.

    Quantized layers (and F16 ones, whose embedding the runtime cannot read) need an F32 or
    Q6_K embedding (Q6_K when its rows fit 256-value blocks). Raises ``UsageError`` for quant
    types whose linear layers the runtime cannot run.
    """
    qt = quant_type.lower()
    if qt == F32.name:
        return _expert_override(qt, config)
    if qt not in LINEAR_TYPES:
        raise UsageError(
            f"nntrainer runs {', '.join(LINEAR_TYPES)} linear layers, not {qt}; use "
            "--quant-type q4_0 or q4_k (or f16, f32) with --target nntrainer"
        )
    hidden = config.get("hidden_size")
    emb = Q6_K.name if isinstance(hidden, int) and Q6_K.fits(hidden) else F32.name
    return (f"embed_tokens={emb}",) + _expert_override(conversion_for(qt)[0], config)


def default_linear_type(config: dict[str, Any], isa: str) -> str:
    """The linear type ``convert --target nntrainer`` picks for a source without one of its own
    (``--quant-type auto``, not a GGUF): Q4_K where every linear layer and an untied head fit it,
    else Q4_0.

    Q4_K costs Q4_0's 4.5 bits per weight with about half its error, and nntrainer's x86 Q4_K
    layers generated tokens faster than its Q4_0 ones (docs/NNTRAINER.md). ARM and
    mixture-of-experts folders stay Q4_0: their Q4_K layers have not been run in the runtime.
    """
    if isa.lower() != "x86" or config.get("num_experts") or config.get("num_local_experts"):
        return Q4_0.name
    try:
        layout = layout_for_config(config)
        slots = layout.slots(config, bool(ModelConfig.of(config).tied))
    except UsageError:  # the export names what is wrong with the model
        return Q4_0.name
    linear = [s for s in slots if s.role in (Role.LINEAR, Role.LM_HEAD)]
    if not linear or any(_q4_k_misfit(s.shape) for s in linear):
        return Q4_0.name
    return "q4_k"


def conversion_for(quant_type: str) -> tuple[str, str | None]:
    """The type ``convert --target nntrainer`` stores linear layers in, and the export's
    ``linear_type``: q4_k and f16 are stored as such where this nntrtool can write them, else
    kept in f32 and encoded by the export (the same values: both quantize from the source's)."""
    from nntrtool.plan.options import QUANT_TYPE_CHOICES

    qt = quant_type.lower()
    if qt in ("q4_k", "f16"):
        return (qt if qt in QUANT_TYPE_CHOICES else F32.name), qt
    return quant_type, None


def _expert_override(quant_type: str, config: dict[str, Any]) -> tuple[str, ...]:
    """Experts in the linear layers' type, whatever a source's own preference (MXFP4: q8_0)."""
    if not (config.get("num_experts") or config.get("num_local_experts")):
        return ()
    return (f"mlp\\.experts\\.={quant_type}",)


def _match_slots(
    layout: ArchitectureLayout, slots: list[Slot], entries: dict[str, Any]
) -> list[tuple[Slot, Any]]:
    """Every slot the runtime loads with the file's tensor of that name, shapes checked."""
    wanted = {s.name for s in slots}
    missing = [s.name for s in slots if s.name not in entries]
    extra = sorted(n for n in entries if n not in wanted)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UsageError(
            f"{layout.architecture} needs tensor {missing[0]}{more}, which the file lacks"
            + ("; the model is untied but has no lm_head" if missing[0] == "lm_head.weight" else "")
            + ": convert the complete model again (all of its weight files)"
        )
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise UsageError(
            f"the file has tensor {extra[0]}{more} that nntrainer's {layout.architecture} "
            "does not load (biases, tied heads stored twice, or another architecture): the "
            "file cannot be exported for nntrainer; use it with nntrtool's other commands"
        )
    pairs = [(s, entries[s.name]) for s in slots]
    for slot, entry in pairs:
        shape = tuple(int(x) for x in entry.shape)
        if shape != slot.shape:
            raise UsageError(
                f"{slot.name} has shape {list(shape)}, but the config implies "
                f"{list(slot.shape)}; the runtime builds its layers from config.json: convert "
                "again with the config.json that describes these weights"
            )
    return pairs


def plan_export(
    nf: Any,
    out_dir: str | os.PathLike[str],
    *,
    isa: str = "x86",
    runtime: RuntimeOptions | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
    linear_type: str | None = None,
) -> ExportPlan:
    """Check that ``nf`` (an open NNTR file) can run in nntrainer and decide every byte.

    ``linear_type`` (q4_0, q4_k, f16, f32) writes every linear layer and an untied head in
    that type, re-encoding those stored in another; ``None`` keeps the stored types (Q4_K
    layers make a Q4_K folder). Raises a one-line :class:`NntrError` for anything the runtime
    could not load.
    """
    if linear_type is not None:
        linear_type = linear_type.lower()
        if linear_type not in LINEAR_TYPES:
            raise UsageError(
                f"unknown --linear-type {linear_type!r}; nntrainer runs linear layers in "
                f"{', '.join(LINEAR_TYPES)}"
            )
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

    pairs = _match_slots(layout, slots, entries)
    fc_type = _check_types(pairs, linear_type)
    recode = linear_type is not None or fc_type in ("q4_k", "f16")
    if fc_type == "q4_k":
        _check_q4_k_fits([s for s, _ in pairs if s.role in (Role.LINEAR, Role.LM_HEAD)], isa)
    tensors = [_plan_tensor(slot, entry, isa, fc_type if recode else None) for slot, entry in pairs]

    def role_type(role: Role) -> str | None:
        for t in tensors:
            if t.slot.role is role:
                if t.out_type in ISA_LAYOUTS.values():
                    return Q4_0.name
                return "q4_k" if t.out_type == Q4_K_X8 else t.out_type
        return None

    fc = role_type(Role.LINEAR) or F32.name
    emb = role_type(Role.EMBEDDING) or F32.name
    head = None if tied else (role_type(Role.LM_HEAD) or F32.name)

    warnings: list[str] = []
    runtime_cfg = runtime_config(config, layout, tied, warnings)
    num_to_generate, init_seq_len, max_seq_len = fit_positions(
        runtime, runtime_cfg, layout, warnings
    )

    source_path, tokenizer_sources = tokenizer_sources_for(config, source_dir, warnings)

    gen = generation_config(config, source_path, runtime, warnings)

    nntr_cfg = nntr_config(
        runtime, fc, emb, head, isa, out_dir, source, tokenizer_sources,
        (num_to_generate, init_seq_len, max_seq_len),
    )  # fmt: skip
    return ExportPlan(
        source=Path(os.fspath(source)) if source is not None else None,
        architecture=layout.architecture,
        isa=isa,
        tied=tied,
        tensors=tensors,
        fc_dtype=runtime_dtype(fc),
        embedding_dtype=runtime_dtype(emb),
        lmhead_dtype=runtime_dtype(head) if head is not None else None,
        config=runtime_cfg,
        generation_config=gen,
        nntr_config=nntr_cfg,
        tokenizer_sources=tokenizer_sources,
        warnings=warnings,
        notes=_notes(tensors, fc, emb) + _q4_k_offer(tensors, fc),
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
    linear_type: str | None = None,
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
        plan = plan_export(
            nf,
            out,
            isa=isa,
            runtime=runtime,
            source_dir=source_dir,
            source=path,
            linear_type=linear_type,
        )
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
    "LINEAR_TYPES",
    "TOKENIZER_FILES",
    "ExportPlan",
    "ExportResult",
    "ProgressFactory",
    "RuntimeOptions",
    "TensorExport",
    "check_output",
    "check_target",
    "conversion_for",
    "export_nntr",
    "nntrainer_type_overrides",
    "plan_export",
    "write_export",
]
