"""`nntrtool bench`: parse options, run :func:`nntrtool.bench.run_bench`, render a table or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from nntrtool.cli.display import human_bytes, human_count, stderr_console
from nntrtool.qtypes import QUANT_TYPE_NAMES


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def _fmt_ratio(r: float) -> str:
    return f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


def _rate(v: float) -> str:
    """Three significant digits with a unit prefix: ``1.53 G``, ``68.0 M``, ``912 K``."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if v >= scale:
            x = v / scale
            return f"{x:.{0 if x >= 100 else 1 if x >= 10 else 2}f} {unit}"
    return f"{v:.0f}"


#: Short names of the references in the tables (the JSON keeps the full ones).
_REF_LABEL = {"ggml-c": "ggml", "gguf-numpy": "gguf"}


def _ratio_cell(case: dict[str, Any], ref: str) -> str:
    """``'2.1x ='``: speed over the reference and whether the output bytes were the same."""
    if ref not in case["ratios"]:
        return ""
    same = case["same_output"].get(ref)
    mark = "" if same is None else ("=" if same else "≠")
    return _fmt_ratio(case["ratios"][ref]) + mark


def _spread(case: dict[str, Any]) -> str:
    half = (case["seconds_max"] - case["seconds_min"]) / 2 / case["seconds"]
    return f"±{100 * half:.0f}%"


def _published_cell(case: dict[str, Any]) -> str:
    pub = case.get("published")
    if not pub:
        return ""
    lo, hi = pub["params_per_s"]
    return f"{lo / 1e6:.0f}-{hi / 1e6:.0f}M"


def _short_op(case: dict[str, Any]) -> str:
    what = case["layout"] if case["op"] in ("repack", "unpack") else case["qtype"]
    return f"{case['op']} {what}"


def _machine_lines(m: dict[str, Any]) -> list[str]:
    v = m["versions"]
    gpu = m.get("gpu")
    gpu_text = f"{gpu['name']} ({human_bytes(gpu['memory_bytes'])})" if gpu else "none"
    load = m.get("load_before") or {}
    return [
        f"CPU       {m['cpu_model']} ({m['arch']})",
        f"cores     {m['cores_logical']} logical, {m['cores_physical']} physical, "
        f"{m['cores_available']} available, {m['cores_used']} used by the parallel kernels",
        f"memory    {human_bytes(m['memory_total_bytes'])} total, "
        f"{human_bytes(m['memory_available_bytes'])} available",
        f"GPU       {gpu_text}",
        f"software  Python {m['python']}, numpy {v['numpy']}, numba {v['numba'] or '-'}, "
        f"cupy {v['cupy'] or '-'}, gguf {v['gguf'] or '-'}, ggml-python {v['ggml-python'] or '-'}",
        f"load      {load.get('cpu_busy_percent', float('nan')):.0f}% of CPU time in use, load "
        f"average {load.get('loadavg_1m', float('nan')):.2f}, before the run",
    ]


def _table(title: str, columns: list[tuple[str, str]]) -> Any:
    from rich import box
    from rich.table import Table

    # one space between columns and no borders: the widest table fits 80 columns
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 0),
        show_edge=False,
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    return table


def render(doc: dict[str, Any]) -> None:
    """Print the report as rich tables on stdout."""
    from rich.console import Console

    console = Console(highlight=False)
    console.print(f"[bold]nntrtool {doc['nntrtool_version']} bench[/]  {doc['created']}")
    for line in _machine_lines(doc["machine"]):
        console.print(line)
    kernels = [c for c in doc["cases"] if c["op"] != "convert"]
    for rows, cols in dict.fromkeys(tuple(c["shape"]) for c in kernels):
        console.print(_kernel_table(kernels, rows, cols))
    firsts = [c for c in kernels if c["first_call_s"] is not None]
    if firsts:
        console.print(_first_call_table(firsts))
    e2e = [c for c in doc["cases"] if c["op"] == "convert"]
    if e2e:
        console.print(_e2e_table(e2e))
    pub = doc["published"]
    console.print(
        "[dim]vs X: nntrtool's params/s over X's on the same input (ggml: its C reference on "
        "one thread; gguf: its numpy code); '=' same bytes as X, '≠' different. spread: half "
        "the min-max range of the repeats. GB/s: the larger of input and output. orig.: "
        f"{pub['source']}, params/s ({pub['cpu_setting']}; for cupy, {pub['gpu_setting']}).[/]"
    )
    for s in doc["skipped"]:
        console.print(f"[yellow]skipped[/] {s['what']}: {s['reason']}")
    for note in doc["notes"]:
        console.print(f"[yellow]note[/] {note}")


def _kernel_table(kernels: list[dict[str, Any]], rows: int, cols: int) -> Any:
    """The kernel cases of one matrix size, one section per operation."""
    refs = list(dict.fromkeys(c["backend"] for c in kernels if c["reference"]))
    table = _table(
        f"float32 {rows}x{cols} ({human_count(rows * cols)} params) in memory, "
        "median of the repeats",
        [
            ("case", "left"),
            ("backend", "left"),
            ("median", "right"),
            ("spread", "right"),
            ("params/s", "right"),
            ("GB/s", "right"),
        ]
        + [(f"vs {_REF_LABEL.get(r, r)}", "right") for r in refs]
        + [("orig.", "right")],
    )
    previous = None
    for c in (c for c in kernels if tuple(c["shape"]) == (rows, cols)):
        if previous is not None and _short_op(c) != previous:
            table.add_section()
        label = "" if _short_op(c) == previous else _short_op(c)
        previous = _short_op(c)
        table.add_row(
            label,
            _REF_LABEL.get(c["backend"], c["backend"]),
            _fmt_s(c["seconds"]),
            _spread(c),
            _rate(c["params_per_s"]),
            f"{c['gb_per_s']:.2f}",
            *[_ratio_cell(c, r) for r in refs],
            _published_cell(c),
            style="dim" if c["reference"] else None,
        )
    return table


def _first_call_table(firsts: list[dict[str, Any]]) -> Any:
    """Each kernel's first call in the process, per backend."""
    backends = list(dict.fromkeys(c["backend"] for c in firsts))
    table = _table(
        "First call in the process (tiny input): JIT compile or cache load",
        [("kernel", "left")] + [(b, "right") for b in backends],
    )
    by_kernel: dict[str, dict[str, float]] = {}
    for c in firsts:
        by_kernel.setdefault(_short_op(c), {})[c["backend"]] = c["first_call_s"]
    for kernel, times in by_kernel.items():
        table.add_row(kernel, *[_fmt_s(times[b]) if b in times else "" for b in backends])
    return table


def _e2e_table(e2e: list[dict[str, Any]]) -> Any:
    """The end-to-end conversions of the synthetic model."""
    table = _table(
        f"End to end: synthetic Llama-style bf16 safetensors model of "
        f"{human_count(e2e[0]['params'])} params, converted in a child process",
        [
            ("type", "left"),
            ("backend", "left"),
            ("median", "right"),
            ("runs", "right"),
            ("params/s", "right"),
            ("src GB/s", "right"),
            ("peak RSS", "right"),
            ("first", "right"),
            ("orig.", "right"),
        ],
    )
    for c in e2e:
        table.add_row(
            c["qtype"],
            c["backend"],
            _fmt_s(c["seconds"]),
            str(c["repeats"]),
            _rate(c["params_per_s"]),
            f"{c['gb_per_s']:.2f}",
            human_bytes(c["peak_rss_bytes"]) if c["peak_rss_bytes"] else "-",
            _fmt_s(c["first_call_s"]),
            _published_cell(c),
        )
    return table


def bench_command(
    size: Optional[list[str]] = typer.Option(  # noqa: UP045 (typer needs Optional here)
        None,
        "--size",
        "-s",
        metavar="ROWSxCOLS",
        help="Matrix size to measure (repeatable). Default 4096x4096 and 11008x4096.",
    ),
    repeats: Optional[int] = typer.Option(  # noqa: UP045
        None, "--repeats", "-r", min=1, help="Timed repeats per case (default 5, 3 with --quick)."
    ),
    e2e_params: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--e2e-params",
        metavar="N",
        help="Parameters of the synthetic model converted end to end, e.g. 1e9, 250M; 0 skips "
        "(default 1e9, 2e7 with --quick).",
    ),
    backend: Optional[list[str]] = typer.Option(  # noqa: UP045
        None,
        "--backend",
        "-b",
        metavar="auto|numpy|numba|cupy",
        help="Backend to measure (repeatable). Default: every available one; the end-to-end "
        "run uses the first given, or auto.",
    ),
    qtype: Optional[list[str]] = typer.Option(  # noqa: UP045
        None,
        "--type",
        "-t",
        metavar="TYPE",
        help=f"Quantization type to measure (repeatable): {', '.join(QUANT_TYPE_NAMES)}. "
        "Default: every one for the kernels, q4_0 and q6_k end to end.",
    ),
    threads: Optional[int] = typer.Option(  # noqa: UP045
        None, "--threads", min=1, help="CPU threads for the parallel kernels (default: all)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A run of seconds: small sizes, few repeats."
    ),
    no_reference: bool = typer.Option(
        False, "--no-reference", help="Skip ggml's C reference and gguf's numpy quantizers."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    output: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--output", "-o", help="Also save the JSON results to this file."
    ),
    workdir: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--workdir", help="Where the synthetic model is written (default: the temp folder)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines on stderr."),
) -> None:
    """Measure quantize, dequantize, repack and end-to-end conversion speed on this machine."""
    from nntrtool.bench import (
        E2E_TYPES,
        QUANT_TYPES,
        BenchOptions,
        parse_count,
        parse_size,
        run_bench,
    )
    from nntrtool.errors import UsageError

    changes: dict[str, Any] = {}
    if size:
        changes["sizes"] = tuple(parse_size(s) for s in size)
    if repeats is not None:
        changes["repeats"] = repeats
    if e2e_params is not None:
        changes["e2e_params"] = parse_count(e2e_params)
    if backend:
        names = [b.strip().lower() for b in backend]
        for b in names:
            if b not in ("auto", "numpy", "numba", "cupy"):
                raise UsageError(f"--backend {b!r}: choose auto, numpy, numba or cupy")
        changes["backends"] = tuple(names)
    if qtype:
        types = tuple(dict.fromkeys(t.strip().lower() for t in qtype))
        for t in types:
            if t not in QUANT_TYPES:
                raise UsageError(f"--type {t!r}: choose {', '.join(QUANT_TYPES)}")
        changes["qtypes"] = types
        changes["e2e_types"] = tuple(t for t in types if t in E2E_TYPES) or types
    if threads is not None:
        changes["threads"] = threads
    if no_reference:
        changes["references"] = False
    if workdir is not None:
        changes["workdir"] = str(workdir)
    options = BenchOptions.quick_defaults(**changes) if quick else BenchOptions(**changes)
    if output is not None and (output.is_dir() or not output.absolute().parent.is_dir()):
        raise UsageError(f"--output {output}: give a file name in an existing folder")

    log = None
    if not quiet:
        console = stderr_console()

        def log(message: str) -> None:
            console.print(f"bench: {message}", style="dim", markup=False)

    report = run_bench(options, log=log)
    doc = report.to_dict()
    text = json.dumps(doc, indent=2)
    if output is not None:
        try:
            output.write_text(text + "\n")
        except OSError as err:
            raise UsageError(
                f"--output {output}: cannot write ({err.strerror}); choose a file you can write to"
            ) from None
    if json_out:
        sys.stdout.write(text + "\n")
    else:
        render(doc)
