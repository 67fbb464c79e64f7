"""`nntrtool verify FILE SRC`: how faithful a converted file is to its source, tensor by tensor.

A thin layer over :mod:`nntrtool.verify`: parses options, runs the comparison with a progress bar
and renders a table (worst tensors first), a per-type summary and the verdict, or ``--json``.
Exit status: 0 when every tensor passes, 1 when any fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

import typer

from nntrtool import messages
from nntrtool.cli import options as opts
from nntrtool.cli.display import human_count, progress_factory
from nntrtool.errors import NntrError, UsageError
from nntrtool.qtypes import LAYOUTS, Q4_0_REPACKED

#: The type whose limits a repack layout (``q4_0_8`` ...) is held to.
LAYOUT_PLAIN_TYPE = Q4_0_REPACKED.plain.name


def verify_command(
    file: Path = typer.Argument(..., help="The NNTR file to check."),
    source: str = typer.Argument(
        ...,
        help="What it was converted from: a model folder, .safetensors file, checkpoint or hub id.",
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print one JSON object (schema in docs/VERIFY.md) instead of tables."
    ),
    max_rel_err: list[str] = typer.Option(
        None,
        "--max-rel-err",
        metavar="X|TYPE=X",
        help="Largest relative error ||x-x'||/||x|| allowed: X for every quantized type, or "
        f"TYPE=X for one (repeatable). Defaults: {opts.default_limits_text()}; f32 must be exact.",
    ),
    logits: bool = typer.Option(
        False,
        "--logits",
        help="Also run the model on a fixed prompt with and without the file's "
        "weights and report KL divergence and top-1 agreement (needs the torch extra).",
    ),
    tokens: str = typer.Option(
        None, "--tokens", metavar="1,2,3", help="Token ids of the prompt for --logits."
    ),
    text: Path = typer.Option(
        None,
        "--text",
        metavar="FILE.txt",
        help="With --logits: run both models over this UTF-8 text instead of the fixed prompt "
        "and report perplexity, KL divergence percentiles and top-1 agreement.",
    ),
    ctx: int = opts.CTX,
    chunks: int = opts.CHUNKS,
    max_kl: float = typer.Option(
        None, "--max-kl", help="With --logits: fail when the mean KL divergence exceeds this."
    ),
    max_ppl_ratio: float = typer.Option(
        None,
        "--max-ppl-ratio",
        help="With --text: fail when PPL(file) / PPL(source) exceeds this (e.g. 1.05).",
    ),
    top: int = typer.Option(
        None, "--top", min=1, help="Show only the N worst tensors in the table (all by default)."
    ),
    revision: str = opts.REVISION,
    gguf_file: str = opts.GGUF_FILE,
    config: Path = opts.CONFIG,
    backend: str = typer.Option(
        "auto", "--backend", help="Dequantization backend: auto|numpy|numba|cupy."
    ),
    threads: int = opts.THREADS,
    quiet: bool = opts.quiet(),
    lora: list[str] = typer.Option(
        None,
        "--lora",
        metavar="ADAPTER",
        help="LoRA adapter the file was converted with "
        "(PEFT folder or hub id; repeatable, in the convert order): compare with the merged weights.",
    ),
    lora_scale: list[float] = opts.LORA_SCALE,
    gguf_raw_names: bool = typer.Option(
        False,
        "--gguf-raw-names",
        help="Read a GGUF source with its own tensor names and values, as convert "
        "--gguf-raw-names did (implied when FILE was converted so).",
    ),
) -> None:
    """Compare FILE with the model it was converted from: per-tensor error, checksums, verdict."""
    from nntrtool import verify as v
    from nntrtool.sources import SourceRequest
    from nntrtool.sources.lora import adapter_specs

    adapters = adapter_specs(lora, lora_scale)
    if not gguf_raw_names and Path(file).is_file():
        from nntrtool.format import NntrFile
        from nntrtool.verify.matching import converted_raw

        with contextlib.suppress(NntrError), NntrFile(file) as nf:
            gguf_raw_names = converted_raw(nf)  # --logits and --text read the GGUF so too
    request = SourceRequest.of(
        source,
        revision=revision,
        config=config,
        gguf_file=gguf_file,
        adapters=adapters,
        gguf_raw_names=gguf_raw_names,
    )
    limits = v.parse_thresholds(max_rel_err)
    token_ids = v.parse_tokens(tokens) if tokens is not None else None
    if (token_ids is not None or max_kl is not None or text is not None) and not logits:
        raise UsageError(messages.option_needs("--tokens, --text and --max-kl", "--logits"))
    if text is None and (chunks is not None or max_ppl_ratio is not None):
        raise UsageError(messages.option_needs("--chunks and --max-ppl-ratio", "--text"))
    if text is not None and token_ids is not None:
        raise UsageError("give either --tokens or --text, not both")
    if max_kl is not None and not max_kl >= 0:
        raise UsageError(f"--max-kl {max_kl}: give a number >= 0")
    if max_ppl_ratio is not None and not max_ppl_ratio > 0:
        raise UsageError(f"--max-ppl-ratio {max_ppl_ratio}: give a number > 0")
    text_chunks = None
    if logits:
        v.import_torch()  # fail before the long comparison if the extra is missing
    if text is not None:
        # read and tokenize the text first: a bad text or tokenizer fails in a second
        text_chunks = v.load_text_chunks(request, text, ctx=ctx, chunks=chunks)

    progress = progress_factory(quiet)

    report = v.verify(
        file, request, max_rel_err=limits, backend=backend, threads=threads, progress=progress
    )
    if text_chunks is not None:
        report.text = v.compare_text(file, request, text_chunks, backend=backend, progress=progress)
    elif logits:
        report.logits = v.compare_logits(
            file, request, tokens=token_ids, backend=backend, progress=progress
        )
    report.max_kl = max_kl
    report.max_ppl_ratio = max_ppl_ratio

    if not report.passed and not adapters:
        from nntrtool.format import NntrFile
        from nntrtool.sources.lora import verify_hint

        with NntrFile(file) as nf:
            hint = verify_hint(nf.config)
        if hint:
            print(f"note: {hint}", file=sys.stderr)
    if json_out:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        render(report, top=top)
    if not report.passed:
        raise typer.Exit(1)


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def render(report, top: int | None = None) -> None:
    """Print the tensor table (worst first), the per-type summary and the verdict."""
    from rich.console import Console

    from nntrtool import verify as v

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print(_tensor_table(report, v.worst_first(report.tensors), top))
    console.print(_summary_table(report))
    _render_model_checks(console, report)
    failures = report.failures
    if report.passed:
        console.print(
            f"[bold green]PASS[/]: {len(report.tensors)} tensors within limits "
            f"({report.seconds:.2f} s)"
        )
    else:
        what = (
            f"{len(failures)} of {len(report.tensors)} tensors failed"
            if failures
            else "logits check failed"
        )
        console.print(f"[bold red]FAIL[/]: {what} ({report.seconds:.2f} s)")


def _tensor_table(report, rows: list, top: int | None):
    """Every tensor's errors, worst first (the first ``top`` of them when given)."""
    from rich.table import Table

    shown = rows if top is None else rows[:top]
    table = Table(title=f"{report.file} vs {report.source}", title_justify="left")
    for name, justify in (
        ("tensor", "left"),
        ("type", "left"),
        ("shape", "left"),
        ("rel err", "right"),
        ("rmse", "right"),
        ("max abs", "right"),
        ("cosine", "right"),
        ("SNR dB", "right"),
        ("crc", "center"),
        ("status", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=name in ("tensor", "shape"))
    for r in shown:
        status = r.status if r.ok else f"[bold red]{r.status}[/]"
        if r.message and not r.ok:
            status += f" [dim]{r.message}[/]"
        elif r.message:
            status += f" [dim]({r.message})[/]"
        crc = "-" if r.checksum_ok is None else ("ok" if r.checksum_ok else "[bold red]BAD[/]")
        table.add_row(
            r.name,
            r.type or "-",
            "x".join(map(str, r.shape)) if r.shape else "-",
            _fmt(r.rel_err, ".4g"),
            _fmt(r.rmse, ".3g"),
            _fmt(r.max_abs_err, ".3g"),
            _fmt(r.cosine, ".6f"),
            _fmt(r.snr_db, ".2f"),
            crc,
            status,
        )
    if len(shown) < len(rows):
        table.caption = f"{len(rows) - len(shown)} more tensors not shown (--top {top})"
    return table


def _summary_table(report):
    """Per stored type: counts, the limit, mean and worst of each metric, failures."""
    from rich.table import Table

    summary = Table(title="summary by type", title_justify="left")
    for name in (
        "type",
        "tensors",
        "params",
        "limit",
        "rel err mean/worst",
        "rmse mean/worst",
        "max abs worst",
        "cosine mean/worst",
        "SNR dB mean/worst",
        "failed",
    ):
        summary.add_column(name, justify="left" if name == "type" else "right")
    for s in report.summary:
        limit = report.thresholds.get(LAYOUT_PLAIN_TYPE if s.type in LAYOUTS else s.type)
        summary.add_row(
            s.type,
            str(s.tensors),
            human_count(s.params),
            "exact" if limit == 0 else _fmt(limit, "g"),
            f"{_fmt(s.mean['rel_err'], '.4g')} / {_fmt(s.worst['rel_err'], '.4g')}",
            f"{_fmt(s.mean['rmse'], '.3g')} / {_fmt(s.worst['rmse'], '.3g')}",
            _fmt(s.worst["max_abs_err"], ".3g"),
            f"{_fmt(s.mean['cosine'], '.6f')} / {_fmt(s.worst['cosine'], '.6f')}",
            f"{_fmt(s.mean['snr_db'], '.2f')} / {_fmt(s.worst['snr_db'], '.2f')}",
            str(s.failed) if not s.failed else f"[bold red]{s.failed}[/]",
        )
    return summary


def _render_model_checks(console, report) -> None:
    """The ``--logits`` / ``--text`` results and whether they are within their limits."""
    if report.logits is not None:
        lg = report.logits
        console.print(
            f"logits over {len(lg.tokens)} positions: KL mean {lg.kl_mean:.3g}, max {lg.kl_max:.3g}; "
            f"top-1 agreement {lg.top1_agreement:.1%}; max logit diff {lg.max_logit_diff:.3g} "
            f"({lg.replaced} weights replaced)"
        )
        if lg.not_replaced:
            console.print(
                f"[yellow]not replaced (not in the file):[/] {', '.join(lg.not_replaced)}"
            )
        if lg.unused:
            console.print(
                f"[yellow]in the file but not used by the model:[/] {', '.join(lg.unused)}"
            )
    if report.text is not None:
        render_text(console, report.text)
    measured = report.text if report.text is not None else report.logits
    if not report.kl_ok:
        console.print(
            f"[bold red]mean KL divergence {measured.kl_mean:.3g} exceeds --max-kl {report.max_kl:g}[/]"
        )
    if not report.ppl_ratio_ok:
        console.print(
            f"[bold red]PPL ratio {report.text.ppl_ratio:.4f} exceeds --max-ppl-ratio "
            f"{report.max_ppl_ratio:g}[/]"
        )


def render_text(console, t) -> None:
    """The text measurement, laid out like llama-perplexity's KL-divergence statistics."""
    from rich.table import Table

    console.print(
        f"text {t.text}: {t.chunks} chunks of {t.ctx} tokens ({t.text_tokens} in the text), "
        f"{t.scored} tokens scored (second half of each chunk); "
        f"{t.replaced} weights replaced"
    )
    table = Table(title="file vs source on the text", title_justify="left", show_header=False)
    table.add_column("statistic", justify="left")
    table.add_column("value", justify="right")
    rows = [
        ("Mean PPL(file)", f"{t.ppl_test:.4f} ± {t.ppl_test_err:.4f}"),
        ("Mean PPL(source)", f"{t.ppl_base:.4f} ± {t.ppl_base_err:.4f}"),
        ("Cor(ln PPL(file), ln PPL(source))", f"{100 * t.ppl_corr:.2f}%"),
        ("Mean ln(PPL(file)/PPL(source))", f"{t.ln_ratio:.6f} ± {t.ln_ratio_err:.6f}"),
        ("Mean PPL(file)/PPL(source)", f"{t.ppl_ratio:.6f} ± {t.ppl_ratio_err:.6f}"),
        ("Mean PPL(file)-PPL(source)", f"{t.ppl_test - t.ppl_base:.6f}"),
        ("Mean KLD", f"{t.kl_mean:.6f} ± {t.kl_mean_err:.6f}"),
        ("Maximum KLD", f"{t.kl_max:.6f}"),
    ]
    for key, value in t.kl_percentiles.items():
        label = "Median KLD" if key == "50" else f"{float(key):.1f}% KLD"
        rows.append((label, f"{value:.6f}"))
    rows += [
        ("Minimum KLD", f"{t.kl_min:.6f}"),
        ("Mean Δp", f"{100 * t.dp_mean:.3f} ± {100 * t.dp_mean_err:.3f} %"),
        ("RMS Δp", f"{100 * t.rms_dp:.3f} ± {100 * t.rms_dp_err:.3f} %"),
        ("Same top p", f"{100 * t.top1_agreement:.3f} ± {100 * t.top1_agreement_err:.3f} %"),
    ]
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    if t.not_replaced:
        console.print(f"[yellow]not replaced (not in the file):[/] {', '.join(t.not_replaced)}")
    if t.unused:
        console.print(f"[yellow]in the file but not used by the model:[/] {', '.join(t.unused)}")
