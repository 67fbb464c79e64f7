"""Byte-identity check: convert a fixed set of small models and record the SHA-256 of every output.

Builds seeded models with the test helpers (tests/models.py, tests/moe_models.py,
tests/gguf_models.py; a PEFT adapter as tests/test_lora.py makes them), runs the ``nntrtool``
command line on them in a subprocess (``python -m nntrtool``, so ``PYTHONPATH`` chooses the
checkout under test) and prints a JSON map ``case -> {file: sha256}``. The files record the
absolute path of their source, so each file is hashed with the scratch folder's path replaced
by ``<work>``; the folder's name has a fixed length (``/tmp/nntrtool-golden-XXXXXXXX``), so
that the metadata, and the offsets after it, do not move between runs.

    python tools/golden.py --out benchmarks/results/golden-6ee9c13.json
    python tools/golden.py --compare benchmarks/results/golden-6ee9c13.json

``--compare`` exits 1 and lists every case and file whose hash differs, is missing or is new.
The ``sources`` case hashes the built models themselves: if it differs, the test helpers (or
the libraries they use) changed, and the other differences say nothing about nntrtool.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What :func:`build_sources` returns.
SOURCE_NAMES = ("llama", "qwen3", "moe", "gpt_oss", "gguf", "lora", "text")

#: Calibration text for ``nntrtool imatrix`` (fixed; a few chunks of 32 tokens).
TEXT = (
    "The quick brown fox jumps over the lazy dog. " * 6
    + "Pack my box with five dozen liquor jugs. " * 6
    + "How vexingly quick daft zebras jump! " * 6
)


def _helpers() -> dict[str, Callable]:
    """The model builders of this checkout's tests/ folder."""
    for p in (str(ROOT / "tests"), str(ROOT)):
        if p not in sys.path:
            sys.path.insert(0, p)
    import gguf_models
    import models
    import moe_models

    return {
        "make_hf_model": models.make_hf_model,
        "add_tokenizer": models.add_tokenizer,
        "Q6K": models.Q6K,
        "save_qwen3_moe": moe_models.save_qwen3_moe,
        "save_gpt_oss": moe_models.save_gpt_oss,
        "pack_gpt_oss_mxfp4": moe_models.pack_gpt_oss_mxfp4,
        "write_gguf": gguf_models.write_gguf,
    }


def make_adapter(base: Path, out: Path, *, seed: int = 0, **config) -> Path:
    """A PEFT adapter of ``base`` with random weights everywhere, saved in ``out`` (as
    tests/test_lora.py makes them; PEFT initialises lora_B and embedding factors to zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)  # PEFT draws lora_A from torch's global generator
    pm = get_peft_model(model, LoraConfig(**config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if any(k in name for k in ("lora_B", "lora_embedding", "modules_to_save")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    pm.save_pretrained(out, safe_serialization=True)
    cfg_path = out / "adapter_config.json"  # PEFT writes target_modules from a set
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def build_sources(src: Path) -> dict[str, Path]:
    """Every source model, seeded: dense llama and qwen3 (Q6_K-sized, with tokenizers), a
    Qwen3-MoE, a GPT-OSS packed in MXFP4, a GGUF of the llama, a PEFT adapter of it."""
    h = _helpers()
    out: dict[str, Path] = {}
    out["llama"] = h["make_hf_model"](src / "llama", "llama", seed=0, **h["Q6K"])
    h["add_tokenizer"](out["llama"])
    out["qwen3"] = h["make_hf_model"](src / "qwen3", "qwen3", seed=1, **h["Q6K"])
    h["add_tokenizer"](out["qwen3"])
    out["moe"] = h["save_qwen3_moe"](src / "qwen3-moe", seed=0)
    gpt_oss = h["save_gpt_oss"](src / "gpt-oss-unpacked", seed=0)
    out["gpt_oss"] = h["pack_gpt_oss_mxfp4"](gpt_oss, src / "gpt-oss")
    out["gguf"] = h["write_gguf"](
        out["llama"],
        src / "llama.gguf",
        types={"q_proj": "Q4_K", "k_proj": "Q6_K", "mlp": "Q8_0", "o_proj": "Q4_0"},
        default_type="F16",
    )
    out["lora"] = make_adapter(
        out["llama"],
        src / "adapter",
        seed=0,
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "embed_tokens"],
        modules_to_save=["lm_head"],
    )
    out["text"] = src / "calibration.txt"
    out["text"].write_text(TEXT)
    return out


def _cases(s: dict[str, Path], o: Path) -> list[tuple[str, list[str], Path]]:
    """``(case, nntrtool arguments, output file or folder)`` in the order they must run."""

    def conv(name: str, src: Path, *opts: str) -> tuple[str, list[str], Path]:
        return name, ["convert", str(src), str(o / f"{name}.nntr"), "-q", *opts], o / f"{name}.nntr"

    def exp(name: str, nntr: str, *opts: str) -> tuple[str, list[str], Path]:
        return name, ["export", str(o / f"{nntr}.nntr"), str(o / name), *opts], o / name

    imx = o / "imatrix.gguf"  # the text is given relative to the scratch folder, which
    # the commands run in: the imatrix file records it, and the outputs its checksum
    return [
        conv("llama-q4_0", s["llama"], "--quant-type", "q4_0"),
        conv("llama-q8_0", s["llama"], "--quant-type", "q8_0"),
        conv("llama-f32", s["llama"], "--quant-type", "f32"),
        conv("llama-q6_k", s["llama"], "--quant-type", "q6_k"),
        conv("qwen3-q6_k", s["qwen3"], "--quant-type", "q6_k"),
        conv("qwen3-q4_0", s["qwen3"], "--quant-type", "q4_0"),
        conv("llama-q4_0-r8", s["llama"], "--quant-type", "q4_0", "--repack-format", "q4_0_8"),
        conv("llama-q4_0-r4", s["llama"], "--quant-type", "q4_0", "--repack-format", "q4_0_4"),
        conv("llama-q4_0-r4x4", s["llama"], "--quant-type", "q4_0", "-r", "q4_0_4x4"),
        conv("llama-type-override", s["llama"], "--type", "mlp=q8_0", "--keep-f32", "o_proj"),
        conv("llama-head-q6_k", s["llama"], "--quant-type", "q4_0", "--head-type", "q6_k"),
        conv("qwen3-head-q8_0", s["qwen3"], "--quant-type", "q4_0", "--head-type", "q8_0"),
        (
            "repack-q4_0_4",
            ["repack", str(o / "llama-q4_0.nntr"), str(o / "repack-q4_0_4.nntr"), "-q"]
            + ["--format", "q4_0_4"],
            o / "repack-q4_0_4.nntr",
        ),
        (
            "repack-none",
            ["repack", str(o / "llama-q4_0-r8.nntr"), str(o / "repack-none.nntr"), "-q"]
            + ["--format", "none"],
            o / "repack-none.nntr",
        ),
        conv("moe-q4_0", s["moe"], "--quant-type", "q4_0"),
        conv("moe-q8_0", s["moe"], "--quant-type", "q8_0"),
        conv("gpt-oss-default", s["gpt_oss"]),
        conv("gpt-oss-q4_0", s["gpt_oss"], "--quant-type", "q4_0"),
        conv("gguf-keep", s["gguf"]),
        conv("gguf-q4_0", s["gguf"], "--quant-type", "q4_0"),
        conv("gguf-q6_k", s["gguf"], "--quant-type", "q6_k"),
        (
            "imatrix",
            [
                "imatrix",
                str(s["llama"]),
                "--text",
                os.path.relpath(s["text"], o.parent),
                "-o",
                str(imx),
            ]
            + ["--ctx", "32", "-q"],
            imx,
        ),
        conv("llama-q4_0-imatrix", s["llama"], "--quant-type", "q4_0", "--imatrix", str(imx)),
        conv("llama-q6_k-imatrix", s["llama"], "--quant-type", "q6_k", "--imatrix", str(imx)),
        conv("llama-q4_0-lora", s["llama"], "--quant-type", "q4_0", "--lora", str(s["lora"])),
        conv(
            "llama-f32-lora",
            s["llama"],
            "--quant-type",
            "f32",
            "--lora",
            str(s["lora"]),
            "--lora-scale",
            "0.5",
        ),
        conv(
            "llama-q4_0-emb-q6_k", s["llama"], "--quant-type", "q4_0", "--type", "embed_tokens=q6_k"
        ),
        conv("moe-q4_0-emb-f32", s["moe"], "--quant-type", "q4_0", "--keep-f32", "embed_tokens"),
        exp("export-llama-x86", "llama-q4_0-emb-q6_k", "--target", "nntrainer"),
        exp("export-llama-arm", "llama-q4_0-emb-q6_k", "--target", "nntrainer", "--isa", "arm"),
        exp("export-llama-f32", "llama-f32", "--target", "nntrainer"),
        exp("export-moe", "moe-q4_0-emb-f32", "--target", "nntrainer"),
        conv("target-qwen3", s["qwen3"], "--quant-type", "q4_0", "--target", "nntrainer"),
        conv("target-moe-arm", s["moe"], "--target", "nntrainer", "--isa", "arm"),
    ]


def sha256(path: Path, work: Path | None = None) -> str:
    """SHA-256 of a file's bytes, with every occurrence of the folder ``work`` (the path of
    the scratch folder, which the files record) replaced by ``<work>``."""
    data = path.read_bytes()
    if work is not None:
        data = data.replace(str(work).encode(), b"<work>")
    return hashlib.sha256(data).hexdigest()


def hash_tree(path: Path, work: Path | None = None) -> dict[str, str]:
    """``{relative file name: sha256}`` of a file, or of every file under a folder."""
    if path.is_file():
        return {path.name: sha256(path, work)}
    files = (p for p in sorted(path.rglob("*")) if p.is_file())
    return {str(p.relative_to(path)): sha256(p, work) for p in files}


def run_cases(work: Path) -> dict[str, dict[str, str]]:
    """Build the sources in the empty folder ``work``, run every case, hash every output."""
    src, out = work / "src", work / "out"
    src.mkdir()
    out.mkdir()
    sources = build_sources(src)
    result: dict[str, dict[str, str]] = {"sources": {}}
    for name, path in sources.items():
        for rel, digest in hash_tree(path, work).items():
            result["sources"][f"{name}/{rel}" if path.is_dir() else rel] = digest
    for case, args, target in _cases(sources, out):
        proc = subprocess.run(
            [sys.executable, "-m", "nntrtool", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            cwd=work,
        )
        if proc.returncode != 0:
            result[case] = {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}
            print(f"{case}: FAILED (exit {proc.returncode})", file=sys.stderr)
            continue
        result[case] = hash_tree(target, work)
        print(f"{case}: {len(result[case])} file(s)", file=sys.stderr)
    return result


def compare(expected: dict[str, dict[str, str]], got: dict[str, dict[str, str]]) -> list[str]:
    """One line per difference between two hash maps (empty when they agree)."""
    lines = []
    for case in sorted(set(expected) | set(got)):
        if case not in got:
            lines.append(f"{case}: missing (expected {len(expected[case])} file(s))")
            continue
        if case not in expected:
            lines.append(f"{case}: new case")
            continue
        want, have = expected[case], got[case]
        for name in sorted(set(want) | set(have)):
            if name not in have:
                lines.append(f"{case}/{name}: missing")
            elif name not in want:
                lines.append(f"{case}/{name}: new file")
            elif want[name] != have[name]:
                lines.append(f"{case}/{name}: {want[name][:12]} -> {have[name][:12]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the JSON map here (default: stdout)")
    ap.add_argument("--compare", type=Path, metavar="FILE", help="exit 1 if outputs differ")
    ap.add_argument("--keep", action="store_true", help="leave the scratch folder in place")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nntrtool-golden-", dir="/tmp"))
    try:
        got = run_cases(work)
    finally:
        if args.keep:
            print(f"models and outputs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(got, indent=1, sort_keys=True) + "\n"
    if args.out:
        args.out.write_text(text)
    elif not args.compare:
        sys.stdout.write(text)
    failed = [c for c, files in got.items() if "error" in files]
    for case in failed:
        print(f"{case}: {got[case]['error']}", file=sys.stderr)
    if args.compare:
        diffs = compare(json.loads(args.compare.read_text()), got)
        for line in diffs:
            print(line)
        print(f"{len(diffs)} difference(s) from {args.compare}")
        return 1 if diffs else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
