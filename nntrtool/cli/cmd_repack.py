"""`nntrtool repack FILE OUT --format LAYOUT`: Q4_0 tensors into another CPU layout, losslessly.

A thin layer over :func:`nntrtool.repack_file.repack_file`: parses options, shows progress and
prints what was repacked, unpacked, copied and left plain (with the reason).
"""

from __future__ import annotations

from pathlib import Path

import typer

from nntrtool.cli.display import human_bytes, progress_factory, stderr_console


def repack_command(
    file: Path = typer.Argument(..., help="The NNTR file to read."),
    out: Path = typer.Argument(..., help="The NNTR file to write."),
    fmt: str = typer.Option(
        ...,
        "--format",
        "-f",
        metavar="LAYOUT",
        help="Layout of the Q4_0 tensors: q4_0_4 (ARM i8mm), q4_0_8 (x86 AVX2), q4_0_4x4 (ARM "
        "dotprod), or none for plain Q4_0.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary output."),
) -> None:
    """Rewrite the Q4_0 tensors of FILE into another layout without requantizing."""
    from nntrtool.repack_file import repack_file

    progress = progress_factory(quiet)

    report = repack_file(file, out, fmt, force=force, progress=progress)
    if quiet:
        return
    console = stderr_console()
    counts = {
        "repacked": report.count("repack"),
        "re-laid out": report.count("relayout"),
        "unpacked": report.count("unpack"),
        "left plain": report.count("left_plain"),
        "copied": report.count("copy"),
    }
    parts = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    console.print(
        f"wrote {report.output} ({human_bytes(report.file_size)}, layout {report.format}): "
        f"{parts} in {report.seconds:.2f} s",
        markup=False,
        soft_wrap=True,
    )
    for move in report.left_plain:
        console.print(f"  {move.name}: {move.reason}", markup=False, soft_wrap=True)
