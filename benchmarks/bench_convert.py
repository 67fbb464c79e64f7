"""End-to-end conversion benchmark: throughput and peak memory on synthetic bf16 models.

Builds Llama-style bf16 models with numpy (``nntrtool.synthetic.make_synthetic_model``),
reads each once so it sits in the page cache, then converts it in a fresh child process per
run and reports parameters per second (the conversion call's own clock) and the child's peak
resident memory (``wait4`` rusage, the figure ``/usr/bin/time -v`` prints).

    python benchmarks/bench_convert.py                       # 1.2 B params, q4_0 and q6_k
    python benchmarks/bench_convert.py --params 3e9 --double # 6 GB model, then 12 GB: memory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from nntrtool.convert import ConvertOptions, convert
spec = json.loads(sys.argv[1])
opts = ConvertOptions(quant_type=spec["qtype"], repack_format=spec["repack"], force=True,
                      threads=spec["threads"], backend=spec["backend"])
u0 = resource.getrusage(resource.RUSAGE_SELF)
r = convert(spec["src"], spec["out"], opts)
u1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
print(json.dumps({"seconds": r.seconds, "write_seconds": r.write_seconds, "params": r.params,
                  "file_size": r.file_size, "backend": r.backend, "threads": r.threads,
                  "cpu_seconds": cpu, "stages": r.stages,
                  "process_seconds": time.perf_counter() - t0}))
"""

KERNEL_CHILD = """
import json, sys, time
import numpy as np
from nntrtool.quant import quantize
from nntrtool.sources import open_source
spec = json.loads(sys.argv[1])
quantize(np.zeros((8, 256), np.uint16), spec["qtype"], source_dtype="BF16")
n, t0 = 0, time.perf_counter()
with open_source(spec["src"]) as src:
    for t in src.tensors:
        if len(t.shape) != 2:
            continue
        step = max(8, (16 << 20) // (2 * t.cols) // 8 * 8)
        for b in range(0, t.rows, step):
            x = t.read(b, min(t.rows, b + step))
            quantize(x, spec["qtype"], source_dtype=t.dtype)
            n += x.size
print(json.dumps({"params": n, "seconds": time.perf_counter() - t0}))
"""


def warm_cache(folder: Path) -> float:
    """Read every file of ``folder`` once so the benchmark measures conversion, not the disk."""
    t0 = time.perf_counter()
    for f in sorted(folder.iterdir()):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass
    return time.perf_counter() - t0


def run_child(spec: dict, code: str = CHILD) -> dict:
    """One conversion in a fresh process; its result plus the child's peak RSS in bytes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(spec)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"conversion failed with exit code {proc.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["peak_rss"] = usage.ru_maxrss * 1024
    return result


def build(folder: Path, n_params: float) -> Path:
    from nntrtool.synthetic import make_synthetic_model

    if (folder / "config.json").exists():
        return folder
    t0 = time.perf_counter()
    make_synthetic_model(
        folder, n_params, dtype="bf16", hidden=2048, vocab=32000, intermediate=8192, kv_heads=32,
        at_least=False,
    )  # fmt: skip
    print(f"built {folder} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return folder


def source_params(folder: Path) -> tuple[int, int]:
    from nntrtool.sources import open_source

    with open_source(folder) as src:
        return sum(t.numel for t in src.tensors), sum(t.nbytes for t in src.tensors)


def bench_model(folder: Path, args: argparse.Namespace, out_dir: Path) -> list[dict]:
    params, nbytes = source_params(folder)
    # Building leaves gigabytes of dirty pages; while the kernel writes them back every
    # writer is throttled, which would be charged to the conversion's own output.
    os.sync()
    warm = warm_cache(folder)
    print(
        f"\n{folder.name}: {params / 1e9:.3f} G params, {nbytes / 2**30:.2f} GiB bf16 "
        f"(page cache warmed in {warm:.1f} s)"
    )
    rows = []
    for qtype in args.types:
        repack = args.repack if qtype == "q4_0" else None
        spec = {
            "src": str(folder),
            "out": str(out_dir / f"{folder.name}.{qtype}.nntr"),
            "qtype": qtype,
            "repack": repack,
            "threads": args.threads,
            "backend": args.backend,
        }
        best = None
        for _ in range(args.repeats):
            r = run_child(spec)
            if best is None or r["seconds"] < best["seconds"]:
                best = r
            os.unlink(spec["out"])
        assert best is not None
        best.update(qtype=qtype, repack=repack, model=folder.name, source_bytes=nbytes)
        rows.append(best)
        cores = best["threads"] or os.cpu_count() or 1
        print(
            f"  {qtype:5s}{'+' + repack if repack else '':8s} {best['params'] / best['seconds'] / 1e6:8.1f} "
            f"M params/s  ({best['seconds']:.2f} s convert, {best['process_seconds']:.2f} s in "
            f"process)  peak RSS {best['peak_rss'] / 2**20:7.1f} MiB  "
            f"out {best['file_size'] / 2**30:.2f} GiB  [{best['backend']}, {best['threads']} threads]"
        )
        print(
            f"        cpu {best['cpu_seconds']:.2f} s = {best['params'] / best['cpu_seconds'] * cores / 1e6:.1f} "
            f"M params/s if {cores} cores were all ours; stages "
            + ", ".join(f"{k} {v:.2f} s" for k, v in best["stages"].items())
        )
        if args.kernel_only:
            k = run_child(spec, KERNEL_CHILD)
            best["kernel_only"] = k["params"] / k["seconds"]
            print(
                f"        quantize calls alone, same chunks: {best['kernel_only'] / 1e6:.1f} M params/s"
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=1.2e9, help="parameters of the model")
    ap.add_argument("--types", default="q4_0,q6_k", help="comma-separated quant types")
    ap.add_argument("--repack", default=None, help="repack format for q4_0 (default none)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="runs per type; the best is shown")
    ap.add_argument("--double", action="store_true", help="also a model of twice the size")
    ap.add_argument("--kernel-only", action="store_true", help="also time the quantize calls alone")
    ap.add_argument("--dir", default="/tmp/nntrtool-bench", help="where models are built")
    ap.add_argument("--keep", action="store_true", help="keep the built models")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args()
    args.types = [t.strip() for t in args.types.split(",") if t.strip()]

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [args.params] + ([2 * args.params] if args.double else [])
    print(
        f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    rows: list[dict] = []
    try:
        for n in sizes:
            folder = build(work / f"synthetic-{n / 1e9:.2f}B", n)
            rows += bench_model(folder, args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.double:
        print("\npeak RSS, model of twice the size vs the base model:")
        for qtype in args.types:
            a, b = [r for r in rows if r["qtype"] == qtype]
            print(
                f"  {qtype}: {a['peak_rss'] / 2**20:.1f} MiB -> {b['peak_rss'] / 2**20:.1f} MiB "
                f"({100 * (b['peak_rss'] / a['peak_rss'] - 1):+.1f}%)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
