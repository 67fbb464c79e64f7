"""GGUF conversion benchmark: block copy speed, requantization speed and peak memory.

Builds Llama-style GGUFs with the ``gguf`` package's writer (valid block bytes: random codes,
fp16 scales set to small finite values), reads each once so it sits in the page cache, then
converts it in a fresh child process per run and reports parameters per second (the conversion
call's own clock), source GB/s and the child's peak resident memory (``wait4`` rusage). Side by
side in the same run, a plain file copy of the GGUF gives the disk/page-cache speed to compare
the block copy against.

    python benchmarks/bench_gguf.py                      # 0.5 B and 1 B params
    python benchmarks/bench_gguf.py --params 2e9 --json benchmarks/results/x.json

``--vocab N`` instead measures Gemma-3-270M-shaped GGUFs (tied N-token embedding, 640 hidden,
18 layers) end to end: ``nntrtool convert --quant-type keep`` in a fresh process (interpreter
start and imports included, the whole command's wall clock and the process's peak RSS) against a
durable copy of the same file (``cp`` then ``sync``) in the same run, for a 32000-token and an
N-token vocabulary and 4x the layers (after one unmeasured conversion per mix, which fills numba's
cache), and the time to open the file and to decode its vocabulary:

    python benchmarks/bench_gguf.py --vocab 262144 --json benchmarks/results/x.json
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


CHILD = """
import json, sys
from nntrtool.convert import ConvertOptions, convert
spec = json.loads(sys.argv[1])
opts = ConvertOptions(quant_type=spec["qtype"], force=True)
r = convert(spec["src"], spec["out"], opts)
hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
           if line.startswith("VmHWM:"))
print(json.dumps({"seconds": r.seconds, "write_seconds": r.write_seconds, "params": r.params,
                  "file_size": r.file_size, "threads": r.threads, "stages": r.stages,
                  "vm_hwm": hwm}))
"""

HIDDEN, INTER, VOCAB = 2048, 5632, 32000


def _blocks(rows: int, cols: int, type_name: str, rng: np.random.Generator) -> np.ndarray:
    """Random block rows of ``type_name`` with every fp16 scale a small finite number."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    data = rng.integers(0, 256, (rows, cols // block, nbytes), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    scales_at = {
        "Q4_0": (0,),
        "Q5_0": (0,),
        "Q8_0": (0,),
        "Q4_K": (0, 2),
        "Q5_K": (0, 2),
        "Q6_K": (nbytes - 2,),
    }
    for at in scales_at[type_name]:
        data[:, :, at : at + 2] = scale
    if type_name in ("Q4_K", "Q5_K"):
        data[:, :, 4:16] &= 0x3F  # 6-bit scales and mins, high bits clear: small finite values
    return data.reshape(rows, -1)


def build(path: Path, n_params: float, type_name: str) -> Path:
    """A llama GGUF of about ``n_params`` parameters, every matrix in ``type_name``."""
    import gguf

    if path.exists():
        return path
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER
    layers = max(1, round((n_params - 2 * VOCAB * HIDDEN) / per_layer))
    rng = np.random.default_rng(0)
    qtype = gguf.GGMLQuantizationType[type_name]
    shapes = {"sq": (HIDDEN, HIDDEN), "up": (INTER, HIDDEN), "down": (HIDDEN, INTER)}
    tmpl = {k: _blocks(r, c, type_name, rng) for k, (r, c) in shapes.items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HIDDEN // 128)
    w.add_head_count_kv(HIDDEN // 128)
    w.add_context_length(4096)
    w.add_vocab_size(VOCAB)
    w.add_tensor("token_embd.weight", _blocks(VOCAB, HIDDEN, type_name, rng), raw_dtype=qtype)
    w.add_tensor("output.weight", _blocks(VOCAB, HIDDEN, type_name, rng), raw_dtype=qtype)
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    for i in range(layers):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", tmpl["sq"], raw_dtype=qtype)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", tmpl["up"], raw_dtype=qtype)
        w.add_tensor(f"blk.{i}.ffn_up.weight", tmpl["up"], raw_dtype=qtype)
        w.add_tensor(f"blk.{i}.ffn_down.weight", tmpl["down"], raw_dtype=qtype)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


#: Gemma 3 270M's shapes: 640 hidden, 2048 FFN, 4 query heads and 1 KV head of 256, 18 layers.
GEMMA = {"hidden": 640, "inter": 2048, "layers": 18, "heads": 4, "kv_heads": 1, "head_dim": 256}

#: ggml type per tensor role. ``q4_k_m``: what llama.cpp's Q4_K_M gives these shapes (K-quants
#: where rows are whole 256-value blocks, else its fallbacks Q4_K -> Q5_0, Q6_K -> Q8_0; attn_v
#: and ffn_down one step up in the "more bits" layers). ``kept``: the same file with the types
#: nntrtool stores as they are (Q4_0 for Q4_K and Q5_0), so that ``keep`` copies every tensor.
MIXES = {
    "q4_k_m": {
        "token_embd": "Q8_0",
        "attn_q": "Q5_0",
        "attn_k": "Q5_0",
        "attn_v": ("Q8_0", "Q5_0"),
        "attn_output": "Q4_K",
        "ffn_gate": "Q5_0",
        "ffn_up": "Q5_0",
        "ffn_down": ("Q6_K", "Q4_K"),
    },
    "kept": {
        "token_embd": "Q8_0",
        "attn_q": "Q4_0",
        "attn_k": "Q4_0",
        "attn_v": ("Q8_0", "Q4_0"),
        "attn_output": "Q4_0",
        "ffn_gate": "Q4_0",
        "ffn_up": "Q4_0",
        "ffn_down": ("Q6_K", "Q4_0"),
    },
}


def _more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth, and every third layer between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def build_gemma(path: Path, vocab: int, mix: str, layers: int = GEMMA["layers"]) -> Path:
    """A Gemma-3-270M-shaped GGUF (tied embeddings, ``vocab`` tokens with scores and types,
    tensor types of ``MIXES[mix]``), random valid blocks, written with ``gguf.GGUFWriter``."""
    import gguf

    if path.exists():
        return path
    g = GEMMA
    h, q_rows, kv_rows = g["hidden"], g["heads"] * g["head_dim"], g["kv_heads"] * g["head_dim"]
    shapes = {
        "attn_q": (q_rows, h),
        "attn_k": (kv_rows, h),
        "attn_v": (kv_rows, h),
        "attn_output": (h, q_rows),
        "ffn_gate": (g["inter"], h),
        "ffn_up": (g["inter"], h),
        "ffn_down": (h, g["inter"]),
    }
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("bench-gemma3")
    w.add_context_length(32768)
    w.add_embedding_length(h)
    w.add_block_count(layers)
    w.add_feed_forward_length(g["inter"])
    w.add_head_count(g["heads"])
    w.add_head_count_kv(g["kv_heads"])
    w.add_key_length(g["head_dim"])
    w.add_value_length(g["head_dim"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_sliding_window(512)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tokens = special + [
        f"<0x{i - len(special):02X}>" if i < len(special) + 256 else "\u2581w" + format(i, "x")
        for i in range(len(special), vocab)
    ]
    w.add_token_list(tokens)
    w.add_token_scores((-np.arange(vocab, dtype=np.float32)).tolist())
    types = np.ones(vocab, np.int32)
    types[: len(special)] = 3
    types[len(special) : len(special) + 256] = 6
    w.add_token_types(types.tolist())
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    roles = MIXES[mix]

    def kind(role: str, layer: int) -> str:
        t = roles[role]
        return t if isinstance(t, str) else t[0 if _more_bits(layer, layers) else 1]

    def add(name: str, rows: int, cols: int, type_name: str) -> None:
        qtype = gguf.GGMLQuantizationType[type_name]
        w.add_tensor(name, _blocks(rows, cols, type_name, rng), raw_dtype=qtype)

    add("token_embd.weight", vocab, h, kind("token_embd", 0))
    w.add_tensor("output_norm.weight", np.ones(h, np.float32))
    for i in range(layers):
        for role, (rows, cols) in shapes.items():
            add(f"blk.{i}.{role}.weight", rows, cols, kind(role, i))
        for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(h, np.float32))
        for norm in ("attn_q_norm", "attn_k_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(g["head_dim"], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


CLI_CHILD = """
import sys
from nntrtool.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
           if line.startswith("VmHWM:"))
print("VmHWM", hwm, file=sys.stderr)
sys.exit(code)
"""


def run_cli(argv: list[str]) -> tuple[float, int]:
    """``nntrtool ARGV`` in a fresh interpreter: wall seconds of the whole process and its peak
    RSS (its own ``VmHWM``, read as it exits)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CLI_CHILD, *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"nntrtool {' '.join(argv)} failed:\n{proc.stderr}")
    hwm = int(proc.stderr.rsplit("VmHWM", 1)[1].split()[0])
    return wall, hwm


def durable_copy(src: Path, dst: Path) -> float:
    """Seconds of ``cp SRC DST && sync``: what writing the same bytes durably costs here."""
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", 'cp "$0" "$1" && sync', str(src), str(dst)], check=True)
    seconds = time.perf_counter() - t0
    dst.unlink()
    return seconds


def vocab_read(path: Path, compare_reader: bool) -> dict:
    """Seconds to open ``path`` (header, metadata, tensor records), to decode its vocabulary,
    and (``compare_reader``) to open it with ``gguf.GGUFReader``; one fresh process each."""
    code = """
import json, sys, time
t0 = time.perf_counter()
if sys.argv[2] == "reader":
    from gguf import GGUFReader
    r = GGUFReader(sys.argv[1], "r")
    n = len(r.fields["tokenizer.ggml.tokens"].data)
    out = {"reader_open": time.perf_counter() - t0}
else:
    from nntrtool.sources.gguf_file import GGUFFile
    t0 = time.perf_counter()
    g = GGUFFile(sys.argv[1])
    t1 = time.perf_counter()
    if hasattr(g, "array"):
        toks = g.array("tokenizer.ggml.tokens").tolist()
    else:  # nntrtool before its own metadata reader
        toks = g.field("tokenizer.ggml.tokens")
    t2 = time.perf_counter()
    n = len(toks)
    out = {"open": t1 - t0, "decode_tokens": t2 - t1, "tokens": n}
print(json.dumps(out))
"""
    result: dict = {}
    for mode in ("ours", "reader") if compare_reader else ("ours",):
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path), mode],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
        )
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return result


def bench_vocab(args: argparse.Namespace) -> list[dict]:
    """Keep conversions of Gemma-shaped GGUFs against a durable copy of each, plus the
    vocabulary's read times; see the module's docstring."""
    rows = []
    sizes = [
        (32000, GEMMA["layers"]),
        (args.vocab, GEMMA["layers"]),
        (args.vocab, 4 * GEMMA["layers"]),
    ]
    out = args.dir / "out.nntr"
    for mix in args.mix.split(","):
        for i, (vocab, layers) in enumerate(sizes):
            src = build_gemma(args.dir / f"gemma-{mix}-v{vocab}-l{layers}.gguf", vocab, mix, layers)
            warm_cache_file(src)
            if i == 0:  # unmeasured: compiles what numba has not cached yet (requantizing mixes)
                run_cli(["convert", str(src), str(out), "--quant-type", "keep", "--force", "-q"])
            load = os.getloadavg()[0]
            copy = durable_copy(src, args.dir / "copy.tmp")
            wall, hwm = run_cli(
                ["convert", str(src), str(out), "--quant-type", "keep", "--force", "--quiet"]
            )
            out.unlink(missing_ok=True)
            row = {
                "case": f"{src.name} --quant-type keep",
                "mix": mix,
                "vocab": vocab,
                "layers": layers,
                "source_bytes": src.stat().st_size,
                "copy_seconds": copy,
                "convert_seconds": wall,
                "bound_seconds": 1 + 4 * copy,
                "peak_rss": hwm,
                "load": load,
            }
            if vocab == args.vocab and layers == GEMMA["layers"]:
                row.update(vocab_read(src, args.compare_reader))
            rows.append(row)
            extra = "".join(
                f", {k} {row[k]:.3f} s"
                for k in ("open", "decode_tokens", "reader_open")
                if k in row
            )
            print(
                f"{src.name} ({row['source_bytes'] / 1e6:.0f} MB, load {load:.2f}): keep "
                f"{wall:.2f} s, peak RSS {hwm / 2**20:.0f} MiB; cp+sync {copy:.2f} s, bound "
                f"{row['bound_seconds']:.2f} s{extra}",
                flush=True,
            )
    return rows


def run_child(spec: dict) -> dict:
    """One conversion in a fresh process; its result plus the child's peak RSS in bytes.

    The peak is the child's own ``VmHWM``: ``wait4``'s ``ru_maxrss`` would also count the
    parent's memory, which a vfork-and-exec child inherits as its starting high-water mark.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("conversion failed")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["peak_rss"] = result["vm_hwm"]
    return result


def copy_speed(src: Path, dst: Path) -> tuple[float, float]:
    """GB/s of a plain file copy of ``src`` (in the kernel), and of writing its mapped bytes to
    a new file from user space in 16 MiB pieces, fsynced (what any converter's write costs)."""
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    copy = time.perf_counter() - t0
    dst.unlink()
    data = np.memmap(src, mode="r")
    t0 = time.perf_counter()
    with open(dst, "wb") as fh:
        for lo in range(0, data.size, 16 << 20):
            fh.write(memoryview(data[lo : lo + (16 << 20)]))
        fh.flush()
        os.fsync(fh.fileno())
    write = time.perf_counter() - t0
    dst.unlink()
    size = src.stat().st_size
    return size / copy / 1e9, size / write / 1e9


def bench_dequant(rows: int = 1024, cols: int = 4096) -> list[dict]:
    """Dequantize throughput, one thread, nntrtool's kernels against gguf's numpy, best of 3."""
    import numba

    from nntrtool.sources.gguf_dequant import dequantize_rows

    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    out = []
    for type_name in ("Q4_0", "Q8_0", "Q6_K", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K"):
        blocks = (
            _blocks(rows, cols, type_name, rng)
            if type_name in ("Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
            else None
        )
        if blocks is None:
            from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
            blocks = rng.integers(0, 256, (rows, cols // block * nbytes), dtype=np.uint8)
            blocks.reshape(rows, -1, nbytes)[:, :, :2] = np.frombuffer(
                np.float16(0.01).tobytes(), np.uint8
            )
            if type_name in ("Q4_1", "Q5_1"):
                blocks.reshape(rows, -1, nbytes)[:, :, 2:4] = blocks.reshape(rows, -1, nbytes)[
                    :, :, :2
                ]
        timing = {}
        for label, fast in (("nntrtool", True), ("gguf", False)):
            dequantize_rows(blocks[:8], type_name, cols, fast=fast)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                dequantize_rows(blocks, type_name, cols, fast=fast)
                best = min(best, time.perf_counter() - t0)
            timing[label] = rows * cols / best
        row = {"case": f"dequantize {type_name} {rows}x{cols}, 1 thread", **timing}
        row["ratio"] = timing["nntrtool"] / timing["gguf"]
        out.append(row)
        print(
            f"dequantize {type_name}: nntrtool {timing['nntrtool'] / 1e6:.0f} M values/s, gguf "
            f"{timing['gguf'] / 1e6:.0f} M values/s ({row['ratio']:.1f}x)",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=5e8, help="smaller model (doubled for 2nd)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/nntr-bench-gguf"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default=None, help="run only source type Q4_0 or Q4_K")
    ap.add_argument("--kernels", action="store_true", help="only the dequantize kernels")
    ap.add_argument(
        "--vocab", type=int, default=None, help="Gemma-3-270M-shaped GGUFs with this vocabulary"
    )
    ap.add_argument(
        "--mix",
        default="kept,q4_k_m",
        help=f"with --vocab: tensor type mixes, comma-separated ({', '.join(MIXES)})",
    )
    ap.add_argument(
        "--compare-reader",
        action="store_true",
        help="with --vocab: also time gguf.GGUFReader opening the file",
    )
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    if args.vocab:
        unknown = set(args.mix.split(",")) - set(MIXES)
        if unknown:
            raise SystemExit(
                f"--mix: unknown {', '.join(sorted(unknown))} (known: {', '.join(MIXES)})"
            )
        rows = bench_vocab(args)
        result = {"load_before": load, "load_after": os.getloadavg(), "rows": rows}
        print(f"load average before {load}, after {result['load_after']}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return
    if args.kernels:
        rows = bench_dequant()
        result = {"load_before": load, "load_after": os.getloadavg(), "rows": rows}
        print(f"load average before {load}, after {result['load_after']}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return
    rows = []
    # (source type, --quant-type): Q4_0 blocks copied; Q4_K requantized to q6_k (keep) and q4_0.
    cases = [("Q4_0", "keep"), ("Q4_K", "keep"), ("Q4_K", "q4_0")]
    for scale in (1, 2):
        n = args.params * scale
        for type_name in sorted({c[0] for c in cases if args.only in (None, c[0])}):
            src = build(args.dir / f"m{scale}-{type_name}.gguf", n, type_name)
            warm_cache_file(src)
            if type_name == "Q4_0":
                copy, write = copy_speed(src, args.dir / "copy.tmp")
                rows.append({"case": f"file copy {src.name}", "gb_per_s": copy})
                rows.append({"case": f"mapped write {src.name}", "gb_per_s": write})
                print(
                    f"{src.name}: plain file copy {copy:.2f} GB/s, its mapped bytes written "
                    f"from user space {write:.2f} GB/s",
                    flush=True,
                )
            for t, qtype in cases:
                if t != type_name:
                    continue
                out = args.dir / "out.nntr"
                r = run_child({"src": str(src), "out": str(out), "qtype": qtype})
                out.unlink(missing_ok=True)
                row = {
                    "case": f"{src.name} --quant-type {qtype}",
                    "params": r["params"],
                    "source_bytes": src.stat().st_size,
                    "seconds": r["seconds"],
                    "params_per_s": r["params"] / r["seconds"],
                    "gb_per_s": src.stat().st_size / r["seconds"] / 1e9,
                    "peak_rss": r["peak_rss"],
                    "threads": r["threads"],
                }
                rows.append(row)
                print(
                    f"{row['case']}: {row['params'] / 1e9:.2f} B params in {r['seconds']:.2f} s = "
                    f"{row['params_per_s'] / 1e6:.0f} M params/s, {row['gb_per_s']:.2f} GB/s of "
                    f"GGUF, peak RSS {r['peak_rss'] / 2**20:.0f} MiB",
                    flush=True,
                )
    result = {
        "load_before": load,
        "load_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    print(f"load average before {load}, after {result['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


def warm_cache_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as fh:
        while fh.read(64 << 20):
            pass


if __name__ == "__main__":
    main()
