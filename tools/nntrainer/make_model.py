"""A tiny random Llama or Qwen3 saved with transformers, for a runtime check.

usage: make_model.py llama|qwen3 OUT_DIR [--tie] [--preset tiny|q6k|bench] [--init 0.2] [--seed 0]
Writes OUT_DIR/hf. Weights are drawn with a wide initializer_range so that greedy choices are
rarely near-ties, and the norms get noise so that a misplaced norm would show.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.models import Q6K, TINY, hf_config  # noqa: E402

#: For timing: 100M parameters, every matrix fitting Q4_0 and Q4_K (columns multiples of 256).
BENCH = dict(hidden=1024, layers=8, vocab=4096, intermediate=2816, heads=16, kv_heads=4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", choices=("llama", "qwen3"))
    ap.add_argument("out", type=Path)
    ap.add_argument("--tie", action="store_true")
    ap.add_argument("--preset", choices=("tiny", "q6k", "bench"), default="tiny")
    ap.add_argument("--init", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(a.arch, tie=a.tie, **{"tiny": TINY, "q6k": Q6K, "bench": BENCH}[a.preset])
    cfg.initializer_range = a.init
    torch.manual_seed(a.seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(a.out / "hf")
    print(a.out / "hf")


if __name__ == "__main__":
    main()
