"""``nntrtool imatrix SRC --text FILE -o OUT``: an importance matrix computed on a text.

A thin layer over :func:`nntrtool.imatrix.collect.compute_imatrix`: parses options, runs it with
a progress bar and prints what was covered (or ``--json``). The output is llama.cpp's GGUF
imatrix format, usable by ``nntrtool convert --imatrix`` and by llama.cpp's quantizer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from nntrtool.cli import options as opts
from nntrtool.cli.display import progress_factory


def imatrix_command(
    source: str = typer.Argument(
        ..., help="The model: a folder with config.json, weights and tokenizer, or a hub id."
    ),
    text: Path = typer.Option(..., "--text", metavar="FILE.txt", help="UTF-8 calibration text."),
    out: Path = typer.Option(
        ..., "--output", "-o", help="Output imatrix file (GGUF, e.g. imatrix.gguf)."
    ),
    ctx: int = opts.CTX,
    chunks: int = opts.CHUNKS,
    force: bool = opts.FORCE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object of the summary."),
    revision: str = opts.REVISION,
    config: Path = opts.CONFIG,
    quiet: bool = opts.quiet(),
) -> None:
    """Run SRC over a text and record each linear layer's input importance (needs torch)."""
    from nntrtool.imatrix.collect import compute_imatrix
    from nntrtool.sources import SourceRequest

    request = SourceRequest.of(source, revision=revision, config=config)
    report = compute_imatrix(
        request, text, out, ctx=ctx, chunks=chunks, force=force, progress=progress_factory(quiet)
    )
    if json_out:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        return
    print(
        f"wrote {report.out}: {report.tensors} tensors ({report.matrices} matrices counting "
        f"experts) from {report.chunks} chunks of {report.chunk_size} tokens = {report.tokens} "
        f"tokens of {report.text} ({report.text_tokens} in the text), {report.seconds:.1f} s"
    )
    if report.never_activated:
        print(
            f"never activated ({len(report.never_activated)}; their statistics are zero): "
            + "; ".join(report.never_activated)
        )
    else:
        print("every tensor was activated")
