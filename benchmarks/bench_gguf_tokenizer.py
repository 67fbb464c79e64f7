"""Time and peak memory of making tokenizer files from a GGUF's vocabulary.

Builds a Gemma-3-270M-shaped GGUF with an N-token SentencePiece vocabulary (one layer; the
vocabulary is what is measured, see ``bench_gguf.py --vocab``), then, each in a fresh process:

- ``auto``: ``AutoTokenizer.from_pretrained(folder, gguf_file=...)`` and ``save_pretrained``
  (what ``nntrtool export`` did before the tokenizer class was picked from the family);
- ``nntrtool``: :func:`nntrtool.export.gguf_tokenizer.gguf_tokenizer_files`.

Both write the same files (tests/test_gguf_tokenizer.py). Seconds include importing
transformers; peak RSS is the process's.

    python benchmarks/bench_gguf_tokenizer.py --vocab 262144 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

_RUN = """
import resource, sys, time, tempfile
from pathlib import Path
start = time.perf_counter()
path = Path(sys.argv[2])
if sys.argv[1] == "auto":
    from transformers import AutoTokenizer
    out = tempfile.mkdtemp()
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(out)
else:
    from nntrtool.export.gguf_tokenizer import gguf_tokenizer_files
    files, problem = gguf_tokenizer_files(path)
    assert problem is None, problem
seconds = time.perf_counter() - start
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def measure(mode: str, path: Path) -> tuple[float, float]:
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run(
        [sys.executable, "-c", _RUN, mode, str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    seconds, rss = done.stdout.split()[-2:]
    return float(seconds), float(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "nntr-bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_gguf import build_gemma

    args.dir.mkdir(parents=True, exist_ok=True)
    path = build_gemma(args.dir / f"tok-gemma-v{args.vocab}.gguf", args.vocab, "kept", 1)
    rows = []
    print(f"load before: {os.getloadavg()}")
    for mode in ("auto", "nntrtool"):
        runs = [measure(mode, path) for _ in range(args.repeats)]
        best = min(runs)
        row = {"mode": mode, "vocab": args.vocab, "seconds": best[0], "peak_rss_mib": best[1]}
        row["all_seconds"] = [r[0] for r in runs]
        rows.append(row)
        print(
            f"{mode:9s} vocab {args.vocab}: best {best[0]:.2f} s of "
            f"{', '.join(f'{r[0]:.2f}' for r in runs)}; peak RSS {best[1]:.0f} MiB"
        )
    print(f"load after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
