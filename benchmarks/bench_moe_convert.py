"""Peak memory and throughput of converting synthetic mixture-of-experts models.

Builds a Qwen3-MoE (per-expert bf16 tensors) and a GPT-OSS (MXFP4-packed experts) model of
64 experts per layer at two sizes each (``nntrtool.synthetic_moe``), reads each once so it sits
in the page cache, converts it with ``/usr/bin/time -v nntrtool convert`` and reports the peak
resident memory and parameters per second (wall clock of the whole command), then deletes the
files. Peak RSS that does not grow with the model is the claim being checked.

    python benchmarks/bench_moe_convert.py --sizes 2e9 4e9 --out benchmarks/results/moe.txt
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nntrtool.synthetic_moe import make_synthetic_moe, moe_shape  # noqa: E402

#: (label, family, shape keywords, extra convert arguments)
CASES = (
    ("qwen3-moe bf16 -> q4_0", "qwen3_moe", {"inter": 768}, ["--quant-type", "q4_0"]),
    ("gpt-oss mxfp4 -> q8_0 (exact)", "gpt_oss", {"inter": 2048, "mxfp4": True}, []),
    (
        "gpt-oss mxfp4 -> q4_0 (decoded)",
        "gpt_oss",
        {"inter": 2048, "mxfp4": True},
        ["--type", r"mlp\.experts\.=q4_0"],
    ),
)


def _time_v(args: list[str]) -> tuple[int, float]:
    """Peak RSS in bytes and wall seconds of ``args`` under ``/usr/bin/time -v``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-v", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if run.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{run.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    return rss * 1024, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[2e9, 4e9])
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("/tmp/nntrtool-bench-moe"))
    ap.add_argument("--cases", type=int, nargs="*", help="indices into the case list")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    lines = [f"machine: {os.cpu_count()} cores; load average at start {os.getloadavg()}"]
    print(lines[0], flush=True)
    cases = [CASES[i] for i in args.cases] if args.cases else list(CASES)
    for label, family, kw, extra in cases:
        for size in args.sizes:
            shape = moe_shape(family, size, experts=args.experts, **kw)
            src, out = args.work / "src", args.work / "out.nntr"
            shutil.rmtree(args.work, ignore_errors=True)
            make_synthetic_moe(src, shape, shards=4)
            on_disk = sum(p.stat().st_size for p in src.glob("*.safetensors"))
            for p in src.glob("*.safetensors"):  # into the page cache
                with open(p, "rb") as f:
                    while f.read(64 << 20):
                        pass
            cmd = [sys.executable, "-m", "nntrtool", "convert", str(src), str(out), "-q"]
            rss, wall = _time_v([*cmd, "--force", *extra])
            line = (
                f"{label}: {shape.n_params / 1e9:.2f} B params ({shape.layers} layers x "
                f"{shape.experts} experts, {on_disk / 1e9:.2f} GB on disk) -> "
                f"{out.stat().st_size / 1e9:.2f} GB; peak RSS {rss / 2**20:.0f} MiB; "
                f"{wall:.1f} s wall = {shape.n_params / wall / 1e6:.0f} M params/s; "
                f"load {os.getloadavg()[0]:.1f}"
            )
            print(line, flush=True)
            lines.append(line)
            shutil.rmtree(args.work, ignore_errors=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
