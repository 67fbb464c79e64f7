"""One benchmark run: the kernel cases, then the end-to-end conversions, with ratios attached."""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict
from typing import Any

from nntrtool.bench.end_to_end import check_e2e_space, e2e_cases
from nntrtool.bench.kernels import References, kernel_cases, select_backends, set_threads, size_text
from nntrtool.bench.options import BUSY_PERCENT, BenchOptions, Log, no_log
from nntrtool.bench.report import BenchReport, CaseResult, load_snapshot, machine_info

# --------------------------------------------------------------------------------- run


def _attach_ratios(cases: list[CaseResult]) -> None:
    refs = {(c.name, c.backend): c for c in cases if c.reference}
    for c in cases:
        if c.reference:
            continue
        for (name, ref_backend), ref in refs.items():
            if name == c.name and ref.params_per_s > 0:
                c.ratios[ref_backend] = c.params_per_s / ref.params_per_s


def run_bench(options: BenchOptions, log: Log | None = None) -> BenchReport:
    """Run every case ``options`` asks for and return the report (never prints)."""
    log = log or no_log
    t_start = time.perf_counter()
    set_threads(options.threads)
    backends, e2e_backend = select_backends(options)
    run_e2e = options.e2e_params > 0 and bool(options.e2e_types)
    if run_e2e:
        check_e2e_space(options)  # fail before minutes of kernel timing, not after
    report = BenchReport(
        machine=machine_info(),
        options=_options_dict(options, backends, e2e_backend),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    report.machine["load_before"] = load_snapshot()
    busy = report.machine["load_before"]["cpu_busy_percent"]
    if busy is not None and busy > BUSY_PERCENT:
        report.notes.append(
            f"the machine was busy before the run ({busy:.0f}% of CPU time in use): "
            "figures may be lower than on an idle machine"
        )
    refs = References(report, options.references)
    try:
        kernel_cases(report, options, backends, refs, log)
    finally:
        refs.close()
    if run_e2e:
        e2e_cases(report, options, e2e_backend, log)
    else:
        report.skipped.append({"what": "end-to-end conversion", "reason": "--e2e-params 0"})
    _attach_ratios(report.cases)
    report.machine["load_after"] = load_snapshot(interval=0.1)
    report.seconds = time.perf_counter() - t_start
    return report


def _options_dict(options: BenchOptions, backends: list[str], e2e_backend: str) -> dict[str, Any]:
    d = asdict(options)
    d["sizes"] = [size_text(r, c) for r, c in options.sizes]
    d["backends"] = backends
    d["e2e_backend"] = e2e_backend
    return d
