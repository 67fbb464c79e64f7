"""``nntrtool convert``: parse the options, run :func:`nntrtool.convert.convert`, show the result.

The command only translates flags into :class:`~nntrtool.convert.ConvertOptions` and renders the
plan (``--dry-run``) or the conversion report; all the work is in :mod:`nntrtool.convert`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from nntrtool.cli import options as opts
from nntrtool.cli.display import human_bytes, human_count
from nntrtool.qtypes import TARGET_TYPE_NAMES
from nntrtool.units import size_change


def convert_command(
    src: str = typer.Argument(
        ...,
        help="Model folder, .safetensors, .bin or .gguf file, or Hugging Face id (org/name).",
        show_default=False,
    ),
    out: Path = typer.Argument(
        None, help="Output NNTR file (not needed with --dry-run).", show_default=False
    ),
    quant_type: str = typer.Option(
        "auto",
        "--quant-type",
        help=f"Type of the weight matrices: {', '.join(TARGET_TYPE_NAMES)}; llama.cpp's mixtures "
        "q4_k_m, q5_k_m; or keep (GGUF blocks as they are, other types to q6_k/q8_0, floats to "
        "f32). auto: keep for GGUF sources, else q4_0 "
        "(with --target nntrainer --isa x86: q4_k where every linear layer fits it).",
    ),
    repack_format: str = typer.Option(
        "none",
        "--repack-format",
        "-r",
        help="Interleave Q4_0 matrices for CPU SIMD: q4_0_4, q4_0_8, q4_0_4x4 or none.",
    ),
    type_override: list[str] = typer.Option(
        None,
        "--type",
        metavar="REGEX=TYPE",
        help="Store tensors whose name matches REGEX as TYPE (repeatable; first match wins).",
    ),
    head_type: str = typer.Option(
        None,
        "--head-type",
        metavar="TYPE",
        help="Type of the output head (of the token embeddings when they are tied to it), "
        "e.g. q6_k as llama.cpp keeps it; q8_0 where its columns do not fit. Wins over --type.",
        show_default=False,
    ),
    keep_f32: list[str] = typer.Option(
        None, "--keep-f32", metavar="REGEX", help="Keep tensors whose name matches REGEX in f32."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show the per-tensor plan and the predicted size; write nothing."
    ),
    force: bool = opts.FORCE,
    threads: int = opts.THREADS,
    backend: str = typer.Option(
        "auto", "--backend", help="Quantization backend: auto, numpy, numba or cupy."
    ),
    revision: str = opts.REVISION,
    config: Path = opts.CONFIG,
    imatrix: Path = typer.Option(
        None,
        "--imatrix",
        metavar="FILE",
        help="Importance matrix (llama.cpp imatrix: GGUF or legacy .dat) weighting the "
        "Q4_0 and Q6_K quantization error, as llama-quantize --imatrix does.",
    ),
    gguf_file: str = opts.GGUF_FILE,
    gguf_raw_names: bool = typer.Option(
        False,
        "--gguf-raw-names",
        help="Convert a GGUF of a family nntrtool does not know (or holding tensors its family "
        "does not name) with the GGUF's own tensor names and values, no transform undone; "
        "flagged in the file's metadata.",
    ),
    allow_nonfinite: bool = typer.Option(
        False,
        "--allow-nonfinite",
        help="Store tensors holding NaN or inf as f32 instead of failing.",
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Refuse a tensor whose values do not fit its type's fp16 scales instead of "
        "storing it as f32.",
    ),
    target: str = typer.Option(
        None,
        "--target",
        help="Also export OUT as a model folder for this runtime (nntrainer); the weight types "
        "it needs are added after your own --type overrides.",
        show_default=False,
    ),
    isa: str = typer.Option(
        "x86", "--isa", help="With --target: CPU of the device, x86 (q4_0_8) or arm (q4_0_4)."
    ),
    quiet: bool = opts.quiet("No progress and no summary."),
    lora: list[str] = typer.Option(
        None,
        "--lora",
        metavar="ADAPTER",
        help="Merge a PEFT LoRA adapter (folder or hub id) into the weights while converting "
        "(repeatable: adapters add up in the order given).",
        show_default=False,
    ),
    lora_scale: list[float] = opts.LORA_SCALE,
) -> None:
    """Convert a Hugging Face / PyTorch / GGUF model to an NNTR file (or, with --target, a runtime's folder)."""
    from nntrtool.cli.display import progress_factory
    from nntrtool.convert import ConvertOptions, convert
    from nntrtool.errors import UsageError
    from nntrtool.sources.lora import adapter_specs

    if out is None and not dry_run:
        raise UsageError("give the output file: nntrtool convert SRC OUT (or use --dry-run)")
    linear_type = None
    if target is not None:  # q4_k / f16 layers the export encodes, where convert cannot yet
        from nntrtool.export.nntrainer import conversion_for

        quant_type, linear_type = conversion_for(quant_type)
    options = ConvertOptions(
        quant_type=quant_type,
        repack_format=repack_format,
        type_overrides=tuple(type_override or ()),
        keep_f32=tuple(keep_f32 or ()),
        head_type=head_type,
        backend=backend,
        threads=threads,
        force=force,
        dry_run=dry_run,
        allow_nonfinite=allow_nonfinite,
        strict=strict,
        revision=revision,
        config=config,
        adapters=adapter_specs(lora, lora_scale),
        imatrix=imatrix,
        gguf_file=gguf_file,
        gguf_raw_names=gguf_raw_names,
    )

    progress = progress_factory(quiet)

    if target is not None and not dry_run:
        from nntrtool.cli.cmd_export import render_summary
        from nntrtool.export import convert_and_export

        report, result = convert_and_export(
            src, out, options, target=target, isa=isa, progress=progress, linear_type=linear_type
        )
        for note in report.plan.notes:
            _warn(note)
        if not quiet:
            render_report(report, temporary=True)
            render_summary(result)
        return
    if target is not None:  # --dry-run: the plan of the conversion the runtime's folder needs
        from nntrtool.export import check_target
        from nntrtool.export.shortcut import nntrainer_conversion

        check_target(target)
        options, _ = nntrainer_conversion(src, options, isa=isa, linear_type=linear_type)
    report = convert(src, out, options, progress=progress)
    for note in report.plan.notes:
        _warn(note)
    if quiet:
        return
    if dry_run:
        render_plan(report)
    else:
        render_report(report)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _console() -> Any:
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=200, no_color=True)


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _type_table(report: Any, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("type")
    table.add_column("tensors", justify="right")
    table.add_column("params", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("bits/weight", justify="right")
    for name, (n, params, nbytes) in report.by_type.items():
        bpw = 8.0 * nbytes / params if params else 0.0
        table.add_row(name, str(n), human_count(params), human_bytes(nbytes), f"{bpw:.2f}")
    plan = report.plan
    total_bpw = 8.0 * plan.nbytes / plan.params if plan.params else 0.0
    table.add_row(
        "total",
        str(len(plan.tensors)),
        human_count(plan.params),
        human_bytes(plan.nbytes),
        f"{total_bpw:.2f}",
        style="bold",
    )
    return table


def _render_notes(console: Any, report: Any) -> None:
    from nntrtool.sources.lora_records import changed_tensor_lines, describe_adapters

    plan = report.plan
    for line in describe_adapters(plan.origin.get("adapters") or []):
        console.print(line)
    for line in changed_tensor_lines(plan.tensors):
        console.print(f"  {line}", soft_wrap=True)
    if plan.tied.tied:
        console.print(
            f"tied embeddings: {plan.tied.embedding} is also the output head ({plan.tied.reason})"
        )
    for name, reason in plan.skipped:
        console.print(f"not stored: {name} ({reason})")
    if plan.fallbacks:
        console.print(f"fallbacks ({len(plan.fallbacks)}):")
        for name, reason in plan.fallbacks:
            console.print(f"  {name}: {reason}")
    requantized = [t for t in plan.tensors if t.requantized]
    if requantized:
        console.print(
            f"requantized from the GGUF's types ({len(requantized)}; lossy relative to the GGUF):"
        )
        for t in requantized:
            console.print(
                f"  {t.name}: requantized from {t.source_dtype.lower()} to {t.display_type}"
            )
    if plan.unrepacked:
        console.print(f"left unrepacked ({len(plan.unrepacked)}):")
        for name, reason in plan.unrepacked:
            console.print(f"  {name}: {reason}")
    if plan.imatrix is not None:
        console.print(f"importance matrix: {imatrix_text(plan.imatrix)}", soft_wrap=True)
        missing = plan.without_importance
        if missing:
            console.print(f"no importance data, plain quantizer ({len(missing)}):")
            for name, reason in missing:
                console.print(f"  {name}: {reason}")


def imatrix_text(info: dict[str, Any]) -> str:
    """One line about the importance matrix a file was made with (its recorded metadata)."""
    parts = [f"sha256 {str(info.get('sha256', ''))[:16]}"]
    if info.get("chunk_count") is not None:
        parts.append(f"{info['chunk_count']} chunks")
    datasets = info.get("datasets") or []
    if datasets:
        parts.append("dataset " + ", ".join(str(d) for d in datasets))
    weighted = info.get("tensors")
    tail = f": {weighted} tensors weighted" if weighted is not None else ""
    return f"{info.get('file')} ({info.get('format')}, {', '.join(parts)}){tail}"


def render_plan(report: Any) -> None:
    """Print the per-tensor plan of a dry run and the predicted output size."""
    from rich.table import Table

    plan = report.plan
    console = _console()
    table = Table(title="conversion plan (dry run: nothing written)", title_justify="left")
    table.add_column("tensor", overflow="fold")
    table.add_column("source dtype")
    table.add_column("shape")
    table.add_column("type")
    table.add_column("bytes", justify="right")
    table.add_column("reason", overflow="fold")
    weighted = plan.imatrix is not None
    if weighted:
        table.add_column("imatrix", overflow="fold")
    for t in plan.tensors:
        reason = f"{t.reason}; {t.note}" if t.note else t.reason
        row = [
            t.name,
            t.source_dtype,
            _shape(t.shape),
            t.display_type,
            human_bytes(t.nbytes),
            reason,
        ]
        if weighted:
            row.append(t.importance or "-")
        table.add_row(*row)
    console.print(table)
    console.print(_type_table(report, "by type"))
    _render_notes(console, report)
    size = plan.predicted_size
    console.print(
        f"predicted output size: {human_bytes(size)} ({size} bytes); source "
        f"{human_bytes(plan.source_bytes)}, {size_change(size, plan.source_bytes)}"
    )


def render_report(report: Any, temporary: bool = False) -> None:
    """Print the summary of a finished conversion (``temporary``: its file was an intermediate)."""
    console = _console()
    plan = report.plan
    if not temporary:
        console.print(f"wrote {report.out_path}", soft_wrap=True)
    console.print(_type_table(report, "by type"))
    _render_notes(console, report)
    for name, reason in report.nonfinite:
        console.print(f"non-finite: {name} {reason}")
    console.print(
        f"{human_bytes(report.file_size)} from {human_bytes(plan.source_bytes)} of source "
        f"({size_change(report.file_size, plan.source_bytes)}); {human_count(plan.params)} params in "
        f"{report.seconds:.2f} s = {human_count(report.params_per_s)} params/s "
        f"(backend {report.backend}, {report.threads} thread{'s' if report.threads != 1 else ''})"
    )
