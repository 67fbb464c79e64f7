"""The end-to-end benchmark: a synthetic bf16 model converted in a child process, so its peak
memory is its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nntrtool.bench.options import BenchOptions, Log
from nntrtool.bench.report import BenchReport, make_case, published_for
from nntrtool.bench.timing import Timing
from nntrtool.errors import DiskFullError, NntrError, UsageError

# ------------------------------------------------------------------------ end to end


def _vm_hwm() -> int | None:
    """This process's peak resident memory from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in the child process: a tiny warm-up conversion, then the timed ones."""
    clock = time.perf_counter
    t0 = clock()
    from nntrtool.convert import ConvertOptions, convert

    import_s = clock() - t0
    opts = ConvertOptions(
        quant_type=spec["qtype"], backend=spec["backend"], threads=spec["threads"], force=True
    )
    t0 = clock()
    convert(spec["warm_src"], spec["warm_out"], opts, progress=None)
    first = clock() - t0
    runs = []
    for _ in range(int(spec["repeats"])):
        t0 = clock()
        convert(spec["src"], spec["out"], opts, progress=None)
        runs.append(clock() - t0)
    out_bytes = os.path.getsize(spec["out"])
    peak = _vm_hwm()
    source = "VmHWM"
    if peak is None:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        source = "ru_maxrss"
    return {
        "import_s": import_s,
        "first_call_s": first,
        "runs": runs,
        "output_bytes": out_bytes,
        "peak_rss_bytes": peak,
        "peak_rss_source": source,
    }


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "nntrtool.bench", "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise NntrError(f"end-to-end conversion to {spec['qtype']} failed: {last}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise NntrError("end-to-end conversion printed no result")


def check_e2e_space(options: BenchOptions) -> Path:
    """The folder the end-to-end run writes to, after checking it exists and has room."""
    from nntrtool.synthetic import synthetic_shape

    base = Path(options.workdir) if options.workdir else Path(tempfile.gettempdir())
    if not base.is_dir():
        raise UsageError(f"--workdir {base}: not a folder; give an existing folder")
    n = synthetic_shape(options.e2e_params).n_params
    # bf16 source, plus the largest output (q8_0, 8.5 bits) with room for f32 norms, plus slack
    need = 2 * n + int(1.2 * n) + (64 << 20)
    free = shutil.disk_usage(base).free
    if free < need:
        from nntrtool.units import human_bytes

        raise DiskFullError(
            f"the end-to-end run needs {human_bytes(need)} free in {base}, which has "
            f"{human_bytes(free)}; choose --workdir elsewhere, a smaller --e2e-params, or 0"
        )
    return base


def e2e_cases(report: BenchReport, options: BenchOptions, backend: str, log: Log) -> None:
    from nntrtool.synthetic import make_synthetic_model, synthetic_shape

    base = check_e2e_space(options)
    shape = synthetic_shape(options.e2e_params)
    src_bytes = shape.n_params * 2
    with tempfile.TemporaryDirectory(prefix="nntrtool-bench-", dir=base) as tmp:
        root = Path(tmp)
        n = shape.n_params
        params_text = f"{n / 1e9:.3g}B" if n >= 1e8 else f"{n / 1e6:.3g}M"
        log(f"writing a synthetic bf16 model of {params_text} parameters in {root}")
        t0 = time.perf_counter()
        model = make_synthetic_model(root / "model", options.e2e_params, seed=options.seed)
        write_s = time.perf_counter() - t0
        warm = make_synthetic_model(root / "warm", layers=1, seed=options.seed + 1)
        for qtype in options.e2e_types:
            name = f"convert bf16 -> {qtype} {params_text}"
            log(f"{name} [{backend}]")
            spec = {
                "qtype": qtype,
                "backend": backend,
                "threads": options.threads,
                "repeats": options.e2e_repeats,
                "src": str(model),
                "out": str(root / f"out-{qtype}.nntr"),
                "warm_src": str(warm),
                "warm_out": str(root / f"warm-{qtype}.nntr"),
            }
            res = run_child(spec)
            timing = Timing(res["runs"], res["first_call_s"], None)
            note = (
                f"in a child process; first_call_s: a 1-layer model converted first, after "
                f"{res['import_s']:.2f} s of imports; peak RSS from {res['peak_rss_source']}; "
                f"the {params_text} model was written in {write_s:.1f} s"
            )
            report.cases.append(
                make_case(
                    name,
                    "convert",
                    backend,
                    timing,
                    params=n,
                    bytes_in=src_bytes,
                    bytes_out=res["output_bytes"],
                    qtype=qtype,
                    published=published_for(qtype, backend),
                    peak_rss_bytes=res["peak_rss_bytes"],
                    note=note,
                )
            )
            for p in (spec["out"], spec["warm_out"]):
                Path(p).unlink(missing_ok=True)
