"""`nntrtool inspect FILE`: header, config summary, tensor table and totals of an NNTR file.

A thin layer over :func:`nntrtool.format.describe`; ``--json`` prints that object as is.
Only the directory is read unless ``--check`` asks for every tensor's checksum.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from nntrtool.errors import NntrError


def inspect_command(
    file: Path = typer.Argument(..., help="The NNTR file to inspect.", show_default=False),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object (schema in docs/FORMAT.md) instead of tables."
    ),
    show_config: bool = typer.Option(
        False, "--config", help="Print the whole stored config, not only its summary."
    ),
    check: bool = typer.Option(
        False, "--check", help="Read every tensor and verify its CRC32; exit 1 if any is bad."
    ),
) -> None:
    """Show what an NNTR file holds: header, config, every tensor, totals by type."""
    from nntrtool.format import NntrFile, describe

    with NntrFile(file) as f:
        info = _describe_with_progress(f, describe, check)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    else:
        render(info, show_config=show_config)
    bad = info.get("bad_tensors") or []
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NntrError(
            f"{file}: {len(bad)} of {info['tensor_count']} tensors fail their checksum ({shown}); "
            "the file is corrupt, convert it again"
        )


def _describe_with_progress(f: Any, describe: Any, check: bool) -> dict[str, Any]:
    if not check:
        return describe(f)
    from nntrtool.cli.display import Progress

    total = sum(t.nbytes for t in f.tensors)
    with Progress(total, "checking", quiet=not sys.stderr.isatty(), unit="B") as progress:
        return describe(f, check=True, progress=progress.advance)


def _shape_text(shape: list[int]) -> str:
    return " x ".join(str(d) for d in shape) if shape else "scalar"


def render(info: dict[str, Any], *, show_config: bool = False) -> None:
    """Print the tables of ``inspect`` for a :func:`~nntrtool.format.describe` object."""
    from rich.console import Console

    longest = max((len(t["name"]) for t in info["tensors"]), default=10)
    console = Console(
        highlight=False,
        width=None if sys.stdout.isatty() else max(100, longest + 70),
    )

    def out(*args: Any, **kw: Any) -> None:
        console.print(*args, soft_wrap=True, **kw)

    _render_header(out, info, show_config)
    out(_tensor_table(info))
    out(_totals_table(info))
    _render_footer(out, info)


def _render_header(out: Any, info: dict[str, Any], show_config: bool) -> None:
    """The file line and the config's facts (the whole config with ``show_config``)."""
    from rich.markup import escape

    from nntrtool.cli.display import human_bytes

    out(
        f"[bold]{escape(info['path'])}[/]: {info['magic']} v{info['version']}, "
        f"{human_bytes(info['file_size'])} ({info['file_size']} bytes), "
        f"{info['tensor_count']} tensors, data from offset {info['data_offset']}"
    )

    summary = info["summary"]
    facts = [
        ("architecture", summary["architecture"]),
        ("hidden size", summary["hidden_size"]),
        ("layers", summary["layers"]),
        ("vocab", summary["vocab_size"]),
        ("quant type", summary["quant_type"]),
        ("repack", summary["repack_format"]),
        ("tied embeddings", summary["tied_embeddings"]),
        ("source", summary["source"]),
        ("lora", ", ".join(summary.get("adapters") or []) or None),
        ("made by", f"nntrtool {summary['tool_version']}" if summary["tool_version"] else None),
    ]
    known = [f"{k}: [cyan]{escape(str(v))}[/]" for k, v in facts if v is not None]
    out("config: " + (", ".join(known) if known else "[dim](no model facts recorded)[/]"))
    if isinstance(summary.get("imatrix"), dict):
        from nntrtool.cli.cmd_convert import imatrix_text

        out(f"importance matrix: [cyan]{escape(imatrix_text(summary['imatrix']))}[/]")
    if show_config:
        out(json.dumps(info["config"], indent=2, ensure_ascii=False), markup=False)


def _tensor_table(info: dict[str, Any]) -> Any:
    """One row per tensor: name, type, shape, bytes, bits per weight (and CRC when checked)."""
    from rich.table import Table
    from rich.text import Text

    from nntrtool.cli.display import human_bytes

    table = Table(title="tensors", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("name", overflow="fold")
    table.add_column("type")
    table.add_column("shape", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("bits/w", justify="right")
    checked = "bad_tensors" in info
    if checked:
        table.add_column("crc32")
    for i, t in enumerate(info["tensors"]):
        row = [
            str(i),
            Text(t["name"]),
            t["type"],
            _shape_text(t["shape"]),
            human_bytes(t["nbytes"]),
            f"{t['bits_per_weight']:.2f}",
        ]
        if checked:
            row.append("ok" if t["checksum_ok"] else "[bold red]BAD[/]")
        table.add_row(*row)
    return table


def _totals_table(info: dict[str, Any]) -> Any:
    """Tensors, values, bytes and share of the data per stored type, and for the whole file."""
    from rich.table import Table

    from nntrtool.cli.display import human_bytes, human_count

    params = info["params"]
    data = info["data_bytes"]
    totals = Table(title="totals by type", title_justify="left", show_edge=False, pad_edge=False)
    for name in ("type", "tensors", "params", "bytes", "bits/w", "share"):
        totals.add_column(name, justify="left" if name == "type" else "right")
    for tname, row in info["by_type"].items():
        totals.add_row(
            tname,
            str(row["tensors"]),
            human_count(row["params"]),
            human_bytes(row["nbytes"]),
            f"{8.0 * row['nbytes'] / row['params']:.2f}" if row["params"] else "-",
            f"{100.0 * row['nbytes'] / data:.1f}%" if data else "-",
        )
    totals.add_row(
        "[bold]all[/]",
        str(info["tensor_count"]),
        human_count(params),
        human_bytes(data),
        f"{info['bits_per_weight']:.2f}",
        "100.0%" if data else "-",
    )
    return totals


def _render_footer(out: Any, info: dict[str, Any]) -> None:
    """The parameter count against F32 / BF16 sizes, and the checksum verdict."""
    from rich.markup import escape

    from nntrtool.cli.display import human_bytes, human_count

    params = info["params"]
    data = info["data_bytes"]
    checked = "bad_tensors" in info
    if params:
        out(
            f"parameters: {human_count(params)} ({params:,}); tensor data {human_bytes(data)}, "
            f"{_against(data, info['f32_bytes'], 'f32')} and "
            f"{_against(data, info['bf16_bytes'], 'bf16')}"
        )
    if checked:
        bad = info["bad_tensors"]
        if bad:
            for name in bad:
                out(f"[bold red]checksum mismatch[/]: {escape(name)}")
        else:
            out(f"checksums: all {info['tensor_count']} tensors ok")


def _against(size: int, ref: int, name: str) -> str:
    """``'3.56x smaller than f32 (4.3 GiB)'`` (or larger, or the same size as)."""
    from nntrtool.cli.display import human_bytes
    from nntrtool.units import size_change

    change = size_change(size, ref)
    word = "as" if change == "the same size" else "than"
    return f"{change} {word} {name} ({human_bytes(ref)})"
