"""`nntrtool export`: an NNTR file to a model folder another runtime loads (nntrainer today).

Parses options, calls :func:`nntrtool.export.export_nntr` and renders its result; the work and
every check live in :mod:`nntrtool.export`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from nntrtool.errors import UsageError


def _parse_ids(text: str, option: str) -> list[int]:
    ids: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            ids.append(int(part))
        except ValueError:
            raise UsageError(
                f"{option} takes token ids separated by commas, got {part!r}: give e.g. "
                f"{option} 0,5"
            ) from None
    return ids


def export_command(
    file: Path = typer.Argument(..., help="NNTR file made by `nntrtool convert`."),
    out_dir: Path = typer.Argument(..., help="Model folder to create."),
    target: str = typer.Option("nntrainer", "--target", help="Runtime to export for."),
    isa: str = typer.Option(
        "x86", "--isa", help="CPU of the device: x86 (Q4_0 as q4_0_8) or arm (q4_0_4)."
    ),
    linear_type: str | None = typer.Option(
        None,
        "--linear-type",
        help="Type of every linear layer and an untied head: q4_0, q4_k, f16 (needs an "
        "nntrainer built with -Denable-fp16=true) or f32; layers stored in another type are "
        "requantized from their values (default: as stored; Q4_K layers make a Q4_K folder).",
    ),
    tokenizer: Path | None = typer.Option(
        None,
        "--tokenizer",
        help="Folder with the tokenizer and generation_config.json "
        "(default: the source recorded in FILE, if still there).",
    ),
    tokenizer_file: str | None = typer.Option(
        None,
        "--tokenizer-file",
        help="tokenizer_file in nntr_config.json, e.g. where it will be on the device "
        "(default: OUT_DIR/tokenizer.json, absolute).",
    ),
    model_file_name: str | None = typer.Option(
        None,
        "--model-file-name",
        help="Name of the weight file (default: <FILE>-<type>-<isa>.bin).",
    ),
    num_to_generate: int = typer.Option(512, "--num-to-generate", help="Tokens to generate."),
    init_seq_len: int = typer.Option(
        1024, "--init-seq-len", help="Prompt window the model is built for."
    ),
    max_seq_len: int = typer.Option(
        2048, "--max-seq-len", help="Prompt plus generated tokens, at most."
    ),
    batch_size: int = typer.Option(1, "--batch-size", help="Batch size."),
    bad_word_ids: str = typer.Option(
        "", "--bad-word-ids", help="Token ids never to generate, comma-separated."
    ),
    sample_input: str | None = typer.Option(
        None, "--sample-input", help="Prompt used when none is given on the runtime's command line."
    ),
    do_sample: bool | None = typer.Option(
        None,
        "--do-sample/--greedy",
        help="Sample or take the argmax (default: as the source says).",
    ),
    bos_token_id: int | None = typer.Option(None, "--bos-token-id", help="Override bos_token_id."),
    eos_token_id: list[int] | None = typer.Option(
        None, "--eos-token-id", help="Override eos_token_id (repeat for several)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check and show the layout; write nothing."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Replace OUT_DIR if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary."),
) -> None:
    """Export FILE to OUT_DIR, a folder nntrainer's CausalLM application runs as is."""
    from nntrtool.cli.display import progress_factory
    from nntrtool.export import RuntimeOptions, check_target, export_nntr

    check_target(target)

    runtime = RuntimeOptions(
        num_to_generate=num_to_generate,
        init_seq_len=init_seq_len,
        max_seq_len=max_seq_len,
        batch_size=batch_size,
        bad_word_ids=_parse_ids(bad_word_ids, "--bad-word-ids"),
        sample_input=sample_input,
        tokenizer_file=tokenizer_file,
        model_file_name=model_file_name,
        do_sample=do_sample,
        bos_token_id=bos_token_id,
        eos_token_ids=list(eos_token_id) if eos_token_id else None,
    )

    result = export_nntr(
        file,
        out_dir,
        target,
        isa,
        force=force,
        progress=progress_factory(quiet),
        runtime=runtime,
        source_dir=tokenizer,
        dry_run=dry_run,
        linear_type=linear_type,
    )
    if dry_run:
        render_plan(result.plan)
    elif not quiet:
        render_summary(result)


def render_plan(plan) -> None:
    """Print each tensor of the weight file in order: role, source type, stored type, shape."""
    from rich.console import Console
    from rich.table import Table

    from nntrtool.cli.display import human_bytes
    from nntrtool.qtypes import display_name

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # keep one tensor per line in logs and pipes
        console = Console(highlight=False, soft_wrap=True, width=160)
    table = Table(title=f"{plan.architecture} weight file, in the order nntrainer reads it")
    for col in ("#", "tensor", "role", "in file", "written as", "shape", "bytes"):
        table.add_column(col, justify="right" if col in ("#", "bytes") else "left")
    offset = 0
    for i, t in enumerate(plan.tensors):
        written = t.out_type + (" (transposed)" if t.transposed else "")
        table.add_row(
            str(i),
            t.slot.name,
            t.slot.role.value,
            display_name(t.source_type, t.source_layout),
            written,
            "x".join(map(str, t.out_shape)),
            human_bytes(t.nbytes),
        )
        offset += t.nbytes
    console.print(table)
    _render_totals(console, plan)
    console.print("dry run: nothing was written")


def _render_totals(console, plan) -> None:
    from nntrtool.cli.display import human_bytes, human_count

    head = "tied to the embedding" if plan.tied else f"{plan.lmhead_dtype}"
    console.print(
        f"{plan.architecture}, {len(plan.tensors)} tensors, {human_count(plan.params)} params, "
        f"weights {human_bytes(plan.nbytes)}; linear {plan.fc_dtype}, embedding "
        f"{plan.embedding_dtype}, output head {head}; isa {plan.isa}"
    )
    for kind, nbytes in sorted(plan.bytes_by_type().items()):
        count = sum(1 for t in plan.tensors if t.out_type == kind)
        console.print(f"  {kind:<8} {count:>5} tensors  {human_bytes(nbytes):>10}")
    for line in plan.notes:
        console.print(f"note: {line}")
    for line in plan.warnings:
        console.print(f"warning: {line}")


def render_summary(result) -> None:
    """What was written, where, how fast, and how to run it."""
    from rich.console import Console

    from nntrtool.cli.display import human_count

    console = Console(highlight=False, soft_wrap=True)
    plan = result.plan
    console.print(f"exported to {result.out_dir}")
    _render_totals(console, plan)
    console.print(f"  files: {', '.join(result.files)}")
    rate = plan.params / result.seconds if result.seconds > 0 else 0.0
    console.print(f"  {result.seconds:.2f} s, {human_count(rate)} params/s")
    console.print(f"run it: nntr_causallm {result.out_dir}")
