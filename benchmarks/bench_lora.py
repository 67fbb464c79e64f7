"""``convert --lora`` against plain conversion: throughput and peak memory, side by side.

Builds a synthetic Llama-style bf16 model (as ``bench_convert.py`` does) and a synthetic PEFT
LoRA adapter for it (bf16 ``lora_A``/``lora_B`` of rank ``--rank`` on every linear layer of every
block: q, k, v, o, gate, up, down), warms the page cache, then converts in fresh child processes,
alternating plain and merged runs so both see the same machine load, best of ``--repeats``.

    python benchmarks/bench_lora.py --params 1.2e9 --rank 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_convert import build, run_child, source_params, warm_cache  # noqa: E402

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from nntrtool.convert import ConvertOptions, convert
from nntrtool.sources.lora import AdapterSpec
spec = json.loads(sys.argv[1])
adapters = tuple(AdapterSpec(a) for a in spec["adapters"])
opts = ConvertOptions(quant_type=spec["qtype"], force=True, adapters=adapters)
r = convert(spec["src"], spec["out"], opts)
print(json.dumps({"seconds": r.seconds, "params": r.params, "file_size": r.file_size,
                  "backend": r.backend, "threads": r.threads, "stages": r.stages,
                  "process_seconds": time.perf_counter() - t0}))
"""

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(model: Path, out: Path, rank: int, seed: int = 0) -> tuple[Path, int]:
    """A PEFT-format LoRA adapter (bf16) on every linear layer of ``model``; (folder, params)."""
    from nntrtool.sources import open_source
    from nntrtool.synthetic import safetensors_header, to_bf16_bits

    rng = np.random.default_rng(seed)
    entries: list[tuple[str, tuple[int, ...]]] = []
    with open_source(model) as src:
        for t in src.tensors:
            module = t.name.removesuffix(".weight")
            if t.ndim == 2 and module.rsplit(".", 1)[-1] in TARGETS:
                out_dim, in_dim = t.shape
                key = f"base_model.model.{module}"
                entries += [(f"{key}.lora_A.weight", (rank, in_dim)),
                            (f"{key}.lora_B.weight", (out_dim, rank))]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    header, _ = safetensors_header(entries, "BF16")
    with open(out / "adapter_model.safetensors", "wb") as f:
        f.write(header)
        for _, shape in entries:
            values = rng.standard_normal(shape, dtype=np.float32) / math.sqrt(shape[-1])
            f.write(to_bf16_bits(values).tobytes())
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS),
              "fan_in_fan_out": False, "use_rslora": False, "use_dora": False}  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out, sum(math.prod(s) for _, s in entries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=1.2e9, help="parameters of the model")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank of the adapter")
    ap.add_argument("--types", default="q4_0,q6_k", help="comma-separated quant types")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each; the best is shown")
    ap.add_argument("--dir", default="/tmp/nntrtool-bench-lora", help="where models are built")
    ap.add_argument("--keep", action="store_true", help="keep the built model and adapter")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args()

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    rows = []
    try:
        folder = build(work / f"synthetic-{args.params / 1e9:.2f}B", args.params)
        adapter, ad_params = make_adapter(folder, work / f"lora-r{args.rank}", args.rank)
        params, nbytes = source_params(folder)
        os.sync()
        warm_cache(folder)
        warm_cache(adapter)
        print(f"{folder.name}: {params / 1e9:.3f} G params, {nbytes / 2**30:.2f} GiB bf16; "
              f"adapter rank {args.rank} on {len(TARGETS)} linear layers per block, "
              f"{ad_params / 1e6:.1f} M params")  # fmt: skip
        for qtype in [t.strip() for t in args.types.split(",") if t.strip()]:
            # One uncounted run first: the kernels' JIT cache is filled on a first run.
            warm = {"src": str(folder), "out": str(work / "warm.nntr"), "qtype": qtype,
                    "adapters": [str(adapter)]}  # fmt: skip
            run_child(warm, CHILD)
            os.unlink(warm["out"])
            best: dict[str, dict] = {}
            for _ in range(args.repeats):
                for label, adapters in (("plain", []), ("lora", [str(adapter)])):
                    spec = {"src": str(folder), "out": str(work / f"out-{label}.nntr"),
                            "qtype": qtype, "adapters": adapters}  # fmt: skip
                    r = run_child(spec, CHILD)
                    os.unlink(spec["out"])
                    if label not in best or r["seconds"] < best[label]["seconds"]:
                        best[label] = r
            for label, r in best.items():
                r.update(
                    qtype=qtype, mode=label, rank=args.rank, params_per_s=r["params"] / r["seconds"]
                )
                rows.append(r)
                print(f"  {qtype:5s} {label:5s} {r['params_per_s'] / 1e6:8.1f} M params/s "
                      f"({r['seconds']:.2f} s)  peak RSS {r['peak_rss'] / 2**20:7.1f} MiB  "
                      f"[{r['backend']}, {r['threads']} threads]")  # fmt: skip
            ratio = best["lora"]["seconds"] / best["plain"]["seconds"]
            print(f"  {qtype:5s} merged / plain time: {ratio:.2f}x")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end ({time.strftime('%Y-%m-%d %H:%M')})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
