"""First-run benchmark: README's example commands as a new user runs them, and again warm.

Each command runs in a new process (``python -m nntrtool``, so interpreter start and imports
count) with numba's cache pointed at an empty folder, as on a machine that never ran
nntrtool; then once more with that folder as the first run left it ("warm"). The same is
done with ``NNTRTOOL_BACKEND=numba``, which forces the numba kernels whatever the job's size,
as every command did before ``auto`` learned to skip the compile; both in the same run, so
the ratio holds under whatever load the machine has. The inputs of verify, repack and
export are made beforehand and not timed.

    python benchmarks/bench_first_run.py                 # best of 3, the five commands
    python benchmarks/bench_first_run.py --kernels       # also: compile time of each kernel
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny-llama"
#: The checkout whose nntrtool runs (``--root``: e.g. an older commit, for a before/after).
PACKAGE_ROOT = ROOT


def commands(work: Path) -> dict[str, list[str]]:
    """The timed commands; their inputs are made by :func:`prepare`."""
    ex = str(EXAMPLE)
    return {
        "convert q4_0": ["convert", ex, str(work / "out-q4_0.nntr"), "--quant-type", "q4_0"],
        "convert q6_k": ["convert", ex, str(work / "out-q6_k.nntr"), "--quant-type", "q6_k"],
        "verify q6_k": ["verify", str(work / "q6_k.nntr"), ex],
        "repack q4_0_8": ["repack", str(work / "q4_0.nntr"), str(work / "out-r.nntr"), "-f", "q4_0_8"],
        "export nntrainer": [
            "export", str(work / "mixed.nntr"), str(work / "out-export"), "--target", "nntrainer",
        ],
    }  # fmt: skip


def _env(cache: Path, backend: str | None) -> dict[str, str]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), NNTRTOOL_BACKGROUND_COMPILE="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env.pop("NNTRTOOL_BACKEND", None)
    if backend:
        env["NNTRTOOL_BACKEND"] = backend
    return env


def run(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``python -m nntrtool ARGS --quiet`` in a new process."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nntrtool", *args, "--quiet"],
        env=env,
        cwd=tempfile.gettempdir(),  # not a checkout, whose nntrtool would come first
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return seconds


def _clean_outputs(work: Path) -> None:
    for p in work.glob("out-*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def prepare(work: Path) -> None:
    """The files verify, repack and export read (numpy backend, nothing compiled)."""
    env = _env(work / "prepare-cache", "numpy")
    ex = str(EXAMPLE)
    run(["convert", ex, str(work / "q4_0.nntr"), "--quant-type", "q4_0"], env)
    run(["convert", ex, str(work / "q6_k.nntr"), "--quant-type", "q6_k"], env)
    mixed = ["--quant-type", "q4_0", "--type", "embed_tokens=q6_k"]
    run(["convert", ex, str(work / "mixed.nntr"), *mixed], env)


def bench_commands(work: Path, repeats: int, modes: list[str]) -> list[dict]:
    """Best of ``repeats`` for each command, mode (auto / numba) and cache state (empty / warm)."""
    rows = []
    for name, args in commands(work).items():
        for mode in modes:
            first, warm = [], []
            for i in range(repeats):
                cache = work / f"cache-{name.replace(' ', '-')}-{mode}-{i}"
                env = _env(cache, None if mode == "auto" else "numba")
                first.append(run(args, env))
                _clean_outputs(work)
                warm.append(run(args, env))
                _clean_outputs(work)
                shutil.rmtree(cache, ignore_errors=True)
            rows.append({"command": name, "backend": mode, "first_s": min(first),
                         "warm_s": min(warm), "first_all": first, "warm_all": warm})  # fmt: skip
            print(
                f"  {name:17s} {mode:6s} first {min(first):6.2f} s   warm {min(warm):6.2f} s",
                flush=True,
            )
    return rows


KERNEL_CHILD = """
import sys, time
t0 = time.perf_counter()
import numba
from nntrtool.quant import _numba_common
t1 = time.perf_counter()
from nntrtool.quant._compile_kernels import compile_kernel
compile_kernel(sys.argv[1])
print(t1 - t0, time.perf_counter() - t1)
"""


def bench_kernels(work: Path) -> list[dict]:
    """Compile seconds of each kernel alone in a new process with an empty cache, then the
    seconds to load it from that cache (numba's import counted apart)."""
    from nntrtool.quant.kernel_cost import COMPILE_S

    rows = []
    for kernel in COMPILE_S:
        cache = work / f"kcache-{kernel}"
        env = _env(cache, None)
        times = []
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-c", KERNEL_CHILD, kernel], env=env, capture_output=True,
                text=True, check=True, cwd=tempfile.gettempdir(),
            ).stdout.split()  # fmt: skip
            times.append([float(x) for x in out])
        shutil.rmtree(cache, ignore_errors=True)
        row = {"kernel": kernel, "import_s": times[0][0], "compile_s": times[0][1],
               "cached_s": times[1][1], "model_s": COMPILE_S[kernel]}  # fmt: skip
        rows.append(row)
        print(
            f"  {kernel:22s} compile {row['compile_s']:5.2f} s (model {row['model_s']:.1f})  "
            f"cached {row['cached_s']:.2f} s  numba import {row['import_s']:.2f} s",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per case; the best is shown")
    ap.add_argument("--kernels", action="store_true", help="also time each kernel's compile")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    ap.add_argument("--root", default=None, help="run the nntrtool of this checkout instead")
    ap.add_argument("--modes", default="auto,numba", help="NNTRTOOL_BACKEND values to time")
    args = ap.parse_args()
    global PACKAGE_ROOT
    if args.root:
        PACKAGE_ROOT = Path(args.root).resolve()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    load = os.getloadavg()[0]
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, load average {load:.1f}")
    print(f"nntrtool from {PACKAGE_ROOT}")
    work = Path(tempfile.mkdtemp(prefix="nntrtool-first-run-"))
    try:
        prepare(work)
        print("commands (wall time of a new process; first = empty numba cache):")
        result = {"load_before": load, "commands": bench_commands(work, args.repeats, modes)}
        if args.kernels:
            print("kernels (each alone in a new process):")
            result["kernels"] = bench_kernels(work)
        result["load_after"] = os.getloadavg()[0]
        print(f"load average after: {result['load_after']:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
